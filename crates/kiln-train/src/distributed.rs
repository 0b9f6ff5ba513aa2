//! Data-parallel training on burn's collective operations (burn-collective): one replica per device, one thread
//! each, every global batch split into one shard per replica, the trainable gradients summed across replicas
//! with `GradientsParams::all_reduce` after each replica has scaled its loss by its shard's share of the batch,
//! so every replica applies the same optimizer step to the same parameters and the run equals one device
//! training on the whole batch (up to float summation order).
//!
//! Several machines join through burn-collective's global level: one process per node, each with its local
//! replicas, meeting at an orchestrator ([`run_orchestrator`], `kiln orchestrator`).
//!
//! Failures end the whole run with an error naming the replica: an error or a panic in one replica resets the
//! collective (which wakes the replicas waiting for it with an error), and a watchdog stops a run in which a
//! replica has waited longer than [`TrainConfig::replica_timeout_secs`] for the others.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::collective::{
    all_reduce, finish_collective, register, reset_collective, AllReduceStrategy, CollectiveConfig,
    PeerId, ReduceOperation,
};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::{AutodiffBackend, DeviceId, DeviceOps};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::trainer::TrainConfig;

/// This process's place in a multi-machine run (burn-collective's global level).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    /// Processes (machines) in the run; each runs the same number of local replicas.
    pub num_nodes: u32,
    /// This process's index in `0..num_nodes`; node 0's first replica writes the checkpoints and reports.
    pub node_rank: u32,
    /// The orchestrator every node registers with (`host:port` or `ws://host:port`).
    pub orchestrator: String,
    /// The address the other nodes reach this one at (`host:port` or `ws://host:port`; the port is
    /// `data_port`).
    pub node_address: String,
    /// The port this node serves its tensors on.
    pub data_port: u16,
}

/// `host:port` as the websocket URL burn-communication expects.
pub fn ws_address(s: &str) -> String {
    if s.contains("://") {
        s.to_string()
    } else {
        format!("ws://{s}")
    }
}

/// Run burn-collective's global orchestrator on `port` until the process is stopped (`kiln orchestrator`).
pub fn run_orchestrator(port: u16) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io(format!("orchestrator runtime: {e}")))?;
    rt.block_on(burn_collective::start_global_orchestrator(port));
    Ok(())
}

/// The watchdog's view of the replicas: since when each waits in a collective operation.
pub(crate) struct Watch {
    start: Instant,
    timeout: Duration,
    /// Milliseconds since `start` + 1 at which replica `r` began waiting; 0 while it computes.
    waiting_since: Vec<AtomicU64>,
    aborted: AtomicBool,
}

impl Watch {
    fn new(n: usize, timeout: Duration) -> Self {
        Self {
            start: Instant::now(),
            timeout,
            waiting_since: (0..n).map(|_| AtomicU64::new(0)).collect(),
            aborted: AtomicBool::new(false),
        }
    }

    /// Whether the run is being stopped (a replica failed or timed out); replicas stop at their next step.
    pub(crate) fn aborted(&self) -> bool {
        self.aborted.load(Ordering::SeqCst)
    }

    /// `Some((late replicas, waiting replicas))` when a replica has waited longer than the timeout.
    fn overdue(&self) -> Option<(Vec<usize>, Vec<usize>)> {
        let now = self.start.elapsed().as_millis() as u64 + 1;
        let timeout = self.timeout.as_millis() as u64;
        let since: Vec<u64> = self
            .waiting_since
            .iter()
            .map(|a| a.load(Ordering::SeqCst))
            .collect();
        if !since.iter().any(|&s| s != 0 && now - s.min(now) > timeout) {
            return None;
        }
        let late = (0..since.len()).filter(|&r| since[r] == 0).collect();
        let waiting = (0..since.len()).filter(|&r| since[r] != 0).collect();
        Some((late, waiting))
    }
}

