//! Prompt tuning (Lester et al. 2021) and prefix tuning (Li & Liang 2021) in peft's format: the config
//! ([`PromptLearningConfig`], peft's `PromptTuningConfig` / `PrefixTuningConfig`), the trainable prompt
//! ([`PromptEncoder`], peft's `PromptEmbedding` / `PrefixEncoder`) and its files (`adapter_config.json` +
//! `adapter_model.safetensors` with the single tensor `prompt_embeddings`).
//!
//! The model side (prepending the prompt to the input embeddings, or feeding the prefix as past keys/values) is in
//! kiln-models (`kiln_models::prompt`).

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use serde_json::{json, Map, Value};

use crate::error::{PeftError, Result};
use crate::io::{read_tensors, write_tensors, RawTensor, CONFIG_FILE, WEIGHTS_FILE};

/// The saved tensor's key (no `base_model.model.` prefix for prompt learning).
pub const PROMPT_KEY: &str = "prompt_embeddings";

/// Which prompt-learning method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptMethod {
    /// `PROMPT_TUNING`: `[n, token_dim]` embeddings prepended to the input embeddings.
    PromptTuning,
    /// `PREFIX_TUNING`: per-layer past keys/values, `[n, num_layers · 2 · token_dim]`.
    PrefixTuning,
}

impl PromptMethod {
    /// peft's `peft_type` string: `PROMPT_TUNING` or `PREFIX_TUNING`.
    pub fn peft_type(self) -> &'static str {
        match self {
            PromptMethod::PromptTuning => "PROMPT_TUNING",
            PromptMethod::PrefixTuning => "PREFIX_TUNING",
        }
    }
}

/// peft's `PromptTuningConfig` / `PrefixTuningConfig` (the fields of `PromptLearningConfig` plus each method's own).
/// `token_dim`, `num_layers` and `num_attention_heads` are filled from the model when `None` (as peft's
/// `_prepare_prompt_learning_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptLearningConfig {
    /// Prompt tuning or prefix tuning (`peft_type`).
    pub method: PromptMethod,
    /// peft's `task_type` (`CAUSAL_LM`, `SEQ_2_SEQ_LM` or `SEQ_CLS`); `None` is written as `null`.
    pub task_type: Option<String>,
    /// Number of virtual tokens `n` prepended to every sequence (`num_virtual_tokens`, at least 1).
    pub num_virtual_tokens: usize,
    /// Hidden size of the base model's token embeddings (`token_dim`); `None` until resolved.
    pub token_dim: Option<usize>,
    /// `num_transformer_submodules`: 1 for decoder-only and encoder models, 2 for encoder-decoder models
    /// (`SEQ_2_SEQ_LM`).
    pub num_transformer_submodules: Option<usize>,
    /// Attention heads per layer of the base model (`num_attention_heads`); `None` until resolved.
    pub num_attention_heads: Option<usize>,
    /// Transformer layers of the base model (`num_layers`); `None` until resolved.
    pub num_layers: Option<usize>,
    /// Prompt tuning: `RANDOM` (N(0, 1), torch's `nn.Embedding` default), `TEXT` or `SAMPLE_VOCAB`.
    pub prompt_tuning_init: String,
    /// `TEXT` init: the text whose token ids initialise the prompt (`prompt_tuning_init_text`).
    pub prompt_tuning_init_text: Option<String>,
    /// `TEXT` init: the tokenizer (hub id or directory) that encodes the init text (`tokenizer_name_or_path`).
    pub tokenizer_name_or_path: Option<String>,
    /// Prefix tuning: an MLP `Linear(token_dim, encoder_hidden_size) → tanh → Linear(…, num_layers·2·token_dim)`
    /// over `[n, token_dim]` embeddings while training. peft saves its *output* and cannot train it further after
    /// loading.
    pub prefix_projection: bool,
    /// Prefix tuning with projection: hidden width of the MLP (`encoder_hidden_size`; defaults to `token_dim`).
    pub encoder_hidden_size: Option<usize>,
    /// Prefix tuning: `null` (random) or `"zero"`.
    pub init_weights: Option<String>,
    /// The base model the adapter was made for, hub id or path (`base_model_name_or_path`).
    pub base_model_name_or_path: Option<String>,
    /// Hub revision of the base model (`revision`), if one was pinned.
    pub revision: Option<String>,
    /// peft's `inference_mode`: `true` when the prompt is loaded frozen, for inference only.
    pub inference_mode: bool,
    /// Keys kiln does not model, written back as read.
    pub other: Map<String, Value>,
}

