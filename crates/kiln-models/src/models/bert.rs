//! BERT (`BertModel`, `BertForSequenceClassification`), as in Devlin et al. 2019: word + learned position +
//! token-type embeddings, post-LN encoder layers with `nn.Linear` projections (stored `[out, in]`), erf gelu,
//! a tanh pooler over the first token, and a linear classification head on the pooled output.
//!
//! Module field names mirror the checkpoint keys (`encoder.layer.0.attention.output.LayerNorm.weight`, …), with
//! one exception: HF's `attention.self` is a Rust keyword, so it lives in the field `self_attn` and the loader
//! remaps the key. Also here: sentence-transformers' mean pooling and L2 normalisation, for sentence
//! embedding models such as all-MiniLM-L6-v2.

// Field names follow the checkpoint (`LayerNorm`), so that keys load without renaming.
#![allow(non_snake_case)]

use std::path::Path;

use burn::nn::{Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer};
use burn::prelude::*;
use kiln_peft::PeftLinear;

use crate::load::config::{Activation, RawConfig};
use crate::load::error::{Error, Result};
use crate::load::tokenizer::{Encoding, Tokenizer};
use crate::load::weights::{LoadReport, LoadSpec};
use crate::models::attention::{
    additive_mask, attend_with_dropout, ids_tensor, merge_heads, split_heads,
};
use crate::models::norm::LayerNorm;

/// The fields of BERT's `config.json` that the model uses.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    /// Vocabulary size: rows of `word_embeddings` (`vocab_size`).
    pub vocab_size: usize,
    /// Hidden size `d` (`hidden_size`).
    pub hidden_size: usize,
    /// Number of encoder layers (`num_hidden_layers`).
    pub num_hidden_layers: usize,
    /// Attention heads per layer (`num_attention_heads`); must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// Inner width of the feed-forward block (`intermediate_size`).
    pub intermediate_size: usize,
    /// Feed-forward activation (`hidden_act`, default `gelu`).
    pub hidden_act: Activation,
    /// Dropout after the embeddings and after each residual branch's output projection.
    pub hidden_dropout_prob: f64,
    /// Dropout on the attention probabilities.
    pub attention_probs_dropout_prob: f64,
    /// Maximum sequence length: rows of `position_embeddings` (`max_position_embeddings`, default 512).
    pub max_position_embeddings: usize,
    /// Number of token types (segments): rows of `token_type_embeddings` (`type_vocab_size`, default 2).
    pub type_vocab_size: usize,
    /// Std of the normal initialisation of fresh weights (`initializer_range`, default 0.02).
    pub initializer_range: f64,
    /// Epsilon of every LayerNorm (`layer_norm_eps`, default 1e-12).
    pub layer_norm_eps: f64,
    /// Padding token id (`pad_token_id`); its word-embedding row is initialised to zero.
    pub pad_token_id: Option<u32>,
    /// Dropout before the classifier; `None` means `hidden_dropout_prob` (as HF).
    pub classifier_dropout: Option<f64>,
    /// Label names by class index, from `id2label` (else `num_labels`, else 2 labels `LABEL_i`, as HF).
    pub id2label: Vec<String>,
}

