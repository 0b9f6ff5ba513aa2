//! kiln-train: one training loop for classification, seq2seq and causal-LM tasks (full fine-tuning and
//! PEFT alike), the seed notebook's experiments as recipes, and their reports (metrics JSON lines, charts).
//!
//! - [`train`] runs any [`Task`] (a loss per batch and an evaluation) with a [`TrainConfig`]: AdamW or Adam,
//!   linear warmup/decay, gradient accumulation and clipping, checkpoints with exact resume, metrics and a
//!   loss chart. [`tasks`] holds the ready-made ones (classification, seq2seq).
//! - [`recipes`] are the seed notebook's experiments, each one call ([`recipes::run_recipe`]).
//! - [`loss`] has the losses as transformers computes them, for a loop of your own.
//!
//! # Quick start
//!
//! Fine-tune BERT on SST-2 with the `bert-sst2` recipe — here the tiny random BERT and the sentiment samples
//! bundled in `fixtures/`, on 16 examples for one epoch (leave `model` / `dataset` unset for
//! `bert-base-uncased` and `stanfordnlp/sst2` from the hub). A training loop of your own on the library API
//! is the `lora_finetune` example (`cargo run --release -p kiln-train --example lora_finetune`).
//!
//! ```rust
//! use burn::backend::{Autodiff, Flex};
//! use kiln_train::recipes::{run_recipe, RecipeArgs};
//!
//! let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
//! let args = RecipeArgs {
//!     model: Some(format!("{fixtures}/bert")),
//!     dataset: Some(format!("{fixtures}/samples/sentiment")),
//!     out_dir: std::env::temp_dir().join(format!("kiln-train-quickstart-{}", std::process::id())),
//!     epochs: Some(1),
//!     batch_size: Some(8),
//!     max_samples: Some(16),
//!     max_eval_samples: Some(8),
//!     ..Default::default()
//! };
//! // Writes summary.json, metrics.jsonl, loss.png and checkpoints into `out_dir`.
//! let summary = run_recipe::<Autodiff<Flex>>("bert-sst2", &args, &Default::default())?;
//! println!("{}", summary["final_eval"]); // {"accuracy": …, "eval_loss": …}
//! std::fs::remove_dir_all(&args.out_dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod chart;
pub mod distributed;
pub mod error;
pub mod loss;
pub mod optim;
pub mod recipes;
pub mod said;
pub mod tasks;
pub mod trainer;

pub use error::{Error, Result};
pub use trainer::{train, OptimizerKind, Task, TrainConfig, TrainReport};
