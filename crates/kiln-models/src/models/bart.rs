//! BART (`BartForConditionalGeneration`), as in Lewis et al. 2020: a post-LN encoder-decoder with learned
//! positions.
//!
//! - `model.shared` is the token embedding of both stacks and the LM head (only it is saved); tokens are
//!   scaled by `sqrt(d_model)` when `scale_embedding`.
//! - Learned positions `embed_positions [max_position_embeddings + 2, d]`, looked up at `arange + 2` (the
//!   offset), then `layernorm_embedding`.
//! - Post-LN layers (`x = LN(x + sublayer(x))`), gelu feed-forward, projections with bias; attention scores
//!   scaled by `head_dim^-0.5`.
//! - Logits are `h · sharedᵀ + final_logits_bias` (a saved `[1, vocab]` buffer, kept here as a parameter so
//!   that it loads).

use std::path::Path;

use burn::module::Param;
use burn::nn::{Embedding, EmbeddingConfig, Initializer};

use burn::prelude::*;
use kiln_peft::adapter::maybe_adapt;
use kiln_peft::{Adapter, AdapterConfig, AdapterPlacement, PeftLinear};

use crate::generate::seq2seq::{encoder_inputs, grouped_attend, EncoderDecoder};
use crate::load::config::{Activation, RawConfig};
use crate::load::error::{Error, Result};
use crate::load::weights::{LoadReport, LoadSpec};
use crate::models::attention::{
    additive_mask, attend, merge_heads, split_heads, KvCache, LayerCache,
};
use crate::models::norm::LayerNorm;

/// BART's learned-position offset.
pub const POSITION_OFFSET: usize = 2;

/// The fields of BART's `config.json` that the forward pass uses.
#[derive(Debug, Clone, PartialEq)]
pub struct BartConfig {
    /// Vocabulary size: rows of the shared embedding (`vocab_size`).
    pub vocab_size: usize,
    /// Hidden size `d` of both stacks (`d_model`, alias `hidden_size`).
    pub d_model: usize,
    /// Number of encoder layers (`encoder_layers`, default 12).
    pub encoder_layers: usize,
    /// Number of decoder layers (`decoder_layers`, default 12).
    pub decoder_layers: usize,
    /// Attention heads per encoder layer (`encoder_attention_heads`, default 16); must divide `d_model`.
    pub encoder_attention_heads: usize,
    /// Attention heads per decoder layer (`decoder_attention_heads`, default 16); must divide `d_model`.
    pub decoder_attention_heads: usize,
    /// Inner width of the encoder feed-forward blocks (`encoder_ffn_dim`, default 4096).
    pub encoder_ffn_dim: usize,
    /// Inner width of the decoder feed-forward blocks (`decoder_ffn_dim`, default 4096).
    pub decoder_ffn_dim: usize,
    /// Maximum sequence length of each stack (`max_position_embeddings`, default 1024); the position tables
    /// have 2 more rows.
    pub max_position_embeddings: usize,
    /// Feed-forward activation (`activation_function`, default `gelu`).
    pub activation_function: Activation,
    /// Multiply token embeddings by `√d_model` (`scale_embedding`, default false).
    pub scale_embedding: bool,
    /// Std of the normal initialisation of fresh weights (`init_std`, default 0.02).
    pub init_std: f64,
    /// Padding token id (`pad_token_id`, 1 in facebook/bart-*).
    pub pad_token_id: Option<u32>,
    /// Beginning-of-sequence token id (`bos_token_id`, 0 in facebook/bart-*).
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token id (`eos_token_id`; the first one if a list).
    pub eos_token_id: Option<u32>,
    /// First decoder input token (`decoder_start_token_id`, `</s>` = 2 in facebook/bart-*).
    pub decoder_start_token_id: Option<u32>,
}

