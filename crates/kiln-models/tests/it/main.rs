//! kiln-models integration tests (one binary: the generic model code is compiled once).

mod adapters;
mod bart;
mod bert;
mod causal;
mod common;
mod errors;
mod fake_hub;
mod fixtures;
mod gpt2;
mod hub;
mod icl;
mod opt;
mod peft;
mod prompt;
mod prompt_bert;
mod prompt_seq2seq;
mod reliability;
mod s2s;
mod said;
mod scoring;
mod t5;