impl BertConfig {
    /// Read and check the fields from a parsed `config.json`.
    pub fn from_raw(c: &RawConfig) -> Result<Self> {
        let pos_type = c.str_or("position_embedding_type", "absolute")?;
        if pos_type != "absolute" {
            return Err(Error::field(
                &c.path,
                "position_embedding_type",
                format!("`{pos_type}` is not supported (only `absolute`)"),
            ));
        }
        if c.bool_or("is_decoder", false)? {
            return Err(Error::field(
                &c.path,
                "is_decoder",
                "decoder BERT is not supported",
            ));
        }
        let cfg = Self {
            vocab_size: c.req_usize("vocab_size")?,
            hidden_size: c.req_usize("hidden_size")?,
            num_hidden_layers: c.req_usize("num_hidden_layers")?,
            num_attention_heads: c.req_usize("num_attention_heads")?,
            intermediate_size: c.req_usize("intermediate_size")?,
            hidden_act: c.activation("hidden_act", "gelu")?,
            hidden_dropout_prob: prob(c, "hidden_dropout_prob", 0.1)?,
            attention_probs_dropout_prob: prob(c, "attention_probs_dropout_prob", 0.1)?,
            max_position_embeddings: c.usize_or("max_position_embeddings", 512)?,
            type_vocab_size: c.usize_or("type_vocab_size", 2)?,
            initializer_range: c.f64_or("initializer_range", 0.02)?,
            layer_norm_eps: c.f64_or("layer_norm_eps", 1e-12)?,
            pad_token_id: c.opt_token_id("pad_token_id")?,
            classifier_dropout: match c.map.get("classifier_dropout").filter(|v| !v.is_null()) {
                None => None,
                Some(_) => Some(prob(c, "classifier_dropout", 0.0)?),
            },
            id2label: labels(c)?,
        };
        c.check_range("vocab_size", cfg.vocab_size, 1, 10_000_000)?;
        c.check_range("hidden_size", cfg.hidden_size, 1, 1 << 16)?;
        c.check_range("num_hidden_layers", cfg.num_hidden_layers, 1, 1024)?;
        c.check_range("num_attention_heads", cfg.num_attention_heads, 1, 1024)?;
        c.check_divides(
            "hidden_size",
            cfg.hidden_size,
            "num_attention_heads",
            cfg.num_attention_heads,
        )?;
        c.check_range("intermediate_size", cfg.intermediate_size, 1, 1 << 20)?;
        c.check_range(
            "max_position_embeddings",
            cfg.max_position_embeddings,
            1,
            1 << 20,
        )?;
        c.check_range("type_vocab_size", cfg.type_vocab_size, 1, 1 << 16)?;
        c.check_range("num_labels", cfg.id2label.len(), 1, 1 << 20)?;
        if let Some(p) = cfg.pad_token_id {
            c.check_range("pad_token_id", p as usize, 0, cfg.vocab_size - 1)?;
        }
        if !(cfg.layer_norm_eps > 0.0 && cfg.layer_norm_eps < 1.0) {
            return Err(Error::field(
                &c.path,
                "layer_norm_eps",
                format!("{} is out of range (0, 1)", cfg.layer_norm_eps),
            ));
        }
        if !(cfg.initializer_range >= 0.0 && cfg.initializer_range.is_finite()) {
            return Err(Error::field(
                &c.path,
                "initializer_range",
                format!(
                    "{} is not a valid standard deviation",
                    cfg.initializer_range
                ),
            ));
        }
        Ok(cfg)
    }

