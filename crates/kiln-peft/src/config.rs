//! `LoraConfig`, as peft's (0.21), read from and written to `adapter_config.json`; and peft's rules for
//! which modules an adapter targets.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::error::{PeftError, Result};
use crate::linear::LoraInit;

/// peft's `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`, for the architectures kiln implements (and those
/// being added). Used when `target_modules` is null.
pub fn default_target_modules(model_type: &str) -> Option<&'static [&'static str]> {
    Some(match model_type {
        "t5" | "mt5" => &["q", "v"],
        "bart" => &["q_proj", "v_proj"],
        "gpt2" => &["c_attn"],
        "opt" => &["q_proj", "v_proj"],
        "bert" | "roberta" | "xlm-roberta" | "electra" => &["query", "value"],
        "llama" | "mistral" | "qwen2" | "qwen3" | "gemma" | "gemma2" | "gpt_neo" | "gptj" => {
            &["q_proj", "v_proj"]
        }
        _ => return None,
    })
}

/// The heads peft's `PeftModelFor…` classes add to `modules_to_save` for a `task_type`.
pub fn task_modules_to_save(task_type: Option<&str>) -> &'static [&'static str] {
    match task_type {
        Some("SEQ_CLS") | Some("TOKEN_CLS") => &["classifier", "score"],
        Some("QUESTION_ANS") => &["qa_outputs"],
        _ => &[],
    }
}

/// `target_modules` / `exclude_modules` / `layers_pattern`: a list of names (each matching a module path exactly or
/// as its last dotted components) or one regular expression (matching the whole path).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Targets {
    /// Module names, each matching a full module path or its trailing dotted components (a JSON list).
    List(Vec<String>),
    /// One regular expression matched against the whole module path (a JSON string), or `"all-linear"`.
    Regex(String),
}

impl Targets {
    /// peft's shorthand for every linear layer but the output head.
    pub fn is_all_linear(&self) -> bool {
        matches!(self, Targets::Regex(s) if s.eq_ignore_ascii_case("all-linear"))
    }

    fn describe(&self) -> String {
        match self {
            Targets::List(v) => format!("{v:?}"),
            Targets::Regex(s) => format!("`{s}`"),
        }
    }
}

/// `layers_to_transform`: one layer index or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerIndices {
    /// A single layer index (a JSON number).
    One(usize),
    /// Several layer indices (a JSON list); an empty list means no restriction.
    List(Vec<usize>),
}

/// `bias`: which biases train (and are saved) along with the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bias {
    /// No bias trains (peft's `"none"`, the default).
    #[default]
    None,
    /// Every bias of the model (linear layers' and LayerNorms').
    All,
    /// The biases of the layers LoRA is attached to.
    LoraOnly,
}

/// `init_lora_weights`: `true`, `false` or a method name (kiln initialises `"gaussian"`; adapters made with other
/// methods load only when they leave the base weights alone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InitLoraWeights {
    /// `true`: kaiming-uniform A and zero B (a no-op branch at start); `false`: both random (not a no-op).
    Bool(bool),
    /// A method name; kiln implements only `"gaussian"` (A ~ N(0, 1/r), B zero).
    Method(String),
}

impl Default for InitLoraWeights {
    fn default() -> Self {
        InitLoraWeights::Bool(true)
    }
}

