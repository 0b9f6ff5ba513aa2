//! `kiln train`: the recipes.

use std::path::PathBuf;

use clap::Args;

use crate::backend;

use super::*;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A recipe: t5-prompt-sst2, bert-adapters-sst2, bert-lora-sst2, bert-sst2, said-sst2, said-mrpc, bart-lora-cnndm, bart-cnndm, bart-lora-vs-full, prefix-cnndm, prompt-tuning-sst2, opt-icl-sst2, gpt2-generate, t0-zero-shot.
    #[arg(long)]
    pub recipe: String,
    /// Model hub id or directory (default: the recipe's, e.g. t5-small).
    #[arg(long)]
    pub model: Option<String>,
    /// Dataset hub id, directory or file (default: the recipe's, e.g. stanfordnlp/sst2).
    #[arg(long)]
    pub dataset: Option<String>,
    #[arg(long, default_value = "kiln-out/train")]
    pub out: PathBuf,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Training examples to use (the seed uses 5000 CNN/DailyMail articles).
    #[arg(long)]
    pub max_samples: Option<usize>,
    #[arg(long)]
    pub max_eval_samples: Option<usize>,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    pub max_steps: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue from the checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Also write the checkpoint every this many optimizer steps (it is always written at the end of
    /// each epoch).
    #[arg(long)]
    pub save_every_steps: Option<usize>,
    /// Bottleneck size of the adapters (bert-adapters-sst2).
    #[arg(long)]
    pub adapter_size: Option<usize>,
    /// Virtual tokens of the prompt / prefix (prefix-cnndm: 20).
    #[arg(long)]
    pub num_virtual_tokens: Option<usize>,
    /// Intrinsic dimensions to sweep, comma-separated (said-sst2, said-mrpc: 10,100,1000,10000).
    #[arg(long, value_delimiter = ',')]
    pub intrinsic_dims: Option<Vec<usize>>,
    /// Learning rate of the full fine-tuning run of said-sst2 / said-mrpc (default 2e-5).
    #[arg(long)]
    pub full_learning_rate: Option<f64>,
    /// LoRA's dropout probability (bert-lora-sst2, bart-lora-cnndm, bart-lora-vs-full; default 0.1).
    #[arg(long)]
    pub lora_dropout: Option<f64>,
    /// Data-parallel training, one replica per device: `cuda:0,cuda:1` (CUDA build), `cpu,cpu` (CPU backends: the
    /// replicas share the CPU). Each global batch (--batch-size) is split between the replicas.
    #[arg(long, value_delimiter = ',')]
    pub devices: Option<Vec<String>>,
    /// Seconds a replica may wait for the others at a gradient exchange before the run stops with an error
    /// naming the late replica (default 1800; longer than the slowest evaluation).
    #[arg(long)]
    pub replica_timeout: Option<u64>,
    /// Machines in a multi-node run (one `kiln train` process per machine, each with the same --devices count).
    #[arg(long, requires_all = ["node_rank", "orchestrator", "node_address"])]
    pub nodes: Option<u32>,
    /// This machine's index in 0..--nodes (node 0 writes the checkpoints and reports).
    #[arg(long, requires = "nodes")]
    pub node_rank: Option<u32>,
    /// The `kiln orchestrator` every node registers with, as HOST:PORT.
    #[arg(long, requires = "nodes")]
    pub orchestrator: Option<String>,
    /// HOST:PORT at which the other nodes reach this one (this process listens on PORT).
    #[arg(long, requires = "nodes")]
    pub node_address: Option<String>,
    #[arg(long)]
    pub no_progress: bool,
    #[arg(long)]
    pub json: bool,
}

/// A data-parallel recipe on its own thread, watched: when a replica has failed and the others cannot be woken
/// (one blocked in a multi-node exchange with a dead machine), the error is reported after 10 s and `kiln` exits
/// instead of hanging (checkpoints are written atomically, so nothing is half-written).
fn run_parallel(
    recipe: String,
    args: kiln_train::recipes::RecipeArgs,
    device: backend::Device,
) -> Result<serde_json::Value, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            kiln_train::recipes::run_recipe::<backend::Training>(&recipe, &args, &device).map_err(s)
        }))
        .unwrap_or_else(|_| Err("the training thread panicked (see above)".into()));
        let _ = tx.send(r);
    });
    loop {
        match rx.recv_timeout(std::time::Duration::from_millis(500)) {
            Ok(r) => return r,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err("the training thread ended without a result".into())
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Some((since, why)) = kiln_train::distributed::stopping_since() {
                    if since > std::time::Duration::from_secs(10) {
                        return Err(format!(
                            "{why} (the other replicas could not be stopped cleanly; exiting)"
                        ));
                    }
                }
            }
        }
    }
}

