//! Bottleneck adapters through the training loop on GPT-2, OPT, BART and T5: the loss falls, and the
//! checkpoint the loop writes (the whole model, as for `bert-adapters-sst2`) loads back into a fresh model
//! with the same adapters attached and gives the trained model's logits exactly, its base weights
//! bit-identical to the pretrained ones.

use burn::module::{AutodiffModule, Module};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use kiln_data::{Batch, BatchOptions, Batcher, Features, Target};
use kiln_models::attention::ids_tensor;
use kiln_models::auto::{CausalModel, Seq2SeqModel};
use kiln_models::generation::GenerationConfig;
use kiln_models::seq2seq::EncoderDecoder;
use kiln_models::tokenizer::Tokenizer;
use kiln_peft::{is_adapter_path, AdapterConfig, AdapterPlacement};
use kiln_train::loss::token_cross_entropy;
use kiln_train::tasks::{Seq2Seq, Seq2SeqMetric};
use kiln_train::trainer::{latest_checkpoint, EvalResult, Task};
use kiln_train::{train, TrainConfig};

use super::{fixtures, serial, AD};

/// Next-token language modelling on the batch's `input_ids` (all rows the same length here).
struct NextToken;

impl Task<AD> for NextToken {
    type Model = CausalModel<AD>;

    fn loss(&self, model: &Self::Model, batch: &Batch) -> kiln_train::Result<Tensor<AD, 1>> {
        let inputs: Vec<Vec<u32>> = batch
            .input_ids
            .iter()
            .map(|r| r[..r.len() - 1].to_vec())
            .collect();
        let targets: Vec<Vec<i64>> = batch
            .input_ids
            .iter()
            .map(|r| r[1..].iter().map(|&x| x as i64).collect())
            .collect();
        let logits = model.forward(ids_tensor::<AD>(&inputs, &Default::default()), None);
        token_cross_entropy(logits, &targets)
    }

    fn evaluate(
        &self,
        _model: &<Self::Model as AutodiffModule<AD>>::InnerModule,
    ) -> kiln_train::Result<EvalResult> {
        Ok(EvalResult::default())
    }

    fn primary_metric(&self) -> (&str, bool) {
        ("eval_loss", false)
    }
}