    /// Read `config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        Self::from_raw(&RawConfig::load(path)?)
    }

    /// The number of classes of the sequence-classification head.
    pub fn num_labels(&self) -> usize {
        self.id2label.len()
    }

    /// The dropout probability before the classifier.
    pub fn classifier_dropout_prob(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }

    /// How checkpoint keys map onto [`BertModel`]: a `BertFor…` checkpoint's `bert.` prefix is dropped (its
    /// heads end up in [`LoadReport::unused`]); a checkpoint without a pooler (`add_pooling_layer=False`) loads
    /// with a fresh pooler, listed in [`LoadReport::initialised`].
    pub fn model_load_spec() -> LoadSpec {
        LoadSpec {
            remaps: vec![(r"^bert\.".into(), String::new()), self_remap()],
            optional: vec![r"^pooler\.".into()],
            transpose_linear: true,
        }
    }

    /// How checkpoint keys map onto [`BertForSequenceClassification`]: `bert.…` and `classifier.…` as HF saves
    /// them; a plain `BertModel` checkpoint (keys without the prefix) loads too, with a freshly initialised
    /// classifier (and pooler, when absent) listed in [`LoadReport::initialised`].
    pub fn classifier_load_spec() -> LoadSpec {
        LoadSpec {
            remaps: vec![
                (r"^(embeddings|encoder|pooler)\.".into(), "bert.$1.".into()),
                self_remap(),
            ],
            optional: vec![r"^classifier\.".into(), r"^bert\.pooler\.".into()],
            transpose_linear: true,
        }
    }

    /// A randomly initialised encoder (HF's `_init_weights`: normal(0, `initializer_range`) weights, zero
    /// biases, the padding embedding row zero, LayerNorm 1/0).
    pub fn init<B: Backend>(&self, device: &B::Device) -> BertModel<B> {
        let d = self.hidden_size;
        let std = self.initializer_range;
        let emb = |n: usize| {
            EmbeddingConfig::new(n, d)
                .with_initializer(Initializer::Normal { mean: 0.0, std })
                .init::<B>(device)
        };
        let ln = || LayerNorm::<B>::new(d, self.layer_norm_eps, device);
        let linear = |i: usize, o: usize| PeftLinear::new_normal(i, o, true, std, device);
        let hidden_dropout = || DropoutConfig::new(self.hidden_dropout_prob).init();
        let mut word_embeddings = emb(self.vocab_size);
        if let Some(p) = self.pad_token_id {
            // Lazily, like every other parameter: a checkpoint that provides the table replaces it without it
            // ever being drawn (and a config naming a huge table allocates nothing until it is used).
            let (v, p) = (self.vocab_size, p as usize);
            word_embeddings.weight = burn::module::Param::uninitialized(
                burn::module::ParamId::new(),
                move |device: &B::Device, require_grad| {
                    let w = Initializer::Normal { mean: 0.0, std }
                        .init::<B, 2, _>([v, d], device)
                        .val()
                        .slice_assign([p..p + 1, 0..d], Tensor::zeros([1, d], device))
                        .detach();
                    // (require_grad: the result must stay a trainable leaf under autodiff.)
                    if require_grad {
                        w.require_grad()
                    } else {
                        w
                    }
                },
                device.clone(),
                true,
                [v, d].into(),
            );
        }
        let layer = (0..self.num_hidden_layers)
            .map(|_| BertLayer {
                attention: BertAttention {
                    self_attn: BertSelfAttention {
                        query: linear(d, d),
                        key: linear(d, d),
                        value: linear(d, d),
                        dropout: DropoutConfig::new(self.attention_probs_dropout_prob).init(),
                        num_attention_heads: self.num_attention_heads,
                        scale: 1.0 / ((d / self.num_attention_heads) as f64).sqrt(),
                    },
                    output: BertSelfOutput {
                        dense: linear(d, d),
                        LayerNorm: ln(),
                        dropout: hidden_dropout(),
                        adapter: None,
                    },
                },
                intermediate: BertIntermediate {
                    dense: linear(d, self.intermediate_size),
                    act: self.hidden_act,
                },
                output: BertOutput {
                    dense: linear(self.intermediate_size, d),
                    LayerNorm: ln(),
                    dropout: hidden_dropout(),
                    adapter: None,
                },
            })
            .collect();
        BertModel {
            embeddings: BertEmbeddings {
                word_embeddings,
                position_embeddings: emb(self.max_position_embeddings),
                token_type_embeddings: emb(self.type_vocab_size),
                LayerNorm: ln(),
                dropout: hidden_dropout(),
            },
            encoder: BertEncoder { layer },
            pooler: BertPooler {
                dense: linear(d, d),
            },
        }
    }

    /// A randomly initialised encoder with a classification head of [`Self::num_labels`] classes.
    pub fn init_classifier<B: Backend>(
        &self,
        device: &B::Device,
    ) -> BertForSequenceClassification<B> {
        BertForSequenceClassification {
            bert: self.init(device),
            dropout: DropoutConfig::new(self.classifier_dropout_prob()).init(),
            classifier: PeftLinear::new_normal(
                self.hidden_size,
                self.num_labels(),
                true,
                self.initializer_range,
                device,
            ),
        }
    }
}

/// HF's `attention.self` → kiln's `attention.self_attn` (`self` is a Rust keyword).
fn self_remap() -> (String, String) {
    (
        r"(^|\.)attention\.self\.".into(),
        "${1}attention.self_attn.".into(),
    )
}

/// A probability field in `[0, 1)`.
fn prob(c: &RawConfig, field: &str, default: f64) -> Result<f64> {
    let p = c.f64_or(field, default)?;
    if !(0.0..1.0).contains(&p) {
        return Err(Error::field(
            &c.path,
            field,
            format!("{p} is not a probability in [0, 1)"),
        ));
    }
    Ok(p)
}

