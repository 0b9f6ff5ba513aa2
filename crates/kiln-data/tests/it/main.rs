//! kiln-data integration tests (one binary).

mod batching;
mod common;
mod hub;
mod malformed;
mod parquet_files;
mod samples;
mod tokenization;
