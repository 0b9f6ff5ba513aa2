//! End-to-end tests of the `kiln` binary: every recipe on the bundled tiny checkpoints and samples (what
//! `cargo xtask demo` runs), and argument validation before any work.

use std::path::{Path, PathBuf};
use std::process::Command;

mod distributed;
mod reliability;
mod return_sequences;
mod said;
mod scoring;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn kiln(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A copy of fixture checkpoint `name` in `to`, to damage.
fn copy_fixture(name: &str, to: &Path) -> PathBuf {
    let d = to.join(name);
    std::fs::create_dir_all(&d).unwrap();
    for e in std::fs::read_dir(fixtures().join(name)).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
    }
    d
}

/// Rewrite a JSON file through `f`.
fn edit_json(p: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, v.to_string()).unwrap();
}

fn fx(p: &str) -> String {
    fixtures().join(p).display().to_string()
}

fn run_recipe(out: &Path, name: &str, extra: &[String]) -> serde_json::Value {
    let dir = out.join(name).display().to_string();
    let mut args = vec!["train", "--recipe", name, "--out", &dir, "--json"];
    args.extend(extra.iter().map(String::as_str));
    let (ok, stdout, stderr) = kiln(&args);
    assert!(ok, "{name} failed: {stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{name}: {e}: {stdout}"))
}

