//! `kiln bench`: kiln's side of `cargo xtask bench` — real-size models with random init from the real
//! configs (no weights needed), warm-up, repetitions, median/min/max. Prints one JSON object.

use std::path::PathBuf;
use std::time::Instant;

use burn::prelude::*;
use clap::Args;
use kiln_models::causal::CausalSession;
use kiln_models::config::RawConfig;
use kiln_models::generation::{generate, GenerationConfig};
use serde_json::{json, Value};

use crate::backend::{self, Inference};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// generate | bert
    pub what: String,
    /// Directory with the real configs (gpt2.json, bert-base-uncased.json).
    #[arg(long, default_value = "bench/configs")]
    pub configs: PathBuf,
    #[arg(long)]
    pub quick: bool,
}

fn stats(mut ts: Vec<f64>) -> Value {
    ts.sort_by(|a, b| a.total_cmp(b));
    json!({"median_s": ts[ts.len() / 2], "min_s": ts[0], "max_s": ts[ts.len() - 1], "reps": ts.len()})
}

fn time<F: FnMut() -> Result<(), String>>(reps: usize, mut f: F) -> Result<Value, String> {
    f()?; // warm-up
    let mut ts = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        ts.push(t.elapsed().as_secs_f64());
    }
    Ok(stats(ts))
}

pub fn bench(a: BenchArgs) -> Result<(), String> {
    let device = backend::device()?;
    Inference::seed(&device, 0);
    let s = |e: kiln_models::Error| e.to_string();
    let mut results = serde_json::Map::new();
    match a.what.as_str() {
        "generate" => {
            let raw = RawConfig::load(&a.configs.join("gpt2.json")).map_err(s)?;
            let cfg = kiln_models::gpt2::Gpt2Config::from_raw(&raw).map_err(s)?;
            let model = cfg.init::<Inference>(&device);
            let prompt: Vec<u32> = (0..16).map(|i| (i * 2957 + 11) % 50257).collect();
            let mask = vec![vec![1u8; 16]];
            let reps = if a.quick { 1 } else { 3 };
            let new = if a.quick { 32 } else { 128 };
            let greedy = GenerationConfig {
                max_new_tokens: Some(new),
                min_new_tokens: new,
                eos_token_id: vec![50256],
                pad_token_id: Some(50256),
                ..Default::default()
            };
            let mut g = time(reps, || {
                generate(
                    &mut CausalSession::new(&model),
                    &[prompt.clone()],
                    &mask,
                    &greedy,
                    None,
                )
                .map(|_| ())
                .map_err(s)
            })?;
            g["tokens_per_s"] = json!(new as f64 / g["median_s"].as_f64().unwrap());
            results.insert("gpt2_greedy".into(), g);
            let bnew = if a.quick { 16 } else { 64 };
            let beam = GenerationConfig {
                num_beams: 5,
                no_repeat_ngram_size: 2,
                max_new_tokens: Some(bnew),
                min_new_tokens: bnew,
                ..greedy.clone()
            };
            let mut b = time(reps, || {
                generate(
                    &mut CausalSession::new(&model),
                    &[prompt.clone()],
                    &mask,
                    &beam,
                    None,
                )
                .map(|_| ())
                .map_err(s)
            })?;
            b["tokens_per_s"] = json!(bnew as f64 / b["median_s"].as_f64().unwrap());
            results.insert("gpt2_beam5".into(), b);
        }
        "bert" => {
            let raw = RawConfig::load(&a.configs.join("bert-base-uncased.json")).map_err(s)?;
            let cfg = kiln_models::bert::BertConfig::from_raw(&raw).map_err(s)?;
            let model = cfg.init::<Inference>(&device);
            let ids: Vec<Vec<u32>> = (0..16)
                .map(|r| {
                    (0..64)
                        .map(|i| ((r * 64 + i) * 7919 % 30522) as u32)
                        .collect()
                })
                .collect();
            let batch = kiln_models::bert::BertBatch {
                token_type_ids: vec![vec![0; 64]; 16],
                attention_mask: vec![vec![1; 64]; 16],
                input_ids: ids,
            };
            let r = time(if a.quick { 2 } else { 5 }, || {
                let out = model.forward_batch(&batch).map_err(s)?;
                let _ = out.last_hidden_state.into_data();
                Ok(())
            })?;
            results.insert("bert_forward_b16_s64".into(), r);
        }
        "seq2seq" => {
            let raw = RawConfig::load(&a.configs.join("bart-base.json")).map_err(s)?;
            let cfg = kiln_models::bart::BartConfig::from_raw(&raw).map_err(s)?;
            let model = cfg.init::<Inference>(&device);
            let src = if a.quick { 128 } else { 512 };
            let new = if a.quick { 16 } else { 64 };
            let ids: Vec<u32> = (0..src).map(|i| (3 + (i * 7919) % 50000) as u32).collect();
            let mut gen = GenerationConfig::default();
            gen.update_from_json(
                &a.configs.join("bart-base.json"),
                &serde_json::to_value(&raw.map).unwrap_or_default(),
            )
            .map_err(s)?;
            let gen = GenerationConfig {
                num_beams: 4,
                max_new_tokens: Some(new),
                min_new_tokens: new,
                early_stopping: kiln_models::generation::EarlyStopping::True,
                ..gen
            };
            let mut r = time(if a.quick { 1 } else { 3 }, || {
                kiln_models::seq2seq::generate(
                    &model,
                    &[ids.clone()],
                    &[vec![1u8; src]],
                    &gen,
                    None,
                )
                .map(|_| ())
                .map_err(s)
            })?;
            r["tokens_per_s"] = json!(new as f64 / r["median_s"].as_f64().unwrap());
            results.insert("bart_beam4".into(), r);
        }
        other => {
            return Err(format!(
                "unknown benchmark `{other}` (generate, bert, seq2seq)"
            ))
        }
    }
    println!(
        "{}",
        json!({"backend": backend::name(), "threads": rayon_threads(), "results": results})
    );
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
