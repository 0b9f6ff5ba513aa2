//! kiln-models integration tests (one binary: the generic model code is compiled once).

mod bert;
mod common;
mod fixtures;
mod errors;
mod gpt2;
mod hub;
mod opt;
mod peft;
