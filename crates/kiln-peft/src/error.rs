//! Typed errors: every one names the file, the adapter or the tensor key it is about.

use std::path::PathBuf;

/// Errors of kiln-peft: I/O, malformed configs and adapter files, adapters that do not fit the model.
#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{path}: peft_type is `{found}`, expected `{expected}`")]
    WrongPeftType {
        path: PathBuf,
        found: String,
        expected: String,
    },

    #[error("{path}: field `{field}`: {msg}")]
    Config {
        path: PathBuf,
        field: String,
        msg: String,
    },

    #[error("{path}: `{field}` is not supported by kiln: {msg}")]
    Unsupported {
        path: PathBuf,
        field: String,
        msg: String,
    },

    #[error("invalid regular expression `{pattern}` in `{field}`: {msg}")]
    Regex {
        field: String,
        pattern: String,
        msg: String,
    },

    #[error("model type `{model_type}` has no default LoRA target modules; set `target_modules`")]
    NoDefaultTargets { model_type: String },

    /// `adapter` names the adapter (its `adapter_config.json`, and the base model it was made for) when the
    /// config came from a file.
    #[error("{adapter}target modules {targets} not found in the base model ({model_type}); its linear layers are e.g. {examples}")]
    NoTargetMatched {
        targets: String,
        model_type: String,
        examples: String,
        adapter: String,
    },

    #[error("adapter `{0}` already exists")]
    DuplicateAdapter(String),

    /// An adapter name that cannot be a single directory name (peft saves adapter `name` in `dir/name`).
    #[error("invalid adapter name `{name}`: {why}")]
    InvalidAdapterName { name: String, why: &'static str },

    #[error("no adapter named `{name}` (have: {have})")]
    UnknownAdapter { name: String, have: String },

    #[error("{path}: corrupt safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },

    #[error("{path}: tensor `{key}` has dtype {dtype}, expected F32, F16, BF16 or F64")]
    Dtype {
        path: PathBuf,
        key: String,
        dtype: String,
    },

    #[error("{path}: tensor `{key}` is for module `{module}`, which this base model does not have (an adapter for another model?)")]
    MissingModule {
        path: PathBuf,
        key: String,
        module: String,
    },

    #[error(
        "{path}: tensor `{key}` is for module `{module}`, which the adapter config does not target"
    )]
    UntargetedModule {
        path: PathBuf,
        key: String,
        module: String,
    },

    #[error("{path}: tensor `{key}`: expected shape {expected:?}, found {found:?} (an adapter for another model?)")]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("{path}: tensor `{key}` has rank {found}, but the adapter config gives rank {expected} for this module")]
    RankMismatch {
        path: PathBuf,
        key: String,
        expected: usize,
        found: usize,
    },

    #[error("{path}: missing tensor `{key}`")]
    MissingKey { path: PathBuf, key: String },

    #[error("{path}: tensor `{key}` is a {kind}, which kiln does not support")]
    UnsupportedKey {
        path: PathBuf,
        key: String,
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