/// Label names: `id2label` (keys `"0"…"n-1"`), else `num_labels` × `LABEL_i`, else 2 labels.
fn labels(c: &RawConfig) -> Result<Vec<String>> {
    let num_labels = c.opt_usize("num_labels")?;
    let Some(v) = c.map.get("id2label").filter(|v| !v.is_null()) else {
        return Ok((0..num_labels.unwrap_or(2))
            .map(|i| format!("LABEL_{i}"))
            .collect());
    };
    let obj = v
        .as_object()
        .ok_or_else(|| Error::field(&c.path, "id2label", "expected an object {\"0\": label, …}"))?;
    let mut out = vec![None; obj.len()];
    for (k, name) in obj {
        let i: usize = k.parse().ok().filter(|&i| i < obj.len()).ok_or_else(|| {
            Error::field(
                &c.path,
                "id2label",
                format!("key `{k}` is not a class index in 0..{}", obj.len()),
            )
        })?;
        let name = name.as_str().ok_or_else(|| {
            Error::field(
                &c.path,
                "id2label",
                format!("label of `{k}` is not a string"),
            )
        })?;
        out[i] = Some(name.to_string());
    }
    let out: Vec<String> = out.into_iter().flatten().collect();
    if out.len() != obj.len() {
        return Err(Error::field(&c.path, "id2label", "class indices repeat"));
    }
    if let Some(n) = num_labels.filter(|&n| n != out.len()) {
        return Err(Error::field(
            &c.path,
            "num_labels",
            format!("{n} disagrees with id2label's {} labels", out.len()),
        ));
    }
    Ok(out)
}

/// The encoder (`BertModel`): embeddings, layers, pooler.
#[derive(Module, Debug)]
pub struct BertModel<B: Backend> {
    /// Word, position and token-type embeddings.
    pub embeddings: BertEmbeddings<B>,
    /// The stack of encoder layers.
    pub encoder: BertEncoder<B>,
    /// The pooler over the first token.
    pub pooler: BertPooler<B>,
}

/// `LayerNorm(word + position + token_type)`, then dropout.
#[derive(Module, Debug)]
pub struct BertEmbeddings<B: Backend> {
    /// Word-piece embedding `[vocab_size, d]`.
    pub word_embeddings: Embedding<B>,
    /// Learned absolute position embedding `[max_position_embeddings, d]`.
    pub position_embeddings: Embedding<B>,
    /// Token-type (segment) embedding `[type_vocab_size, d]`.
    pub token_type_embeddings: Embedding<B>,
    /// LayerNorm over the summed embeddings.
    pub LayerNorm: LayerNorm<B>,
    /// Dropout after the LayerNorm (`hidden_dropout_prob`).
    pub dropout: Dropout,
}

/// The stack of encoder layers.
#[derive(Module, Debug)]
pub struct BertEncoder<B: Backend> {
    /// The `num_hidden_layers` layers (`encoder.layer.{i}` keys).
    pub layer: Vec<BertLayer<B>>,
}

/// One post-LN encoder layer: attention block, then feed-forward block.
#[derive(Module, Debug)]
pub struct BertLayer<B: Backend> {
    /// Self-attention with its output projection and LayerNorm.
    pub attention: BertAttention<B>,
    /// Widening half of the feed-forward block.
    pub intermediate: BertIntermediate<B>,
    /// Narrowing half of the feed-forward block, with the residual and LayerNorm.
    pub output: BertOutput<B>,
}

/// Self-attention and its output projection (HF's `attention.self` / `attention.output`).
#[derive(Module, Debug)]
pub struct BertAttention<B: Backend> {
    /// HF's `attention.self` (remapped on load).
    pub self_attn: BertSelfAttention<B>,
    /// Output projection, dropout, residual and LayerNorm.
    pub output: BertSelfOutput<B>,
}

/// Multi-head scaled dot-product self-attention.
#[derive(Module, Debug)]
pub struct BertSelfAttention<B: Backend> {
    /// Query projection `[d, d]`.
    pub query: PeftLinear<B>,
    /// Key projection `[d, d]`.
    pub key: PeftLinear<B>,
    /// Value projection `[d, d]`.
    pub value: PeftLinear<B>,
    /// On the attention probabilities.
    pub dropout: Dropout,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Multiplier of the attention scores, `1/√head_dim`.
    pub scale: f64,
}

