//! LoRA against Hugging Face peft 0.21.2: the fixture adapters in fixtures/peft (made by
//! fixtures/peft/generate_peft.py) load with peft's logits, merge, save in peft's exact layout, train only LoRA, and
//! wrong adapters give typed errors naming the key.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use kiln_models::attention::ids_tensor;
use kiln_models::auto::{CausalModel, Seq2SeqModel};
use kiln_models::bert::{self, BertForSequenceClassification};
use kiln_models::causal::CausalLm;
use kiln_models::gpt2::{self, Gpt2LmHead};
use kiln_peft::model::{linear_paths, read_base_params};
use kiln_peft::{
    base_params, read_tensors, write_tensors, LoraConfig, LoraModel, PeftError, PeftModel,
};
use serde_json::{json, Value};

use crate::common::*;

const ADAPTERS: [&str; 6] = [
    "gpt2-lora",
    "gpt2-rslora-all",
    "opt-lora",
    "opt-rslora-all",
    "bert-lora",
    "bert-rslora-all",
];

fn adapter_dir(name: &str) -> PathBuf {
    fixtures().join("peft").join(name)
}

fn peft_ref(name: &str) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(adapter_dir(name).join("reference.json")).unwrap(),
    )
    .unwrap()
}

/// A model the fixtures' reference batches can run through.
trait Fwd<BB: Backend>: PeftModel<BB> {
    fn run(&self, r: &Value) -> Vec<f32>;
}

impl<BB: Backend> Fwd<BB> for CausalModel<BB> {
    fn run(&self, r: &Value) -> Vec<f32> {
        let ids = ids_tensor::<BB>(&rows_u32(&r["input_ids"]), &CausalLm::device(self));
        let out = match self {
            CausalModel::Gpt2(m) => m.forward(ids, None),
            CausalModel::Opt(m) => m.forward(ids, None),
        };
        out.into_data().convert::<f32>().to_vec().unwrap()
    }
}

impl<BB: Backend> Fwd<BB> for BertForSequenceClassification<BB> {
    fn run(&self, r: &Value) -> Vec<f32> {
        let dev = self.classifier.weight.device();
        let ids = ids_tensor::<BB>(&rows_u32(&r["input_ids"]), &dev);
        let types = ids_tensor::<BB>(&rows_u32(&r["token_type_ids"]), &dev);
        let mask = rows_u8(&r["attention_mask"]);
        self.forward(ids, Some(types), Some(&mask))
            .unwrap()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap()
    }
}

impl<BB: Backend> Fwd<BB> for Seq2SeqModel<BB> {
    fn run(&self, r: &Value) -> Vec<f32> {
        let out = match self {
            Seq2SeqModel::Bart(m) => m.forward(
                &rows_u32(&r["input_ids"]),
                &rows_u8(&r["attention_mask"]),
                &rows_u32(&r["decoder_input_ids"]),
            ),
            Seq2SeqModel::T5(m) => m.forward(
                &rows_u32(&r["input_ids"]),
                &rows_u8(&r["attention_mask"]),
                &rows_u32(&r["decoder_input_ids"]),
            ),
        };
        out.unwrap().into_data().convert::<f32>().to_vec().unwrap()
    }
}

fn causal(base: &str) -> CausalModel<B> {
    CausalModel::load(&fixtures().join(base), &device())
        .unwrap()
        .0
}

fn bert_cls() -> BertForSequenceClassification<B> {
    bert::load_for_classification::<B>(&fixtures().join("bert"), &device())
        .unwrap()
        .1
}

/// The LoRA config peft was given for a fixture (from reference.json).
fn ref_config(r: &Value) -> LoraConfig {
    let mut v = r["lora_config"].clone();
    v["peft_type"] = json!("LORA");
    LoraConfig::from_json(Path::new("reference.json"), &v.to_string()).unwrap()
}

// ------------------------------------------------------------------------------------------ parity with peft

fn check_parity<M: Fwd<B>>(name: &str, base: M) {
    let r = peft_ref(name);
    let mut lm = LoraModel::from_pretrained(base, &adapter_dir(name), false).unwrap();
    assert!(!lm.targeted_modules("default").is_empty());
    let got = lm.model.run(&r);
    let d = max_abs_diff(&got, &flat(&r["logits"]));
    eprintln!(
        "{name}: max |Δ| vs peft {d:.2e} (the adapter moves the logits by {})",
        r["max_abs_delta_vs_base"]
    );
    assert!(d < 1e-4, "{name}: max |Δ| vs peft = {d}");

    assert!(lm.merge() > 0);
    let merged = lm.model.run(&r);
    let d = max_abs_diff(&merged, &flat(&r["merged_logits"]));
    assert!(d < 1e-4, "{name}: merged, max |Δ| vs peft's merged = {d}");
    let d = max_abs_diff(&merged, &got);
    eprintln!("{name}: merged vs unmerged {d:.2e}");
    assert!(d < 1e-5, "{name}: merged vs unmerged = {d}");
    assert!(lm.unmerge() > 0);
    let d = max_abs_diff(&lm.model.run(&r), &got);
    assert!(d < 1e-5, "{name}: unmerged again = {d}");

    let plain = lm.merge_and_unload();
    let mut n = 0;
    plain.visit_linears_ref(&mut |_, l| n += l.lora.len());
    assert_eq!(n, 0, "merge_and_unload leaves no LoRA branch");
    let d = max_abs_diff(&plain.run(&r), &got);
    assert!(d < 1e-5, "{name}: merge_and_unload = {d}");
}

