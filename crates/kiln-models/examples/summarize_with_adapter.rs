//! Summarize an article with an encoder-decoder model (BART / T5) plus a PEFT LoRA adapter.
//!
//!     cargo run --release -p kiln-models --example summarize_with_adapter -- [ARTICLE_FILE] [MODEL] [ADAPTER_DIR]
//!
//! Defaults: the tiny random BART in `fixtures/bart`, the LoRA adapter `fixtures/peft/bart-lora` (written by
//! Python peft for that model) and the first article of `fixtures/samples/cnndm/validation.jsonl`. The adapter
//! directory is what peft's `save_pretrained` (or `kiln train --recipe bart-lora-cnndm`) writes:
//! `adapter_config.json` + `adapter_model.safetensors`.

use std::path::Path;

use burn::backend::Flex;
use kiln_models::auto::Seq2SeqPipeline;
use kiln_models::generation::GenerationConfig;
use kiln_peft::LoraModel;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
    let mut args = std::env::args().skip(1);
    let article = match args.next() {
        Some(file) => std::fs::read_to_string(file)?,
        None => {
            let jsonl =
                std::fs::read_to_string(format!("{fixtures}/samples/cnndm/validation.jsonl"))?;
            let first: serde_json::Value =
                serde_json::from_str(jsonl.lines().next().unwrap_or("{}"))?;
            first["article"].as_str().unwrap_or_default().to_string()
        }
    };
    let model = args.next().unwrap_or_else(|| format!("{fixtures}/bart"));
    let adapter = args
        .next()
        .unwrap_or_else(|| format!("{fixtures}/peft/bart-lora"));

    let device = Default::default();
    let mut pipe = Seq2SeqPipeline::<Flex>::load(&model, &device)?;
    // Attach the adapter (checked against the model: every key, shape and rank) and keep the wrapped model;
    // its forward passes now include the LoRA branches.
    pipe.model = LoraModel::from_pretrained(pipe.model, Path::new(&adapter), false)?.model;

    // Sources are cut to the model's positions (1024 for bart-base) and right-padded.
    let (ids, mask, truncated) = pipe.encode_right_padded(&[article.as_str()], Some(1024))?;
    if truncated > 0 {
        eprintln!("note: the article was truncated to the model's maximum source length");
    }
    let cfg = GenerationConfig {
        num_beams: 4,
        max_new_tokens: Some(40),
        no_repeat_ngram_size: 3,
        ..pipe.generation.clone()
    };
    let out = kiln_models::seq2seq::generate(&pipe.model, &ids, &mask, &cfg, None)?;
    let summary = pipe.tokenizer.decode(&out.sequences[0], true)?;
    println!("{}", summary.trim());
    Ok(())
}
