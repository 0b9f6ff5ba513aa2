//! `kiln score`: per-token log-probabilities of a text (decoder-only models) or of a target given a source
//! (encoder-decoders, teacher-forced as transformers' `model(input_ids, labels=…)`), with or without an adapter.

use std::path::PathBuf;

use clap::Args;
use kiln_models::auto::{resolve_model, CausalPipeline, Seq2SeqPipeline};
use kiln_models::config::RawConfig;
use serde_json::json;

use crate::backend::{self, Inference};

use super::*;

#[derive(Args, Debug)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// The text to score (decoder-only models), or the target (encoder-decoders, with --source).
    #[arg(
        long,
        short = 't',
        required_unless_present = "input",
        conflicts_with = "input"
    )]
    pub text: Option<String>,
    /// Encoder-decoders: the source (encoder input) the target is scored against.
    #[arg(long, conflicts_with = "input")]
    pub source: Option<String>,
    /// JSONL with a `text` field per line (and `source` for encoder-decoders); one JSON result per line.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// A PEFT adapter directory: LoRA, or prompt / prefix tuning.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Include the full next-token logits of every scored position in the JSON.
    #[arg(long)]
    pub logits: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn score(a: ScoreArgs) -> Res {
    if a.logits && !a.json && a.input.is_none() {
        return Err("--logits adds the full logits to the JSON output: use it with --json".into());
    }
    // (source, text) pairs, from the flags or the JSONL file.
    let rows: Vec<(Option<String>, String)> = match &a.input {
        Some(p) => read_jsonl(p)?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let source = match v.get("source") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(_) => Some(field(v, "source", p, i + 1)?),
                };
                Ok((source, field(v, "text", p, i + 1)?))
            })
            .collect::<Result<_, String>>()?,
        None => vec![(a.source.clone(), a.text.clone().unwrap_or_default())],
    };
    let device = backend::device()?;
    let dir = resolve_model(&a.model.spec()).map_err(s)?;
    let model_type = RawConfig::load(&dir.join("config.json"))
        .and_then(|r| r.model_type())
        .map_err(s)?;
    let seq2seq = matches!(model_type.as_str(), "t5" | "mt5" | "bart");
    let spec = dir.display().to_string();
    let batch = a.input.is_some();
    if seq2seq {
        if let Some(i) = rows.iter().position(|(src, _)| src.is_none()) {
            return Err(format!(
                "{model_type} is an encoder-decoder: give the source with --source (or a `source` field; row {})",
                i + 1
            ));
        }
        let mut pipe = Seq2SeqPipeline::<Inference>::load(&spec, &device).map_err(s)?;
        let start = pipe.generation.decoder_start().map_err(s)?;
        let prompt = match a.adapter.as_ref() {
            Some(d) if is_prompt_adapter(d)? => Some(
                kiln_models::prompt_seq2seq::Seq2SeqPromptModel::from_pretrained(
                    pipe.model.clone(),
                    d,
                    false,
                )
                .map_err(s)?,
            ),
            _ => {
                pipe.model = with_adapter(pipe.model, a.adapter.as_ref())?;
                None
            }
        };
        for (src, text) in &rows {
            let src = src.as_deref().unwrap_or_default();
            let (src_ids, _, truncated) = pipe.encode_right_padded(&[src], None).map_err(s)?;
            if truncated > 0 {
                eprintln!("warning: source truncated to the model's maximum source length");
            }
            let tgt = pipe.tokenizer.encode(text, None).map_err(s)?.ids;
            let sc = match &prompt {
                Some(pm) => {
                    kiln_models::scoring::score_seq2seq(pm, &src_ids[0], &tgt, start, a.logits)
                }
                None => kiln_models::scoring::score_seq2seq(
                    &pipe.model,
                    &src_ids[0],
                    &tgt,
                    start,
                    a.logits,
                ),
            }
            .map_err(s)?;
            let tokens = token_texts(&pipe.tokenizer, &sc.ids);
            if a.json || batch {
                print_with_tokens(&sc, tokens)?;
            } else {
                for ((id, lp), t) in sc.ids.iter().zip(&sc.logprobs).zip(&tokens) {
                    println!("{id:>6} {lp:>12.5}  {t:?}");
                }
                println!(
                    "sequence log-prob: {:.5}  perplexity: {:.4}",
                    sc.sum, sc.perplexity
                );
            }
        }
        return Ok(());
    }
    if rows.iter().any(|(src, _)| src.is_some()) {
        return Err(format!(
            "{model_type} is a decoder-only model: --source (a `source` field) is for encoder-decoders"
        ));
    }
    let mut pipe = CausalPipeline::<Inference>::load(&spec, &device).map_err(s)?;
    let prompt = match a.adapter.as_ref() {
        Some(d) if is_prompt_adapter(d)? => Some(
            kiln_models::prompt::PromptModel::from_pretrained(pipe.model.clone(), d, false)
                .map_err(s)?,
        ),
        _ => {
            pipe.model = with_adapter(pipe.model, a.adapter.as_ref())?;
            None
        }
    };
    for (_, text) in &rows {
        let enc = pipe.tokenizer.encode(text, None).map_err(s)?;
        let sc = match &prompt {
            Some(pm) => pm.score_tokens(&enc.ids, a.logits),
            None => kiln_models::scoring::score_tokens(&pipe.model, &enc.ids, a.logits),
        }
        .map_err(s)?;
        if a.json || batch {
            print_with_tokens(&sc, token_texts(&pipe.tokenizer, &sc.ids))?;
        } else {
            for (i, lp) in sc.logprobs.iter().enumerate() {
                let t = pipe
                    .tokenizer
                    .decode(&[sc.ids[i + 1]], false)
                    .unwrap_or_default();
                println!("{:>6} {:>12.5}  {:?}", sc.ids[i + 1], lp, t);
            }
            println!("perplexity: {:.4}", sc.perplexity);
        }
    }
    Ok(())
}

/// Each id decoded on its own (special tokens kept), for reports.
fn token_texts(tok: &kiln_models::tokenizer::Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter()
        .map(|&i| tok.decode(&[i], false).unwrap_or_default())
        .collect()
}

/// One JSON line: the scores with the decoded `tokens` beside them.
fn print_with_tokens<T: serde::Serialize>(scores: &T, tokens: Vec<String>) -> Res {
    let mut v = serde_json::to_value(scores).map_err(s)?;
    v["tokens"] = json!(tokens);
    println!("{v}");
    Ok(())
}