/// `--devices` as device indices of the backend kiln was built with.
fn device_indices(list: &[String]) -> Result<Vec<u16>, String> {
    let want = if backend::name() == "cuda" {
        "cuda"
    } else {
        "cpu"
    };
    list.iter()
        .map(|d| {
            let d = d.trim();
            let (kind, index) = match d.split_once(':') {
                Some((k, i)) => (k, i),
                None if d.chars().all(|c| c.is_ascii_digit()) && !d.is_empty() => (want, d),
                None => (d, "0"),
            };
            if kind != want {
                return Err(format!(
                    "--devices: `{d}` is not a device of this build ({} backend: use `{want}`{})",
                    backend::name(),
                    if want == "cuda" { ":N" } else { "" }
                ));
            }
            index
                .parse::<u16>()
                .map_err(|_| format!("--devices: `{d}`: the device index must be a number"))
        })
        .collect()
}

/// The port of HOST:PORT.
fn port_of(addr: &str) -> Result<u16, String> {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.trim_end_matches('/').parse().ok())
        .ok_or_else(|| format!("--node-address `{addr}` must be HOST:PORT"))
}

/// `kiln orchestrator`: the meeting point of a multi-node run.
#[derive(Args, Debug)]
pub struct OrchestratorArgs {
    /// The port to listen on (the nodes' --orchestrator HOST:PORT).
    #[arg(long)]
    pub port: u16,
}

pub fn orchestrator(a: OrchestratorArgs) -> Res {
    eprintln!(
        "kiln orchestrator listening on port {} (stop with Ctrl-C)",
        a.port
    );
    kiln_train::distributed::run_orchestrator(a.port).map_err(s)
}

pub fn train(a: TrainArgs) -> Res {
    if !kiln_train::recipes::RECIPES.contains(&a.recipe.as_str()) {
        return Err(format!(
            "unknown recipe `{}` (known: {})",
            a.recipe,
            kiln_train::recipes::RECIPES.join(", ")
        ));
    }
    if a.epochs == Some(0)
        || a.batch_size == Some(0)
        || a.num_virtual_tokens == Some(0)
        || a.save_every_steps == Some(0)
        || a.intrinsic_dims
            .as_ref()
            .is_some_and(|v| v.is_empty() || v.contains(&0))
        || a.learning_rate.is_some_and(|l| !(l > 0.0))
        || a.full_learning_rate.is_some_and(|l| !(l > 0.0))
    {
        return Err(
            "--epochs, --batch-size, --num-virtual-tokens, --save-every-steps, --intrinsic-dims and the learning rates must be positive"
                .into(),
        );
    }
    let devices = match &a.devices {
        Some(list) => device_indices(list)?,
        None => Vec::new(),
    };
    if a.nodes.is_some() && devices.is_empty() {
        return Err("--nodes needs --devices (the replicas on this machine)".into());
    }
    if a.lora_dropout.is_some_and(|p| !(0.0..1.0).contains(&p)) {
        return Err("--lora-dropout must be in [0, 1)".into());
    }
    if a.replica_timeout == Some(0) {
        return Err("--replica-timeout must be positive".into());
    }
    let node = match a.nodes {
        Some(num_nodes) => {
            let rank = a.node_rank.unwrap_or(0);
            if num_nodes == 0 || rank >= num_nodes {
                return Err(format!(
                    "--node-rank {rank} must be below --nodes {num_nodes}"
                ));
            }
            let node_address = a.node_address.clone().unwrap_or_default();
            Some(kiln_train::distributed::NodeConfig {
                num_nodes,
                node_rank: rank,
                orchestrator: a.orchestrator.clone().unwrap_or_default(),
                data_port: port_of(&node_address)?,
                node_address,
            })
        }
        None => None,
    };
    let device = backend::device()?;
    let args = kiln_train::recipes::RecipeArgs {
        devices,
        replica_timeout_secs: a.replica_timeout,
        lora_dropout: a.lora_dropout,
        node,
        model: a.model,
        dataset: a.dataset,
        out_dir: a.out,
        epochs: a.epochs,
        batch_size: a.batch_size,
        learning_rate: a.learning_rate,
        max_samples: a.max_samples,
        max_eval_samples: a.max_eval_samples,
        max_steps: a.max_steps,
        seed: a.seed,
        resume: a.resume,
        save_every_steps: a.save_every_steps,
        progress: !a.no_progress && !a.json,
        adapter_size: a.adapter_size,
        num_virtual_tokens: a.num_virtual_tokens,
        intrinsic_dims: a.intrinsic_dims,
        full_learning_rate: a.full_learning_rate,
    };
    let summary = if args.devices.len() > 1 || args.node.is_some() {
        run_parallel(a.recipe.clone(), args.clone(), device)?
    } else {
        kiln_train::recipes::run_recipe::<backend::Training>(&a.recipe, &args, &device)
            .map_err(s)?
    };
    if a.json {
        println!("{summary}");
    } else {
        let mut short = summary.clone();
        if let Some(o) = short.as_object_mut() {
            o.remove("train");
        }
        println!("{}", serde_json::to_string_pretty(&short).map_err(s)?);
        println!("reports in {}", args.out_dir.display());
    }
    Ok(())
}