impl PromptLearningConfig {
    /// Prompt tuning with `n` virtual tokens, random init, `CAUSAL_LM`.
    pub fn prompt_tuning(n: usize) -> Self {
        Self::new(PromptMethod::PromptTuning, n)
    }

    /// Prefix tuning with `n` virtual tokens, no projection, `CAUSAL_LM`.
    pub fn prefix_tuning(n: usize) -> Self {
        Self::new(PromptMethod::PrefixTuning, n)
    }

    fn new(method: PromptMethod, n: usize) -> Self {
        Self {
            method,
            task_type: Some("CAUSAL_LM".into()),
            num_virtual_tokens: n,
            token_dim: None,
            num_transformer_submodules: Some(1),
            num_attention_heads: None,
            num_layers: None,
            prompt_tuning_init: "RANDOM".into(),
            prompt_tuning_init_text: None,
            tokenizer_name_or_path: None,
            prefix_projection: false,
            encoder_hidden_size: None,
            init_weights: None,
            base_model_name_or_path: None,
            revision: None,
            inference_mode: false,
            other: Map::new(),
        }
    }

    /// `TEXT` init from `text` (tokenized with `tokenizer` — a name or directory — as peft records it).
    pub fn with_text_init(mut self, text: &str, tokenizer: &str) -> Self {
        self.prompt_tuning_init = "TEXT".into();
        self.prompt_tuning_init_text = Some(text.into());
        self.tokenizer_name_or_path = Some(tokenizer.into());
        self
    }

    /// Prefix tuning through the reparametrisation MLP of width `encoder_hidden_size`.
    pub fn with_prefix_projection(mut self, encoder_hidden_size: usize) -> Self {
        self.prefix_projection = true;
        self.encoder_hidden_size = Some(encoder_hidden_size);
        self
    }

