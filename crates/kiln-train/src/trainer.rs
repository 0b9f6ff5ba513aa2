//! One training loop for every task and every PEFT method: AdamW or Adam, linear schedule with warmup,
//! gradient accumulation and clipping, evaluation each epoch, best-checkpoint keeping, exact
//! checkpoint/resume, progress bars, metrics as JSON lines and a loss chart.
//!
//! Only parameters that require gradients get gradients and hence optimizer state: freezing a base model
//! (`Module::no_grad`) is how PEFT methods train only their own parameters.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use kiln_data::{Batch, Batcher, Position};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::distributed::Replica;
use crate::error::{Error, Result};

/// Which optimizer (AdamW as transformers' Trainer; Adam as the seed's BERT run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OptimizerKind {
    /// Adam with decoupled weight decay.
    AdamW,
    /// Adam (weight decay, if any, as an L2 penalty).
    Adam,
}

/// Loop settings. Defaults follow transformers' `TrainingArguments`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the training batches.
    pub epochs: usize,
    /// Peak learning rate (after warmup; linear decay to 0).
    pub learning_rate: f64,
    /// Weight decay: decoupled with AdamW, an L2 penalty with Adam (0: none).
    pub weight_decay: f64,
    /// Warmup as a fraction of all optimizer steps (ignored when `warmup_steps` is set).
    pub warmup_ratio: f64,
    /// Warmup in optimizer steps; overrides `warmup_ratio`.
    pub warmup_steps: Option<usize>,
    /// Batches per optimizer step (gradient accumulation).
    pub grad_accum: usize,
    /// Clip the global gradient norm to this (`None`: no clipping).
    pub max_grad_norm: Option<f32>,
    /// AdamW or Adam.
    pub optimizer: OptimizerKind,
    /// Adam's epsilon.
    pub adam_epsilon: f64,
    /// Seed for shuffling and dropout.
    pub seed: u64,
    /// Stop after this many optimizer steps (the schedule still spans all epochs).
    pub max_steps: Option<usize>,
    /// Where checkpoints, metrics.jsonl and loss.png go.
    pub out_dir: PathBuf,
    /// Resume from `out_dir/checkpoint` when it exists.
    pub resume: bool,
    /// Evaluate (and keep the best checkpoint) at the end of each epoch.
    pub eval_each_epoch: bool,
    /// Also checkpoint every this many optimizer steps.
    pub save_every_steps: Option<usize>,
    /// Show progress bars on stderr.
    pub progress: bool,
    /// Data-parallel training: one replica per entry, each on the device of that index (`[0, 1]`: `cuda:0` and
    /// `cuda:1`; on the CPU backends every index is the one CPU device). Empty or one entry: one device.
    #[serde(default)]
    pub devices: Vec<u16>,
    /// How long a replica may wait for the others at a gradient exchange before the run stops with an error
    /// naming the late one (longer than the slowest evaluation, which the first replica runs alone).
    #[serde(default = "default_replica_timeout")]
    pub replica_timeout_secs: u64,
    /// This process's place in a multi-machine run (burn-collective's global level); `None`: one machine.
    #[serde(default)]
    pub node: Option<crate::distributed::NodeConfig>,
}

fn default_replica_timeout() -> u64 {
    1800
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            learning_rate: 5e-5,
            weight_decay: 0.0,
            warmup_ratio: 0.0,
            warmup_steps: None,
            grad_accum: 1,
            max_grad_norm: Some(1.0),
            optimizer: OptimizerKind::AdamW,
            adam_epsilon: 1e-8,
            seed: 42,
            max_steps: None,
            out_dir: PathBuf::from("kiln-out/train"),
            resume: false,
            eval_each_epoch: true,
            save_every_steps: None,
            progress: true,
            devices: Vec::new(),
            replica_timeout_secs: default_replica_timeout(),
            node: None,
        }
    }
}

impl TrainConfig {
    /// Checks the settings: at least one epoch, a positive finite learning rate, `grad_accum >= 1`,
    /// `warmup_ratio` in `[0, 1)` and a positive `max_grad_norm`; returns [`Error::Config`] otherwise.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(format!(
                "learning rate must be positive, got {}",
                self.learning_rate
            ));
        }
        if self.grad_accum == 0 {
            return bad("gradient accumulation steps must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad(format!(
                "warmup_ratio must be in [0, 1), got {}",
                self.warmup_ratio
            ));
        }
        if self.max_grad_norm.is_some_and(|n| !(n > 0.0)) {
            return bad("max_grad_norm must be positive".into());
        }
        Ok(())
    }
}