#[test]
fn every_recipe_runs_offline_on_the_bundled_defaults() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    let v = run_recipe(
        out,
        "t5-prompt-sst2",
        &s(&[
            "--model",
            &fx("t5"),
            "--dataset",
            &fx("samples/sentiment"),
            "--epochs",
            "2",
            "--learning-rate",
            "3e-3",
        ]),
    );
    let acc = v["final_eval"]["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert_eq!(v["train_examples"], 240);
    for f in [
        "metrics.jsonl",
        "loss.png",
        "predictions.jsonl",
        "summary.json",
        "checkpoint/state.json",
        "best/state.json",
    ] {
        assert!(
            out.join("t5-prompt-sst2").join(f).exists(),
            "t5-prompt-sst2/{f}"
        );
    }
    // The model learned the label words: every prediction is one of them.
    let preds = std::fs::read_to_string(out.join("t5-prompt-sst2/predictions.jsonl")).unwrap();
    assert!(
        preds
            .lines()
            .all(|l| l.contains("\"prediction\":\"positive\"")
                || l.contains("\"prediction\":\"negative\"")),
        "{preds}"
    );

    let v = run_recipe(
        out,
        "bert-adapters-sst2",
        &s(&[
            "--model",
            &fx("bert"),
            "--dataset",
            &fx("samples/sentiment"),
            "--epochs",
            "1",
            "--learning-rate",
            "1e-3",
        ]),
    );
    assert!(v["parameters"]
        .as_str()
        .unwrap()
        .starts_with("trainable params: "));
    assert!(v["final_eval"]["accuracy"].as_f64().is_some());

    let v = run_recipe(
        out,
        "bart-lora-cnndm",
        &s(&[
            "--model",
            &fx("bart"),
            "--dataset",
            &fx("samples/cnndm"),
            "--epochs",
            "1",
        ]),
    );
    for k in ["rouge1", "rouge2", "rougeL", "rougeLsum"] {
        assert!(v["rouge"][k].as_f64().is_some(), "{k}");
    }
    assert_eq!(v["examples"].as_array().unwrap().len(), 3);
    assert!(out.join("bart-lora-cnndm/rouge.png").exists());
    // The adapter is in the PEFT layout, with peft's key names for BART's q_proj/v_proj.
    let adapter = out.join("bart-lora-cnndm/adapter");
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 8);
    let tensors = kiln_peft::read_tensors(&adapter.join("adapter_model.safetensors")).unwrap();
    assert!(
        tensors
            .keys()
            .any(|k| k == "base_model.model.model.encoder.layers.0.self_attn.q_proj.lora_A.weight"),
        "{:?}",
        tensors.keys().collect::<Vec<_>>()
    );
    assert!(v["trainable_params"].as_u64().unwrap() < v["total_params"].as_u64().unwrap() / 4);

    let v = run_recipe(
        out,
        "prefix-cnndm",
        &s(&[
            "--model",
            &fx("bart"),
            "--dataset",
            &fx("samples/cnndm"),
            "--epochs",
            "3",
            "--learning-rate",
            "5e-2",
            "--num-virtual-tokens",
            "4",
        ]),
    );
    for k in ["rouge1", "rouge2", "rougeL", "rougeLsum"] {
        assert!(v["rouge"][k].as_f64().is_some(), "{k}");
    }
    assert!(out.join("prefix-cnndm/rouge.png").exists());
    // The prefix is in peft's layout: one `prompt_embeddings` [n, num_layers · 2 · d_model] tensor.
    let adapter = out.join("prefix-cnndm/adapter");
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "PREFIX_TUNING");
    assert_eq!(cfg["task_type"], "SEQ_2_SEQ_LM");
    assert_eq!(cfg["num_transformer_submodules"], 2);
    let tensors = kiln_peft::read_tensors(&adapter.join("adapter_model.safetensors")).unwrap();
    assert_eq!(tensors["prompt_embeddings"].shape, vec![4, 2 * 2 * 32]);
    assert_eq!(v["trainable_params"], 4 * 2 * 2 * 32);
    let losses: Vec<f64> = std::fs::read_to_string(out.join("prefix-cnndm/metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
        .collect();
    // 36 articles in batches of 4: 9 steps an epoch; the last epoch's mean loss is below the first's.
    let mean = |l: &[f64]| l.iter().sum::<f64>() / l.len() as f64;
    assert_eq!(losses.len(), 27);
    assert!(
        mean(&losses[18..]) < mean(&losses[..9]) - 0.05,
        "prefix tuning lowers the loss: {losses:?}"
    );

    let v = run_recipe(
        out,
        "bart-lora-vs-full",
        &s(&[
            "--model",
            &fx("bart"),
            "--dataset",
            &fx("samples/cnndm"),
            "--epochs",
            "1",
        ]),
    );
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows[0]["trainable_params"].as_u64() < rows[1]["trainable_params"].as_u64());
    assert!(out.join("bart-lora-vs-full/comparison.md").exists());

    let v = run_recipe(
        out,
        "opt-icl-sst2",
        &s(&[
            "--model",
            &fx("opt"),
            "--dataset",
            &fx("samples/sentiment"),
            "--max-eval-samples",
            "8",
        ]),
    );
    assert_eq!(v["k"], 3);
    assert!(v["accuracy"].as_f64().is_some());

    let v = run_recipe(
        out,
        "prompt-tuning-sst2",
        &s(&[
            "--model",
            &fx("opt"),
            "--dataset",
            &fx("samples/sentiment"),
            "--epochs",
            "1",
            "--max-eval-samples",
            "8",
        ]),
    );
    assert!(
        v["parameters"]
            .as_str()
            .unwrap()
            .starts_with("trainable params: 256 "),
        "{}",
        v["parameters"]
    );
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("prompt-tuning-sst2/adapter/adapter_config.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "PROMPT_TUNING");
    assert_eq!(cfg["num_virtual_tokens"], 8);
    let losses: Vec<f64> = std::fs::read_to_string(out.join("prompt-tuning-sst2/metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
        .collect();
    assert!(
        losses.last().unwrap() < &losses[0],
        "prompt tuning lowers the loss: {losses:?}"
    );

    let v = run_recipe(out, "gpt2-generate", &s(&["--model", &fx("gpt2")]));
    for m in ["greedy", "beam", "sampling"] {
        assert!(
            !v["outputs"][m]["ids"].as_array().unwrap().is_empty(),
            "{m}"
        );
    }
    let v = run_recipe(out, "t0-zero-shot", &s(&["--model", &fx("t5-v1_1")]));
    assert!(v["answer"].is_string());
}

#[test]
fn nonsense_flags_are_rejected_before_any_work() {
    // A model that does not exist: a flag error (not a loading error) shows the flags are checked first.
    let missing = "/nonexistent/model-for-flag-checks".to_string();
    for (args, needle) in [
        (
            vec![
                "generate",
                "--model-dir",
                &missing,
                "--prompt",
                "hi",
                "--num-beams",
                "0",
            ],
            "num_beams",
        ),
        (
            vec![
                "generate",
                "--model-dir",
                &missing,
                "--prompt",
                "hi",
                "--do-sample",
                "--top-p",
                "1.5",
            ],
            "top_p",
        ),
        (
            vec![
                "generate",
                "--model-dir",
                &missing,
                "--prompt",
                "hi",
                "--do-sample",
                "--temperature",
                "0",
            ],
            "temperature",
        ),
        (
            vec![
                "generate",
                "--model-dir",
                &missing,
                "--prompt",
                "hi",
                "--early-stopping",
                "maybe",
            ],
            "early-stopping",
        ),
        (
            vec![
                "generate",
                "--model-dir",
                "/nonexistent/dir",
                "--prompt",
                "hi",
            ],
            "nonexistent",
        ),
        (
            vec![
                "zero-shot",
                "--model-dir",
                &missing,
                "--context",
                "c",
                "--question",
                "q",
                "--top-p",
                "0",
            ],
            "top_p",
        ),
        (
            vec![
                "summarize",
                "--model-dir",
                &missing,
                "--input",
                "/nonexistent/article.txt",
                "--num-return-sequences",
                "0",
            ],
            "num_return_sequences",
        ),
        (
            vec!["train", "--recipe", "no-such-recipe"],
            "unknown recipe",
        ),
        (
            vec![
                "train",
                "--recipe",
                "bert-sst2",
                "--model",
                &missing,
                "--save-every-steps",
                "0",
            ],
            "positive",
        ),
        (
            vec!["train", "--recipe", "bert-sst2", "--epochs", "0"],
            "positive",
        ),
    ] {
        let (ok, _, stderr) = kiln(&args);
        assert!(!ok, "{args:?} should fail");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        if needle != "nonexistent" {
            assert!(
                !stderr.contains("model-for-flag-checks"),
                "{args:?}: rejected only after trying to load the model: {stderr}"
            );
        }
    }
}

#[test]
fn generate_json_has_ids_and_text_and_score_has_logprobs() {
    let (ok, out, err) = kiln(&[
        "generate",
        "--model-dir",
        &fx("gpt2"),
        "--prompt",
        "The film was",
        "--num-beams",
        "5",
        "--no-repeat-ngram-size",
        "2",
        "--max-new-tokens",
        "12",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let seq = &v["results"][0]["sequences"][0];
    // The same tokens transformers' generate gives for this prompt (fixtures/reference/gpt2.json, mode beam).
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("reference/gpt2.json")).unwrap(),
    )
    .unwrap();
    let want = &r["generate"]["beam"]["single"][0]["sequences"][0];
    let prompt_len = r["generate"]["beam"]["single"][0]["prompt_ids"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        seq["ids"].as_array().unwrap()[..],
        want.as_array().unwrap()[prompt_len..]
    );
    assert!(seq["text"].is_string());

    let (ok, out, err) = kiln(&[
        "score",
        "--model-dir",
        &fx("opt"),
        "--text",
        "The film was good",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        v["logprobs"].as_array().unwrap().len() + 1,
        v["ids"].as_array().unwrap().len()
    );
    assert!(v["perplexity"].as_f64().unwrap() > 1.0);
}

#[test]
fn rouge_cli_matches_the_library_and_plots() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("p.txt");
    let r = t.path().join("r.txt");
    std::fs::write(&p, "the cat sat on the mat\npolice killed the gunman\n").unwrap();
    std::fs::write(
        &r,
        "the cat was on the mat\nthe gunman was shot by police\n",
    )
    .unwrap();
    let png = t.path().join("rouge.png");
    let (ok, out, err) = kiln(&[
        "rouge",
        "--predictions",
        p.to_str().unwrap(),
        "--references",
        r.to_str().unwrap(),
        "--stemmer",
        "--json",
        "--plot",
        png.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let scorer = kiln_metrics::RougeScorer::new(["rouge1"], true).unwrap();
    let a = scorer.score("the cat was on the mat", "the cat sat on the mat")["rouge1"].fmeasure;
    let b = scorer.score("the gunman was shot by police", "police killed the gunman")["rouge1"]
        .fmeasure;
    let got = v["mean"]["rouge1"]["fmeasure"].as_f64().unwrap();
    assert!((got - (a + b) / 2.0).abs() < 1e-12, "{got}");
    assert!(png.exists());
    let (ok, _, err) = kiln(&[
        "rouge",
        "--predictions",
        p.to_str().unwrap(),
        "--references",
        p.to_str().unwrap(),
        "--types",
        "rouge7x",
    ]);
    assert!(!ok && err.contains("rouge7x"), "{err}");
}

#[test]
fn peft_merge_writes_a_checkpoint_that_matches_peft_merged_logits() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("merged");
    let (ok, _, err) = kiln(&[
        "peft",
        "merge",
        "--model-dir",
        &fx("gpt2"),
        "--adapter",
        &fx("peft/gpt2-lora"),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("peft/gpt2-lora/reference.json")).unwrap(),
    )
    .unwrap();
    type Fb = burn::backend::Flex;
    let device = Default::default();
    let (_, m, report) = kiln_models::gpt2::load::<Fb>(&out, &device).unwrap();
    assert!(report.unused.is_empty());
    let ids: Vec<Vec<u32>> = r["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    let mask: Vec<Vec<u8>> = r["attention_mask"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u8)
                .collect()
        })
        .collect();
    let logits = m.forward(
        kiln_models::attention::ids_tensor::<Fb>(&ids, &device),
        Some(&mask),
    );
    let [b, s, v] = logits.dims();
    let got: Vec<f32> = logits.into_data().to_vec().unwrap();
    fn flat(v: &serde_json::Value) -> Vec<f32> {
        match v {
            serde_json::Value::Array(a) => a.iter().flat_map(flat).collect(),
            x => vec![x.as_f64().unwrap() as f32],
        }
    }
    let want = flat(&r["merged_logits"]);
    for bi in 0..b {
        for si in (0..s).filter(|&si| mask[bi][si] == 1) {
            for k in 0..v {
                let i = (bi * s + si) * v + k;
                assert!(
                    (got[i] - want[i]).abs() < 1e-4,
                    "({bi},{si},{k}): {} vs {}",
                    got[i],
                    want[i]
                );
            }
        }
    }
    let (ok, _, err) = kiln(&["peft", "inspect", &fx("peft/gpt2-lora"), "--json"]);
    assert!(ok, "{err}");
    let (ok, out, err) = kiln(&[
        "generate",
        "--model-dir",
        &fx("gpt2"),
        "--adapter",
        &fx("peft/gpt2-lora"),
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "4",
        "--json",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("\"ids\""));
    let (ok, _, err) = kiln(&[
        "generate",
        "--model-dir",
        &fx("gpt2"),
        "--adapter",
        &fx("peft/opt-lora"),
        "--prompt",
        "Hello",
    ]);
    assert!(
        !ok && !err.contains("panicked"),
        "an adapter for another base is a clear error: {err}"
    );
}

/// `--adapter` takes prompt-learning adapters too: `generate` with a GPT-2 prefix and `summarize` with a BART
/// prefix / prompt give what the library gives for the same model and inputs (and differ from the bare model).
#[test]
fn prompt_adapters_work_with_generate_and_summarize() {
    use kiln_models::generation::GenerationConfig;
    type Fb = burn::backend::Flex;
    let device = Default::default();
    let ids_of = |out: &str| -> Vec<u32> {
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let ids = if v.get("results").is_some() {
            v["results"][0]["sequences"][0]["ids"].clone()
        } else {
            v["ids"].clone()
        };
        ids.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };

    // GPT-2 + prefix.
    let with = ids_of(&kiln_with_adapter(
        &[
            "generate",
            "--model-dir",
            &fx("gpt2"),
            "--prompt",
            "the cat sat",
            "--max-new-tokens",
            "5",
            "--json",
        ],
        Some("peft/gpt2-prefix"),
    ));
    let pipe = kiln_models::auto::CausalPipeline::<Fb>::load(&fx("gpt2"), &device).unwrap();
    let (ids, mask) = pipe.encode_left_padded(&["the cat sat"]).unwrap();
    let pm = kiln_models::prompt::PromptModel::from_pretrained(
        pipe.model.clone(),
        &fixtures().join("peft/gpt2-prefix"),
        false,
    )
    .unwrap();
    let mut cfg = pipe.generation.clone();
    cfg.max_new_tokens = Some(5);
    let out =
        kiln_models::generation::generate(&mut pm.session(), &ids, &mask, &cfg, None).unwrap();
    assert_eq!(with, out.sequences[0][out.prompt_len..].to_vec());

    // BART + prefix / prompt through `summarize`.
    let t = tempfile::tempdir().unwrap();
    let input = t.path().join("a.jsonl");
    std::fs::write(
        &input,
        "{\"article\": \"the cat sat on the mat and the dog ran in the park all day long\"}\n",
    )
    .unwrap();
    let inp = input.display().to_string();
    let model = fx("bart");
    let args = [
        "summarize",
        "--model-dir",
        model.as_str(),
        "--input",
        inp.as_str(),
        "--max-new-tokens",
        "6",
        "--json",
    ];
    let summarize = |adapter: Option<&str>| ids_of(&kiln_with_adapter(&args, adapter));
    let bare = summarize(None);
    let s2s = kiln_models::auto::Seq2SeqPipeline::<Fb>::load(&fx("bart"), &device).unwrap();
    let (ids, mask, _) = s2s
        .encode_right_padded(
            &["the cat sat on the mat and the dog ran in the park all day long"],
            Some(1024),
        )
        .unwrap();
    let mut differs = false;
    for name in ["peft/bart-prefix", "peft/bart-prompt"] {
        let got = summarize(Some(name));
        let pm = kiln_models::prompt_seq2seq::Seq2SeqPromptModel::from_pretrained(
            s2s.model.clone(),
            &fixtures().join(name),
            false,
        )
        .unwrap();
        let cfg = GenerationConfig {
            max_new_tokens: Some(6),
            ..s2s.generation.clone()
        };
        let out = kiln_models::seq2seq::generate(&pm, &ids, &mask, &cfg, None).unwrap();
        assert_eq!(got, out.sequences[0], "{name}");
        differs |= got != bare;
    }
    assert!(differs, "the adapters change the summary");
}

/// Run `kiln` with `args` (+ `--adapter fixtures/<adapter>`), asserting success; returns stdout.
fn kiln_with_adapter(args: &[&str], adapter: Option<&str>) -> String {
    let a = adapter.map(fx);
    let mut all = args.to_vec();
    if let Some(a) = &a {
        all.extend(["--adapter", a.as_str()]);
    }
    let (ok, out, err) = kiln(&all);
    assert!(ok, "{err}");
    out
}

/// `kiln train --recipe bert-sst2` on the tiny BERT and 48 sentiment rows: 6 steps per epoch, 2 epochs,
/// the checkpoint also written every 4 steps (so: step 4, end of epoch 1 = step 6, step 8, end = step 12).
fn checkpointed_train_args(out: &Path) -> Vec<String> {
    [
        "train",
        "--recipe",
        "bert-sst2",
        "--model",
        &fx("bert"),
        "--dataset",
        &fx("samples/sentiment"),
        "--max-samples",
        "48",
        "--max-eval-samples",
        "16",
        "--batch-size",
        "8",
        "--epochs",
        "2",
        "--learning-rate",
        "1e-3",
        "--save-every-steps",
        "4",
        "--out",
        &out.display().to_string(),
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn train_losses(out: &Path) -> Vec<(usize, f64)> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("train_report.json")).unwrap())
            .unwrap();
    serde_json::from_value(v["state"]["losses"].clone()).unwrap()
}

/// A run SIGKILLed while it writes a checkpoint (the test hook in `kiln_train::trainer` tears the temp
/// directory and stalls there) resumes, in a new process, from the last complete checkpoint, and ends
/// with exactly the losses of an uninterrupted run.
#[test]
fn killed_during_a_checkpoint_write_resumes_from_the_last_complete_one() {
    use std::io::BufRead;
    let t = tempfile::tempdir().unwrap();
    let whole = t.path().join("whole");
    let (ok, _, err) = kiln(
        &checkpointed_train_args(&whole)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(ok, "uninterrupted run failed: {err}");
    let want = train_losses(&whole);
    assert_eq!(want.len(), 12);

    // Killed in the second checkpoint write (end of epoch 1, step 6): the complete one is step 4's.
    let part = t.path().join("part");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(checkpointed_train_args(&part))
        .env("HF_HUB_OFFLINE", "1")
        .env("KILN_TEST_STALL_IN_CHECKPOINT", "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = stderr.read_line(&mut line).unwrap();
        assert!(n > 0, "kiln exited before the checkpoint hook: {seen}");
        seen.push_str(&line);
        if line.starts_with("kiln-test: stalled in checkpoint write") {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL, mid-write
    let status = child.wait().unwrap();
    assert!(!status.success());
    // What the kill left: a torn temp directory next to the previous complete checkpoint.
    let tmp = part.join("checkpoint.tmp");
    assert!(tmp.is_dir(), "the kill should leave checkpoint.tmp");
    assert!(!tmp.join("state.json").exists());
    let len = |p: PathBuf| std::fs::metadata(p).unwrap().len();
    assert!(
        len(tmp.join("optimizer.mpk")) < len(part.join("checkpoint/optimizer.mpk")),
        "the optimizer file in the temp directory is torn"
    );
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(part.join("checkpoint/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["step"], 4, "last complete checkpoint");
    assert!(!part.join("train_report.json").exists());

    let mut args = checkpointed_train_args(&part);
    args.push("--resume".into());
    let (ok, _, err) = kiln(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "resumed run failed: {err}");
    assert!(
        err.contains("checkpoint.tmp") && err.contains("interrupted"),
        "the stale temp is reported: {err}"
    );
    assert!(!tmp.exists(), "the torn temp directory is removed");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(part.join("train_report.json")).unwrap())
            .unwrap();
    assert_eq!(
        report["resumed_from"],
        serde_json::json!({"epoch": 0, "batch": 4}),
        "resumed from step 4's checkpoint"
    );
    assert_eq!(
        train_losses(&part),
        want,
        "the resumed run must end with the uninterrupted run's losses"
    );
}

/// The output directory is checked before anything is loaded: with a model that does not exist, the
/// error is still the output directory's.
#[test]
fn unwritable_output_directory_is_reported_before_loading_anything() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = file.join("run").display().to_string();
    let (ok, _, stderr) = kiln(&[
        "train",
        "--recipe",
        "bert-sst2",
        "--model",
        "/nonexistent/model",
        "--out",
        &out,
    ]);
    assert!(!ok);
    assert!(
        stderr.contains(&out) && stderr.contains("cannot create output directory"),
        "{stderr}"
    );
    assert!(!stderr.contains("nonexistent/model"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A dataset row longer than the model takes is truncated with a warning, never an error or a panic.
#[test]
fn rows_longer_than_the_model_are_truncated_with_a_warning() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let long = "the film is long and dull . ".repeat(400);
    for split in ["train", "validation"] {
        let rows: String = (0..4)
            .map(|i| {
                let s = if i == 0 { long.as_str() } else { "a fine film" };
                format!(
                    "{}\n",
                    serde_json::json!({"idx": i, "sentence": s, "label": i % 2})
                )
            })
            .collect();
        std::fs::write(data.join(format!("{split}.jsonl")), rows).unwrap();
    }
    let out = t.path().join("out").display().to_string();
    let (ok, _, stderr) = kiln(&[
        "train",
        "--recipe",
        "bert-sst2",
        "--model",
        &fx("bert"),
        "--dataset",
        &data.display().to_string(),
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--out",
        &out,
        "--json",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("warning: 1 of 4 training rows were longer than the length limit"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: 1 of 4 evaluation rows"),
        "{stderr}"
    );
}
