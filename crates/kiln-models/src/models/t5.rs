//! T5 (`T5ForConditionalGeneration`), as in Raffel et al. 2020, and its v1.1 / T0 / flan-t5 variants.
//!
//! - One token embedding `shared` for encoder and decoder; no position embeddings. Instead, block 0 of each
//!   stack holds `relative_attention_bias [num_buckets, heads]`, turned into a per-head bias on the
//!   attention scores from the bucketed key − query distance (bidirectional buckets in the encoder, causal
//!   in the decoder); the bias is computed once per forward and shared by every block of the stack.
//! - Attention scores are `q·kᵀ + bias` with no `1/sqrt(d)` scaling; `d_kv` (per-head size) need not be
//!   `d_model / num_heads`. Projections have no bias.
//! - Pre-norm blocks with T5's RMS norm (no mean subtraction, no bias, variance in f32), a final norm per stack.
//! - Feed-forward: `relu` (v1.0: `wi`, `wo`) or gated (`gated-gelu`, v1.1: `gelu_new(wi_0 x) * wi_1 x`).
//! - LM head: tied to `shared` unless the checkpoint has its own `lm_head.weight` (T0, flan-t5);
//!   decoder outputs are scaled by `d_model^-0.5` first when `scale_decoder_outputs` (v1.0).
//!
//! transformers 5.24 always writes `tie_word_embeddings: true` and records the v1.0 scaling as
//! `scale_decoder_outputs`; older configs carry only `tie_word_embeddings` (false for v1.1 / flan), which
//! then decides the scaling. Whether the head is untied is decided by the weight file, as transformers does.

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

/// The fields of T5's `config.json` that the forward pass uses.
#[derive(Debug, Clone, PartialEq)]
pub struct T5Config {
    /// Vocabulary size: rows of `shared` (`vocab_size`).
    pub vocab_size: usize,
    /// Hidden size of both stacks (`d_model`, alias `hidden_size`).
    pub d_model: usize,
    /// Size of each attention head (`d_kv`, alias `head_dim`); need not be `d_model / num_heads`.
    pub d_kv: usize,
    /// Inner width of the feed-forward blocks (`d_ff`).
    pub d_ff: usize,
    /// Number of encoder blocks (`num_layers`, alias `num_hidden_layers`).
    pub num_layers: usize,
    /// Number of decoder blocks (`num_decoder_layers`, default `num_layers`).
    pub num_decoder_layers: usize,
    /// Attention heads per layer (`num_heads`, alias `num_attention_heads`).
    pub num_heads: usize,
    /// Number of relative-position buckets (`relative_attention_num_buckets`, default 32).
    pub relative_attention_num_buckets: usize,
    /// Distance beyond which relative positions share the last bucket (`relative_attention_max_distance`,
    /// default 128).
    pub relative_attention_max_distance: usize,
    /// Epsilon of every RMS norm (`layer_norm_epsilon`, default 1e-6).
    pub layer_norm_epsilon: f64,
    /// `relu`, `gelu`, `gated-gelu`, `gated-silu`, …
    pub feed_forward_proj: String,
    /// `gated-*`: `act(wi_0 x) * wi_1 x`.
    pub is_gated_act: bool,
    /// The feed-forward activation from `feed_forward_proj` (`gated-gelu` means `gelu_new`, as transformers).
    pub dense_act_fn: Activation,
    /// Multiply decoder outputs by `d_model^-0.5` before the LM head (T5 v1.0).
    pub scale_decoder_outputs: bool,
    /// A separate `lm_head.weight` (T0, flan-t5). [`load`] sets it from the weight file.
    pub untied_lm_head: bool,
    /// Multiplier of every initialisation std (`initializer_factor`, default 1.0).
    pub initializer_factor: f64,
    /// Padding token id (`pad_token_id`, 0 in T5 checkpoints; also the decoder start).
    pub pad_token_id: Option<u32>,
    /// End-of-sequence token id (`eos_token_id`, `</s>` = 1 in T5 checkpoints; the first one if a list).
    pub eos_token_id: Option<u32>,
    /// First decoder input token (`decoder_start_token_id`, 0 = the pad token in T5 checkpoints).
    pub decoder_start_token_id: Option<u32>,
}

