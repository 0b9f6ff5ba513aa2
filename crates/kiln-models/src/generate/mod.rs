//! The generation engine and what runs on it. [`engine`] is model-agnostic (greedy, sampling, beam search over
//! plain vectors, as transformers' `generate`); a model plugs in through a [`DecodeSession`]: [`causal`] for
//! decoder-only models, [`seq2seq`] for encoder-decoders. [`scoring`] (per-token log-probabilities) and [`icl`]
//! (k-shot prompts, label likelihood) are the other ways of reading a model's next-token distribution.

pub mod causal;
pub mod engine;
pub mod icl;
pub mod scoring;
pub mod seq2seq;

pub use engine::*;
