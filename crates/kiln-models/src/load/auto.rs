//! Pick the architecture from `config.json`'s `model_type`, and resolve a model argument (a local
//! directory or a hub id) to a directory with the checkpoint's files.

use std::path::{Path, PathBuf};

use burn::prelude::*;

use crate::generate::causal::CausalLm;
use crate::generate::GenerationConfig;
use crate::load::config::RawConfig;
use crate::load::error::{Error, Result};
use crate::load::hub::{HubOptions, Source};
use crate::load::tokenizer::Tokenizer;
use crate::load::weights::LoadReport;
use crate::models::attention::KvCache;
use crate::models::{gpt2, opt};

/// The decoder-only architectures kiln implements.
pub const CAUSAL_TYPES: &str = "gpt2, opt";

/// A local directory, or a hub id fetched into the hub cache (honouring `HF_HOME`, `HF_HUB_OFFLINE`).
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    Source::resolve(spec, HubOptions::from_env())?.materialise()
}

/// The `model_type` of a checkpoint directory.
pub fn model_type(dir: &Path) -> Result<String> {
    RawConfig::load(&dir.join("config.json"))?.model_type()
}

/// Any decoder-only model.
#[derive(Module, Debug)]
pub enum CausalModel<B: Backend> {
    /// GPT-2 (`GPT2LMHeadModel`).
    Gpt2(gpt2::Gpt2LmHead<B>),
    /// OPT (`OPTForCausalLM`).
    Opt(opt::OptForCausalLm<B>),
}

impl<B: Backend> CausalModel<B> {
    /// Load a checkpoint directory whose `model_type` is one of [`CAUSAL_TYPES`].
    pub fn load(dir: &Path, device: &B::Device) -> Result<(Self, LoadReport)> {
        let mt = model_type(dir)?;
        match mt.as_str() {
            "gpt2" => gpt2::load(dir, device).map(|(_, m, r)| (Self::Gpt2(m), r)),
            "opt" => opt::load(dir, device).map(|(_, m, r)| (Self::Opt(m), r)),
            _ => Err(Error::UnsupportedArchitecture {
                path: dir.join("config.json"),
                model_type: mt,
                supported: CAUSAL_TYPES.into(),
            }),
        }
    }
}

impl<B: Backend> CausalModel<B> {
    /// Insert bottleneck adapters into every layer of the architecture (see its `add_adapters`).
    pub fn add_adapters(self, cfg: &kiln_peft::AdapterConfig) -> Self {
        match self {
            CausalModel::Gpt2(m) => CausalModel::Gpt2(m.add_adapters(cfg)),
            CausalModel::Opt(m) => CausalModel::Opt(m.add_adapters(cfg)),
        }
    }

    /// [`Self::add_adapters`], then freeze everything else. Returns the model and its (trainable, total)
    /// parameter counts, for [`kiln_peft::trainable_summary`].
    pub fn with_frozen_adapters(self, cfg: &kiln_peft::AdapterConfig) -> (Self, usize, usize) {
        kiln_peft::freeze_all_but_adapters(self.add_adapters(cfg))
    }

    /// The full forward of the architecture (`GPT2LMHeadModel.forward` / `OPTForCausalLM.forward`):
    /// logits `[b, s, vocab]`.
    pub fn forward(
        &self,
        ids: Tensor<B, 2, Int>,
        attention_mask: Option<&[Vec<u8>]>,
    ) -> Tensor<B, 3> {
        match self {
            CausalModel::Gpt2(m) => m.forward(ids, attention_mask),
            CausalModel::Opt(m) => m.forward(ids, attention_mask),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $m:ident => $e:expr) => {
        match $self {
            CausalModel::Gpt2($m) => $e,
            CausalModel::Opt($m) => $e,
        }
    };
}

impl<B: Backend> CausalLm<B> for CausalModel<B> {
    fn n_layer(&self) -> usize {
        delegate!(self, m => CausalLm::<B>::n_layer(m))
    }
    fn vocab_size(&self) -> usize {
        delegate!(self, m => CausalLm::<B>::vocab_size(m))
    }
    fn max_positions(&self) -> usize {
        delegate!(self, m => CausalLm::<B>::max_positions(m))
    }
    fn device(&self) -> B::Device {
        delegate!(self, m => CausalLm::<B>::device(m))
    }
    fn hidden(
        &self,
        ids: Tensor<B, 2, Int>,
        positions: Tensor<B, 2, Int>,
        key_mask: &[Vec<u8>],
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        delegate!(self, m => CausalLm::<B>::hidden(m, ids, positions, key_mask, cache))
    }
    fn input_embeddings(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        delegate!(self, m => CausalLm::<B>::input_embeddings(m, ids))
    }
    fn hidden_from_embeds(
        &self,
        embeds: Tensor<B, 3>,
        positions: Tensor<B, 2, Int>,
        key_mask: &[Vec<u8>],
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        delegate!(self, m => CausalLm::<B>::hidden_from_embeds(m, embeds, positions, key_mask, cache))
    }
    fn n_head(&self) -> usize {
        delegate!(self, m => CausalLm::<B>::n_head(m))
    }
    fn hidden_size(&self) -> usize {
        delegate!(self, m => CausalLm::<B>::hidden_size(m))
    }
    fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        delegate!(self, m => CausalLm::<B>::logits(m, hidden))
    }
    fn output_embedding(&self) -> Option<Tensor<B, 2>> {
        delegate!(self, m => CausalLm::<B>::output_embedding(m))
    }
}

