//! Batching: dynamic padding, attention masks, length-grouped and seeded shuffling, resumable iteration.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use crate::tokenize::{Features, Target};

/// The label value on padded target positions (ignored by the loss, as PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// Which side padding goes on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaddingSide {
    /// Pad after the real tokens (the default; for training and encoders).
    #[default]
    Right,
    /// For decoder-only generation, so the last position is the last real token.
    Left,
}

/// Options for a [`Batcher`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOptions {
    /// Examples per batch (at least 1).
    pub batch_size: usize,
    /// The id padded inputs get (their attention mask is 0).
    pub pad_id: u32,
    /// Side for `input_ids`/`attention_mask`/`token_type_ids`; token labels are always right-padded.
    pub padding_side: PaddingSide,
    /// Shuffle each epoch (deterministic per `seed` and epoch).
    pub shuffle: bool,
    /// Seed of the shuffles (with the epoch number).
    pub seed: u64,
    /// Length-grouped batching: sort by input length within chunks of `group_chunks × batch_size` examples
    /// (after shuffling), cut into batches, then shuffle the batches' order.
    pub group_by_length: bool,
    /// Chunk size for `group_by_length`, in batches (50 as in Hugging Face's `LengthGroupedSampler`).
    pub group_chunks: usize,
    /// Drop a final batch smaller than `batch_size`.
    pub drop_last: bool,
    /// Round padded input lengths up to a multiple of this.
    pub pad_to_multiple_of: Option<usize>,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            batch_size: 8,
            pad_id: 0,
            padding_side: PaddingSide::Right,
            shuffle: false,
            seed: 0,
            group_by_length: false,
            group_chunks: 50,
            drop_last: false,
            pad_to_multiple_of: None,
        }
    }
}

/// Batch labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Labels {
    /// No labels: the examples carry no target ([`Target::None`]).
    None,
    /// One class per row.
    Class(Vec<i64>),
    /// Target tokens per row, right-padded with [`IGNORE_INDEX`].
    Tokens(Vec<Vec<i64>>),
}

/// A padded batch, as plain vectors (row-major, all rows the same length).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Token ids, padded with `pad_id` on the batcher's padding side.
    pub input_ids: Vec<Vec<u32>>,
    /// 1 on real tokens, 0 on padding.
    pub attention_mask: Vec<Vec<u8>>,
    /// 0 on padding.
    pub token_type_ids: Vec<Vec<u32>>,
    /// Class labels or padded target tokens, as the features carry them.
    pub labels: Labels,
    /// The examples' positions in the [`Batcher`]'s features.
    pub indices: Vec<usize>,
}

impl Batch {
    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Rows `[rank·n/parts, (rank+1)·n/parts)` of the batch: one data-parallel replica's share, padded as the
    /// whole batch (so each row is computed exactly as it would be in the whole). `None` when the share is empty
    /// (fewer rows than parts) or `rank >= parts`.
    pub fn shard(&self, rank: usize, parts: usize) -> Option<Batch> {
        let n = self.len();
        if parts == 0 || rank >= parts {
            return None;
        }
        let (lo, hi) = (rank * n / parts, (rank + 1) * n / parts);
        if lo >= hi {
            return None;
        }
        Some(Batch {
            input_ids: self.input_ids[lo..hi].to_vec(),
            attention_mask: self.attention_mask[lo..hi].to_vec(),
            token_type_ids: self.token_type_ids[lo..hi].to_vec(),
            labels: match &self.labels {
                Labels::None => Labels::None,
                Labels::Class(l) => Labels::Class(l[lo..hi].to_vec()),
                Labels::Tokens(l) => Labels::Tokens(l[lo..hi].to_vec()),
            },
            indices: self.indices[lo..hi].to_vec(),
        })
    }

    /// Decoder inputs for teacher forcing: the token labels shifted right behind `start_id`, with
    /// [`IGNORE_INDEX`] replaced by `pad_id` (T5: start = pad = 0; BART: start = `</s>` = 2, pad = 1).
    /// `None` unless the labels are [`Labels::Tokens`].
    pub fn decoder_input_ids(&self, start_id: u32, pad_id: u32) -> Option<Vec<Vec<u32>>> {
        let Labels::Tokens(rows) = &self.labels else {
            return None;
        };
        Some(
            rows.iter()
                .map(|r| {
                    std::iter::once(start_id)
                        .chain(r.iter().take(r.len().saturating_sub(1)).map(|&t| {
                            if t < 0 {
                                pad_id
                            } else {
                                t as u32
                            }
                        }))
                        .collect()
                })
                .collect(),
        )
    }
}

