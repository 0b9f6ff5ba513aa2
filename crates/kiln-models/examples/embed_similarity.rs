//! Sentence embeddings with a BERT encoder (sentence-transformers' mean pooling + L2 normalisation) and
//! their cosine-similarity matrix.
//!
//!     cargo run --release -p kiln-models --example embed_similarity -- [MODEL_DIR] [SENTENCE]...
//!
//! Defaults to the tiny random BERT in `fixtures/bert` (its similarities mean nothing). For real embeddings use
//! all-MiniLM-L6-v2: `cargo xtask fetch-minilm`, then pass `target/kiln-cache/all-MiniLM-L6-v2`.

use std::path::PathBuf;

use burn::backend::Flex;
use kiln_models::attention::rows_f32;
use kiln_models::bert;
use kiln_models::tokenizer::Tokenizer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/bert"))
    });
    let mut sentences: Vec<String> = args.collect();
    if sentences.is_empty() {
        sentences = vec![
            "A man is playing a guitar.".into(),
            "Someone plays an instrument.".into(),
            "The stock market fell sharply today.".into(),
        ];
    }
    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();

    let device = Default::default();
    let (cfg, encoder, _) = bert::load::<Flex>(&dir, &device)?;
    let tok = Tokenizer::from_dir(&dir)?.with_model_vocab(cfg.vocab_size);
    let emb = encoder.sentence_embeddings(&tok, &texts, Some(256))?; // [n, hidden], unit rows
    println!(
        "{} embeddings of dimension {}",
        emb.dims()[0],
        emb.dims()[1]
    );

    // Rows have unit norm, so cosine similarity is a dot product: E · Eᵀ.
    let sim = rows_f32(emb.clone().matmul(emb.transpose()));
    for (i, row) in sim.iter().enumerate() {
        let cells: Vec<String> = row.iter().map(|s| format!("{s:6.3}")).collect();
        println!("{}  {:?}", cells.join(" "), texts[i]);
    }
    Ok(())
}
