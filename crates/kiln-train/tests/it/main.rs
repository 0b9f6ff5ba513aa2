//! kiln-train integration tests: the loop (resume, non-finite loss, schedule) on the bundled tiny BERT and
//! sentiment samples.

mod adapters;
mod distributed;

use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use kiln_data::{load_sst2, tokenize_sentiment, Batch, BatchOptions, Batcher, LoadOptions, Split};
use kiln_models::bert;
use kiln_models::tokenizer::Tokenizer;
use kiln_train::tasks::Classification;
use kiln_train::trainer::{linear_schedule, EvalResult, Task};
use kiln_train::{train, Error, OptimizerKind, TrainConfig};

type AD = Autodiff<Flex>;

/// burn's backend RNG (dropout) is process-wide: tests that train must not interleave, or their
/// dropout masks (and losses) depend on the other tests' draws.
static RNG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn setup() -> (bert::BertForSequenceClassification<AD>, Batcher, Batcher) {
    let device = Default::default();
    let dir = fixtures().join("bert");
    let (_, model, _) = bert::load_for_classification::<AD>(&dir, &device).unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let data = fixtures().join("samples/sentiment").display().to_string();
    let opts = LoadOptions {
        max_samples: Some(48),
        ..Default::default()
    };
    let train_ex = load_sst2(&data, Split::Train, &opts).unwrap().examples;
    let eval_ex = load_sst2(
        &data,
        Split::Validation,
        &LoadOptions {
            max_samples: Some(16),
            ..Default::default()
        },
    )
    .unwrap()
    .examples;
    let b = |ex, shuffle| {
        Batcher::new(
            tokenize_sentiment(&tok, ex, Some(32)).unwrap().features,
            BatchOptions {
                batch_size: 8,
                pad_id: 0,
                shuffle,
                seed: 3,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let tb = b(&train_ex, true);
    let eb = b(&eval_ex, false);
    (model, tb, eb)
}

fn cfg(out: &std::path::Path) -> TrainConfig {
    TrainConfig {
        epochs: 2,
        learning_rate: 1e-3,
        optimizer: OptimizerKind::AdamW,
        weight_decay: 0.01,
        warmup_ratio: 0.1,
        out_dir: out.to_path_buf(),
        progress: false,
        ..Default::default()
    }
}

#[test]
fn loss_falls_and_reports_are_written() {
    let _guard = serial();
    let t = tempfile::tempdir().unwrap();
    let (model, tb, eb) = setup();
    let task = Classification { eval: eb };
    let c = TrainConfig {
        epochs: 3,
        ..cfg(t.path())
    };
    let (_, report) = train(&task, model, &tb, &c, 0).unwrap();
    let l = &report.state.losses;
    assert_eq!(l.len(), 3 * 6);
    let first: f64 = l[..6].iter().map(|x| x.1).sum::<f64>() / 6.0;
    let last: f64 = l[l.len() - 6..].iter().map(|x| x.1).sum::<f64>() / 6.0;
    assert!(
        last < first,
        "mean loss should fall: first epoch {first}, last epoch {last}"
    );
    for f in [
        "metrics.jsonl",
        "loss.png",
        "train_report.json",
        "checkpoint/state.json",
        "best/state.json",
    ] {
        assert!(t.path().join(f).exists(), "{f} missing");
    }
    assert_eq!(report.state.evals.len(), 3);
    assert!(report.state.evals[0].1.get("accuracy").is_some());
}

#[test]
fn resume_gives_the_same_losses_as_an_uninterrupted_run() {
    let _guard = serial();
    let full = tempfile::tempdir().unwrap();
    let (model, tb, eb) = setup();
    let task = Classification { eval: eb.clone() };
    let c = TrainConfig {
        max_steps: Some(9),
        eval_each_epoch: false,
        ..cfg(full.path())
    };
    let (_, whole) = train(&task, model, &tb, &c, 0).unwrap();

    let part = tempfile::tempdir().unwrap();
    let (model, tb, _) = setup();
    let c1 = TrainConfig {
        max_steps: Some(4),
        eval_each_epoch: false,
        ..cfg(part.path())
    };
    let (_, first) = train(&task, model, &tb, &c1, 0).unwrap();
    assert_eq!(first.state.step, 4);
    // A fresh process would start from the pretrained weights again; resume replaces them.
    let (model, tb, _) = setup();
    let c2 = TrainConfig {
        max_steps: Some(9),
        eval_each_epoch: false,
        resume: true,
        ..cfg(part.path())
    };
    let (_, resumed) = train(&task, model, &tb, &c2, 0).unwrap();
    assert!(resumed.resumed_from.is_some());
    assert_eq!(
        resumed.state.losses, whole.state.losses,
        "resumed run must match the uninterrupted one exactly"
    );
}

/// A task whose loss turns into NaN at a given step.
struct Faulty {
    inner: Classification,
    at: std::sync::atomic::AtomicUsize,
}

impl Task<AD> for Faulty {
    type Model = bert::BertForSequenceClassification<AD>;
    fn loss(&self, model: &Self::Model, batch: &Batch) -> kiln_train::Result<Tensor<AD, 1>> {
        let l = self.inner.loss(model, batch)?;
        use std::sync::atomic::Ordering::SeqCst;
        let n = self.at.load(SeqCst);
        self.at.store(n.saturating_sub(1), SeqCst);
        Ok(if n == 0 { l.mul_scalar(f64::NAN) } else { l })
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

#[test]
fn nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint() {
    let _guard = serial();
    let t = tempfile::tempdir().unwrap();
    let (model, tb, eb) = setup();
    let task = Faulty {
        inner: Classification { eval: eb },
        at: std::sync::atomic::AtomicUsize::new(8),
    };
    let c = TrainConfig {
        save_every_steps: Some(2),
        ..cfg(t.path())
    };
    let err = train(&task, model, &tb, &c, 0).unwrap_err();
    match &err {
        Error::NonFinite {
            step, checkpoint, ..
        } => {
            assert_eq!(*step, 8);
            let ck = checkpoint.as_ref().expect("a checkpoint was written");
            let st: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(ck.join("state.json")).unwrap())
                    .unwrap();
            assert_eq!(st["step"], 8);
        }
        other => panic!("expected NonFinite, got {other}"),
    }
    assert!(err.to_string().contains("last good checkpoint"), "{err}");
}

#[test]
fn schedule_matches_transformers_linear_warmup() {
    // get_linear_schedule_with_warmup(num_warmup_steps=2, num_training_steps=10) at base 1.0.
    let want = [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125];
    for (s, w) in want.iter().enumerate() {
        assert!(
            (linear_schedule(1.0, s, 2, 10) - w).abs() < 1e-12,
            "step {s}"
        );
    }
}

#[test]
fn bad_settings_are_rejected_before_work() {
    let _guard = serial();
    let t = tempfile::tempdir().unwrap();
    let (model, tb, eb) = setup();
    let task = Classification { eval: eb };
    let c = TrainConfig {
        learning_rate: -1.0,
        ..cfg(t.path())
    };
    assert!(matches!(
        train(&task, model, &tb, &c, 0),
        Err(Error::Config(_))
    ));
    let (model, tb, _) = setup();
    let c = TrainConfig {
        out_dir: PathBuf::from("/proc/kiln-cannot-write-here"),
        ..cfg(t.path())
    };
    assert!(matches!(train(&task, model, &tb, &c, 0), Err(Error::Io(_))));
}

#[test]
fn unwritable_or_full_output_directory_is_reported_before_training() {
    let _guard = serial();
    let t = tempfile::tempdir().unwrap();
    let (model, tb, eb) = setup();
    let task = Classification { eval: eb };
    // An output path below a regular file can never be created (whoever runs the test, root included).
    let file = t.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = file.join("run");
    let c = TrainConfig {
        out_dir: out.clone(),
        ..cfg(t.path())
    };
    let e = train(&task, model, &tb, &c, 0).unwrap_err();
    assert!(matches!(e, Error::Io(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&out.display().to_string()) && msg.contains("cannot create output directory"),
        "{msg}"
    );

    // A read-only directory: only meaningful where permission bits stop this process (not as root).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let ro = t.path().join("read-only");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let blocked = std::fs::write(ro.join("probe"), b"x").is_err();
        if blocked {
            let (model, tb, _) = setup();
            let c = TrainConfig {
                out_dir: ro.clone(),
                ..cfg(t.path())
            };
            let e = train(&task, model, &tb, &c, 0).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains(&ro.display().to_string()) && msg.contains("not writable"),
                "{msg}"
            );
        } else {
            eprintln!(
                "running as root: permission bits do not block writes; read-only case skipped"
            );
        }
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    // Free space: known for the temp dir, and a need larger than any disk is refused, naming the directory.
    assert!(kiln_train::trainer::free_space(t.path()).is_some_and(|b| b > 0));
    let e = kiln_train::trainer::check_free_space(t.path(), u64::MAX / 2, "one checkpoint")
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&t.path().display().to_string())
            && msg.contains("not enough free disk space for one checkpoint"),
        "{msg}"
    );
    kiln_train::trainer::check_free_space(t.path(), 1, "one checkpoint").unwrap();
}