/// LoRA hyper-parameters, named and defaulted as in peft's `LoraConfig`; (de)serialises `adapter_config.json`.
///
/// Keys kiln does not model are kept in [`Self::other`] (and written back); ones that would change what the
/// adapter computes (DoRA, `target_parameters`, …) are rejected by [`Self::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoraConfig {
    /// peft's `peft_type` (`"LORA"`).
    pub peft_type: String,
    /// peft's `task_type` (`CAUSAL_LM`, `SEQ_2_SEQ_LM`, `SEQ_CLS`, …); selects the heads in `modules_to_save`.
    pub task_type: Option<String>,
    /// The model the adapter was trained on (informational).
    pub base_model_name_or_path: Option<String>,
    /// The base model's hub revision (informational).
    pub revision: Option<String>,
    /// `true` in saved adapters; a model loaded with it trains nothing.
    pub inference_mode: bool,
    /// LoRA rank.
    pub r: usize,
    /// LoRA alpha: the branch is scaled by `alpha / r` (`alpha / sqrt(r)` with rsLoRA).
    #[serde(serialize_with = "number")]
    pub lora_alpha: f64,
    /// Dropout probability on the LoRA branch's input.
    pub lora_dropout: f64,
    /// `None`: peft's default for the model type ([`default_target_modules`]).
    pub target_modules: Option<Targets>,
    /// Modules never targeted, even when `target_modules` matches them.
    pub exclude_modules: Option<Targets>,
    /// Whether the targeted layers store `[in, out]` (GPT-2's `Conv1D`); set on injection as peft does. kiln's
    /// layers are always `[in, out]` in memory; this only records the Hugging Face layout.
    pub fan_in_fan_out: bool,
    /// Which biases train along with the adapter.
    pub bias: Bias,
    /// rsLoRA scaling (`alpha / sqrt(r)`).
    pub use_rslora: bool,
    /// Modules trained in full and saved with the adapter (e.g. a classifier head).
    pub modules_to_save: Option<Vec<String>>,
    /// How LoRA A and B are initialised (B at zero by default: a fresh adapter changes nothing).
    pub init_lora_weights: InitLoraWeights,
    /// Only these layer indices are targeted.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list that `layers_to_transform` indexes (e.g. `h`, `layer`).
    pub layers_pattern: Option<Targets>,
    /// Per-module rank overrides: regex key → r (matched as `(.*\.)?(key)$`; the first key in sorted order that
    /// matches wins, as in a config that went through a JSON file).
    #[serde(deserialize_with = "null_as_default")]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alpha overrides, as `rank_pattern`.
    #[serde(serialize_with = "number_map", deserialize_with = "null_as_default")]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// DoRA (not implemented: a config with it set is rejected).
    pub use_dora: bool,
    /// A bias on LoRA B (not implemented: a config with it set is rejected).
    pub lora_bias: bool,
    /// Keys kiln does not interpret (written back as read).
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `null` reads as the default (old configs write `"rank_pattern": null`).
fn null_as_default<'de, D: serde::Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Integral floats as JSON integers (peft types `lora_alpha` as int).
fn number<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        s.serialize_i64(*x as i64)
    } else {
        s.serialize_f64(*x)
    }
}

fn number_map<S: Serializer>(m: &BTreeMap<String, f64>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    struct N(f64);
    impl Serialize for N {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            number(&self.0, s)
        }
    }
    let mut map = s.serialize_map(Some(m.len()))?;
    for (k, v) in m {
        map.serialize_entry(k, &N(*v))?;
    }
    map.end()
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            peft_type: "LORA".into(),
            task_type: None,
            base_model_name_or_path: None,
            revision: None,
            inference_mode: false,
            r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            target_modules: None,
            exclude_modules: None,
            fan_in_fan_out: false,
            bias: Bias::None,
            use_rslora: false,
            modules_to_save: None,
            init_lora_weights: InitLoraWeights::default(),
            layers_to_transform: None,
            layers_pattern: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            use_dora: false,
            lora_bias: false,
            other: BTreeMap::new(),
        }
    }
}

/// Keys of a peft `adapter_config.json` that change what a LoRA adapter computes and that kiln does not implement:
/// reading a config where one of them is set (not null / false / empty) is an error.
const UNSUPPORTED_KEYS: &[&str] = &[
    "target_parameters",
    "layer_replication",
    "trainable_token_indices",
    "alora_invocation_tokens",
    "use_qalora",
    "use_bdlora",
    "velora_config",
    "monteclora_config",
    "kasa_config",
    "arrow_config",
    "megatron_config",
];