/// BART / T5 LoRA adapters made by fixtures/peft/generate_seq2seq.py (`bart-lora`: peft's default q_proj/v_proj;
/// `t5-lora`: all-linear).
#[test]
fn seq2seq_fixture_adapters_match_peft_logits_merged_and_unmerged() {
    for name in ["bart-lora", "t5-lora"] {
        let base = peft_ref(name)["base"].as_str().unwrap().to_string();
        let m = Seq2SeqModel::<B>::load(&fixtures().join(&base), &device())
            .unwrap()
            .0;
        check_parity(name, m);
        let lm = LoraModel::from_pretrained(
            Seq2SeqModel::<B>::load(&fixtures().join(&base), &device())
                .unwrap()
                .0,
            &adapter_dir(name),
            true,
        )
        .unwrap();
        assert_eq!(
            lm.trainable_parameters().to_string(),
            peft_ref(name)["print_trainable_parameters"]
                .as_str()
                .unwrap(),
            "{name}"
        );
    }
}

#[test]
fn fixture_adapters_match_peft_logits_merged_and_unmerged() {
    for name in ADAPTERS {
        let base = peft_ref(name)["base"].as_str().unwrap().to_string();
        if base == "bert" {
            check_parity(name, bert_cls());
        } else {
            check_parity(name, causal(&base));
        }
    }
}

fn check_counts<M: Fwd<B>>(name: &str, make: &dyn Fn() -> M) {
    let r = peft_ref(name);
    let want = r["print_trainable_parameters"].as_str().unwrap();
    // Loaded for training: counted as peft counts right after get_peft_model.
    let lm = LoraModel::from_pretrained(make(), &adapter_dir(name), true).unwrap();
    assert_eq!(
        lm.trainable_parameters().to_string(),
        want,
        "{name} (loaded)"
    );
    // Loaded for inference: nothing trains.
    let lm = LoraModel::from_pretrained(make(), &adapter_dir(name), false).unwrap();
    assert_eq!(lm.trainable_parameters().trainable, 0, "{name} (inference)");
    // Injected fresh from the same arguments peft was given.
    let lm = LoraModel::inject(make(), ref_config(&r)).unwrap();
    let c = lm.trainable_parameters();
    assert_eq!(c.to_string(), want, "{name} (fresh)");
    assert_eq!(
        (c.trainable, c.all),
        (
            r["trainable_params"].as_u64().unwrap() as usize,
            r["all_params"].as_u64().unwrap() as usize
        )
    );
}

#[test]
fn trainable_parameter_counts_print_as_peft_prints_them() {
    for name in ADAPTERS {
        let base = peft_ref(name)["base"].as_str().unwrap().to_string();
        if base == "bert" {
            check_counts(name, &bert_cls);
        } else {
            check_counts(name, &|| causal(&base));
        }
    }
}

// ------------------------------------------------------------------------------------------ file format

fn shapes(p: &Path) -> BTreeMap<String, Vec<usize>> {
    read_tensors(p)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.shape))
        .collect()
}

fn json_file(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// peft-only keys kiln does not write for a fresh adapter, with the values peft writes by default.
fn peft_default(key: &str, v: &Value) -> bool {
    key == "peft_version"
        || v.is_null()
        || *v == json!(false)
        || *v == json!({})
        || (key == "megatron_core" && *v == json!("megatron.core"))
        || (key == "qalora_group_size" && *v == json!(16))
}

fn check_files<M: Fwd<B>>(name: &str, make: &dyn Fn() -> M) {
    let r = peft_ref(name);
    let dir = adapter_dir(name);
    let tmp = tempfile::tempdir().unwrap();

    // Load → save: the same file (tensors bit for bit) and the same config (peft_version aside).
    let lm = LoraModel::from_pretrained(make(), &dir, false).unwrap();
    let before = lm.model.run(&r);
    lm.save_pretrained(tmp.path()).unwrap();
    let theirs = read_tensors(&dir.join("adapter_model.safetensors")).unwrap();
    let ours = read_tensors(&tmp.path().join("adapter_model.safetensors")).unwrap();
    assert_eq!(ours, theirs, "{name}: re-saved tensors");
    let mut want = json_file(&dir.join("adapter_config.json"));
    want.as_object_mut().unwrap().remove("peft_version");
    assert_eq!(
        json_file(&tmp.path().join("adapter_config.json")),
        want,
        "{name}: re-saved config"
    );
    // … and loads back to identical outputs.
    let lm2 = LoraModel::from_pretrained(make(), tmp.path(), false).unwrap();
    assert_eq!(lm2.model.run(&r), before, "{name}: save → load round trip");

    // A fresh adapter from the same arguments: exactly peft's key names and shapes, and peft's config.
    let fresh = LoraModel::inject(make(), ref_config(&r)).unwrap();
    let out = tmp.path().join("fresh");
    fresh.save_pretrained(&out).unwrap();
    assert_eq!(
        shapes(&out.join("adapter_model.safetensors")),
        shapes(&dir.join("adapter_model.safetensors")),
        "{name}"
    );
    let mut ours = json_file(&out.join("adapter_config.json"));
    let theirs = json_file(&dir.join("adapter_config.json"));
    let set = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        set(&ours["target_modules"]),
        set(&theirs["target_modules"]),
        "{name}: target_modules"
    );
    ours["target_modules"] = theirs["target_modules"].clone();
    assert_eq!(ours["base_model_name_or_path"], Value::Null);
    ours["base_model_name_or_path"] = theirs["base_model_name_or_path"].clone();
    for (k, v) in theirs.as_object().unwrap() {
        match ours.get(k) {
            Some(o) => assert_eq!(o, v, "{name}: config key `{k}`"),
            None => assert!(
                peft_default(k, v),
                "{name}: kiln does not write `{k}` = {v}"
            ),
        }
    }
    for k in ours.as_object().unwrap().keys() {
        assert!(
            theirs.get(k).is_some(),
            "{name}: kiln writes `{k}`, peft does not"
        );
    }
    // With a file for each named adapter in its own directory.
    let mut two = LoraModel::inject(make(), ref_config(&r)).unwrap();
    two.add_adapter("second", ref_config(&r)).unwrap();
    let out2 = tmp.path().join("two");
    two.save_pretrained(&out2).unwrap();
    assert!(
        out2.join("adapter_config.json").is_file()
            && out2.join("second/adapter_model.safetensors").is_file()
    );
}

