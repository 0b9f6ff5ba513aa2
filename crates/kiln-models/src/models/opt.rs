//! OPT (`OPTForCausalLM`, Zhang et al. 2022): learned positions offset by 2 and derived from the attention
//! mask, pre-LN decoder layers (post-LN for opt-350m via `do_layer_norm_before = false`), ReLU, optional
//! `project_in`/`project_out` when `word_embed_proj_dim` differs from the hidden size, LM head tied to the
//! token embedding.

use std::path::Path;

use burn::nn::{Embedding, EmbeddingConfig};

use burn::prelude::*;
use kiln_peft::adapter::maybe_adapt;
use kiln_peft::{Adapter, AdapterConfig, AdapterPlacement, PeftLinear};

use crate::load::config::{Activation, RawConfig};
use crate::load::error::Result;
use crate::load::weights::LoadSpec;
use crate::models::attention::{additive_mask, attend, merge_heads, split_heads, KvCache};
use crate::models::norm::LayerNorm;

/// OPT's learned positions start at index 2 of `embed_positions`.
pub const POSITION_OFFSET: i64 = 2;

/// The fields of OPT's `config.json` that the forward pass uses.
#[derive(Debug, Clone, PartialEq)]
pub struct OptConfig {
    /// Vocabulary size: rows of `embed_tokens` (`vocab_size`).
    pub vocab_size: usize,
    /// Hidden size of the decoder layers (`hidden_size`).
    pub hidden_size: usize,
    /// Number of decoder layers (`num_hidden_layers`).
    pub num_hidden_layers: usize,
    /// Inner width of the feed-forward block (`ffn_dim`).
    pub ffn_dim: usize,
    /// Attention heads per layer (`num_attention_heads`); must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// Maximum sequence length (`max_position_embeddings`, default 2048); the position table has 2 more rows.
    pub max_position_embeddings: usize,
    /// Width of the token embeddings (`word_embed_proj_dim`, default `hidden_size`; 512 in opt-350m).
    pub word_embed_proj_dim: usize,
    /// Pre-LN layers when true, post-LN when false (`do_layer_norm_before`, default true; false in opt-350m).
    pub do_layer_norm_before: bool,
    /// Drop the decoder's final LayerNorm (`_remove_final_layer_norm`, default false).
    pub remove_final_layer_norm: bool,
    /// Whether the attention and feed-forward linears have biases (`enable_bias`, default true).
    pub enable_bias: bool,
    /// Feed-forward activation (`activation_function`, default `relu`).
    pub activation: Activation,
    /// Std of the normal initialisation of fresh weights (`init_std`, default 0.02).
    pub init_std: f64,
    /// Padding token id (`pad_token_id`, 1 in the hub checkpoints).
    pub pad_token_id: Option<u32>,
    /// Beginning-of-sequence token id (`bos_token_id`, `</s>` = 2 in the hub checkpoints).
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token id (`eos_token_id`; the first one if a list).
    pub eos_token_id: Option<u32>,
}

impl OptConfig {
    /// The config from a parsed `config.json`, with defaults as transformers' `OPTConfig` and range checks.
    pub fn from_raw(c: &RawConfig) -> Result<Self> {
        let hidden_size = c.req_usize("hidden_size")?;
        let cfg = Self {
            vocab_size: c.req_usize("vocab_size")?,
            hidden_size,
            num_hidden_layers: c.req_usize("num_hidden_layers")?,
            ffn_dim: c.req_usize("ffn_dim")?,
            num_attention_heads: c.req_usize("num_attention_heads")?,
            max_position_embeddings: c.usize_or("max_position_embeddings", 2048)?,
            word_embed_proj_dim: c.opt_usize("word_embed_proj_dim")?.unwrap_or(hidden_size),
            do_layer_norm_before: c.bool_or("do_layer_norm_before", true)?,
            remove_final_layer_norm: c.bool_or("_remove_final_layer_norm", false)?,
            enable_bias: c.bool_or("enable_bias", true)?,
            activation: c.activation("activation_function", "relu")?,
            init_std: c.f64_or("init_std", 0.02)?,
            pad_token_id: c.opt_token_id("pad_token_id")?,
            bos_token_id: c.opt_token_id("bos_token_id")?,
            eos_token_id: c.opt_token_id("eos_token_id")?,
        };
        c.check_range("vocab_size", cfg.vocab_size, 1, 10_000_000)?;
        c.check_range("hidden_size", cfg.hidden_size, 1, 1 << 16)?;
        c.check_range("num_hidden_layers", cfg.num_hidden_layers, 1, 1024)?;
        c.check_range("num_attention_heads", cfg.num_attention_heads, 1, 1024)?;
        c.check_range("ffn_dim", cfg.ffn_dim, 1, 1 << 20)?;
        c.check_range("word_embed_proj_dim", cfg.word_embed_proj_dim, 1, 1 << 16)?;
        c.check_divides(
            "hidden_size",
            cfg.hidden_size,
            "num_attention_heads",
            cfg.num_attention_heads,
        )?;
        Ok(cfg)
    }