/// Initialisations that rewrite the base weights (the adapter is only valid on the rewritten base).
const BASE_MUTATING_INITS: &[&str] = &["pissa", "olora", "corda", "loftq", "lora_ga", "mica"];

impl LoraConfig {
    /// A config with rank `r` and `lora_alpha`, other fields at peft's defaults.
    pub fn new(r: usize, lora_alpha: f64) -> Self {
        Self {
            r,
            lora_alpha,
            ..Default::default()
        }
    }

    /// Target the modules with these names (a name matches a module path exactly or as its last dotted components).
    pub fn with_target_modules<S: Into<String>>(
        mut self,
        names: impl IntoIterator<Item = S>,
    ) -> Self {
        self.target_modules = Some(Targets::List(names.into_iter().map(Into::into).collect()));
        self
    }

    /// A regex (full match on the module path), or `"all-linear"`.
    pub fn with_target_regex(mut self, pattern: &str) -> Self {
        self.target_modules = Some(Targets::Regex(pattern.into()));
        self
    }

    /// Set peft's `task_type` (`CAUSAL_LM`, `SEQ_2_SEQ_LM`, `SEQ_CLS`, …).
    pub fn with_task_type(mut self, task_type: &str) -> Self {
        self.task_type = Some(task_type.into());
        self
    }

    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA (as peft) for the config's own `r` and `lora_alpha`.
    pub fn scale(&self) -> f64 {
        self.scale_for(self.r, self.lora_alpha)
    }

    /// The scale for a module whose rank and alpha are `r`, `alpha` (after patterns).
    pub fn scale_for(&self, r: usize, alpha: f64) -> f64 {
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }

    /// Parse `adapter_config.json` text (unknown keys are kept in [`Self::other`]) and [`Self::validate`] it.
    pub fn from_json(path: &Path, text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|source| PeftError::Json {
            path: path.into(),
            source,
        })?;
        let found = v
            .get("peft_type")
            .and_then(Value::as_str)
            .unwrap_or("<missing>");
        if found != "LORA" {
            return Err(PeftError::WrongPeftType {
                path: path.into(),
                found: found.into(),
                expected: "LORA".into(),
            });
        }
        let cfg: LoraConfig = Self::deserialize(v).map_err(|source| PeftError::Json {
            path: path.into(),
            source,
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Read `adapter_config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| PeftError::io(path, e))?;
        Self::from_json(path, &text)
    }

    /// `adapter_config.json` text as peft writes it: keys sorted, two-space indent.
    pub fn to_json(&self) -> String {
        let mut v = serde_json::to_value(self).expect("config serialises");
        if let Value::Object(m) = &mut v {
            m.remove("peft_version"); // not written by peft; peft fills it in when it reads the file
        }
        let mut s = serde_json::to_string_pretty(&sorted(v)).expect("config serialises");
        s.push('\n');
        s
    }

    /// Write `adapter_config.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_json()).map_err(|e| PeftError::io(path, e))
    }

