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
    #[arg(long)]
    pub no_progress: bool,
    #[arg(long)]
    pub json: bool,
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
    let device = backend::device()?;
    let args = kiln_train::recipes::RecipeArgs {
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
    let summary = kiln_train::recipes::run_recipe::<backend::Training>(&a.recipe, &args, &device)
        .map_err(s)?;
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
