//! GPT-2 (`GPT2LMHeadModel`), as in Radford et al. 2019: learned positions, pre-LN blocks with `Conv1D`
//! projections (stored `[in, out]`), gelu_new, a final LayerNorm, and an LM head tied to the token embedding.

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

/// The fields of GPT-2's `config.json` that the forward pass uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpt2Config {
    /// Vocabulary size: rows of the token embedding `wte` (`vocab_size`).
    pub vocab_size: usize,
    /// Maximum sequence length: rows of the position embedding `wpe` (`n_positions`, default 1024).
    pub n_positions: usize,
    /// Hidden size (`n_embd`, alias `hidden_size`).
    pub n_embd: usize,
    /// Number of transformer blocks (`n_layer`, alias `num_hidden_layers`).
    pub n_layer: usize,
    /// Attention heads per block (`n_head`, alias `num_attention_heads`); must divide `n_embd`.
    pub n_head: usize,
    /// Inner width of the MLP (`n_inner`, default `4 · n_embd`).
    pub n_inner: usize,
    /// Epsilon of every LayerNorm (`layer_norm_epsilon`, default 1e-5).
    pub layer_norm_epsilon: f64,
    /// MLP activation (`activation_function`, default `gelu_new`).
    pub activation: Activation,
    /// Scale attention scores by `1/√head_dim` (`scale_attn_weights`, default true).
    pub scale_attn_weights: bool,
    /// Further scale the scores of block `i` by `1/(i + 1)` (`scale_attn_by_inverse_layer_idx`, default false).
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Std of the normal initialisation of fresh weights (`initializer_range`, default 0.02).
    pub initializer_range: f64,
    /// Beginning-of-sequence token id (`bos_token_id`).
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token id (`eos_token_id`; the first one if a list).
    pub eos_token_id: Option<u32>,
    /// Padding token id (`pad_token_id`; GPT-2 checkpoints usually have none).
    pub pad_token_id: Option<u32>,
}

impl Gpt2Config {
    /// The config from a parsed `config.json`, with defaults as transformers' `GPT2Config` and range checks.
    pub fn from_raw(c: &RawConfig) -> Result<Self> {
        let n_embd = c.req_usize_any(&["n_embd", "hidden_size"])?;
        let n_head = c.req_usize_any(&["n_head", "num_attention_heads"])?;
        let cfg = Self {
            vocab_size: c.req_usize("vocab_size")?,
            n_positions: c.usize_or("n_positions", 1024)?,
            n_embd,
            n_layer: c.req_usize_any(&["n_layer", "num_hidden_layers"])?,
            n_head,
            // saturating: a huge n_embd is rejected below, not an overflow panic (found by fuzz/config).
            n_inner: c.opt_usize("n_inner")?.unwrap_or(n_embd.saturating_mul(4)),
            layer_norm_epsilon: c.f64_or("layer_norm_epsilon", 1e-5)?,
            activation: c.activation("activation_function", "gelu_new")?,
            scale_attn_weights: c.bool_or("scale_attn_weights", true)?,
            scale_attn_by_inverse_layer_idx: c.bool_or("scale_attn_by_inverse_layer_idx", false)?,
            initializer_range: c.f64_or("initializer_range", 0.02)?,
            bos_token_id: c.opt_token_id("bos_token_id")?,
            eos_token_id: c.opt_token_id("eos_token_id")?,
            pad_token_id: c.opt_token_id("pad_token_id")?,
        };
        c.check_range("vocab_size", cfg.vocab_size, 1, 10_000_000)?;
        c.check_range("n_embd", cfg.n_embd, 1, 1 << 16)?;
        c.check_range("n_layer", cfg.n_layer, 1, 1024)?;
        c.check_range("n_positions", cfg.n_positions, 1, 1 << 20)?;
        c.check_range("n_head", cfg.n_head, 1, 1024)?;
        c.check_divides("n_embd", cfg.n_embd, "n_head", cfg.n_head)?;
        c.check_range("n_inner", cfg.n_inner, 1, 1 << 20)?;
        Ok(cfg)
    }