    /// Reject what kiln cannot compute faithfully (DoRA, LoRA biases, base-rewriting initialisations, …) and values
    /// peft would reject. `path` names the file in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let unsupported = |field: &str, msg: &str| {
            Err(PeftError::Unsupported {
                path: path.into(),
                field: field.into(),
                msg: msg.into(),
            })
        };
        let bad = |field: &str, msg: String| {
            Err(PeftError::Config {
                path: path.into(),
                field: field.into(),
                msg,
            })
        };
        if self.peft_type != "LORA" {
            return Err(PeftError::WrongPeftType {
                path: path.into(),
                found: self.peft_type.clone(),
                expected: "LORA".into(),
            });
        }
        if self.r == 0 {
            return bad("r", "must be a positive integer".into());
        }
        if let Some((k, _)) = self.rank_pattern.iter().find(|(_, &r)| r == 0) {
            return bad("rank_pattern", format!("rank of `{k}` must be positive"));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return bad(
                "lora_dropout",
                format!("{} is not a probability in [0, 1)", self.lora_dropout),
            );
        }
        if self.use_dora {
            return unsupported(
                "use_dora",
                "DoRA (weight-decomposed LoRA) is not implemented",
            );
        }
        if self.lora_bias {
            return unsupported("lora_bias", "a bias on lora_B is not implemented");
        }
        if let InitLoraWeights::Method(m) = &self.init_lora_weights {
            let m = m.to_lowercase();
            if BASE_MUTATING_INITS.iter().any(|p| m.starts_with(p)) {
                return unsupported(
                    "init_lora_weights",
                    &format!(
                        "`{m}` rewrites the base weights; convert the adapter to plain LoRA first"
                    ),
                );
            }
        }
        for key in UNSUPPORTED_KEYS {
            let set = match self.other.get(*key) {
                None | Some(Value::Null) | Some(Value::Bool(false)) => false,
                Some(Value::Array(a)) => !a.is_empty(),
                Some(Value::Object(o)) => !o.is_empty(),
                Some(_) => true,
            };
            if set {
                return unsupported(key, "this LoRA variant is not implemented");
            }
        }
        if matches!(self.target_modules, Some(Targets::Regex(_))) {
            if self.layers_to_transform.is_some() {
                return bad(
                    "layers_to_transform",
                    "cannot be used when `target_modules` is a regex".into(),
                );
            }
            if self.layers_pattern.is_some() {
                return bad(
                    "layers_pattern",
                    "cannot be used when `target_modules` is a regex".into(),
                );
            }
        }
        if self.layers_pattern.is_some() && self.layers_to_transform.is_none() {
            return bad("layers_pattern", "needs `layers_to_transform`".into());
        }
        Ok(())
    }

    /// How fresh LoRA weights are initialised; an error for methods kiln does not implement.
    pub fn init(&self) -> Result<LoraInit> {
        match &self.init_lora_weights {
            InitLoraWeights::Bool(true) => Ok(LoraInit::Kaiming),
            InitLoraWeights::Bool(false) => Ok(LoraInit::Random),
            InitLoraWeights::Method(m) if m.eq_ignore_ascii_case("gaussian") => {
                Ok(LoraInit::Gaussian)
            }
            InitLoraWeights::Method(m) => Err(PeftError::Unsupported {
                path: "<LoraConfig>".into(),
                field: "init_lora_weights".into(),
                msg: format!(
                    "initialisation `{m}` is not implemented (use true, false or \"gaussian\")"
                ),
            }),
        }
    }

    /// `modules_to_save` with the heads peft adds for the task type.
    pub fn resolved_modules_to_save(&self) -> Vec<String> {
        let mut v = self.modules_to_save.clone().unwrap_or_default();
        for m in task_modules_to_save(self.task_type.as_deref()) {
            if !v.iter().any(|x| x == m) {
                v.push(m.to_string());
            }
        }
        v
    }
}

/// Sort object keys recursively (as Python's `json.dumps(sort_keys=True)`).
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> =
                m.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        v => v,
    }
}

/// A Python `re` pattern for Rust's `regex` (the common subset is the same syntax).
fn regex(field: &str, pattern: &str, anchored: &str) -> Result<regex::Regex> {
    regex::Regex::new(anchored).map_err(|e| PeftError::Regex {
        field: field.into(),
        pattern: pattern.into(),
        msg: e.to_string(),
    })
}

/// `re.fullmatch(pattern, key)`.
fn fullmatch(field: &str, pattern: &str) -> Result<regex::Regex> {
    regex(field, pattern, &format!("^(?:{pattern})$"))
}

/// A list entry matches the path itself or its last dotted components.
fn list_match(names: &[String], key: &str) -> bool {
    names.iter().any(|n| {
        key == n
            || (key.len() > n.len()
                && key.ends_with(n.as_str())
                && key[..key.len() - n.len()].ends_with('.'))
    })
}

