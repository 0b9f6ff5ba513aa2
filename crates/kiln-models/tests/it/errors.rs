//! Bad input gives a typed error naming the file and the key or field — never a panic.

use std::path::{Path, PathBuf};

use kiln_models::auto::CausalModel;
use kiln_models::tokenizer::Tokenizer;
use kiln_models::{gpt2, Error};
use serde_json::{json, Value};

use crate::common::*;

/// A copy of the GPT-2 fixture in a temp dir, to damage.
fn copy_gpt2() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("ckpt");
    std::fs::create_dir(&d).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
    ] {
        std::fs::copy(fixtures().join("gpt2").join(f), d.join(f)).unwrap();
    }
    (t, d)
}

type Tensors = Vec<(String, String, Vec<usize>, Vec<u8>)>;

fn read_st(p: &Path) -> Tensors {
    let b = std::fs::read(p).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let data = &b[8 + n..];
    let mut out: Tensors = h
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let o: Vec<usize> = v["data_offsets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            (
                k.clone(),
                v["dtype"].as_str().unwrap().to_string(),
                shape,
                data[o[0]..o[1]].to_vec(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn write_st(p: &Path, tensors: &Tensors) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        header.insert(name.clone(), json!({"dtype": dtype, "shape": shape, "data_offsets": [data.len(), data.len() + bytes.len()]}));
        data.extend_from_slice(bytes);
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    std::fs::write(p, out).unwrap();
}

fn load_err(d: &Path) -> Error {
    match gpt2::load::<B>(d, &device()) {
        Ok(_) => panic!("expected an error loading {}", d.display()),
        Err(e) => e,
    }
}

fn edit_config(d: &Path, f: impl FnOnce(&mut Value)) {
    let p = d.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, v.to_string()).unwrap();
}

#[test]
fn missing_config_names_the_file() {
    let t = tempfile::tempdir().unwrap();
    let e = load_err(t.path());
    assert!(
        matches!(&e, Error::MissingFile { path, .. } if path.ends_with("config.json")),
        "{e}"
    );
}

#[test]
fn missing_weights_names_the_file() {
    let (_t, d) = copy_gpt2();
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    let e = load_err(&d);
    assert!(
        matches!(&e, Error::MissingFile { path, .. } if path.ends_with("model.safetensors")),
        "{e}"
    );
}

#[test]
fn pickle_checkpoints_are_refused() {
    let (_t, d) = copy_gpt2();
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("pytorch_model.bin"), b"\x80\x02garbage").unwrap();
    let e = load_err(&d);
    assert!(
        matches!(&e, Error::Pickle { path } if path.ends_with("pytorch_model.bin")),
        "{e}"
    );
}

#[test]
fn truncated_and_corrupt_safetensors() {
    let (_t, d) = copy_gpt2();
    let p = d.join("model.safetensors");
    let full = std::fs::read(&p).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", full[..full.len() / 2].to_vec()),
        ("too short for a header", full[..5].to_vec()),
        ("header larger than the file", {
            let mut b = (u64::MAX / 2).to_le_bytes().to_vec();
            b.extend_from_slice(&full[8..100]);
            b
        }),
        (
            "garbage",
            b"this is not a safetensors file at all, just some words".to_vec(),
        ),
        ("empty", vec![]),
    ];
    for (what, bytes) in cases {
        std::fs::write(&p, &bytes).unwrap();
        let e = load_err(&d);
        assert!(
            matches!(&e, Error::Safetensors { path, .. } if path.ends_with("model.safetensors")),
            "{what}: {e}"
        );
    }
}

#[test]
fn header_whose_offsets_lie() {
    let (_t, d) = copy_gpt2();
    let p = d.join("model.safetensors");
    let b = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let mut h: Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let key = "transformer.wte.weight";
    let o = h[key]["data_offsets"].clone();
    h[key]["data_offsets"] = json!([o[0], o[1].as_u64().unwrap() + 4]);
    let mut hb = serde_json::to_vec(&h).unwrap();
    hb.resize(n.max(hb.len()), b' ');
    let mut out = (hb.len() as u64).to_le_bytes().to_vec();
    out.extend(hb);
    out.extend_from_slice(&b[8 + n..]);
    std::fs::write(&p, out).unwrap();
    let e = load_err(&d);
    assert!(e.to_string().contains(key), "{e}");
    assert!(matches!(e, Error::Safetensors { .. }));
}