    /// Reads and parses `config.json` at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        Self::from_raw(&RawConfig::load(path)?)
    }

    /// How checkpoint keys map onto [`Gpt2LmHead`]: old checkpoints (the hub's `gpt2`) lack the
    /// `transformer.` prefix; `lm_head.weight` is tied and never needed.
    pub fn load_spec() -> LoadSpec {
        LoadSpec {
            remaps: vec![(r"^(h\.|wte\.|wpe\.|ln_f\.)".into(), "transformer.$1".into())],
            optional: vec![],
            transpose_linear: false,
        }
    }

    /// A freshly initialised model (normal weights with std `initializer_range`, no adapters).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Gpt2LmHead<B> {
        let std = self.initializer_range;
        let d = self.n_embd;
        let emb = |n: usize| {
            EmbeddingConfig::new(n, d)
                .with_initializer(burn::nn::Initializer::Normal { mean: 0.0, std })
                .init(device)
        };
        let ln = || LayerNorm::new(d, self.layer_norm_epsilon, device);
        let h = (0..self.n_layer)
            .map(|i| Block {
                ln_1: ln(),
                attn: Attention {
                    c_attn: PeftLinear::new_normal(d, 3 * d, true, std, device),
                    c_proj: PeftLinear::new_normal(d, d, true, std, device),
                    n_head: self.n_head,
                    scale: self.attn_scale(i),
                },
                ln_2: ln(),
                mlp: Mlp {
                    c_fc: PeftLinear::new_normal(d, self.n_inner, true, std, device),
                    c_proj: PeftLinear::new_normal(self.n_inner, d, true, std, device),
                    act: self.activation,
                },
                attention_adapter: None,
                output_adapter: None,
            })
            .collect();
        Gpt2LmHead {
            transformer: Gpt2Model {
                wte: emb(self.vocab_size),
                wpe: emb(self.n_positions),
                h,
                ln_f: ln(),
            },
        }
    }

    fn attn_scale(&self, layer: usize) -> f64 {
        let mut s = 1.0;
        if self.scale_attn_weights {
            s /= ((self.n_embd / self.n_head) as f64).sqrt();
        }
        if self.scale_attn_by_inverse_layer_idx {
            s /= (layer + 1) as f64;
        }
        s
    }
}

/// GPT-2 language model with the LM head (transformers' `GPT2LMHeadModel`); the head is tied to `wte`.
#[derive(Module, Debug)]
pub struct Gpt2LmHead<B: Backend> {
    /// The transformer body (`transformer.*` keys in the checkpoint).
    pub transformer: Gpt2Model<B>,
}

/// The GPT-2 transformer body (transformers' `GPT2Model`): embeddings, blocks and the final LayerNorm.
#[derive(Module, Debug)]
pub struct Gpt2Model<B: Backend> {
    /// Token embedding `[vocab_size, n_embd]` (also the tied LM head).
    pub wte: Embedding<B>,
    /// Learned position embedding `[n_positions, n_embd]`.
    pub wpe: Embedding<B>,
    /// The `n_layer` transformer blocks.
    pub h: Vec<Block<B>>,
    /// Final LayerNorm, applied after the last block.
    pub ln_f: LayerNorm<B>,
}

/// A pre-LN block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// LayerNorm before attention.
    pub ln_1: LayerNorm<B>,
    /// Causal self-attention.
    pub attn: Attention<B>,
    /// LayerNorm before the MLP.
    pub ln_2: LayerNorm<B>,
    /// Feed-forward block.
    pub mlp: Mlp<B>,
    /// A bottleneck adapter (Houlsby placement) on the attention output (`attn.c_proj`), before the residual.
    pub attention_adapter: Option<Adapter<B>>,
    /// A bottleneck adapter (Houlsby and Pfeiffer placements) on the MLP output (`mlp.c_proj`), before the
    /// residual.
    pub output_adapter: Option<Adapter<B>>,
}

/// GPT-2 causal self-attention with fused QKV projection (`GPT2Attention`).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `[d, 3d]`: queries, keys and values in one projection.
    pub c_attn: PeftLinear<B>,
    /// Output projection `[d, d]`.
    pub c_proj: PeftLinear<B>,
    /// Number of attention heads.
    pub n_head: usize,
    /// Multiplier of the attention scores (`1/√head_dim`, optionally `/(layer + 1)`; see [`Gpt2Config`]).
    pub scale: f64,
}

