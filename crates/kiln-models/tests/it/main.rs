//! kiln-models integration tests (one binary: the generic model code is compiled once).

mod bert;
mod common;
mod fixtures;
mod gpt2;
