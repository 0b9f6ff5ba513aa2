//! Greedy decoding and beam search with a decoder-only model (GPT-2 / OPT).
//!
//!     cargo run --release -p kiln-models --example generate -- [PROMPT] [MODEL_DIR_OR_HUB_ID]
//!
//! Defaults to the tiny random GPT-2 in `fixtures/gpt2` (its text is gibberish); pass `gpt2` or
//! `facebook/opt-125m` (downloaded into the Hugging Face cache) for real text.

use burn::backend::Flex;
use kiln_models::auto::CausalPipeline;
use kiln_models::causal::CausalSession;
use kiln_models::generation::{generate, EarlyStopping, GenerationConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let prompt = args.next().unwrap_or_else(|| "The film was".to_string());
    let model = args
        .next()
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/gpt2").to_string());

    let device = Default::default();
    let pipe = CausalPipeline::<Flex>::load(&model, &device)?;
    // Prompts are tokenized and left-padded to one length (one prompt here).
    let (ids, mask) = pipe.encode_left_padded(&[prompt.as_str()])?;

    // Start from the checkpoint's generation_config.json (eos / pad / bos ids), as transformers does.
    let greedy = GenerationConfig {
        max_new_tokens: Some(20),
        ..pipe.generation.clone()
    };
    let beam = GenerationConfig {
        num_beams: 5,
        no_repeat_ngram_size: 2,
        early_stopping: EarlyStopping::True,
        num_return_sequences: 3,
        ..greedy.clone()
    };

    for (name, cfg) in [("greedy", &greedy), ("beam search (5 beams)", &beam)] {
        // A fresh session per call: it holds the KV cache.
        let out = generate(&mut CausalSession::new(&pipe.model), &ids, &mask, cfg, None)?;
        println!("== {name}");
        for (i, seq) in out.sequences.iter().enumerate() {
            let text = pipe.tokenizer.decode(&seq[out.prompt_len..], true)?;
            match &out.sequences_scores {
                Some(scores) => println!("{}. [{:.4}] {prompt}{text}", i + 1, scores[i]),
                None => println!("{prompt}{text}"),
            }
        }
    }
    Ok(())
}