/// A decoder-only model with its tokenizer and generation defaults, ready to use.
pub struct CausalPipeline<B: Backend> {
    /// The checkpoint directory (the hub cache's snapshot for a hub id).
    pub dir: PathBuf,
    /// The model; run it through a `CausalSession`, `score_tokens`, or its `forward`.
    pub model: CausalModel<B>,
    /// The checkpoint's tokenizer, checked against the model's vocabulary.
    pub tokenizer: Tokenizer,
    /// Generation defaults: special token ids from `config.json`, then `generation_config.json`.
    pub generation: GenerationConfig,
    /// Which weights were loaded, initialised or left unused.
    pub report: LoadReport,
}

impl<B: Backend> CausalPipeline<B> {
    /// Load from a directory or hub id.
    pub fn load(spec: &str, device: &B::Device) -> Result<Self> {
        let dir = resolve_model(spec)?;
        let (model, report) = CausalModel::load(&dir, device)?;
        let vocab = CausalLm::<B>::vocab_size(&model);
        let tokenizer = Tokenizer::from_dir(&dir)?.with_model_vocab(vocab);
        let generation = GenerationConfig::from_dir(&dir)?;
        generation.check_token_ids_in_dir(&dir, vocab)?;
        Ok(Self {
            dir,
            model,
            tokenizer,
            generation,
            report,
        })
    }

    /// Tokenize prompts and left-pad them to one length (as `padding_side="left"`).
    pub fn encode_left_padded(&self, prompts: &[&str]) -> Result<(Vec<Vec<u32>>, Vec<Vec<u8>>)> {
        let pad = self
            .generation
            .pad_token_id
            .or(self.generation.eos_token_id.first().copied())
            .unwrap_or(0);
        let mut ids = Vec::new();
        for p in prompts {
            if p.is_empty() {
                return Err(Error::Input("empty prompt".into()));
            }
            let e = self.tokenizer.encode(p, None)?;
            if e.ids.is_empty() {
                return Err(Error::Input(format!("prompt {p:?} encodes to no tokens")));
            }
            ids.push(e.ids);
        }
        Ok(left_pad(&ids, pad))
    }
}

/// Left-pad rows to one length; returns rows and their masks.
pub fn left_pad(rows: &[Vec<u32>], pad: u32) -> (Vec<Vec<u32>>, Vec<Vec<u8>>) {
    let n = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let ids = rows
        .iter()
        .map(|r| {
            std::iter::repeat_n(pad, n - r.len())
                .chain(r.iter().copied())
                .collect()
        })
        .collect();
    let mask = rows
        .iter()
        .map(|r| {
            std::iter::repeat_n(0u8, n - r.len())
                .chain(std::iter::repeat_n(1u8, r.len()))
                .collect()
        })
        .collect();
    (ids, mask)
}

/// The encoder-decoder architectures kiln implements.
pub const SEQ2SEQ_TYPES: &str = "t5, bart";

/// Any encoder-decoder model.
#[derive(Module, Debug)]
pub enum Seq2SeqModel<B: Backend> {
    /// T5 / T0 / mT5 (`T5ForConditionalGeneration`).
    T5(crate::models::t5::T5ForConditionalGeneration<B>),
    /// BART (`BartForConditionalGeneration`).
    Bart(crate::models::bart::BartForConditionalGeneration<B>),
}

impl<B: Backend> Seq2SeqModel<B> {
    /// Load a checkpoint directory whose `model_type` is one of [`SEQ2SEQ_TYPES`].
    pub fn load(dir: &Path, device: &B::Device) -> Result<(Self, LoadReport)> {
        let mt = model_type(dir)?;
        match mt.as_str() {
            "t5" | "mt5" => crate::models::t5::load(dir, device).map(|(_, m, r)| (Self::T5(m), r)),
            "bart" => crate::models::bart::load(dir, device).map(|(_, m, r)| (Self::Bart(m), r)),
            _ => Err(Error::UnsupportedArchitecture {
                path: dir.join("config.json"),
                model_type: mt,
                supported: SEQ2SEQ_TYPES.into(),
            }),
        }
    }
}

