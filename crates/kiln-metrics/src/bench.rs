//! Deterministic synthetic (reference, prediction) pairs for benchmarking ROUGE.
//!
//! [`bench_pairs`] builds ~60-word references (3–5 sentences, one per line, capitalised, with punctuation
//! and the odd number) and ~50-word predictions that reuse, reorder, inflect and replace reference words,
//! so all four default types and the stemmer have real work to do. The same pairs, written as JSONL by the
//! `rouge_bench` example, are timed with rouge-score by `fixtures/rouge/bench_reference.py`.

use crate::util::SplitMix64;

#[rustfmt::skip]
const WORDS: &[&str] = &[
    "the", "a", "of", "to", "and", "in", "is", "was", "for", "on", "with", "as", "by", "at", "from", "that",
    "this", "it", "its", "their", "they", "he", "she", "we", "model", "models", "training", "trained", "data",
    "dataset", "results", "result", "performance", "improved", "improves", "improvement", "significant",
    "significantly", "government", "governments", "announced", "announcement", "policy", "policies",
    "economic", "economy", "growth", "market", "markets", "company", "companies", "reported", "reporting",
    "quarterly", "earnings", "revenue", "increase", "increased", "increasing", "decline", "declined",
    "declining", "city", "cities", "council", "residents", "community", "communities", "officials", "said",
    "says", "saying", "according", "statement", "statements", "investigation", "investigators", "police",
    "researchers", "research", "study", "studies", "university", "universities", "scientists", "discovered",
    "discovery", "evidence", "climate", "change", "changes", "changing", "temperature", "temperatures",
    "weather", "storm", "storms", "flooding", "floods", "hospital", "hospitals", "patients", "patient",
    "treatment", "treatments", "health", "healthy", "doctors", "medical", "school", "schools", "students",
    "student", "teachers", "education", "national", "international", "nationally", "federal", "election",
    "elections", "voters", "voting", "campaign", "campaigns", "president", "minister", "ministers", "leaders",
    "leadership", "agreement", "agreements", "negotiations", "negotiated", "players", "player", "team",
    "teams", "season", "seasons", "match", "matches", "scored", "scoring", "victory", "victories", "defeated",
    "championship", "running", "runner", "runs", "ran", "quickly", "quick", "slowly", "happily", "happiness",
    "useful", "usefulness", "generalization", "relational", "conditional", "effective", "effectiveness",
    "activity", "activities", "operation", "operations", "operator", "connected", "connecting", "connection",
    "connections", "building", "buildings", "built", "develop", "developed", "development", "developments",
    "technology", "technologies", "technological", "system", "systems", "systematic", "million", "billion",
    "percent", "year", "years", "month", "months", "week", "weeks", "day", "days", "new", "old", "large",
    "larger", "largest", "small", "smaller", "important", "importance", "public", "private", "local",
    "global", "security", "secure", "financial", "finance", "energy", "power", "powerful", "water", "food",
    "prices", "price", "cost", "costs", "costly",
];

fn pick<'a>(rng: &mut SplitMix64, words: &'a [&'a str]) -> &'a str {
    words[rng.below(words.len() as u64) as usize]
}

fn capitalise(w: &str) -> String {
    let mut c = w.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Joins words into 3–5 sentences of roughly equal length, one per line.
fn render(rng: &mut SplitMix64, words: &[String]) -> String {
    let n_sent = 3 + rng.below(3) as usize;
    let per = words.len().div_ceil(n_sent).max(1);
    let mut lines = Vec::new();
    for chunk in words.chunks(per) {
        let mut s = String::new();
        for (i, w) in chunk.iter().enumerate() {
            if i > 0 {
                s.push_str(if rng.below(12) == 0 { ", " } else { " " });
            }
            if i == 0 {
                s.push_str(&capitalise(w));
            } else {
                s.push_str(w);
            }
        }
        s.push(if rng.below(10) == 0 { '!' } else { '.' });
        lines.push(s);
    }
    lines.join("\n")
}

/// `n` deterministic (reference, prediction) pairs of ~60 / ~50 words (see the module docs).
pub fn bench_pairs(n: usize, seed: u64) -> Vec<(String, String)> {
    let mut rng = SplitMix64::new(seed ^ 0x005e_ed0f_b39c);
    let inflect = ["s", "ing", "ed", "ly", "ness"];
    (0..n)
        .map(|_| {
            let ref_len = 55 + rng.below(11) as usize;
            let mut reference: Vec<String> = (0..ref_len)
                .map(|_| {
                    if rng.below(25) == 0 {
                        format!("{}", rng.below(2030))
                    } else {
                        pick(&mut rng, WORDS).to_string()
                    }
                })
                .collect();
            // predictions: mostly reference words in order, some replaced / inflected / dropped / swapped
            let pred_len = 45 + rng.below(11) as usize;
            let mut prediction: Vec<String> = Vec::with_capacity(pred_len);
            let mut i = rng.below(6) as usize;
            while prediction.len() < pred_len {
                let r = rng.next_f64();
                let w = if r < 0.55 && i < reference.len() {
                    reference[i].clone()
                } else if r < 0.70 && i < reference.len() {
                    format!("{}{}", reference[i], pick(&mut rng, &inflect))
                } else {
                    pick(&mut rng, WORDS).to_string()
                };
                prediction.push(w);
                i += 1 + (rng.below(5) == 0) as usize;
            }
            for _ in 0..3 {
                let k = rng.below(prediction.len() as u64 - 1) as usize;
                prediction.swap(k, k + 1);
            }
            if rng.below(2) == 0 {
                reference.swap(0, 1);
            }
            (render(&mut rng, &reference), render(&mut rng, &prediction))
        })
        .collect()
}
