//! Times kiln-metrics ROUGE on `bench_pairs` (rouge1, rouge2, rougeL, rougeLsum, stemmer on).
//!
//!     cargo run --release -p kiln-metrics --example rouge_bench -- [--n 2000] [--seed 0] [--write pairs.jsonl]
//!
//! `--write` saves the pairs as JSONL ({"reference", "prediction"}) for fixtures/rouge/bench_reference.py,
//! which times rouge-score on the same data. Prints one JSON object: cold (fresh threads, empty stem cache)
//! and warm timings, single-threaded and on all rayon threads, plus per-type F sums to cross-check the
//! Python numbers.

use std::io::Write;
use std::time::Instant;

use kiln_metrics::{bench_pairs, RougeScorer, RougeType};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = arg(&args, "--n").map_or(2000, |v| v.parse().expect("--n"));
    let seed: u64 = arg(&args, "--seed").map_or(0, |v| v.parse().expect("--seed"));
    let pairs = bench_pairs(n, seed);
    if let Some(path) = arg(&args, "--write") {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
        for (r, p) in &pairs {
            let line = serde_json::json!({"reference": r, "prediction": p});
            writeln!(f, "{line}").unwrap();
        }
    }
    let scorer = RougeScorer::new(RougeType::DEFAULT, true).unwrap();
    let max_threads = rayon::current_num_threads();
    let mut timings = serde_json::Map::new();
    let mut sums = serde_json::Map::new();
    for threads in [1, max_threads] {
        // a fresh pool has fresh threads, so the first call runs with empty per-thread stem caches
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let t = Instant::now();
        let scores = pool.install(|| scorer.score_batch(&pairs));
        let cold = t.elapsed().as_secs_f64();
        let mut warm = f64::INFINITY;
        for _ in 0..5 {
            let t = Instant::now();
            let again = pool.install(|| scorer.score_batch(&pairs));
            warm = warm.min(t.elapsed().as_secs_f64());
            assert_eq!(again, scores);
        }
        timings.insert(
            format!("threads_{threads}"),
            serde_json::json!({"cold_s": cold, "warm_s": warm}),
        );
        for ty in RougeType::DEFAULT {
            let s: f64 = scores.iter().map(|s| s[ty].fmeasure).sum();
            sums.insert(ty.name().to_string(), s.into());
        }
    }
    let out = serde_json::json!({
        "pairs": n,
        "seed": seed,
        "types": RougeType::DEFAULT.map(|t| t.name()),
        "use_stemmer": true,
        "timings": timings,
        "fmeasure_sums": sums,
    });
    println!("{out}");
}
