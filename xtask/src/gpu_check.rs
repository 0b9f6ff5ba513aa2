//! `cargo xtask gpu-check`: one prepared command for a machine with an NVIDIA GPU (issue 16). It builds the
//! CUDA `kiln` binary (or takes one with `--bin`), checks it against the transformers / peft references in
//! `fixtures/reference/` through the CLI (logits, greedy and beam-search ids, seq2seq and adapter scores, BERT
//! embeddings and pair classification), times the benchmark workloads with it, and prints one table.
//!
//! The same harness runs on any backend (`--backend flex` here, on CPU), so it is checked without a GPU.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::{cargo, root, run};

/// One parity check's outcome.
struct Row {
    name: String,
    max_abs: f64,
    tol: f64,
    exact: Option<bool>,
}

impl Row {
    fn pass(&self) -> bool {
        self.exact.unwrap_or(true) && self.max_abs <= self.tol
    }
}

/// Every number in a JSON value (nested arrays, or a `{"data": …}` tensor), in order.
fn flat(v: &Value) -> Vec<f64> {
    match v {
        Value::Number(n) => vec![n.as_f64().unwrap_or(f64::NAN)],
        Value::Array(a) => a.iter().flat_map(flat).collect(),
        Value::Object(o) => o.get("data").map(flat).unwrap_or_default(),
        _ => vec![],
    }
}