/// `LayerNorm(dropout(dense(h)) + residual)`.
#[derive(Module, Debug)]
pub struct BertSelfOutput<B: Backend> {
    /// Output projection `[d, d]`.
    pub dense: PeftLinear<B>,
    /// LayerNorm after the residual (checkpoint key `LayerNorm`).
    pub LayerNorm: LayerNorm<B>,
    /// Dropout on the projection's output (`hidden_dropout_prob`).
    pub dropout: Dropout,
    /// A bottleneck adapter (Houlsby placement), applied before the residual and LayerNorm.
    pub adapter: Option<kiln_peft::Adapter<B>>,
}

/// `act(dense(x))`, the widening half of the feed-forward block.
#[derive(Module, Debug)]
pub struct BertIntermediate<B: Backend> {
    /// Up projection `[d, intermediate_size]`.
    pub dense: PeftLinear<B>,
    /// The activation (`hidden_act`).
    #[module(skip)]
    pub act: Activation,
}

/// `LayerNorm(dropout(dense(h)) + residual)`, the narrowing half of the feed-forward block.
#[derive(Module, Debug)]
pub struct BertOutput<B: Backend> {
    /// Down projection `[intermediate_size, d]`.
    pub dense: PeftLinear<B>,
    /// LayerNorm after the residual (checkpoint key `LayerNorm`).
    pub LayerNorm: LayerNorm<B>,
    /// Dropout on the projection's output (`hidden_dropout_prob`).
    pub dropout: Dropout,
    /// A bottleneck adapter (Houlsby and Pfeiffer placements), applied before the residual and LayerNorm.
    pub adapter: Option<kiln_peft::Adapter<B>>,
}

/// `tanh(dense(h[:, 0]))`.
#[derive(Module, Debug)]
pub struct BertPooler<B: Backend> {
    /// Projection `[d, d]` of the first token's hidden state, followed by tanh.
    pub dense: PeftLinear<B>,
}

/// `BertForSequenceClassification`: `classifier(dropout(pooler_output))`.
#[derive(Module, Debug)]
pub struct BertForSequenceClassification<B: Backend> {
    /// The encoder (with its pooler).
    pub bert: BertModel<B>,
    /// Dropout on the pooled output (`classifier_dropout`, else `hidden_dropout_prob`).
    pub dropout: Dropout,
    /// `[hidden, num_labels]` head on the pooled output.
    pub classifier: PeftLinear<B>,
}

/// What [`BertModel::forward`] returns.
#[derive(Debug, Clone)]
pub struct BertModelOutput<B: Backend> {
    /// `[b, s, d]`: the last layer's hidden states (padding positions hold values too; mask them).
    pub last_hidden_state: Tensor<B, 3>,
    /// `[b, d]`: the pooler's output on the first (`[CLS]`) token.
    pub pooler_output: Tensor<B, 2>,
}

impl<B: Backend> BertSelfAttention<B> {
    fn forward(&self, x: Tensor<B, 3>, mask: Tensor<B, 4>) -> Tensor<B, 3> {
        let h = self.num_attention_heads;
        let q = split_heads(self.query.forward(x.clone()), h);
        let k = split_heads(self.key.forward(x.clone()), h);
        let v = split_heads(self.value.forward(x), h);
        merge_heads(attend_with_dropout(
            q,
            k,
            v,
            Some(self.scale),
            Some(mask),
            &self.dropout,
        ))
    }
}

impl<B: Backend> BertLayer<B> {
    fn forward(&self, x: Tensor<B, 3>, mask: Tensor<B, 4>) -> Tensor<B, 3> {
        let a = self.attention.self_attn.forward(x.clone(), mask);
        let o = &self.attention.output;
        let a = kiln_peft::adapter::maybe_adapt(&o.adapter, o.dropout.forward(o.dense.forward(a)));
        let x = o.LayerNorm.forward(a + x);
        let h = self
            .intermediate
            .act
            .forward(self.intermediate.dense.forward(x.clone()));
        let o = &self.output;
        let h = kiln_peft::adapter::maybe_adapt(&o.adapter, o.dropout.forward(o.dense.forward(h)));
        o.LayerNorm.forward(h + x)
    }
}

