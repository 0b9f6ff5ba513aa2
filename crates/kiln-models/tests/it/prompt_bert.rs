//! Prompt tuning of BERT sequence classification against Hugging Face peft 0.21.2 (fixture made by
//! fixtures/peft/generate_prompt_cls.py): logits, the trainable-parameter line, peft's file layout both ways, and
//! training only the prompt and the head.

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use kiln_models::attention::ids_tensor;
use kiln_models::bert::{self, BertForSequenceClassification};
use kiln_models::prompt_bert::BertPromptModel;
use kiln_peft::PromptLearningConfig;
use serde_json::Value;

use crate::common::*;

fn dir() -> PathBuf {
    fixtures().join("peft").join("bert-prompt")
}

fn reference_of() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("reference.json")).unwrap()).unwrap()
}

fn base<BB: Backend>(device: &BB::Device) -> BertForSequenceClassification<BB> {
    bert::load_for_classification::<BB>(&fixtures().join("bert"), device)
        .unwrap()
        .1
}

fn logits_of<BB: Backend>(m: &BertPromptModel<BB>, r: &Value) -> Vec<f32> {
    let dev = m.model.classifier.weight.device();
    m.forward(
        ids_tensor::<BB>(&rows_u32(&r["input_ids"]), &dev),
        Some(ids_tensor::<BB>(&rows_u32(&r["token_type_ids"]), &dev)),
        Some(&rows_u8(&r["attention_mask"])),
    )
    .unwrap()
    .into_data()
    .convert::<f32>()
    .to_vec()
    .unwrap()
}

#[test]
fn fixture_prompt_matches_peft_logits_and_counts() {
    let r = reference_of();
    let m = BertPromptModel::from_pretrained(base::<B>(&device()), &dir(), false).unwrap();
    let d = max_abs_diff(&logits_of(&m, &r), &flat(&r["logits"]));
    eprintln!(
        "bert-prompt: max |Δ| vs peft {d:.2e} (the prompt and head move the logits by {})",
        r["max_abs_delta_vs_base"]
    );
    assert!(d < 1e-4, "max |Δ| = {d}");
    assert!(r["max_abs_delta_vs_base"].as_f64().unwrap() > 0.1);
    let fresh = BertPromptModel::inject(
        base::<B>(&device()),
        PromptLearningConfig::prompt_tuning(3),
        None,
    )
    .unwrap();
    assert_eq!(
        fresh.trainable_parameters(),
        r["print_trainable_parameters"].as_str().unwrap()
    );
    // peft refuses prefix tuning on BERT with transformers 5.24; so does kiln (a clear error).
    assert!(r["prefix_tuning_error"]
        .as_str()
        .unwrap()
        .contains("past key values"));
    let e = BertPromptModel::inject(
        base::<B>(&device()),
        PromptLearningConfig::prefix_tuning(3),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("PREFIX_TUNING"), "{e}");
}

#[test]
fn save_load_round_trip_in_peft_layout() {
    let r = reference_of();
    let m = BertPromptModel::from_pretrained(base::<B>(&device()), &dir(), false).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    m.save_pretrained(tmp.path()).unwrap();
    assert_same_tensors(&dir(), tmp.path(), 1e-7);
    let (a, b) = (adapter_config(&dir()), adapter_config(tmp.path()));
    for k in [
        "peft_type",
        "task_type",
        "num_virtual_tokens",
        "modules_to_save",
        "token_dim",
        "num_layers",
    ] {
        assert_eq!(a[k], b[k], "{k}");
    }
    let back = BertPromptModel::from_pretrained(base::<B>(&device()), tmp.path(), false).unwrap();
    assert!(max_abs_diff(&logits_of(&back, &r), &flat(&r["logits"])) < 1e-4);
}

type AD = Autodiff<B>;