impl<B: Backend> Seq2SeqModel<B> {
    /// `d_model`.
    pub fn d_model(&self) -> usize {
        match self {
            Seq2SeqModel::T5(m) => m.shared.weight.dims()[1],
            Seq2SeqModel::Bart(m) => m.model.shared.weight.dims()[1],
        }
    }

    /// The config's `num_hidden_layers` (BART: `encoder_layers`; T5: `num_layers`), what peft's prompt learning
    /// records as `num_layers`.
    pub fn num_hidden_layers(&self) -> usize {
        match self {
            Seq2SeqModel::T5(m) => m.encoder.block.len(),
            Seq2SeqModel::Bart(m) => m.model.encoder.layers.len(),
        }
    }

    /// The config's `num_attention_heads` (BART: `encoder_attention_heads`; T5: `num_heads`).
    pub fn num_attention_heads(&self) -> usize {
        match self {
            Seq2SeqModel::T5(m) => m.encoder.block[0].layer[0].self_attention().n_heads,
            Seq2SeqModel::Bart(m) => m.model.encoder.layers[0].self_attn.n_heads,
        }
    }

    /// The decoder self-attention's key width per head (T5: `d_kv`; BART: `d_model / heads`).
    pub fn decoder_head_dim(&self) -> usize {
        match self {
            Seq2SeqModel::T5(m) => m.decoder.block[0].layer[0].self_attention().d_kv,
            Seq2SeqModel::Bart(m) => {
                let a = &m.model.decoder.layers[0].self_attn;
                m.model.shared.weight.dims()[1] / a.n_heads
            }
        }
    }

    /// Heads of the decoder's self-attention.
    pub fn decoder_heads(&self) -> usize {
        match self {
            Seq2SeqModel::T5(m) => m.decoder.block[0].layer[0].self_attention().n_heads,
            Seq2SeqModel::Bart(m) => m.model.decoder.layers[0].self_attn.n_heads,
        }
    }

    /// The longest encoder input (BART's learned positions), `None` for T5 (relative positions).
    pub fn max_source_positions(&self) -> Option<usize> {
        match self {
            Seq2SeqModel::T5(_) => None,
            Seq2SeqModel::Bart(m) => Some(
                m.model.encoder.embed_positions.weight.dims()[0]
                    - crate::models::bart::POSITION_OFFSET,
            ),
        }
    }

    /// Insert bottleneck adapters into every encoder and decoder layer (see the architecture's
    /// `add_adapters`).
    pub fn add_adapters(self, cfg: &kiln_peft::AdapterConfig) -> Self {
        match self {
            Seq2SeqModel::T5(m) => Seq2SeqModel::T5(m.add_adapters(cfg)),
            Seq2SeqModel::Bart(m) => Seq2SeqModel::Bart(m.add_adapters(cfg)),
        }
    }

    /// [`Self::add_adapters`], then freeze everything else. Returns the model and its (trainable, total)
    /// parameter counts, for [`kiln_peft::trainable_summary`].
    pub fn with_frozen_adapters(self, cfg: &kiln_peft::AdapterConfig) -> (Self, usize, usize) {
        kiln_peft::freeze_all_but_adapters(self.add_adapters(cfg))
    }
}

macro_rules! delegate_s2s {
    ($self:ident, $m:ident => $e:expr) => {
        match $self {
            Seq2SeqModel::T5($m) => $e,
            Seq2SeqModel::Bart($m) => $e,
        }
    };
}

impl<B: Backend> crate::generate::seq2seq::EncoderDecoder<B> for Seq2SeqModel<B> {
    fn encode(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: &[Vec<u8>],
    ) -> Result<Tensor<B, 3>> {
        delegate_s2s!(self, m => m.encode(input_ids, attention_mask))
    }
    fn input_embeddings(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        delegate_s2s!(self, m => m.input_embeddings(input_ids))
    }
    fn encode_embeds(
        &self,
        embeds: Tensor<B, 3>,
        attention_mask: &[Vec<u8>],
    ) -> Result<Tensor<B, 3>> {
        delegate_s2s!(self, m => m.encode_embeds(embeds, attention_mask))
    }
    fn cross_kv(
        &self,
        encoder_hidden: Tensor<B, 3>,
    ) -> Vec<crate::models::attention::LayerCache<B>> {
        delegate_s2s!(self, m => m.cross_kv(encoder_hidden))
    }
    fn n_decoder_layers(&self) -> usize {
        delegate_s2s!(self, m => m.n_decoder_layers())
    }
    fn vocab_size(&self) -> usize {
        delegate_s2s!(self, m => m.vocab_size())
    }
    fn max_target_positions(&self) -> Option<usize> {
        delegate_s2s!(self, m => m.max_target_positions())
    }
    fn decode(
        &self,
        ids: Tensor<B, 2, Int>,
        self_mask: &[Vec<u8>],
        cache: Option<&mut KvCache<B>>,
        cross: &[crate::models::attention::LayerCache<B>],
        cross_mask: Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>> {
        delegate_s2s!(self, m => m.decode(ids, self_mask, cache, cross, cross_mask))
    }
    fn lm_logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        delegate_s2s!(self, m => m.lm_logits(hidden))
    }
    fn device(&self) -> B::Device {
        delegate_s2s!(self, m => crate::generate::seq2seq::EncoderDecoder::<B>::device(m))
    }
}