/// What an evaluation reports: named values, one of which is the task's primary metric.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EvalResult {
    /// Metric name → value (`accuracy`, `eval_loss`, `rouge1`, …).
    pub metrics: serde_json::Map<String, serde_json::Value>,
}

impl EvalResult {
    /// The metric `k` as a number, if present.
    pub fn get(&self, k: &str) -> Option<f64> {
        self.metrics.get(k).and_then(|v| v.as_f64())
    }
}

/// A task: how to compute the loss of a batch, and how to evaluate a model.
pub trait Task<B: AutodiffBackend> {
    /// The model being trained (an autodiff module; its `valid()` copy is evaluated).
    type Model: AutodiffModule<B> + Clone;
    /// Mean loss of the batch (a scalar).
    fn loss(&self, model: &Self::Model, batch: &Batch) -> Result<Tensor<B, 1>>;
    /// Evaluate the inference copy of the model (no autodiff).
    fn evaluate(
        &self,
        model: &<Self::Model as AutodiffModule<B>>::InnerModule,
    ) -> Result<EvalResult>;
    /// The metric that decides the best checkpoint, and whether higher is better.
    fn primary_metric(&self) -> (&str, bool);
    /// How many terms [`loss`](Task::loss)'s mean is over (examples by default; tokens for token losses). In
    /// data-parallel training each replica's loss is scaled by its shard's share of the batch's weight, so the
    /// summed gradients equal the whole batch's mean-loss gradient.
    fn loss_weight(&self, batch: &Batch) -> f64 {
        batch.len() as f64
    }
}

/// HF's `get_linear_schedule_with_warmup`: linear warmup to the base rate, then linear decay to 0.
pub fn linear_schedule(base: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        base * step as f64 / warmup.max(1) as f64
    } else {
        base * ((total.saturating_sub(step)) as f64 / total.saturating_sub(warmup).max(1) as f64)
            .max(0.0)
    }
}

/// Saved with every checkpoint, to resume exactly.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainState {
    /// Where the next batch comes from.
    pub position: Position,
    /// Optimizer steps taken.
    pub step: usize,
    /// The best value of the task's primary metric so far.
    pub best_metric: Option<f64>,
    /// The epoch that reached it.
    pub best_epoch: Option<u64>,
    /// (step, loss) of every optimizer step so far.
    pub losses: Vec<(usize, f64)>,
    /// (epoch, evaluation) so far.
    pub evals: Vec<(u64, EvalResult)>,
}

/// What [`train`] returns besides the model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    /// Steps, losses and evaluations.
    pub state: TrainState,
    /// Wall-clock time of the run.
    pub wall_seconds: f64,
    /// Training throughput.
    pub examples_per_second: f64,
    /// Parameters that trained.
    pub trainable_params: usize,
    /// All parameters of the model.
    pub total_params: usize,
    /// Where the run resumed from, if it did.
    pub resumed_from: Option<Position>,
    /// Where the reports and checkpoints are.
    pub out_dir: PathBuf,
}

type Rec = NamedMpkFileRecorder<FullPrecisionSettings>;

fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io(format!("{}: {e}", path.display()))
}

/// Write a checkpoint atomically: into `checkpoint.tmp`, then renamed over `checkpoint` (the previous one
/// is kept as `checkpoint.old` until the new one is in place), so a run killed mid-write resumes from
/// the last complete checkpoint.
fn save_checkpoint<B: AutodiffBackend, M: AutodiffModule<B> + Clone, O: Optimizer<M, B>>(
    dir: &Path,
    name: &str,
    model: &M,
    optim: &O,
    state: &TrainState,
) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let fin = dir.join(name);
    let old = dir.join(format!("{name}.old"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    let rec = Rec::new();
    model
        .clone()
        .save_file(tmp.join("model"), &rec)
        .map_err(|e| io(&tmp, e))?;
    rec.record(optim.to_record(), tmp.join("optimizer"))
        .map_err(|e| io(&tmp, e))?;
    test_hook_stall(name, &tmp);
    let st = serde_json::to_string(state).map_err(|e| io(&tmp, e))?;
    std::fs::write(tmp.join("state.json"), st).map_err(|e| io(&tmp, e))?;
    if fin.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| io(&old, e))?;
        }
        std::fs::rename(&fin, &old).map_err(|e| io(&fin, e))?;
    }
    std::fs::rename(&tmp, &fin).map_err(|e| io(&tmp, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| io(&old, e))?;
    }
    Ok(())
}

