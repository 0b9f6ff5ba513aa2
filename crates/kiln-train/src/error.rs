//! Training errors.

use std::path::PathBuf;

/// Errors of kiln-train: bad settings, I/O, a non-finite loss, and the model, data and metric errors underneath.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid training settings or arguments (zero epochs, non-positive learning rate, …).
    #[error("invalid training settings: {0}")]
    Config(String),
    /// A file-system error, as `path: message` where the path is known.
    #[error("{0}")]
    Io(String),
    /// The loss of a batch was NaN or infinite; training stopped.
    #[error("loss became {loss} at step {step}; stopped. {}", match checkpoint {
        Some(c) => format!("The last good checkpoint is {}", c.display()),
        None => "No checkpoint had been written yet".to_string(),
    })]
    NonFinite {
        /// Optimizer steps completed before the bad batch.
        step: usize,
        /// The non-finite loss value.
        loss: f64,
        /// The last complete checkpoint directory in `out_dir`, if any was written
        /// ([`latest_checkpoint`](crate::trainer::latest_checkpoint)).
        checkpoint: Option<PathBuf>,
    },
    /// Data-parallel training stopped because of one replica (it failed, panicked, or did not reach the gradient
    /// exchange within the timeout); `replica` is its global rank.
    #[error("data-parallel training stopped: replica {replica}: {message}")]
    Replica {
        /// The global rank of the replica that stopped the run.
        replica: usize,
        /// What happened to it.
        message: String,
    },
    /// A model loading, hub or tokenizer error.
    #[error(transparent)]
    Model(#[from] kiln_models::Error),
    /// A dataset loading or batching error.
    #[error(transparent)]
    Data(#[from] kiln_data::Error),
    /// A metric computation error.
    #[error(transparent)]
    Metrics(#[from] kiln_metrics::MetricsError),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