impl BartConfig {
    /// The config from a parsed `config.json`, with defaults as transformers' `BartConfig` and range checks;
    /// rejects pre-LN (mBART-style) variants.
    pub fn from_raw(c: &RawConfig) -> Result<Self> {
        let cfg = Self {
            vocab_size: c.req_usize("vocab_size")?,
            d_model: c.req_usize_any(&["d_model", "hidden_size"])?,
            encoder_layers: c.usize_or("encoder_layers", 12)?,
            decoder_layers: c.usize_or("decoder_layers", 12)?,
            encoder_attention_heads: c.usize_or("encoder_attention_heads", 16)?,
            decoder_attention_heads: c.usize_or("decoder_attention_heads", 16)?,
            encoder_ffn_dim: c.usize_or("encoder_ffn_dim", 4096)?,
            decoder_ffn_dim: c.usize_or("decoder_ffn_dim", 4096)?,
            max_position_embeddings: c.usize_or("max_position_embeddings", 1024)?,
            activation_function: c.activation("activation_function", "gelu")?,
            scale_embedding: c.bool_or("scale_embedding", false)?,
            init_std: c.f64_or("init_std", 0.02)?,
            pad_token_id: c.opt_token_id("pad_token_id")?,
            bos_token_id: c.opt_token_id("bos_token_id")?,
            eos_token_id: c.opt_token_id("eos_token_id")?,
            decoder_start_token_id: c.opt_token_id("decoder_start_token_id")?,
        };
        c.check_range("vocab_size", cfg.vocab_size, 1, 10_000_000)?;
        c.check_range("d_model", cfg.d_model, 1, 1 << 16)?;
        c.check_range("encoder_layers", cfg.encoder_layers, 1, 1024)?;
        c.check_range("decoder_layers", cfg.decoder_layers, 1, 1024)?;
        c.check_range(
            "encoder_attention_heads",
            cfg.encoder_attention_heads,
            1,
            1024,
        )?;
        c.check_range(
            "decoder_attention_heads",
            cfg.decoder_attention_heads,
            1,
            1024,
        )?;
        c.check_range("encoder_ffn_dim", cfg.encoder_ffn_dim, 1, 1 << 18)?;
        c.check_range("decoder_ffn_dim", cfg.decoder_ffn_dim, 1, 1 << 18)?;
        c.check_range(
            "max_position_embeddings",
            cfg.max_position_embeddings,
            1,
            1 << 20,
        )?;
        c.check_divides(
            "d_model",
            cfg.d_model,
            "encoder_attention_heads",
            cfg.encoder_attention_heads,
        )?;
        c.check_divides(
            "d_model",
            cfg.d_model,
            "decoder_attention_heads",
            cfg.decoder_attention_heads,
        )?;
        for (field, on) in [("normalize_before", false), ("add_final_layer_norm", false)] {
            if c.bool_or(field, on)? != on {
                return Err(Error::field(
                    &c.path,
                    field,
                    "pre-LN (mBART-style) layers are not supported by kiln's BART",
                ));
            }
        }
        Ok(cfg)
    }