/// Parameters outside the adapters, by path.
fn base_weights<B: Backend, M: Module<B>>(m: &M) -> Vec<(String, Vec<f32>)> {
    use burn::store::ModuleSnapshot;
    let mut v: Vec<(String, Vec<f32>)> = m
        .collect(None, None, false)
        .into_iter()
        .filter(|s| !is_adapter_path(&s.full_path()))
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

fn to_vec(t: Tensor<AD, 3>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn rows(features: Vec<Features>) -> Batcher {
    Batcher::new(
        features,
        BatchOptions {
            batch_size: 4,
            pad_id: 0,
            shuffle: false,
            ..Default::default()
        },
    )
    .unwrap()
}

fn cfg() -> AdapterConfig {
    AdapterConfig {
        placement: AdapterPlacement::Houlsby,
        size: Some(8),
        reduction_factor: None,
        ..Default::default()
    }
}

/// Train with adapters (one batch, six epochs), then load the loop's checkpoint into a fresh base with fresh
/// adapters.
fn round_trip<T: Task<AD> + Sync>(
    name: &str,
    task: &T,
    batcher: &Batcher,
    load: impl Fn() -> T::Model,
    attach: fn(T::Model, &AdapterConfig) -> T::Model,
    freeze: fn(T::Model, &AdapterConfig) -> (T::Model, usize, usize),
    logits: fn(&T::Model) -> Tensor<AD, 3>,
) {
    let out = tempfile::tempdir().unwrap();
    let pretrained = base_weights(&load().valid());
    let (model, trainable, total) = freeze(load(), &cfg());
    assert!(trainable > 0 && trainable < total, "{name}");
    let tc = TrainConfig {
        epochs: 6,
        learning_rate: 1e-2,
        eval_each_epoch: false,
        out_dir: out.path().to_path_buf(),
        progress: false,
        ..Default::default()
    };
    let (trained, report) = train(task, model, batcher, &tc, trainable).unwrap();
    let l = &report.state.losses;
    assert!(
        l.last().unwrap().1 < l[0].1,
        "{name}: loss should fall: {l:?}"
    );
    assert_eq!(
        base_weights(&trained.valid()),
        pretrained,
        "{name}: base weights changed"
    );

    let ck = latest_checkpoint(out.path()).expect("a checkpoint");
    let fresh = attach(load(), &cfg());
    let base_logits = to_vec(logits(&load()));
    assert_eq!(to_vec(logits(&fresh)), base_logits, "{name}: fresh = base");
    let reloaded = fresh
        .load_file(
            ck.join("model"),
            &NamedMpkFileRecorder::<FullPrecisionSettings>::new(),
            &Default::default(),
        )
        .unwrap();
    let trained_logits = to_vec(logits(&trained));
    assert_ne!(
        trained_logits, base_logits,
        "{name}: training moved nothing"
    );
    assert_eq!(
        to_vec(logits(&reloaded)),
        trained_logits,
        "{name}: reloaded adapters give other logits"
    );
    assert_eq!(base_weights(&reloaded.valid()), pretrained, "{name}");
}

fn causal_batch() -> Batcher {
    let text = [
        [5u32, 17, 42, 99, 7, 23],
        [11, 3, 64, 8, 150, 2],
        [9, 9, 30, 31, 32, 33],
        [60, 61, 62, 63, 64, 65],
    ];
    rows(
        text.iter()
            .map(|r| Features {
                input_ids: r.to_vec(),
                token_type_ids: vec![],
                target: Target::None,
            })
            .collect(),
    )
}

fn causal_logits(m: &CausalModel<AD>) -> Tensor<AD, 3> {
    let ids = vec![vec![5u32, 17, 42, 99, 7], vec![60, 61, 62, 63, 64]];
    m.forward(ids_tensor::<AD>(&ids, &Default::default()), None)
}

fn s2s_batch(eos: u32) -> Batcher {
    let pairs = [
        (vec![5u32, 17, 42, 99, 7], vec![30u32, 31, 32]),
        (vec![11, 3, 64, 8, 150], vec![40, 41, 42]),
        (vec![9, 9, 30, 31, 32], vec![50, 51, 52]),
        (vec![60, 61, 62, 63, 64], vec![60, 61, 62]),
    ];
    rows(
        pairs
            .into_iter()
            .map(|(mut src, mut tgt)| {
                src.push(eos);
                tgt.push(eos);
                Features {
                    input_ids: src,
                    token_type_ids: vec![],
                    target: Target::Tokens(tgt),
                }
            })
            .collect(),
    )
}

fn s2s_logits(m: &Seq2SeqModel<AD>) -> Tensor<AD, 3> {
    let src = vec![vec![5u32, 17, 42, 99, 7, 1], vec![60, 61, 62, 63, 64, 1]];
    let mask = vec![vec![1u8; 6]; 2];
    let dec = vec![vec![0u32, 30, 31, 32], vec![0, 60, 61, 62]];
    let enc = m
        .encode(ids_tensor::<AD>(&src, &Default::default()), &mask)
        .unwrap();
    m.decoder_logits(ids_tensor::<AD>(&dec, &Default::default()), enc, &mask)
        .unwrap()
}

#[test]
fn causal_adapters_train_and_reload_from_the_checkpoint() {
    let _guard = serial();
    for name in ["gpt2", "opt"] {
        let dir = fixtures().join(name);
        round_trip(
            name,
            &NextToken,
            &causal_batch(),
            || CausalModel::load(&dir, &Default::default()).unwrap().0,
            |m, c| m.add_adapters(c),
            |m, c| m.with_frozen_adapters(c),
            causal_logits,
        );
    }
}

#[test]
fn seq2seq_adapters_train_and_reload_from_the_checkpoint() {
    let _guard = serial();
    // (fixture, decoder start, pad, eos)
    for (name, start, pad, eos) in [("t5", 0u32, 0u32, 1u32), ("bart", 2, 1, 2)] {
        let dir = fixtures().join(name);
        let batcher = s2s_batch(eos);
        let task = Seq2Seq {
            eval: batcher.clone(),
            tokenizer: Tokenizer::from_dir(&dir).unwrap(),
            generation: GenerationConfig::from_dir(&dir).unwrap(),
            decoder_start_id: start,
            pad_id: pad,
            metric: Seq2SeqMetric::Accuracy,
            predictions_path: None,
        };
        round_trip(
            name,
            &task,
            &batcher,
            || Seq2SeqModel::load(&dir, &Default::default()).unwrap().0,
            |m, c| m.add_adapters(c),
            |m, c| m.with_frozen_adapters(c),
            s2s_logits,
        );
    }
}

/// A model with every parameter frozen is an error at the first step, not a run that changes nothing.
#[test]
fn a_model_with_nothing_to_train_is_an_error() {
    let _guard = serial();
    let out = tempfile::tempdir().unwrap();
    let (model, _) =
        CausalModel::<AD>::load(&fixtures().join("gpt2"), &Default::default()).unwrap();
    let frozen = model.no_grad();
    let tc = TrainConfig {
        epochs: 1,
        eval_each_epoch: false,
        out_dir: out.path().to_path_buf(),
        progress: false,
        ..Default::default()
    };
    let e = train(&NextToken, frozen, &causal_batch(), &tc, 0)
        .err()
        .expect("training a frozen model must fail")
        .to_string();
    assert!(e.contains("no parameter"), "{e}");
}