/// One replica's identity in the run, and how it exchanges with the others.
pub(crate) struct Replica {
    /// Global rank (node_rank · local replicas + local index).
    pub rank: usize,
    /// Replicas in the whole run.
    pub count: usize,
    local: usize,
    /// The global ranks of the replicas on other machines.
    remote: Vec<usize>,
    watch: Option<Arc<Watch>>,
}

impl Replica {
    /// The single-device run.
    pub(crate) fn single() -> Self {
        Self {
            rank: 0,
            count: 1,
            local: 0,
            remote: Vec::new(),
            watch: None,
        }
    }

    /// The replica that logs, evaluates and writes checkpoints.
    pub(crate) fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// The replica's id in burn-collective: its global rank.
    fn peer(&self) -> PeerId {
        PeerId(self.rank as u32)
    }

    /// Whether the run is being stopped from outside this replica.
    pub(crate) fn aborted(&self) -> bool {
        self.watch.as_ref().is_some_and(|w| w.aborted())
    }

    fn collective<T>(
        &self,
        what: &str,
        f: impl FnOnce() -> std::result::Result<T, burn::collective::CollectiveError>,
    ) -> Result<T> {
        let w = self.watch.as_ref().expect("collective on a replica");
        test_hook_stall(self.rank, what);
        w.waiting_since[self.local]
            .store(w.start.elapsed().as_millis() as u64 + 1, Ordering::SeqCst);
        let r = f();
        w.waiting_since[self.local].store(0, Ordering::SeqCst);
        r.map_err(|e| match (&e, self.remote.first()) {
            // A stopped local server, in a run with other machines, is a lost exchange with them (a local failure
            // is reported first by the replica that failed).
            (
                burn::collective::CollectiveError::Global(_)
                | burn::collective::CollectiveError::LocalServerMissing,
                Some(&first),
            ) => Error::Replica {
                replica: first,
                message: format!(
                    "lost the replicas of the other nodes ({:?}) during {what} ({e:?}): a node stopped or cannot be \
                     reached",
                    self.remote
                ),
            },
            _ => Error::Replica {
                replica: self.rank,
                message: format!("{what} failed: {e:?} (another replica stopped)"),
            },
        })
    }

    /// The sum of `x` over all replicas (`x` itself on one device).
    pub(crate) fn sum<B: Backend>(&self, x: f64, device: &B::Device) -> Result<f64> {
        if self.count == 1 {
            return Ok(x);
        }
        let t = Tensor::<B, 1>::from_floats([x as f32], device);
        let r = self.collective("the loss all-reduce", || {
            all_reduce::<B>(
                self.peer(),
                t.into_primitive().tensor(),
                ReduceOperation::Sum,
            )
        })?;
        let t = Tensor::<B, 1>::from_primitive(burn::tensor::TensorPrimitive::Float(r));
        Ok(t.into_scalar().elem::<f64>())
    }

    /// The trainable gradients summed over all replicas (unchanged on one device).
    pub(crate) fn sum_grads<B: AutodiffBackend>(
        &self,
        grads: GradientsParams,
    ) -> Result<GradientsParams> {
        if self.count == 1 {
            return Ok(grads);
        }
        self.collective("the gradient all-reduce", || {
            grads.all_reduce::<B::InnerBackend>(self.peer(), ReduceOperation::Sum)
        })
    }
}

/// Test hook (kiln-train's `a_stalled_replica_ends_the_run_within_the_timeout`): the replica of this rank stops
/// before its first gradient exchange and waits until the run is aborted, as a replica stuck in a kernel or on a
/// dead machine would (except that it wakes, so the test's threads end). `usize::MAX`: none.
#[doc(hidden)]
pub static TEST_STALL_REPLICA: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(usize::MAX);