    /// Reads and parses `config.json` at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        Self::from_raw(&RawConfig::load(path)?)
    }

    /// Checkpoint keys are the module's paths; `final_logits_bias` may be absent (transformers then uses
    /// zeros). Tied copies (`model.{encoder,decoder}.embed_tokens.weight`, `lm_head.weight`) that some
    /// files carry are reported unused.
    pub fn load_spec() -> LoadSpec {
        LoadSpec {
            remaps: vec![],
            optional: vec![r"^final_logits_bias$".into()],
            transpose_linear: true,
        }
    }

    /// A randomly initialised model (normal(0, init_std) weights, zero biases). Parameters are lazy, so
    /// loading a checkpoint over it never holds two copies.
    pub fn init<B: Backend>(&self, device: &B::Device) -> BartForConditionalGeneration<B> {
        let std = self.init_std;
        let d = self.d_model;
        let lin = |i: usize, o: usize| PeftLinear::new_normal(i, o, true, std, device);
        // BART's LayerNorms are torch's default (eps 1e-5).
        let ln = || LayerNorm::new(d, 1e-5, device);
        let emb = |n: usize| {
            EmbeddingConfig::new(n, d)
                .with_initializer(Initializer::Normal { mean: 0.0, std })
                .init(device)
        };
        let attn = |heads: usize| BartAttention {
            q_proj: lin(d, d),
            k_proj: lin(d, d),
            v_proj: lin(d, d),
            out_proj: lin(d, d),
            n_heads: heads,
            scale: ((d / heads) as f64).powf(-0.5),
        };
        let embed_scale = if self.scale_embedding {
            (d as f64).sqrt()
        } else {
            1.0
        };
        let n_pos = self.max_position_embeddings + POSITION_OFFSET;
        let encoder = BartEncoder {
            embed_positions: emb(n_pos),
            layernorm_embedding: ln(),
            layers: (0..self.encoder_layers)
                .map(|_| BartEncoderLayer {
                    self_attn: attn(self.encoder_attention_heads),
                    self_attn_layer_norm: ln(),
                    fc1: lin(d, self.encoder_ffn_dim),
                    fc2: lin(self.encoder_ffn_dim, d),
                    final_layer_norm: ln(),
                    act: self.activation_function,
                    attention_adapter: None,
                    output_adapter: None,
                })
                .collect(),
            embed_scale,
        };
        let decoder = BartDecoder {
            embed_positions: emb(n_pos),
            layernorm_embedding: ln(),
            layers: (0..self.decoder_layers)
                .map(|_| BartDecoderLayer {
                    self_attn: attn(self.decoder_attention_heads),
                    self_attn_layer_norm: ln(),
                    encoder_attn: attn(self.decoder_attention_heads),
                    encoder_attn_layer_norm: ln(),
                    fc1: lin(d, self.decoder_ffn_dim),
                    fc2: lin(self.decoder_ffn_dim, d),
                    final_layer_norm: ln(),
                    act: self.activation_function,
                    attention_adapter: None,
                    output_adapter: None,
                })
                .collect(),
            embed_scale,
        };
        BartForConditionalGeneration {
            model: BartModel {
                shared: emb(self.vocab_size),
                encoder,
                decoder,
            },
            final_logits_bias: Initializer::Zeros.init([1, self.vocab_size], device),
        }
    }
}

/// BART with the LM head (transformers' `BartForConditionalGeneration`); the head is tied to `model.shared`.
#[derive(Module, Debug)]
pub struct BartForConditionalGeneration<B: Backend> {
    /// The encoder-decoder body (`model.*` keys).
    pub model: BartModel<B>,
    /// `[1, vocab]`, added to the logits.
    pub final_logits_bias: Param<Tensor<B, 2>>,
}

/// The BART encoder-decoder body (transformers' `BartModel`).
#[derive(Module, Debug)]
pub struct BartModel<B: Backend> {
    /// `[vocab, d]`: both stacks' token embedding and the LM head.
    pub shared: Embedding<B>,
    /// The encoder stack.
    pub encoder: BartEncoder<B>,
    /// The decoder stack.
    pub decoder: BartDecoder<B>,
}

/// BART's encoder (`BartEncoder`); token embeddings come from [`BartModel::shared`].
#[derive(Module, Debug)]
pub struct BartEncoder<B: Backend> {
    /// `[max_position_embeddings + 2, d]`.
    pub embed_positions: Embedding<B>,
    /// LayerNorm over the summed token and position embeddings.
    pub layernorm_embedding: LayerNorm<B>,
    /// The `encoder_layers` encoder layers.
    pub layers: Vec<BartEncoderLayer<B>>,
    /// Token-embedding multiplier: `√d_model` with `scale_embedding`, else 1.
    pub embed_scale: f64,
}

