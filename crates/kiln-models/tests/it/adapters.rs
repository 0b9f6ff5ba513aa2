//! Bottleneck adapters: identity at initialisation, and with the backbone frozen only the adapters (and, for
//! BERT, the classifier) train; in BERT, GPT-2, OPT, BART and T5, with both placements.

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use kiln_models::attention::ids_tensor;
use kiln_models::auto::{CausalModel, Seq2SeqModel};
use kiln_models::bert::{self, BertBatch};
use kiln_models::seq2seq::EncoderDecoder;
use kiln_models::tokenizer::Tokenizer;
use kiln_peft::{is_adapter_path, AdapterConfig, AdapterPlacement};

use crate::common::*;

type AD = Autodiff<Flex>;

fn snapshot<B: Backend, M: Module<B>>(m: &M) -> Vec<(String, Vec<f32>)> {
    use burn::store::ModuleSnapshot;
    let mut v: Vec<(String, Vec<f32>)> = m
        .collect(None, None, false)
        .into_iter()
        .map(|s| {
            (
                s.full_path(),
                s.to_data().unwrap().convert::<f32>().to_vec().unwrap(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn batch(tok: &Tokenizer, texts: &[&str]) -> BertBatch {
    let encs: Vec<_> = texts.iter().map(|t| tok.encode(t, None).unwrap()).collect();
    BertBatch::from_encodings(&encs, 0).unwrap()
}

#[test]
fn adapters_start_as_identity_and_train_alone() {
    let dir = fixtures().join("bert");
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let (_, plain, _) = bert::load_for_classification::<AD>(&dir, &device()).unwrap();
    let b = batch(
        &tok,
        &[
            "a wonderful film",
            "dull and lifeless",
            "great fun",
            "a waste of time",
        ],
    );
    let before: Vec<f32> = plain
        .valid()
        .forward_batch(&b)
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    for placement in [AdapterPlacement::Houlsby, AdapterPlacement::Pfeiffer] {
        let cfg = AdapterConfig {
            placement,
            size: Some(8),
            reduction_factor: None,
            ..Default::default()
        };
        let (_, m, _) = bert::load_for_classification::<AD>(&dir, &device()).unwrap();
        let (m, trainable, total) = m.with_frozen_adapters(&cfg, false);
        let per_adapter = 32 * 8 + 8 + 8 * 32 + 32;
        let layers = 2;
        let n_adapters = if placement == AdapterPlacement::Houlsby {
            2 * layers
        } else {
            layers
        };
        assert_eq!(
            trainable,
            n_adapters * per_adapter + 32 * 2 + 2,
            "{placement:?}"
        );
        assert!(total > trainable);
        let init: Vec<f32> = m
            .valid()
            .forward_batch(&b)
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(init, before, "a fresh adapter is the identity");

        let base_before = snapshot(&m.valid());
        let mut optim = AdamWConfig::new().init::<AD, bert::BertForSequenceClassification<AD>>();
        let labels = [1i64, 0, 1, 0];
        let mut m = m;
        // Evaluation loss without dropout, before and after training.
        let eval_loss = |m: &bert::BertForSequenceClassification<AD>| {
            let logits = m.valid().forward_batch(&b).unwrap();
            let lp = burn::tensor::activation::log_softmax(logits, 1);
            let t = Tensor::<Flex, 2, Int>::from_data(
                TensorData::new(labels.to_vec(), [4, 1]),
                &device(),
            );
            lp.gather(1, t).mean().neg().into_scalar().elem::<f32>()
        };
        let mut losses = vec![eval_loss(&m)];
        for _ in 0..15 {
            let logits = m.forward_batch(&b).unwrap();
            let lp = burn::tensor::activation::log_softmax(logits, 1);
            let t = Tensor::<AD, 2, Int>::from_data(
                TensorData::new(labels.to_vec(), [4, 1]),
                &device(),
            );
            let loss = lp.gather(1, t).mean().neg();
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            assert_eq!(
                grads.len(),
                n_adapters * 4 + 2,
                "only adapters and the classifier get gradients"
            );
            m = optim.step(1e-2, m, grads);
        }
        losses.push(eval_loss(&m));
        assert!(
            losses.last().unwrap() < &losses[0],
            "{placement:?}: loss should fall: {losses:?}"
        );
        let after = snapshot(&m.valid());
        for ((k, a), (_, b)) in base_before.iter().zip(&after) {
            let is_trainable = k.contains(".adapter.") || k.starts_with("classifier");
            if !is_trainable {
                assert_eq!(a, b, "{placement:?}: frozen {k} changed");
            }
        }
        assert!(base_before
            .iter()
            .zip(&after)
            .any(|((k, a), (_, b))| k.contains(".adapter.") && a != b));
    }
}

/// Mean next-token cross-entropy of `logits [b, t, v]` against `targets [b][t]`.
fn token_ce<B: Backend>(logits: Tensor<B, 3>, targets: &[Vec<u32>]) -> Tensor<B, 1> {
    let [b, t, _] = logits.dims();
    let flat: Vec<i64> = targets.iter().flatten().map(|&x| x as i64).collect();
    let tgt = Tensor::<B, 3, Int>::from_data(TensorData::new(flat, [b, t, 1]), &logits.device());
    burn::tensor::activation::log_softmax(logits, 2)
        .gather(2, tgt)
        .mean()
        .neg()
}

fn to_vec<B: Backend>(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// One architecture under test: a fresh base model, its logits on a fixed tiny batch (and the targets they
/// are trained towards), and how many adapter sites the two placements have.
struct Case<M> {
    name: &'static str,
    load: fn() -> M,
    logits: fn(&M) -> Tensor<AD, 3>,
    targets: Vec<Vec<u32>>,
    attach: fn(M, &AdapterConfig) -> (M, usize, usize),
    /// Adapters added by Houlsby (attention + FFN sites) and by Pfeiffer (FFN sites).
    houlsby: usize,
    pfeiffer: usize,
    d: usize,
}

/// (a) a fresh adapter leaves the logits bit-identical, (b) a few AdamW steps make the loss fall, only the
/// adapters get gradients and change, and every base weight is bit-identical afterwards, (c) the trainable
/// count is exactly `n_adapters · (2·d·m + d + m)` and the total is the base's plus that.
fn adapters_train_alone<M: AutodiffModule<AD> + Clone>(case: Case<M>) {
    let plain = (case.load)();
    let base_params = plain.num_params();
    let before = to_vec((case.logits)(&plain));
    for placement in [AdapterPlacement::Houlsby, AdapterPlacement::Pfeiffer] {
        let name = case.name;
        let m = 8;
        let cfg = AdapterConfig {
            placement,
            size: Some(m),
            reduction_factor: None,
            ..Default::default()
        };
        let (model, trainable, total) = (case.attach)((case.load)(), &cfg);
        let n_adapters = match placement {
            AdapterPlacement::Houlsby => case.houlsby,
            AdapterPlacement::Pfeiffer => case.pfeiffer,
        };
        let d = case.d;
        assert_eq!(
            trainable,
            n_adapters * (2 * d * m + d + m),
            "{name} {placement:?}: trainable params"
        );
        assert_eq!(
            total,
            base_params + trainable,
            "{name} {placement:?}: total"
        );
        assert_eq!(
            to_vec((case.logits)(&model)),
            before,
            "{name} {placement:?}: a fresh adapter is the identity"
        );

        let base_before = snapshot(&model.valid());
        let loss = |m: &M| {
            (token_ce((case.logits)(m), &case.targets))
                .into_scalar()
                .elem::<f32>()
        };
        let first = loss(&model);
        let mut optim = AdamWConfig::new().init::<AD, M>();
        let mut model = model;
        for _ in 0..8 {
            let l = token_ce((case.logits)(&model), &case.targets);
            let grads = GradientsParams::from_grads(l.backward(), &model);
            assert_eq!(
                grads.len(),
                n_adapters * 4,
                "{name} {placement:?}: only the adapters get gradients"
            );
            model = optim.step(1e-2, model, grads);
        }
        let last = loss(&model);
        assert!(
            last < first,
            "{name} {placement:?}: loss should fall: {first} -> {last}"
        );
        let after = snapshot(&model.valid());
        assert_eq!(base_before.len(), after.len());
        let mut changed = 0;
        for ((k, a), (k2, b)) in base_before.iter().zip(&after) {
            assert_eq!(k, k2);
            if is_adapter_path(k) {
                changed += (a != b) as usize;
            } else {
                assert_eq!(a, b, "{name} {placement:?}: frozen {k} changed");
            }
        }
        // Every adapter's up-projection weight leaves zero (down-projections train too, from step 2).
        assert!(
            changed >= n_adapters * 2,
            "{name} {placement:?}: only {changed} adapter tensors changed"
        );
    }
}

fn causal_logits(m: &CausalModel<AD>) -> Tensor<AD, 3> {
    let ids = vec![vec![5u32, 17, 42, 99, 7], vec![11, 3, 64, 8, 150]];
    m.forward(ids_tensor::<AD>(&ids, &device()), None)
}

fn causal_targets() -> Vec<Vec<u32>> {
    vec![vec![17, 42, 99, 7, 23], vec![3, 64, 8, 150, 2]]
}

fn s2s_logits(m: &Seq2SeqModel<AD>) -> Tensor<AD, 3> {
    let src = vec![vec![5u32, 17, 42, 99, 7, 1], vec![11, 3, 64, 8, 150, 1]];
    let mask = vec![vec![1u8; 6]; 2];
    let dec = vec![vec![0u32, 30, 31, 32], vec![0, 40, 41, 42]];
    let enc = m.encode(ids_tensor::<AD>(&src, &device()), &mask).unwrap();
    m.decoder_logits(ids_tensor::<AD>(&dec, &device()), enc, &mask)
        .unwrap()
}

fn s2s_targets() -> Vec<Vec<u32>> {
    vec![vec![30, 31, 32, 1], vec![40, 41, 42, 1]]
}

fn load_causal(name: &str) -> CausalModel<AD> {
    CausalModel::load(&fixtures().join(name), &device())
        .unwrap()
        .0
}

fn load_s2s(name: &str) -> Seq2SeqModel<AD> {
    Seq2SeqModel::load(&fixtures().join(name), &device())
        .unwrap()
        .0
}

#[test]
fn gpt2_adapters_start_as_identity_and_train_alone() {
    adapters_train_alone(Case {
        name: "gpt2",
        load: || load_causal("gpt2"),
        logits: causal_logits,
        targets: causal_targets(),
        attach: |m, c| m.with_frozen_adapters(c),
        houlsby: 2 * 2,
        pfeiffer: 2,
        d: 32,
    });
}

#[test]
fn opt_adapters_start_as_identity_and_train_alone() {
    adapters_train_alone(Case {
        name: "opt",
        load: || load_causal("opt"),
        logits: causal_logits,
        targets: causal_targets(),
        attach: |m, c| m.with_frozen_adapters(c),
        houlsby: 2 * 2,
        pfeiffer: 2,
        d: 32,
    });
}

/// opt-350m's post-LN layers (`do_layer_norm_before = false`): the adapters sit before the residual and the
/// LayerNorm. The fixture is pre-LN; its layers are switched here.
#[test]
fn opt_post_ln_adapters_start_as_identity_and_train_alone() {
    adapters_train_alone(Case {
        name: "opt (post-LN)",
        load: || match load_causal("opt") {
            CausalModel::Opt(mut m) => {
                for l in m.model.decoder.layers.iter_mut() {
                    l.pre_ln = false;
                }
                CausalModel::Opt(m)
            }
            _ => unreachable!("the opt fixture loads as OPT"),
        },
        logits: causal_logits,
        targets: causal_targets(),
        attach: |m, c| m.with_frozen_adapters(c),
        houlsby: 2 * 2,
        pfeiffer: 2,
        d: 32,
    });
}

#[test]
fn bart_adapters_start_as_identity_and_train_alone() {
    // 2 encoder + 2 decoder layers; none on cross-attention.
    adapters_train_alone(Case {
        name: "bart",
        load: || load_s2s("bart"),
        logits: s2s_logits,
        targets: s2s_targets(),
        attach: |m, c| m.with_frozen_adapters(c),
        houlsby: 2 * 4,
        pfeiffer: 4,
        d: 32,
    });
}

#[test]
fn t5_adapters_start_as_identity_and_train_alone() {
    for fixture in ["t5", "t5-v1_1"] {
        let load: fn() -> Seq2SeqModel<AD> = if fixture == "t5" {
            || load_s2s("t5")
        } else {
            || load_s2s("t5-v1_1")
        };
        adapters_train_alone(Case {
            name: fixture,
            load,
            logits: s2s_logits,
            targets: s2s_targets(),
            attach: |m, c| m.with_frozen_adapters(c),
            houlsby: 2 * 4,
            pfeiffer: 4,
            d: 32,
        });
    }
}

/// The architectures' own `with_frozen_adapters` (not through the auto enums) place the same adapters: the
/// parameter paths of the sites, per placement.
#[test]
fn adapter_sites_per_architecture() {
    use kiln_models::{bart, gpt2, opt, t5};
    let paths = |v: Vec<(String, Vec<f32>)>| -> Vec<String> {
        let mut p: Vec<String> = v
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| is_adapter_path(k) && k.ends_with("adapter_up.weight"))
            .map(|k| k.trim_end_matches(".adapter_up.weight").to_string())
            .collect();
        p.sort();
        p
    };
    let cfg = |placement| AdapterConfig {
        placement,
        ..Default::default()
    };
    let dir = fixtures();
    let g = gpt2::load::<B>(&dir.join("gpt2"), &device()).unwrap().1;
    let (g, _, _) = g.with_frozen_adapters(&cfg(AdapterPlacement::Houlsby));
    assert_eq!(
        paths(snapshot(&g)),
        [
            "transformer.h.0.attention_adapter",
            "transformer.h.0.output_adapter",
            "transformer.h.1.attention_adapter",
            "transformer.h.1.output_adapter"
        ]
    );
    let o = opt::load::<B>(&dir.join("opt"), &device()).unwrap().1;
    let (o, _, _) = o.with_frozen_adapters(&cfg(AdapterPlacement::Pfeiffer));
    assert_eq!(
        paths(snapshot(&o)),
        [
            "model.decoder.layers.0.output_adapter",
            "model.decoder.layers.1.output_adapter"
        ]
    );
    let b = bart::load::<B>(&dir.join("bart"), &device()).unwrap().1;
    let (b, _, _) = b.with_frozen_adapters(&cfg(AdapterPlacement::Houlsby));
    let p = paths(snapshot(&b));
    assert_eq!(p.len(), 8);
    assert!(p.contains(&"model.decoder.layers.1.attention_adapter".to_string()));
    assert!(p.contains(&"model.encoder.layers.0.output_adapter".to_string()));
    let t = t5::load::<B>(&dir.join("t5"), &device()).unwrap().1;
    let (t, _, _) = t.with_frozen_adapters(&cfg(AdapterPlacement::Houlsby));
    assert_eq!(
        paths(snapshot(&t)),
        [
            "decoder.block.0.layer.0.adapter",
            "decoder.block.0.layer.2.adapter",
            "decoder.block.1.layer.0.adapter",
            "decoder.block.1.layer.2.adapter",
            "encoder.block.0.layer.0.adapter",
            "encoder.block.0.layer.1.adapter",
            "encoder.block.1.layer.0.adapter",
            "encoder.block.1.layer.1.adapter"
        ]
    );
    // Reduction factor 16 on d = 32: a bottleneck of 2.
    assert_eq!(cfg(AdapterPlacement::Pfeiffer).bottleneck(32), 2);
}
