//! kiln-models: architectures, checkpoint loading, tokenizers and generation.
//!
//! The tree follows the roles (as transformers' `models/<name>/` and `generation/`):
//!
//! | module | what it holds |
//! |---|---|
//! | [`models`] | GPT-2, OPT, BERT, BART, T5, one file each, and the attention blocks they share |
//! | [`generate`] | the generation engine (greedy, sampling, beam search) and its causal and seq2seq sessions, scoring, in-context learning |
//! | [`load`] | `config.json`, safetensors weights, the hub cache, tokenizers, `model_type` dispatch, errors |
//! | [`prompt`] | prompt and prefix tuning wrapped around each model family |
//! | [`peft`] | the PEFT visitor: every linear layer of every architecture under peft's module names |
//!
//! A model file reads top to bottom like its paper: config → modules → forward → decoding session.
//!
//! The short paths below (`kiln_models::gpt2`, `kiln_models::generation`, `kiln_models::auto`, …) are the
//! crate's stable import paths; they name the same modules as the grouped ones.

pub mod generate;
pub mod load;
pub mod models;
pub mod peft;
pub mod prompt;

pub use generate::engine as generation;
pub use generate::{causal, icl, scoring, seq2seq};
pub use load::{auto, config, error, hub, tokenizer, weights};
pub use models::{attention, bart, bert, gpt2, opt, t5};
pub use prompt::bert as prompt_bert;
pub use prompt::seq2seq as prompt_seq2seq;

pub use error::{Error, Result};
