//! SAID / DID (`kiln_peft::said`) on the tiny BERT classifier: d = 0 is the base model exactly; the gradient of
//! d and λ equals autodiff through the explicit projection matrix and finite differences through the whole model;
//! training moves d and λ only (the base stays bit-identical) and lowers the loss; save → load gives identical
//! logits; the merged checkpoint equals the training-time forward; bad adapter files are errors naming the key.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use kiln_models::bert::{self, BertBatch, BertForSequenceClassification};
use kiln_peft::model::{map_base_params, read_base_params, ParamAction};
use kiln_peft::said::{merge_said, Said, SaidConfig, SaidParams};
use kiln_peft::{read_tensors, write_tensors};

use crate::common::*;

type AB = Autodiff<Flex>;

/// The tiny BERT fixture with dropout off (gradients are compared between passes).
fn no_dropout_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bert");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixtures().join("bert").join(f), dir.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("bert/config.json")).unwrap(),
    )
    .unwrap();
    cfg["hidden_dropout_prob"] = 0.0.into();
    cfg["attention_probs_dropout_prob"] = 0.0.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    (tmp, dir)
}

fn load<BB: Backend>(dir: &Path) -> BertForSequenceClassification<BB> {
    bert::load_for_classification::<BB>(dir, &Default::default())
        .unwrap()
        .1
}

fn batch() -> (BertBatch, Vec<i64>) {
    let rows: Vec<Vec<u32>> = vec![
        vec![2, 45, 77, 120, 9, 31, 3],
        vec![2, 200, 17, 3, 0, 0, 0],
        vec![2, 5, 99, 250, 61, 3, 0],
        vec![2, 150, 42, 3, 0, 0, 0],
    ];
    let mask = rows
        .iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, &t)| (i == 0 || t != 0) as u8)
                .collect()
        })
        .collect();
    let types = rows.iter().map(|r| vec![0u32; r.len()]).collect();
    (
        BertBatch {
            input_ids: rows,
            token_type_ids: types,
            attention_mask: mask,
        },
        vec![1, 0, 1, 0],
    )
}

fn logits<BB: Backend>(m: &BertForSequenceClassification<BB>) -> Vec<f32> {
    m.forward_batch(&batch().0)
        .unwrap()
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap()
}

fn ce<BB: Backend>(m: &BertForSequenceClassification<BB>) -> Tensor<BB, 1> {
    let (b, labels) = batch();
    let logits = m.forward_batch(&b).unwrap();
    let dev = logits.device();
    let n = labels.len();
    let t = Tensor::<BB, 1, Int>::from_data(TensorData::new(labels, [n]), &dev);
    burn::nn::loss::CrossEntropyLossConfig::new()
        .init(&dev)
        .forward(logits, t)
}

fn values(n: usize, f: f32) -> Vec<f32> {
    (0..n).map(|i| ((i as f32 + 1.0) * f).sin() * 0.5).collect()
}

#[test]
fn said_with_d_zero_is_the_base_model_exactly() {
    let (_t, dir) = no_dropout_dir();
    let base = load::<B>(&dir);
    let said = Said::new(&base, SaidConfig::new(50)).unwrap();
    // Every parameter of the model is projected, as in the paper.
    assert_eq!(said.projected_parameters(), base.num_params());
    let p = said.init::<B>(&device());
    assert!(p.intrinsic_values().iter().all(|&v| v == 0.0));
    let same = said.apply(
        base.clone(),
        &p.intrinsic_values(),
        p.scale_values().as_deref(),
    );
    assert_eq!(logits(&same), logits(&base));
    let moved = said.apply(base.clone(), &values(50, 0.3), p.scale_values().as_deref());
    assert_ne!(logits(&moved), logits(&base));
}