impl<B: Backend> BertModel<B> {
    /// Insert bottleneck adapters into every layer (Houlsby: after attention and FFN; Pfeiffer: FFN only).
    pub fn add_adapters(mut self, cfg: &kiln_peft::AdapterConfig) -> Self {
        let d = self.hidden_size();
        let device = self.embeddings.word_embeddings.weight.device();
        for layer in self.encoder.layer.iter_mut() {
            if cfg.placement == kiln_peft::AdapterPlacement::Houlsby {
                layer.attention.output.adapter = Some(cfg.init(d, &device));
            }
            layer.output.adapter = Some(cfg.init(d, &device));
        }
        self
    }

    /// Hidden size `d`.
    pub fn hidden_size(&self) -> usize {
        self.embeddings.word_embeddings.weight.dims()[1]
    }

    /// The longest input the position embeddings allow.
    pub fn max_positions(&self) -> usize {
        self.embeddings.position_embeddings.weight.dims()[0]
    }

    /// As `BertModel.forward`: `input_ids` `[b, s]`; `token_type_ids` `[b, s]` (zeros when `None`);
    /// `attention_mask` `b` rows of `s` (1 = real token; all ones when `None`). Positions are `0..s`.
    /// Token ids are not range-checked here (see [`Self::forward_batch`]).
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        token_type_ids: Option<Tensor<B, 2, Int>>,
        attention_mask: Option<&[Vec<u8>]>,
    ) -> Result<BertModelOutput<B>> {
        let words = self.embeddings.word_embeddings.forward(input_ids);
        self.forward_embeds(words, token_type_ids, attention_mask)
    }

    /// [`Self::forward`] from word embeddings `[b, s, d]` (transformers' `inputs_embeds`): positions, token
    /// types, LayerNorm, the encoder and the pooler (which reads position 0).
    pub fn forward_embeds(
        &self,
        words: Tensor<B, 3>,
        token_type_ids: Option<Tensor<B, 2, Int>>,
        attention_mask: Option<&[Vec<u8>]>,
    ) -> Result<BertModelOutput<B>> {
        let device = words.device();
        let [b, s, _] = words.dims();
        if s == 0 || s > self.max_positions() {
            return Err(Error::Input(format!(
                "sequence length {s} is outside 1..={}",
                self.max_positions()
            )));
        }
        if let Some(t) = &token_type_ids {
            if t.dims() != [b, s] {
                return Err(Error::Input(format!(
                    "token_type_ids are {:?}, input_ids [{b}, {s}]",
                    t.dims()
                )));
            }
        }
        let ones;
        let mask = match attention_mask {
            Some(m) => {
                if m.len() != b || m.iter().any(|r| r.len() != s) {
                    return Err(Error::Input(format!(
                        "attention_mask is not {b} rows of {s}"
                    )));
                }
                m
            }
            None => {
                ones = vec![vec![1u8; s]; b];
                &ones[..]
            }
        };
        let e = &self.embeddings;
        let positions = Tensor::<B, 1, Int>::arange(0..s as i64, &device)
            .unsqueeze::<2>()
            .repeat_dim(0, b);
        let types = token_type_ids.unwrap_or_else(|| Tensor::zeros([b, s], &device));
        let x = words
            + e.position_embeddings.forward(positions)
            + e.token_type_embeddings.forward(types);
        let mut x = e.dropout.forward(e.LayerNorm.forward(x));
        let bias = additive_mask::<B>(mask, s, false, &device);
        for layer in &self.encoder.layer {
            x = layer.forward(x, bias.clone());
        }
        let d = self.hidden_size();
        let first = x.clone().slice([0..b, 0..1, 0..d]).reshape([b, d]);
        let pooler_output = self.pooler.dense.forward(first).tanh();
        Ok(BertModelOutput {
            last_hidden_state: x,
            pooler_output,
        })
    }

    /// [`Self::forward`] on a host-side batch, after checking every id against the embedding tables.
    pub fn forward_batch(&self, batch: &BertBatch) -> Result<BertModelOutput<B>> {
        let device = self.embeddings.word_embeddings.weight.device();
        let vocab = self.embeddings.word_embeddings.weight.dims()[0];
        let types = self.embeddings.token_type_embeddings.weight.dims()[0];
        batch.check(vocab, types)?;
        let ids = ids_tensor::<B>(&batch.input_ids, &device);
        let tt = ids_tensor::<B>(&batch.token_type_ids, &device);
        self.forward(ids, Some(tt), Some(&batch.attention_mask))
    }

    /// Sentence embeddings as sentence-transformers computes them for mean-pooling models
    /// (all-MiniLM-L6-v2): tokenize (cut to `max_len`), encode, masked mean, L2-normalise. `[n, d]`.
    pub fn sentence_embeddings(
        &self,
        tokenizer: &Tokenizer,
        texts: &[&str],
        max_len: Option<usize>,
    ) -> Result<Tensor<B, 2>> {
        let encs = texts
            .iter()
            .map(|t| tokenizer.encode(t, max_len))
            .collect::<Result<Vec<_>>>()?;
        let pad = tokenizer.token_to_id("[PAD]").unwrap_or(0);
        self.embeddings_of(&encs, pad)
    }

    /// [`Self::sentence_embeddings`] of encodings made elsewhere (sentence pairs from
    /// [`Tokenizer::encode_pair`], with their token types), padded with `pad`.
    pub fn embeddings_of(&self, encs: &[Encoding], pad: u32) -> Result<Tensor<B, 2>> {
        let batch = BertBatch::from_encodings(encs, pad)?;
        let out = self.forward_batch(&batch)?;
        Ok(l2_normalize(mean_pool(
            out.last_hidden_state,
            &batch.attention_mask,
        )))
    }
}

