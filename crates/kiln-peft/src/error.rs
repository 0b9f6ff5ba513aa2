//! Typed errors: every one names the file, the adapter or the tensor key it is about.

use std::path::PathBuf;

/// Errors of kiln-peft: I/O, malformed configs and adapter files, adapters that do not fit the model.
#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    /// An I/O error reading or writing an adapter file.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory being read or written.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// An adapter config that is not valid JSON or does not deserialize into the config type.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The config file (`adapter_config.json`).
        path: PathBuf,
        /// The serde_json error (with line and column).
        #[source]
        source: serde_json::Error,
    },

    /// The config's `peft_type` is not one this loader handles.
    #[error("{path}: peft_type is `{found}`, expected `{expected}`")]
    WrongPeftType {
        /// The config file.
        path: PathBuf,
        /// The `peft_type` found in the file.
        found: String,
        /// The accepted value(s), e.g. `LORA` or `PROMPT_TUNING or PREFIX_TUNING`.
        expected: String,
    },

    /// A config field with an invalid value (e.g. `r: 0`, `num_virtual_tokens: 0`).
    #[error("{path}: field `{field}`: {msg}")]
    Config {
        /// The config file (`<LoraConfig>` for a config built in code).
        path: PathBuf,
        /// The offending config key (`<root>` when the file is not a JSON object).
        field: String,
        /// What is wrong with the value.
        msg: String,
    },

    /// A config option or file kind that peft supports but kiln does not (DoRA, pickle adapters, …).
    #[error("{path}: `{field}` is not supported by kiln: {msg}")]
    Unsupported {
        /// The config file, or the unsupported file itself.
        path: PathBuf,
        /// The unsupported config key (or file name, e.g. `adapter_model.bin`).
        field: String,
        /// Why it is rejected, with a hint where there is one.
        msg: String,
    },

    /// A pattern from the config (`target_modules`, `modules_to_save`, `layers_pattern`, `rank_pattern`, …)
    /// that is not a valid regular expression.
    #[error("invalid regular expression `{pattern}` in `{field}`: {msg}")]
    Regex {
        /// The config key the pattern came from (e.g. `target_modules`).
        field: String,
        /// The pattern as written in the config.
        pattern: String,
        /// The regex crate's error message.
        msg: String,
    },

    /// `target_modules` is unset and kiln has no default target list for the model type (peft's mapping).
    #[error("model type `{model_type}` has no default LoRA target modules; set `target_modules`")]
    NoDefaultTargets {
        /// The base model's `model_type` (as in its config.json).
        model_type: String,
    },

    /// `adapter` names the adapter (its `adapter_config.json`, and the base model it was made for) when the
    /// config came from a file.
    #[error("{adapter}target modules {targets} not found in the base model ({model_type}); its linear layers are e.g. {examples}")]
    NoTargetMatched {
        /// The `target_modules` setting, as a list or a backquoted regex.
        targets: String,
        /// The base model's `model_type` (as in its config.json).
        model_type: String,
        /// Up to six linear-layer paths of the base model, comma-separated.
        examples: String,
        /// Message prefix naming the config file, the adapter directory and the base model it was made for
        /// (ending in `": "`); empty when the config did not come from a file.
        adapter: String,
    },

    /// Adding or loading an adapter under a name that is already in use.
    #[error("adapter `{0}` already exists")]
    DuplicateAdapter(String),

    /// An adapter name that cannot be a single directory name (peft saves adapter `name` in `dir/name`).
    #[error("invalid adapter name `{name}`: {why}")]
    InvalidAdapterName {
        /// The rejected name.
        name: String,
        /// Why it is rejected (empty, contains `.`, a path separator or NUL).
        why: &'static str,
    },

    /// No adapter with the given name is attached.
    #[error("no adapter named `{name}` (have: {have})")]
    UnknownAdapter {
        /// The requested adapter name.
        name: String,
        /// The names of the adapters present, comma-separated.
        have: String,
    },

    /// A safetensors file that cannot be parsed or written.
    #[error("{path}: corrupt safetensors file: {msg}")]
    Safetensors {
        /// The safetensors file.
        path: PathBuf,
        /// The safetensors library's error (prefixed with the tensor key when it concerns one tensor).
        msg: String,
    },

    /// A weight tensor whose dtype is not a float type kiln reads.
    #[error("{path}: tensor `{key}` has dtype {dtype}, expected F32, F16, BF16 or F64")]
    Dtype {
        /// The safetensors file.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// The tensor's dtype as safetensors names it (e.g. `I64`).
        dtype: String,
    },

    /// A tensor for a module path the base model does not have.
    #[error("{path}: tensor `{key}` is for module `{module}`, which this base model does not have (an adapter for another model?)")]
    MissingModule {
        /// The safetensors file.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// The module path the key refers to (without `base_model.model.` and the tensor suffix).
        module: String,
    },

    /// A LoRA tensor for a linear layer of the model that the adapter config does not target.
    #[error(
        "{path}: tensor `{key}` is for module `{module}`, which the adapter config does not target"
    )]
    UntargetedModule {
        /// The safetensors file.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// The module path the key refers to.
        module: String,
    },

    /// A tensor whose shape differs from what the model and config imply (beyond a rank mismatch).
    #[error("{path}: tensor `{key}`: expected shape {expected:?}, found {found:?} (an adapter for another model?)")]
    ShapeMismatch {
        /// The safetensors file.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// Expected shape, in the file's (Hugging Face) layout (e.g. `[r, in_features]` for `lora_A`).
        expected: Vec<usize>,
        /// Shape found in the file.
        found: Vec<usize>,
    },

    /// A `lora_A` / `lora_B` tensor whose rank dimension differs from the config's `r` (or `rank_pattern`) for
    /// the module.
    #[error("{path}: tensor `{key}` has rank {found}, but the adapter config gives rank {expected} for this module")]
    RankMismatch {
        /// The safetensors file.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// Rank the config gives for this module.
        expected: usize,
        /// Rank of the tensor in the file.
        found: usize,
    },

    /// A tensor the model needs is absent from the file.
    #[error("{path}: missing tensor `{key}`")]
    MissingKey {
        /// The safetensors file.
        path: PathBuf,
        /// The key of the missing tensor.
        key: String,
    },

    /// A tensor kind kiln cannot load (DoRA magnitudes, embedding LoRA, extra prompt tensors, …).
    #[error("{path}: tensor `{key}` is a {kind}, which kiln does not support")]
    UnsupportedKey {
        /// The safetensors file.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// What kind of tensor it is, in words.
        kind: String,
    },
}

/// `Result` with [`PeftError`].
pub type Result<T, E = PeftError> = std::result::Result<T, E>;

impl PeftError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PeftError::Io {
            path: path.into(),
            source,
        }
    }
}