/// BART's decoder (`BartDecoder`); token embeddings come from [`BartModel::shared`].
#[derive(Module, Debug)]
pub struct BartDecoder<B: Backend> {
    /// Learned position embedding `[max_position_embeddings + 2, d]`, looked up at position + 2.
    pub embed_positions: Embedding<B>,
    /// LayerNorm over the summed token and position embeddings.
    pub layernorm_embedding: LayerNorm<B>,
    /// The `decoder_layers` decoder layers.
    pub layers: Vec<BartDecoderLayer<B>>,
    /// Token-embedding multiplier: `√d_model` with `scale_embedding`, else 1.
    pub embed_scale: f64,
}

/// BART multi-head attention (`BartAttention`), used for self- and cross-attention.
#[derive(Module, Debug)]
pub struct BartAttention<B: Backend> {
    /// Query projection `[d, d]`.
    pub q_proj: PeftLinear<B>,
    /// Key projection `[d, d]` (applied to the encoder states in cross-attention).
    pub k_proj: PeftLinear<B>,
    /// Value projection `[d, d]` (applied to the encoder states in cross-attention).
    pub v_proj: PeftLinear<B>,
    /// Output projection `[d, d]`.
    pub out_proj: PeftLinear<B>,
    /// Number of attention heads.
    pub n_heads: usize,
    /// `head_dim^-0.5`.
    pub scale: f64,
}

/// `x = LN(x + self_attn(x))`, `LN(x + fc2(act(fc1(x))))`.
#[derive(Module, Debug)]
pub struct BartEncoderLayer<B: Backend> {
    /// Self-attention over the input tokens.
    pub self_attn: BartAttention<B>,
    /// LayerNorm after the self-attention residual.
    pub self_attn_layer_norm: LayerNorm<B>,
    /// Feed-forward up projection `[d, encoder_ffn_dim]`.
    pub fc1: PeftLinear<B>,
    /// Feed-forward down projection `[encoder_ffn_dim, d]`.
    pub fc2: PeftLinear<B>,
    /// LayerNorm after the feed-forward residual.
    pub final_layer_norm: LayerNorm<B>,
    /// Feed-forward activation.
    #[module(skip)]
    pub act: Activation,
    /// A bottleneck adapter (Houlsby placement) on the self-attention output (`out_proj`), before the
    /// residual and LayerNorm.
    pub attention_adapter: Option<Adapter<B>>,
    /// A bottleneck adapter (Houlsby and Pfeiffer placements) on the feed-forward output (`fc2`), before the
    /// residual and LayerNorm.
    pub output_adapter: Option<Adapter<B>>,
}

/// `x = LN(x + self_attn(x))`, `x = LN(x + encoder_attn(x, enc))`, `LN(x + fc2(act(fc1(x))))`.
///
/// Adapters go where the `adapters` library's Houlsby and Pfeiffer configurations put them: after the
/// self-attention and after the feed-forward block. Cross-attention gets none (the library's
/// `cross_adapter` is off in both configurations).
#[derive(Module, Debug)]
pub struct BartDecoderLayer<B: Backend> {
    /// Causal self-attention (keys/values cached during generation).
    pub self_attn: BartAttention<B>,
    /// LayerNorm after the self-attention residual.
    pub self_attn_layer_norm: LayerNorm<B>,
    /// Cross-attention over the encoder's final hidden states.
    pub encoder_attn: BartAttention<B>,
    /// LayerNorm after the cross-attention residual.
    pub encoder_attn_layer_norm: LayerNorm<B>,
    /// Feed-forward up projection `[d, decoder_ffn_dim]`.
    pub fc1: PeftLinear<B>,
    /// Feed-forward down projection `[decoder_ffn_dim, d]`.
    pub fc2: PeftLinear<B>,
    /// LayerNorm after the feed-forward residual.
    pub final_layer_norm: LayerNorm<B>,
    /// Feed-forward activation.
    #[module(skip)]
    pub act: Activation,
    /// A bottleneck adapter (Houlsby placement) on the self-attention output, before the residual and
    /// LayerNorm.
    pub attention_adapter: Option<Adapter<B>>,
    /// A bottleneck adapter (Houlsby and Pfeiffer placements) on the feed-forward output, before the residual
    /// and LayerNorm.
    pub output_adapter: Option<Adapter<B>>,
}

