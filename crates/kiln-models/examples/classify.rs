//! Sequence classification with BERT: label probabilities for each text.
//!
//!     cargo run --release -p kiln-models --example classify -- [MODEL_DIR] [TEXT]...
//!
//! Defaults to the tiny random BERT classifier in `fixtures/bert` (its probabilities mean nothing); point it at
//! any `BertForSequenceClassification` checkpoint directory, e.g. one written by `kiln train --recipe bert-sst2`.
//! A checkpoint without a classifier gets a freshly initialised one (listed in the load report).

use std::path::PathBuf;

use burn::backend::Flex;
use burn::tensor::activation::softmax;
use kiln_models::attention::rows_f32;
use kiln_models::bert::{self, BertBatch};
use kiln_models::tokenizer::Tokenizer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/bert"))
    });
    let mut texts: Vec<String> = args.collect();
    if texts.is_empty() {
        texts = vec![
            "the script is sharp, witty and full of heart.".into(),
            "the film wastes its interesting premise on a dull, tired plot.".into(),
        ];
    }

    let device = Default::default();
    let (cfg, model, report) = bert::load_for_classification::<Flex>(&dir, &device)?;
    if !report.initialised.is_empty() {
        eprintln!("note: initialised randomly: {:?}", report.initialised);
    }
    let tok = Tokenizer::from_dir(&dir)?.with_model_vocab(cfg.vocab_size);

    // Tokenize ([CLS] … [SEP]), cut to the model's positions, right-pad into one batch.
    let encodings = texts
        .iter()
        .map(|t| tok.encode(t, Some(cfg.max_position_embeddings)))
        .collect::<Result<Vec<_>, _>>()?;
    let pad = tok.token_to_id("[PAD]").unwrap_or(0);
    let batch = BertBatch::from_encodings(&encodings, pad)?;

    let logits = model.forward_batch(&batch)?; // [texts, num_labels]
    let probs = rows_f32(softmax(logits, 1));
    for (text, p) in texts.iter().zip(&probs) {
        let labels: Vec<String> = cfg
            .id2label
            .iter()
            .zip(p)
            .map(|(label, p)| format!("{label} {p:.3}"))
            .collect();
        println!("{text:?}: {}", labels.join(", "));
    }
    Ok(())
}