fn test_hook_stall(rank: usize, what: &str) {
    if what != "the gradient all-reduce" || TEST_STALL_REPLICA.load(Ordering::SeqCst) != rank {
        return;
    }
    while !STALL_RELEASE.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

static STALL_RELEASE: AtomicBool = AtomicBool::new(false);

/// Gives every float parameter the id of its position in the module (`KILN_PARAM_ID_BASE + index`): burn draws
/// parameter ids at random per process, and the all-reduce exchanges gradients in the order of their ids, so
/// processes on different machines must agree on them. Local replicas are clones and agree already.
struct Renumber(u64);

const KILN_PARAM_ID_BASE: u64 = 0x6b69_6c6e_0000_0000;

impl<B: Backend> burn::module::ModuleMapper<B> for Renumber {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<B, D>>,
    ) -> burn::module::Param<Tensor<B, D>> {
        let (_, tensor, mapper) = param.consume();
        self.0 += 1;
        burn::module::Param::from_mapped_value(
            burn::module::ParamId::from(KILN_PARAM_ID_BASE + self.0),
            tensor,
            mapper,
        )
    }
}

/// `model` with parameter ids that every process derives alike (see [`Renumber`]).
pub(crate) fn with_deterministic_ids<B: Backend, M: burn::module::Module<B>>(model: M) -> M {
    model.map(&mut Renumber(0))
}

/// Why and since when the current run is being stopped (set when a replica fails or the watchdog fires).
static STOPPED: Mutex<Option<(Instant, String)>> = Mutex::new(None);

/// Why the current data-parallel run is being stopped and for how long, if it is. A replica blocked in a
/// multi-node exchange with a dead machine cannot always be woken (burn-collective waits on the network
/// without a timeout): a binary that sees this for long (`kiln train` waits 10 s) reports it and exits.
pub fn stopping_since() -> Option<(Duration, String)> {
    STOPPED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|(t, m)| (t.elapsed(), m.clone()))
}

/// One collective run per process at a time: burn-collective keeps one server per backend type.
static RUN_LOCK: Mutex<()> = Mutex::new(());

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panicked".into()
    }
}

/// The devices of the run: `cfg.devices` as indices of the model's device type (e.g. `cuda:0,cuda:1`; on the
/// CPU backends every index is the one CPU device, and the replicas share its cores).
pub(crate) fn devices<D: DeviceOps>(model_device: &D, indices: &[u16]) -> Vec<D> {
    let id = model_device.id();
    indices
        .iter()
        .map(|&i| D::from_id(DeviceId::new(id.type_id, i)))
        .collect()
}