#[test]
fn saved_files_are_peft_files() {
    for name in ADAPTERS {
        let base = peft_ref(name)["base"].as_str().unwrap().to_string();
        if base == "bert" {
            check_files(name, &bert_cls);
        } else {
            check_files(name, &|| causal(&base));
        }
    }
}

// ------------------------------------------------------------------------------------------ paths

#[test]
fn paths_are_hugging_face_module_paths() {
    let g = causal("gpt2");
    let p = linear_paths(&g);
    assert_eq!(
        &p[..4],
        [
            "transformer.h.0.attn.c_attn",
            "transformer.h.0.attn.c_proj",
            "transformer.h.0.mlp.c_fc",
            "transformer.h.0.mlp.c_proj"
        ]
    );
    assert_eq!(p.len(), 8);
    let o = causal("opt");
    let p = linear_paths(&o);
    assert_eq!(p[0], "model.decoder.layers.0.self_attn.k_proj");
    assert_eq!(p.len(), 12);
    let b = bert_cls();
    let p = linear_paths(&b);
    assert_eq!(p[0], "bert.encoder.layer.0.attention.self.query");
    assert_eq!(p[p.len() - 2..], ["bert.pooler.dense", "classifier"]);
    let (_, bm, _) = bert::load::<B>(&fixtures().join("bert"), &device()).unwrap();
    assert_eq!(linear_paths(&bm)[0], "encoder.layer.0.attention.self.query");
    assert_eq!(PeftModel::<B>::model_type(&g), "gpt2");
    assert_eq!(PeftModel::<B>::model_type(&o), "opt");

    // Every base parameter under its checkpoint name, with the checkpoint's shape.
    for (name, model_params) in [
        ("gpt2", base_params(&g)),
        ("opt", base_params(&o)),
        ("bert", base_params(&b)),
    ] {
        let infos = kiln_models::weights::inspect_safetensors(
            &fixtures().join(name).join("model.safetensors"),
        )
        .unwrap();
        let file: BTreeMap<String, Vec<usize>> =
            infos.into_iter().map(|i| (i.name, i.shape)).collect();
        let ours: BTreeMap<String, Vec<usize>> = model_params
            .into_iter()
            .map(|p| {
                let shape = if p.linear_weight && name != "gpt2" {
                    vec![p.shape[1], p.shape[0]]
                } else {
                    p.shape.clone()
                };
                (p.path, shape)
            })
            .collect();
        assert_eq!(ours, file, "{name}");
    }
}

// ------------------------------------------------------------------------------------------ no adapter

#[test]
fn without_an_adapter_the_forward_is_unchanged() {
    let r = peft_ref("gpt2-lora");
    let plain = causal("gpt2");
    let want = plain.run(&r);
    let lm = LoraModel::new(plain.clone());
    assert_eq!(lm.model.run(&r), want, "wrapped, nothing attached");
    let lm = LoraModel::inject(plain.clone(), LoraConfig::new(4, 8.0)).unwrap();
    assert_eq!(lm.model.run(&r), want, "fresh LoRA (B = 0) is a no-op");
    let mut cfg = LoraConfig::new(4, 8.0).with_target_regex("all-linear");
    cfg.init_lora_weights = kiln_peft::InitLoraWeights::Bool(false);
    let lm = LoraModel::inject(plain, cfg).unwrap();
    assert_ne!(lm.model.run(&r), want);
    let back = lm.unload();
    assert_eq!(
        back.run(&r),
        want,
        "unload gives the base model back bit for bit"
    );
}

// ------------------------------------------------------------------------------------------ several adapters

#[test]
fn named_adapters_switch_with_set_adapter() {
    let (ra, rb) = (peft_ref("opt-lora"), peft_ref("opt-rslora-all"));
    let mut lm =
        LoraModel::from_pretrained(causal("opt"), &adapter_dir("opt-lora"), false).unwrap();
    lm.load_adapter(&adapter_dir("opt-rslora-all"), "other", false)
        .unwrap();
    assert_eq!(lm.adapter_names(), ["default", "other"]);
    assert_eq!(lm.active_adapter(), Some("default"));
    let d = max_abs_diff(&lm.model.run(&ra), &flat(&ra["logits"]));
    assert!(d < 1e-4, "default active: {d}");
    lm.set_adapter("other").unwrap();
    let d = max_abs_diff(&lm.model.run(&rb), &flat(&rb["logits"]));
    assert!(d < 1e-4, "other active: {d}");
    lm.set_adapter("default").unwrap();
    let d = max_abs_diff(&lm.model.run(&ra), &flat(&ra["logits"]));
    assert!(d < 1e-4, "default again: {d}");
    assert!(matches!(
        lm.set_adapter("nope"),
        Err(PeftError::UnknownAdapter { .. })
    ));
    assert!(matches!(
        lm.load_adapter(&adapter_dir("opt-lora"), "other", false),
        Err(PeftError::DuplicateAdapter(_))
    ));
    lm.delete_adapter("other").unwrap();
    assert_eq!(lm.adapter_names(), ["default"]);
    let mut n = 0;
    lm.model.visit_linears_ref(&mut |_, l| n += l.lora.len());
    assert_eq!(
        n, 4,
        "only the default adapter's q_proj/v_proj branches remain"
    );
}