impl<B: Backend> BertForSequenceClassification<B> {
    /// Logits `[b, num_labels]`; arguments as [`BertModel::forward`].
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        token_type_ids: Option<Tensor<B, 2, Int>>,
        attention_mask: Option<&[Vec<u8>]>,
    ) -> Result<Tensor<B, 2>> {
        let out = self
            .bert
            .forward(input_ids, token_type_ids, attention_mask)?;
        Ok(self
            .classifier
            .forward(self.dropout.forward(out.pooler_output)))
    }

    /// Logits `[b, num_labels]` for a host-side batch (ids checked).
    pub fn forward_batch(&self, batch: &BertBatch) -> Result<Tensor<B, 2>> {
        let out = self.bert.forward_batch(batch)?;
        Ok(self
            .classifier
            .forward(self.dropout.forward(out.pooler_output)))
    }

    /// The number of classes.
    pub fn num_labels(&self) -> usize {
        self.classifier.d_out()
    }
}

/// A right-padded batch on the host: ids, token types and the padding mask, `b` rows of equal length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BertBatch {
    /// Token ids, right-padded.
    pub input_ids: Vec<Vec<u32>>,
    /// Segment ids, 0 on padding.
    pub token_type_ids: Vec<Vec<u32>>,
    /// 1 = real token, 0 = padding.
    pub attention_mask: Vec<Vec<u8>>,
}

impl BertBatch {
    /// Right-pad encodings (from [`Tokenizer::encode`] / [`Tokenizer::encode_pair`]) with `pad_id`, token
    /// type 0 and mask 0, as HF's tokenizers pad.
    pub fn from_encodings(encs: &[Encoding], pad_id: u32) -> Result<Self> {
        if encs.is_empty() {
            return Err(Error::Input("empty batch".into()));
        }
        let n = encs.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let pad = |v: &[u32], with: u32| {
            v.iter()
                .copied()
                .chain(std::iter::repeat(with))
                .take(n)
                .collect::<Vec<_>>()
        };
        Ok(Self {
            input_ids: encs.iter().map(|e| pad(&e.ids, pad_id)).collect(),
            token_type_ids: encs.iter().map(|e| pad(&e.type_ids, 0)).collect(),
            attention_mask: encs
                .iter()
                .map(|e| (0..n).map(|i| u8::from(i < e.ids.len())).collect())
                .collect(),
        })
    }