impl T5Config {
    /// The config from a parsed `config.json`, with defaults as transformers' `T5Config` and range checks.
    pub fn from_raw(c: &RawConfig) -> Result<Self> {
        let num_layers = c.req_usize_any(&["num_layers", "num_hidden_layers"])?;
        let feed_forward_proj = c.str_or("feed_forward_proj", "relu")?;
        let parts: Vec<&str> = feed_forward_proj.split('-').collect();
        let (is_gated_act, act_name) = match parts.as_slice() {
            [act] => (false, *act),
            ["gated", act] => (true, *act),
            _ => {
                return Err(Error::field(
                    &c.path,
                    "feed_forward_proj",
                    format!(
                        "`{feed_forward_proj}` is not of the form `gated-{{ACT}}` or `{{ACT}}`"
                    ),
                ))
            }
        };
        // transformers: `gated-gelu` means the tanh approximation (as the original v1.1 checkpoints).
        let act_name = if feed_forward_proj == "gated-gelu" {
            "gelu_new"
        } else {
            act_name
        };
        let dense_act_fn = Activation::parse(act_name).ok_or_else(|| {
            Error::field(
                &c.path,
                "feed_forward_proj",
                format!("unsupported activation `{act_name}`"),
            )
        })?;
        let tie = c.bool_or("tie_word_embeddings", true)?;
        let cfg = Self {
            vocab_size: c.req_usize("vocab_size")?,
            d_model: c.req_usize_any(&["d_model", "hidden_size"])?,
            d_kv: c.req_usize_any(&["d_kv", "head_dim"])?,
            d_ff: c.req_usize("d_ff")?,
            num_layers,
            num_decoder_layers: c.opt_usize("num_decoder_layers")?.unwrap_or(num_layers),
            num_heads: c.req_usize_any(&["num_heads", "num_attention_heads"])?,
            relative_attention_num_buckets: c.usize_or("relative_attention_num_buckets", 32)?,
            relative_attention_max_distance: c.usize_or("relative_attention_max_distance", 128)?,
            layer_norm_epsilon: c.f64_or("layer_norm_epsilon", 1e-6)?,
            feed_forward_proj: feed_forward_proj.clone(),
            is_gated_act,
            dense_act_fn,
            scale_decoder_outputs: c.bool_or("scale_decoder_outputs", tie)?,
            untied_lm_head: !tie,
            initializer_factor: c.f64_or("initializer_factor", 1.0)?,
            pad_token_id: c.opt_token_id("pad_token_id")?,
            eos_token_id: c.opt_token_id("eos_token_id")?,
            decoder_start_token_id: c.opt_token_id("decoder_start_token_id")?,
        };
        c.check_range("vocab_size", cfg.vocab_size, 1, 10_000_000)?;
        c.check_range("d_model", cfg.d_model, 1, 1 << 16)?;
        c.check_range("d_kv", cfg.d_kv, 1, 1 << 14)?;
        c.check_range("d_ff", cfg.d_ff, 1, 1 << 18)?;
        c.check_range("num_layers", cfg.num_layers, 1, 1024)?;
        c.check_range("num_decoder_layers", cfg.num_decoder_layers, 1, 1024)?;
        c.check_range("num_heads", cfg.num_heads, 1, 1024)?;
        // The encoder halves the buckets and then keeps half of those exact: at least 4 for a log range.
        c.check_range(
            "relative_attention_num_buckets",
            cfg.relative_attention_num_buckets,
            4,
            1 << 16,
        )?;
        c.check_range(
            "relative_attention_max_distance",
            cfg.relative_attention_max_distance,
            1,
            1 << 24,
        )?;
        if !(cfg.layer_norm_epsilon > 0.0 && cfg.layer_norm_epsilon < 1.0) {
            return Err(Error::field(
                &c.path,
                "layer_norm_epsilon",
                format!("{} is not in (0, 1)", cfg.layer_norm_epsilon),
            ));
        }
        Ok(cfg)
    }