/// The loss at (d, λ) through `Said::loss` and its gradients with respect to d and λ.
fn said_grads(
    said: &Said,
    d: &[f32],
    lam: &[f32],
    base: &BertForSequenceClassification<Flex>,
) -> (Tensor<AB, 1>, Vec<f32>, Vec<f32>) {
    let params = SaidParams::<AB>::from_values(d, Some(lam), &Default::default());
    let loss = said
        .loss::<AB, BertForSequenceClassification<AB>, kiln_models::Error>(&params, base, |m| {
            Ok(ce(m))
        })
        .unwrap();
    let grads = loss.backward();
    let grad = |t: Tensor<AB, 1>| t.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
    let gd = grad(params.intrinsic.val());
    let gl = grad(params.scales.as_ref().unwrap().val());
    (loss, gd, gl)
}

#[test]
fn said_gradient_equals_autodiff_through_the_explicit_projection() {
    // Only the classifier is projected: logits = pooled · (W₀ + λ₀·P₀d) + (b₀ + λ₁·P₁d), written out with the
    // dense matrices Pᵢ in burn's autodiff, against Said::loss's pull-back through the fast transform.
    let (_t, dir) = no_dropout_dir();
    let base = load::<AB>(&dir);
    let d = 6;
    let said = Said::new(
        &base,
        SaidConfig::new(d).with_target_modules(["classifier"]),
    )
    .unwrap();
    assert_eq!(said.targets().len(), 2);
    let dv = values(d, 0.7);
    let lam = [0.7f32, 1.3];
    let (loss, gd, gl) = said_grads(&said, &dv, &lam, &base.valid());

    // The dense reference.
    let dev = Default::default();
    let dt = Tensor::<AB, 1>::from_data(TensorData::new(dv.clone(), [d]), &dev).require_grad();
    let lt = Tensor::<AB, 1>::from_data(TensorData::new(lam.to_vec(), [2]), &dev).require_grad();
    let dense = |i: usize| {
        let f = &said.targets()[i].projection;
        let m: Vec<f32> = f.matrix().into_iter().map(|x| x as f32).collect();
        let pm = Tensor::<AB, 2>::from_data(TensorData::new(m, [f.d_out(), d]), &dev);
        pm.matmul(dt.clone().reshape([d, 1])).reshape([f.d_out()]) * lt.clone().slice([i..i + 1])
    };
    let (b, labels) = batch();
    let pooled = base.bert.forward_batch(&b).unwrap().pooler_output.detach();
    let w0 = base.classifier.weight.val().detach();
    let b0 = base.classifier.bias.as_ref().unwrap().val().detach();
    let [hin, out] = w0.dims();
    let (wi, bi) = match said.targets()[0].param.name.as_str() {
        "weight" => (0, 1),
        _ => (1, 0),
    };
    let w = w0 + dense(wi).reshape([hin, out]);
    let bias = b0 + dense(bi);
    let logits = pooled.matmul(w) + bias.unsqueeze_dim(0);
    let n = labels.len();
    let t = Tensor::<AB, 1, Int>::from_data(TensorData::new(labels, [n]), &dev);
    let ref_loss = burn::nn::loss::CrossEntropyLossConfig::new()
        .init(&dev)
        .forward(logits, t);
    let lv = loss.clone().into_scalar();
    let rv = ref_loss.clone().into_scalar();
    assert!((lv - rv).abs() < 1e-5, "loss {lv} vs dense {rv}");
    let rg = ref_loss.backward();
    let rd = dt.grad(&rg).unwrap().into_data().to_vec::<f32>().unwrap();
    let rl = lt.grad(&rg).unwrap().into_data().to_vec::<f32>().unwrap();
    for (a, b) in gd.iter().zip(&rd).chain(gl.iter().zip(&rl)) {
        assert!(
            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
            "gradient {a} vs dense {b} ({gd:?} / {rd:?}; {gl:?} / {rl:?})"
        );
    }
}

