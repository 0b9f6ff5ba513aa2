//! Reliability, round 2: inputs that passed every per-field check but could still abort the process, reach a
//! backend op with an out-of-range index, or produce garbage with exit 0. One test per class, on every
//! architecture where the class applies.

use std::path::{Path, PathBuf};

use kiln_models::auto::{CausalPipeline, Seq2SeqPipeline};
use kiln_models::causal::CausalSession;
use kiln_models::generation::{generate, GenerationConfig};
use kiln_models::{bart, bert, gpt2, opt, t5, Error};
use serde_json::{json, Value};

use crate::common::*;

const ARCHS: [&str; 5] = ["gpt2", "opt", "bart", "t5", "bert"];

/// A copy of a fixture checkpoint in a temp dir, to damage.
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join(name);
    std::fs::create_dir(&d).unwrap();
    for e in std::fs::read_dir(fixtures().join(name)).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
    }
    (t, d)
}

fn edit_json(p: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, v.to_string()).unwrap();
}

/// Load `dir` as architecture `arch`, keeping only the error.
fn load_arch(arch: &str, dir: &Path) -> Result<(), Error> {
    let dev = device();
    match arch {
        "gpt2" => gpt2::load::<B>(dir, &dev).map(|_| ()),
        "opt" => opt::load::<B>(dir, &dev).map(|_| ()),
        "bart" => bart::load::<B>(dir, &dev).map(|_| ()),
        "t5" => t5::load::<B>(dir, &dev).map(|_| ()),
        "bert" => bert::load::<B>(dir, &dev).map(|_| ()),
        _ => unreachable!(),
    }
}

/// Class 1: every field in range, the model terabytes. Before the fix, loading filled a random initialisation
/// of the whole model before comparing shapes (`memory allocation of 2621440000000 bytes failed`, SIGABRT).
/// Now the config's shapes are compared with the safetensors headers first, and nothing is allocated.
#[test]
fn terabyte_config_on_a_small_checkpoint_is_a_shape_error_not_an_abort() {
    for arch in ARCHS {
        let (_t, d) = copy_fixture(arch);
        edit_json(&d.join("config.json"), |v| {
            v["vocab_size"] = json!(10_000_000);
            for k in ["n_embd", "hidden_size", "d_model"] {
                if v.get(k).is_some() {
                    v[k] = json!(65536);
                }
            }
            for k in ["word_embed_proj_dim"] {
                if v.get(k).is_some() {
                    v[k] = json!(65536);
                }
            }
            for k in [
                "n_layer",
                "num_hidden_layers",
                "num_layers",
                "encoder_layers",
                "decoder_layers",
            ] {
                if v.get(k).is_some() {
                    v[k] = json!(1024);
                }
            }
        });
        let e = load_arch(arch, &d).expect_err(arch);
        let msg = e.to_string();
        assert!(
            matches!(e, Error::ShapeMismatch { .. }),
            "{arch}: expected a shape mismatch, got {msg}"
        );
        assert!(msg.contains("model.safetensors"), "{arch}: {msg}");
    }
}

/// Class 2: ids that a tokenizer produces beyond the model's vocabulary are an error naming tokenizer.json, the
/// id and the size — never an index into the embedding (burn-flex panicked in its gather, exit 101).
#[test]
fn tokenizer_ids_beyond_the_model_vocabulary_are_errors_naming_tokenizer_json() {
    for arch in ["gpt2", "opt", "bart", "t5", "bert"] {
        let (_t, d) = copy_fixture(arch);
        let vocab = {
            let c: Value =
                serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap())
                    .unwrap();
            c["vocab_size"].as_u64().unwrap()
        };
        edit_json(&d.join("tokenizer.json"), |v| {
            v["added_tokens"].as_array_mut().unwrap().push(json!({
                "id": vocab + 5, "content": "qqqzzz", "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": false
            }));
        });
        let text = "hello qqqzzz";
        let e = match arch {
            "gpt2" | "opt" => {
                let p = CausalPipeline::<B>::load(d.to_str().unwrap(), &device()).unwrap();
                p.encode_left_padded(&[text]).unwrap_err()
            }
            "bart" | "t5" => {
                let p = Seq2SeqPipeline::<B>::load(d.to_str().unwrap(), &device()).unwrap();
                p.encode_right_padded(&[text], None).unwrap_err()
            }
            _ => {
                let (cfg, model, _) = bert::load::<B>(&d, &device()).unwrap();
                let tok = kiln_models::tokenizer::Tokenizer::from_dir(&d)
                    .unwrap()
                    .with_model_vocab(cfg.vocab_size);
                model
                    .sentence_embeddings(&tok, &[text], None)
                    .map(|_| ())
                    .unwrap_err()
            }
        };
        let msg = e.to_string();
        assert!(msg.contains("tokenizer.json"), "{arch}: {msg}");
        assert!(msg.contains(&format!("of {vocab}")), "{arch}: {msg}");
        assert!(msg.contains("qqqzzz"), "{arch}: {msg}");
    }
}

