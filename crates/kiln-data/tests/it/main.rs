//! kiln-data integration tests (one binary).

mod batching;
mod common;
#[path = "../../../kiln-models/tests/it/fake_hub.rs"]
mod fake_hub;
mod hub;
mod malformed;
mod pairs;
mod parquet_files;
mod samples;
mod tokenization;