#[test]
fn said_gradient_matches_finite_differences_through_the_whole_model() {
    let (_t, dir) = no_dropout_dir();
    let base = load::<AB>(&dir);
    let inner = base.valid();
    let d = 20;
    let said = Said::new(&base, SaidConfig::new(d)).unwrap();
    let dv = values(d, 0.4);
    let lam: Vec<f32> = (0..said.num_scales())
        .map(|i| 1.0 + 0.01 * i as f32)
        .collect();
    let (_, gd, gl) = said_grads(&said, &dv, &lam, &inner);
    let at = |dv: &[f32], lam: &[f32]| -> f64 {
        let m = said.apply(inner.clone(), dv, Some(lam));
        ce(&m).into_scalar() as f64
    };
    // Directional derivatives along d and along λ (central differences, f32 model: loose tolerance).
    let eps = 1e-2f32;
    let v = values(d, 1.7);
    let plus: Vec<f32> = dv.iter().zip(&v).map(|(a, b)| a + eps * b).collect();
    let minus: Vec<f32> = dv.iter().zip(&v).map(|(a, b)| a - eps * b).collect();
    let fd = (at(&plus, &lam) - at(&minus, &lam)) / (2.0 * eps as f64);
    let an: f64 = gd.iter().zip(&v).map(|(a, b)| (a * b) as f64).sum();
    assert!(
        (fd - an).abs() <= 0.02 * an.abs().max(1e-3),
        "d: finite difference {fd} vs {an}"
    );
    let w = values(lam.len(), 2.3);
    let plus: Vec<f32> = lam.iter().zip(&w).map(|(a, b)| a + eps * b).collect();
    let minus: Vec<f32> = lam.iter().zip(&w).map(|(a, b)| a - eps * b).collect();
    let fd = (at(&dv, &plus) - at(&dv, &minus)) / (2.0 * eps as f64);
    let an: f64 = gl.iter().zip(&w).map(|(a, b)| (a * b) as f64).sum();
    assert!(
        (fd - an).abs() <= 0.02 * an.abs().max(1e-3),
        "λ: finite difference {fd} vs {an}"
    );
}

fn snapshot<BB: Backend>(m: &BertForSequenceClassification<BB>) -> Vec<(String, Vec<f32>)> {
    read_base_params(m, &mut |_| true)
        .into_iter()
        .map(|(p, d)| (p.path, d.convert::<f32>().to_vec().unwrap()))
        .collect()
}

fn train(
    said: &Said,
    base: &BertForSequenceClassification<Flex>,
    steps: usize,
) -> (SaidParams<AB>, Vec<f32>) {
    let mut params = said.init::<AB>(&Default::default());
    let mut opt = AdamConfig::new().init::<AB, SaidParams<AB>>();
    let mut losses = Vec::new();
    for _ in 0..steps {
        let loss = said
            .loss::<AB, BertForSequenceClassification<AB>, kiln_models::Error>(&params, base, |m| {
                Ok(ce(m))
            })
            .unwrap();
        losses.push(loss.clone().into_scalar());
        let grads = GradientsParams::from_grads(loss.backward(), &params);
        assert_eq!(
            grads.len(),
            1 + params.scales.is_some() as usize,
            "only d and λ get gradients"
        );
        params = opt.step(0.05, params, grads);
    }
    (params, losses)
}

#[test]
fn said_training_moves_only_d_and_lambda_and_lowers_the_loss() {
    let (_t, dir) = no_dropout_dir();
    let base = load::<Flex>(&dir);
    let before = snapshot(&base);
    let said = Said::new(&base, SaidConfig::new(64)).unwrap();
    assert_eq!(said.trainable_parameters(), 64 + said.targets().len());
    let (params, losses) = train(&said, &base, 25);
    eprintln!(
        "SAID d=64 losses: {:?} … {:?}",
        &losses[..3],
        &losses[losses.len() - 3..]
    );
    assert!(
        losses.last().unwrap() < &(losses[0] * 0.8),
        "loss did not fall: {losses:?}"
    );
    assert_eq!(snapshot(&base), before, "the base model changed");
    assert!(params.intrinsic_values().iter().any(|&v| v != 0.0));
    assert!(params.scale_values().unwrap().iter().any(|&v| v != 1.0));
    // DID: no scales.
    let did = Said::new(&base, SaidConfig::new(64).direct()).unwrap();
    let (p, losses) = train(&did, &base, 10);
    assert!(p.scales.is_none());
    assert!(
        losses.last().unwrap() < &losses[0],
        "DID loss did not fall: {losses:?}"
    );
}