/// GPT-2 feed-forward block: `c_proj(act(c_fc(x)))`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// Up projection `[n_embd, n_inner]`.
    pub c_fc: PeftLinear<B>,
    /// Down projection `[n_inner, n_embd]`.
    pub c_proj: PeftLinear<B>,
    /// The activation between the projections.
    #[module(skip)]
    pub act: Activation,
}

impl<B: Backend> Attention<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        mask: Tensor<B, 4>,
        cache: Option<(&mut KvCache<B>, usize)>,
    ) -> Tensor<B, 3> {
        let [b, s, d] = x.dims();
        let qkv = self.c_attn.forward(x);
        let q = split_heads(qkv.clone().slice([0..b, 0..s, 0..d]), self.n_head);
        let k = split_heads(qkv.clone().slice([0..b, 0..s, d..2 * d]), self.n_head);
        let v = split_heads(qkv.slice([0..b, 0..s, 2 * d..3 * d]), self.n_head);
        let (k, v) = match cache {
            Some((c, layer)) => c.extend(layer, k, v),
            None => (k, v),
        };
        let out = attend(q, k, v, Some(self.scale), Some(mask));
        self.c_proj.forward(merge_heads(out))
    }
}

impl<B: Backend> Mlp<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.c_proj.forward(self.act.forward(self.c_fc.forward(x)))
    }
}

impl<B: Backend> Block<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        mask: Tensor<B, 4>,
        cache: Option<(&mut KvCache<B>, usize)>,
    ) -> Tensor<B, 3> {
        let a = self.attn.forward(self.ln_1.forward(x.clone()), mask, cache);
        let x = x + maybe_adapt(&self.attention_adapter, a);
        let h = self.mlp.forward(self.ln_2.forward(x.clone()));
        x + maybe_adapt(&self.output_adapter, h)
    }
}

impl<B: Backend> Gpt2LmHead<B> {
    /// Number of transformer blocks.
    pub fn n_layer(&self) -> usize {
        self.transformer.h.len()
    }

    /// Insert bottleneck adapters into every block (Houlsby: after attention and the MLP; Pfeiffer: after the
    /// MLP only), freshly initialised (the identity until trained); replaces any attached before.
    pub fn add_adapters(mut self, cfg: &AdapterConfig) -> Self {
        let d = self.transformer.wte.weight.dims()[1];
        let device = self.transformer.wte.weight.device();
        let houlsby = cfg.placement == AdapterPlacement::Houlsby;
        for block in self.transformer.h.iter_mut() {
            block.attention_adapter = houlsby.then(|| cfg.init(d, &device));
            block.output_adapter = Some(cfg.init(d, &device));
        }
        self
    }

    /// [`Self::add_adapters`], then freeze everything else. Returns the model and its (trainable, total)
    /// parameter counts.
    pub fn with_frozen_adapters(self, cfg: &AdapterConfig) -> (Self, usize, usize) {
        kiln_peft::freeze_all_but_adapters(self.add_adapters(cfg))
    }

    /// Final hidden states `[b, s, d]` for `ids` at `positions`, attending to the cache (if any) and the
    /// new tokens under `key_mask` (`[b, past + s]`, 1 = real token).
    pub fn hidden(
        &self,
        ids: Tensor<B, 2, Int>,
        positions: Tensor<B, 2, Int>,
        key_mask: &[Vec<u8>],
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let embeds = self.transformer.wte.forward(ids);
        self.hidden_from_embeds(embeds, positions, key_mask, cache)
    }

    /// [`Self::hidden`] from input embeddings `[b, s, d]` (transformers' `inputs_embeds`) instead of ids.
    pub fn hidden_from_embeds(
        &self,
        embeds: Tensor<B, 3>,
        positions: Tensor<B, 2, Int>,
        key_mask: &[Vec<u8>],
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let device = embeds.device();
        let s = embeds.dims()[1];
        let t = &self.transformer;
        let mut x = embeds + t.wpe.forward(positions);
        let mask = additive_mask::<B>(key_mask, s, true, &device);
        for (i, block) in t.h.iter().enumerate() {
            x = block.forward(x, mask.clone(), cache.as_deref_mut().map(|c| (c, i)));
        }
        t.ln_f.forward(x)
    }

