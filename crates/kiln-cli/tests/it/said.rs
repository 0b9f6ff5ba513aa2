//! `kiln train --recipe said-sst2` end to end on the tiny BERT: per-d runs, full fine-tuning, d90 and the chart;
//! the saved SAID adapter works with `classify --adapter`, merges with `peft merge` into a checkpoint that
//! classifies the same, shows in `peft inspect`; flags that do not apply are refused.

use super::*;

fn probs(stdout: &str) -> Vec<f64> {
    stdout
        .lines()
        .flat_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["probs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn said_recipe_sweeps_d_and_its_adapters_classify_and_merge() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let v = run_recipe(
        out,
        "said-sst2",
        &s(&[
            "--model",
            &fx("bert"),
            "--dataset",
            &fx("samples/sentiment"),
            "--epochs",
            "1",
            "--max-samples",
            "32",
            "--max-eval-samples",
            "16",
            "--intrinsic-dims",
            "8,64",
        ]),
    );
    let runs = v["said"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["intrinsic_dim"], 8);
    assert_eq!(runs[1]["intrinsic_dim"], 64);
    // d plus one λ per parameter tensor of the tiny BERT (every tensor is projected).
    let tensors = v["full"]["trainable_parameters"].as_u64().unwrap();
    assert!(runs[1]["trainable_parameters"].as_u64().unwrap() > 64);
    assert_eq!(runs[1]["projected_parameters"].as_u64().unwrap(), tensors);
    for r in runs {
        let acc = r["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
    }
    assert!(v["full"]["accuracy"].as_f64().is_some());
    assert!(v["d90"].is_null() || v["d90"].is_u64());
    let dir = out.join("said-sst2");
    for f in [
        "summary.json",
        "said.png",
        "said-d8/adapter/adapter_config.json",
        "said-d64/adapter/adapter_model.safetensors",
        "said-d64/checkpoint/state.json",
        "full/checkpoint/state.json",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }

    let adapter = dir.join("said-d64/adapter").display().to_string();
    let bert = fx("bert");
    let text = ["a gripping, funny and moving film", "dull and far too long"];
    let classify = |model: &str, adapter: Option<&str>| {
        let mut args = vec!["classify", "--model-dir", model, "--json"];
        for x in text {
            args.extend(["--text", x]);
        }
        if let Some(a) = adapter {
            args.extend(["--adapter", a]);
        }
        let (ok, stdout, stderr) = kiln(&args);
        assert!(ok, "{stderr}");
        probs(&stdout)
    };
    let with_adapter = classify(&bert, Some(&adapter));
    let merged = out.join("merged").display().to_string();
    let (ok, _, stderr) = kiln(&[
        "peft",
        "merge",
        "--model-dir",
        &bert,
        "--adapter",
        &adapter,
        "--out",
        &merged,
    ]);
    assert!(ok, "{stderr}");
    let from_merged = classify(&merged, None);
    for (a, b) in with_adapter.iter().zip(&from_merged) {
        assert!(
            (a - b).abs() < 1e-5,
            "{with_adapter:?} vs merged {from_merged:?}"
        );
    }

    let (ok, stdout, stderr) = kiln(&["peft", "inspect", &adapter, "--json"]);
    assert!(ok, "{stderr}");
    let i: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(i["summary"]["peft_type"], "SAID");
    assert_eq!(i["summary"]["intrinsic_dim"], 64);

    // Flags that do not apply are refused.
    let (ok, _, stderr) = kiln(&[
        "train",
        "--recipe",
        "bert-sst2",
        "--intrinsic-dims",
        "10",
        "--out",
        out.join("x").to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("--intrinsic-dims"), "{stderr}");
    let (ok, _, stderr) = kiln(&[
        "train",
        "--recipe",
        "said-sst2",
        "--intrinsic-dims",
        "10,0",
        "--out",
        out.join("y").to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("--intrinsic-dims"), "{stderr}");
}

/// A BERT checkpoint without a classification head gets a random one; `--resume` continues from the same
/// initial model (the head is kept in `out/initial-head`), so a resumed sweep reports the same accuracies.
#[test]
fn said_recipe_resumes_from_the_same_random_head() {
    let t = tempfile::tempdir().unwrap();
    let headless = t.path().join("bert-headless");
    std::fs::create_dir_all(&headless).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixtures().join("bert").join(f), headless.join(f)).unwrap();
    }
    let mut w = kiln_peft::read_tensors(&fixtures().join("bert/model.safetensors")).unwrap();
    w.retain(|k, _| !k.starts_with("classifier"));
    kiln_peft::write_tensors(&headless.join("model.safetensors"), &w).unwrap();
    let out = t.path().join("out");
    let args = |resume: bool| {
        let mut v: Vec<String> = [
            "--model",
            headless.to_str().unwrap(),
            "--dataset",
            &fx("samples/sentiment"),
            "--epochs",
            "1",
            "--max-samples",
            "16",
            "--max-eval-samples",
            "16",
            "--intrinsic-dims",
            "16",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if resume {
            v.push("--resume".into());
        }
        v
    };
    let first = run_recipe(&out, "said-sst2", &args(false));
    assert!(first["initialised"].to_string().contains("classifier"));
    let again = run_recipe(&out, "said-sst2", &args(true));
    assert_eq!(
        first["said"][0]["final_eval"], again["said"][0]["final_eval"],
        "resumed from another θ₀"
    );
}

/// `said-mrpc`: the same sweep on GLUE sentence pairs (here a small MRPC-schema JSON-lines set written for the
/// test), encoded as `[CLS] a [SEP] b [SEP]`.
#[test]
fn said_mrpc_runs_on_sentence_pairs() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("mrpc");
    std::fs::create_dir_all(&data).unwrap();
    let pairs = [
        (
            "The cat sat on the mat.",
            "A cat was sitting on the mat.",
            1,
        ),
        (
            "Stocks fell sharply on Monday.",
            "The market dropped steeply on Monday.",
            1,
        ),
        ("He plays the guitar.", "The weather was cold today.", 0),
        (
            "The meeting is at noon.",
            "Lunch was served at the hotel.",
            0,
        ),
    ];
    for (split, n) in [("train", 12), ("validation", 8)] {
        let lines: Vec<String> = (0..n)
            .map(|i| {
                let (a, b, l) = pairs[i % pairs.len()];
                serde_json::json!({"sentence1": a, "sentence2": b, "label": l, "idx": i})
                    .to_string()
            })
            .collect();
        std::fs::write(data.join(format!("{split}.jsonl")), lines.join("\n") + "\n").unwrap();
    }
    let out = t.path().join("out");
    let v = run_recipe(
        &out,
        "said-mrpc",
        &[
            "--model".to_string(),
            fx("bert"),
            "--dataset".to_string(),
            data.display().to_string(),
            "--epochs".to_string(),
            "1".to_string(),
            "--intrinsic-dims".to_string(),
            "8".to_string(),
        ],
    );
    assert_eq!(v["recipe"], "said-mrpc");
    assert_eq!(v["train_examples"], 12);
    assert_eq!(v["eval_examples"], 8);
    assert_eq!(v["said"].as_array().unwrap().len(), 1);
    assert!(out.join("said-mrpc/said.png").exists());
}

/// A recipe run is reproducible: random initialisations (here LoRA's A matrices) come from `--seed`.
#[test]
fn the_same_seed_gives_the_same_run() {
    let t = tempfile::tempdir().unwrap();
    let run = |name: &str, seed: &str| {
        let v = run_recipe(
            &t.path().join(name),
            "bert-lora-sst2",
            &[
                "--model".to_string(),
                fx("bert"),
                "--dataset".to_string(),
                fx("samples/sentiment"),
                "--max-steps".to_string(),
                "3".to_string(),
                "--max-samples".to_string(),
                "48".to_string(),
                "--max-eval-samples".to_string(),
                "8".to_string(),
                "--seed".to_string(),
                seed.to_string(),
            ],
        );
        v["train"]["state"]["losses"].clone()
    };
    let a = run("a", "7");
    assert_eq!(a, run("b", "7"), "two runs with seed 7 differ");
    assert_ne!(a, run("c", "8"), "the seed changes nothing");
}
