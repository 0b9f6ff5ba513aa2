//! Typed errors: every one names the file and, where there is one, the key or field.

use std::path::PathBuf;

/// Errors of kiln-models; each names the file and, where there is one, the key or field.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required file (or a local directory / hub id) does not exist.
    #[error("{path}: file not found{hint}")]
    MissingFile {
        /// The missing file or path.
        path: PathBuf,
        /// Extra context appended to the message (e.g. ` (nor model.safetensors.index.json)`); may be empty.
        hint: String,
    },

    /// An I/O error other than "not found".
    #[error("{path}: {source}")]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A JSON file (config.json, tokenizer files, an index) that does not parse.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// The serde_json error (with line and column).
        #[source]
        source: serde_json::Error,
    },

    /// A config field that is missing or has an invalid value.
    #[error("{path}: field `{field}`: {msg}")]
    ConfigField {
        /// The config file.
        path: PathBuf,
        /// The config key (e.g. `hidden_size`).
        field: String,
        /// What is wrong with it.
        msg: String,
    },

    /// A `model_type` kiln has no implementation for (or not for the requested head).
    #[error("{path}: unsupported architecture `{model_type}` (kiln supports {supported})")]
    UnsupportedArchitecture {
        /// The config file.
        path: PathBuf,
        /// The config's `model_type`.
        model_type: String,
        /// The supported architectures, in words.
        supported: String,
    },

    /// A safetensors file whose header or data cannot be read.
    #[error("{path}: corrupt or truncated safetensors file: {msg}")]
    Safetensors {
        /// The safetensors file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },

    /// A checkpoint tensor whose shape does not match the model built from config.json.
    #[error("{path}: tensor `{key}`: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        /// The safetensors file.
        path: PathBuf,
        /// The tensor's key in the checkpoint.
        key: String,
        /// Shape the model expects (in the checkpoint's layout).
        expected: Vec<usize>,
        /// Shape found in the file.
        found: Vec<usize>,
    },

    /// A checkpoint tensor that is not floating-point (kiln reads F32, F16, BF16 and F64).
    #[error("{path}: tensor `{key}` has dtype {dtype}, expected a floating-point tensor")]
    Dtype {
        /// The safetensors file.
        path: PathBuf,
        /// The tensor's key in the checkpoint.
        key: String,
        /// The tensor's dtype (e.g. `I64`).
        dtype: String,
    },

    /// Parameters of the model that no checkpoint tensor provides (and that may not be left initialised).
    #[error("{path}: missing tensor(s): {}", keys.join(", "))]
    MissingKeys {
        /// The (first) checkpoint file.
        path: PathBuf,
        /// The model parameter paths that were not loaded.
        keys: Vec<String>,
    },

    /// A tensor that could not be converted or applied to the model.
    #[error("{path}: tensor `{key}`: {msg}")]
    Tensor {
        /// The safetensors file.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// The conversion error.
        msg: String,
    },

    /// The model's f32 parameters would not fit into the available memory (checked on CPU backends only).
    #[error("{path}: the model it describes needs {} for its parameters, more than the {} of memory available", human_bytes(*needed), human_bytes(*available))]
    TooLarge {
        /// The model's config.json.
        path: PathBuf,
        /// Bytes the parameters need as f32.
        needed: u64,
        /// Bytes of memory available.
        available: u64,
    },

    /// A tokenizer file that is missing pieces or cannot be parsed.
    #[error("{path}: tokenizer: {msg}")]
    Tokenizer {
        /// The tokenizer file (e.g. `tokenizer.json`).
        path: PathBuf,
        /// The tokenizers library's (or kiln's) error message.
        msg: String,
    },

    /// A Hugging Face Hub error (building the client, resolving or downloading a file).
    #[error("hub `{repo}` file `{file}`: {msg}")]
    Hub {
        /// The repository id (`owner/name`).
        repo: String,
        /// The file within the repository (empty when not about one file).
        file: String,
        /// The hub client's error message.
        msg: String,
    },

    /// A PyTorch pickle checkpoint (`pytorch_model.bin`), which kiln refuses to load.
    #[error("{path}: pickle checkpoints (`.bin`) are not loaded (they can run code); convert it to safetensors, e.g. with transformers' `save_pretrained(safe_serialization=True)`")]
    Pickle {
        /// The pickle file (`pytorch_model.bin` or its index).
        path: PathBuf,
    },

    /// Invalid generation settings (`num_beams` 0, `top_p` outside (0, 1], beam-search sampling, …).
    #[error("invalid generation settings: {0}")]
    Generation(String),

    /// Invalid input to a model call (empty batch or prompt, token ids outside the vocabulary, mismatched
    /// lengths, …).
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
