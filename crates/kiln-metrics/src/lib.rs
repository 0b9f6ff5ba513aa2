//! kiln-metrics: evaluation metrics for kiln, without burn.
//!
//! * [`rouge`]: ROUGE-N (`rouge1`..`rouge9`), `rougeL` and `rougeLsum`, matching Google's `rouge-score` 0.1.2
//!   exactly (checked against 2,400 reference pairs, with and without the stemmer), parallel batch scoring.
//! * [`porter`]: an exact port of NLTK's Porter stemmer (as rouge-score uses it).
//! * [`aggregate`]: plain means and rouge-score's `BootstrapAggregator` (seeded).
//! * [`accuracy`]: exact-match accuracy.
//!
//! ```
//! use kiln_metrics::{BootstrapAggregator, RougeScorer};
//!
//! let scorer = RougeScorer::new(["rouge1", "rouge2", "rougeL", "rougeLsum"], true)?;
//! let s = scorer.score("The cat sat on the mat.\nIt purred.", "A cat was sitting on a mat.");
//! println!("rougeL F = {:.4}", s["rougeL"].fmeasure);
//!
//! let pairs = vec![("a b c".to_string(), "a b".to_string()), ("x y".to_string(), "y x".to_string())];
//! let mut agg = BootstrapAggregator::new().with_seed(7);
//! for s in scorer.score_batch(&pairs) {
//!     agg.add_scores(&s);
//! }
//! let ci = agg.aggregate();
//! assert!(ci["rouge1"].low.fmeasure <= ci["rouge1"].high.fmeasure);
//! # Ok::<(), kiln_metrics::MetricsError>(())
//! ```

#![warn(missing_docs)]

pub mod aggregate;
pub mod bench;
pub mod porter;
pub mod rouge;
mod util;

pub use aggregate::{AggregateScore, AggregateScores, BootstrapAggregator};
pub use bench::bench_pairs;
pub use rouge::{
    ByType, DefaultTokenizer, RougeScorer, RougeScores, RougeTokenizer, RougeType, Score,
    SentenceSplit,
};

/// Errors of kiln-metrics.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    /// Two inputs that must be parallel have different lengths.
    #[error("length mismatch: {left} predictions/targets vs {right} labels/predictions")]
    LengthMismatch {
        /// Length of the first input (predictions, or targets for ROUGE).
        left: usize,
        /// Length of the second input (labels, or predictions for ROUGE).
        right: usize,
    },
    /// An input that must be non-empty is empty (the name says which).
    #[error("{0} is empty")]
    Empty(&'static str),
    /// Not one of `rouge1`..`rouge9`, `rougeL`, `rougeLsum`.
    #[error("invalid rouge type {0:?} (expected rouge1..rouge9, rougeL or rougeLsum)")]
    InvalidRougeType(String),
    /// A parameter out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Fraction of positions where `preds[i] == labels[i]` (HF `evaluate`'s accuracy without weights).
/// Errors when the lengths differ or the inputs are empty.
pub fn accuracy<P, L>(preds: &[P], labels: &[L]) -> Result<f64, MetricsError>
where
    P: PartialEq<L>,
{
    if preds.len() != labels.len() {
        return Err(MetricsError::LengthMismatch {
            left: preds.len(),
            right: labels.len(),
        });
    }
    if preds.is_empty() {
        return Err(MetricsError::Empty("predictions"));
    }
    let correct = preds.iter().zip(labels).filter(|(p, l)| *p == *l).count();
    Ok(correct as f64 / preds.len() as f64)
}