#[test]
fn said_save_load_and_merge_reproduce_the_fine_tuned_model() {
    let (_t, dir) = no_dropout_dir();
    let base = load::<Flex>(&dir);
    let mut cfg = SaidConfig::new(32).with_seed(5).with_task_type("SEQ_CLS");
    cfg.base_model_name_or_path = Some("fixtures/bert".into());
    let said = Said::new(&base, cfg).unwrap();
    let (params, _) = train(&said, &base, 5);
    let (d, s) = (params.intrinsic_values(), params.scale_values());

    // The forward of training (autodiff backend, through Said::loss).
    let seen = RefCell::new(Vec::new());
    let _ = said
        .loss::<AB, BertForSequenceClassification<AB>, kiln_models::Error>(&params, &base, |m| {
            *seen.borrow_mut() = logits(m);
            Ok(ce(m))
        })
        .unwrap();
    let trained = seen.into_inner();
    let applied = logits(&said.apply(base.clone(), &d, s.as_deref()));
    assert!(max_abs_diff(&trained, &applied) < 1e-6);

    let out = tempfile::tempdir().unwrap();
    let adapter = out.path().join("adapter");
    said.save_pretrained(&adapter, &params, &base).unwrap();
    let tensors = read_tensors(&adapter.join("adapter_model.safetensors")).unwrap();
    // d, λ and the SEQ_CLS head's initial values (the base checkpoint may not have a head).
    assert_eq!(tensors["said.intrinsic"].shape, vec![32]);
    assert_eq!(tensors["said.scales"].shape, vec![said.targets().len()]);
    assert!(tensors.contains_key("said.base.classifier.weight"));
    assert!(tensors.len() <= 4);

    // Load onto a fresh base whose head was re-drawn: the stored head comes back, logits identical.
    let fresh = map_base_params(load::<Flex>(&dir), &mut |p| {
        if p.module == "classifier" {
            ParamAction::Replace(TensorData::new(vec![0.25f32; p.numel()], p.shape.clone()))
        } else {
            ParamAction::Keep
        }
    });
    let merged = merge_said(fresh, &adapter).unwrap();
    assert_eq!(logits(&merged), applied, "save → load is not exact");

    // Merge as a normal checkpoint and load it as a plain model.
    let ckpt = out.path().join("merged");
    std::fs::create_dir_all(&ckpt).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(dir.join(f), ckpt.join(f)).unwrap();
    }
    kiln_peft::export::save_hf_weights(&merged, &ckpt.join("model.safetensors")).unwrap();
    let plain = load::<Flex>(&ckpt);
    let diff = max_abs_diff(&logits(&plain), &trained);
    assert!(diff < 1e-5, "merged vs training forward: {diff}");
}