impl<B: Backend> BartAttention<B> {
    fn project(&self, lin: &PeftLinear<B>, x: Tensor<B, 3>) -> Tensor<B, 4> {
        split_heads(lin.forward(x), self.n_heads)
    }

    fn self_attend(
        &self,
        x: Tensor<B, 3>,
        mask: Tensor<B, 4>,
        cache: Option<(&mut KvCache<B>, usize)>,
    ) -> Tensor<B, 3> {
        let q = self.project(&self.q_proj, x.clone());
        let k = self.project(&self.k_proj, x.clone());
        let v = self.project(&self.v_proj, x);
        let (k, v) = match cache {
            Some((c, layer)) => c.extend(layer, k, v),
            None => (k, v),
        };
        self.out_proj
            .forward(merge_heads(attend(q, k, v, Some(self.scale), Some(mask))))
    }

    fn cross_attend(
        &self,
        x: Tensor<B, 3>,
        kv: &LayerCache<B>,
        mask: Tensor<B, 4>,
    ) -> Tensor<B, 3> {
        let q = self.project(&self.q_proj, x);
        self.out_proj.forward(merge_heads(grouped_attend(
            q,
            kv.k.clone(),
            kv.v.clone(),
            Some(self.scale),
            mask,
        )))
    }

    fn kv(&self, enc: Tensor<B, 3>) -> LayerCache<B> {
        LayerCache {
            k: self.project(&self.k_proj, enc.clone()),
            v: self.project(&self.v_proj, enc),
        }
    }
}

impl<B: Backend> BartEncoderLayer<B> {
    fn forward(&self, x: Tensor<B, 3>, mask: Tensor<B, 4>) -> Tensor<B, 3> {
        let a = self.self_attn.self_attend(x.clone(), mask, None);
        let x = self
            .self_attn_layer_norm
            .forward(x + maybe_adapt(&self.attention_adapter, a));
        let h = self
            .fc2
            .forward(self.act.forward(self.fc1.forward(x.clone())));
        self.final_layer_norm
            .forward(x + maybe_adapt(&self.output_adapter, h))
    }
}

impl<B: Backend> BartDecoderLayer<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        mask: Tensor<B, 4>,
        kv: &LayerCache<B>,
        cross_mask: Tensor<B, 4>,
        cache: Option<(&mut KvCache<B>, usize)>,
    ) -> Tensor<B, 3> {
        let a = self.self_attn.self_attend(x.clone(), mask, cache);
        let x = self
            .self_attn_layer_norm
            .forward(x + maybe_adapt(&self.attention_adapter, a));
        let x = self
            .encoder_attn_layer_norm
            .forward(x.clone() + self.encoder_attn.cross_attend(x, kv, cross_mask));
        let h = self
            .fc2
            .forward(self.act.forward(self.fc1.forward(x.clone())));
        self.final_layer_norm
            .forward(x + maybe_adapt(&self.output_adapter, h))
    }
}

/// `scale · tokens + positions[past..past + t] (+ offset)`, then `layernorm_embedding`.
fn embed<B: Backend>(
    shared: &Embedding<B>,
    positions: &Embedding<B>,
    norm: &LayerNorm<B>,
    scale: f64,
    ids: Tensor<B, 2, Int>,
    past: usize,
) -> Result<Tensor<B, 3>> {
    let [b, t] = ids.dims();
    let max = positions.weight.dims()[0];
    if past + t + POSITION_OFFSET > max {
        return Err(Error::Input(format!(
            "{} positions exceed BART's max_position_embeddings = {}",
            past + t,
            max - POSITION_OFFSET
        )));
    }
    let device = ids.device();
    let mut x = shared.forward(ids);
    if scale != 1.0 {
        x = x.mul_scalar(scale);
    }
    let start = (past + POSITION_OFFSET) as i64;
    let pos = Tensor::<B, 1, Int>::arange(start..start + t as i64, &device)
        .unsqueeze::<2>()
        .repeat_dim(0, b);
    Ok(norm.forward(x + positions.forward(pos)))
}