/// Adapter names come from callers (and so from input data); `save_pretrained` writes adapter `name` into
/// `dir/name`, so a name that is not a plain directory name is refused before anything is attached or
/// written, and nothing lands outside the save directory.
#[test]
fn adapter_names_cannot_lead_writes_out_of_the_save_directory() {
    let t = tempfile::tempdir().unwrap();
    let save = t.path().join("save");
    let mut lm =
        LoraModel::from_pretrained(causal("opt"), &adapter_dir("opt-lora"), false).unwrap();
    for bad in [
        "..",
        "../escaped",
        "/tmp/abs",
        "a/b",
        "a\\b",
        "",
        ".",
        "x.y",
        "nul\0",
    ] {
        assert!(
            matches!(
                lm.load_adapter(&adapter_dir("opt-rslora-all"), bad, false),
                Err(PeftError::InvalidAdapterName { .. })
            ),
            "load_adapter({bad:?})"
        );
        assert!(
            matches!(
                lm.add_adapter(bad, kiln_peft::LoraConfig::default()),
                Err(PeftError::InvalidAdapterName { .. })
            ),
            "add_adapter({bad:?})"
        );
    }
    assert_eq!(lm.adapter_names(), ["default"], "nothing was attached");
    lm.load_adapter(&adapter_dir("opt-rslora-all"), "second-one_2", false)
        .unwrap();
    lm.save_pretrained(&save).unwrap();
    assert!(save.join("adapter_model.safetensors").is_file());
    assert!(save
        .join("second-one_2/adapter_model.safetensors")
        .is_file());
    let mut outside: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    outside.sort();
    assert_eq!(
        outside,
        ["save"],
        "nothing written beside the save directory"
    );
}

// ------------------------------------------------------------------------------------------ errors

fn copy_adapter(name: &str) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join(name);
    std::fs::create_dir(&d).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(adapter_dir(name).join(f), d.join(f)).unwrap();
    }
    (t, d)
}

