//! Data-parallel training (burn-collective's local level, replicas as threads on the CPU): equivalence with one
//! device, resume across device counts, and failures that end the run with an error naming the replica.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_data::{load_sst2, tokenize_sentiment, Batch, BatchOptions, Batcher, LoadOptions, Split};
use kiln_models::bert;
use kiln_models::tokenizer::Tokenizer;
use kiln_train::recipes::{run_recipe, RecipeArgs};
use kiln_train::tasks::Classification;
use kiln_train::trainer::{EvalResult, Task};
use kiln_train::{train, Error, OptimizerKind, TrainConfig};

use super::{fixtures, serial, AD};

/// A copy of a fixture with every dropout probability set to 0: with dropout, the replicas draw other masks
/// than one device does, so only a dropout-free model can give the same losses.
fn without_dropout(name: &str, dst: &Path) -> PathBuf {
    let out = dst.join(name);
    std::fs::create_dir_all(&out).unwrap();
    for e in std::fs::read_dir(fixtures().join(name)).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), out.join(e.file_name())).unwrap();
        }
    }
    let p = out.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    for (k, v) in c.as_object_mut().unwrap() {
        if k.contains("dropout") && v.is_number() {
            *v = serde_json::json!(0.0);
        }
    }
    std::fs::write(&p, c.to_string()).unwrap();
    out
}

fn bert_setup(
    dir: &Path,
    batch_size: usize,
) -> (bert::BertForSequenceClassification<AD>, Batcher, Batcher) {
    let device = Default::default();
    let (_, model, _) = bert::load_for_classification::<AD>(dir, &device).unwrap();
    let tok = Tokenizer::from_dir(dir).unwrap();
    let data = fixtures().join("samples/sentiment").display().to_string();
    let load = |split, n| {
        let opts = LoadOptions {
            max_samples: Some(n),
            ..Default::default()
        };
        load_sst2(&data, split, &opts).unwrap().examples
    };
    let b = |ex: &[kiln_data::SentimentExample], shuffle| {
        Batcher::new(
            tokenize_sentiment(&tok, ex, Some(32)).unwrap().features,
            BatchOptions {
                batch_size,
                pad_id: 0,
                shuffle,
                seed: 3,
                ..Default::default()
            },
        )
        .unwrap()
    };
    (
        model,
        b(&load(Split::Train, 48), true),
        b(&load(Split::Validation, 16), false),
    )
}

fn cfg(out: &Path, devices: &[u16], max_steps: usize) -> TrainConfig {
    TrainConfig {
        epochs: 2,
        learning_rate: 1e-3,
        optimizer: OptimizerKind::AdamW,
        weight_decay: 0.01,
        warmup_ratio: 0.1,
        max_steps: Some(max_steps),
        out_dir: out.to_path_buf(),
        progress: false,
        devices: devices.to_vec(),
        ..Default::default()
    }
}

fn losses(r: &kiln_train::TrainReport) -> Vec<f64> {
    r.state.losses.iter().map(|x| x.1).collect()
}

fn assert_close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5,
            "{what}: step {} loss {x} vs {y}\n{a:?}\n{b:?}",
            i + 1
        );
    }
}

fn bert_run(dir: &Path, out: &Path, devices: &[u16], batch: usize, steps: usize) -> Vec<f64> {
    let (model, tb, eb) = bert_setup(dir, batch);
    let task = Classification { eval: eb };
    let (_, r) = train(&task, model, &tb, &cfg(out, devices, steps), 0).unwrap();
    losses(&r)
}

#[test]
fn two_replicas_of_four_train_as_one_device_of_eight_bert_full_fine_tuning() {
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let dir = without_dropout("bert", t.path());
    let one = bert_run(&dir, &t.path().join("one"), &[], 8, 10);
    let two = bert_run(&dir, &t.path().join("two"), &[0, 0], 8, 10);
    assert_eq!(one.len(), 10);
    assert_close(&one, &two, "1×8 vs 2×4");
    // Three replicas on batches of two: one replica has no rows and contributes a zero-weight row.
    let one = bert_run(&dir, &t.path().join("one2"), &[], 2, 4);
    let three = bert_run(&dir, &t.path().join("three"), &[0, 0, 0], 2, 4);
    assert_close(&one, &three, "1×2 vs 3 replicas");
    // Only the first replica writes reports and checkpoints.
    assert!(t.path().join("two/checkpoint/state.json").is_file());
    let lines = std::fs::read_to_string(t.path().join("two/metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().filter(|l| l.contains("\"loss\"")).count(), 10);
}

#[test]
fn resume_across_device_counts_continues_the_uninterrupted_run() {
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let dir = without_dropout("bert", t.path());
    let whole = bert_run(&dir, &t.path().join("whole"), &[], 8, 9);
    for (first, then, name) in [
        (&[0u16, 0][..], &[][..], "2→1"),
        (&[][..], &[0u16, 0][..], "1→2"),
    ] {
        let out = t.path().join(name);
        let part = bert_run(&dir, &out, first, 8, 4);
        assert_eq!(part.len(), 4);
        let (model, tb, eb) = bert_setup(&dir, 8);
        let task = Classification { eval: eb };
        let c = TrainConfig {
            resume: true,
            ..cfg(&out, then, 9)
        };
        let (_, r) = train(&task, model, &tb, &c, 0).unwrap();
        assert!(r.resumed_from.is_some(), "{name}");
        assert_close(&losses(&r), &whole, name);
    }
}