    /// Reads and parses `config.json` at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        Self::from_raw(&RawConfig::load(path)?)
    }

    /// Checkpoint keys are the module's paths. Older files also carry the tied copies
    /// `{encoder,decoder}.embed_tokens.weight` (reported unused).
    pub fn load_spec() -> LoadSpec {
        LoadSpec {
            remaps: vec![],
            optional: vec![],
            transpose_linear: true,
        }
    }

    /// A randomly initialised model (HF's `_init_weights` distributions). Parameters are lazy: nothing is
    /// allocated until first use, so loading a checkpoint over it never holds two copies.
    pub fn init<B: Backend>(&self, device: &B::Device) -> T5ForConditionalGeneration<B> {
        let f = self.initializer_factor;
        let d = self.d_model;
        let inner = self.num_heads * self.d_kv;
        let lin = |i: usize, o: usize, std: f64| PeftLinear::new_normal(i, o, false, std, device);
        let norm = || T5LayerNorm {
            weight: Initializer::Constant { value: f }.init([d], device),
            eps: self.layer_norm_epsilon,
        };
        let attention = |relative: bool| T5Attention {
            q: lin(d, inner, f * ((d * self.d_kv) as f64).powf(-0.5)),
            k: lin(d, inner, f * (d as f64).powf(-0.5)),
            v: lin(d, inner, f * (d as f64).powf(-0.5)),
            o: lin(inner, d, f * (inner as f64).powf(-0.5)),
            relative_attention_bias: relative.then(|| {
                EmbeddingConfig::new(self.relative_attention_num_buckets, self.num_heads)
                    .with_initializer(Initializer::Normal {
                        mean: 0.0,
                        std: f * (d as f64).powf(-0.5),
                    })
                    .init(device)
            }),
            n_heads: self.num_heads,
            d_kv: self.d_kv,
        };
        let ff = || {
            let wi_std = f * (d as f64).powf(-0.5);
            let (wi, wi_0, wi_1) = if self.is_gated_act {
                (
                    None,
                    Some(lin(d, self.d_ff, wi_std)),
                    Some(lin(d, self.d_ff, wi_std)),
                )
            } else {
                (Some(lin(d, self.d_ff, wi_std)), None, None)
            };
            T5DenseReluDense {
                wi,
                wi_0,
                wi_1,
                wo: lin(self.d_ff, d, f * (self.d_ff as f64).powf(-0.5)),
                act: self.dense_act_fn,
            }
        };
        let layer = |self_attn: Option<T5Attention<B>>,
                     cross: Option<T5Attention<B>>,
                     dense: Option<T5DenseReluDense<B>>| T5Layer {
            SelfAttention: self_attn,
            EncDecAttention: cross,
            DenseReluDense: dense,
            layer_norm: norm(),
            adapter: None,
        };
        let stack = |n: usize, is_decoder: bool| T5Stack {
            block: (0..n)
                .map(|i| {
                    let mut layers = vec![layer(Some(attention(i == 0)), None, None)];
                    if is_decoder {
                        layers.push(layer(None, Some(attention(false)), None));
                    }
                    layers.push(layer(None, None, Some(ff())));
                    T5Block { layer: layers }
                })
                .collect(),
            final_layer_norm: norm(),
            is_decoder,
            num_buckets: self.relative_attention_num_buckets,
            max_distance: self.relative_attention_max_distance,
        };
        let emb = |std: f64| {
            EmbeddingConfig::new(self.vocab_size, d)
                .with_initializer(Initializer::Normal { mean: 0.0, std })
                .init(device)
        };
        T5ForConditionalGeneration {
            shared: emb(f),
            encoder: stack(self.num_layers, false),
            decoder: stack(self.num_decoder_layers, true),
            lm_head: self.untied_lm_head.then(|| lin(d, self.vocab_size, f)),
            scale_decoder_outputs: self.scale_decoder_outputs,
        }
    }
}

/// T5 with the LM head (transformers' `T5ForConditionalGeneration`).
#[derive(Module, Debug)]
pub struct T5ForConditionalGeneration<B: Backend> {
    /// `[vocab, d_model]`, shared by both stacks (and the LM head when tied).
    pub shared: Embedding<B>,
    /// The encoder stack (bidirectional relative-position buckets).
    pub encoder: T5Stack<B>,
    /// The decoder stack (causal self-attention, cross-attention over the encoder output).
    pub decoder: T5Stack<B>,
    /// `Some` when the checkpoint has its own `lm_head.weight`.
    pub lm_head: Option<PeftLinear<B>>,
    /// Multiply decoder outputs by `d_model^-0.5` before the LM head (T5 v1.0; see
    /// [`T5Config::scale_decoder_outputs`]).
    pub scale_decoder_outputs: bool,
}