fn edit_tensors(dir: &Path, f: impl FnOnce(&mut BTreeMap<String, kiln_peft::RawTensor>)) {
    let p = dir.join("adapter_model.safetensors");
    let mut t = read_tensors(&p).unwrap();
    f(&mut t);
    write_tensors(&p, &t).unwrap();
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut Value)) {
    let p = dir.join("adapter_config.json");
    let mut v = json_file(&p);
    f(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

/// Loading into a fresh `LoraModel`: the error, and the model must be left without any adapter.
fn load_err(dir: &Path) -> PeftError {
    let mut lm = LoraModel::new(causal("opt"));
    let e = lm.load_adapter(dir, "default", false).unwrap_err();
    assert!(lm.adapter_names().is_empty());
    let mut n = 0;
    lm.model.visit_linears_ref(&mut |_, l| n += l.lora.len());
    assert_eq!(n, 0, "a failed load attaches nothing");
    e
}

#[test]
fn mismatched_adapters_give_errors_naming_the_key() {
    // GPT-2's adapter on OPT: its target modules are not there.
    let e = LoraModel::from_pretrained(causal("opt"), &adapter_dir("gpt2-lora"), false)
        .err()
        .unwrap();
    assert!(
        matches!(&e, PeftError::NoTargetMatched { targets, .. } if targets.contains("c_attn")),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("model.decoder.layers.0.self_attn.k_proj"),
        "{e}"
    );

    // An adapter for a deeper model: a module this one lacks.
    let (_t, d) = copy_adapter("opt-lora");
    let key = "base_model.model.model.decoder.layers.5.self_attn.q_proj.lora_A.weight";
    edit_tensors(&d, |t| {
        t.insert(
            key.into(),
            kiln_peft::RawTensor::new(vec![4, 32], vec![0.0; 128]),
        );
    });
    let e = load_err(&d);
    assert!(
        matches!(&e, PeftError::MissingModule { key: k, .. } if k == key),
        "{e}"
    );
    assert!(e.to_string().contains(key));

    // A tensor for a module the config does not target.
    let (_t, d) = copy_adapter("opt-lora");
    let key = "base_model.model.model.decoder.layers.0.fc1.lora_A.weight";
    edit_tensors(&d, |t| {
        t.insert(
            key.into(),
            kiln_peft::RawTensor::new(vec![4, 32], vec![0.0; 128]),
        );
    });
    assert!(matches!(load_err(&d), PeftError::UntargetedModule { key: k, .. } if k == key));

    // An adapter for a wider model.
    let (_t, d) = copy_adapter("opt-lora");
    let key = "base_model.model.model.decoder.layers.1.self_attn.v_proj.lora_B.weight";
    edit_tensors(&d, |t| {
        t.insert(
            key.into(),
            kiln_peft::RawTensor::new(vec![64, 4], vec![0.0; 256]),
        );
    });
    let e = load_err(&d);
    assert!(
        matches!(&e, PeftError::ShapeMismatch { key: k, expected, found, .. } if k == key && *expected == [32, 4] && *found == [64, 4]),
        "{e}"
    );

    // The config's rank disagrees with the tensors.
    let (_t, d) = copy_adapter("opt-lora");
    edit_config(&d, |v| v["r"] = json!(8));
    let e = load_err(&d);
    assert!(
        matches!(&e, PeftError::RankMismatch { key, expected: 8, found: 4, .. } if key.ends_with(".weight")),
        "{e}"
    );

    // A missing tensor.
    let (_t, d) = copy_adapter("opt-lora");
    let key = "base_model.model.model.decoder.layers.0.self_attn.v_proj.lora_B.weight";
    edit_tensors(&d, |t| {
        t.remove(key);
    });
    assert!(matches!(load_err(&d), PeftError::MissingKey { key: k, .. } if k == key));

    // A base parameter of the wrong shape (bias of another width).
    let (_t, d) = copy_adapter("opt-lora");
    let key = "base_model.model.model.decoder.layers.0.fc2.bias";
    edit_tensors(&d, |t| {
        t.insert(
            key.into(),
            kiln_peft::RawTensor::new(vec![48], vec![0.0; 48]),
        );
    });
    assert!(matches!(load_err(&d), PeftError::ShapeMismatch { key: k, .. } if k == key));

    // DoRA tensors, another peft_type, unsupported options, a missing file.
    let (_t, d) = copy_adapter("opt-lora");
    let key = "base_model.model.model.decoder.layers.0.self_attn.q_proj.lora_magnitude_vector";
    edit_tensors(&d, |t| {
        t.insert(
            key.into(),
            kiln_peft::RawTensor::new(vec![32], vec![1.0; 32]),
        );
    });
    assert!(matches!(load_err(&d), PeftError::UnsupportedKey { key: k, .. } if k == key));
    let (_t, d) = copy_adapter("opt-lora");
    edit_config(&d, |v| v["peft_type"] = json!("PREFIX_TUNING"));
    let e = load_err(&d);
    assert!(
        matches!(&e, PeftError::WrongPeftType { found, .. } if found == "PREFIX_TUNING"),
        "{e}"
    );
    let (_t, d) = copy_adapter("opt-lora");
    edit_config(&d, |v| v["use_dora"] = json!(true));
    assert!(matches!(load_err(&d), PeftError::Unsupported { field, .. } if field == "use_dora"));
    let (_t, d) = copy_adapter("opt-lora");
    std::fs::remove_file(d.join("adapter_model.safetensors")).unwrap();
    assert!(matches!(load_err(&d), PeftError::Io { .. }));
}

// ------------------------------------------------------------------------------------------ training

type AD = Autodiff<Flex>;

/// Ids of every float parameter with a gradient requirement, and their total size.
struct RequireGrad(Vec<ParamId>, usize);

impl ModuleVisitor<AD> for RequireGrad {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<AD, D>>) {
        if p.val().is_require_grad() {
            self.0.push(p.id);
            self.1 += p.shape().num_elements();
        }
    }
}

fn lora_ids<M: PeftModel<AD>>(m: &M) -> BTreeSet<ParamId> {
    let mut ids = BTreeSet::new();
    m.visit_linears_ref(&mut |_, l| {
        for a in &l.lora {
            ids.insert(a.lora_a.id);
            ids.insert(a.lora_b.id);
        }
    });
    ids
}

fn lora_values<M: PeftModel<AD>>(m: &M) -> Vec<Vec<f32>> {
    let mut v = Vec::new();
    m.visit_linears_ref(&mut |_, l| {
        for a in &l.lora {
            v.push(a.lora_a.val().into_data().to_vec().unwrap());
            v.push(a.lora_b.val().into_data().to_vec().unwrap());
        }
    });
    v
}

fn all_base<M: PeftModel<AD>>(m: &M) -> Vec<(String, Vec<f32>)> {
    read_base_params(m, &mut |_| true)
        .into_iter()
        .map(|(p, d)| (p.path, d.to_vec().unwrap()))
        .collect()
}

#[test]
fn training_with_adamw_changes_only_lora() {
    let dev = Default::default();
    AD::seed(&dev, 0);
    let (_, base, _) = gpt2::load::<AD>(&fixtures().join("gpt2"), &dev).unwrap();
    let mut lm =
        LoraModel::inject(base, LoraConfig::new(4, 8.0).with_task_type("CAUSAL_LM")).unwrap();
    let ids = lora_ids(&lm.model);
    assert_eq!(ids.len(), 4, "A and B of c_attn in 2 layers");
    let mut rg = RequireGrad(vec![], 0);
    lm.model.visit(&mut rg);
    assert_eq!(
        rg.0.iter().copied().collect::<BTreeSet<_>>(),
        ids,
        "only LoRA requires grad"
    );
    assert_eq!(rg.1, lm.trainable_parameters().trainable);
    let base_before = all_base(&lm.model);
    let lora_before = lora_values(&lm.model);

    // A tiny task: predict a fixed sequence.
    let rows: Vec<Vec<u32>> = vec![
        vec![5, 17, 93, 250, 41, 7, 388, 12, 60],
        vec![300, 2, 45, 45, 9, 123, 77, 31, 8],
    ];
    let input: Vec<Vec<u32>> = rows.iter().map(|r| r[..8].to_vec()).collect();
    let target: Vec<Vec<u32>> = rows.iter().map(|r| r[1..].to_vec()).collect();
    let x = ids_tensor::<AD>(&input, &dev);
    let y = ids_tensor::<AD>(&target, &dev).reshape([16]);
    let ce = CrossEntropyLossConfig::new().init(&dev);
    let mut optim = AdamWConfig::new().init::<AD, Gpt2LmHead<AD>>();
    let mut losses = Vec::new();
    for _ in 0..8 {
        let logits = lm.model.forward(x.clone(), None);
        let [b, s, v] = logits.dims();
        let loss = ce.forward(logits.reshape([b * s, v]), y.clone());
        losses.push(loss.clone().into_scalar().elem::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &lm.model);
        assert_eq!(grads.len(), 4, "gradients only for LoRA");
        let m = lm.model;
        lm.model = optim.step(1e-2, m, grads);
    }
    eprintln!("LoRA training losses: {losses:?}");
    assert!(losses[7] < losses[0] - 0.1, "loss should fall: {losses:?}");
    assert_eq!(
        all_base(&lm.model),
        base_before,
        "base weights bit-identical"
    );
    let after = lora_values(&lm.model);
    assert!(
        after.iter().zip(&lora_before).all(|(a, b)| a != b),
        "every LoRA matrix trained"
    );
    let record = optim.to_record();
    assert_eq!(
        record.keys().copied().collect::<BTreeSet<_>>(),
        ids,
        "the optimizer holds state for LoRA only"
    );

    // The trained adapter saves, reloads and reproduces the outputs.
    let tmp = tempfile::tempdir().unwrap();
    lm.save_pretrained(tmp.path()).unwrap();
    let want: Vec<f32> = lm
        .model
        .forward(x.clone(), None)
        .into_data()
        .to_vec()
        .unwrap();
    let (_, fresh, _) = gpt2::load::<AD>(&fixtures().join("gpt2"), &dev).unwrap();
    let back = LoraModel::from_pretrained(fresh, tmp.path(), true).unwrap();
    let got: Vec<f32> = back
        .model
        .forward(x.clone(), None)
        .into_data()
        .to_vec()
        .unwrap();
    assert_eq!(got, want);
    if let Some(out) = std::env::var_os("KILN_PEFT_EXPORT") {
        let d = PathBuf::from(out).join("gpt2-trained");
        lm.save_pretrained(&d).unwrap();
        let r = json!({"base": "gpt2", "head": "causal", "input_ids": input, "logits": want});
        std::fs::write(d.join("reference.json"), r.to_string()).unwrap();
    }
}

/// LoRA trains on OPT, BART and T5 too (GPT-2 and BERT above): a few AdamW steps lower the loss, only the LoRA
/// matrices get gradients and change, every base weight stays bit-identical.
#[test]
fn lora_trains_on_opt_bart_and_t5_with_the_base_bit_identical() {
    let dev = device();
    let src: Vec<Vec<u32>> = vec![vec![17, 93, 150, 41, 7, 188], vec![5, 120, 33, 201, 64, 12]];
    let mask = vec![vec![1u8; 6]; 2];
    let ce = CrossEntropyLossConfig::new().init(&dev);
    // (name, loss of a model)
    fn causal_loss(m: &CausalModel<AD>, ids: &[Vec<u32>]) -> Tensor<AD, 1> {
        let dev = CausalLm::device(m);
        let x: Vec<Vec<u32>> = ids.iter().map(|r| r[..r.len() - 1].to_vec()).collect();
        let y: Vec<Vec<u32>> = ids.iter().map(|r| r[1..].to_vec()).collect();
        let logits = match m {
            CausalModel::Gpt2(g) => g.forward(ids_tensor::<AD>(&x, &dev), None),
            CausalModel::Opt(o) => o.forward(ids_tensor::<AD>(&x, &dev), None),
        };
        let [b, s, v] = logits.dims();
        let t = ids_tensor::<AD>(&y, &dev).reshape([b * s]);
        CrossEntropyLossConfig::new()
            .init(&dev)
            .forward(logits.reshape([b * s, v]), t)
    }
    for name in ["opt", "bart", "t5"] {
        AD::seed(&dev, 1);
        let (losses, base_same, lora_moved, grads_ok) = if name == "opt" {
            let base = CausalModel::<AD>::load(&fixtures().join(name), &dev)
                .unwrap()
                .0;
            let mut lm = LoraModel::inject(base, LoraConfig::new(4, 8.0)).unwrap();
            let ids = lora_ids(&lm.model);
            let (b0, l0) = (all_base(&lm.model), lora_values(&lm.model));
            let mut optim = AdamWConfig::new().init::<AD, CausalModel<AD>>();
            let mut losses = vec![];
            let mut grads_ok = true;
            for _ in 0..8 {
                let loss = causal_loss(&lm.model, &src);
                losses.push(loss.clone().into_scalar().elem::<f32>());
                let grads = GradientsParams::from_grads(loss.backward(), &lm.model);
                grads_ok &= grads.len() == ids.len();
                lm.model = optim.step(1e-2, lm.model, grads);
            }
            let moved = lora_values(&lm.model).iter().zip(&l0).all(|(a, b)| a != b);
            (losses, all_base(&lm.model) == b0, moved, grads_ok)
        } else {
            let base = Seq2SeqModel::<AD>::load(&fixtures().join(name), &dev)
                .unwrap()
                .0;
            let mut lm = LoraModel::inject(base, LoraConfig::new(4, 8.0)).unwrap();
            let ids = lora_ids(&lm.model);
            let (b0, l0) = (all_base(&lm.model), lora_values(&lm.model));
            let start = if name == "bart" { 2 } else { 0 };
            let dec: Vec<Vec<u32>> = vec![vec![start, 12, 99, 45, 8], vec![start, 60, 7, 130, 9]];
            let mut optim = AdamWConfig::new().init::<AD, Seq2SeqModel<AD>>();
            let mut losses = vec![];
            let mut grads_ok = true;
            for _ in 0..8 {
                let logits = match &lm.model {
                    Seq2SeqModel::Bart(m) => m.forward(&src, &mask, &dec),
                    Seq2SeqModel::T5(m) => m.forward(&src, &mask, &dec),
                }
                .unwrap();
                let [b, t, v] = logits.dims();
                let pred = logits
                    .slice([0..b, 0..t - 1, 0..v])
                    .reshape([b * (t - 1), v]);
                let tgt = ids_tensor::<AD>(&dec, &dev)
                    .slice([0..b, 1..t])
                    .reshape([b * (t - 1)]);
                let loss = ce.forward(pred, tgt);
                losses.push(loss.clone().into_scalar().elem::<f32>());
                let grads = GradientsParams::from_grads(loss.backward(), &lm.model);
                grads_ok &= grads.len() == ids.len();
                lm.model = optim.step(1e-2, lm.model, grads);
            }
            let moved = lora_values(&lm.model).iter().zip(&l0).all(|(a, b)| a != b);
            (losses, all_base(&lm.model) == b0, moved, grads_ok)
        };
        eprintln!("{name} LoRA losses: {losses:?}");
        assert!(grads_ok, "{name}: gradients only for LoRA");
        assert!(
            losses[7] < losses[0] - 0.05,
            "{name}: loss should fall: {losses:?}"
        );
        assert!(base_same, "{name}: base weights bit-identical");
        assert!(lora_moved, "{name}: every LoRA matrix trained");
    }
}

#[test]
fn training_a_classifier_adapter_trains_lora_and_the_head() {
    let dev = Default::default();
    let (_, base, _) = bert::load_for_classification::<AD>(&fixtures().join("bert"), &dev).unwrap();
    let mut lm =
        LoraModel::inject(base, LoraConfig::new(4, 8.0).with_task_type("SEQ_CLS")).unwrap();
    assert_eq!(
        lm.config("default").unwrap().modules_to_save.as_deref(),
        Some(&["classifier".to_string(), "score".to_string()][..])
    );
    let head_ids = [
        lm.model.classifier.weight.id,
        lm.model.classifier.bias.as_ref().unwrap().id,
    ];
    let mut rg = RequireGrad(vec![], 0);
    lm.model.visit(&mut rg);
    let mut want: BTreeSet<ParamId> = lora_ids(&lm.model);
    assert_eq!(want.len(), 8);
    want.extend(head_ids);
    assert_eq!(rg.0.iter().copied().collect::<BTreeSet<_>>(), want);
    let before: BTreeMap<String, Vec<f32>> = all_base(&lm.model).into_iter().collect();
    let x = ids_tensor::<AD>(&[vec![2, 40, 77, 3], vec![2, 55, 250, 3]], &dev);
    let y = Tensor::<AD, 1, Int>::from_data([1, 0], &dev);
    let ce = CrossEntropyLossConfig::new().init(&dev);
    let mut optim = AdamWConfig::new().init::<AD, BertForSequenceClassification<AD>>();
    for _ in 0..2 {
        let loss = ce.forward(lm.model.forward(x.clone(), None, None).unwrap(), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &lm.model);
        assert_eq!(grads.len(), 10);
        let m = lm.model;
        lm.model = optim.step(1e-2, m, grads);
    }
    for (path, v) in all_base(&lm.model) {
        if path.starts_with("classifier.") {
            assert_ne!(before[&path], v, "{path} trains (modules_to_save)");
        } else {
            assert_eq!(before[&path], v, "{path} frozen");
        }
    }
    // The head is saved with the adapter, under its plain name.
    let tmp = tempfile::tempdir().unwrap();
    lm.save_pretrained(tmp.path()).unwrap();
    let t = read_tensors(&tmp.path().join("adapter_model.safetensors")).unwrap();
    assert_eq!(t["base_model.model.classifier.weight"].shape, [2, 32]);
    assert_eq!(
        t.len(),
        4 * 2 + 2,
        "query/value A and B in 2 layers, classifier weight and bias"
    );
}

// ------------------------------------------------------------------------------------------ for Python

/// Writes kiln-made adapters (random, non-zero LoRA weights) and kiln's logits for
/// fixtures/peft/check_kiln_adapter.py, into $KILN_PEFT_EXPORT (a temp dir otherwise, checked to reload).
#[test]
fn export_kiln_adapters_for_the_python_check() {
    let keep = std::env::var_os("KILN_PEFT_EXPORT").map(PathBuf::from);
    let tmp = tempfile::tempdir().unwrap();
    let root = keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let random = |mut c: LoraConfig| {
        c.init_lora_weights = kiln_peft::InitLoraWeights::Bool(false);
        c
    };
    let gpt2_cfg = random(LoraConfig {
        bias: kiln_peft::Bias::LoraOnly,
        ..LoraConfig::new(4, 8.0).with_task_type("CAUSAL_LM")
    });
    let mut opt_cfg = random(LoraConfig {
        use_rslora: true,
        ..LoraConfig::new(4, 8.0).with_target_regex("all-linear")
    });
    opt_cfg.rank_pattern.insert("fc1".into(), 2);
    let bert_cfg = random(
        LoraConfig::new(4, 8.0)
            .with_task_type("SEQ_CLS")
            .with_target_modules(["query", "key", "dense"]),
    );
    let g = peft_ref("gpt2-lora");
    let b = peft_ref("bert-lora");
    B::seed(&device(), 7);
    export(
        "kiln-gpt2",
        &root,
        "gpt2",
        LoraModel::inject(causal("gpt2"), gpt2_cfg).unwrap(),
        &g,
    );
    export(
        "kiln-opt-all",
        &root,
        "opt",
        LoraModel::inject(causal("opt"), opt_cfg).unwrap(),
        &g,
    );
    export(
        "kiln-bert-cls",
        &root,
        "bert",
        LoraModel::inject(bert_cls(), bert_cfg).unwrap(),
        &b,
    );
}

fn export<M: Fwd<B>>(name: &str, root: &Path, base: &str, lm: LoraModel<B, M>, inputs: &Value) {
    let d = root.join(name);
    lm.save_pretrained(&d).unwrap();
    let logits = lm.model.run(inputs);
    let mut r = json!({
        "base": base, "head": inputs["head"], "input_ids": inputs["input_ids"], "logits": logits,
    });
    for k in ["attention_mask", "token_type_ids"] {
        if inputs.get(k).is_some() {
            r[k] = inputs[k].clone();
        }
    }
    std::fs::write(d.join("reference.json"), r.to_string()).unwrap();
    // Reloads in kiln to the same outputs.
    let again = match base {
        "bert" => LoraModel::from_pretrained(bert_cls(), &d, false)
            .unwrap()
            .model
            .run(inputs),
        b => LoraModel::from_pretrained(causal(b), &d, false)
            .unwrap()
            .model
            .run(inputs),
    };
    assert_eq!(again, logits, "{name}");
}

#[test]
fn bias_settings_choose_which_biases_train() {
    let dev = Default::default();
    let (_, base, _) = gpt2::load::<AD>(&fixtures().join("gpt2"), &dev).unwrap();
    // (bias, trainable bias parameters, saved bias tensors): lora_only = c_attn's in 2 layers; all = 6 per layer + ln_f.
    for (bias, extra, saved) in [
        (kiln_peft::Bias::None, 0, 0),
        (kiln_peft::Bias::LoraOnly, 2 * 96, 2),
        (kiln_peft::Bias::All, 736, 13),
    ] {
        let cfg = LoraConfig {
            bias,
            ..LoraConfig::new(4, 8.0)
        };
        let lm = LoraModel::inject(base.clone(), cfg).unwrap();
        let mut rg = RequireGrad(vec![], 0);
        lm.model.visit(&mut rg);
        assert_eq!(
            rg.1,
            1024 + extra,
            "{bias:?}: LoRA plus the selected biases require grad"
        );
        assert_eq!(lm.trainable_parameters().trainable, rg.1, "{bias:?}");
        let keys = lm.adapter_state_dict("default").unwrap();
        let n_bias = keys.keys().filter(|k| k.ends_with(".bias")).count();
        assert_eq!(
            n_bias,
            saved,
            "{bias:?}: saved biases {:?}",
            keys.keys().collect::<Vec<_>>()
        );
        if bias == kiln_peft::Bias::LoraOnly {
            assert!(
                keys.contains_key("base_model.model.transformer.h.0.attn.c_attn.base_layer.bias")
            );
        }
        if bias == kiln_peft::Bias::All {
            assert!(keys.contains_key("base_model.model.transformer.h.0.ln_1.bias"));
            assert!(keys.contains_key("base_model.model.transformer.ln_f.bias"));
        }
    }
}

#[test]
fn every_peft_fixture_file_is_listed_and_present() {
    let dir = fixtures().join("peft");
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("MANIFEST.json")).unwrap()).unwrap();
    assert_eq!(m["versions"]["peft"], "0.21.2");
    let files = m["files"].as_array().unwrap();
    assert_eq!(files.len(), ADAPTERS.len() * 3);
    for f in files {
        assert!(dir.join(f.as_str().unwrap()).is_file(), "missing {f}");
    }
}

