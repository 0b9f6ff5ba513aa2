//! Errors. Malformed input always names the file and the line (text files) or row (parquet).

use std::fmt;
use std::path::PathBuf;

/// Where in a file a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Loc {
    /// The file as a whole (empty, unreadable parquet footer, header without a required column).
    File,
    /// A 1-based line of a text file (for CSV: the line the record starts on).
    Line(usize),
    /// A 0-based row index of a parquet file.
    Row(usize),
}

/// One malformed row (or file): what [`OnError::Skip`](crate::OnError::Skip) records and
/// [`OnError::Fail`](crate::OnError::Fail) returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// The file the row is in.
    pub file: PathBuf,
    /// Where in the file.
    pub loc: Loc,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.loc {
            Loc::File => write!(f, "{}: {}", self.file.display(), self.reason),
            Loc::Line(l) => write!(f, "{}:{l}: {}", self.file.display(), self.reason),
            Loc::Row(r) => write!(f, "{}: row {r}: {}", self.file.display(), self.reason),
        }
    }
}

/// Errors of kiln-data: malformed data (naming file and line or row), I/O, hub and tokenizer errors, bad options.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed row or file, with [`OnError::Fail`](crate::OnError::Fail).
    #[error("{0}")]
    Malformed(RowError),

    /// An I/O error reading a local data file.
    #[error("{path}: {source}")]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// Hub access and tokenizer errors.
    #[error(transparent)]
    Model(#[from] kiln_models::Error),

    /// No file for the split in a directory or hub repository.
    #[error("{dataset}: no file for split `{split}`{hint}")]
    NoSplit {
        /// The dataset as given (path or hub repository id).
        dataset: String,
        /// The split's canonical name (`train`, `validation`, `test`).
        split: String,
        /// Extra context appended to the message, e.g. ` (data files: …)`; may be empty.
        hint: String,
    },

    /// Files for the split in several configurations (subdirectories); pick one with `LoadOptions::config`.
    #[error("{dataset}: split `{split}` exists in several configurations ({}); set the config", configs.join(", "))]
    AmbiguousConfig {
        /// The dataset as given (path or hub repository id).
        dataset: String,
        /// The split's canonical name (`train`, `validation`, `test`).
        split: String,
        /// The configuration directories holding files for the split, sorted.
        configs: Vec<String>,
    },

    /// A file whose extension is none of `.parquet`, `.jsonl`, `.json`, `.tsv`, `.csv`.
    #[error("{path}: unsupported data file (expected .parquet, .jsonl, .json, .tsv or .csv)")]
    UnsupportedFormat {
        /// The file with the unsupported extension.
        path: PathBuf,
    },

    /// Invalid options or inputs (a zero batch size, mixed target kinds, ...).
    #[error("invalid input: {0}")]
    Input(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