/// An encoder or decoder stack (`T5Stack`): blocks, then a final RMS norm.
#[derive(Module, Debug)]
pub struct T5Stack<B: Backend> {
    /// The blocks (`block.{i}` keys); block 0's self-attention holds the relative attention bias.
    pub block: Vec<T5Block<B>>,
    /// RMS norm after the last block.
    pub final_layer_norm: T5LayerNorm<B>,
    /// Whether this is the decoder (causal buckets and mask, cross-attention sub-layers).
    pub is_decoder: bool,
    /// Number of relative-position buckets (`relative_attention_num_buckets`).
    pub num_buckets: usize,
    /// Maximum distance of the bucketing (`relative_attention_max_distance`).
    pub max_distance: usize,
}

/// `layer.0`: self-attention; decoder `layer.1`: cross-attention; last: feed-forward.
#[derive(Module, Debug)]
pub struct T5Block<B: Backend> {
    /// The sub-layers, in checkpoint order (2 in the encoder, 3 in the decoder).
    pub layer: Vec<T5Layer<B>>,
}

pub use layer::T5Layer;

// The sub-layer's field names are the checkpoint's (`SelfAttention`, …); the lint also fires inside the
// derive's generated code, hence a module-wide allow.
#[allow(non_snake_case)]
mod layer {
    use super::*;

    /// One sub-layer of a block, named as in the checkpoint (exactly one of the three parts is present).
    #[derive(Module, Debug)]
    pub struct T5Layer<B: Backend> {
        /// Self-attention (`layer.0` of every block).
        pub SelfAttention: Option<T5Attention<B>>,
        /// Cross-attention over the encoder output (`layer.1` of decoder blocks).
        pub EncDecAttention: Option<T5Attention<B>>,
        /// The feed-forward block (the last sub-layer of every block).
        pub DenseReluDense: Option<T5DenseReluDense<B>>,
        /// RMS norm applied to the sub-layer's input (pre-norm).
        pub layer_norm: T5LayerNorm<B>,
        /// A bottleneck adapter on this sub-layer's output (`o` or `wo`), before the residual: on the
        /// self-attention layer (Houlsby placement) and the feed-forward layer (Houlsby and Pfeiffer).
        /// Cross-attention gets none (the `adapters` library's `cross_adapter` is off in both).
        pub adapter: Option<Adapter<B>>,
    }
}

/// T5 attention (`T5Attention`): no bias in the projections and no `1/√d_kv` score scaling.
#[derive(Module, Debug)]
pub struct T5Attention<B: Backend> {
    /// Query projection `[d_model, num_heads · d_kv]`.
    pub q: PeftLinear<B>,
    /// Key projection `[d_model, num_heads · d_kv]`.
    pub k: PeftLinear<B>,
    /// Value projection `[d_model, num_heads · d_kv]`.
    pub v: PeftLinear<B>,
    /// Output projection `[num_heads · d_kv, d_model]`.
    pub o: PeftLinear<B>,
    /// `[num_buckets, heads]`, block 0 of each stack only.
    pub relative_attention_bias: Option<Embedding<B>>,
    /// Number of attention heads.
    pub n_heads: usize,
    /// Size of each head.
    pub d_kv: usize,
}

/// T5 feed-forward block: `wo(act(wi x))`, or gated `wo(act(wi_0 x) * wi_1 x)` (`T5DenseGatedActDense`).
#[derive(Module, Debug)]
pub struct T5DenseReluDense<B: Backend> {
    /// Up projection `[d_model, d_ff]` (non-gated variants only).
    pub wi: Option<PeftLinear<B>>,
    /// Gate projection `[d_model, d_ff]`, passed through the activation (gated variants only).
    pub wi_0: Option<PeftLinear<B>>,
    /// Linear projection `[d_model, d_ff]` multiplied with the gate (gated variants only).
    pub wi_1: Option<PeftLinear<B>>,
    /// Down projection `[d_ff, d_model]`.
    pub wo: PeftLinear<B>,
    /// The activation (from `feed_forward_proj`).
    #[module(skip)]
    pub act: Activation,
}

