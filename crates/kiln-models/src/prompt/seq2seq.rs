//! Prompt tuning and prefix tuning for the encoder-decoder models (BART, T5), as Hugging Face peft's
//! `PeftModelForSeq2SeqLM` (peft 0.21.2, transformers 5.24) runs them, with peft's adapter files
//! (`task_type` `SEQ_2_SEQ_LM`, `num_transformer_submodules` 2; see `kiln_peft::prompt`).
//!
//! - Prompt tuning: the stored prompt has `2 · n` rows (one block per transformer submodule); the first `n` are
//!   prepended to the encoder's input embeddings (`get_input_embeddings()(ids)`) and the encoder's attention mask
//!   gets `n` leading ones, so cross-attention sees the virtual tokens too. The decoder is unchanged.
//! - Prefix tuning: each decoder layer's self-attention starts from `n` past keys/values taken from the prefix
//!   (peft's layer mapping: [`kiln_peft::PromptEncoder::decoder_past_key_values`]), the decoder's mask is
//!   extended with `n` ones and its positions start at `n`. peft 0.21.2 discards the cross-attention half of the
//!   prefix with transformers >= 4.56, and never touches the encoder; kiln does the same, so that adapters trained
//!   on either side give the same outputs on the other.
//!
//! [`Seq2SeqPromptModel`] implements [`EncoderDecoder`], so teacher-forced training, [`crate::generate::seq2seq::generate`]
//! (greedy, sampling, beam search) and the trainer's seq2seq task all work on it unchanged.

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use kiln_peft::prompt::{
    read_prompt, save_prompt, PromptEncoder, PromptLearningConfig, PromptMethod,
};

use crate::generate::seq2seq::EncoderDecoder;
use crate::load::auto::Seq2SeqModel;
use crate::load::error::{Error, Result};
use crate::models::attention::{ids_tensor, KvCache, LayerCache};
use crate::prompt::{peft_err, prompt_from_file, text_init_rows};

/// An encoder-decoder model with a trainable prompt (peft's `PeftModelForSeq2SeqLM` for `PROMPT_TUNING` /
/// `PREFIX_TUNING`). The base model is frozen; only `prompt` requires grad (unless loaded for inference).
#[derive(Module, Debug)]
pub struct Seq2SeqPromptModel<B: Backend> {
    /// The frozen base encoder-decoder.
    pub model: Seq2SeqModel<B>,
    /// The trainable prompt: prepended encoder embeddings (prompt tuning) or the decoder self-attention's
    /// past keys/values (prefix tuning).
    pub prompt: PromptEncoder<B>,
    /// The resolved prompt-learning config (saved as `adapter_config.json`).
    #[module(skip)]
    pub config: PromptLearningConfig,
}

/// Fill the config from the model (as peft's `_prepare_prompt_learning_config`) and check that kiln can map it.
fn resolve<B: Backend>(
    model: &Seq2SeqModel<B>,
    config: &mut PromptLearningConfig,
    path: &Path,
) -> Result<()> {
    if !config.is_seq2seq() {
        return Err(Error::Input(format!(
            "{}: task_type {} — an encoder-decoder model needs a SEQ_2_SEQ_LM prompt config",
            path.display(),
            config.task_type.as_deref().unwrap_or("null")
        )));
    }
    let layers = model.num_hidden_layers();
    let heads = model.num_attention_heads();
    config
        .resolve(path, model.d_model(), layers, heads)
        .map_err(peft_err)?;
    if config.method == PromptMethod::PrefixTuning {
        let d = model.d_model();
        let dec = model.n_decoder_layers();
        if model.decoder_heads() != heads || model.decoder_head_dim() * heads != d {
            return Err(Error::Input(format!(
                "{}: prefix tuning views the prefix as {heads} heads of {} values (d_model / num_attention_heads), \
                 but the decoder's self-attention has {} heads of {}",
                path.display(),
                d / heads.max(1),
                model.decoder_heads(),
                model.decoder_head_dim()
            )));
        }
        if dec > layers {
            return Err(Error::Input(format!(
                "{}: {dec} decoder layers but a prefix for {layers}: peft gives the extra layers no prefix, \
                 which kiln does not model",
                path.display()
            )));
        }
    }
    Ok(())
}

