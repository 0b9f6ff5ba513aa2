//! Aggregating per-example scores: a plain mean and rouge-score's bootstrap confidence intervals.
//!
//! [`BootstrapAggregator`] follows `rouge_score.scoring.BootstrapAggregator`: per score type, `n_samples`
//! (default 1000) resamples with replacement of the per-example (P, R, F) rows, the column means of each
//! resample, and then the `(1 - ci) / 2`, 50 and `1 - (1 - ci) / 2` percentiles (2.5 / 50 / 97.5 for the default
//! `ci = 0.95`) of those means as `low` / `mid` / `high`, with NumPy's default `"linear"` percentile
//! ([`percentile`] reproduces `np.percentile` bit for bit, including its interpolation formula).
//! `mid` is the median of the bootstrap means, not the plain mean.
//!
//! **RNG:** rouge-score draws with NumPy's global, unseeded `np.random.choice`, so its intervals differ from
//! run to run. Here resampling uses SplitMix64, seeded per score type with `seed ^ fnv1a(type name)`
//! (default seed [`DEFAULT_SEED`]), so results are deterministic but are not NumPy's draws: expect the same
//! statistics, not the same digits (`low`/`mid`/`high` differ from rouge-score's only by resampling noise, the
//! same size as rouge-score's own run-to-run variation).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::rouge::{ByType, RougeScorer, RougeScores, RougeType, Score};
use crate::util::{fnv1a, SplitMix64};
use crate::MetricsError;

/// Default bootstrap seed ("kiln" in ASCII).
pub const DEFAULT_SEED: u64 = 0x6b69_6c6e;

/// A confidence interval: rouge-score's `AggregateScore(low, mid, high)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AggregateScore {
    /// Lower bound: the `(1 - ci) / 2` percentile of the bootstrap means (2.5th for `ci = 0.95`).
    pub low: Score,
    /// The median (50th percentile) of the bootstrap means, not the plain mean.
    pub mid: Score,
    /// Upper bound: the `1 - (1 - ci) / 2` percentile of the bootstrap means (97.5th for `ci = 0.95`).
    pub high: Score,
}

/// Aggregated scores per ROUGE type.
pub type AggregateScores = ByType<AggregateScore>;

/// Plain mean of precision, recall and F over `scores` (summed in order). `None` when empty.
pub fn mean(scores: &[Score]) -> Option<Score> {
    if scores.is_empty() {
        return None;
    }
    let mut sum = [0.0f64; 3];
    for s in scores {
        sum[0] += s.precision;
        sum[1] += s.recall;
        sum[2] += s.fmeasure;
    }
    let n = scores.len() as f64;
    Some(Score {
        precision: sum[0] / n,
        recall: sum[1] / n,
        fmeasure: sum[2] / n,
    })
}

/// Plain mean per type over a list of per-example results (types in first-seen order).
pub fn mean_by_type(rows: &[RougeScores]) -> ByType<Score> {
    let mut cols: ByType<Vec<Score>> = ByType::new();
    for row in rows {
        for (t, s) in row.iter() {
            match cols.get_mut(t) {
                Some(v) => v.push(*s),
                None => cols.insert(t, vec![*s]),
            }
        }
    }
    cols.iter()
        .map(|(t, v)| (t, mean(v).expect("non-empty")))
        .collect()
}

/// `np.percentile(values, q)` with the default `method="linear"`, `q` in percent (0..=100); `sorted` must be
/// sorted ascending and non-empty. Reproduces NumPy's arithmetic: virtual index `(n - 1) * (q / 100)`,
/// neighbours clamped to the ends, and `_lerp` (`a + (b - a) * g`, or `b - (b - a) * (1 - g)` when `g >= 0.5`).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of an empty array");
    let n = sorted.len();
    let quantile = q / 100.0;
    let virtual_index = (n - 1) as f64 * quantile;
    let (prev, next, prev_for_gamma) = if virtual_index >= (n - 1) as f64 {
        (n - 1, n - 1, -1.0)
    } else if virtual_index < 0.0 {
        (0, 0, 0.0)
    } else {
        let f = virtual_index.floor();
        (f as usize, f as usize + 1, f)
    };
    let gamma = virtual_index - prev_for_gamma;
    let (a, b) = (sorted[prev], sorted[next]);
    let diff = b - a;
    if gamma >= 0.5 {
        b - diff * (1.0 - gamma)
    } else {
        a + diff * gamma
    }
}

/// The three percentiles rouge-score uses for a confidence interval: `100 * [(1-ci)/2, 0.5, 1-(1-ci)/2]`.
pub fn interval_percentiles(confidence_interval: f64) -> [f64; 3] {
    let delta = (1.0 - confidence_interval) / 2.0;
    [100.0 * delta, 100.0 * 0.5, 100.0 * (1.0 - delta)]
}

