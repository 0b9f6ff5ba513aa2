//! kiln-models integration tests (one binary: the generic model code is compiled once).

mod common;
mod fixtures;
mod gpt2;
mod opt;