    /// Hub checkpoints such as facebook/opt-125m store `decoder.…` without the `model.` prefix.
    pub fn load_spec() -> LoadSpec {
        LoadSpec {
            remaps: vec![(r"^decoder\.".into(), "model.decoder.".into())],
            optional: vec![],
            transpose_linear: true,
        }
    }

    /// A freshly initialised model (normal weights with std `init_std`, no adapters).
    pub fn init<B: Backend>(&self, device: &B::Device) -> OptForCausalLm<B> {
        let (d, std) = (self.hidden_size, self.init_std);
        // OPT's LayerNorms are torch's default (eps 1e-5).
        let ln = || LayerNorm::new(d, 1e-5, device);
        let lin = |i, o| PeftLinear::new_normal(i, o, self.enable_bias, std, device);
        let emb = |n, dim| {
            EmbeddingConfig::new(n, dim)
                .with_initializer(burn::nn::Initializer::Normal { mean: 0.0, std })
                .init(device)
        };
        let proj = self.word_embed_proj_dim != d;
        let layers = (0..self.num_hidden_layers)
            .map(|_| Layer {
                self_attn: Attention {
                    q_proj: lin(d, d),
                    k_proj: lin(d, d),
                    v_proj: lin(d, d),
                    out_proj: lin(d, d),
                    n_head: self.num_attention_heads,
                },
                self_attn_layer_norm: ln(),
                fc1: lin(d, self.ffn_dim),
                fc2: lin(self.ffn_dim, d),
                final_layer_norm: ln(),
                pre_ln: self.do_layer_norm_before,
                act: self.activation,
                attention_adapter: None,
                output_adapter: None,
            })
            .collect();
        OptForCausalLm {
            model: OptModel {
                decoder: Decoder {
                    embed_tokens: emb(self.vocab_size, self.word_embed_proj_dim),
                    embed_positions: emb(self.max_position_embeddings + 2, d),
                    project_in: proj.then(|| {
                        PeftLinear::new_normal(self.word_embed_proj_dim, d, false, std, device)
                    }),
                    project_out: proj.then(|| {
                        PeftLinear::new_normal(d, self.word_embed_proj_dim, false, std, device)
                    }),
                    final_layer_norm: (self.do_layer_norm_before && !self.remove_final_layer_norm)
                        .then(ln),
                    layers,
                },
            },
        }
    }
}

/// OPT language model with the LM head (transformers' `OPTForCausalLM`); the head is tied to `embed_tokens`.
#[derive(Module, Debug)]
pub struct OptForCausalLm<B: Backend> {
    /// The OPT model body (`model.*` keys in the checkpoint).
    pub model: OptModel<B>,
}

/// The OPT model body (transformers' `OPTModel`), a wrapper around the decoder.
#[derive(Module, Debug)]
pub struct OptModel<B: Backend> {
    /// The decoder stack.
    pub decoder: Decoder<B>,
}

/// OPT's decoder (transformers' `OPTDecoder`): embeddings, optional projections, layers, final LayerNorm.
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    /// Token embedding `[vocab_size, word_embed_proj_dim]` (also the tied LM head).
    pub embed_tokens: Embedding<B>,
    /// `[max_position_embeddings + 2, d]`.
    pub embed_positions: Embedding<B>,
    /// Projection `word_embed_proj_dim → hidden_size` of the embeddings, when the two differ.
    pub project_in: Option<PeftLinear<B>>,
    /// Projection `hidden_size → word_embed_proj_dim` before the LM head, when the two differ.
    pub project_out: Option<PeftLinear<B>>,
    /// LayerNorm after the last layer (pre-LN models without `_remove_final_layer_norm` only).
    pub final_layer_norm: Option<LayerNorm<B>>,
    /// The `num_hidden_layers` decoder layers.
    pub layers: Vec<Layer<B>>,
}

