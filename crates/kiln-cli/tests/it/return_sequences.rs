//! `kiln summarize` and `kiln zero-shot` print every sequence `--num-return-sequences` asks for, with beam
//! search's `sequences_scores`, as transformers' `generate` returns them
//! (fixtures/reference/return_sequences.json, from fixtures/generate_return_sequences.py).

use super::{copy_fixture, edit_json, fixtures, fx, kiln};

fn reference() -> serde_json::Value {
    let p = fixtures().join("reference/return_sequences.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn flags(r: &serde_json::Value) -> Vec<String> {
    let f = &r["flags"];
    vec![
        "--num-beams".into(),
        f["num_beams"].to_string(),
        "--num-return-sequences".into(),
        f["num_return_sequences"].to_string(),
        "--max-new-tokens".into(),
        f["max_new_tokens"].to_string(),
        "--json".into(),
    ]
}

/// One JSON line's `sequences` against the reference entry: ids identical, scores within 1e-4.
fn assert_sequences(got: &serde_json::Value, want: &serde_json::Value, what: &str) {
    let seqs = got["sequences"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: {got}"));
    let want_ids = want["sequences"].as_array().unwrap();
    let want_scores = want["sequences_scores"].as_array().unwrap();
    assert_eq!(seqs.len(), want_ids.len(), "{what}: {got}");
    assert_eq!(seqs.len(), 3, "{what}");
    for (j, sq) in seqs.iter().enumerate() {
        assert_eq!(sq["ids"], want_ids[j], "{what}: sequence {j}");
        let (a, b) = (
            sq["score"].as_f64().unwrap(),
            want_scores[j].as_f64().unwrap(),
        );
        assert!(
            (a - b).abs() < 1e-4,
            "{what}: sequence {j}: score {a} vs {b}"
        );
        assert!(sq["text"].is_string());
    }
}

#[test]
fn summarize_prints_every_returned_sequence_with_its_beam_score() {
    let r = reference();
    let t = tempfile::tempdir().unwrap();
    for model in ["bart", "t5"] {
        let want = r["summarize"][model].as_array().unwrap();
        let input = t.path().join(format!("{model}.jsonl"));
        let lines: Vec<String> = want
            .iter()
            .map(|e| serde_json::json!({"article": e["text"]}).to_string())
            .collect();
        std::fs::write(&input, lines.join("\n")).unwrap();
        let mut args = vec![
            "summarize".to_string(),
            "--model-dir".into(),
            fx(model),
            "--input".into(),
            input.display().to_string(),
        ];
        args.extend(flags(&r));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, stdout, stderr) = kiln(&args);
        assert!(ok, "{model}: {stderr}");
        let rows: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), want.len(), "{model}: {stdout}");
        for (i, (got, w)) in rows.iter().zip(want).enumerate() {
            assert_sequences(got, w, &format!("summarize {model} article {i}"));
            assert_eq!(got["summary"], got["sequences"][0]["text"]);
        }
        // Text mode: one numbered line per sequence.
        let args: Vec<&str> = args.iter().copied().filter(|a| *a != "--json").collect();
        let (ok, stdout, stderr) = kiln(&args);
        assert!(ok, "{stderr}");
        let numbered = stdout
            .lines()
            .filter(|l| l.starts_with(['1', '2', '3']))
            .count();
        assert_eq!(numbered, 3 * want.len(), "{stdout}");
    }
}

#[test]
fn zero_shot_prints_every_returned_sequence_with_its_beam_score() {
    let r = reference();
    let want = &r["zero_shot"]["t5"][0];
    let qa = &r["zero_shot"]["qa"][0];
    let mut args = vec![
        "zero-shot".to_string(),
        "--model-dir".into(),
        fx("t5"),
        "--context".into(),
        qa["context"].as_str().unwrap().into(),
        "--question".into(),
        qa["question"].as_str().unwrap().into(),
        "--template".into(),
        r["template"].as_str().unwrap().into(),
    ];
    args.extend(flags(&r));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, stdout, stderr) = kiln(&args);
    assert!(ok, "{stderr}");
    let got: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_sequences(&got, want, "zero-shot t5");
    assert_eq!(got["answer"], got["sequences"][0]["text"]);
}

