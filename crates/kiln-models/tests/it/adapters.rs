//! Bottleneck adapters in BERT: identity at initialisation, and with the backbone frozen only the adapters
//! and the classifier train.

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use kiln_models::bert::{self, BertBatch};
use kiln_models::tokenizer::Tokenizer;
use kiln_peft::{AdapterConfig, AdapterPlacement};

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