/// T5's RMS norm: `weight · x / sqrt(mean(x²) + eps)`; no mean subtraction, no bias.
#[derive(Module, Debug)]
pub struct T5LayerNorm<B: Backend> {
    /// Per-channel scale `[d_model]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Epsilon added to the mean square (`layer_norm_epsilon`).
    pub eps: f64,
}

impl<B: Backend> T5LayerNorm<B> {
    /// Normalises `[b, s, d_model]` over the last dimension. Training backends run kiln-kernels' fused RMSNorm
    /// (one pass each way, the per-row reciprocal root mean square saved); the others the formula below.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = match kiln_kernels::try_rms_norm(x, self.weight.val(), self.eps) {
            Ok(y) => return y,
            Err((x, _)) => x,
        };
        // Activations are f32 here, so the variance is computed in f32 as transformers does.
        let var = x.clone().powi_scalar(2).mean_dim(2);
        let x = x * var.add_scalar(self.eps).sqrt().recip();
        x * self.weight.val().unsqueeze::<3>()
    }
}

impl<B: Backend> T5DenseReluDense<B> {
    /// The feed-forward output for `x` `[b, s, d_model]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = match (&self.wi, &self.wi_0, &self.wi_1) {
            (Some(wi), _, _) => self.act.forward(wi.forward(x)),
            (None, Some(w0), Some(w1)) => self.act.forward(w0.forward(x.clone())) * w1.forward(x),
            _ => panic!("T5DenseReluDense needs `wi` or both `wi_0` and `wi_1`"),
        };
        self.wo.forward(h)
    }
}

/// transformers' `_relative_position_bucket` for one `memory − query` distance (f32 arithmetic, as torch).
pub fn relative_position_bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let mut nb = num_buckets as i64;
    let mut ret = 0i64;
    let mut rp = relative_position;
    if bidirectional {
        nb /= 2;
        if rp > 0 {
            ret += nb;
        }
        rp = rp.abs();
    } else {
        rp = -rp.min(0);
    }
    let max_exact = nb / 2;
    if rp < max_exact {
        return (ret + rp) as usize;
    }
    let ratio = (rp as f32 / max_exact as f32).ln();
    let span = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
    let large = max_exact + (ratio / span * (nb - max_exact) as f32) as i64;
    (ret + large.min(nb - 1)) as usize
}

impl<B: Backend> T5Attention<B> {
    fn project(&self, lin: &PeftLinear<B>, x: Tensor<B, 3>) -> Tensor<B, 4> {
        split_heads(lin.forward(x), self.n_heads)
    }

    /// Self-attention with additive `bias` (relative positions + mask), appending to `cache` if given.
    fn self_attend(
        &self,
        x: Tensor<B, 3>,
        bias: Tensor<B, 4>,
        cache: Option<(&mut KvCache<B>, usize)>,
    ) -> Tensor<B, 3> {
        let q = self.project(&self.q, x.clone());
        let k = self.project(&self.k, x.clone());
        let v = self.project(&self.v, x);
        let (k, v) = match cache {
            Some((c, layer)) => c.extend(layer, k, v),
            None => (k, v),
        };
        self.o
            .forward(merge_heads(attend(q, k, v, None, Some(bias))))
    }

    /// Cross-attention over precomputed encoder keys/values (T5 adds no position bias here).
    fn cross_attend(
        &self,
        x: Tensor<B, 3>,
        kv: &LayerCache<B>,
        mask: Tensor<B, 4>,
    ) -> Tensor<B, 3> {
        let q = self.project(&self.q, x);
        self.o.forward(merge_heads(grouped_attend(
            q,
            kv.k.clone(),
            kv.v.clone(),
            None,
            mask,
        )))
    }

    fn kv(&self, enc: Tensor<B, 3>) -> LayerCache<B> {
        LayerCache {
            k: self.project(&self.k, enc.clone()),
            v: self.project(&self.v, enc),
        }
    }
}

impl<B: Backend> T5Layer<B> {
    pub(crate) fn self_attention(&self) -> &T5Attention<B> {
        self.SelfAttention
            .as_ref()
            .expect("T5 block layer 0 is self-attention")
    }
}

