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

use crate::backend::{self, Inference, Training};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// generate | bert | seq2seq | train-bart-lora | train-bart-full | train-bert-adapters
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

/// What one decode step allocates: `run(n)` generates n new tokens; the difference between n and n/2 tokens,
/// divided by the n − n/2 extra steps, leaves out the prompt's forward pass and the setup.
fn decode_allocation<F: FnMut(usize) -> Result<(), String>>(
    n: usize,
    mut run: F,
) -> Result<Value, String> {
    let mut measure = |n| -> Result<(u64, u64), String> {
        let (b0, c0) = crate::alloc_count::allocated();
        run(n)?;
        let (b1, c1) = crate::alloc_count::allocated();
        Ok((b1 - b0, c1 - c0))
    };
    let (half, full) = (measure(n / 2)?, measure(n)?);
    let steps = (n - n / 2).max(1) as f64;
    Ok(json!({
        "bytes_per_step": full.0.saturating_sub(half.0) as f64 / steps,
        "allocations_per_step": full.1.saturating_sub(half.1) as f64 / steps,
    }))
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
            let run = |cfg: &GenerationConfig| {
                generate(
                    &mut CausalSession::new(&model),
                    &[prompt.clone()],
                    &mask,
                    cfg,
                    None,
                )
                .map(|_| ())
                .map_err(s)
            };
            let with_len = |cfg: &GenerationConfig, n: usize| GenerationConfig {
                max_new_tokens: Some(n),
                min_new_tokens: n,
                ..cfg.clone()
            };
            let mut g = time(reps, || run(&greedy))?;
            g["tokens_per_s"] = json!(new as f64 / g["median_s"].as_f64().unwrap());
            g["decode_allocation"] = decode_allocation(new, |n| run(&with_len(&greedy, n)))?;
            results.insert("gpt2_greedy".into(), g);
            let bnew = if a.quick { 16 } else { 64 };
            let beam = GenerationConfig {
                num_beams: 5,
                no_repeat_ngram_size: 2,
                max_new_tokens: Some(bnew),
                min_new_tokens: bnew,
                ..greedy.clone()
            };
            let mut b = time(reps, || run(&beam))?;
            b["tokens_per_s"] = json!(bnew as f64 / b["median_s"].as_f64().unwrap());
            b["decode_allocation"] = decode_allocation(bnew, |n| run(&with_len(&beam, n)))?;
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
            let run = |n: usize| {
                let gen = GenerationConfig {
                    max_new_tokens: Some(n),
                    min_new_tokens: n,
                    ..gen.clone()
                };
                kiln_models::seq2seq::generate(&model, &[ids.clone()], &[vec![1u8; src]], &gen, None)
                    .map(|_| ())
                    .map_err(s)
            };
            let mut r = time(if a.quick { 1 } else { 3 }, || run(new))?;
            r["tokens_per_s"] = json!(new as f64 / r["median_s"].as_f64().unwrap());
            r["decode_allocation"] = decode_allocation(new, run)?;
            results.insert("bart_beam4".into(), r);
        }
        "train-bart-lora" | "train-bart-full" => {
            let lora = a.what == "train-bart-lora";
            results.insert(a.what.replace('-', "_"), train_bart(&a, lora)?);
        }
        "train-bert-adapters" => {
            results.insert(a.what.replace('-', "_"), train_bert_adapters(&a)?);
        }
        other => {
            return Err(format!(
                "unknown benchmark `{other}` (generate, bert, seq2seq, train-bart-lora, train-bart-full, \
                 train-bert-adapters)"
            ))
        }
    }
    // One workload (group) per process: the OS's high-water mark is this workload's peak.
    println!(
        "{}",
        json!({"backend": backend::name(), "threads": rayon_threads(), "peak_rss_bytes": kiln_train::recipes::peak_rss(),
               "results": results})
    );
    Ok(())
}

/// Deterministic pseudo-random token ids in `lo..hi` (the same workload every run).
fn ids(rows: usize, len: usize, lo: u32, hi: u32, salt: u64) -> Vec<Vec<u32>> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ salt;
    (0..rows)
        .map(|_| {
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    lo + (x % (hi - lo) as u64) as u32
                })
                .collect()
        })
        .collect()
}

