//! Typed errors: every one names the file and, where there is one, the key or field.

use std::path::PathBuf;

/// Errors of kiln-models; each names the file and, where there is one, the key or field.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: file not found{hint}")]
    MissingFile { path: PathBuf, hint: String },

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

    #[error("{path}: field `{field}`: {msg}")]
    ConfigField {
        path: PathBuf,
        field: String,
        msg: String,
    },

    #[error("{path}: unsupported architecture `{model_type}` (kiln supports {supported})")]
    UnsupportedArchitecture {
        path: PathBuf,
        model_type: String,
        supported: String,
    },

    #[error("{path}: corrupt or truncated safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },

    #[error("{path}: tensor `{key}`: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("{path}: tensor `{key}` has dtype {dtype}, expected a floating-point tensor")]
    Dtype {
        path: PathBuf,
        key: String,
        dtype: String,
    },

    #[error("{path}: missing tensor(s): {}", keys.join(", "))]
    MissingKeys { path: PathBuf, keys: Vec<String> },

    #[error("{path}: tensor `{key}`: {msg}")]
    Tensor {
        path: PathBuf,
        key: String,
        msg: String,
    },

    #[error("{path}: the model it describes needs {} for its parameters, more than the {} of memory available", human_bytes(*needed), human_bytes(*available))]
    TooLarge {
        path: PathBuf,
        needed: u64,
        available: u64,
    },

    #[error("{path}: tokenizer: {msg}")]
    Tokenizer { path: PathBuf, msg: String },

    #[error("hub `{repo}` file `{file}`: {msg}")]
    Hub {
        repo: String,
        file: String,
        msg: String,
    },

    #[error("{path}: pickle checkpoints (`.bin`) are not loaded (they can run code); convert it to safetensors, e.g. with transformers' `save_pretrained(safe_serialization=True)`")]
    Pickle { path: PathBuf },

    #[error("invalid generation settings: {0}")]
    Generation(String),

    #[error("invalid input: {0}")]
    Input(String),
}

/// `1.23 GB`-style sizes for messages (decimal units, as `free -h --si` and disk tools print them).
pub fn human_bytes(b: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", units[u])
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::MissingFile {
                path,
                hint: String::new(),
            }
        } else {
            Error::Io { path, source }
        }
    }

    pub(crate) fn field(path: impl Into<PathBuf>, field: &str, msg: impl Into<String>) -> Self {
        Error::ConfigField {
            path: path.into(),
            field: field.to_string(),
            msg: msg.into(),
        }
    }
}