#[test]
fn missing_key_is_an_error_naming_it() {
    let (_t, d) = copy_gpt2();
    let p = d.join("model.safetensors");
    let mut ts = read_st(&p);
    ts.retain(|t| t.0 != "transformer.h.1.mlp.c_fc.bias");
    write_st(&p, &ts);
    let e = load_err(&d);
    assert!(
        matches!(&e, Error::MissingKeys { keys, .. } if keys == &["transformer.h.1.mlp.c_fc.bias".to_string()]),
        "{e}"
    );
}

#[test]
fn extra_key_is_reported_not_fatal() {
    let (_t, d) = copy_gpt2();
    let p = d.join("model.safetensors");
    let mut ts = read_st(&p);
    ts.push((
        "transformer.h.0.attn.masked_bias".into(),
        "F32".into(),
        vec![1],
        vec![0, 0, 0, 0],
    ));
    write_st(&p, &ts);
    let (_, _, report) = gpt2::load::<B>(&d, &device()).unwrap();
    assert_eq!(
        report.unused,
        vec!["transformer.h.0.attn.masked_bias".to_string()]
    );
}

#[test]
fn shape_mismatch_names_key_and_shapes() {
    let (_t, d) = copy_gpt2();
    edit_config(&d, |v| v["n_inner"] = json!(64));
    let e = load_err(&d);
    match e {
        Error::ShapeMismatch {
            key,
            expected,
            found,
            ..
        } => {
            assert!(key.contains("c_fc"), "{key}");
            assert_ne!(expected, found);
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
}

#[test]
fn integer_tensor_where_float_expected() {
    let (_t, d) = copy_gpt2();
    let p = d.join("model.safetensors");
    let mut ts = read_st(&p);
    for t in ts.iter_mut().filter(|t| t.0 == "transformer.ln_f.bias") {
        t.1 = "I32".into();
    }
    write_st(&p, &ts);
    let e = load_err(&d);
    assert!(
        matches!(&e, Error::Dtype { key, .. } if key.contains("ln_f")),
        "{e}"
    );
}

#[test]
fn sharded_index_naming_a_missing_shard() {
    let (_t, d) = copy_gpt2();
    std::fs::rename(
        d.join("model.safetensors"),
        d.join("model-00001-of-00002.safetensors"),
    )
    .unwrap();
    let index = json!({"metadata": {}, "weight_map": {
        "transformer.wte.weight": "model-00001-of-00002.safetensors",
        "transformer.ln_f.bias": "model-00002-of-00002.safetensors"}});
    std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let e = load_err(&d);
    assert!(
        matches!(&e, Error::MissingFile { path, .. } if path.ends_with("model-00002-of-00002.safetensors")),
        "{e}"
    );
}

#[test]
fn sharded_checkpoint_loads() {
    let (_t, d) = copy_gpt2();
    let p = d.join("model.safetensors");
    let ts = read_st(&p);
    let (a, b): (Tensors, Tensors) = ts
        .into_iter()
        .partition(|t| t.0.contains(".h.0.") || t.0.contains("wte"));
    write_st(&d.join("model-00001-of-00002.safetensors"), &a);
    write_st(&d.join("model-00002-of-00002.safetensors"), &b);
    std::fs::remove_file(&p).unwrap();
    let mut map = serde_json::Map::new();
    for t in &a {
        map.insert(t.0.clone(), json!("model-00001-of-00002.safetensors"));
    }
    for t in &b {
        map.insert(t.0.clone(), json!("model-00002-of-00002.safetensors"));
    }
    std::fs::write(
        d.join("model.safetensors.index.json"),
        json!({"weight_map": map}).to_string(),
    )
    .unwrap();
    let (_, _, report) = gpt2::load::<B>(&d, &device()).unwrap();
    assert!(report.unused.is_empty());
}

#[test]
fn half_precision_files_are_cast_to_f32() {
    let (_t, d) = copy_gpt2();
    let p = d.join("model.safetensors");
    let mut ts = read_st(&p);
    for t in ts.iter_mut() {
        let f: Vec<f32> =
            t.3.chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
        // f32 → bf16 by truncation of the low 16 bits.
        t.3 = f
            .iter()
            .flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        t.1 = "BF16".into();
    }
    write_st(&p, &ts);
    let (_, m, _) = gpt2::load::<B>(&d, &device()).unwrap();
    let r = reference("gpt2");
    let inp = &r["inputs"][0];
    let t = kiln_models::attention::ids_tensor::<B>(&[u32s(&inp["ids"])], &device());
    let got: Vec<f32> = m.forward(t, None).into_data().to_vec().unwrap();
    let diff = max_abs_diff(&got, &flat(&inp["logits"]));
    assert!(
        diff < 0.5,
        "bf16 weights should give close logits, max |Δ| = {diff}"
    );
}

#[test]
fn bad_config_fields_are_named() {
    let cases: Vec<(&str, Box<dyn Fn(&mut Value)>)> = vec![
        ("n_head", Box::new(|v| v["n_head"] = json!("four"))),
        ("n_embd", Box::new(|v| v["n_head"] = json!(5))),
        ("vocab_size", Box::new(|v| v["vocab_size"] = json!(0))),
        (
            "vocab_size",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("vocab_size");
            }),
        ),
        (
            "activation_function",
            Box::new(|v| v["activation_function"] = json!("swiglu-ish")),
        ),
        ("n_layer", Box::new(|v| v["n_layer"] = json!(-2))),
    ];
    for (field, f) in cases {
        let (_t, d) = copy_gpt2();
        edit_config(&d, f);
        let e = load_err(&d);
        assert!(
            matches!(&e, Error::ConfigField { field: got, path, .. } if got == field && path.ends_with("config.json")),
            "{field}: {e}"
        );
    }
    let (_t, d) = copy_gpt2();
    std::fs::write(d.join("config.json"), "{ not json").unwrap();
    assert!(matches!(load_err(&d), Error::Json { .. }));
}

