//! Issue 15 through the binary: no input file makes `kiln` exit 101 or die by a signal; each is an `error:`
//! line naming the file, exit 1.

use std::process::Command;

use super::{copy_fixture, edit_json, fixtures};

/// Runs kiln; asserts a clean failure (exit code 1, not 101 or a signal) and returns stderr.
fn fails_cleanly(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?}: {:?}: {stderr}",
        out.status
    );
    assert!(
        stderr.starts_with("error: ") || stderr.contains("\nerror: "),
        "{stderr}"
    );
    stderr
}

#[test]
fn memory_limit_is_reported() {
    let gpt2 = fixtures().join("gpt2").display().to_string();
    let e = fails_cleanly(
        &["generate", "--model-dir", &gpt2, "-p", "Hello"],
        &[("KILN_MEMORY_LIMIT", "1000")],
    );
    assert!(
        e.contains("config.json") && e.contains("needs") && e.contains("available"),
        "{e}"
    );
}

#[test]
fn out_of_vocabulary_ids_from_files_exit_1_not_101() {
    let t = tempfile::tempdir().unwrap();
    // A tokenizer with an id the model has no embedding for.
    let d = copy_fixture("gpt2", t.path());
    edit_json(&d.join("tokenizer.json"), |v| {
        v["added_tokens"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "id": 405, "content": "qqqzzz", "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": false
            }));
    });
    let ds = d.display().to_string();
    let e = fails_cleanly(&["generate", "--model-dir", &ds, "-p", "hi qqqzzz"], &[]);
    assert!(e.contains("tokenizer.json"), "{e}");
    let e = fails_cleanly(
        &["score", "--model-dir", &ds, "--text", "hi qqqzzz there"],
        &[],
    );
    assert!(e.contains("tokenizer.json"), "{e}");
    // Special ids beyond the vocabulary, for each command family.
    for (model, field, args) in [
        (
            "gpt2",
            "pad_token_id",
            vec!["generate", "-p", "Hello", "-p", "Hi there"],
        ),
        (
            "bart",
            "decoder_start_token_id",
            vec!["zero-shot", "--context", "c", "--question", "q"],
        ),
        (
            "t5",
            "forced_bos_token_id",
            vec!["zero-shot", "--context", "c", "--question", "q"],
        ),
    ] {
        let d = copy_fixture(model, &t.path().join(field));
        edit_json(&d.join("generation_config.json"), |v| {
            v[field] = serde_json::json!(1101)
        });
        let ds = d.display().to_string();
        let mut a = vec![args[0], "--model-dir", &ds];
        a.extend(&args[1..]);
        let e = fails_cleanly(&a, &[]);
        assert!(
            e.contains("generation_config.json") && e.contains(field),
            "{e}"
        );
    }
    // A terabyte config on the small checkpoint.
    let d = copy_fixture("bart", &t.path().join("huge"));
    edit_json(&d.join("config.json"), |v| {
        v["d_model"] = serde_json::json!(65536);
        v["vocab_size"] = serde_json::json!(10_000_000);
    });
    let ds = d.display().to_string();
    let e = fails_cleanly(
        &[
            "zero-shot",
            "--model-dir",
            &ds,
            "--context",
            "c",
            "--question",
            "q",
        ],
        &[],
    );
    assert!(
        e.contains("model.safetensors") && e.contains("expected shape"),
        "{e}"
    );
}