/// Run `body` once per replica, each on its own thread with its own copy of `model` on its device; returns the
/// first replica's result, or the error that stopped the run.
pub(crate) fn run_replicas<B, M, R, F>(
    model: M,
    model_device: &B::Device,
    cfg: &TrainConfig,
    body: F,
) -> Result<R>
where
    B: AutodiffBackend,
    M: burn::module::AutodiffModule<B> + Send,
    R: Send,
    F: Fn(M, &Replica) -> Result<R> + Sync,
{
    let _guard = RUN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let devices = devices(model_device, &cfg.devices);
    let local = devices.len();
    let (nodes, node_rank) = match &cfg.node {
        Some(n) => {
            if n.num_nodes == 0 || n.node_rank >= n.num_nodes {
                return Err(Error::Config(format!(
                    "node rank {} is not below the number of nodes {}",
                    n.node_rank, n.num_nodes
                )));
            }
            (n.num_nodes as usize, n.node_rank as usize)
        }
        None => (1, 0),
    };
    let count = local * nodes;
    let mut config = CollectiveConfig::default()
        .with_num_devices(local)
        .with_local_all_reduce_strategy(AllReduceStrategy::Centralized);
    if let Some(n) = &cfg.node {
        let parse = |s: &str| {
            ws_address(s)
                .parse()
                .map_err(|e: String| Error::Config(format!("address {s}: {e}")))
        };
        config = config
            .with_num_nodes(n.num_nodes)
            .with_global_address(parse(&n.orchestrator)?)
            .with_node_address(parse(&n.node_address)?)
            .with_data_service_port(n.data_port)
            // The ring cuts every tensor into one slice per node, which a one-element tensor cannot be.
            .with_global_all_reduce_strategy(AllReduceStrategy::Tree(2));
    }
    let model = if cfg.node.is_some() {
        with_deterministic_ids::<B, M>(model)
    } else {
        model
    };
    reset_collective::<B::InnerBackend>();
    STALL_RELEASE.store(false, Ordering::SeqCst);
    *STOPPED.lock().unwrap_or_else(|p| p.into_inner()) = None;
    let watch = Arc::new(Watch::new(
        local,
        Duration::from_secs(cfg.replica_timeout_secs.max(1)),
    ));
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Result<R>)>();
    let mut first: Option<R> = None;
    let mut error: Option<Error> = None;
    std::thread::scope(|s| {
        for (i, dev) in devices.iter().enumerate() {
            let replica = Replica {
                rank: node_rank * local + i,
                count,
                local: i,
                remote: (0..count).filter(|r| r / local != node_rank).collect(),
                watch: Some(watch.clone()),
            };
            let m = model.clone().fork(dev);
            let tx = tx.clone();
            let (config, body) = (config.clone(), &body);
            let dev = dev.clone();
            s.spawn(move || {
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    replica.collective("registering with the collective", || {
                        register::<B::InnerBackend>(replica.peer(), dev.clone(), config)
                    })?;
                    let r = body(m, &replica)?;
                    replica.collective("leaving the collective", || {
                        finish_collective::<B::InnerBackend>(replica.peer())
                    })?;
                    Ok(r)
                }));
                let res = res.unwrap_or_else(|p| {
                    Err(Error::Replica {
                        replica: replica.rank,
                        message: format!("panicked: {}", panic_message(p)),
                    })
                });
                let _ = tx.send((i, res));
            });
        }
        drop(tx);
        let mut pending = local;
        let stop = |e: Error, error: &mut Option<Error>| {
            if error.is_none() {
                *STOPPED.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), e.to_string()));
                *error = Some(e);
                watch.aborted.store(true, Ordering::SeqCst);
                STALL_RELEASE.store(true, Ordering::SeqCst);
                // Wakes every replica waiting in an all-reduce (their pending operation is dropped).
                reset_collective::<B::InnerBackend>();
            }
        };
        while pending > 0 {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok((i, res)) => {
                    pending -= 1;
                    match res {
                        Ok(r) if i == 0 => first = Some(r),
                        Ok(_) => {}
                        Err(e) => {
                            let e = match e {
                                e @ Error::Replica { .. } => e,
                                e => Error::Replica {
                                    replica: node_rank * local + i,
                                    message: e.to_string(),
                                },
                            };
                            stop(e, &mut error)
                        }
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if let Some((late, waiting)) = watch.overdue() {
                        let secs = watch.timeout.as_secs();
                        let ranks = |v: &[usize]| -> Vec<usize> {
                            v.iter().map(|&i| node_rank * local + i).collect()
                        };
                        let e = match late.first() {
                            Some(&who) => Error::Replica {
                                replica: node_rank * local + who,
                                message: format!(
                                    "did not reach the collective operation within {secs} s (replicas {:?} waited for it)",
                                    ranks(&waiting)
                                ),
                            },
                            None => {
                                // Every local replica waits: the late ones are on other machines.
                                let remote: Vec<usize> = (0..count)
                                    .filter(|r| r / local != node_rank)
                                    .collect();
                                Error::Replica {
                                    replica: remote.first().copied().unwrap_or(0),
                                    message: format!(
                                        "the replicas of the other nodes ({remote:?}) did not reach the collective \
                                         operation within {secs} s: a node stopped or cannot be reached"
                                    ),
                                }
                            }
                        };
                        stop(e, &mut error);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
    });
    reset_collective::<B::InnerBackend>();
    if let Some(e) = error {
        return Err(e);
    }
    first.ok_or_else(|| Error::Config("the first replica returned nothing".into()))
}
