//! Parallel tokenization, truncation, seq2seq targets and prompts.

use kiln_data::*;

use crate::common::*;

fn train() -> Vec<SentimentExample> {
    load_sst2(
        &sample("sentiment/train.tsv"),
        Split::Train,
        &LoadOptions::default(),
    )
    .unwrap()
    .examples
}

#[test]
fn sentiment_matches_sequential_encoding_and_truncates() {
    let tok = bert_tokenizer();
    let ex = train();
    let full = tokenize_sentiment(&tok, &ex, None).unwrap();
    assert_eq!(full.features.len(), ex.len());
    assert_eq!(full.truncated, 0);
    for (f, e) in full.features.iter().zip(&ex) {
        let want = tok.encode(&e.sentence, None).unwrap();
        assert_eq!(f.input_ids, want.ids, "order must be kept");
        assert_eq!(f.token_type_ids, want.type_ids);
        assert_eq!(f.target, Target::Class(e.label));
    }
    let max = 10;
    let cut = tokenize_sentiment(&tok, &ex, Some(max)).unwrap();
    let longer = full
        .features
        .iter()
        .filter(|f| f.input_ids.len() > max)
        .count();
    assert!(
        longer > 0,
        "the fixture should have sentences over {max} tokens"
    );
    assert_eq!(cut.truncated, longer);
    let sep = tok.token_to_id("[SEP]").unwrap();
    for (c, f) in cut.features.iter().zip(&full.features) {
        assert!(c.input_ids.len() <= max);
        assert_eq!(
            *c.input_ids.last().unwrap(),
            sep,
            "special tokens survive truncation"
        );
        if f.input_ids.len() <= max {
            assert_eq!(c.input_ids, f.input_ids);
        } else {
            assert_eq!(c.input_ids[..max - 1], f.input_ids[..max - 1]);
        }
    }
}

#[test]
fn rows_longer_than_the_model_are_cut_not_a_panic() {
    let tok = bert_tokenizer();
    // The fixture BERT's max_position_embeddings is 64.
    let long = SentimentExample {
        idx: 0,
        sentence: "the film is long and dull . ".repeat(500),
        label: 0,
    };
    let t = tokenize_sentiment(&tok, &[long.clone()], Some(64)).unwrap();
    assert_eq!(t.truncated, 1);
    assert_eq!(t.features[0].input_ids.len(), 64);
    assert!(matches!(
        tokenize_sentiment(&tok, &[long.clone()], Some(0)),
        Err(Error::Input(_))
    ));
    // Shorter than the special tokens: an error or a result, never a panic.
    let _ = tokenize_sentiment(&tok, &[long], Some(1));
    let empty = SentimentExample {
        idx: 0,
        sentence: String::new(),
        label: 1,
    };
    let t = tokenize_sentiment(&tok, &[empty], Some(64)).unwrap();
    assert_eq!(t.features[0].input_ids.len(), 2, "[CLS] [SEP]");
}

#[test]
fn seq2seq_summaries() {
    let tok = t5_tokenizer();
    let ex: Vec<Seq2SeqExample> = load_cnndm(
        &sample("cnndm/validation.jsonl"),
        Split::Validation,
        &LoadOptions::default(),
    )
    .unwrap()
    .examples
    .iter()
    .map(|e| e.to_seq2seq("summarize: "))
    .collect();
    assert!(ex[0].source.starts_with("summarize: "));
    let lengths = Seq2SeqLengths {
        max_source_len: Some(48),
        max_target_len: Some(12),
    };
    let t = tokenize_seq2seq(&tok, &ex, lengths).unwrap();
    assert_eq!(t.features.len(), 10);
    assert_eq!(t.truncated, 10, "every article is longer than 48 tokens");
    let eos = tok.token_to_id("</s>").unwrap();
    let mut cut_targets = 0;
    for (f, e) in t.features.iter().zip(&ex) {
        assert!(f.input_ids.len() <= 48);
        assert_eq!(*f.input_ids.last().unwrap(), eos);
        let Target::Tokens(y) = &f.target else {
            panic!("expected token targets")
        };
        assert!(y.len() <= 12 && *y.last().unwrap() == eos);
        if tok.encode(&e.target, None).unwrap().ids.len() > 12 {
            cut_targets += 1;
        }
    }
    assert_eq!(t.truncated_targets, cut_targets);
}

#[test]
fn t5_sentiment_prompt() {
    let p = PromptTemplate::default();
    assert_eq!(
        p.render("a gem."),
        "Sentiment analysis: a gem. The sentiment is [MASK]."
    );
    assert_eq!(p.target(1), Some("positive"));
    assert_eq!(p.target(0), Some("negative"));
    assert_eq!(p.target(-1), None);
    assert_eq!(p.parse(" Positive."), Some(1));
    assert_eq!(p.parse("negative"), Some(0));
    assert_eq!(p.parse("neutral"), None);
    let ex = load_sst2(
        &sample("sentiment/validation.jsonl"),
        Split::Validation,
        &LoadOptions::default(),
    )
    .unwrap()
    .examples;
    let pairs = p.apply(&ex);
    assert_eq!(pairs.len(), 60);
    assert_eq!(pairs[0].source, p.render(&ex[0].sentence));
    let test = load_sst2(
        &sample("sentiment/test.jsonl"),
        Split::Test,
        &LoadOptions::default(),
    )
    .unwrap()
    .examples;
    assert!(p.apply(&test).is_empty(), "unlabeled rows have no target");

    let custom = PromptTemplate::new("Review: {sentence}\nSentiment:", "good", "bad").unwrap();
    assert_eq!(custom.render("ok"), "Review: ok\nSentiment:");
    assert_eq!(
        custom.to_seq2seq(&ex[0]).unwrap().target,
        if ex[0].label == 1 { "good" } else { "bad" }
    );
    assert!(PromptTemplate::new("no placeholder", "a", "b").is_err());

    let tok = t5_tokenizer();
    let t = tokenize_seq2seq(
        &tok,
        &pairs,
        Seq2SeqLengths {
            max_source_len: Some(64),
            max_target_len: Some(8),
        },
    )
    .unwrap();
    assert_eq!(t.features.len(), 60);
}