    /// Parse `adapter_config.json` text; another `peft_type` is `WrongPeftType`.
    pub fn from_json(path: &Path, text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|source| PeftError::Json {
            path: path.into(),
            source,
        })?;
        let Value::Object(mut m) = v else {
            return Err(PeftError::Config {
                path: path.into(),
                field: "<root>".into(),
                msg: "not a JSON object".into(),
            });
        };
        let found = m
            .get("peft_type")
            .and_then(Value::as_str)
            .unwrap_or("<missing>")
            .to_string();
        let method = match found.as_str() {
            "PROMPT_TUNING" => PromptMethod::PromptTuning,
            "PREFIX_TUNING" => PromptMethod::PrefixTuning,
            _ => {
                return Err(PeftError::WrongPeftType {
                    path: path.into(),
                    found,
                    expected: "PROMPT_TUNING or PREFIX_TUNING".into(),
                })
            }
        };
        m.remove("peft_type");
        m.remove("peft_version");
        let bad = |field: &str, msg: &str| PeftError::Config {
            path: path.into(),
            field: field.into(),
            msg: msg.into(),
        };
        let mut take = |k: &str| m.remove(k).filter(|v| !v.is_null());
        let opt_usize = |v: Option<Value>, k: &str| -> Result<Option<usize>> {
            v.map(|v| {
                v.as_u64()
                    .map(|x| x as usize)
                    .ok_or_else(|| bad(k, "expected a non-negative integer"))
            })
            .transpose()
        };
        let opt_str = |v: Option<Value>, k: &str| -> Result<Option<String>> {
            v.map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(k, "expected a string"))
            })
            .transpose()
        };
        let task_type = opt_str(take("task_type"), "task_type")?;
        let num_virtual_tokens = opt_usize(take("num_virtual_tokens"), "num_virtual_tokens")?
            .ok_or_else(|| bad("num_virtual_tokens", "missing"))?;
        let token_dim = opt_usize(take("token_dim"), "token_dim")?;
        let num_transformer_submodules = opt_usize(
            take("num_transformer_submodules"),
            "num_transformer_submodules",
        )?;
        let num_attention_heads = opt_usize(take("num_attention_heads"), "num_attention_heads")?;
        let num_layers = opt_usize(take("num_layers"), "num_layers")?;
        let inference_mode = take("inference_mode")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let base_model_name_or_path =
            opt_str(take("base_model_name_or_path"), "base_model_name_or_path")?;
        let revision = opt_str(take("revision"), "revision")?;
        let mut cfg = Self::new(method, num_virtual_tokens);
        cfg.task_type = task_type;
        cfg.token_dim = token_dim;
        cfg.num_transformer_submodules = num_transformer_submodules;
        cfg.num_attention_heads = num_attention_heads;
        cfg.num_layers = num_layers;
        cfg.inference_mode = inference_mode;
        cfg.base_model_name_or_path = base_model_name_or_path;
        cfg.revision = revision;
        match method {
            PromptMethod::PromptTuning => {
                cfg.prompt_tuning_init = opt_str(take("prompt_tuning_init"), "prompt_tuning_init")?
                    .unwrap_or("RANDOM".into());
                cfg.prompt_tuning_init_text =
                    opt_str(take("prompt_tuning_init_text"), "prompt_tuning_init_text")?;
                cfg.tokenizer_name_or_path =
                    opt_str(take("tokenizer_name_or_path"), "tokenizer_name_or_path")?;
                m.remove("tokenizer_kwargs");
            }
            PromptMethod::PrefixTuning => {
                cfg.prefix_projection = take("prefix_projection")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false);
                cfg.encoder_hidden_size =
                    opt_usize(take("encoder_hidden_size"), "encoder_hidden_size")?;
                cfg.init_weights = opt_str(take("init_weights"), "init_weights")?;
            }
        }
        for k in ["auto_mapping", "modules_to_save"] {
            if m.get(k).is_some_and(|v| v.is_null()) {
                m.remove(k);
            }
        }
        cfg.other = m;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Read `adapter_config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| PeftError::io(path, e))?;
        Self::from_json(path, &text)
    }

    /// For an encoder-decoder model (peft's `SEQ_2_SEQ_LM`: two transformer submodules, so prompt tuning stores
    /// `2 · num_virtual_tokens` rows and prefix tuning maps the prefix onto the decoder as peft does).
    pub fn for_seq2seq(mut self) -> Self {
        self.task_type = Some("SEQ_2_SEQ_LM".into());
        self.num_transformer_submodules = Some(2);
        self
    }

    /// Whether the config is for an encoder-decoder model (`task_type` `SEQ_2_SEQ_LM`).
    pub fn is_seq2seq(&self) -> bool {
        self.task_type.as_deref() == Some("SEQ_2_SEQ_LM")
    }

    /// Whether the config is for sequence classification (`task_type` `SEQ_CLS`: peft trains and saves the
    /// classification head beside the prompt, as `modules_to_save`).
    pub fn is_seq_cls(&self) -> bool {
        self.task_type.as_deref() == Some("SEQ_CLS")
    }

    /// For sequence classification (peft's `SEQ_CLS`; prompt tuning only): the head is saved with the prompt, as
    /// peft writes it (`modules_to_save: ["classifier", "score", "classifier", "score"]`).
    pub fn for_seq_cls(mut self) -> Self {
        self.task_type = Some("SEQ_CLS".into());
        self.num_transformer_submodules = Some(1);
        self.other.insert(
            "modules_to_save".into(),
            json!(["classifier", "score", "classifier", "score"]),
        );
        self
    }

    /// peft's default `num_transformer_submodules`: 2 for `SEQ_2_SEQ_LM`, else 1.
    fn default_submodules(&self) -> usize {
        if self.is_seq2seq() {
            2
        } else {
            1
        }
    }

    /// Rows of the stored `prompt_embeddings`: `num_virtual_tokens · num_transformer_submodules` for prompt
    /// tuning (peft's `PromptEmbedding` holds one block per submodule; an encoder-decoder uses only the first),
    /// `num_virtual_tokens` for prefix tuning.
    pub fn stored_rows(&self) -> usize {
        match self.method {
            PromptMethod::PromptTuning => {
                self.num_virtual_tokens
                    * self
                        .num_transformer_submodules
                        .unwrap_or_else(|| self.default_submodules())
            }
            PromptMethod::PrefixTuning => self.num_virtual_tokens,
        }
    }

    /// What kiln cannot run: task types other than `CAUSAL_LM` / `SEQ_2_SEQ_LM`, a submodule count that does not
    /// fit the task type, `modules_to_save`.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let unsupported = |field: &str, msg: &str| {
            Err(PeftError::Unsupported {
                path: path.into(),
                field: field.into(),
                msg: msg.into(),
            })
        };
        if self.num_virtual_tokens == 0 {
            return Err(PeftError::Config {
                path: path.into(),
                field: "num_virtual_tokens".into(),
                msg: "must be > 0".into(),
            });
        }
        if let Some(t) = &self.task_type {
            if t == "SEQ_CLS" && self.method == PromptMethod::PrefixTuning {
                return unsupported(
                    "task_type",
                    "SEQ_CLS prefix tuning: peft 0.21.2 cannot run it on BERT with transformers 5.24 \
                     (\"Model does not support past key values which are required for prefix tuning\")",
                );
            }
            if t != "CAUSAL_LM" && t != "SEQ_2_SEQ_LM" && t != "SEQ_CLS" {
                return unsupported(
                    "task_type",
                    &format!(
                        "`{t}`: prompt learning is implemented for CAUSAL_LM, SEQ_2_SEQ_LM and SEQ_CLS (prompt tuning)"
                    ),
                );
            }
        }
        let want = self.default_submodules();
        if let Some(n) = self.num_transformer_submodules {
            if n != want {
                return unsupported(
                    "num_transformer_submodules",
                    &format!(
                        "{n} with task_type {}: expected {want} (1 for decoder-only, 2 for encoder-decoder models)",
                        self.task_type.as_deref().unwrap_or("null")
                    ),
                );
            }
        }
        if self
            .other
            .get("modules_to_save")
            .is_some_and(|v| !v.is_null())
            && !self.is_seq_cls()
        {
            return unsupported(
                "modules_to_save",
                "supported with prompt learning only for SEQ_CLS (the classification head)",
            );
        }
        if self.method == PromptMethod::PromptTuning
            && !matches!(
                self.prompt_tuning_init.as_str(),
                "RANDOM" | "TEXT" | "SAMPLE_VOCAB"
            )
        {
            return unsupported(
                "prompt_tuning_init",
                &format!("`{}`", self.prompt_tuning_init),
            );
        }
        if self.init_weights.as_deref().is_some_and(|w| w != "zero") {
            return unsupported("init_weights", "expected null or \"zero\"");
        }
        Ok(())
    }

    /// `adapter_config.json` as peft writes it (keys sorted, two-space indent).
    pub fn to_json(&self) -> String {
        let mut m = self.other.clone();
        let mut put = |k: &str, v: Value| {
            m.insert(k.into(), v);
        };
        put("peft_type", json!(self.method.peft_type()));
        put("task_type", json!(self.task_type));
        put("num_virtual_tokens", json!(self.num_virtual_tokens));
        put("token_dim", json!(self.token_dim));
        put(
            "num_transformer_submodules",
            json!(self.num_transformer_submodules),
        );
        put("num_attention_heads", json!(self.num_attention_heads));
        put("num_layers", json!(self.num_layers));
        put(
            "base_model_name_or_path",
            json!(self.base_model_name_or_path),
        );
        put("revision", json!(self.revision));
        put("inference_mode", json!(self.inference_mode));
        put("auto_mapping", Value::Null);
        let mts = self
            .other
            .get("modules_to_save")
            .cloned()
            .unwrap_or(Value::Null);
        put("modules_to_save", mts);
        match self.method {
            PromptMethod::PromptTuning => {
                put("prompt_tuning_init", json!(self.prompt_tuning_init));
                put(
                    "prompt_tuning_init_text",
                    json!(self.prompt_tuning_init_text),
                );
                put("tokenizer_name_or_path", json!(self.tokenizer_name_or_path));
                put("tokenizer_kwargs", Value::Null);
            }
            PromptMethod::PrefixTuning => {
                put("prefix_projection", json!(self.prefix_projection));
                put("encoder_hidden_size", json!(self.encoder_hidden_size));
                put("init_weights", json!(self.init_weights));
            }
        }
        let sorted: BTreeMap<String, Value> = m.into_iter().collect();
        let mut s = serde_json::to_string_pretty(&sorted).expect("config serialises");
        s.push('\n');
        s
    }

    /// Fill `token_dim`, `num_layers`, `num_attention_heads` (and `encoder_hidden_size`) from the model, and check
    /// values already set against it.
    pub fn resolve(
        &mut self,
        path: &Path,
        token_dim: usize,
        num_layers: usize,
        num_heads: usize,
    ) -> Result<()> {
        let check = |field: &str, have: Option<usize>, model: usize| -> Result<usize> {
            match have {
                Some(h) if h != model => Err(PeftError::Config {
                    path: path.into(),
                    field: field.into(),
                    msg: format!(
                        "{h}, but the base model has {model} (an adapter for another model?)"
                    ),
                }),
                _ => Ok(model),
            }
        };
        self.token_dim = Some(check("token_dim", self.token_dim, token_dim)?);
        self.num_layers = Some(check("num_layers", self.num_layers, num_layers)?);
        self.num_attention_heads = Some(check(
            "num_attention_heads",
            self.num_attention_heads,
            num_heads,
        )?);
        let subs = self.default_submodules();
        self.num_transformer_submodules.get_or_insert(subs);
        if self.method == PromptMethod::PrefixTuning && self.encoder_hidden_size.is_none() {
            self.encoder_hidden_size = Some(token_dim);
        }
        self.validate(path)
    }

    /// The width of one virtual token's stored row: `token_dim` (prompt) or `num_layers · 2 · token_dim` (prefix).
    pub fn row_width(&self) -> usize {
        let d = self.token_dim.unwrap_or(0);
        match self.method {
            PromptMethod::PromptTuning => d,
            PromptMethod::PrefixTuning => self.num_layers.unwrap_or(0) * 2 * d,
        }
    }
}

/// The init token ids of `TEXT` init: the tokenized text repeated / truncated to `n` (peft's `PromptEmbedding`).
pub fn text_init_ids(tokenized: &[u32], n: usize) -> Vec<u32> {
    tokenized
        .iter()
        .copied()
        .cycle()
        .take(if tokenized.is_empty() { 0 } else { n })
        .collect()
}

/// peft's `PrefixEncoder.transform`: `Linear → tanh → Linear` (weights `[in, out]`).
#[derive(Module, Debug)]
pub struct PrefixMlp<B: Backend> {
    /// First projection layer, `token_dim → encoder_hidden_size` (followed by tanh).
    pub fc1: Linear<B>,
    /// Second projection layer, `encoder_hidden_size → num_layers · 2 · token_dim`.
    pub fc2: Linear<B>,
}

/// The trainable prompt: `embedding` `[n, token_dim]` (prompt tuning, or prefix tuning with projection while
/// training) or `[n, num_layers · 2 · token_dim]` (prefix tuning), and the projection MLP if any.
#[derive(Module, Debug)]
pub struct PromptEncoder<B: Backend> {
    /// The trainable rows: `[stored_rows, token_dim]` (prompt tuning, or the MLP input with a projection) or
    /// `[n, num_layers · 2 · token_dim]` (prefix tuning without projection).
    pub embedding: Param<Tensor<B, 2>>,
    /// The prefix-projection MLP (prefix tuning with `prefix_projection`, while training); `None` otherwise.
    pub transform: Option<PrefixMlp<B>>,
}

impl<B: Backend> PromptEncoder<B> {
    /// A fresh encoder for a resolved config: N(0, 1) rows (torch's `nn.Embedding` init), zeros for prefix tuning's
    /// `init_weights = "zero"`, and `Linear`s initialised U(±1/√in) as torch's. `text_rows` (TEXT / SAMPLE_VOCAB
    /// init) replaces the rows of a prompt-tuning embedding.
    pub fn init(
        cfg: &PromptLearningConfig,
        text_rows: Option<Tensor<B, 2>>,
        device: &B::Device,
    ) -> Self {
        let n = cfg.stored_rows();
        let d = cfg.token_dim.expect("resolved config");
        let zero = cfg.init_weights.as_deref() == Some("zero");
        let (width, transform) = match cfg.method {
            PromptMethod::PrefixTuning if cfg.prefix_projection => {
                let h = cfg.encoder_hidden_size.unwrap_or(d);
                let out = cfg.row_width();
                let mut fc2 = LinearConfig::new(h, out).init(device);
                if zero {
                    fc2.weight = Param::from_tensor(Tensor::zeros([h, out], device));
                    fc2.bias = Some(Param::from_tensor(Tensor::zeros([out], device)));
                }
                (
                    d,
                    Some(PrefixMlp {
                        fc1: LinearConfig::new(d, h).init(device),
                        fc2,
                    }),
                )
            }
            _ => (cfg.row_width(), None),
        };
        let emb = match text_rows {
            Some(t) => t,
            None if zero && transform.is_none() => Tensor::zeros([n, width], device),
            None => Tensor::random([n, width], Distribution::Normal(0.0, 1.0), device),
        };
        Self {
            embedding: Param::from_tensor(emb),
            transform,
        }
    }

    /// An encoder holding saved rows (`prompt_embeddings`), no projection.
    pub fn from_rows(rows: Tensor<B, 2>) -> Self {
        Self {
            embedding: Param::from_tensor(rows),
            transform: None,
        }
    }

    /// What the model consumes (and what peft saves as `prompt_embeddings`): the embedding rows, or the
    /// projection MLP applied to them.
    pub fn output(&self) -> Tensor<B, 2> {
        let e = self.embedding.val();
        match &self.transform {
            None => e,
            Some(t) => t
                .fc2
                .forward(burn::tensor::activation::tanh(t.fc1.forward(e))),
        }
    }

    /// Prefix tuning: per layer, keys and values `[batch, heads, n, head_dim]` (peft's `get_prompt`: view
    /// `[n, num_layers·2, heads, head_dim]`, layer `l` keys at `2l`, values at `2l + 1`).
    pub fn past_key_values(
        &self,
        num_layers: usize,
        heads: usize,
        batch: usize,
    ) -> Vec<(Tensor<B, 4>, Tensor<B, 4>)> {
        let out = self.output();
        let [n, w] = out.dims();
        let hd = w / (num_layers * 2 * heads);
        let kv = out
            .reshape([n, num_layers * 2, heads, hd])
            .permute([1, 2, 0, 3]); // [2L, H, n, hd]
        (0..num_layers)
            .map(|l| {
                let pick = |i: usize| {
                    kv.clone()
                        .slice([i..i + 1, 0..heads, 0..n, 0..hd])
                        .repeat_dim(0, batch)
                };
                (pick(2 * l), pick(2 * l + 1))
            })
            .collect()
    }
}

impl<B: Backend> PromptEncoder<B> {
    /// Prefix tuning of an encoder-decoder model, as peft 0.21.2 with transformers >= 4.56 applies it: the
    /// `num_layers · 2` key/value tensors `P` are concatenated with themselves and split in groups of 4 per decoder
    /// layer (self-attention keys/values, then cross-attention ones); transformers' `EncoderDecoderCache` takes the
    /// groups and peft then empties the cross-attention part. So decoder layer `i`'s self-attention gets
    /// `(P[4i mod 2L], P[(4i + 1) mod 2L])` as past keys/values and nothing else changes. Returns one pair
    /// `[batch, heads, n, head_dim]` per decoder layer (`decoder_layers` of them, at most `num_layers`).
    pub fn decoder_past_key_values(
        &self,
        num_layers: usize,
        heads: usize,
        batch: usize,
        decoder_layers: usize,
    ) -> Vec<(Tensor<B, 4>, Tensor<B, 4>)> {
        let flat: Vec<Tensor<B, 4>> = self
            .past_key_values(num_layers, heads, batch)
            .into_iter()
            .flat_map(|(k, v)| [k, v])
            .collect();
        let m = flat.len();
        (0..decoder_layers.min(num_layers))
            .map(|i| (flat[(4 * i) % m].clone(), flat[(4 * i + 1) % m].clone()))
            .collect()
    }
}

/// Write `adapter_config.json` and `adapter_model.safetensors` (`prompt_embeddings` = [`PromptEncoder::output`]).
pub fn save_prompt<B: Backend>(
    dir: &Path,
    cfg: &PromptLearningConfig,
    encoder: &PromptEncoder<B>,
) -> Result<()> {
    save_prompt_with_modules(dir, cfg, encoder, BTreeMap::new())
}

/// Read an adapter directory: its config and `prompt_embeddings` (checked to be `[n, row_width]` once the config
/// is resolved by the caller; here only the key set is checked). Any other tensor is an error.
pub fn read_prompt(dir: &Path) -> Result<(PromptLearningConfig, RawTensor)> {
    let (cfg, t, extra) = read_prompt_with_modules(dir)?;
    if let Some(k) = extra.keys().next() {
        return Err(PeftError::UnsupportedKey {
            path: dir.join(WEIGHTS_FILE),
            key: k.clone(),
            kind: "tensor other than `prompt_embeddings`".into(),
        });
    }
    Ok((cfg, t))
}

/// [`read_prompt`] for configs with `modules_to_save` (SEQ_CLS): also returns the saved modules' tensors, keyed
/// as peft writes them (`base_model.classifier.weight`, Hugging Face layout).
pub fn read_prompt_with_modules(
    dir: &Path,
) -> Result<(PromptLearningConfig, RawTensor, BTreeMap<String, RawTensor>)> {
    let cfg = PromptLearningConfig::load(&dir.join(CONFIG_FILE))?;
    let path = dir.join(WEIGHTS_FILE);
    let mut file = read_tensors(&path)?;
    let t = file
        .remove(PROMPT_KEY)
        .ok_or_else(|| PeftError::MissingKey {
            path: path.clone(),
            key: PROMPT_KEY.into(),
        })?;
    Ok((cfg, t, file))
}

/// [`save_prompt`] plus the `modules_to_save` tensors (`extra`, keyed and laid out as peft writes them).
pub fn save_prompt_with_modules<B: Backend>(
    dir: &Path,
    cfg: &PromptLearningConfig,
    encoder: &PromptEncoder<B>,
    mut extra: BTreeMap<String, RawTensor>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| PeftError::io(dir, e))?;
    let mut cfg = cfg.clone();
    cfg.inference_mode = true;
    let cfg_path = dir.join(CONFIG_FILE);
    std::fs::write(&cfg_path, cfg.to_json()).map_err(|e| PeftError::io(&cfg_path, e))?;
    let out = encoder.output();
    let shape = out.dims().to_vec();
    let data: Vec<f32> = out
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 prompt");
    extra.insert(PROMPT_KEY.to_string(), RawTensor::new(shape, data));
    write_tensors(&dir.join(WEIGHTS_FILE), &extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_init_repeats_and_truncates() {
        assert_eq!(text_init_ids(&[1, 2], 5), vec![1, 2, 1, 2, 1]);
        assert_eq!(text_init_ids(&[1, 2, 3, 4, 5], 3), vec![1, 2, 3]);
    }

    #[test]
    fn config_round_trips_and_rejects_lora() {
        let p = Path::new("adapter_config.json");
        let c = PromptLearningConfig::prefix_tuning(4).with_prefix_projection(16);
        let back = PromptLearningConfig::from_json(p, &c.to_json()).unwrap();
        assert_eq!(back, c);
        let e = PromptLearningConfig::from_json(p, r#"{"peft_type": "LORA"}"#).unwrap_err();
        assert!(matches!(e, PeftError::WrongPeftType { .. }));
        let c = PromptLearningConfig::from_json(p, r#"{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 2, "num_transformer_submodules": 2, "task_type": "SEQ_2_SEQ_LM"}"#).unwrap();
        assert_eq!(c.stored_rows(), 4);
        let e = PromptLearningConfig::from_json(p, r#"{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 2, "num_transformer_submodules": 2, "task_type": "CAUSAL_LM"}"#).unwrap_err();
        assert!(matches!(e, PeftError::Unsupported { .. }), "{e}");
        let e = PromptLearningConfig::from_json(
            p,
            r#"{"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 2, "task_type": "SEQ_CLS"}"#,
        )
        .unwrap_err();
        assert!(matches!(e, PeftError::Unsupported { .. }), "{e}");
        let e = PromptLearningConfig::from_json(
            p,
            r#"{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 2, "task_type": "TOKEN_CLS"}"#,
        )
        .unwrap_err();
        assert!(matches!(e, PeftError::Unsupported { .. }), "{e}");
        let c = PromptLearningConfig::prompt_tuning(2).for_seq_cls();
        assert_eq!(PromptLearningConfig::from_json(p, &c.to_json()).unwrap(), c);
    }
}
