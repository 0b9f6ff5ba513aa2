//! From files to a model: [`config`] (`config.json` with errors naming the field), [`weights`] (safetensors
//! through burn-store, shape-checked), [`hub`] (local directories and hub ids with Python's cache layout),
//! [`tokenizer`] (`tokenizer.json` or `vocab.json` + `merges.txt`), [`auto`] (the architecture from
//! `model_type`), and the crate's [`error`] type.

pub mod auto;
pub mod config;
pub mod error;
pub mod hub;
pub mod tokenizer;
pub mod weights;
