//! Training errors.

use std::path::PathBuf;

/// Errors of kiln-train: bad settings, I/O, a non-finite loss, and the model, data and metric errors underneath.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid training settings: {0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
    #[error("loss became {loss} at step {step}; stopped. {}", match checkpoint {
        Some(c) => format!("The last good checkpoint is {}", c.display()),
        None => "No checkpoint had been written yet".to_string(),
    })]
    NonFinite {
        step: usize,
        loss: f64,
        checkpoint: Option<PathBuf>,
    },
    #[error(transparent)]
    Model(#[from] kiln_models::Error),
    #[error(transparent)]
    Data(#[from] kiln_data::Error),
    #[error(transparent)]
    Metrics(#[from] kiln_metrics::MetricsError),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