#[test]
fn unsupported_architecture() {
    let (_t, d) = copy_gpt2();
    edit_config(&d, |v| v["model_type"] = json!("llama"));
    let e = CausalModel::<B>::load(&d, &device()).unwrap_err();
    assert!(
        matches!(&e, Error::UnsupportedArchitecture { model_type, .. } if model_type == "llama"),
        "{e}"
    );
    assert!(
        e.to_string().contains("gpt2"),
        "names what is supported: {e}"
    );
}

#[test]
fn corrupt_or_missing_tokenizer() {
    let (_t, d) = copy_gpt2();
    std::fs::write(d.join("tokenizer.json"), "{\"model\": 17}").unwrap();
    let e = Tokenizer::from_dir(&d).unwrap_err();
    assert!(
        matches!(&e, Error::Tokenizer { path, .. } if path.ends_with("tokenizer.json")),
        "{e}"
    );
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    let e = Tokenizer::from_dir(&d).unwrap_err();
    assert!(matches!(&e, Error::MissingFile { .. }), "{e}");
    // vocab.json + merges.txt: a corrupt merges file is named.
    std::fs::write(d.join("vocab.json"), "{\"a\": 0, \"b\": 1}").unwrap();
    std::fs::write(d.join("merges.txt"), "#version: 0.2\na b c d\n").unwrap();
    let e = Tokenizer::from_dir(&d).unwrap_err();
    assert!(matches!(&e, Error::Tokenizer { .. }), "{e}");
    // A vocab.json that is not JSON, named.
    std::fs::write(d.join("merges.txt"), "#version: 0.2\na b\n").unwrap();
    std::fs::write(d.join("vocab.json"), "not json at all").unwrap();
    let e = Tokenizer::from_dir(&d).unwrap_err();
    assert!(
        matches!(&e, Error::Tokenizer { path, .. } if path.ends_with("vocab.json")),
        "{e}"
    );
    // One of the pair missing: the missing file is named.
    std::fs::write(d.join("vocab.json"), "{\"a\": 0, \"b\": 1, \"ab\": 2}").unwrap();
    std::fs::remove_file(d.join("merges.txt")).unwrap();
    let e = Tokenizer::from_dir(&d).unwrap_err();
    assert!(
        matches!(&e, Error::MissingFile { path, .. } if path.ends_with("merges.txt")),
        "{e}"
    );
    std::fs::write(d.join("merges.txt"), "#version: 0.2\na b\n").unwrap();
    std::fs::remove_file(d.join("vocab.json")).unwrap();
    let e = Tokenizer::from_dir(&d).unwrap_err();
    assert!(
        matches!(&e, Error::MissingFile { path, .. } if path.ends_with("vocab.json")),
        "{e}"
    );
}
