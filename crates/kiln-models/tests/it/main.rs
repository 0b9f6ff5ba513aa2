//! kiln-models integration tests (one binary: the generic model code is compiled once).

mod bart;
mod common;
mod fixtures;
mod gpt2;
mod s2s;
mod t5;