fn max_abs(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn reference(name: &str) -> Result<Value, String> {
    let p = root()
        .join("fixtures/reference")
        .join(format!("{name}.json"));
    let t = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    serde_json::from_str(&t).map_err(|e| format!("{}: {e}", p.display()))
}

fn kiln_json(bin: &Path, args: &[&str]) -> Result<Value, String> {
    let out = run(Command::new(bin)
        .current_dir(root())
        .env("HF_HUB_OFFLINE", "1")
        .args(args))?;
    serde_json::from_str(out.trim()).map_err(|e| format!("kiln {args:?}: {e}: {out}"))
}

fn fx(p: &str) -> String {
    root().join("fixtures").join(p).display().to_string()
}

/// The parity checks, each through the binary on the bundled fixtures against the stored reference.
fn parity(bin: &Path) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    // GPT-2 logits of each reference input (one forward pass).
    let g = reference("gpt2")?;
    let mut worst = 0f64;
    for input in g["inputs"].as_array().cloned().unwrap_or_default() {
        let text = input["text"].as_str().unwrap_or_default();
        let v = kiln_json(
            bin,
            &[
                "score",
                "--model-dir",
                &fx("gpt2"),
                "--text",
                text,
                "--logits",
                "--json",
            ],
        )?;
        worst = worst.max(max_abs(&flat(&v["logits"]), &flat(&input["logits"])));
    }
    rows.push(Row {
        name: "gpt2 logits vs transformers".into(),
        max_abs: worst,
        tol: 1e-4,
        exact: None,
    });
    // Greedy and beam-search ids, as `generate` gives them.
    let gpt2 = fx("gpt2");
    for (mode, flags) in [
        ("greedy", vec!["--max-new-tokens", "12"]),
        (
            "beam",
            vec![
                "--max-new-tokens",
                "12",
                "--num-beams",
                "5",
                "--no-repeat-ngram-size",
                "2",
                "--early-stopping",
                "true",
            ],
        ),
    ] {
        let mut same = true;
        for (input, want) in g["inputs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .zip(
                g["generate"][mode]["single"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            )
        {
            let mut args = vec!["generate", "--model-dir", gpt2.as_str(), "-p"];
            args.push(input["text"].as_str().unwrap_or_default());
            args.extend(flags.iter().copied());
            args.push("--json");
            let v = kiln_json(bin, &args)?;
            let r = &v["results"][0];
            let got: Vec<u64> = r["prompt_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(r["sequences"][0]["ids"].as_array().into_iter().flatten())
                .filter_map(Value::as_u64)
                .collect();
            let want: Vec<u64> = flat(&want["sequences"][0])
                .iter()
                .map(|x| *x as u64)
                .collect();
            same &= got == want;
        }
        rows.push(Row {
            name: format!("gpt2 {mode} ids vs generate"),
            max_abs: 0.0,
            tol: 0.0,
            exact: Some(same),
        });
    }
    // Seq2seq scores (BART, T5, peft prefix / prompt / LoRA adapters).
    let s = reference("seq2seq_scores")?;
    for case in s["cases"].as_array().cloned().unwrap_or_default() {
        let model = case["model"].as_str().unwrap_or_default().to_string();
        let adapter = case["adapter"].as_str().map(|a| fx(&format!("peft/{a}")));
        let dir = fx(&model);
        let mut args = vec![
            "score",
            "--model-dir",
            dir.as_str(),
            "--source",
            case["source"].as_str().unwrap_or_default(),
            "--text",
            case["target"].as_str().unwrap_or_default(),
            "--json",
        ];
        if let Some(a) = adapter.as_deref() {
            args.extend(["--adapter", a]);
        }
        let v = kiln_json(bin, &args)?;
        rows.push(Row {
            name: format!(
                "{model}{} target log-probs vs {}",
                case["adapter"]
                    .as_str()
                    .map(|a| format!(" + {a}"))
                    .unwrap_or_default(),
                if case["adapter"].is_null() {
                    "transformers"
                } else {
                    "peft"
                }
            ),
            max_abs: max_abs(&flat(&v["logprobs"]), &flat(&case["logprobs"])),
            tol: 1e-4,
            exact: None,
        });
    }
    // BERT: mean-pooled embeddings and pair classification probabilities.
    let b = reference("bert")?;
    let texts: Vec<String> = b["texts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(String::from))
        .collect();
    let bert = fx("bert");
    let mut args = vec!["embed", "--model-dir", bert.as_str(), "--json"];
    for t in &texts {
        args.extend(["--text", t.as_str()]);
    }
    let v = kiln_json(bin, &args)?;
    // sentence-transformers normalises; the reference stores the mean-pooled rows before normalisation.
    let normalise = |rows: &Value| -> Vec<f64> {
        rows.as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| {
                let x = flat(r);
                let n = x.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
                x.into_iter().map(move |a| a / n)
            })
            .collect()
    };
    rows.push(Row {
        name: "bert mean-pooled embeddings vs transformers".into(),
        max_abs: max_abs(&normalise(&v["embeddings"]), &normalise(&b["mean_pooled"])),
        tol: 1e-4,
        exact: None,
    });
    let p = &b["pairs"];
    let mut args = vec![
        "classify".to_string(),
        "--model-dir".into(),
        bert.clone(),
        "--json".into(),
    ];
    for (x, y) in p["first"]
        .as_array()
        .into_iter()
        .flatten()
        .zip(p["second"].as_array().into_iter().flatten())
    {
        args.extend([
            "--text".into(),
            x.as_str().unwrap_or_default().into(),
            "--text-pair".into(),
            y.as_str().unwrap_or_default().into(),
        ]);
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(Command::new(bin).current_dir(root()).args(&a))?;
    let got: Vec<f64> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .flat_map(|v| flat(&v["probs"]))
        .collect();
    let want: Vec<f64> = p["logits"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|row| {
            let x = flat(row);
            let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = x.iter().map(|a| (a - m).exp()).sum();
            x.into_iter().map(move |a| (a - m).exp() / z)
        })
        .collect();
    rows.push(Row {
        name: "bert pair classification vs transformers".into(),
        max_abs: max_abs(&got, &want),
        tol: 1e-5,
        exact: None,
    });
    Ok(rows)
}

/// Build the `kiln` binary for `backend` in its own target directory (a CUDA build must not replace the CPU
/// one), or take `bin`.
fn binary(backend: &str, bin: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(b) = bin {
        return Ok(b);
    }
    let target = root().join("target").join(format!("gpu-check-{backend}"));
    eprintln!(
        "gpu-check: building kiln with --features {backend} (into {})",
        target.display()
    );
    run(cargo().env("CARGO_TARGET_DIR", &target).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "kiln-cli",
        "--no-default-features",
        "--features",
        backend,
    ]))?;
    Ok(target.join("release").join("kiln"))
}

pub fn gpu_check(
    backend: &str,
    bin: Option<PathBuf>,
    bench: bool,
    python: Option<PathBuf>,
) -> Result<(), String> {
    let bin = binary(backend, bin)?;
    // The binary reports a backend that cannot run here (no driver / NVRTC) as a clear error: stop there.
    let probe = Command::new(&bin)
        .current_dir(root())
        .args(["inspect", "--model-dir", &fx("gpt2"), "--json"])
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    if !probe.status.success() {
        return Err(format!(
            "{} cannot run here: {}",
            bin.display(),
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    let rows = parity(&bin)?;
    println!("| check ({backend}) | max abs diff | tolerance | result |");
    println!("|---|---|---|---|");
    for r in &rows {
        let diff = match r.exact {
            Some(same) => {
                if same {
                    "identical".to_string()
                } else {
                    "differ".to_string()
                }
            }
            None => format!("{:.2e}", r.max_abs),
        };
        let tol = if r.exact.is_some() {
            "token-identical".to_string()
        } else {
            format!("{:.0e}", r.tol)
        };
        println!(
            "| {} | {diff} | {tol} | {} |",
            r.name,
            if r.pass() { "✔" } else { "✘" }
        );
    }
    let failed = rows.iter().filter(|r| !r.pass()).count();
    if bench {
        // PyTorch on the same device beside kiln when a Python with torch/transformers/peft is given.
        let device = if backend == "cuda" { "cuda" } else { "cpu" };
        println!();
        println!("| workload ({backend}) | kiln median s | PyTorch ({device}) median s | PyTorch / kiln |");
        println!("|---|---|---|---|");
        for w in ["generate", "bert", "train-bert-adapters"] {
            let v = kiln_json(&bin, &["bench", w, "--quick"])?;
            let py: Option<Value> = match &python {
                Some(py) => {
                    let out = run(Command::new(py)
                        .arg(root().join("bench/reference/bench.py"))
                        .args([w, "--quick", "--device", device]))?;
                    Some(
                        serde_json::from_str(out.trim())
                            .map_err(|e| format!("bench.py {w}: {e}"))?,
                    )
                }
                None => None,
            };
            for (name, r) in v["results"].as_object().cloned().unwrap_or_default() {
                let k = r["median_s"].as_f64().unwrap_or(f64::NAN);
                let t = py
                    .as_ref()
                    .and_then(|p| p["results"][&name]["median_s"].as_f64());
                match t {
                    Some(t) => println!("| {name} | {k:.4} | {t:.4} | {:.2}× |", t / k),
                    None => println!("| {name} | {k:.4} | — | — |"),
                }
            }
        }
    }
    let summary = json!({"backend": backend, "checks": rows.len(), "failed": failed});
    println!("\n{summary}");
    if failed > 0 {
        return Err(format!("{failed} parity check(s) failed on {backend}"));
    }
    Ok(())
}