/// AdamW as `torch.optim.AdamW(lr, weight_decay=0.01, eps=1e-8)` plus gradient clipping at norm 1.0 (what
/// kiln's trainer does by default; bench.py clips with `clip_grad_norm_`).
/// AdamW as the reference runs it (lr 1e-4 per step, weight decay 0.01, eps 1e-8, clipping at norm 1.0): kiln-train's,
/// whose update is one pass per parameter on flex.
fn adamw<M: burn::module::AutodiffModule<Training>>(
) -> burn::optim::adaptor::OptimizerAdaptor<kiln_train::optim::FusedAdamW, M, Training> {
    kiln_train::optim::adamw(0.01, 1e-8, Some(1.0))
}

/// Time a training step `reps` times after one warm-up step, and its forward pass (the loss) within each step,
/// so the backward + optimizer share is visible. (A separate forward-only run would measure a different thing
/// here: burn's autodiff frees the graph of a loss dropped without `backward` only during a later backward of
/// the same graph, so repeated forwards keep their saved activations — +350 MB each for BERT adapters, which
/// then set the process's peak memory.)
fn time_train<M, L, F>(reps: usize, model: M, mut loss: L, mut step: F) -> Result<Value, String>
where
    L: FnMut(&M) -> Result<Tensor<Training, 1>, String>,
    F: FnMut(M, Tensor<Training, 1>) -> M,
{
    let device = backend::device()?;
    let mut model = Some(model);
    let mut losses = Vec::new();
    let mut forwards = Vec::new();
    let mut r = time(reps, || {
        let m = model.take().expect("model");
        let t = Instant::now();
        let l = loss(&m)?;
        let _ = Training::sync(&device);
        forwards.push(t.elapsed().as_secs_f64());
        let m = step(m, l.clone());
        let _ = Training::sync(&device);
        losses.push(l.into_scalar().elem::<f64>());
        model = Some(m);
        Ok(())
    })?;
    r["steps_per_s"] = json!(1.0 / r["median_s"].as_f64().unwrap());
    // The warm-up step's forward left out, as its step is.
    r["forward_median_s"] = stats(forwards.split_off(1))["median_s"].clone();
    r["losses"] = json!(losses);
    Ok(r)
}