/// An encoder-decoder model with its tokenizer and generation defaults.
pub struct Seq2SeqPipeline<B: Backend> {
    /// The checkpoint directory (the hub cache's snapshot for a hub id).
    pub dir: PathBuf,
    /// The longest encoder input the model accepts (BART's learned positions); `None` for T5.
    pub max_source_positions: Option<usize>,
    /// The model; run it through `seq2seq::generate` or a `Seq2SeqSession`.
    pub model: Seq2SeqModel<B>,
    /// The checkpoint's tokenizer, checked against the model's vocabulary.
    pub tokenizer: Tokenizer,
    /// Generation defaults: special token ids from `config.json`, then `generation_config.json`.
    pub generation: GenerationConfig,
    /// Which weights were loaded, initialised or left unused.
    pub report: LoadReport,
}

impl<B: Backend> Seq2SeqPipeline<B> {
    /// Load from a directory or hub id.
    pub fn load(spec: &str, device: &B::Device) -> Result<Self> {
        let dir = resolve_model(spec)?;
        let (model, report) = Seq2SeqModel::load(&dir, device)?;
        let vocab = crate::generate::seq2seq::EncoderDecoder::<B>::vocab_size(&model);
        let tokenizer = Tokenizer::from_dir(&dir)?.with_model_vocab(vocab);
        let mut generation = GenerationConfig::from_dir(&dir)?;
        generation.check_token_ids_in_dir(&dir, vocab)?;
        // T5 starts decoding from its pad token; configs written without `decoder_start_token_id` rely on
        // that (transformers' T5 does the same).
        if generation.decoder_start_token_id.is_none() && matches!(model, Seq2SeqModel::T5(_)) {
            generation.decoder_start_token_id = Some(generation.pad_token_id.unwrap_or(0));
        }
        let max_source_positions = match &model {
            Seq2SeqModel::Bart(_) => {
                RawConfig::load(&dir.join("config.json"))?.opt_usize("max_position_embeddings")?
            }
            Seq2SeqModel::T5(_) => None,
        };
        Ok(Self {
            dir,
            max_source_positions,
            model,
            tokenizer,
            generation,
            report,
        })
    }

    /// Tokenize sources (cut to `max_len` tokens) and right-pad them, as HF tokenizers pad encoder inputs.
    /// Returns ids, masks, and how many inputs were truncated.
    pub fn encode_right_padded(
        &self,
        texts: &[&str],
        max_len: Option<usize>,
    ) -> Result<(Vec<Vec<u32>>, Vec<Vec<u8>>, usize)> {
        let pad = self.generation.pad_token_id.unwrap_or(0);
        // Never more than the model has positions for (as the tokenizer's model_max_length would).
        let max_len = match (max_len, self.max_source_positions) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut rows = Vec::new();
        let mut truncated = 0;
        for t in texts {
            if t.trim().is_empty() {
                return Err(Error::Input("empty input text".into()));
            }
            let e = self.tokenizer.encode(t, max_len)?;
            truncated += e.truncated as usize;
            rows.push(e.ids);
        }
        let n = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mask = rows
            .iter()
            .map(|r| (0..n).map(|i| (i < r.len()) as u8).collect())
            .collect();
        let ids = rows
            .into_iter()
            .map(|mut r| {
                r.resize(n, pad);
                r
            })
            .collect();
        Ok((ids, mask, truncated))
    }

    /// Generate for each text; returns the decoded outputs (special tokens skipped).
    pub fn generate_text(
        &self,
        texts: &[&str],
        max_len: Option<usize>,
        cfg: &GenerationConfig,
    ) -> Result<Vec<String>> {
        let (ids, mask, _) = self.encode_right_padded(texts, max_len)?;
        let out = crate::generate::seq2seq::generate(&self.model, &ids, &mask, cfg, None)?;
        out.sequences
            .iter()
            .map(|s| self.tokenizer.decode(s, true).map(|t| t.trim().to_string()))
            .collect()
    }
}