/// A decoder layer: pre-LN `x + attn(ln(x))`, `x + fc2(act(fc1(ln(x))))`; post-LN (`pre_ln = false`)
/// `ln(x + attn(x))`, `ln(x + fc2(act(fc1(x))))`.
#[derive(Module, Debug)]
pub struct Layer<B: Backend> {
    /// Causal self-attention.
    pub self_attn: Attention<B>,
    /// LayerNorm of the attention sub-block (before it pre-LN, after the residual post-LN).
    pub self_attn_layer_norm: LayerNorm<B>,
    /// Feed-forward up projection `[hidden_size, ffn_dim]`.
    pub fc1: PeftLinear<B>,
    /// Feed-forward down projection `[ffn_dim, hidden_size]`.
    pub fc2: PeftLinear<B>,
    /// LayerNorm of the feed-forward sub-block (before it pre-LN, after the residual post-LN).
    pub final_layer_norm: LayerNorm<B>,
    /// Pre-LN (true) or post-LN (false) arrangement (`do_layer_norm_before`).
    pub pre_ln: bool,
    /// Feed-forward activation.
    #[module(skip)]
    pub act: Activation,
    /// A bottleneck adapter (Houlsby placement) on the attention output (`out_proj`), before the residual
    /// (and, post-LN, before the LayerNorm).
    pub attention_adapter: Option<Adapter<B>>,
    /// A bottleneck adapter (Houlsby and Pfeiffer placements) on the feed-forward output (`fc2`), before the
    /// residual (and, post-LN, before the LayerNorm).
    pub output_adapter: Option<Adapter<B>>,
}

/// OPT multi-head self-attention (`OPTAttention`); queries are scaled by `1/√head_dim`.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Query projection `[d, d]`.
    pub q_proj: PeftLinear<B>,
    /// Key projection `[d, d]`.
    pub k_proj: PeftLinear<B>,
    /// Value projection `[d, d]`.
    pub v_proj: PeftLinear<B>,
    /// Output projection `[d, d]`.
    pub out_proj: PeftLinear<B>,
    /// Number of attention heads.
    pub n_head: usize,
}

impl<B: Backend> Attention<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        mask: Tensor<B, 4>,
        cache: Option<(&mut KvCache<B>, usize)>,
    ) -> Tensor<B, 3> {
        let d = x.dims()[2];
        let scale = ((d / self.n_head) as f64).powf(-0.5);
        let q = split_heads(
            self.q_proj.forward(x.clone()).mul_scalar(scale),
            self.n_head,
        );
        let k = split_heads(self.k_proj.forward(x.clone()), self.n_head);
        let v = split_heads(self.v_proj.forward(x), self.n_head);
        let (k, v) = match cache {
            Some((c, i)) => c.extend(i, k, v),
            None => (k, v),
        };
        self.out_proj
            .forward(merge_heads(attend(q, k, v, None, Some(mask))))
    }
}

impl<B: Backend> Layer<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        mask: Tensor<B, 4>,
        cache: Option<(&mut KvCache<B>, usize)>,
    ) -> Tensor<B, 3> {
        let h = if self.pre_ln {
            self.self_attn_layer_norm.forward(x.clone())
        } else {
            x.clone()
        };
        let a = self.self_attn.forward(h, mask, cache);
        let mut x = x + maybe_adapt(&self.attention_adapter, a);
        if !self.pre_ln {
            x = self.self_attn_layer_norm.forward(x);
        }
        let h = if self.pre_ln {
            self.final_layer_norm.forward(x.clone())
        } else {
            x.clone()
        };
        let h = self.fc2.forward(self.act.forward(self.fc1.forward(h)));
        let mut x = x + maybe_adapt(&self.output_adapter, h);
        if !self.pre_ln {
            x = self.final_layer_norm.forward(x);
        }
        x
    }
}

impl<B: Backend> OptForCausalLm<B> {
    /// Number of decoder layers.
    pub fn n_layer(&self) -> usize {
        self.model.decoder.layers.len()
    }

    /// Insert bottleneck adapters into every decoder layer (Houlsby: after attention and the feed-forward;
    /// Pfeiffer: after the feed-forward only), freshly initialised (the identity until trained); replaces any
    /// attached before. They act on the hidden size (not `word_embed_proj_dim`).
    pub fn add_adapters(mut self, cfg: &AdapterConfig) -> Self {
        let Some(first) = self.model.decoder.layers.first() else {
            return self;
        };
        let d = first.self_attn.out_proj.weight.dims()[1];
        let device = first.self_attn.out_proj.weight.device();
        let houlsby = cfg.placement == AdapterPlacement::Houlsby;
        for layer in self.model.decoder.layers.iter_mut() {
            layer.attention_adapter = houlsby.then(|| cfg.init(d, &device));
            layer.output_adapter = Some(cfg.init(d, &device));
        }
        self
    }

    /// [`Self::add_adapters`], then freeze everything else. Returns the model and its (trainable, total)
    /// parameter counts.
    pub fn with_frozen_adapters(self, cfg: &AdapterConfig) -> (Self, usize, usize) {
        kiln_peft::freeze_all_but_adapters(self.add_adapters(cfg))
    }