impl<B: Backend> BartForConditionalGeneration<B> {
    /// Insert bottleneck adapters into every encoder and decoder layer (Houlsby: after self-attention and the
    /// feed-forward; Pfeiffer: after the feed-forward only), freshly initialised (the identity until trained;
    /// replacing any attached before).
    pub fn add_adapters(mut self, cfg: &AdapterConfig) -> Self {
        let d = self.model.shared.weight.dims()[1];
        let device = self.model.shared.weight.device();
        let houlsby = cfg.placement == AdapterPlacement::Houlsby;
        for l in self.model.encoder.layers.iter_mut() {
            l.attention_adapter = houlsby.then(|| cfg.init(d, &device));
            l.output_adapter = Some(cfg.init(d, &device));
        }
        for l in self.model.decoder.layers.iter_mut() {
            l.attention_adapter = houlsby.then(|| cfg.init(d, &device));
            l.output_adapter = Some(cfg.init(d, &device));
        }
        self
    }

    /// [`Self::add_adapters`], then freeze everything else. Returns the model and its (trainable, total)
    /// parameter counts.
    pub fn with_frozen_adapters(self, cfg: &AdapterConfig) -> (Self, usize, usize) {
        kiln_peft::freeze_all_but_adapters(self.add_adapters(cfg))
    }

    /// `model.encoder(input_ids, attention_mask).last_hidden_state`: `[b, s, d]`.
    pub fn encoder_forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: &[Vec<u8>],
    ) -> Result<Tensor<B, 3>> {
        self.encoder_from_embeds(self.word_embeddings(input_ids), attention_mask)
    }

    /// `shared(ids) · embed_scale` (transformers' `BartScaledWordEmbedding`).
    pub fn word_embeddings(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let x = self.model.shared.forward(ids);
        let scale = self.model.encoder.embed_scale;
        if scale != 1.0 {
            x.mul_scalar(scale)
        } else {
            x
        }
    }

    /// The encoder over input embeddings `[b, s, d]`: `+ positions[0..s]`, `layernorm_embedding`, the layers.
    pub fn encoder_from_embeds(
        &self,
        embeds: Tensor<B, 3>,
        attention_mask: &[Vec<u8>],
    ) -> Result<Tensor<B, 3>> {
        let device = embeds.device();
        let [b, s, _] = embeds.dims();
        let e = &self.model.encoder;
        let max = e.embed_positions.weight.dims()[0];
        if s + POSITION_OFFSET > max {
            return Err(Error::Input(format!(
                "{s} positions exceed BART's max_position_embeddings = {}",
                max - POSITION_OFFSET
            )));
        }
        let pos = Tensor::<B, 1, Int>::arange(
            POSITION_OFFSET as i64..(s + POSITION_OFFSET) as i64,
            &device,
        )
        .unsqueeze::<2>()
        .repeat_dim(0, b);
        let mut x = e
            .layernorm_embedding
            .forward(embeds + e.embed_positions.forward(pos));
        let mask = additive_mask::<B>(attention_mask, s, false, &device);
        for layer in &e.layers {
            x = layer.forward(x, mask.clone());
        }
        Ok(x)
    }

    /// Logits `[b, t, vocab]` as `model(input_ids, attention_mask, decoder_input_ids).logits`.
    pub fn forward(
        &self,
        input_ids: &[Vec<u32>],
        attention_mask: &[Vec<u8>],
        decoder_input_ids: &[Vec<u32>],
    ) -> Result<Tensor<B, 3>> {
        let device = self.device();
        let ids = encoder_inputs::<B>(input_ids, attention_mask, self.vocab_size(), &device)?;
        let enc = self.encoder_forward(ids, attention_mask)?;
        crate::models::attention::check_ids(decoder_input_ids, self.vocab_size(), "decoder input")?;
        let dec = crate::models::attention::ids_tensor::<B>(decoder_input_ids, &device);
        self.decoder_logits(dec, enc, attention_mask)
    }
}