#[test]
fn adamw_trains_only_the_prompt_and_the_head() {
    let dev = device();
    // The fixture without dropout (hidden and attention), so that a few steps reliably lower the loss.
    let tmp = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixtures().join("bert")).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            std::fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
        }
    }
    let cfg_path = tmp.path().join("config.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["hidden_dropout_prob"] = 0.0.into();
    cfg["attention_probs_dropout_prob"] = 0.0.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let no_dropout = bert::load_for_classification::<AD>(tmp.path(), &dev)
        .unwrap()
        .1;
    let mut m =
        BertPromptModel::<AD>::inject(no_dropout, PromptLearningConfig::prompt_tuning(3), None)
            .unwrap();
    let ids = vec![
        vec![2u32, 17, 93, 50, 41, 3],
        vec![2, 12, 33, 60, 70, 3],
        vec![2, 40, 41, 42, 43, 3],
        vec![2, 80, 81, 82, 83, 3],
    ];
    let labels = [0i64, 1, 0, 1];
    let mut optim = AdamWConfig::new().init::<AD, BertPromptModel<AD>>();
    let loss_of = |m: &BertPromptModel<AD>| {
        let l = m.forward(ids_tensor::<AD>(&ids, &dev), None, None).unwrap();
        let t = Tensor::<AD, 1, Int>::from_data(TensorData::new(labels.to_vec(), [4]), &dev);
        burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&dev)
            .forward(l, t)
    };
    // Judge by the eval-mode loss (no dropout), before and after.
    let eval_loss = |m: &BertPromptModel<AD>| -> f32 {
        let m = m.valid();
        let l = m.forward(ids_tensor::<B>(&ids, &dev), None, None).unwrap();
        let t = Tensor::<B, 1, Int>::from_data(TensorData::new(labels.to_vec(), [4]), &dev);
        burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&dev)
            .forward(l, t)
            .into_scalar()
    };
    let first = eval_loss(&m);
    for _ in 0..20 {
        let loss = loss_of(&m);
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        assert_eq!(grads.len(), 3, "prompt, classifier weight and bias");
        m = optim.step(0.05, m, grads);
    }
    let last = eval_loss(&m);
    eprintln!("bert prompt tuning: eval loss {first:.4} → {last:.4}");
    assert!(last < first - 0.05, "loss {first} → {last}");
    let mut after = Collect(vec![]);
    m.model.bert.valid().visit(&mut after);
    let mut before = Collect(vec![]);
    base::<B>(&dev).bert.visit(&mut before);
    assert!(after.0 == before.0, "backbone weights unchanged");
}

/// Writes a kiln-made BERT prompt adapter and kiln's logits for fixtures/peft/check_kiln_adapter.py into
/// $KILN_PEFT_EXPORT (a temp dir otherwise; checked to reload).
#[test]
fn export_kiln_bert_prompt_for_the_python_check() {
    let keep = std::env::var_os("KILN_PEFT_EXPORT").map(PathBuf::from);
    let tmp = tempfile::tempdir().unwrap();
    let root = keep.unwrap_or_else(|| tmp.path().to_path_buf());
    let r = reference_of();
    let m = BertPromptModel::inject(
        base::<B>(&device()),
        PromptLearningConfig::prompt_tuning(2),
        None,
    )
    .unwrap();
    let d = root.join("kiln-bert-prompt");
    m.save_pretrained(&d).unwrap();
    let logits = logits_of(&m, &r);
    let back = BertPromptModel::from_pretrained(base::<B>(&device()), &d, false).unwrap();
    assert!(max_abs_diff(&logits_of(&back, &r), &logits) < 1e-6);
    let v = serde_json::json!({
        "base": "bert", "head": "seq_cls", "input_ids": r["input_ids"],
        "token_type_ids": r["token_type_ids"], "attention_mask": r["attention_mask"], "logits": logits,
    });
    std::fs::write(d.join("reference.json"), v.to_string()).unwrap();
}

#[test]
fn every_prompt_cls_fixture_file_is_listed_and_present() {
    let d = fixtures().join("peft");
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("MANIFEST-prompt-cls.json")).unwrap())
            .unwrap();
    assert_eq!(m["versions"]["peft"], "0.21.2");
    let files = m["files"].as_array().unwrap();
    assert_eq!(files.len(), 3);
    for f in files {
        assert!(d.join(f.as_str().unwrap()).is_file(), "missing {f}");
    }
}