/// Bootstrap confidence interval of the mean of `rows` (rouge-score's `_bootstrap_resample` on one type).
pub fn bootstrap(
    rows: &[Score],
    n_samples: usize,
    confidence_interval: f64,
    seed: u64,
) -> AggregateScore {
    assert!(!rows.is_empty(), "bootstrap of no rows");
    let n = rows.len();
    let mut rng = SplitMix64::new(seed);
    let mut cols: [Vec<f64>; 3] = [
        Vec::with_capacity(n_samples),
        Vec::with_capacity(n_samples),
        Vec::with_capacity(n_samples),
    ];
    for _ in 0..n_samples {
        let mut sum = [0.0f64; 3];
        for _ in 0..n {
            let s = &rows[rng.below(n as u64) as usize];
            sum[0] += s.precision;
            sum[1] += s.recall;
            sum[2] += s.fmeasure;
        }
        for k in 0..3 {
            cols[k].push(sum[k] / n as f64);
        }
    }
    for c in &mut cols {
        c.sort_by(f64::total_cmp);
    }
    let q = interval_percentiles(confidence_interval);
    let at = |j: usize| Score {
        precision: percentile(&cols[0], q[j]),
        recall: percentile(&cols[1], q[j]),
        fmeasure: percentile(&cols[2], q[j]),
    };
    AggregateScore {
        low: at(0),
        mid: at(1),
        high: at(2),
    }
}

/// rouge-score's `BootstrapAggregator`: collect per-example scores with [`add_scores`](Self::add_scores),
/// then [`aggregate`](Self::aggregate) into low/mid/high per type. Deterministic for a given seed (see the
/// module docs on the RNG).
#[derive(Clone, Debug)]
pub struct BootstrapAggregator {
    confidence_interval: f64,
    n_samples: usize,
    seed: u64,
    scores: ByType<Vec<Score>>,
}

impl Default for BootstrapAggregator {
    fn default() -> Self {
        Self::new()
    }
}

impl BootstrapAggregator {
    /// `confidence_interval = 0.95`, `n_samples = 1000`, seed [`DEFAULT_SEED`].
    pub fn new() -> Self {
        BootstrapAggregator {
            confidence_interval: 0.95,
            n_samples: 1000,
            seed: DEFAULT_SEED,
            scores: ByType::new(),
        }
    }

    /// Custom interval and resample count; errors like rouge-score when `confidence_interval` is outside
    /// `[0, 1]` or `n_samples` is zero.
    pub fn with_params(confidence_interval: f64, n_samples: usize) -> Result<Self, MetricsError> {
        if !(0.0..=1.0).contains(&confidence_interval) {
            return Err(MetricsError::InvalidArgument(
                "confidence_interval must be in range [0, 1]".into(),
            ));
        }
        if n_samples == 0 {
            return Err(MetricsError::InvalidArgument(
                "n_samples must be positive".into(),
            ));
        }
        Ok(BootstrapAggregator {
            confidence_interval,
            n_samples,
            ..Self::new()
        })
    }

    /// Sets the resampling seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The base resampling seed (default [`DEFAULT_SEED`]); each type uses `seed ^ fnv1a(type name)`.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Number of bootstrap resamples per type (default 1000).
    pub fn n_samples(&self) -> usize {
        self.n_samples
    }

    /// Confidence level of the interval in `[0, 1]` (default 0.95).
    pub fn confidence_interval(&self) -> f64 {
        self.confidence_interval
    }

    /// Adds one example's scores (every type in it).
    pub fn add_scores(&mut self, scores: &RougeScores) {
        for (t, s) in scores.iter() {
            self.add_score(t, *s);
        }
    }

    /// Adds one score of one type.
    pub fn add_score(&mut self, ty: RougeType, score: Score) {
        match self.scores.get_mut(ty) {
            Some(v) => v.push(score),
            None => self.scores.insert(ty, vec![score]),
        }
    }

    /// Number of examples added for `ty`.
    pub fn count(&self, ty: RougeType) -> usize {
        self.scores.get(ty).map_or(0, Vec::len)
    }

    /// Plain means of what was added, per type.
    pub fn mean(&self) -> ByType<Score> {
        self.scores
            .iter()
            .map(|(t, v)| (t, mean(v).expect("non-empty")))
            .collect()
    }

    /// low / mid / high per type (types in the order first added). Types are resampled in parallel, each
    /// with its own stream, so the result does not depend on the number of threads.
    pub fn aggregate(&self) -> AggregateScores {
        let entries: Vec<(RougeType, &Vec<Score>)> = self.scores.iter().collect();
        let results: Vec<AggregateScore> = entries
            .par_iter()
            .map(|(t, rows)| {
                bootstrap(
                    rows,
                    self.n_samples,
                    self.confidence_interval,
                    self.seed ^ fnv1a(t.name()),
                )
            })
            .collect();
        entries.iter().map(|(t, _)| *t).zip(results).collect()
    }
}

/// HF evaluate's corpus-level ROUGE lives here, beside the aggregator it runs on, so that the scores ([`crate::rouge`])
/// do not depend on their aggregation.
impl RougeScorer {
    /// HF `evaluate.load("rouge").compute(predictions=..., references=...)` with `use_aggregator=True`:
    /// per type, the `mid` F of a [`BootstrapAggregator`] (default settings and seed) over the corpus.
    /// **Predictions first** here, as in HF evaluate. Errors when the lengths differ or are zero.
    pub fn compute<P, R>(
        &self,
        predictions: &[P],
        references: &[R],
    ) -> Result<ByType<f64>, MetricsError>
    where
        P: AsRef<str> + Sync,
        R: AsRef<str> + Sync,
    {
        if predictions.is_empty() {
            return Err(MetricsError::Empty("predictions"));
        }
        let scores = self.score_corpus(references, predictions)?;
        let mut agg = BootstrapAggregator::new();
        for s in &scores {
            agg.add_scores(s);
        }
        Ok(agg
            .aggregate()
            .iter()
            .map(|(t, a)| (t, a.mid.fmeasure))
            .collect())
    }
}
