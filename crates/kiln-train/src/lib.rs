//! kiln-train: one training loop for classification, seq2seq and causal-LM tasks (full fine-tuning and
//! PEFT alike), the seed notebook's experiments as recipes, and their reports (metrics JSON lines, charts).

pub mod chart;
pub mod error;
pub mod loss;
pub mod recipes;
pub mod tasks;
pub mod trainer;

pub use error::{Error, Result};
pub use trainer::{train, OptimizerKind, Task, TrainConfig, TrainReport};