enum Compiled {
    List(Vec<String>),
    Regex(regex::Regex),
}

impl Compiled {
    fn new(field: &str, t: &Targets) -> Result<Self> {
        Ok(match t {
            Targets::List(v) => Compiled::List(v.clone()),
            Targets::Regex(p) => Compiled::Regex(fullmatch(field, p)?),
        })
    }

    fn matches(&self, key: &str) -> bool {
        match self {
            Compiled::List(v) => list_match(v, key),
            Compiled::Regex(r) => r.is_match(key),
        }
    }
}

/// Which modules a [`LoraConfig`] targets on one model, with its patterns compiled: peft's
/// `check_target_module_exists`, `_maybe_include_all_linear_layers` and `get_pattern_key`.
pub struct TargetMatcher {
    targets: Compiled,
    targets_desc: String,
    exclude: Option<Compiled>,
    modules_to_save: Vec<regex::Regex>,
    layers: Option<(Vec<usize>, Vec<regex::Regex>)>,
    rank_pattern: Vec<(regex::Regex, usize)>,
    alpha_pattern: Vec<(regex::Regex, f64)>,
    r: usize,
    alpha: f64,
}

impl TargetMatcher {
    /// `linears`: the model's linear module paths (for `"all-linear"`); `output_layers`: the head(s) `"all-linear"`
    /// leaves out.
    pub fn new(
        cfg: &LoraConfig,
        model_type: &str,
        linears: &[String],
        output_layers: &[String],
    ) -> Result<Self> {
        let targets = match &cfg.target_modules {
            Some(t) if t.is_all_linear() => Targets::List(
                linears
                    .iter()
                    .filter(|p| !output_layers.contains(p))
                    .cloned()
                    .collect(),
            ),
            Some(t) => t.clone(),
            None => Targets::List(
                default_target_modules(model_type)
                    .ok_or_else(|| PeftError::NoDefaultTargets {
                        model_type: model_type.into(),
                    })?
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            ),
        };
        let targets_desc = match &cfg.target_modules {
            Some(t) => t.describe(),
            None => targets.describe(),
        };
        let exclude = cfg
            .exclude_modules
            .as_ref()
            .map(|t| Compiled::new("exclude_modules", t))
            .transpose()?;
        let modules_to_save = cfg
            .resolved_modules_to_save()
            .iter()
            .map(|m| {
                regex(
                    "modules_to_save",
                    m,
                    &format!(r"^(?:^|.*\.)(?:{m})(?:$|\..*)"),
                )
            })
            .collect::<Result<_>>()?;
        let layers = match (&cfg.layers_to_transform, &targets) {
            (Some(idx), Targets::List(_)) => {
                let idx = match idx {
                    LayerIndices::One(i) => vec![*i],
                    LayerIndices::List(v) => v.clone(),
                };
                let pats = match &cfg.layers_pattern {
                    None => vec![],
                    Some(Targets::Regex(p)) if p.is_empty() => vec![],
                    Some(Targets::Regex(p)) => vec![p.clone()],
                    Some(Targets::List(v)) => v.clone(),
                };
                let res = if pats.is_empty() {
                    vec![regex(
                        "layers_to_transform",
                        "",
                        r"^.*?\.[^.]*\.(?P<idx>\d+)\.",
                    )?]
                } else {
                    pats.iter()
                        .map(|p| {
                            regex(
                                "layers_pattern",
                                p,
                                &format!(r"^(?:^|.*?\.)(?:{p})\.(?P<idx>\d+)\."),
                            )
                        })
                        .collect::<Result<_>>()?
                };
                // peft: an empty list means "no restriction".
                (!idx.is_empty()).then_some((idx, res))
            }
            _ => None,
        };
        let pattern = |field: &str, k: &str| regex(field, k, &format!(r"^(.*\.)?(?:{k})$"));
        let rank_pattern = cfg
            .rank_pattern
            .iter()
            .map(|(k, &r)| Ok((pattern("rank_pattern", k)?, r)))
            .collect::<Result<_>>()?;
        let alpha_pattern = cfg
            .alpha_pattern
            .iter()
            .map(|(k, &a)| Ok((pattern("alpha_pattern", k)?, a)))
            .collect::<Result<_>>()?;
        Ok(Self {
            targets: Compiled::new("target_modules", &targets)?,
            targets_desc,
            exclude,
            modules_to_save,
            layers,
            rank_pattern,
            alpha_pattern,
            r: cfg.r,
            alpha: cfg.lora_alpha,
        })
    }