impl<B: Backend> T5Stack<B> {
    /// The relative position bias `[1, heads, t, past + t]` for queries at `past..past + t`.
    pub fn position_bias(&self, t: usize, past: usize, device: &B::Device) -> Tensor<B, 4> {
        let emb = self.block[0].layer[0]
            .self_attention()
            .relative_attention_bias
            .as_ref()
            .expect("block 0 of a T5 stack holds relative_attention_bias");
        let sk = past + t;
        let buckets: Vec<i64> = (0..t)
            .flat_map(|i| {
                (0..sk).map(move |j| {
                    relative_position_bucket(
                        j as i64 - (past + i) as i64,
                        !self.is_decoder,
                        self.num_buckets,
                        self.max_distance,
                    ) as i64
                })
            })
            .collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(buckets, [t, sk]), device);
        emb.forward(ids).permute([2, 0, 1]).unsqueeze::<4>()
    }

    /// Run the blocks on embeddings `x` with self-attention `bias` (position bias + mask), and, in the
    /// decoder, cross-attention to `cross` under `cross_mask`.
    fn forward(
        &self,
        mut x: Tensor<B, 3>,
        bias: Tensor<B, 4>,
        cross: Option<(&[LayerCache<B>], Tensor<B, 4>)>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        for (i, block) in self.block.iter().enumerate() {
            let l0 = &block.layer[0];
            let a = l0.self_attention().self_attend(
                l0.layer_norm.forward(x.clone()),
                bias.clone(),
                cache.as_deref_mut().map(|c| (c, i)),
            );
            x = x + maybe_adapt(&l0.adapter, a);
            if let Some((kv, mask)) = &cross {
                let l1 = &block.layer[1];
                let attn = l1
                    .EncDecAttention
                    .as_ref()
                    .expect("T5 decoder block layer 1 is cross-attention");
                x = x.clone() + attn.cross_attend(l1.layer_norm.forward(x), &kv[i], mask.clone());
            }
            let lf = block.layer.last().expect("T5 block has layers");
            let ff = lf
                .DenseReluDense
                .as_ref()
                .expect("T5 block's last layer is the feed-forward");
            let h = ff.forward(lf.layer_norm.forward(x.clone()));
            x = x + maybe_adapt(&lf.adapter, h);
        }
        self.final_layer_norm.forward(x)
    }
}

impl<B: Backend> T5ForConditionalGeneration<B> {
    /// Insert bottleneck adapters into every block of both stacks (Houlsby: after self-attention and the
    /// feed-forward; Pfeiffer: after the feed-forward only), freshly initialised (the identity until trained);
    /// replaces any attached before.
    pub fn add_adapters(mut self, cfg: &AdapterConfig) -> Self {
        let d = self.shared.weight.dims()[1];
        let device = self.shared.weight.device();
        let houlsby = cfg.placement == AdapterPlacement::Houlsby;
        for block in self
            .encoder
            .block
            .iter_mut()
            .chain(self.decoder.block.iter_mut())
        {
            let n = block.layer.len();
            for (j, layer) in block.layer.iter_mut().enumerate() {
                layer.adapter = if j == 0 {
                    houlsby.then(|| cfg.init(d, &device))
                } else if j == n - 1 {
                    Some(cfg.init(d, &device))
                } else {
                    None
                };
            }
        }
        self
    }

    /// [`Self::add_adapters`], then freeze everything else. Returns the model and its (trainable, total)
    /// parameter counts.
    pub fn with_frozen_adapters(self, cfg: &AdapterConfig) -> (Self, usize, usize) {
        kiln_peft::freeze_all_but_adapters(self.add_adapters(cfg))
    }

