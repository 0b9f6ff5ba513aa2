//! ROUGE tokenizer (with and without the Porter stemmer) and scorer on two strings split from the input.
#![no_main]

use kiln_metrics::porter;
use kiln_metrics::rouge::{split_sentences, tokenize, RougeScorer, SentenceSplit};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    // Target and prediction are separated by the first NUL (or the whole input is both).
    let (target, prediction) = text.split_once('\0').unwrap_or((&text, &text));
    let stem = flags & 1 != 0;
    let _ = tokenize(target, stem);
    let _ = tokenize(prediction, !stem);
    for w in prediction.split_whitespace().take(64) {
        let _ = porter::stem(w);
    }
    let _ = split_sentences(target);
    let split = match (flags >> 1) % 3 {
        0 => SentenceSplit::Newline,
        1 => SentenceSplit::Sentences,
        _ => SentenceSplit::SentencesIfNoNewline,
    };
    let scorer = RougeScorer::new(["rouge1", "rouge2", "rouge3", "rougeL", "rougeLsum"], stem)
        .expect("valid rouge types")
        .sentence_split(split);
    let s = scorer.score(target, prediction);
    for (_, sc) in s.iter() {
        for x in [sc.precision, sc.recall, sc.fmeasure] {
            assert!(
                x.is_nan() || (0.0..=1.0).contains(&x),
                "score out of range: {sc:?}"
            );
        }
    }
});