    /// Final hidden states (after `project_out`), `[b, s, word_embed_proj_dim]`. `positions` are the raw
    /// position ids (the offset of 2 is added here).
    pub fn hidden(
        &self,
        ids: Tensor<B, 2, Int>,
        positions: Tensor<B, 2, Int>,
        key_mask: &[Vec<u8>],
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let embeds = self.model.decoder.embed_tokens.forward(ids);
        self.hidden_from_embeds(embeds, positions, key_mask, cache)
    }

    /// [`Self::hidden`] from input embeddings `[b, s, word_embed_proj_dim]` (transformers' `inputs_embeds`,
    /// before `project_in`).
    pub fn hidden_from_embeds(
        &self,
        embeds: Tensor<B, 3>,
        positions: Tensor<B, 2, Int>,
        key_mask: &[Vec<u8>],
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let dec = &self.model.decoder;
        let device = embeds.device();
        let s = embeds.dims()[1];
        let mut x = embeds;
        if let Some(p) = &dec.project_in {
            x = p.forward(x);
        }
        x = x + dec
            .embed_positions
            .forward(positions.add_scalar(POSITION_OFFSET));
        let mask = additive_mask::<B>(key_mask, s, true, &device);
        for (i, layer) in dec.layers.iter().enumerate() {
            x = layer.forward(x, mask.clone(), cache.as_deref_mut().map(|c| (c, i)));
        }
        if let Some(ln) = &dec.final_layer_norm {
            x = ln.forward(x);
        }
        if let Some(p) = &dec.project_out {
            x = p.forward(x);
        }
        x
    }

    /// Logits `[b, s, vocab]` from hidden states (after `project_out`), through the tied token embedding.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let w = self.model.decoder.embed_tokens.weight.val();
        crate::models::attention::tied_head(hidden, w)
    }

    /// Full forward as `OPTForCausalLM.forward`: positions from the mask's cumsum (padding at -1).
    pub fn forward(
        &self,
        ids: Tensor<B, 2, Int>,
        attention_mask: Option<&[Vec<u8>]>,
    ) -> Tensor<B, 3> {
        let [b, s] = ids.dims();
        let ones = vec![vec![1u8; s]; b];
        let mask = attention_mask.unwrap_or(&ones);
        let positions =
            crate::models::attention::positions_from_mask::<B>(mask, -1, 0, &ids.device());
        let h = self.hidden(ids, positions, mask, None);
        self.logits(h)
    }
}

impl<B: Backend> crate::generate::causal::CausalLm<B> for OptForCausalLm<B> {
    fn n_layer(&self) -> usize {
        OptForCausalLm::n_layer(self)
    }
    fn vocab_size(&self) -> usize {
        self.model.decoder.embed_tokens.weight.lazy_shape()[0]
    }
    fn max_positions(&self) -> usize {
        self.model.decoder.embed_positions.weight.dims()[0] - POSITION_OFFSET as usize
    }
    fn device(&self) -> B::Device {
        self.model.decoder.embed_tokens.weight.device()
    }
    fn hidden(
        &self,
        ids: Tensor<B, 2, Int>,
        positions: Tensor<B, 2, Int>,
        key_mask: &[Vec<u8>],
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        OptForCausalLm::hidden(self, ids, positions, key_mask, cache)
    }
    fn input_embeddings(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.model.decoder.embed_tokens.forward(ids)
    }
    fn hidden_from_embeds(
        &self,
        embeds: Tensor<B, 3>,
        positions: Tensor<B, 2, Int>,
        key_mask: &[Vec<u8>],
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        OptForCausalLm::hidden_from_embeds(self, embeds, positions, key_mask, cache)
    }
    fn n_head(&self) -> usize {
        self.model.decoder.layers[0].self_attn.n_head
    }
    fn hidden_size(&self) -> usize {
        self.model.decoder.embed_positions.weight.dims()[1]
    }
    fn output_embedding(&self) -> Option<Tensor<B, 2>> {
        Some(self.model.decoder.embed_tokens.weight.val())
    }
    fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        OptForCausalLm::logits(self, hidden)
    }
}

/// Load an OPT checkpoint directory.
pub fn load<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(
    OptConfig,
    OptForCausalLm<B>,
    crate::load::weights::LoadReport,
)> {
    let raw = RawConfig::load(&dir.join("config.json"))?;
    let mt = raw.model_type()?;
    if mt != "opt" {
        return Err(crate::Error::UnsupportedArchitecture {
            path: raw.path.clone(),
            model_type: mt,
            supported: "opt here".into(),
        });
    }
    let cfg = OptConfig::from_raw(&raw)?;
    let mut model = cfg.init::<B>(device);
    let files = crate::load::weights::weight_files(dir)?;
    let report = crate::load::weights::load_into(&mut model, &files, &OptConfig::load_spec())?;
    Ok((cfg, model, report))
}
