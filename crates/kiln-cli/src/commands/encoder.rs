//! Encoder (BERT) models: `kiln embed`, `kiln classify`.

use std::path::PathBuf;

use clap::Args;
use kiln_models::auto::resolve_model;
use serde_json::json;

use crate::backend::{self, Inference};

use super::*;

#[derive(Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Text to embed; repeat for several.
    #[arg(long, short = 't', required = true)]
    pub text: Vec<String>,
    /// A second text per --text, in order: the pair is encoded together (`[CLS] a [SEP] b [SEP]`, token types
    /// 0/1) and mean-pooled, as sentence-transformers' cross-encoding inputs are.
    #[arg(long)]
    pub text_pair: Vec<String>,
    /// Tokens kept per text (longer texts are truncated, with a warning); default and cap: the model's
    /// `max_position_embeddings`.
    #[arg(long)]
    pub max_len: Option<usize>,
    #[arg(long)]
    pub json: bool,
}

pub fn embed(a: EmbedArgs) -> Res {
    let device = backend::device()?;
    let dir = resolve_model(&a.model.spec()).map_err(s)?;
    let (cfg, model, _) = kiln_models::bert::load::<Inference>(&dir, &device).map_err(s)?;
    let tok = kiln_models::tokenizer::Tokenizer::from_dir(&dir)
        .map_err(s)?
        .with_model_vocab(cfg.vocab_size);
    let rows = flag_rows(&a.text, &a.text_pair)?;
    let max_len = max_len_for(a.max_len, cfg.max_position_embeddings);
    let encs = encode_rows(&tok, &rows, max_len)?;
    let pad = tok.token_to_id("[PAD]").unwrap_or(0);
    let e = model.embeddings_of(&encs, pad).map_err(s)?;
    let [n, d] = e.dims();
    let v: Vec<f32> = e
        .into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| format!("{e:?}"))?;
    let embeddings: Vec<&[f32]> = (0..n).map(|i| &v[i * d..(i + 1) * d]).collect();
    if a.json {
        println!(
            "{}",
            json!({"model": a.model.spec(), "dim": d, "embeddings": embeddings})
        );
    } else {
        for ((t, _), r) in rows.iter().zip(&embeddings) {
            let head: Vec<String> = r.iter().take(6).map(|x| format!("{x:.4}")).collect();
            println!("{t:?}: [{} …] (dim {d})", head.join(", "));
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// A LoRA adapter directory in the PEFT format.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Text to classify; repeat for several.
    #[arg(
        long,
        short = 't',
        required_unless_present = "input",
        conflicts_with = "input"
    )]
    pub text: Vec<String>,
    /// The second text of a sentence pair (NLI, paraphrase: `[CLS] a [SEP] b [SEP]`, token types 0/1), one per
    /// --text, in order.
    #[arg(long, conflicts_with = "input")]
    pub text_pair: Vec<String>,
    /// JSONL with a `text` field per line, and `text_pair` for sentence pairs.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Tokens kept per text (longer texts are truncated, with a warning); default and cap: the model's
    /// `max_position_embeddings`.
    #[arg(long)]
    pub max_len: Option<usize>,
    #[arg(long)]
    pub json: bool,
}

pub fn classify(a: ClassifyArgs) -> Res {
    let rows: Vec<(String, Option<String>)> = match &a.input {
        Some(p) => read_jsonl(p)?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let pair = match v.get("text_pair") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(_) => Some(field(v, "text_pair", p, i + 1)?),
                };
                Ok((field(v, "text", p, i + 1)?, pair))
            })
            .collect::<Result<_, String>>()?,
        None => flag_rows(&a.text, &a.text_pair)?,
    };
    let device = backend::device()?;
    let dir = resolve_model(&a.model.spec()).map_err(s)?;
    let (cfg, model, report) =
        kiln_models::bert::load_for_classification::<Inference>(&dir, &device).map_err(s)?;
    let model = with_adapter(model, a.adapter.as_ref())?;
    if let Some(w) = random_head_warning(&dir, &report.initialised, a.adapter.as_ref())? {
        eprintln!("warning: {w}");
    }
    let raw = kiln_models::config::RawConfig::load(&dir.join("config.json")).map_err(s)?;
    let tok = kiln_models::tokenizer::Tokenizer::from_dir(&dir)
        .map_err(s)?
        .with_model_vocab(cfg.vocab_size);
    let max_len = max_len_for(a.max_len, cfg.max_position_embeddings);
    let encs = encode_rows(&tok, &rows, max_len)?;
    let pad = tok.token_to_id("[PAD]").unwrap_or(0);
    let batch = kiln_models::bert::BertBatch::from_encodings(&encs, pad).map_err(s)?;
    let logits = model.forward_batch(&batch).map_err(s)?;
    let probs = kiln_models::attention::rows_f32(burn::tensor::activation::softmax(logits, 1));
    let label = |i: usize| {
        raw.map
            .get("id2label")
            .and_then(|m| m.get(i.to_string()))
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or(format!("LABEL_{i}"))
    };
    for ((t, pair), p) in rows.iter().zip(&probs) {
        let best = p
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.total_cmp(y.1))
            .map(|(i, _)| i)
            .unwrap_or(0);
        if a.json || a.input.is_some() {
            let mut v = json!({"text": t, "label": label(best), "probs": p});
            if let Some(b) = pair {
                v["text_pair"] = json!(b);
            }
            println!("{v}");
        } else {
            match pair {
                Some(b) => println!("{}\t{:.4}\t{t}\t{b}", label(best), p[best]),
                None => println!("{}\t{:.4}\t{t}", label(best), p[best]),
            }
        }
    }
    Ok(())
}

/// `--max-len`, defaulting to the model's positions and never more (with a warning when asked for more).
fn max_len_for(flag: Option<usize>, positions: usize) -> usize {
    match flag {
        Some(m) if m > positions => {
            eprintln!("warning: --max-len {m} is more than the model's {positions} positions; using {positions}");
            positions
        }
        Some(m) => m,
        None => positions,
    }
}

/// `--text` with its `--text-pair` (one second text per text, or none) as rows.
fn flag_rows(text: &[String], pair: &[String]) -> Result<Vec<(String, Option<String>)>, String> {
    if !pair.is_empty() && pair.len() != text.len() {
        return Err(format!(
            "{} --text-pair for {} --text: give one second text per text",
            pair.len(),
            text.len()
        ));
    }
    Ok(text
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), pair.get(i).cloned()))
        .collect())
}

/// Encode texts and sentence pairs (`[CLS] a [SEP] b [SEP]`, token types 0/1), cut to `max_len` tokens, with a
/// warning counting the texts that were cut.
fn encode_rows(
    tok: &kiln_models::tokenizer::Tokenizer,
    rows: &[(String, Option<String>)],
    max_len: usize,
) -> Result<Vec<kiln_models::tokenizer::Encoding>, String> {
    let encs = rows
        .iter()
        .map(|(t, pair)| match pair {
            Some(b) => tok.encode_pair(t, b, Some(max_len)),
            None => tok.encode(t, Some(max_len)),
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(s)?;
    let cut = encs.iter().filter(|e| e.truncated).count();
    if cut > 0 {
        eprintln!(
            "warning: {cut} of {} texts were longer than {max_len} tokens and were truncated",
            encs.len()
        );
    }
    Ok(encs)
}