    /// `encoder(input_ids, attention_mask).last_hidden_state`: `[b, s, d_model]`.
    pub fn encoder_forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: &[Vec<u8>],
    ) -> Tensor<B, 3> {
        self.encoder_from_embeds(self.shared.forward(input_ids), attention_mask)
    }

    /// The encoder over input embeddings `[b, s, d_model]` (as `encoder(inputs_embeds=…)`).
    pub fn encoder_from_embeds(
        &self,
        embeds: Tensor<B, 3>,
        attention_mask: &[Vec<u8>],
    ) -> Tensor<B, 3> {
        let device = embeds.device();
        let s = embeds.dims()[1];
        let bias = self.encoder.position_bias(s, 0, &device)
            + additive_mask::<B>(attention_mask, s, false, &device);
        self.encoder.forward(embeds, bias, None, None)
    }

    /// Logits `[b, t, vocab]` as `model(input_ids, attention_mask, decoder_input_ids).logits`.
    pub fn forward(
        &self,
        input_ids: &[Vec<u32>],
        attention_mask: &[Vec<u8>],
        decoder_input_ids: &[Vec<u32>],
    ) -> Result<Tensor<B, 3>> {
        let device = self.shared.weight.device();
        let ids = encoder_inputs::<B>(input_ids, attention_mask, self.vocab_size(), &device)?;
        let enc = self.encoder_forward(ids, attention_mask);
        crate::models::attention::check_ids(decoder_input_ids, self.vocab_size(), "decoder input")?;
        let dec = crate::models::attention::ids_tensor::<B>(decoder_input_ids, &device);
        self.decoder_logits(dec, enc, attention_mask)
    }
}

impl<B: Backend> EncoderDecoder<B> for T5ForConditionalGeneration<B> {
    fn encode(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: &[Vec<u8>],
    ) -> Result<Tensor<B, 3>> {
        Ok(self.encoder_forward(input_ids, attention_mask))
    }

    fn input_embeddings(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.shared.forward(input_ids)
    }

    fn encode_embeds(
        &self,
        embeds: Tensor<B, 3>,
        attention_mask: &[Vec<u8>],
    ) -> Result<Tensor<B, 3>> {
        Ok(self.encoder_from_embeds(embeds, attention_mask))
    }

    fn cross_kv(&self, encoder_hidden: Tensor<B, 3>) -> Vec<LayerCache<B>> {
        self.decoder
            .block
            .iter()
            .map(|b| {
                b.layer[1]
                    .EncDecAttention
                    .as_ref()
                    .expect("T5 decoder cross-attention")
                    .kv(encoder_hidden.clone())
            })
            .collect()
    }

    fn n_decoder_layers(&self) -> usize {
        self.decoder.block.len()
    }

    fn vocab_size(&self) -> usize {
        self.shared.weight.lazy_shape()[0]
    }

    fn decode(
        &self,
        ids: Tensor<B, 2, Int>,
        self_mask: &[Vec<u8>],
        cache: Option<&mut KvCache<B>>,
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
        let x = self.shared.forward(ids);
        let bias = self.decoder.position_bias(t, past, &device)
            + additive_mask::<B>(self_mask, t, true, &device);
        Ok(self
            .decoder
            .forward(x, bias, Some((cross, cross_mask)), cache))
    }

    fn lm_logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let d = hidden.dims()[2];
        let h = if self.scale_decoder_outputs {
            hidden.mul_scalar((d as f64).powf(-0.5))
        } else {
            hidden
        };
        match &self.lm_head {
            Some(head) => head.forward(h),
            None => crate::models::attention::tied_head(h, self.shared.weight.val()),
        }
    }

    fn device(&self) -> B::Device {
        self.shared.weight.device()
    }
}

/// Load a T5 checkpoint directory (`config.json` + safetensors weights). The LM head is untied exactly when
/// the weight files contain `lm_head.weight`.
pub fn load<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(T5Config, T5ForConditionalGeneration<B>, LoadReport)> {
    let raw = RawConfig::load(&dir.join("config.json"))?;
    let mt = raw.model_type()?;
    if mt != "t5" {
        return Err(Error::UnsupportedArchitecture {
            path: raw.path.clone(),
            model_type: mt,
            supported: "t5 here".into(),
        });
    }
    let mut cfg = T5Config::from_raw(&raw)?;
    let files = crate::load::weights::weight_files(dir)?;
    let mut has_lm_head = false;
    for f in &files {
        has_lm_head |= crate::load::weights::inspect_safetensors(f)?
            .iter()
            .any(|t| t.name == "lm_head.weight");
    }
    cfg.untied_lm_head = has_lm_head;
    let mut model = cfg.init::<B>(device);
    let report = crate::load::weights::load_into(&mut model, &files, &T5Config::load_spec())?;
    Ok((cfg, model, report))
}
