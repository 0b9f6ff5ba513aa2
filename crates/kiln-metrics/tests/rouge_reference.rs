//! kiln-metrics against the rouge-score 0.1.2 / NLTK 3.10.4 / NumPy reference fixtures in fixtures/rouge/
//! (regenerate with fixtures/rouge/generate_rouge.py), plus behavioural tests.

use std::path::PathBuf;

use kiln_metrics::aggregate::{self, percentile, BootstrapAggregator};
use kiln_metrics::rouge::{
    split_sentences, tokenize, DefaultTokenizer, RougeScorer, RougeType, Score, SentenceSplit,
};
use kiln_metrics::{accuracy, bench_pairs, porter, MetricsError, RougeTokenizer};
use serde_json::Value;

const TOL: f64 = 1e-9;
const FIXTURE_TYPES: [&str; 5] = ["rouge1", "rouge2", "rouge3", "rougeL", "rougeLsum"];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/rouge")
        .join(name)
}

fn read_jsonl(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn expected(v: &Value) -> Score {
    let a = v.as_array().unwrap();
    Score {
        precision: a[0].as_f64().unwrap(),
        recall: a[1].as_f64().unwrap(),
        fmeasure: a[2].as_f64().unwrap(),
    }
}

fn diff(a: Score, b: Score) -> f64 {
    (a.precision - b.precision)
        .abs()
        .max((a.recall - b.recall).abs())
        .max((a.fmeasure - b.fmeasure).abs())
}

#[test]
fn porter_matches_nltk_on_every_word() {
    let text = std::fs::read_to_string(fixture("porter.tsv")).unwrap();
    let mut n = 0;
    let mut bad = Vec::new();
    for line in text.lines() {
        let (word, want) = line.split_once('\t').unwrap();
        n += 1;
        let got = porter::stem(word);
        if got != want {
            bad.push(format!("{word}: got {got}, nltk {want}"));
        }
    }
    assert!(n >= 20_000, "only {n} words");
    assert!(
        bad.is_empty(),
        "{} of {n} words differ, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(20)]
    );
}

/// Every pair, every type, both stemmer settings; via `score`, `score_batch` and the custom-tokenizer path.
#[test]
fn pairs_match_rouge_score() {
    let rows = read_jsonl("pairs.jsonl");
    assert!(rows.len() >= 2000, "only {} pairs", rows.len());
    for (key, stem) in [("nostem", false), ("stem", true)] {
        let scorer = RougeScorer::new(FIXTURE_TYPES, stem).unwrap();
        let custom =
            RougeScorer::with_tokenizer(FIXTURE_TYPES, DefaultTokenizer::new(stem)).unwrap();
        let lsum_only = RougeScorer::new(["rougeLsum"], stem).unwrap();
        let pairs: Vec<(String, String)> = rows
            .iter()
            .map(|r| {
                (
                    r["reference"].as_str().unwrap().to_string(),
                    r["prediction"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let batch = scorer.score_batch(&pairs);
        let mut failures = Vec::new();
        let mut max_diff = 0.0f64;
        let mut inexact = 0usize;
        for (i, row) in rows.iter().enumerate() {
            let (reference, prediction) = (&pairs[i].0, &pairs[i].1);
            let got = scorer.score(reference, prediction);
            let got_custom = custom.score(reference, prediction);
            assert_eq!(got, batch[i], "batch differs from score on pair {i}");
            for name in FIXTURE_TYPES {
                let want = expected(&row[key][name]);
                let d = diff(got[name], want).max(diff(got_custom[name], want));
                max_diff = max_diff.max(d);
                inexact += (got[name] != want) as usize;
                if d > TOL {
                    failures.push(format!(
                        "pair {} ({}) {key} {name}: got {:?} custom {:?} want {:?}",
                        row["id"], row["kind"], got[name], got_custom[name], want
                    ));
                }
            }
            let lsum = lsum_only.score(reference, prediction);
            assert_eq!(lsum.len(), 1);
            assert_eq!(lsum["rougeLsum"], got["rougeLsum"]);
        }
        assert!(
            failures.is_empty(),
            "{} mismatches, e.g. {:#?}",
            failures.len(),
            &failures[..failures.len().min(10)]
        );
        eprintln!(
            "{key}: {} pairs x {} types, max |diff| = {max_diff:e}, {inexact} scores not bit-identical",
            rows.len(),
            FIXTURE_TYPES.len()
        );
    }
}

#[test]
fn score_multi_matches_rouge_score() {
    let rows = read_jsonl("multi.jsonl");
    assert!(rows.len() >= 200);
    let types = ["rouge1", "rouge2", "rougeL", "rougeLsum"];
    let scorer = RougeScorer::new(types, true).unwrap();
    for (i, row) in rows.iter().enumerate() {
        let targets: Vec<&str> = row["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        let got = scorer
            .score_multi(&targets, row["prediction"].as_str().unwrap())
            .unwrap();
        for name in types {
            let want = expected(&row["stem"][name]);
            assert!(
                diff(got[name], want) <= TOL,
                "multi {i} {name}: got {:?} want {want:?}",
                got[name]
            );
        }
    }
}

#[test]
fn multi_reference_picks_best_f_and_first_on_ties() {
    let scorer = RougeScorer::new(["rouge1"], false).unwrap();
    // "a c" and "a b c d e f" both give F = 0.5 against "a b" but with different P/R: first one wins.
    let s = scorer.score_multi(&["a c", "a b c d e f"], "a b").unwrap();
    assert_eq!(s["rouge1"].precision, 0.5);
    let s = scorer.score_multi(&["a b c d e f", "a c"], "a b").unwrap();
    assert_eq!(s["rouge1"].precision, 1.0);
    // best F per type
    let s = scorer.score_multi(&["x y z", "a b", "a q"], "a b").unwrap();
    assert_eq!(s["rouge1"].fmeasure, 1.0);
    assert_eq!(
        scorer.score_multi::<&str>(&[], "a"),
        Err(MetricsError::Empty("targets"))
    );
}

#[test]
fn percentile_matches_numpy() {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("percentile.json")).unwrap())
            .unwrap();
    let q_ours = aggregate::interval_percentiles(0.95);
    for case in v["cases"].as_array().unwrap() {
        let mut values: Vec<f64> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        values.sort_by(f64::total_cmp);
        let q: Vec<f64> = case["q"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(q, q_ours, "percentile levels differ from rouge-score's");
        for (k, want) in case["percentiles"].as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap();
            let got = percentile(&values, q[k]);
            assert_eq!(got, want, "n={} q={}", values.len(), q[k]);
        }
    }
}

#[test]
fn bootstrap_is_deterministic_and_ordered() {
    let scorer = RougeScorer::new(["rouge1", "rouge2", "rougeL", "rougeLsum"], true).unwrap();
    let pairs = bench_pairs(300, 11);
    let scores = scorer.score_batch(&pairs);
    let run = |seed| {
        let mut agg = BootstrapAggregator::new().with_seed(seed);
        for s in &scores {
            agg.add_scores(s);
        }
        (agg.aggregate(), agg.mean())
    };
    let (a, mean) = run(5);
    let (b, _) = run(5);
    let (c, _) = run(6);
    assert_eq!(a, b, "same seed, same result");
    assert_ne!(a, c, "different seed, different draws");
    assert_eq!(a.types().collect::<Vec<_>>(), RougeType::DEFAULT.to_vec());
    for (t, ci) in a.iter() {
        for (lo, mid, hi, m) in [
            (
                ci.low.precision,
                ci.mid.precision,
                ci.high.precision,
                mean[t].precision,
            ),
            (ci.low.recall, ci.mid.recall, ci.high.recall, mean[t].recall),
            (
                ci.low.fmeasure,
                ci.mid.fmeasure,
                ci.high.fmeasure,
                mean[t].fmeasure,
            ),
        ] {
            assert!(lo <= mid && mid <= hi, "{t}: {lo} {mid} {hi}");
            assert!(lo < hi, "{t}: degenerate interval");
            assert!((mid - m).abs() < 0.01, "{t}: mid {mid} vs mean {m}");
            assert!(lo <= m && m <= hi, "{t}: mean outside interval");
        }
    }
    // plain mean helper agrees with the aggregator's
    assert_eq!(aggregate::mean_by_type(&scores), mean);
    // argument checks, like rouge-score
    assert!(BootstrapAggregator::with_params(1.5, 10).is_err());
    assert!(BootstrapAggregator::with_params(0.9, 0).is_err());
    let agg = BootstrapAggregator::with_params(0.9, 10).unwrap();
    assert!(agg.aggregate().is_empty());
}

#[test]
fn bootstrap_of_constant_scores_is_exact() {
    let mut agg = BootstrapAggregator::new();
    for _ in 0..50 {
        agg.add_score(RougeType::RougeL, Score::new(0.5, 0.25));
    }
    let ci = agg.aggregate()[RougeType::RougeL];
    assert_eq!(ci.low, ci.high);
    assert!((ci.mid.precision - 0.5).abs() < 1e-12);
}

#[test]
fn empty_and_degenerate_inputs() {
    let scorer = RougeScorer::new(["rouge1", "rouge2", "rougeL", "rougeLsum"], true).unwrap();
    for (t, p) in [
        ("", ""),
        ("", "a b"),
        ("a b", ""),
        ("  \n\n ", "..."),
        ("東京 😀", "東京 😀"),
    ] {
        let s = scorer.score(t, p);
        assert_eq!(s.len(), 4);
        for (_, v) in s.iter() {
            assert_eq!(*v, Score::ZERO, "{t:?} / {p:?}");
        }
    }
    let s = scorer.score("a", "a");
    assert_eq!(
        s["rouge1"],
        Score {
            precision: 1.0,
            recall: 1.0,
            fmeasure: 1.0
        }
    );
    assert_eq!(s["rouge2"], Score::ZERO); // no bigrams
    assert!(RougeScorer::new(["rouge0"], false).is_err());
    assert!(RougeScorer::new(["rougeX"], false).is_err());
    let empty = RougeScorer::new(Vec::<String>::new(), false).unwrap();
    assert!(empty.score("a", "a").is_empty());
    assert_eq!(
        scorer.score_corpus(&["a"], &["a", "b"]).unwrap_err(),
        MetricsError::LengthMismatch { left: 1, right: 2 }
    );
    assert_eq!(
        scorer.compute::<&str, &str>(&[], &[]).unwrap_err(),
        MetricsError::Empty("predictions")
    );
}

#[test]
fn custom_tokenizer_hook() {
    // A character tokenizer that keeps CJK (which the default tokenizer drops).
    let chars = |text: &str| -> Vec<String> {
        text.chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| c.to_string())
            .collect()
    };
    let scorer = RougeScorer::with_tokenizer(["rouge1", "rougeL", "rougeLsum"], chars).unwrap();
    let s = scorer.score("东京大学", "京都大学");
    assert_eq!(s["rouge1"].fmeasure, 0.75);
    assert_eq!(s["rougeL"].fmeasure, 0.75); // 京 大 学
    let default = RougeScorer::new(["rouge1"], false).unwrap();
    assert_eq!(default.score("东京大学", "京都大学")["rouge1"], Score::ZERO);
    // rougeLsum with a custom tokenizer tokenizes each line separately
    let s = scorer.score("ab\ncd", "dc\nba");
    assert_eq!(s["rougeLsum"].fmeasure, 0.5);
    // a struct tokenizer
    struct Upper;
    impl RougeTokenizer for Upper {
        fn tokenize(&self, text: &str) -> Vec<String> {
            text.split_whitespace().map(str::to_string).collect()
        }
    }
    let cased = RougeScorer::with_tokenizer(["rouge1"], Upper).unwrap();
    assert_eq!(cased.score("Cat", "cat")["rouge1"], Score::ZERO);
    assert_eq!(cased.score("Cat", "Cat")["rouge1"].fmeasure, 1.0);
    assert_eq!(
        DefaultTokenizer::new(true).tokenize("Cats RUNNING"),
        tokenize("cats running", true)
    );
}

#[test]
fn sentence_split_modes() {
    let text = "The cat sat. The dog ran away! Then it rained.";
    assert_eq!(
        split_sentences(text),
        ["The cat sat.", "The dog ran away!", "Then it rained."]
    );
    let pred = "Then it rained. The cat sat.";
    let plain = RougeScorer::new(["rougeL", "rougeLsum"], false).unwrap();
    let split = plain
        .clone()
        .sentence_split(SentenceSplit::SentencesIfNoNewline);
    let a = plain.score(text, pred);
    // without newlines rougeLsum equals rougeL (rouge-score behaviour)
    assert_eq!(a["rougeLsum"], a["rougeL"]);
    // with splitting it equals scoring the newline-joined sentences
    let b = split.score(text, pred);
    let joined = plain.score(
        &split_sentences(text).join("\n"),
        &split_sentences(pred).join("\n"),
    );
    assert_eq!(b["rougeLsum"], joined["rougeLsum"]);
    assert!(b["rougeLsum"].fmeasure > a["rougeLsum"].fmeasure);
    assert_eq!(b["rougeL"], a["rougeL"]);
    // IfNoNewline leaves newline-separated text alone
    let nl = "The cat sat. The dog ran.\nThen it rained.";
    assert_eq!(split.score(nl, pred), plain.score(nl, pred));
}

#[test]
fn accuracy_helper() {
    assert_eq!(accuracy(&[1, 2, 3, 4], &[1, 2, 0, 4]).unwrap(), 0.75);
    assert_eq!(accuracy(&["a", "b"], &["a", "b"]).unwrap(), 1.0);
    assert_eq!(
        accuracy(&[1, 2], &[1]).unwrap_err(),
        MetricsError::LengthMismatch { left: 2, right: 1 }
    );
    assert_eq!(
        accuracy::<i32, i32>(&[], &[]).unwrap_err(),
        MetricsError::Empty("predictions")
    );
    let e = accuracy(&[1], &[1, 2]).unwrap_err();
    assert!(e.to_string().contains("length mismatch"), "{e}");
}

#[test]
fn bench_pairs_are_deterministic() {
    let a = bench_pairs(50, 3);
    assert_eq!(a, bench_pairs(50, 3));
    assert_ne!(a, bench_pairs(50, 4));
    let words = |s: &str| s.split_whitespace().count();
    let avg_ref = a.iter().map(|(r, _)| words(r)).sum::<usize>() as f64 / 50.0;
    let avg_pred = a.iter().map(|(_, p)| words(p)).sum::<usize>() as f64 / 50.0;
    assert!((55.0..=65.0).contains(&avg_ref), "{avg_ref}");
    assert!((45.0..=55.0).contains(&avg_pred), "{avg_pred}");
    assert!(a.iter().all(|(r, p)| r.contains('\n') && p.contains('\n')));
}

#[test]
fn scores_serialize_like_rouge_score_dicts() {
    let scorer = RougeScorer::new(["rouge1", "rougeL"], false).unwrap();
    let s = scorer.score("a b", "a");
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["rouge1"]["precision"], 1.0);
    assert_eq!(v["rougeL"]["recall"], 0.5);
    let mut agg = BootstrapAggregator::new();
    agg.add_scores(&s);
    let v = serde_json::to_value(agg.aggregate()).unwrap();
    assert_eq!(v["rouge1"]["mid"]["recall"], 0.5);
}