/// Class 2: special ids in generation_config.json beyond the vocabulary (batched prompts pad with
/// `pad_token_id`, the decoder starts with `decoder_start_token_id`) are errors naming the file and field when
/// the checkpoint loads.
#[test]
fn special_ids_beyond_the_vocabulary_are_errors_naming_the_file_and_field() {
    let cases: [(&str, &str); 6] = [
        ("gpt2", "pad_token_id"),
        ("opt", "eos_token_id"),
        ("bart", "decoder_start_token_id"),
        ("t5", "pad_token_id"),
        ("bart", "forced_bos_token_id"),
        ("t5", "forced_eos_token_id"),
    ];
    for (arch, field) in cases {
        let (_t, d) = copy_fixture(arch);
        edit_json(&d.join("generation_config.json"), |v| {
            v[field] = json!(1101)
        });
        let e = match arch {
            "gpt2" | "opt" => CausalPipeline::<B>::load(d.to_str().unwrap(), &device())
                .map(|_| ())
                .unwrap_err(),
            _ => Seq2SeqPipeline::<B>::load(d.to_str().unwrap(), &device())
                .map(|_| ())
                .unwrap_err(),
        };
        let msg = e.to_string();
        assert!(
            msg.contains("generation_config.json"),
            "{arch} {field}: {msg}"
        );
        assert!(
            msg.contains(field) && msg.contains("1101"),
            "{arch} {field}: {msg}"
        );
    }
    // The same id in config.json (no generation_config.json) names config.json.
    let (_t, d) = copy_fixture("gpt2");
    std::fs::remove_file(d.join("generation_config.json")).unwrap();
    edit_json(&d.join("config.json"), |v| v["eos_token_id"] = json!(400));
    let msg = CausalPipeline::<B>::load(d.to_str().unwrap(), &device())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("config.json") && msg.contains("eos_token_id"),
        "{msg}"
    );
}

