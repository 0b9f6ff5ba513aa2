//! Parallel tokenization (rayon) with truncation.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tokenizers::{TruncationParams, TruncationStrategy};

use kiln_models::tokenizer::Tokenizer;

use crate::error::{Error, Result};
use crate::load::{PairExample, SentimentExample, SummaryExample};

/// What a tokenized example is trained to predict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// Nothing (inference, or language modelling on the inputs).
    None,
    /// A class index (SST-2: 0/1; -1 unlabeled).
    Class(i64),
    /// Target token ids for a seq2seq model (with the tokenizer's end-of-sequence token).
    Tokens(Vec<u32>),
}

/// One tokenized example, unpadded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    /// Token ids, with the tokenizer's special tokens.
    pub input_ids: Vec<u32>,
    /// Segment ids (all 0 for one text).
    pub token_type_ids: Vec<u32>,
    /// What the example is trained to predict.
    pub target: Target,
}

/// Tokenized examples, in input order, plus truncation counts (a warning: rows longer than the limit were
/// cut, never rejected).
#[derive(Debug, Clone, Default)]
pub struct Tokenized {
    /// One per input, in input order.
    pub features: Vec<Features>,
    /// Rows whose input was cut to `max_len` / `max_source_len`.
    pub truncated: usize,
    /// Rows whose target was cut to `max_target_len`.
    pub truncated_targets: usize,
}

/// A source/target text pair for seq2seq training.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seq2SeqExample {
    /// The encoder input.
    pub source: String,
    /// The decoder target.
    pub target: String,
}

impl SummaryExample {
    /// `prefix + article` → `highlights` (T5 uses the prefix `"summarize: "`; BART none).
    pub fn to_seq2seq(&self, prefix: &str) -> Seq2SeqExample {
        Seq2SeqExample {
            source: format!("{prefix}{}", self.article),
            target: self.highlights.clone(),
        }
    }
}

/// Lengths for [`tokenize_seq2seq`]. `None` leaves a side uncut.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seq2SeqLengths {
    /// Cut sources to this many tokens.
    pub max_source_len: Option<usize>,
    /// Cut targets to this many tokens.
    pub max_target_len: Option<usize>,
}

/// A copy of the tokenizer that truncates to `max_len` (longest first) and never pads, made once and shared by
/// the worker threads.
fn configured(tok: &Tokenizer, max_len: Option<usize>) -> Result<tokenizers::Tokenizer> {
    let mut t = tok.inner.clone();
    let err = |e: tokenizers::Error| {
        Error::Model(kiln_models::Error::Tokenizer {
            path: tok.path.clone(),
            msg: e.to_string(),
        })
    };
    if max_len == Some(0) {
        return Err(Error::Input("max_len must be at least 1".into()));
    }
    let trunc = max_len.map(|m| TruncationParams {
        max_length: m,
        strategy: TruncationStrategy::LongestFirst,
        ..Default::default()
    });
    t.with_truncation(trunc).map_err(err)?;
    t.with_padding(None);
    Ok(t)
}

fn encode<'s, I: Into<tokenizers::EncodeInput<'s>>>(
    t: &tokenizers::Tokenizer,
    tok: &Tokenizer,
    text: I,
) -> Result<(Vec<u32>, Vec<u32>, bool)> {
    let enc = t.encode(text, true).map_err(|e| {
        Error::Model(kiln_models::Error::Tokenizer {
            path: tok.path.clone(),
            msg: e.to_string(),
        })
    })?;
    // Ids beyond the model's vocabulary are an error naming tokenizer.json (when the caller set it with
    // `Tokenizer::with_model_vocab`), never an index into the embedding.
    tok.check_ids(enc.get_ids())?;
    Ok((
        enc.get_ids().to_vec(),
        enc.get_type_ids().to_vec(),
        !enc.get_overflowing().is_empty(),
    ))
}

/// Tokenize texts in parallel (with the tokenizer's special tokens), cutting each to `max_len` tokens.
/// Targets are [`Target::None`].
pub fn tokenize_texts(
    tok: &Tokenizer,
    texts: &[&str],
    max_len: Option<usize>,
) -> Result<Tokenized> {
    let t = configured(tok, max_len)?;
    let encoded: Vec<_> = texts
        .par_iter()
        .map(|s| encode(&t, tok, *s))
        .collect::<Result<_>>()?;
    let truncated = encoded.iter().filter(|e| e.2).count();
    let features = encoded
        .into_iter()
        .map(|(input_ids, token_type_ids, _)| Features {
            input_ids,
            token_type_ids,
            target: Target::None,
        })
        .collect();
    Ok(Tokenized {
        features,
        truncated,
        truncated_targets: 0,
    })
}

/// Tokenize SST-2 sentences for sequence classification: targets are the labels.
pub fn tokenize_sentiment(
    tok: &Tokenizer,
    examples: &[SentimentExample],
    max_len: Option<usize>,
) -> Result<Tokenized> {
    let texts: Vec<&str> = examples.iter().map(|e| e.sentence.as_str()).collect();
    let mut out = tokenize_texts(tok, &texts, max_len)?;
    for (f, e) in out.features.iter_mut().zip(examples) {
        f.target = Target::Class(e.label);
    }
    Ok(out)
}

/// Tokenize sentence pairs for sequence classification (`[CLS] a [SEP] b [SEP]` for BERT, token types 0 then 1,
/// truncating the longest text first to `max_len`): targets are the labels.
pub fn tokenize_pairs(
    tok: &Tokenizer,
    examples: &[PairExample],
    max_len: Option<usize>,
) -> Result<Tokenized> {
    let t = configured(tok, max_len)?;
    let encoded: Vec<_> = examples
        .par_iter()
        .map(|e| encode(&t, tok, (e.text.as_str(), e.text_pair.as_str())))
        .collect::<Result<_>>()?;
    let truncated = encoded.iter().filter(|e| e.2).count();
    let features = encoded
        .into_iter()
        .zip(examples)
        .map(|((input_ids, token_type_ids, _), e)| Features {
            input_ids,
            token_type_ids,
            target: Target::Class(e.label),
        })
        .collect();
    Ok(Tokenized {
        features,
        truncated,
        truncated_targets: 0,
    })
}

/// Tokenize source/target pairs for a seq2seq model; targets become [`Target::Tokens`] (the batcher pads them
/// with -100).
pub fn tokenize_seq2seq(
    tok: &Tokenizer,
    examples: &[Seq2SeqExample],
    lengths: Seq2SeqLengths,
) -> Result<Tokenized> {
    let src = configured(tok, lengths.max_source_len)?;
    let tgt = configured(tok, lengths.max_target_len)?;
    let encoded: Vec<_> = examples
        .par_iter()
        .map(|e| {
            Ok((
                encode(&src, tok, e.source.as_str())?,
                encode(&tgt, tok, e.target.as_str())?,
            ))
        })
        .collect::<Result<_>>()?;
    let truncated = encoded.iter().filter(|(s, _)| s.2).count();
    let truncated_targets = encoded.iter().filter(|(_, t)| t.2).count();
    let features = encoded
        .into_iter()
        .map(
            |((input_ids, token_type_ids, _), (target, _, _))| Features {
                input_ids,
                token_type_ids,
                target: Target::Tokens(target),
            },
        )
        .collect();
    Ok(Tokenized {
        features,
        truncated,
        truncated_targets,
    })
}