    /// Logits `[b, s, vocab]` from hidden states, through the tied embedding.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let w = self.transformer.wte.weight.val(); // [vocab, d]
        crate::models::attention::tied_head(hidden, w)
    }

    /// Full forward without cache, as `GPT2LMHeadModel.forward`: logits `[b, s, vocab]`, positions
    /// `0..s` (transformers does not shift them for padding here; `generate` does, see
    /// [`crate::generate`]); `attention_mask` is `[b, s]`, 1 = real token.
    pub fn forward(
        &self,
        ids: Tensor<B, 2, Int>,
        attention_mask: Option<&[Vec<u8>]>,
    ) -> Tensor<B, 3> {
        let [b, s] = ids.dims();
        let ones = vec![vec![1u8; s]; b];
        let mask = attention_mask.unwrap_or(&ones);
        let positions = Tensor::<B, 1, Int>::arange(0..s as i64, &ids.device())
            .unsqueeze::<2>()
            .repeat_dim(0, b);
        let h = self.hidden(ids, positions, mask, None);
        self.logits(h)
    }
}

impl<B: Backend> crate::generate::causal::CausalLm<B> for Gpt2LmHead<B> {
    fn n_layer(&self) -> usize {
        Gpt2LmHead::n_layer(self)
    }
    fn vocab_size(&self) -> usize {
        self.transformer.wte.weight.lazy_shape()[0]
    }
    fn max_positions(&self) -> usize {
        self.transformer.wpe.weight.dims()[0]
    }
    fn device(&self) -> B::Device {
        self.transformer.wte.weight.device()
    }
    fn hidden(
        &self,
        ids: Tensor<B, 2, Int>,
        positions: Tensor<B, 2, Int>,
        key_mask: &[Vec<u8>],
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        Gpt2LmHead::hidden(self, ids, positions, key_mask, cache)
    }
    fn input_embeddings(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.transformer.wte.forward(ids)
    }
    fn hidden_from_embeds(
        &self,
        embeds: Tensor<B, 3>,
        positions: Tensor<B, 2, Int>,
        key_mask: &[Vec<u8>],
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        Gpt2LmHead::hidden_from_embeds(self, embeds, positions, key_mask, cache)
    }
    fn n_head(&self) -> usize {
        self.transformer.h[0].attn.n_head
    }
    fn hidden_size(&self) -> usize {
        self.transformer.wpe.weight.dims()[1]
    }
    fn output_embedding(&self) -> Option<Tensor<B, 2>> {
        Some(self.transformer.wte.weight.val())
    }
    fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        Gpt2LmHead::logits(self, hidden)
    }
}

/// Load a GPT-2 checkpoint directory (`config.json` + safetensors weights).
pub fn load<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(Gpt2Config, Gpt2LmHead<B>, crate::load::weights::LoadReport)> {
    let raw = RawConfig::load(&dir.join("config.json"))?;
    let mt = raw.model_type()?;
    if mt != "gpt2" {
        return Err(crate::Error::UnsupportedArchitecture {
            path: raw.path.clone(),
            model_type: mt,
            supported: "gpt2 here".into(),
        });
    }
    let cfg = Gpt2Config::from_raw(&raw)?;
    let mut model = cfg.init::<B>(device);
    let files = crate::load::weights::weight_files(dir)?;
    let report = crate::load::weights::load_into(&mut model, &files, &Gpt2Config::load_spec())?;
    Ok((cfg, model, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Gpt2Config> {
        Gpt2Config::from_raw(&RawConfig::parse(Path::new("config.json"), text)?)
    }

    /// fuzz/config regression: `4 * n_embd` overflowed (a panic with overflow checks) before n_embd was
    /// range-checked; an explicit n_inner was not range-checked at all.
    #[test]
    fn huge_sizes_are_errors_not_panics() {
        let e = parse(r#"{"vocab_size":10,"n_embd":9223372036854775807,"n_head":1,"n_layer":1}"#)
            .unwrap_err();
        assert!(e.to_string().contains("n_embd"), "{e}");
        let e =
            parse(r#"{"vocab_size":10,"n_embd":8,"n_head":1,"n_layer":1,"n_inner":1099511627776}"#)
                .unwrap_err();
        assert!(e.to_string().contains("n_inner"), "{e}");
        assert_eq!(
            parse(r#"{"vocab_size":10,"n_embd":8,"n_head":1,"n_layer":1}"#)
                .unwrap()
                .n_inner,
            32
        );
    }
}
