//! Multi-process data-parallel training over the loopback interface: `kiln orchestrator` and one `kiln train`
//! per node (burn-collective's global level), bounded in time, every child killed when the test ends.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{copy_fixture, edit_json, fx, kiln, train_losses};

/// Child processes killed when dropped (also when the test fails).
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A port free on 127.0.0.1 now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(args: &[String], log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Wait for `c` at most `limit`; `None` if it is still running.
fn wait_for(c: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Some(s) = c.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// A copy of fixture `name` without dropout (the nodes draw other dropout masks than one process does).
fn without_dropout(name: &str, dir: &Path) -> String {
    let m = copy_fixture(name, dir);
    edit_json(&m.join("config.json"), |c| {
        for (k, v) in c.as_object_mut().unwrap() {
            if k.contains("dropout") && v.is_number() {
                *v = serde_json::json!(0.0);
            }
        }
    });
    m.display().to_string()
}

/// A recipe run: (recipe, model directory, dataset, extra flags).
type Job<'a> = (&'a str, String, &'a str, &'a [&'a str]);

fn bert_job(dir: &Path) -> Job<'static> {
    (
        "bert-sst2",
        without_dropout("bert", dir),
        "samples/sentiment",
        &[],
    )
}

fn train_args(job: &Job, out: &Path, epochs: &str) -> Vec<String> {
    let (recipe, model, data, extra) = job;
    [
        "train",
        "--recipe",
        recipe,
        "--model",
        model,
        "--dataset",
        &fx(data),
        "--max-samples",
        "48",
        "--max-eval-samples",
        "8",
        "--batch-size",
        "8",
        "--epochs",
        epochs,
        "--no-progress",
        "--out",
        &out.display().to_string(),
    ]
    .iter()
    .chain(extra.iter())
    .map(|s| s.to_string())
    .collect()
}

/// `kiln orchestrator` and two `kiln train --nodes 2` processes; returns them and node 0's out directory.
fn two_nodes(t: &Path, job: &Job, epochs: &str, timeout: &str) -> Procs {
    let (op, p0, p1) = (free_port(), free_port(), free_port());
    let mut procs = Procs(vec![spawn(
        &["orchestrator".into(), "--port".into(), op.to_string()],
        &t.join("orchestrator.log"),
    )]);
    for (rank, port) in [(0, p0), (1, p1)] {
        let mut a = train_args(job, &t.join(format!("node{rank}")), epochs);
        a.extend(
            [
                "--devices",
                "cpu",
                "--nodes",
                "2",
                "--node-rank",
                &rank.to_string(),
                "--orchestrator",
                &format!("127.0.0.1:{op}"),
                "--node-address",
                &format!("127.0.0.1:{port}"),
                "--replica-timeout",
                timeout,
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        procs.0.push(spawn(&a, &t.join(format!("node{rank}.log"))));
    }
    procs
}

/// BERT full fine-tuning and BART LoRA: 2 processes × 4 rows give the losses of 1 process × 8 rows.
#[test]
fn two_processes_over_loopback_train_as_one_device() {
    let t = tempfile::tempdir().unwrap();
    let bart: Job = (
        "bart-lora-cnndm",
        without_dropout("bart", t.path()),
        "samples/cnndm",
        &["--lora-dropout", "0", "--max-steps", "10"],
    );
    for (job, steps) in [(bert_job(t.path()), 12), (bart, 10)] {
        let dir = t.path().join(job.0);
        std::fs::create_dir_all(&dir).unwrap();
        let mut procs = two_nodes(&dir, &job, "2", "60");
        for (i, name) in [(1, "node0"), (2, "node1")] {
            let s = wait_for(&mut procs.0[i], Duration::from_secs(240))
                .unwrap_or_else(|| panic!("{}: {name} did not finish within 240 s", job.0));
            let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap();
            assert!(s.success(), "{}: {name} failed: {log}", job.0);
        }
        drop(procs);
        let single = dir.join("single");
        let (ok, _, err) = kiln(
            &train_args(&job, &single, "2")
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        assert!(ok, "{err}");
        let (two, one) = (train_losses(&dir.join("node0")), train_losses(&single));
        assert_eq!(one.len(), steps, "{}: {one:?}", job.0);
        assert_eq!(two.len(), one.len(), "{two:?} vs {one:?}");
        for ((s, a), (_, b)) in two.iter().zip(&one) {
            assert!(
                (a - b).abs() <= 1e-5,
                "{}: step {s}: 2 nodes {a} vs 1 process {b}",
                job.0
            );
        }
        // Node 0 writes the reports and checkpoints; node 1 writes none.
        assert!(dir.join("node0/checkpoint/state.json").is_file());
        assert!(!dir.join("node1/checkpoint").exists());
    }
}

#[test]
fn a_killed_node_ends_the_run_with_an_error_naming_its_replica() {
    let t = tempfile::tempdir().unwrap();
    let mut procs = two_nodes(t.path(), &bert_job(t.path()), "400", "3");
    // Once node 0 has trained a few steps, kill node 1.
    let metrics = t.path().join("node0/metrics.jsonl");
    let start = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |s| s.lines().count()) < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "node 0 never started training"
        );
        assert!(
            procs.0[1].try_wait().unwrap().is_none(),
            "node 0 ended early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    procs.0[2].kill().unwrap();
    let killed = Instant::now();
    let s = wait_for(&mut procs.0[1], Duration::from_secs(90))
        .expect("node 0 kept running after node 1 was killed");
    let log = std::fs::read_to_string(t.path().join("node0.log")).unwrap();
    assert!(!s.success(), "node 0 exited 0 after losing node 1: {log}");
    assert!(
        killed.elapsed() < Duration::from_secs(60),
        "took {:?}",
        killed.elapsed()
    );
    assert!(
        log.contains("data-parallel training stopped: replica 1"),
        "{log}"
    );
    // Nothing half-written: the last checkpoint (if any) is complete.
    assert!(!t.path().join("node0/checkpoint.tmp").exists());
}

/// Every training recipe (full fine-tuning and each PEFT method) runs data-parallel on two CPU replicas.
#[test]
fn every_training_recipe_runs_on_two_replicas() {
    let t = tempfile::tempdir().unwrap();
    for (recipe, model, data, extra) in [
        ("t5-prompt-sst2", "t5", "samples/sentiment", &[][..]),
        ("bert-sst2", "bert", "samples/sentiment", &[][..]),
        ("bert-adapters-sst2", "bert", "samples/sentiment", &[][..]),
        ("bert-lora-sst2", "bert", "samples/sentiment", &[][..]),
        (
            "said-sst2",
            "bert",
            "samples/sentiment",
            &["--intrinsic-dims", "10"][..],
        ),
        ("bart-cnndm", "bart", "samples/cnndm", &[][..]),
        ("bart-lora-cnndm", "bart", "samples/cnndm", &[][..]),
        ("prefix-cnndm", "bart", "samples/cnndm", &[][..]),
        // GPT-2's fixture has 64 positions: the virtual tokens' share is taken from the text.
        ("prompt-tuning-sst2", "gpt2", "samples/sentiment", &[][..]),
    ] {
        let out = t.path().join(recipe).display().to_string();
        let mut args = vec!["train", "--recipe", recipe, "--out", &out, "--json"];
        let (m, d) = (fx(model), fx(data));
        args.extend([
            "--model",
            &m,
            "--dataset",
            &d,
            "--epochs",
            "1",
            "--max-samples",
            "16",
            "--max-eval-samples",
            "2",
            "--batch-size",
            "8",
            "--devices",
            "cpu,cpu",
        ]);
        args.extend(extra);
        let (ok, stdout, stderr) = kiln(&args);
        assert!(ok, "{recipe} on two replicas failed: {stderr}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert!(v.is_object(), "{recipe}: {stdout}");
    }
    // Too many virtual tokens for the model's positions is an error before training, not an index panic.
    let out = t.path().join("too-many").display().to_string();
    let (m, d) = (fx("gpt2"), fx("samples/sentiment"));
    let (ok, _, stderr) = kiln(&[
        "train",
        "--recipe",
        "prompt-tuning-sst2",
        "--model",
        &m,
        "--dataset",
        &d,
        "--out",
        &out,
        "--num-virtual-tokens",
        "63",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("63 virtual tokens") && !stderr.contains("panicked"),
        "{stderr}"
    );
    // --devices of another backend is refused.
    let (ok, _, stderr) = kiln(&[
        "train",
        "--recipe",
        "bert-sst2",
        "--model",
        &fx("bert"),
        "--out",
        &out,
        "--devices",
        "cuda:0",
    ]);
    assert!(
        !ok && stderr.contains("not a device of this build"),
        "{stderr}"
    );
}