/// A classification task that fails on the shard holding training example `bad`: by panicking, or with a NaN loss.
struct FailsOn {
    inner: Classification,
    bad: usize,
    nan: bool,
}

impl Task<AD> for FailsOn {
    type Model = bert::BertForSequenceClassification<AD>;
    fn loss(
        &self,
        model: &Self::Model,
        batch: &Batch,
    ) -> kiln_train::Result<burn::tensor::Tensor<AD, 1>> {
        let l = self.inner.loss(model, batch)?;
        if batch.len() < 8 && batch.indices.contains(&self.bad) {
            if self.nan {
                return Ok(l.mul_scalar(f64::NAN));
            }
            panic!("replica crashed on example {}", self.bad);
        }
        Ok(l)
    }
    fn evaluate(
        &self,
        model: &<Self::Model as burn::module::AutodiffModule<AD>>::InnerModule,
    ) -> kiln_train::Result<EvalResult> {
        Task::<AD>::evaluate(&self.inner, model)
    }
    fn primary_metric(&self) -> (&str, bool) {
        ("accuracy", true)
    }
}

/// The rank whose shard holds example `bad` in the first batch of a 2-replica run.
fn second_half_example(tb: &Batcher) -> usize {
    let (_, b) = tb.epoch(0).next().unwrap();
    b.indices[6]
}

#[test]
fn a_failing_replica_stops_the_run_with_an_error_naming_it() {
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let dir = without_dropout("bert", t.path());
    for nan in [false, true] {
        let (model, tb, eb) = bert_setup(&dir, 8);
        let bad = second_half_example(&tb);
        let task = FailsOn {
            inner: Classification { eval: eb },
            bad,
            nan,
        };
        let out = t.path().join(format!("fail-{nan}"));
        let c = TrainConfig {
            replica_timeout_secs: 60,
            ..cfg(&out, &[0, 0], 10)
        };
        let t0 = Instant::now();
        let e = train(&task, model, &tb, &c, 0).unwrap_err();
        assert!(
            t0.elapsed() < Duration::from_secs(50),
            "took {:?}",
            t0.elapsed()
        );
        let msg = e.to_string();
        match &e {
            Error::Replica { replica, .. } => assert_eq!(*replica, 1, "{msg}"),
            other => panic!("expected a replica error, got {other}"),
        }
        if nan {
            assert!(msg.contains("loss became NaN"), "{msg}");
        } else {
            assert!(
                msg.contains("panicked") && msg.contains("crashed on example"),
                "{msg}"
            );
        }
        // Nothing half-written: no checkpoint was due, and no temp directory is left.
        assert!(!out.join("checkpoint.tmp").exists());
    }
}

#[test]
fn a_stalled_replica_ends_the_run_within_the_timeout() {
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let dir = without_dropout("bert", t.path());
    let (model, tb, eb) = bert_setup(&dir, 8);
    let task = Classification { eval: eb };
    let c = TrainConfig {
        replica_timeout_secs: 2,
        ..cfg(&t.path().join("stall"), &[0, 0], 10)
    };
    use std::sync::atomic::Ordering::SeqCst;
    kiln_train::distributed::TEST_STALL_REPLICA.store(1, SeqCst);
    let t0 = Instant::now();
    let r = train(&task, model, &tb, &c, 0);
    kiln_train::distributed::TEST_STALL_REPLICA.store(usize::MAX, SeqCst);
    let e = r.unwrap_err();
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
    let msg = e.to_string();
    assert!(
        matches!(e, Error::Replica { replica: 1, .. }) && msg.contains("within 2 s"),
        "{msg}"
    );
}

#[test]
fn bart_lora_recipe_on_two_replicas_matches_one_device() {
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let dir = without_dropout("bart", t.path());
    let run = |name: &str, devices: Vec<u16>| -> Vec<f64> {
        let a = RecipeArgs {
            model: Some(dir.display().to_string()),
            dataset: Some(fixtures().join("samples/cnndm").display().to_string()),
            out_dir: t.path().join(name),
            epochs: Some(2),
            batch_size: Some(8),
            max_steps: Some(10),
            max_eval_samples: Some(2),
            lora_dropout: Some(0.0),
            devices,
            ..Default::default()
        };
        let v = run_recipe::<AD>("bart-lora-cnndm", &a, &Default::default()).unwrap();
        v["train"]["state"]["losses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x[1].as_f64().unwrap())
            .collect()
    };
    let one = run("one", vec![]);
    let two = run("two", vec![0, 0]);
    assert_eq!(one.len(), 10, "{one:?}");
    assert_close(&one, &two, "BART LoRA 1×8 vs 2×4");
}