impl<B: Backend> Seq2SeqPromptModel<B> {
    /// `get_peft_model`: resolve the config against the model and create a fresh prompt. A config made with
    /// [`PromptLearningConfig::prompt_tuning`] / `prefix_tuning` is switched to `SEQ_2_SEQ_LM`. `TEXT` init needs
    /// the tokenized `prompt_tuning_init_text` (special tokens included, as the tokenizer gives them).
    pub fn inject(
        model: Seq2SeqModel<B>,
        mut config: PromptLearningConfig,
        init_ids: Option<&[u32]>,
    ) -> Result<Self> {
        if !config.is_seq2seq() {
            config = config.for_seq2seq();
        }
        resolve(&model, &mut config, Path::new("<config>"))?;
        let device = EncoderDecoder::<B>::device(&model);
        let rows = text_init_rows(&config, init_ids, &device, |t| model.input_embeddings(t))?;
        let prompt = PromptEncoder::init(&config, rows, &device);
        Ok(Self {
            model: model.no_grad(),
            prompt,
            config,
        })
    }

    /// peft's `PeftModel.from_pretrained` for a `SEQ_2_SEQ_LM` prompt adapter directory. `is_trainable` makes the
    /// prompt trainable (not for a prefix saved with `prefix_projection`: the file holds the MLP's output).
    pub fn from_pretrained(model: Seq2SeqModel<B>, dir: &Path, is_trainable: bool) -> Result<Self> {
        let (mut config, t) = read_prompt(dir).map_err(peft_err)?;
        let cfg_path = dir.join(kiln_peft::io::CONFIG_FILE);
        resolve(&model, &mut config, &cfg_path)?;
        let device = EncoderDecoder::<B>::device(&model);
        let prompt = prompt_from_file(&mut config, t, dir, is_trainable, &device)?;
        Ok(Self {
            model: model.no_grad(),
            prompt,
            config,
        })
    }

    /// Write `adapter_config.json` + `adapter_model.safetensors` as peft's `save_pretrained`.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        save_prompt(dir, &self.config, &self.prompt).map_err(peft_err)
    }

    /// Number of virtual tokens (`num_virtual_tokens`).
    pub fn num_virtual_tokens(&self) -> usize {
        self.config.num_virtual_tokens
    }

    /// peft's `print_trainable_parameters()` line.
    pub fn trainable_parameters(&self) -> String {
        let trainable = self.prompt.num_params();
        let base = kiln_peft::model::hf_param_count(&self.model);
        kiln_peft::trainable_summary(trainable, base + trainable)
    }

    /// Prompt tuning: the first `n` prompt rows (the encoder's virtual tokens) for `batch` rows, `[batch, n, d]`.
    fn encoder_prompt(&self, batch: usize) -> Tensor<B, 3> {
        let rows = self.prompt.output();
        let d = rows.dims()[1];
        let n = self.num_virtual_tokens();
        rows.slice([0..n, 0..d])
            .unsqueeze::<3>()
            .repeat_dim(0, batch)
    }

    /// Prefix tuning: the decoder's self-attention cache pre-filled with the prefix for `rows` rows.
    pub fn prefix_cache(&self, rows: usize) -> KvCache<B> {
        let layers = self.model.n_decoder_layers();
        let mut cache = KvCache::new(layers);
        let kv = self.prompt.decoder_past_key_values(
            self.config.num_layers.unwrap_or(layers),
            self.config.num_attention_heads.unwrap_or(1),
            rows,
            layers,
        );
        for (i, (k, v)) in kv.into_iter().enumerate() {
            cache.set(i, k, v);
        }
        cache
    }

    /// Logits `[b, t, vocab]` as `peft_model(input_ids, attention_mask, decoder_input_ids).logits`.
    pub fn forward(
        &self,
        input_ids: &[Vec<u32>],
        attention_mask: &[Vec<u8>],
        decoder_input_ids: &[Vec<u32>],
    ) -> Result<Tensor<B, 3>> {
        let device = EncoderDecoder::<B>::device(self);
        let ids = crate::generate::seq2seq::encoder_inputs::<B>(
            input_ids,
            attention_mask,
            self.vocab_size(),
            &device,
        )?;
        let enc = self.encode(ids, attention_mask)?;
        self.decoder_logits(
            ids_tensor::<B>(decoder_input_ids, &device),
            enc,
            attention_mask,
        )
    }
}