// ------------------------------------------------------------------------------------------ seq2seq

#[test]
fn seq2seq_linear_paths_are_checkpoint_keys_and_lora_attaches_to_peft_defaults() {
    use kiln_models::auto::Seq2SeqModel;
    for (name, per_model) in [
        ("bart", 2 * 6 + 2 * 10),
        ("t5", 2 * (4 + 2) + 2 * (8 + 2)),
        ("t5-v1_1", 2 * (4 + 3) + 2 * (8 + 3) + 1),
    ] {
        let (m, _) = Seq2SeqModel::<B>::load(&fixtures().join(name), &device()).unwrap();
        let paths = linear_paths(&m);
        assert_eq!(paths.len(), per_model, "{name}: {paths:?}");
        let keys: Vec<String> = kiln_models::weights::inspect_safetensors(
            &fixtures().join(name).join("model.safetensors"),
        )
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
        for p in &paths {
            assert!(
                keys.contains(&format!("{p}.weight")),
                "{name}: {p}.weight is not a checkpoint key"
            );
        }
        // peft's defaults: q_proj/v_proj (BART) and q/v (T5) in every attention block.
        let cfg: kiln_peft::LoraConfig =
            serde_json::from_str(r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8}"#).unwrap();
        let lora = kiln_peft::LoraModel::inject(m, cfg).unwrap();
        let targeted = lora.targeted_modules("default");
        let attn_blocks = if name == "bart" { 2 + 2 * 2 } else { 2 + 2 * 2 };
        assert_eq!(targeted.len(), 2 * attn_blocks, "{name}: {targeted:?}");
        assert!(targeted.iter().all(|t| t.ends_with("q_proj")
            || t.ends_with("v_proj")
            || t.ends_with(".q")
            || t.ends_with(".v")));
        let c = lora.trainable_parameters();
        assert!(c.trainable > 0 && c.trainable < c.all / 4, "{name}: {c}");
    }
}