    /// Check shapes and that ids are below `vocab_size` and token types below `type_vocab_size`.
    pub fn check(&self, vocab_size: usize, type_vocab_size: usize) -> Result<()> {
        let b = self.input_ids.len();
        let s = self.input_ids.first().map_or(0, |r| r.len());
        if b == 0 || s == 0 {
            return Err(Error::Input("empty batch".into()));
        }
        let ok_ids = |rows: &[Vec<u32>]| rows.len() == b && rows.iter().all(|r| r.len() == s);
        let ok_mask =
            self.attention_mask.len() == b && self.attention_mask.iter().all(|r| r.len() == s);
        if !ok_ids(&self.input_ids) || !ok_ids(&self.token_type_ids) || !ok_mask {
            return Err(Error::Input(format!(
                "input_ids, token_type_ids and attention_mask must all be {b} rows of {s}"
            )));
        }
        if let Some(&id) = self
            .input_ids
            .iter()
            .flatten()
            .find(|&&i| i as usize >= vocab_size)
        {
            return Err(Error::Input(format!(
                "token id {id} is not below vocab_size = {vocab_size}"
            )));
        }
        if let Some(&t) = self
            .token_type_ids
            .iter()
            .flatten()
            .find(|&&t| t as usize >= type_vocab_size)
        {
            return Err(Error::Input(format!(
                "token type {t} is not below type_vocab_size = {type_vocab_size}"
            )));
        }
        Ok(())
    }
}

/// sentence-transformers' mean pooling: the mean of `hidden` `[b, s, d]` over the positions where `mask`
/// is 1 (`b` rows of `s`), `[b, d]`. The count is clamped to 1e-9 as there.
pub fn mean_pool<B: Backend>(hidden: Tensor<B, 3>, mask: &[Vec<u8>]) -> Tensor<B, 2> {
    let [b, s, d] = hidden.dims();
    let device = hidden.device();
    let m: Vec<f32> = mask
        .iter()
        .flat_map(|r| r.iter().map(|&x| f32::from(x != 0)))
        .collect();
    let m = Tensor::<B, 3>::from_data(TensorData::new(m, [b, s, 1]), &device);
    let sum = (hidden * m.clone()).sum_dim(1).reshape([b, d]);
    let count = m.sum_dim(1).reshape([b, 1]).clamp_min(1e-9);
    sum / count
}

/// Rows divided by their L2 norm (clamped to 1e-12, as `torch.nn.functional.normalize`).
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

fn read_config(dir: &Path) -> Result<BertConfig> {
    let raw = RawConfig::load(&dir.join("config.json"))?;
    let mt = raw.model_type()?;
    if mt != "bert" {
        return Err(Error::UnsupportedArchitecture {
            path: raw.path.clone(),
            model_type: mt,
            supported: "bert here".into(),
        });
    }
    BertConfig::from_raw(&raw)
}

/// Load a BERT checkpoint directory (`config.json` + safetensors weights) as a [`BertModel`]; works for
/// `BertModel` checkpoints and for the encoder of `BertFor…` ones (whose heads are reported unused).
pub fn load<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(BertConfig, BertModel<B>, LoadReport)> {
    let cfg = read_config(dir)?;
    let mut model = cfg.init::<B>(device);
    let files = crate::load::weights::weight_files(dir)?;
    let report =
        crate::load::weights::load_into(&mut model, &files, &BertConfig::model_load_spec())?;
    Ok((cfg, model, report))
}

/// Load a BERT checkpoint directory as a [`BertForSequenceClassification`]. A checkpoint without a
/// classifier (e.g. a plain `BertModel` such as all-MiniLM-L6-v2) gets a fresh one with
/// [`BertConfig::num_labels`] classes, listed in [`LoadReport::initialised`].
pub fn load_for_classification<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(BertConfig, BertForSequenceClassification<B>, LoadReport)> {
    let cfg = read_config(dir)?;
    let mut model = cfg.init_classifier::<B>(device);
    let files = crate::load::weights::weight_files(dir)?;
    let report =
        crate::load::weights::load_into(&mut model, &files, &BertConfig::classifier_load_spec())?;
    Ok((cfg, model, report))
}

impl<B: Backend> BertForSequenceClassification<B> {
    /// The seed's setup: bottleneck adapters in every layer, the backbone frozen; only the adapters, the
    /// classifier (and, with `train_layer_norms`, the LayerNorms, as Houlsby et al. do) are trained.
    /// Returns the model and its (trainable, total) parameter counts.
    pub fn with_frozen_adapters(
        self,
        cfg: &kiln_peft::AdapterConfig,
        train_layer_norms: bool,
    ) -> (Self, usize, usize) {
        let model = Self {
            bert: self.bert.add_adapters(cfg),
            ..self
        };
        kiln_peft::freeze_except(model, |path| {
            path.contains(".adapter.")
                || path.starts_with("classifier")
                || (train_layer_norms && path.contains("LayerNorm"))
        })
    }
}