/// One AdamW step of BART-base (random init from bench/configs), batch 4 × source 512 × target 128
/// (`--quick`: 2 × 128 × 32): token cross-entropy over the target, teacher forcing with the labels shifted
/// right after `decoder_start_token_id` (as transformers does for `labels=`). kiln's BART has no dropout, so
/// the PyTorch reference sets `dropout = attention_dropout = activation_dropout = 0`. LoRA: r 8, alpha 16,
/// dropout 0, q_proj/v_proj, everything else frozen (peft's `get_peft_model`).
fn train_bart(a: &BenchArgs, lora: bool) -> Result<Value, String> {
    use burn::optim::{GradientsParams, Optimizer};
    use kiln_models::seq2seq::EncoderDecoder;
    let device = backend::device()?;
    Training::seed(&device, 0);
    let s = |e: kiln_models::Error| e.to_string();
    let raw = RawConfig::load(&a.configs.join("bart-base.json")).map_err(s)?;
    let cfg = kiln_models::bart::BartConfig::from_raw(&raw).map_err(s)?;
    let model = cfg.init::<Training>(&device);
    let base = kiln_peft::model::hf_param_count(&model);
    let (model, trainable, total) = if lora {
        let lcfg: kiln_peft::LoraConfig = serde_json::from_value(json!({
            "peft_type": "LORA", "task_type": "SEQ_2_SEQ_LM", "r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
            "target_modules": ["q_proj", "v_proj"]
        }))
        .map_err(|e| e.to_string())?;
        let lm = kiln_peft::LoraModel::inject(model, lcfg).map_err(|e| e.to_string())?;
        let c = lm.trainable_parameters();
        (lm.model, c.trainable, c.all)
    } else {
        (model, base, base)
    };
    let (b, src, tgt) = if a.quick { (2, 128, 32) } else { (4, 512, 128) };
    let src_ids = ids(b, src, 3, 50_000, 1);
    let labels_u = ids(b, tgt, 3, 50_000, 2);
    let start = cfg.decoder_start_token_id.unwrap_or(2);
    let dec: Vec<Vec<u32>> = labels_u
        .iter()
        .map(|r| {
            std::iter::once(start)
                .chain(r[..tgt - 1].iter().copied())
                .collect()
        })
        .collect();
    let labels: Vec<Vec<i64>> = labels_u
        .iter()
        .map(|r| r.iter().map(|&t| t as i64).collect())
        .collect();
    let mask = vec![vec![1u8; src]; b];
    let mut optim = adamw::<kiln_models::bart::BartForConditionalGeneration<Training>>();
    let dev = device.clone();
    let mut r = time_train(
        if a.quick { 2 } else { 3 },
        model,
        |m| {
            let ids = kiln_models::attention::ids_tensor::<Training>(&src_ids, &dev);
            let enc = m.encoder_forward(ids, &mask).map_err(s)?;
            let dec = kiln_models::attention::ids_tensor::<Training>(&dec, &dev);
            let logits = m.decoder_logits(dec, enc, &mask).map_err(s)?;
            kiln_train::loss::token_cross_entropy(logits, &labels).map_err(|e| e.to_string())
        },
        |m, loss| {
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            optim.step(1e-4, m, grads)
        },
    )?;
    r["shape"] = json!({"batch": b, "source": src, "target": tgt});
    r["trainable_params"] = json!(trainable);
    r["total_params"] = json!(total);
    Ok(r)
}

/// One AdamW step of BERT-base with a 2-class head, frozen backbone and Pfeiffer bottleneck adapters of size 64
/// after every layer's output dense (`with_frozen_adapters`; adapters and classifier trained), batch 16 × 64
/// (`--quick`: 4 × 32), dropout 0 in both.
fn train_bert_adapters(a: &BenchArgs) -> Result<Value, String> {
    use burn::optim::{GradientsParams, Optimizer};
    let device = backend::device()?;
    Training::seed(&device, 0);
    let s = |e: kiln_models::Error| e.to_string();
    let raw = RawConfig::load(&a.configs.join("bert-base-uncased.json")).map_err(s)?;
    let mut cfg = kiln_models::bert::BertConfig::from_raw(&raw).map_err(s)?;
    cfg.hidden_dropout_prob = 0.0;
    cfg.attention_probs_dropout_prob = 0.0;
    cfg.classifier_dropout = Some(0.0);
    let acfg = kiln_peft::AdapterConfig {
        placement: kiln_peft::AdapterPlacement::Pfeiffer,
        size: Some(64),
        reduction_factor: None,
        ..Default::default()
    };
    let (model, trainable, total) = cfg
        .init_classifier::<Training>(&device)
        .with_frozen_adapters(&acfg, false);
    let (b, t) = if a.quick { (4, 32) } else { (16, 64) };
    let batch = kiln_models::bert::BertBatch {
        input_ids: ids(b, t, 0, 30_522, 3),
        token_type_ids: vec![vec![0; t]; b],
        attention_mask: vec![vec![1; t]; b],
    };
    let labels: Vec<i64> = (0..b as i64).map(|i| i % 2).collect();
    let mut optim = adamw::<kiln_models::bert::BertForSequenceClassification<Training>>();
    let mut r = time_train(
        if a.quick { 2 } else { 5 },
        model,
        |m| {
            let logits = m.forward_batch(&batch).map_err(s)?;
            kiln_train::loss::class_cross_entropy(logits, &labels).map_err(|e| e.to_string())
        },
        |m, loss| {
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            optim.step(1e-4, m, grads)
        },
    )?;
    r["shape"] = json!({"batch": b, "seq": t, "num_labels": cfg.num_labels()});
    r["trainable_params"] = json!(trainable);
    r["total_params"] = json!(total);
    Ok(r)
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
