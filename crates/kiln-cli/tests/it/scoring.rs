//! `kiln score` on encoder-decoders (with and without adapters) and `kiln zero-shot --choices`, against the
//! scores transformers / peft give (fixtures/reference/seq2seq_scores.json).

use super::{fixtures, fx, kiln};

fn reference() -> serde_json::Value {
    let p = fixtures().join("reference/seq2seq_scores.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn score_scores_targets_of_encoder_decoders_with_adapters() {
    let r = reference();
    for case in r["cases"].as_array().unwrap() {
        let model = fx(case["model"].as_str().unwrap());
        let mut args = vec![
            "score".to_string(),
            "--model-dir".into(),
            model,
            "--source".into(),
            case["source"].as_str().unwrap().into(),
            "--text".into(),
            case["target"].as_str().unwrap().into(),
            "--json".into(),
        ];
        if let Some(a) = case["adapter"].as_str() {
            args.extend(["--adapter".to_string(), fx(&format!("peft/{a}"))]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, stdout, stderr) = kiln(&args);
        assert!(ok, "{args:?}: {stderr}");
        let got: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(got["ids"], case["target_ids"], "{args:?}");
        let (a, b) = (got["sum"].as_f64().unwrap(), case["sum"].as_f64().unwrap());
        assert!((a - b).abs() < 1e-3, "{args:?}: {a} vs {b}");
        for (x, y) in got["logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .zip(case["logprobs"].as_array().unwrap())
        {
            assert!(
                (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-4,
                "{args:?}"
            );
        }
    }
    // A decoder-only model refuses --source; an encoder-decoder needs it.
    let (ok, _, stderr) = kiln(&[
        "score",
        "--model-dir",
        &fx("gpt2"),
        "--text",
        "a b",
        "--source",
        "x",
    ]);
    assert!(!ok && stderr.contains("--source"), "{stderr}");
    let (ok, _, stderr) = kiln(&["score", "--model-dir", &fx("bart"), "--text", "a b"]);
    assert!(!ok && stderr.contains("--source"), "{stderr}");
}

#[test]
fn score_batch_mode_reads_jsonl() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("in.jsonl");
    std::fs::write(
        &p,
        "{\"text\": \"Hello world\"}\n{\"text\": \"The film was\"}\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = kiln(&[
        "score",
        "--model-dir",
        &fx("gpt2"),
        "--input",
        &p.display().to_string(),
    ]);
    assert!(ok, "{stderr}");
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    // Each line equals the single-text run.
    let (_, one, _) = kiln(&[
        "score",
        "--model-dir",
        &fx("gpt2"),
        "--text",
        "The film was",
        "--json",
    ]);
    assert_eq!(
        rows[1],
        serde_json::from_str::<serde_json::Value>(one.trim()).unwrap()
    );
}

#[test]
fn zero_shot_choices_rank_by_likelihood_as_transformers() {
    let r = reference();
    let c = &r["choices"][0];
    let want = c["scores"].as_array().unwrap();
    let choices: Vec<&str> = want.iter().map(|w| w["choice"].as_str().unwrap()).collect();
    let joined = choices.join("|");
    let base = vec![
        "zero-shot",
        "--model-dir",
        "",
        "--context",
        c["context"].as_str().unwrap(),
        "--question",
        c["question"].as_str().unwrap(),
        "--template",
        c["template"].as_str().unwrap(),
        "--choices",
        &joined,
        "--json",
    ];
    let t5 = fx("t5");
    let mut args = base.clone();
    args[2] = &t5;
    for normalize in [false, true] {
        let mut a = args.clone();
        if normalize {
            a.push("--length-normalize");
        }
        let (ok, stdout, stderr) = kiln(&a);
        assert!(ok, "{stderr}");
        let got: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        let key = if normalize { "mean" } else { "sum" };
        for (g, w) in got["choices"].as_array().unwrap().iter().zip(want) {
            assert_eq!(g["choice"], w["choice"]);
            let gk = if normalize { "mean" } else { "score" };
            let (x, y) = (g[gk].as_f64().unwrap(), w[key].as_f64().unwrap());
            assert!((x - y).abs() < 1e-3, "{key}: {x} vs {y}");
        }
        let best = want
            .iter()
            .max_by(|a, b| {
                a[key]
                    .as_f64()
                    .unwrap()
                    .total_cmp(&b[key].as_f64().unwrap())
            })
            .unwrap();
        assert_eq!(got["answer"], best["choice"], "{key}");
    }
    // Generation flags have no effect with --choices: refused.
    let mut a = args.clone();
    a.extend(["--num-beams", "2"]);
    let (ok, _, stderr) = kiln(&a);
    assert!(!ok && stderr.contains("--choices"), "{stderr}");
}

/// `kiln rouge --per-example`: every pair's scores equal rouge-score's `score(target, prediction)` (the stored
/// reference scores of fixtures/rouge/pairs.jsonl, made by rouge-score 0.1.2 with and without the stemmer).
#[test]
fn rouge_per_example_equals_rouge_score_for_each_pair() {
    let text = std::fs::read_to_string(fixtures().join("rouge/pairs.jsonl")).unwrap();
    let pairs: Vec<serde_json::Value> = text
        .lines()
        .take(300)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let t = tempfile::tempdir().unwrap();
    let input = t.path().join("pairs.jsonl");
    let lines: Vec<String> = pairs
        .iter()
        .map(|p| {
            serde_json::json!({"prediction": p["prediction"], "reference": p["reference"]})
                .to_string()
        })
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    for (stem, key) in [(true, "stem"), (false, "nostem")] {
        let out = t.path().join(format!("{key}.jsonl"));
        let mut args = vec![
            "rouge",
            "--predictions",
            input.to_str().unwrap(),
            "--per-example",
            out.to_str().unwrap(),
            "--types",
            "rouge1,rouge2,rougeL,rougeLsum",
        ];
        if stem {
            args.push("--stemmer");
        }
        let (ok, _, err) = kiln(&args);
        assert!(ok, "{err}");
        let got: Vec<serde_json::Value> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(got.len(), pairs.len());
        for (g, p) in got.iter().zip(&pairs) {
            assert_eq!(g["prediction"], p["prediction"]);
            for ty in ["rouge1", "rouge2", "rougeL", "rougeLsum"] {
                let want = p[key][ty].as_array().unwrap();
                let s = &g["scores"][ty];
                for (field, w) in ["precision", "recall", "fmeasure"].iter().zip(want) {
                    let (x, y) = (s[field].as_f64().unwrap(), w.as_f64().unwrap());
                    assert!(
                        (x - y).abs() < 1e-12,
                        "pair {}: {ty} {field} {x} vs {y}",
                        g["index"]
                    );
                }
            }
        }
    }
}

/// `kiln inspect` loads every architecture and says what head and generation defaults it found.
#[test]
fn inspect_reports_every_architecture() {
    for (model, head) in [
        ("gpt2", "causal LM head"),
        ("opt", "causal LM head"),
        ("bart", "seq2seq LM head tied"),
        ("t5", "seq2seq LM head"),
        ("bert", "sequence classification head, 2 labels"),
    ] {
        let (ok, stdout, stderr) = kiln(&["inspect", "--model-dir", &fx(model), "--json"]);
        assert!(ok, "{model}: {stderr}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(v["model_type"], model, "{stdout}");
        assert!(
            v["head"].as_str().unwrap().contains(head),
            "{model}: {stdout}"
        );
        assert!(v["parameters"].as_u64().unwrap() > 0);
        assert!(v["tensors_loaded"].as_u64().unwrap() > 0);
        if model != "bert" {
            assert!(
                v["generation"]["num_beams"].as_u64().is_some(),
                "{model}: {stdout}"
            );
        }
    }
    let (ok, stdout, _) = kiln(&["inspect", "--model-dir", &fx("bart"), "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["generation"]["forced_eos_token_id"], 2);
}

/// Generation that reaches the model's maximum length stops there with a warning and returns the tokens
/// (it used to fail and lose them).
#[test]
fn generation_at_the_model_maximum_returns_its_tokens_with_a_warning() {
    // The GPT-2 fixture has 64 positions, BART's 64: 65 tokens in all (the last chosen token needs no position).
    // min_new_tokens keeps EOS away, so the run goes to the limit.
    let (ok, stdout, stderr) = kiln(&[
        "generate",
        "--model-dir",
        &fx("gpt2"),
        "-p",
        "Hello",
        "--max-new-tokens",
        "100",
        "--min-new-tokens",
        "100",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("stops at 65 tokens") && stderr.contains("64 positions"),
        "{stderr}"
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let prompt = v["results"][0]["prompt_ids"].as_array().unwrap().len();
    let new = v["results"][0]["sequences"][0]["ids"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(prompt + new, 65, "{stdout}");
    let (ok, _, stderr) = kiln(&[
        "generate",
        "--model-dir",
        &fx("gpt2"),
        "-p",
        "Hello",
        "--max-new-tokens",
        "100",
        "--num-beams",
        "2",
    ]);
    assert!(ok && stderr.contains("64 positions"), "{stderr}");
    // A prompt longer than the positions is an error, not an empty success.
    let long = "the film was good and ".repeat(40);
    let (ok, _, stderr) = kiln(&["generate", "--model-dir", &fx("gpt2"), "-p", &long]);
    assert!(
        !ok && stderr.contains("exceeds the model's 64 positions"),
        "{stderr}"
    );
    let t = tempfile::tempdir().unwrap();
    let art = t.path().join("a.txt");
    std::fs::write(&art, "Heavy rain flooded the streets of the old town.").unwrap();
    let (ok, stdout, stderr) = kiln(&[
        "summarize",
        "--model-dir",
        &fx("bart"),
        "--input",
        art.to_str().unwrap(),
        "--max-new-tokens",
        "100",
        "--num-beams",
        "1",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("64 positions"), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(v["ids"].as_array().unwrap().len() <= 65, "{stdout}");
}

/// `kiln embed` / `kiln classify` default `--max-len` to the model's positions (the BERT fixture has 64) and
/// truncate longer texts with a warning; they used to default to 256 / 512 and fail on such a model.
#[test]
fn embed_and_classify_truncate_to_the_model_positions_with_a_warning() {
    let long = "a great film with a clever script and warm performances ".repeat(20);
    for cmd in ["embed", "classify"] {
        let (ok, stdout, stderr) = kiln(&[
            cmd,
            "--model-dir",
            &fx("bert"),
            "--text",
            &long,
            "--text",
            "short",
            "--json",
        ]);
        assert!(ok, "{cmd}: {stderr}");
        assert!(
            stderr.contains("1 of 2 texts were longer than 64 tokens"),
            "{cmd}: {stderr}"
        );
        let first = stdout.lines().next().unwrap_or_default();
        assert!(
            serde_json::from_str::<serde_json::Value>(first).is_ok(),
            "{stdout}"
        );
        let (ok, _, stderr) = kiln(&[
            cmd,
            "--model-dir",
            &fx("bert"),
            "--text",
            "short",
            "--max-len",
            "1000",
        ]);
        assert!(ok && stderr.contains("--max-len 1000"), "{cmd}: {stderr}");
    }
}

/// `kiln classify --text-pair` (and JSONL `text_pair`) encodes `[CLS] a [SEP] b [SEP]` with token types 0/1:
/// the probabilities equal the softmax of transformers' logits for the same pairs (fixtures/reference/bert.json).
#[test]
fn classify_sentence_pairs_match_transformers() {
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("reference/bert.json")).unwrap(),
    )
    .unwrap();
    let p = &r["pairs"];
    let first: Vec<&str> = p["first"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    let second: Vec<&str> = p["second"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    let logits = p["logits"].as_array().unwrap();
    let want: Vec<Vec<f64>> = logits
        .iter()
        .map(|row| {
            let row: Vec<f64> = row
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = row.iter().map(|x| (x - m).exp()).sum();
            row.iter().map(|x| (x - m).exp() / z).collect()
        })
        .collect();
    let bert = fx("bert");
    let mut args = vec!["classify", "--model-dir", bert.as_str(), "--json"];
    for (a, b) in first.iter().zip(&second) {
        args.extend(["--text", a, "--text-pair", b]);
    }
    let (ok, stdout, stderr) = kiln(&args);
    assert!(ok, "{stderr}");
    let t = tempfile::tempdir().unwrap();
    let input = t.path().join("pairs.jsonl");
    let lines: Vec<String> = first
        .iter()
        .zip(&second)
        .map(|(a, b)| serde_json::json!({"text": a, "text_pair": b}).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let (ok, stdout2, stderr) = kiln(&[
        "classify",
        "--model-dir",
        &bert,
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, stdout2);
    for (line, w) in stdout.lines().zip(&want) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for (x, y) in v["probs"].as_array().unwrap().iter().zip(w) {
            assert!((x.as_f64().unwrap() - y).abs() < 1e-5, "{line} vs {w:?}");
        }
    }
    // One second text per text.
    let (ok, _, stderr) = kiln(&[
        "classify",
        "--model-dir",
        &bert,
        "--text",
        "a",
        "--text",
        "b",
        "--text-pair",
        "c",
    ]);
    assert!(!ok && stderr.contains("--text-pair"), "{stderr}");
}

/// `kiln embed --text-pair`: the pair encoded together and mean-pooled equals transformers' BERT on
/// `tokenizer(a, b)` pooled the same way (fixtures/reference/seq2seq_scores.json `pair_embeddings`).
#[test]
fn embed_sentence_pairs_match_transformers() {
    let r = reference();
    let rows = r["pair_embeddings"].as_array().unwrap();
    let bert = fx("bert");
    let mut args = vec!["embed", "--model-dir", bert.as_str(), "--json"];
    for row in rows {
        args.extend([
            "--text",
            row["text"].as_str().unwrap(),
            "--text-pair",
            row["text_pair"].as_str().unwrap(),
        ]);
    }
    let (ok, stdout, stderr) = kiln(&args);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for (got, want) in v["embeddings"].as_array().unwrap().iter().zip(rows) {
        for (x, y) in got
            .as_array()
            .unwrap()
            .iter()
            .zip(want["embedding"].as_array().unwrap())
        {
            assert!(
                (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-5,
                "{x} vs {y}"
            );
        }
    }
}

/// `kiln icl --labels` ranks the labels by likelihood and reports each one's score: equal to the label
/// log-likelihoods transformers gives for the same k-shot prompts (fixtures/reference/opt-icl.json).
#[test]
fn icl_reports_label_scores_equal_to_transformers() {
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("reference/opt-icl.json")).unwrap(),
    )
    .unwrap();
    let examples = fx(r["examples_file"].as_str().unwrap());
    let opt = fx("opt");
    for case in r["cases"].as_array().unwrap() {
        let (ok, stdout, stderr) = kiln(&[
            "icl",
            "--model-dir",
            &opt,
            "--examples",
            &examples,
            "--input",
            case["input"].as_str().unwrap(),
            "--labels",
            "positive,negative",
            "--json",
        ]);
        assert!(ok, "{stderr}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        let mut best = ("", f64::NEG_INFINITY);
        for s in v["scores"].as_array().unwrap() {
            let label = s["label"].as_str().unwrap();
            let (x, y) = (
                s["score"].as_f64().unwrap(),
                case["label_logprobs"][label].as_f64().unwrap(),
            );
            assert!((x - y).abs() < 1e-3, "{label}: {x} vs {y}");
            if y > best.1 {
                best = (label, y);
            }
        }
        assert_eq!(v["answer"], best.0);
    }
}

/// The `bert-lora-sst2` recipe trains LoRA on BERT (head in modules_to_save), saves the adapter in the PEFT
/// format, and `kiln classify --adapter` takes it.
#[test]
fn bert_lora_recipe_saves_an_adapter_that_classify_takes() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("bert-lora");
    let (ok, stdout, stderr) = kiln(&[
        "train",
        "--recipe",
        "bert-lora-sst2",
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
        "--learning-rate",
        "1e-3",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["recipe"], "bert-lora-sst2");
    let acc = v["final_eval"]["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "SEQ_CLS");
    let (ok, with, stderr) = kiln(&[
        "classify",
        "--model-dir",
        &fx("bert"),
        "--adapter",
        out.join("adapter").to_str().unwrap(),
        "--text",
        "a fine film",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("initialised randomly"), "{stderr}");
    // The trained adapter changes the predictions (LoRA B and the head moved away from their start).
    let (ok, without, _) = kiln(&[
        "classify",
        "--model-dir",
        &fx("bert"),
        "--text",
        "a fine film",
        "--json",
    ]);
    assert!(ok);
    let p = |s: &str| serde_json::from_str::<serde_json::Value>(s.trim()).unwrap()["probs"].clone();
    assert_ne!(p(&with), p(&without));
}