    /// Whether LoRA goes on the module at `path` (peft's `check_target_module_exists`).
    pub fn is_target(&self, path: &str) -> bool {
        if self.exclude.as_ref().is_some_and(|e| e.matches(path)) {
            return false;
        }
        if self.modules_to_save.iter().any(|r| r.is_match(path)) {
            return false;
        }
        if !self.targets.matches(path) {
            return false;
        }
        match &self.layers {
            None => true,
            Some((idx, res)) => {
                let layer = res
                    .iter()
                    .find_map(|r| r.captures(path))
                    .and_then(|c| c["idx"].parse::<usize>().ok());
                layer.is_some_and(|l| idx.contains(&l))
            }
        }
    }

    /// `(r, lora_alpha)` for the module at `path` after `rank_pattern` / `alpha_pattern`.
    pub fn rank_alpha(&self, path: &str) -> (usize, f64) {
        let r = self
            .rank_pattern
            .iter()
            .find(|(re, _)| re.is_match(path))
            .map_or(self.r, |(_, r)| *r);
        let a = self
            .alpha_pattern
            .iter()
            .find(|(re, _)| re.is_match(path))
            .map_or(self.alpha, |(_, a)| *a);
        (r, a)
    }

    /// The configured targets, for messages.
    pub fn describe(&self) -> &str {
        &self.targets_desc
    }
}

/// peft's `modules_to_save` rule: a module is saved (and trained) when its path ends with one of the names
/// (a plain suffix test, as `key.endswith(name)`).
pub fn is_module_to_save(names: &[String], module_path: &str) -> bool {
    names
        .iter()
        .any(|n| !n.is_empty() && module_path.ends_with(n.as_str()))
}