/// Classes 2 and 3 for library users who build a [`GenerationConfig`] themselves: the engine checks prompt and
/// special ids against the session's vocabulary before the first forward. A forced id out of range used to give
/// a row of −inf and an arbitrary pick (greedy id 0, exit 0).
#[test]
fn the_engine_refuses_out_of_range_ids_before_any_forward() {
    let p =
        CausalPipeline::<B>::load(fixtures().join("gpt2").to_str().unwrap(), &device()).unwrap();
    let (ids, mask) = p.encode_left_padded(&["Hello"]).unwrap();
    let ok = GenerationConfig {
        max_new_tokens: Some(3),
        ..p.generation.clone()
    };
    for (field, cfg) in [
        (
            "forced_bos_token_id",
            GenerationConfig {
                forced_bos_token_id: Some(400),
                ..ok.clone()
            },
        ),
        (
            "forced_eos_token_id",
            GenerationConfig {
                forced_eos_token_id: Some(u32::MAX),
                ..ok.clone()
            },
        ),
        (
            "eos_token_id",
            GenerationConfig {
                eos_token_id: vec![0, 7000],
                ..ok.clone()
            },
        ),
        (
            "pad_token_id",
            GenerationConfig {
                pad_token_id: Some(400),
                num_beams: 2,
                ..ok.clone()
            },
        ),
    ] {
        let e = generate(&mut CausalSession::new(&p.model), &ids, &mask, &cfg, None).unwrap_err();
        assert!(e.to_string().contains(field), "{field}: {e}");
    }
    let e = generate(
        &mut CausalSession::new(&p.model),
        &[vec![1, 400]],
        &[vec![1, 1]],
        &ok,
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("token id 400"), "{e}");
    // Seq2seq: the decoder start and the encoder input.
    let s =
        Seq2SeqPipeline::<B>::load(fixtures().join("bart").to_str().unwrap(), &device()).unwrap();
    let (ids, mask, _) = s.encode_right_padded(&["Hello"], None).unwrap();
    let cfg = GenerationConfig {
        decoder_start_token_id: Some(5000),
        max_new_tokens: Some(3),
        ..s.generation.clone()
    };
    let e = kiln_models::seq2seq::generate(&s.model, &ids, &mask, &cfg, None).unwrap_err();
    assert!(e.to_string().contains("decoder_start_token_id"), "{e}");
    let cfg = GenerationConfig {
        max_new_tokens: Some(3),
        ..s.generation.clone()
    };
    let e =
        kiln_models::seq2seq::generate(&s.model, &[vec![0, 999, 2]], &[vec![1, 1, 1]], &cfg, None)
            .unwrap_err();
    assert!(e.to_string().contains("token id 999"), "{e}");
}

/// Class 4: generation settings that no generation could use are errors naming generation_config.json and the
/// field, not messages that read as if a flag were wrong.
#[test]
fn bad_generation_settings_name_generation_config_json() {
    for (field, value) in [
        ("num_beams", json!(0)),
        ("num_return_sequences", json!(0)),
        ("top_p", json!(1.5)),
        ("temperature", json!(-1.0)),
        ("repetition_penalty", json!(-1.0)),
        ("max_new_tokens", json!(0)),
        ("pad_token_id", json!(4294967297u64)),
    ] {
        let (_t, d) = copy_fixture("gpt2");
        edit_json(&d.join("generation_config.json"), |v| {
            v[field] = value.clone()
        });
        let msg = GenerationConfig::from_dir(&d).unwrap_err().to_string();
        assert!(
            msg.contains("generation_config.json") && msg.contains(field),
            "{field}: {msg}"
        );
    }
}

/// Class 4: an adapter whose target modules are not in the base model names its adapter_config.json, the
/// adapter directory, the base model's type and some modules that do exist (as peft's message lists them).
#[test]
fn adapter_for_another_architecture_names_the_adapter_and_the_modules_there_are() {
    let s =
        Seq2SeqPipeline::<B>::load(fixtures().join("bart").to_str().unwrap(), &device()).unwrap();
    let dir = fixtures().join("peft/gpt2-lora");
    let e = kiln_peft::LoraModel::from_pretrained(s.model, &dir, false)
        .map(|_| ())
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("adapter_config.json"), "{msg}");
    assert!(msg.contains("gpt2-lora"), "{msg}");
    assert!(msg.contains("bart"), "{msg}");
    assert!(msg.contains("q_proj"), "{msg}");
}

/// A temperature of 0 with sampling off loads (transformers warns and loads it too); it is judged once the flags
/// are laid over, and an index whose `weight_map` names no shard is an error, not a randomly initialised model.
#[test]
fn loadable_generation_settings_load_and_an_empty_index_is_an_error() {
    let (_t, d) = copy_fixture("gpt2");
    edit_json(&d.join("generation_config.json"), |v| {
        v["temperature"] = json!(0.0);
        v["do_sample"] = json!(false);
    });
    let p = CausalPipeline::<B>::load(d.to_str().unwrap(), &device()).unwrap();
    assert_eq!(p.generation.temperature, 0.0);
    let (_t, d) = copy_fixture("gpt2");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    std::fs::write(
        d.join("model.safetensors.index.json"),
        r#"{"weight_map": {}}"#,
    )
    .unwrap();
    let e = gpt2::load::<B>(&d, &device())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.safetensors.index.json") && e.contains("weight_map"),
        "{e}"
    );
}