/// A position in the batch stream, for checkpoint/resume: `batch` is the index within `epoch`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    /// The epoch (from 0).
    pub epoch: u64,
    /// The batch's index within the epoch.
    pub batch: usize,
}

/// Pads and orders tokenized features into batches.
#[derive(Debug, Clone)]
pub struct Batcher {
    features: Vec<Features>,
    opts: BatchOptions,
}

impl Batcher {
    /// Fails on a zero batch size or chunk count, or features mixing target kinds.
    pub fn new(features: Vec<Features>, opts: BatchOptions) -> Result<Self> {
        if opts.batch_size == 0 {
            return Err(Error::Input("batch_size must be at least 1".into()));
        }
        if opts.group_by_length && opts.group_chunks == 0 {
            return Err(Error::Input("group_chunks must be at least 1".into()));
        }
        if opts.pad_to_multiple_of == Some(0) {
            return Err(Error::Input("pad_to_multiple_of must be at least 1".into()));
        }
        let kind = |t: &Target| std::mem::discriminant(t);
        if let Some(first) = features.first() {
            if let Some((i, _)) = features
                .iter()
                .enumerate()
                .find(|(_, f)| kind(&f.target) != kind(&first.target))
            {
                return Err(Error::Input(format!(
                    "features mix target kinds (row 0 is {:?}-like, row {i} is not)",
                    first.target
                )));
            }
        }
        Ok(Self { features, opts })
    }

    /// The tokenized examples, in input order.
    pub fn features(&self) -> &[Features] {
        &self.features
    }

    /// The options the batcher was made with.
    pub fn options(&self) -> &BatchOptions {
        &self.opts
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let (n, b) = (self.features.len(), self.opts.batch_size);
        if self.opts.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The example indices of each batch of `epoch`, in order. Deterministic in (features' lengths, options,
    /// epoch).
    pub fn epoch_plan(&self, epoch: u64) -> Vec<Vec<usize>> {
        let o = &self.opts;
        let mut order: Vec<usize> = (0..self.features.len()).collect();
        let mut rng = SplitMix64::for_stream(o.seed, epoch);
        if o.shuffle {
            rng.shuffle(&mut order);
        }
        if o.group_by_length {
            for chunk in order.chunks_mut(o.group_chunks.saturating_mul(o.batch_size)) {
                // Stable, longest first.
                chunk.sort_by_key(|&i| std::cmp::Reverse(self.features[i].input_ids.len()));
            }
        }
        let mut batches: Vec<Vec<usize>> =
            order.chunks(o.batch_size).map(<[usize]>::to_vec).collect();
        if o.drop_last && batches.last().is_some_and(|b| b.len() < o.batch_size) {
            batches.pop();
        }
        if o.shuffle && o.group_by_length {
            rng.shuffle(&mut batches);
        }
        batches
    }

    /// Pad the given examples into one batch.
    pub fn collate(&self, indices: &[usize]) -> Batch {
        let o = &self.opts;
        let rows: Vec<&Features> = indices.iter().map(|&i| &self.features[i]).collect();
        let mut width = rows.iter().map(|f| f.input_ids.len()).max().unwrap_or(0);
        if let Some(m) = o.pad_to_multiple_of {
            width = width.div_ceil(m) * m;
        }
        let pad = |v: &[u32], fill: u32| -> Vec<u32> {
            let fill_n = width - v.len();
            match o.padding_side {
                PaddingSide::Right => v
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(fill, fill_n))
                    .collect(),
                PaddingSide::Left => std::iter::repeat_n(fill, fill_n)
                    .chain(v.iter().copied())
                    .collect(),
            }
        };
        let input_ids = rows.iter().map(|f| pad(&f.input_ids, o.pad_id)).collect();
        let attention_mask = rows
            .iter()
            .map(|f| {
                let (real, fill) = (f.input_ids.len(), width - f.input_ids.len());
                match o.padding_side {
                    PaddingSide::Right => std::iter::repeat_n(1u8, real)
                        .chain(std::iter::repeat_n(0, fill))
                        .collect(),
                    PaddingSide::Left => std::iter::repeat_n(0u8, fill)
                        .chain(std::iter::repeat_n(1, real))
                        .collect(),
                }
            })
            .collect();
        let token_type_ids = rows
            .iter()
            .map(|f| {
                // Tokenizers without type ids still give one per token; be safe if a caller built features by hand.
                let mut t = f.token_type_ids.clone();
                t.resize(f.input_ids.len(), 0);
                pad(&t, 0)
            })
            .collect();
        let labels = match rows.first().map(|f| &f.target) {
            None | Some(Target::None) => Labels::None,
            Some(Target::Class(_)) => Labels::Class(
                rows.iter()
                    .map(|f| {
                        if let Target::Class(c) = f.target {
                            c
                        } else {
                            IGNORE_INDEX
                        }
                    })
                    .collect(),
            ),
            Some(Target::Tokens(_)) => {
                let tw = rows
                    .iter()
                    .map(|f| {
                        if let Target::Tokens(t) = &f.target {
                            t.len()
                        } else {
                            0
                        }
                    })
                    .max()
                    .unwrap_or(0);
                Labels::Tokens(
                    rows.iter()
                        .map(|f| {
                            let t: &[u32] = if let Target::Tokens(t) = &f.target {
                                t
                            } else {
                                &[]
                            };
                            t.iter()
                                .map(|&x| x as i64)
                                .chain(std::iter::repeat_n(IGNORE_INDEX, tw - t.len()))
                                .collect()
                        })
                        .collect(),
                )
            }
        };
        Batch {
            input_ids,
            attention_mask,
            token_type_ids,
            labels,
            indices: indices.to_vec(),
        }
    }

    /// The batches of `pos.epoch` from batch `pos.batch` on (resume after a checkpoint).
    pub fn iter_from(&self, pos: Position) -> Batches<'_> {
        let plan = self.epoch_plan(pos.epoch);
        Batches {
            batcher: self,
            next: pos.batch.min(plan.len()),
            plan,
            epoch: pos.epoch,
        }
    }