/// Test hook (used by kiln-cli's `killed_during_a_checkpoint_write_resumes_from_the_last_complete_one`):
/// with `KILN_TEST_STALL_IN_CHECKPOINT=<n>` in the environment, the `n`-th write of `checkpoint` in this
/// process tears its temp directory (the optimizer file cut to half its length, no `state.json`), prints
/// `kiln-test: stalled in checkpoint write <dir>` to stderr and sleeps until the test kills the process.
/// Without the variable it does nothing.
fn test_hook_stall(name: &str, tmp: &Path) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static WRITES: AtomicUsize = AtomicUsize::new(0);
    if name != "checkpoint" {
        return;
    }
    let Some(n) = std::env::var("KILN_TEST_STALL_IN_CHECKPOINT")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    else {
        return;
    };
    if WRITES.fetch_add(1, Ordering::SeqCst) + 1 != n {
        return;
    }
    if let Ok(rd) = std::fs::read_dir(tmp) {
        for e in rd.flatten() {
            let p = e.path();
            if p.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with("optimizer"))
            {
                if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&p) {
                    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                    let _ = f.set_len(len / 2);
                    let _ = f.sync_all();
                }
            }
        }
    }
    eprintln!("kiln-test: stalled in checkpoint write {}", tmp.display());
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// Remove temp directories left by a run killed while writing a checkpoint (`checkpoint.tmp`, `best.tmp`):
/// they are never complete, and [`latest_checkpoint`] never reads them. Returns the ones removed.
pub fn remove_stale_temps(out_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for name in ["checkpoint.tmp", "best.tmp"] {
        let p = out_dir.join(name);
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(|e| io(&p, e))?;
            removed.push(p);
        }
    }
    Ok(removed)
}

/// The newest complete checkpoint directory: `checkpoint`, or `checkpoint.old` if a run died between
/// the two renames of `save_checkpoint`.
pub fn latest_checkpoint(out_dir: &Path) -> Option<PathBuf> {
    ["checkpoint", "checkpoint.old"]
        .iter()
        .map(|n| out_dir.join(n))
        .find(|d| d.join("state.json").is_file())
}

fn count_params<B: Backend, M: Module<B>>(m: &M) -> usize {
    m.num_params()
}

/// Check the output directory is writable before any work.
pub fn check_out_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| io(dir, format!("cannot create output directory: {e}")))?;
    let probe = dir.join(".kiln-write-test");
    std::fs::write(&probe, b"ok")
        .map_err(|e| io(dir, format!("output directory is not writable: {e}")))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Bytes free for an unprivileged writer on the filesystem holding `dir` (`None` where it cannot be told).
pub fn free_space(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a NUL-terminated path and `st` a properly sized, writable statvfs.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return None;
        }
        Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// Check that `dir` has room for `needed` bytes (a disk that is already too full is reported before
/// training starts, not at the first checkpoint). Does nothing where the free space cannot be told.
pub fn check_free_space(dir: &Path, needed: u64, what: &str) -> Result<()> {
    match free_space(dir) {
        Some(free) if free < needed => Err(io(
            dir,
            format!(
                "not enough free disk space for {what}: about {} MiB needed, {} MiB free",
                needed.div_ceil(1 << 20),
                free / (1 << 20)
            ),
        )),
        _ => Ok(()),
    }
}

