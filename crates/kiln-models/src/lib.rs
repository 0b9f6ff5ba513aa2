//! kiln-models: architectures, checkpoint loading, tokenizers and generation.
//!
//! The tree follows the roles (as transformers' `models/<name>/` and `generation/`):
//!
//! | module | what it holds |
//! |---|---|
//! | [`models`] | GPT-2, OPT, BERT, BART, T5, one file each, and the attention blocks they share |
//! | [`generate`] | the generation engine (greedy, sampling, beam search) and its causal and seq2seq sessions, scoring, in-context learning |
//! | [`load`] | `config.json`, safetensors weights, the hub cache, tokenizers, `model_type` dispatch, errors |
//! | [`prompt`] | prompt and prefix tuning wrapped around each model family |
//! | [`peft`] | the PEFT visitor: every linear layer of every architecture under peft's module names |
//!
//! A model file reads top to bottom like its paper: config → modules → forward → decoding session.
//!
//! The short paths below (`kiln_models::gpt2`, `kiln_models::generation`, `kiln_models::auto`, …) are the
//! crate's stable import paths; they name the same modules as the grouped ones.
//!
//! # Quick start
//!
//! Load a decoder-only checkpoint with [`CausalPipeline`](crate::load::auto::CausalPipeline), generate with
//! beam search, score a text with [`score_tokens`](crate::generate::scoring::score_tokens), and embed
//! sentences with a BERT encoder. The paths point at the tiny random checkpoints bundled in `fixtures/` (their
//! text is gibberish); any Hugging Face checkpoint directory or hub id (`"gpt2"`) works the same way. The
//! backend is any burn backend; `burn::backend::Flex` is burn's CPU backend.
//!
//! ```rust
//! use burn::backend::Flex;
//! use kiln_models::auto::CausalPipeline;
//! use kiln_models::causal::CausalSession;
//! use kiln_models::generation::{generate, GenerationConfig};
//! use kiln_models::{bert, scoring::score_tokens, tokenizer::Tokenizer};
//!
//! let device = Default::default();
//! let gpt2 = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/gpt2"); // or "gpt2" (the hub)
//! let pipe = CausalPipeline::<Flex>::load(gpt2, &device)?;
//!
//! // Beam search: 3 beams, 5 new tokens, on top of the checkpoint's generation_config.json.
//! let cfg = GenerationConfig { num_beams: 3, max_new_tokens: Some(5), ..pipe.generation.clone() };
//! let (ids, mask) = pipe.encode_left_padded(&["The film was"])?;
//! let out = generate(&mut CausalSession::new(&pipe.model), &ids, &mask, &cfg, None)?;
//! println!("{}", pipe.tokenizer.decode(&out.sequences[0][out.prompt_len..], true)?);
//!
//! // Per-token log-probabilities and perplexity of a text.
//! let enc = pipe.tokenizer.encode("The film was a delight.", None)?;
//! println!("perplexity {:.2}", score_tokens(&pipe.model, &enc.ids, false)?.perplexity);
//!
//! // Sentence embeddings (masked mean pooling, L2-normalised), one row per text.
//! let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/bert"));
//! let (_, encoder, _) = bert::load::<Flex>(dir, &device)?;
//! let tok = Tokenizer::from_dir(dir)?;
//! let emb = encoder.sentence_embeddings(&tok, &["a great film", "a dull plot"], None)?;
//! assert_eq!(emb.dims()[0], 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! More in `crates/kiln-models/examples/`: `generate`, `summarize_with_adapter` (BART + a PEFT LoRA adapter),
//! `classify` and `embed_similarity` (`cargo run --release -p kiln-models --example generate`).

#![warn(missing_docs)]

pub mod generate;
pub mod load;
pub mod models;
pub mod peft;
pub mod prompt;

pub use generate::engine as generation;
pub use generate::{causal, icl, scoring, seq2seq};
pub use load::{auto, config, error, hub, tokenizer, weights};
pub use models::{attention, bart, bert, gpt2, opt, t5};
pub use prompt::bert as prompt_bert;
pub use prompt::seq2seq as prompt_seq2seq;

pub use error::{Error, Result};
