//! ROUGE for one prediction/reference pair, then bootstrap confidence intervals over a small corpus — what
//! Python's `rouge_score.rouge_scorer.RougeScorer` and `scoring.BootstrapAggregator` give, with the same numbers.
//!
//!     cargo run --release -p kiln-metrics --example rouge -- [PREDICTION REFERENCE]

use kiln_metrics::{BootstrapAggregator, RougeScorer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (prediction, reference) = match args.as_slice() {
        [p, r] => (p.clone(), r.clone()),
        _ => (
            "The cat sat on the mat.\nIt purred.".to_string(),
            "A cat was sitting on a mat.\nThe cat purred loudly.".to_string(),
        ),
    };

    // rouge1/2/L/Lsum with the Porter stemmer (as `use_stemmer=True`); Lsum splits sentences on newlines.
    let scorer = RougeScorer::new(["rouge1", "rouge2", "rougeL", "rougeLsum"], true)?;
    let scores = scorer.score(&reference, &prediction); // (target, prediction), as rouge-score
    println!("one pair:");
    for (ty, s) in scores.iter() {
        println!(
            "  {:<9} P {:.4}  R {:.4}  F {:.4}",
            ty.name(),
            s.precision,
            s.recall,
            s.fmeasure
        );
    }

    // A corpus of (reference, prediction) pairs, scored in parallel, then 1000 bootstrap resamples (seeded).
    let pairs: Vec<(String, String)> = [
        (
            "the quick brown fox jumps over the lazy dog",
            "a quick brown fox leaps over a lazy dog",
        ),
        (
            "rescue teams brought seven hikers down the mountain",
            "seven hikers were rescued from the mountain",
        ),
        (
            "the council approved the new budget on tuesday",
            "the budget was approved by the council",
        ),
        (
            "heavy rain flooded several streets in the city",
            "several city streets flooded after heavy rain",
        ),
        (
            "the team won the final after extra time",
            "the final went to extra time and the team won",
        ),
    ]
    .iter()
    .map(|(r, p)| (r.to_string(), p.to_string()))
    .collect();
    let mut agg = BootstrapAggregator::new().with_seed(0);
    for s in scorer.score_batch(&pairs) {
        agg.add_scores(&s);
    }
    println!(
        "corpus of {} pairs, F-measure low / mid / high (95% interval):",
        pairs.len()
    );
    for (ty, a) in agg.aggregate().iter() {
        println!(
            "  {:<9} {:.4} / {:.4} / {:.4}",
            ty.name(),
            a.low.fmeasure,
            a.mid.fmeasure,
            a.high.fmeasure
        );
    }
    Ok(())
}