/// The audit's flags that were accepted and then ignored on some path: each is now refused with a message
/// naming it, before the model is loaded (the model path does not exist) where the flags alone decide.
#[test]
fn flags_that_would_be_ignored_are_refused() {
    let missing = "/nonexistent/model-for-flag-checks";
    let t = tempfile::tempdir().unwrap();
    let jsonl = t.path().join("p.jsonl");
    std::fs::write(&jsonl, "{\"prediction\": \"a\", \"reference\": \"a\"}\n").unwrap();
    let jsonl = jsonl.display().to_string();
    let gpt2 = fx("gpt2");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        // Beam-search sampling is not implemented: it used to run plain beam search.
        (
            vec![
                "generate",
                "--model-dir",
                missing,
                "-p",
                "hi",
                "--do-sample",
                "--num-beams",
                "4",
            ],
            "--do-sample",
        ),
        (
            vec![
                "zero-shot",
                "--model-dir",
                missing,
                "--context",
                "c",
                "--question",
                "q",
                "--do-sample",
                "--num-beams",
                "3",
            ],
            "--do-sample",
        ),
        // More sequences than beams (with --do-sample this used to index past the beams and panic).
        (
            vec![
                "generate",
                "--model-dir",
                missing,
                "-p",
                "hi",
                "--num-beams",
                "2",
                "--num-return-sequences",
                "3",
            ],
            "--num-return-sequences",
        ),
        (
            vec![
                "zero-shot",
                "--model-dir",
                missing,
                "--context",
                "c",
                "--question",
                "q",
                "--input",
                &jsonl,
            ],
            "--input",
        ),
        (
            vec![
                "icl",
                "--model-dir",
                missing,
                "--examples",
                &jsonl,
                "--input",
                "x",
                "--labels",
                "a,b",
                "--max-new-tokens",
                "3",
            ],
            "--max-new-tokens",
        ),
        (
            vec![
                "score",
                "--model-dir",
                missing,
                "--text",
                "a b c",
                "--logits",
            ],
            "--logits",
        ),
        (
            vec!["rouge", "--predictions", &jsonl, "--references", &jsonl],
            "--references",
        ),
        (
            vec![
                "train",
                "--recipe",
                "gpt2-generate",
                "--model",
                missing,
                "--epochs",
                "2",
            ],
            "--epochs",
        ),
        (
            vec![
                "train",
                "--recipe",
                "t0-zero-shot",
                "--model",
                missing,
                "--dataset",
                "x",
            ],
            "--dataset",
        ),
        (
            vec![
                "train",
                "--recipe",
                "bert-sst2",
                "--model",
                missing,
                "--adapter-size",
                "8",
            ],
            "--adapter-size",
        ),
        (
            vec![
                "train",
                "--recipe",
                "opt-icl-sst2",
                "--model",
                missing,
                "--max-samples",
                "3",
            ],
            "--max-samples",
        ),
        // --stream with what it cannot stream (after loading: beams may come from the checkpoint).
        (
            vec![
                "generate",
                "--model-dir",
                &gpt2,
                "-p",
                "Hello",
                "--stream",
                "--json",
            ],
            "--stream",
        ),
        (
            vec![
                "generate",
                "--model-dir",
                &gpt2,
                "-p",
                "Hello",
                "--stream",
                "--num-beams",
                "2",
            ],
            "--stream",
        ),
        (
            vec![
                "generate",
                "--model-dir",
                &gpt2,
                "-p",
                "Hello",
                "-p",
                "Hi",
                "--stream",
            ],
            "--stream",
        ),
    ];
    for (args, needle) in cases {
        let (ok, _, stderr) = kiln(&args);
        assert!(!ok, "{args:?} should fail");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        assert!(
            !stderr.contains("model-for-flag-checks"),
            "{args:?}: rejected only after trying to load the model: {stderr}"
        );
    }
}

/// More of the audit: a template without a placeholder for a given value, and `--do-sample false` (the flag could
/// only turn sampling on; a checkpoint that samples by default could not be decoded greedily).
#[test]
fn template_placeholders_and_do_sample_false() {
    let (ok, _, stderr) = kiln(&[
        "zero-shot",
        "--model-dir",
        &fx("t5"),
        "--context",
        "c",
        "--question",
        "q",
        "--template",
        "question: {question}",
    ]);
    assert!(!ok && stderr.contains("{context}"), "{stderr}");
    let t = tempfile::tempdir().unwrap();
    let d = copy_fixture("gpt2", t.path());
    edit_json(&d.join("generation_config.json"), |v| {
        v["do_sample"] = serde_json::json!(true)
    });
    let ds = d.display().to_string();
    let greedy = |dir: &str, extra: &[&str]| {
        let mut a = vec![
            "generate",
            "--model-dir",
            dir,
            "-p",
            "Hello",
            "--max-new-tokens",
            "8",
            "--json",
        ];
        a.extend(extra);
        let (ok, out, err) = kiln(&a);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["results"][0]["sequences"][0]["ids"].clone()
    };
    let reference = greedy(&fx("gpt2"), &[]);
    assert_eq!(greedy(&ds, &["--do-sample", "false"]), reference);
    let (ok, _, stderr) = kiln(&[
        "generate",
        "--model-dir",
        &ds,
        "-p",
        "Hello",
        "--do-sample",
        "maybe",
    ]);
    assert!(!ok && stderr.contains("maybe"), "{stderr}");
}
