//! kiln-models: architectures, checkpoint loading, tokenizers and generation.
//!
//! A model file reads top to bottom like its paper: config → modules → forward → decoding session.

pub mod attention;
pub mod auto;
pub mod bart;
pub mod bert;
pub mod causal;
pub mod config;
pub mod error;
pub mod generation;
pub mod gpt2;
pub mod hub;
pub mod icl;
pub mod opt;
pub mod peft;
pub mod prompt;
pub mod prompt_bert;
pub mod prompt_seq2seq;
pub mod scoring;
pub mod seq2seq;
pub mod t5;
pub mod tokenizer;
pub mod weights;

pub use error::{Error, Result};