/// Train `model` on `task` with batches from `batcher`: on the model's device, or data-parallel on
/// `cfg.devices` (and `cfg.node`'s machines), where every global batch is split between the replicas and the run
/// equals the one-device run up to float summation order ([`crate::distributed`]).
pub fn train<B: AutodiffBackend, T: Task<B> + Sync>(
    task: &T,
    model: T::Model,
    batcher: &Batcher,
    cfg: &TrainConfig,
    trainable_params: usize,
) -> Result<(T::Model, TrainReport)>
where
    T::Model: Send,
{
    cfg.validate()?;
    let device = model
        .devices()
        .into_iter()
        .next()
        .ok_or_else(|| Error::Config("model has no device".into()))?;
    if cfg.devices.len() <= 1 && cfg.node.is_none() {
        let model = match crate::distributed::devices(&device, &cfg.devices).pop() {
            Some(d) if d != device => model.fork(&d),
            _ => model,
        };
        return with_optimizer(
            task,
            model,
            batcher,
            cfg,
            trainable_params,
            &Replica::single(),
        );
    }
    if cfg.devices.is_empty() {
        return Err(Error::Config(
            "a multi-node run needs its local devices (--devices)".into(),
        ));
    }
    prepare_out_dir(cfg)?;
    crate::distributed::run_replicas::<B, _, _, _>(model, &device, cfg, |m, rep| {
        with_optimizer(task, m, batcher, cfg, trainable_params, rep)
    })
}

/// What the first replica does to the output directory before training: check it is writable and remove the
/// temp directories of an interrupted checkpoint write.
fn prepare_out_dir(cfg: &TrainConfig) -> Result<()> {
    check_out_dir(&cfg.out_dir)?;
    for p in remove_stale_temps(&cfg.out_dir)? {
        eprintln!(
            "removed {}: an incomplete checkpoint left by an interrupted run",
            p.display()
        );
    }
    Ok(())
}

fn with_optimizer<B: AutodiffBackend, T: Task<B>>(
    task: &T,
    model: T::Model,
    batcher: &Batcher,
    cfg: &TrainConfig,
    trainable_params: usize,
    rep: &Replica,
) -> Result<(T::Model, TrainReport)> {
    match cfg.optimizer {
        OptimizerKind::AdamW => run(
            task,
            model,
            batcher,
            cfg,
            crate::optim::adamw::<B, T::Model>(
                cfg.weight_decay as f32,
                cfg.adam_epsilon as f32,
                cfg.max_grad_norm,
            ),
            trainable_params,
            rep,
        ),
        OptimizerKind::Adam => {
            let mut c = AdamConfig::new().with_epsilon(cfg.adam_epsilon as f32);
            if cfg.weight_decay > 0.0 {
                c = c.with_weight_decay(Some(burn::optim::decay::WeightDecayConfig::new(
                    cfg.weight_decay as f32,
                )));
            }
            if let Some(n) = cfg.max_grad_norm {
                c = c
                    .with_grad_clipping(Some(burn::grad_clipping::GradientClippingConfig::Norm(n)));
            }
            run(
                task,
                model,
                batcher,
                cfg,
                c.init::<B, T::Model>(),
                trainable_params,
                rep,
            )
        }
    }
}