/// Every prefix module path of a parameter path `a.b.c.weight`: `a`, `a.b`, `a.b.c`.
pub(crate) fn module_prefixes(param_path: &str) -> impl Iterator<Item = &str> {
    param_path
        .match_indices('.')
        .map(move |(i, _)| &param_path[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: [&str; 10] = [
        "model.decoder.layers.0.self_attn.q_proj",
        "model.decoder.layers.1.self_attn.q_proj",
        "model.decoder.layers.11.fc1",
        "transformer.h.0.attn.c_attn",
        "bert.encoder.layer.0.attention.self.query",
        "classifier",
        "bert.pooler.dense",
        "xq_proj",
        "encoder.block.0.layer.0.SelfAttention.q",
        "decoder.block.1.layer.1.EncDecAttention.q",
    ];

    fn list(v: &[&str]) -> Option<Targets> {
        Some(Targets::List(v.iter().map(|s| s.to_string()).collect()))
    }

    fn re(s: &str) -> Option<Targets> {
        Some(Targets::Regex(s.into()))
    }

    fn matches(cfg: LoraConfig) -> Vec<u8> {
        let m = TargetMatcher::new(&cfg, "opt", &[], &[]).unwrap();
        KEYS.iter().map(|k| u8::from(m.is_target(k))).collect()
    }

    /// Expected values printed by peft 0.21.2's `check_target_module_exists` on the same keys.
    #[test]
    fn target_matching_follows_peft() {
        let base = LoraConfig::default;
        let c = LoraConfig {
            target_modules: list(&["q_proj", "c_attn", "query", "q"]),
            ..base()
        };
        assert_eq!(matches(c), [1, 1, 0, 1, 1, 0, 0, 0, 1, 1]);
        let c = LoraConfig {
            target_modules: re(r".*decoder.*(SelfAttention|EncDecAttention)\.q"),
            ..base()
        };
        assert_eq!(matches(c), [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let c = LoraConfig {
            target_modules: re(r".*\.(q_proj|fc1)"),
            ..base()
        };
        assert_eq!(matches(c), [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]);
        let c = LoraConfig {
            target_modules: list(&["q_proj", "fc1", "dense"]),
            exclude_modules: list(&["layers.1.self_attn.q_proj", "pooler.dense"]),
            ..base()
        };
        assert_eq!(matches(c), [1, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        let c = LoraConfig {
            target_modules: list(&["q_proj", "fc1"]),
            exclude_modules: re(r".*layers\.0\..*"),
            ..base()
        };
        assert_eq!(matches(c), [0, 1, 1, 0, 0, 0, 0, 0, 0, 0]);
        let c = LoraConfig {
            target_modules: list(&["q_proj", "fc1", "c_attn", "q"]),
            layers_to_transform: Some(LayerIndices::List(vec![1, 11])),
            ..base()
        };
        assert_eq!(matches(c), [0, 1, 1, 0, 0, 0, 0, 0, 0, 1]);
        let c = LoraConfig {
            target_modules: list(&["q_proj", "fc1", "q"]),
            layers_to_transform: Some(LayerIndices::One(1)),
            layers_pattern: re("block"),
            ..base()
        };
        assert_eq!(matches(c), [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let c = LoraConfig {
            target_modules: list(&["classifier", "dense", "q_proj"]),
            modules_to_save: Some(vec!["classifier".into(), "pooler".into()]),
            ..base()
        };
        assert_eq!(matches(c), [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        // Default targets by model type; none for an unknown type.
        let m = TargetMatcher::new(&base(), "gpt2", &[], &[]).unwrap();
        assert!(
            m.is_target("transformer.h.3.attn.c_attn")
                && !m.is_target("transformer.h.3.attn.c_proj")
        );
        assert!(matches!(
            TargetMatcher::new(&base(), "mamba", &[], &[]),
            Err(PeftError::NoDefaultTargets { .. })
        ));
        // all-linear: every linear but the output layers.
        let lin = [
            "a.q".to_string(),
            "a.k".to_string(),
            "classifier".to_string(),
        ];
        let c = LoraConfig {
            target_modules: re("ALL-LINEAR"),
            ..base()
        };
        let m = TargetMatcher::new(&c, "bert", &lin, &["classifier".to_string()]).unwrap();
        assert!(m.is_target("a.q") && m.is_target("a.k") && !m.is_target("classifier"));
        // A bad regex is a typed error naming the field.
        let c = LoraConfig {
            target_modules: re("(unclosed"),
            ..base()
        };
        assert!(
            matches!(TargetMatcher::new(&c, "opt", &[], &[]), Err(PeftError::Regex { field, .. }) if field == "target_modules")
        );
    }

    /// peft's `get_pattern_key` (`(.*\.)?(key)$`, first key in order wins).
    #[test]
    fn rank_and_alpha_patterns_follow_peft() {
        let c = LoraConfig {
            r: 4,
            lora_alpha: 8.0,
            target_modules: list(&["q_proj", "fc1"]),
            rank_pattern: [
                ("layers.1.self_attn.q_proj".to_string(), 2),
                ("q_proj".to_string(), 16),
            ]
            .into(),
            alpha_pattern: [
                ("fc.".to_string(), 32.0),
                ("^model.decoder.layers.0.self_attn.q_proj".to_string(), 1.0),
            ]
            .into(),
            ..Default::default()
        };
        let m = TargetMatcher::new(&c, "opt", &[], &[]).unwrap();
        assert_eq!(m.rank_alpha(KEYS[0]), (16, 1.0));
        assert_eq!(m.rank_alpha(KEYS[1]), (2, 8.0));
        assert_eq!(m.rank_alpha(KEYS[2]), (4, 32.0));
        assert_eq!(m.rank_alpha("xelf_attn.q_proj.y"), (4, 8.0));
    }

    #[test]
    fn config_json_round_trips_and_ignores_unknown_keys() {
        let text = r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "task_type": "CAUSAL_LM",
            "fan_in_fan_out": true, "some_future_key": {"x": 1}, "rank_pattern": null, "peft_version": "0.21.2",
            "init_lora_weights": "gaussian", "layers_to_transform": 3, "use_dora": false, "target_parameters": null}"#;
        let c = LoraConfig::from_json(Path::new("a.json"), text).unwrap();
        assert_eq!((c.r, c.lora_alpha, c.fan_in_fan_out), (4, 8.0, true));
        assert_eq!(c.target_modules, list(&["c_attn"]));
        assert_eq!(c.layers_to_transform, Some(LayerIndices::One(3)));
        assert_eq!(c.init().unwrap(), LoraInit::Gaussian);
        assert_eq!(c.other["some_future_key"], serde_json::json!({"x": 1}));
        let out = c.to_json();
        assert!(
            out.contains("\"lora_alpha\": 8,") && !out.contains("peft_version"),
            "{out}"
        );
        let keys: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("  \""))
            .map(|l| l.split('"').nth(1).unwrap())
            .collect();
        let mut sorted_keys = keys.clone();
        sorted_keys.sort();
        assert_eq!(keys, sorted_keys, "keys sorted as peft writes them");
        let back = LoraConfig::from_json(Path::new("b.json"), &out).unwrap();
        let mut c2 = c.clone();
        c2.other.remove("peft_version");
        assert_eq!(back, c2);
        // Minimal valid config.
        let c = LoraConfig::from_json(
            Path::new("m.json"),
            r#"{"peft_type": "LORA", "target_modules": ["q"]}"#,
        )
        .unwrap();
        assert_eq!(
            (c.r, c.lora_alpha, c.lora_dropout, c.bias),
            (8, 8.0, 0.0, Bias::None)
        );
    }

    #[test]
    fn config_errors_name_the_problem() {
        let p = Path::new("adapter_config.json");
        let e = LoraConfig::from_json(
            p,
            r#"{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 8}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&e, PeftError::WrongPeftType { found, .. } if found == "PROMPT_TUNING"),
            "{e}"
        );
        let e = LoraConfig::from_json(p, r#"{"peft_type": "LORA", "use_dora": true}"#).unwrap_err();
        assert!(
            matches!(&e, PeftError::Unsupported { field, .. } if field == "use_dora"),
            "{e}"
        );
        let e = LoraConfig::from_json(
            p,
            r#"{"peft_type": "LORA", "target_parameters": ["experts.w"]}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&e, PeftError::Unsupported { field, .. } if field == "target_parameters"),
            "{e}"
        );
        let e = LoraConfig::from_json(
            p,
            r#"{"peft_type": "LORA", "init_lora_weights": "pissa_niter_4"}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&e, PeftError::Unsupported { field, .. } if field == "init_lora_weights"),
            "{e}"
        );
        let e = LoraConfig::from_json(p, r#"{"peft_type": "LORA", "r": 0}"#).unwrap_err();
        assert!(
            matches!(&e, PeftError::Config { field, .. } if field == "r"),
            "{e}"
        );
        let e = LoraConfig::from_json(
            p,
            r#"{"peft_type": "LORA", "target_modules": ".*q", "layers_to_transform": [0]}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&e, PeftError::Config { field, .. } if field == "layers_to_transform"),
            "{e}"
        );
        let e = LoraConfig::from_json(p, r#"{"peft_type": "LORA", "r": "four"}"#).unwrap_err();
        assert!(matches!(&e, PeftError::Json { .. }), "{e}");
    }
}