    /// The batches of one epoch.
    pub fn epoch(&self, epoch: u64) -> Batches<'_> {
        self.iter_from(Position { epoch, batch: 0 })
    }
}

/// The batches of one epoch, each with its [`Position`].
#[derive(Debug)]
pub struct Batches<'a> {
    batcher: &'a Batcher,
    plan: Vec<Vec<usize>>,
    epoch: u64,
    next: usize,
}

impl Batches<'_> {
    /// Where to resume to continue after the batches yielded so far: the next batch of this epoch, or
    /// `(epoch + 1, 0)` once the epoch is done.
    pub fn position(&self) -> Position {
        if self.next >= self.plan.len() {
            Position {
                epoch: self.epoch + 1,
                batch: 0,
            }
        } else {
            Position {
                epoch: self.epoch,
                batch: self.next,
            }
        }
    }
}

impl Iterator for Batches<'_> {
    type Item = (Position, Batch);

    fn next(&mut self) -> Option<Self::Item> {
        let idx = self.plan.get(self.next)?;
        let pos = Position {
            epoch: self.epoch,
            batch: self.next,
        };
        self.next += 1;
        Some((pos, self.batcher.collate(idx)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.plan.len() - self.next;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Batches<'_> {}

#[cfg(test)]
mod shard_tests {
    use super::*;

    fn batch(n: usize) -> Batch {
        Batch {
            input_ids: (0..n as u32).map(|i| vec![i, 0]).collect(),
            attention_mask: vec![vec![1, 0]; n],
            token_type_ids: vec![vec![0, 0]; n],
            labels: Labels::Tokens((0..n as i64).map(|i| vec![i, IGNORE_INDEX]).collect()),
            indices: (10..10 + n).collect(),
        }
    }

    #[test]
    fn shards_cover_the_batch_in_order_once() {
        for n in 1..9 {
            for parts in 1..5 {
                let b = batch(n);
                let mut ids = Vec::new();
                let mut labels = Vec::new();
                for r in 0..parts {
                    if let Some(s) = b.shard(r, parts) {
                        assert_eq!(s.input_ids.len(), s.attention_mask.len());
                        assert_eq!(s.indices.len(), s.len());
                        ids.extend(s.input_ids);
                        if let Labels::Tokens(l) = s.labels {
                            labels.extend(l);
                        }
                    }
                }
                assert_eq!(ids, b.input_ids, "n = {n}, parts = {parts}");
                assert_eq!(Labels::Tokens(labels), b.labels);
            }
        }
        assert!(batch(1).shard(0, 2).is_none());
        assert_eq!(batch(1).shard(1, 2).unwrap().len(), 1);
        assert!(batch(4).shard(2, 2).is_none());
        assert!(batch(4).shard(0, 0).is_none());
    }
}
