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
//!
//! # Quick start
//!
//! Load an SST-2 split, tokenize it with a BERT tokenizer and iterate padded batches — here on the samples
//! bundled in `fixtures/` (the same call takes a hub dataset id such as `"stanfordnlp/sst2"`).
//!
//! ```rust
//! use kiln_data::{load_sst2, tokenize_sentiment, BatchOptions, Batcher, Labels, LoadOptions, Split};
//! use kiln_models::tokenizer::Tokenizer;
//!
//! let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/samples/sentiment");
//! let opts = LoadOptions { max_samples: Some(32), ..Default::default() };
//! let train = load_sst2(data, Split::Train, &opts)?;
//! println!("{} examples from {:?}", train.examples.len(), train.report.files);
//!
//! let bert = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/bert");
//! let tok = Tokenizer::from_dir(std::path::Path::new(bert))?;
//! let features = tokenize_sentiment(&tok, &train.examples, Some(64))?.features;
//!
//! let pad_id = tok.token_to_id("[PAD]").unwrap_or(0);
//! let opts = BatchOptions { batch_size: 8, pad_id, shuffle: true, seed: 42, ..Default::default() };
//! let batcher = Batcher::new(features, opts)?;
//! let (position, batch) = batcher.epoch(0).next().expect("32 examples make 4 batches");
//! assert_eq!(batch.len(), 8);
//! assert!(batch.input_ids.iter().all(|row| row.len() == batch.input_ids[0].len())); // padded
//! if let Labels::Class(labels) = &batch.labels {
//!     println!("{position:?}: labels {labels:?}, mask {:?}", batch.attention_mask[0]);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

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
    load_cnndm, load_pairs, load_sst2, split_files, LoadOptions, LoadReport, Loaded, OnError,
    PairExample, SentimentExample, Split, SummaryExample,
};
pub use prompt::PromptTemplate;
pub use rng::SplitMix64;
pub use tokenize::{
    tokenize_pairs, tokenize_sentiment, tokenize_seq2seq, tokenize_texts, Features, Seq2SeqExample,
    Seq2SeqLengths, Target, Tokenized,
};
