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
    #[arg(long, default_value_t = 256)]
    pub max_len: usize,
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
    let texts: Vec<&str> = a.text.iter().map(String::as_str).collect();
    let e = model
        .sentence_embeddings(&tok, &texts, Some(a.max_len))
        .map_err(s)?;
    let [n, d] = e.dims();
    let v: Vec<f32> = e
        .into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| format!("{e:?}"))?;
    let rows: Vec<&[f32]> = (0..n).map(|i| &v[i * d..(i + 1) * d]).collect();
    if a.json {
        println!(
            "{}",
            json!({"model": a.model.spec(), "dim": d, "embeddings": rows})
        );
    } else {
        for (t, r) in texts.iter().zip(&rows) {
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
    #[arg(long, short = 't', required = true)]
    pub text: Vec<String>,
    #[arg(long, default_value_t = 512)]
    pub max_len: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn classify(a: ClassifyArgs) -> Res {
    let device = backend::device()?;
    let dir = resolve_model(&a.model.spec()).map_err(s)?;
    let (cfg, model, report) =
        kiln_models::bert::load_for_classification::<Inference>(&dir, &device).map_err(s)?;
    let model = with_adapter(model, a.adapter.as_ref())?;
    if a.adapter.is_none()
        && report
            .initialised
            .iter()
            .any(|p| p.starts_with("classifier"))
    {
        eprintln!(
            "warning: {} has no classification head; it was initialised randomly",
            dir.display()
        );
    }
    let raw = kiln_models::config::RawConfig::load(&dir.join("config.json")).map_err(s)?;
    let tok = kiln_models::tokenizer::Tokenizer::from_dir(&dir)
        .map_err(s)?
        .with_model_vocab(cfg.vocab_size);
    let encs = a
        .text
        .iter()
        .map(|t| tok.encode(t, Some(a.max_len)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(s)?;
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
    for (t, p) in a.text.iter().zip(&probs) {
        let best = p
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.total_cmp(y.1))
            .map(|(i, _)| i)
            .unwrap_or(0);
        if a.json {
            println!("{}", json!({"text": t, "label": label(best), "probs": p}));
        } else {
            println!("{}\t{:.4}\t{t}", label(best), p[best]);
        }
    }
    Ok(())
}