fn run<B: AutodiffBackend, T: Task<B>, O: Optimizer<T::Model, B>>(
    task: &T,
    mut model: T::Model,
    batcher: &Batcher,
    cfg: &TrainConfig,
    mut optim: O,
    trainable_params: usize,
    rep: &Replica,
) -> Result<(T::Model, TrainReport)> {
    let main = rep.is_main();
    if rep.count == 1 {
        prepare_out_dir(cfg)?;
    }
    // One checkpoint: the model in f32, and Adam's two moments per trainable parameter.
    let params = count_params::<B, _>(&model) as u64;
    let trainable = if trainable_params == 0 {
        params
    } else {
        trainable_params as u64
    };
    if main {
        check_free_space(&cfg.out_dir, 4 * (params + 2 * trainable), "one checkpoint")?;
    }
    let device = model
        .devices()
        .into_iter()
        .next()
        .ok_or_else(|| Error::Config("model has no device".into()))?;
    let per_epoch = batcher.num_batches();
    if per_epoch == 0 {
        return Err(Error::Config("no training batches".into()));
    }
    let steps_per_epoch = per_epoch.div_ceil(cfg.grad_accum);
    let total_steps = steps_per_epoch * cfg.epochs;
    let warmup = cfg
        .warmup_steps
        .unwrap_or((cfg.warmup_ratio * total_steps as f64).ceil() as usize);
    let mut state = TrainState::default();
    let mut resumed_from = None;
    if cfg.resume {
        if let Some(ck) = latest_checkpoint(&cfg.out_dir) {
            let rec = Rec::new();
            model = model
                .load_file(ck.join("model"), &rec, &device)
                .map_err(|e| io(&ck, e))?;
            let orec = rec
                .load(ck.join("optimizer"), &device)
                .map_err(|e| io(&ck, e))?;
            optim = optim.load_record(orec);
            let text = std::fs::read_to_string(ck.join("state.json")).map_err(|e| io(&ck, e))?;
            state = serde_json::from_str(&text).map_err(|e| io(&ck, e))?;
            resumed_from = Some(state.position);
        } else if main {
            eprintln!(
                "warning: --resume: no checkpoint in {}; training starts from the beginning",
                cfg.out_dir.display()
            );
        }
    }
    if rep.count > 1 {
        // Every replica must continue from the same step (on several machines, each reads its own --out).
        let sum = rep.sum::<B::InnerBackend>(state.step as f64, &device)?;
        if (sum - (state.step * rep.count) as f64).abs() > 0.5 {
            return Err(Error::Replica {
                replica: rep.rank,
                message: format!(
                    "the replicas resumed from different steps (this one from step {}, {} steps summed over {} \
                     replicas): every node needs the same checkpoint in its --out (a shared directory, or a copy \
                     of node 0's)",
                    state.step, sum, rep.count
                ),
            });
        }
    }
    let metrics_path = cfg.out_dir.join("metrics.jsonl");
    // Only the first replica writes reports, metrics and checkpoints.
    let mut metrics = if main {
        Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&metrics_path)
                .map_err(|e| io(&metrics_path, e))?,
        )
    } else {
        None
    };
    let mut log = |v: serde_json::Value| -> Result<()> {
        match metrics.as_mut() {
            Some(m) => writeln!(m, "{v}").map_err(|e| io(&metrics_path, e)),
            None => Ok(()),
        }
    };
    let total_params = count_params::<B, _>(&model);
    let (metric_name, higher_better) = task.primary_metric();
    let t0 = Instant::now();
    let mut examples = 0usize;
    let bar = if cfg.progress && main {
        let b = indicatif::ProgressBar::new(
            (total_steps.min(cfg.max_steps.unwrap_or(usize::MAX))) as u64,
        );
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .expect("template"),
        );
        b.set_position(state.step as u64);
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut done = cfg.max_steps.is_some_and(|m| state.step >= m);
    'epochs: for epoch in state.position.epoch..cfg.epochs as u64 {
        let start = if epoch == state.position.epoch {
            state.position
        } else {
            Position { epoch, batch: 0 }
        };
        let mut batches = batcher.iter_from(start);
        let mut accum = GradientsAccumulator::<T::Model>::new();
        let mut in_accum = 0usize;
        let mut accum_loss = 0f64;
        while !done {
            let Some((_, batch)) = batches.next() else {
                break;
            };
            let pos_batch = batches.position();
            if rep.aborted() {
                bar.abandon();
                return Err(Error::Replica {
                    replica: rep.rank,
                    message: "stopped because another replica failed".into(),
                });
            }
            // Seed per step so dropout masks depend only on (seed, step): resume is exact.
            B::seed(
                &device,
                cfg.seed
                    .wrapping_add((state.step * cfg.grad_accum + in_accum) as u64)
                    .wrapping_add((rep.rank as u64) << 40),
            );
            // On several replicas, this replica's shard, its loss scaled by its share of the batch's weight: the
            // replicas' scaled losses (and gradients) add up to the whole batch's. A replica without rows (a last
            // batch smaller than the replica count) computes one row at weight 0, so that it has the same
            // gradients to exchange. `value` is this replica's share of the loss; the shares are summed over the
            // replicas once per optimizer step.
            let (loss, w) = if rep.count == 1 {
                (task.loss(&model, &batch)?, 1.0)
            } else {
                let total = task.loss_weight(&batch);
                let (shard, w) = match batch.shard(rep.rank, rep.count) {
                    Some(s) if total > 0.0 => {
                        let w = task.loss_weight(&s) / total;
                        (s, w)
                    }
                    Some(s) => (s, 0.0),
                    None => (batch.shard(0, batch.len()).unwrap_or(batch.clone()), 0.0),
                };
                (task.loss(&model, &shard)?.mul_scalar(w), w)
            };
            let value: f64 = loss.clone().into_scalar().elem::<f64>();
            if !value.is_finite() {
                // On several replicas, reported by the one whose rows gave it, before any exchange (the others stop
                // when it does not arrive).
                bar.abandon();
                return Err(Error::NonFinite {
                    step: state.step,
                    loss: if w > 0.0 { value / w } else { value },
                    checkpoint: latest_checkpoint(&cfg.out_dir),
                });
            }
            let loss = if cfg.grad_accum > 1 {
                loss.div_scalar(cfg.grad_accum as f64)
            } else {
                loss
            };
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            if grads.is_empty() {
                // (The same on every replica: they run the same model.)
                // A model with every parameter frozen (or rebuilt without its require-grad flags) would "train"
                // for the whole run and change nothing.
                bar.abandon();
                return Err(Error::Config(
                    "no parameter of the model requires a gradient: nothing would train".into(),
                ));
            }
            accum.accumulate(&model, grads);
            in_accum += 1;
            accum_loss += value;
            examples += batch.len();
            let end_of_epoch = pos_batch.epoch != epoch;
            if in_accum == cfg.grad_accum || end_of_epoch {
                let lr = linear_schedule(cfg.learning_rate, state.step, warmup, total_steps);
                let grads = rep.sum_grads::<B>(accum.grads())?;
                model = optim.step(lr, model, grads);
                let mean = rep.sum::<B::InnerBackend>(accum_loss, &device)? / in_accum as f64;
                state.step += 1;
                state.losses.push((state.step, mean));
                state.position = pos_batch;
                in_accum = 0;
                accum_loss = 0.0;
                log(json!({"step": state.step, "epoch": epoch, "loss": mean, "lr": lr}))?;
                let rate = examples as f64 / t0.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!("epoch {} loss {mean:.4} {rate:.1} ex/s", epoch + 1));
                bar.set_position(state.step as u64);
                if main && cfg.save_every_steps.is_some_and(|n| state.step % n == 0) {
                    save_checkpoint(&cfg.out_dir, "checkpoint", &model, &optim, &state)?;
                }
                if cfg.max_steps.is_some_and(|m| state.step >= m) {
                    done = true;
                }
            }
        }
        if state.position.epoch == epoch && !done {
            state.position = Position {
                epoch: epoch + 1,
                batch: 0,
            };
        }
        let epoch_finished = state.position.epoch > epoch;
        if epoch_finished && cfg.eval_each_epoch && main {
            let ev = task.evaluate(&model.valid())?;
            log(json!({"epoch": epoch, "step": state.step, "eval": ev.metrics}))?;
            if let Some(m) = ev.get(metric_name) {
                let better = match state.best_metric {
                    None => true,
                    Some(b) => {
                        if higher_better {
                            m > b
                        } else {
                            m < b
                        }
                    }
                };
                if better {
                    state.best_metric = Some(m);
                    state.best_epoch = Some(epoch);
                    save_checkpoint(&cfg.out_dir, "best", &model, &optim, &state)?;
                }
            }
            state.evals.push((epoch, ev));
        }
        if (epoch_finished || done) && main {
            save_checkpoint(&cfg.out_dir, "checkpoint", &model, &optim, &state)?;
        }
        if done {
            break 'epochs;
        }
    }
    bar.finish_and_clear();
    let wall = t0.elapsed().as_secs_f64();
    let report = TrainReport {
        examples_per_second: examples as f64 / wall.max(1e-9),
        wall_seconds: wall,
        trainable_params,
        total_params,
        resumed_from,
        out_dir: cfg.out_dir.clone(),
        state,
    };
    if !main {
        return Ok((model, report));
    }
    let state = &report.state;
    let series = vec![(
        "train loss".to_string(),
        state.losses.iter().map(|&(s, l)| (s as f64, l)).collect(),
    )];
    if !state.losses.is_empty() {
        crate::chart::line_chart(&cfg.out_dir.join("loss.png"), "training loss", &series)
            .map_err(|e| Error::Io(e.to_string()))?;
    }
    std::fs::write(
        cfg.out_dir.join("train_report.json"),
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )
    .map_err(|e| io(&cfg.out_dir, e))?;
    Ok((model, report))
}