impl<B: Backend> EncoderDecoder<B> for BartForConditionalGeneration<B> {
    fn encode(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: &[Vec<u8>],
    ) -> Result<Tensor<B, 3>> {
        self.encoder_forward(input_ids, attention_mask)
    }

    fn input_embeddings(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.word_embeddings(input_ids)
    }

    fn encode_embeds(
        &self,
        embeds: Tensor<B, 3>,
        attention_mask: &[Vec<u8>],
    ) -> Result<Tensor<B, 3>> {
        self.encoder_from_embeds(embeds, attention_mask)
    }

    fn cross_kv(&self, encoder_hidden: Tensor<B, 3>) -> Vec<LayerCache<B>> {
        self.model
            .decoder
            .layers
            .iter()
            .map(|l| l.encoder_attn.kv(encoder_hidden.clone()))
            .collect()
    }

    fn n_decoder_layers(&self) -> usize {
        self.model.decoder.layers.len()
    }

    fn vocab_size(&self) -> usize {
        self.model.shared.weight.lazy_shape()[0]
    }

    fn max_target_positions(&self) -> Option<usize> {
        Some(self.model.decoder.embed_positions.weight.lazy_shape()[0] - POSITION_OFFSET)
    }

    fn decode(
        &self,
        ids: Tensor<B, 2, Int>,
        self_mask: &[Vec<u8>],
        mut cache: Option<&mut KvCache<B>>,
        cross: &[LayerCache<B>],
        cross_mask: Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>> {
        let device = ids.device();
        let [r, t] = ids.dims();
        let past = cache.as_ref().map_or(0, |c| c.len());
        if self_mask.len() != r || self_mask.iter().any(|m| m.len() != past + t) {
            return Err(Error::Input(format!(
                "decoder mask must be {r} rows of {} (cached + new tokens)",
                past + t
            )));
        }
        let m = &self.model;
        let d = &m.decoder;
        let mut x = embed(
            &m.shared,
            &d.embed_positions,
            &d.layernorm_embedding,
            d.embed_scale,
            ids,
            past,
        )?;
        let mask = additive_mask::<B>(self_mask, t, true, &device);
        for (i, layer) in d.layers.iter().enumerate() {
            x = layer.forward(
                x,
                mask.clone(),
                &cross[i],
                cross_mask.clone(),
                cache.as_deref_mut().map(|c| (c, i)),
            );
        }
        Ok(x)
    }

    fn lm_logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        crate::models::attention::tied_head(hidden, self.model.shared.weight.val())
            + self.final_logits_bias.val().unsqueeze::<3>()
    }

    fn device(&self) -> B::Device {
        self.model.shared.weight.device()
    }
}

/// Load a BART checkpoint directory (`config.json` + safetensors weights).
pub fn load<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(BartConfig, BartForConditionalGeneration<B>, LoadReport)> {
    let raw = RawConfig::load(&dir.join("config.json"))?;
    let mt = raw.model_type()?;
    if mt != "bart" {
        return Err(Error::UnsupportedArchitecture {
            path: raw.path.clone(),
            model_type: mt,
            supported: "bart here".into(),
        });
    }
    let cfg = BartConfig::from_raw(&raw)?;
    let mut model = cfg.init::<B>(device);
    let files = crate::load::weights::weight_files(dir)?;
    let report = crate::load::weights::load_into(&mut model, &files, &BartConfig::load_spec())?;
    Ok((cfg, model, report))
}