#[test]
fn said_bad_adapter_files_are_errors_naming_the_key() {
    let (_t, dir) = no_dropout_dir();
    let base = load::<Flex>(&dir);
    let said = Said::new(&base, SaidConfig::new(8)).unwrap();
    let params = said.init::<Flex>(&Default::default());
    let out = tempfile::tempdir().unwrap();
    let good = out.path().join("good");
    said.save_pretrained(&good, &params, &base).unwrap();
    let copy = |name: &str| {
        let d = out.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(good.join(f), d.join(f)).unwrap();
        }
        d
    };
    let err = |d: &Path| merge_said(load::<Flex>(&dir), d).unwrap_err().to_string();

    let d = copy("short");
    let mut t = read_tensors(&d.join("adapter_model.safetensors")).unwrap();
    t.get_mut("said.intrinsic").unwrap().data.pop();
    t.get_mut("said.intrinsic").unwrap().shape = vec![7];
    write_tensors(&d.join("adapter_model.safetensors"), &t).unwrap();
    let e = err(&d);
    assert!(e.contains("said.intrinsic") && e.contains("[8]"), "{e}");

    let d = copy("nan");
    let mut t = read_tensors(&d.join("adapter_model.safetensors")).unwrap();
    t.get_mut("said.intrinsic").unwrap().data[3] = f32::NAN;
    write_tensors(&d.join("adapter_model.safetensors"), &t).unwrap();
    let e = err(&d);
    assert!(
        e.contains("said.intrinsic") && e.contains("not finite"),
        "{e}"
    );

    let d = copy("missing");
    let mut t = read_tensors(&d.join("adapter_model.safetensors")).unwrap();
    t.remove("said.scales");
    write_tensors(&d.join("adapter_model.safetensors"), &t).unwrap();
    let e = err(&d);
    assert!(e.contains("said.scales") && e.contains("missing"), "{e}");

    let d = copy("other-model");
    let p = d.join("adapter_config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    c["parameters"][0]["name"] = "transformer.wte.weight".into();
    std::fs::write(&p, c.to_string()).unwrap();
    let e = err(&d);
    assert!(
        e.contains("transformer.wte.weight") && e.contains("adapter_config.json"),
        "{e}"
    );

    let d = copy("huge");
    let p = d.join("adapter_config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    c["intrinsic_dim"] = 1_000_000_000_000u64.into();
    std::fs::write(&p, c.to_string()).unwrap();
    let e = err(&d);
    assert!(e.contains("intrinsic_dim"), "{e}");
}

#[test]
fn did_round_trips_and_apply_works_on_a_trainable_autodiff_model() {
    let (_t, dir) = no_dropout_dir();
    let base = load::<Flex>(&dir);
    let did = Said::new(&base, SaidConfig::new(16).direct().with_seed(9)).unwrap();
    assert_eq!(did.num_scales(), 0);
    let d = values(16, 0.9);
    let params = SaidParams::<Flex>::from_values(&d, None, &Default::default());
    let out = tempfile::tempdir().unwrap();
    did.save_pretrained(&out.path().join("did"), &params, &base)
        .unwrap();
    let merged = merge_said(load::<Flex>(&dir), &out.path().join("did")).unwrap();
    assert_eq!(logits(&merged), logits(&did.apply(base.clone(), &d, None)));
    // Scales given to a DID plan, or the wrong number of values, are refused before anything is written.
    let wrong = SaidParams::<Flex>::from_values(&d, Some(&[1.0]), &Default::default());
    assert!(did
        .save_pretrained(&out.path().join("x"), &wrong, &base)
        .is_err());
    assert!(!out.path().join("x").exists());
    // On an autodiff model whose parameters require gradients (a tracked leaf + a delta is no leaf).
    let trainable = load::<AB>(&dir);
    let moved = did.apply(trainable, &d, None);
    // The two backends take different product kernels (fused multiply-adds vs gemm's): rounding, not more.
    let d = max_abs_diff(&logits(&moved), &logits(&merged));
    assert!(d < 1e-5, "{d}");
}

#[test]
fn a_said_adapter_without_its_stored_head_is_an_error() {
    let (_t, dir) = no_dropout_dir();
    let base = load::<Flex>(&dir);
    let said = Said::new(&base, SaidConfig::new(8).with_task_type("SEQ_CLS")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let a = out.path().join("a");
    said.save_pretrained(&a, &said.init::<Flex>(&Default::default()), &base)
        .unwrap();
    let w = a.join("adapter_model.safetensors");
    let mut t = read_tensors(&w).unwrap();
    t.remove("said.base.classifier.weight");
    write_tensors(&w, &t).unwrap();
    let e = merge_said(load::<Flex>(&dir), &a).unwrap_err().to_string();
    assert!(
        e.contains("said.base.classifier.weight") && e.contains("missing"),
        "{e}"
    );
}