impl<B: Backend> EncoderDecoder<B> for Seq2SeqPromptModel<B> {
    fn encode(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: &[Vec<u8>],
    ) -> Result<Tensor<B, 3>> {
        match self.config.method {
            PromptMethod::PrefixTuning => self.model.encode(input_ids, attention_mask),
            PromptMethod::PromptTuning => {
                let b = input_ids.dims()[0];
                let embeds = Tensor::cat(
                    vec![
                        self.encoder_prompt(b),
                        self.model.input_embeddings(input_ids),
                    ],
                    1,
                );
                self.model
                    .encode_embeds(embeds, &self.encoder_mask(attention_mask))
            }
        }
    }

    fn input_embeddings(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.model.input_embeddings(input_ids)
    }

    fn encode_embeds(
        &self,
        embeds: Tensor<B, 3>,
        attention_mask: &[Vec<u8>],
    ) -> Result<Tensor<B, 3>> {
        self.model.encode_embeds(embeds, attention_mask)
    }

    fn encoder_mask(&self, attention_mask: &[Vec<u8>]) -> Vec<Vec<u8>> {
        match self.config.method {
            PromptMethod::PrefixTuning => attention_mask.to_vec(),
            PromptMethod::PromptTuning => {
                let n = self.num_virtual_tokens();
                attention_mask
                    .iter()
                    .map(|r| [vec![1u8; n], r.clone()].concat())
                    .collect()
            }
        }
    }

    fn cross_kv(&self, encoder_hidden: Tensor<B, 3>) -> Vec<LayerCache<B>> {
        self.model.cross_kv(encoder_hidden)
    }

    fn n_decoder_layers(&self) -> usize {
        self.model.n_decoder_layers()
    }

    fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }

    fn max_target_positions(&self) -> Option<usize> {
        // Prefix tuning: the decoder's positions start after the prefix.
        let n = match self.config.method {
            PromptMethod::PrefixTuning => self.num_virtual_tokens(),
            _ => 0,
        };
        self.model
            .max_target_positions()
            .map(|m| m.saturating_sub(n))
    }

    /// Prefix tuning: `self_mask` covers the real decoder tokens only; the `n` prefix positions are prepended
    /// here. An empty (or absent) cache is first filled with the prefix, so a [`crate::generate::seq2seq::Seq2SeqSession`]
    /// needs no special case.
    fn decode(
        &self,
        ids: Tensor<B, 2, Int>,
        self_mask: &[Vec<u8>],
        cache: Option<&mut KvCache<B>>,
        cross: &[LayerCache<B>],
        cross_mask: Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>> {
        if self.config.method == PromptMethod::PromptTuning {
            return self.model.decode(ids, self_mask, cache, cross, cross_mask);
        }
        let r = ids.dims()[0];
        let n = self.num_virtual_tokens();
        let mask: Vec<Vec<u8>> = self_mask
            .iter()
            .map(|m| [vec![1u8; n], m.clone()].concat())
            .collect();
        match cache {
            None => {
                let mut c = self.prefix_cache(r);
                self.model
                    .decode(ids, &mask, Some(&mut c), cross, cross_mask)
            }
            Some(c) => {
                if c.is_empty() {
                    *c = self.prefix_cache(r);
                }
                self.model.decode(ids, &mask, Some(c), cross, cross_mask)
            }
        }
    }

    fn lm_logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        self.model.lm_logits(hidden)
    }

    fn device(&self) -> B::Device {
        EncoderDecoder::<B>::device(&self.model)
    }
}
