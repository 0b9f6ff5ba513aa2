//! kiln-data: SST-2 and CNN/DailyMail loading, tokenization and batching.
//!
//! - [`load_sst2`] / [`load_cnndm`] read a split from a file (TSV, CSV, JSON lines, parquet), a directory,
//!   or a hub dataset repository (through the shared hub cache; offline from it). Malformed rows are
//!   reported with file and line (row for parquet) and skipped or fatal per [`OnError`].
//! - [`tokenize_sentiment`] / [`tokenize_seq2seq`] tokenize in parallel with truncation;
//!   [`PromptTemplate`] casts SST-2 as text-to-text.
//! - [`Batcher`] pads batches dynamically (left or right), masks padded targets with [`IGNORE_INDEX`],
//!   groups by length, shuffles deterministically from a seed, and resumes from a [`Position`].
//!
//! Batches are plain `Vec`s; turning them into tensors is kiln-train's job.

pub mod batch;
pub mod error;
pub mod formats;
pub mod load;
pub mod prompt;
pub mod rng;
pub mod tokenize;

pub use batch::{
    Batch, BatchOptions, Batcher, Batches, Labels, PaddingSide, Position, IGNORE_INDEX,
};
pub use error::{Error, Loc, Result, RowError};
pub use formats::Format;
pub use load::{
    load_cnndm, load_sst2, split_files, LoadOptions, LoadReport, Loaded, OnError, SentimentExample,
    Split, SummaryExample,
};
pub use prompt::PromptTemplate;
pub use rng::SplitMix64;
pub use tokenize::{
    tokenize_sentiment, tokenize_seq2seq, tokenize_texts, Features, Seq2SeqExample, Seq2SeqLengths,
    Target, Tokenized,
};
