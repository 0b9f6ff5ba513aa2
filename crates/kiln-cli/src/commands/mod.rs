//! The subcommands, one module per group. Each validates its arguments before loading anything; the pieces they
//! share (model and generation flags, JSONL input, adapters) are here.

mod causal;
mod encoder;
mod inspect;
mod peft;
mod rouge;
mod score;
mod seq2seq;
mod train;

pub use causal::*;
pub use encoder::*;
pub use inspect::*;
pub use peft::*;
pub use rouge::*;
pub use score::*;
pub use seq2seq::*;
pub use train::*;

use std::path::PathBuf;

use clap::Args;
use kiln_models::generation::{EarlyStopping, GenerationConfig};

type Res = Result<(), String>;

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Where the model comes from.
#[derive(Args, Debug, Clone)]
pub struct ModelArg {
    /// A hub id (e.g. `gpt2`, `facebook/opt-125m`) or a local checkpoint directory.
    #[arg(
        long,
        short = 'm',
        conflicts_with = "model_dir",
        required_unless_present = "model_dir"
    )]
    pub model: Option<String>,
    /// A local checkpoint directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
}

impl ModelArg {
    fn spec(&self) -> String {
        match (&self.model, &self.model_dir) {
            (_, Some(d)) => d.display().to_string(),
            (Some(m), None) => m.clone(),
            (None, None) => unreachable!("clap requires one"),
        }
    }
}

/// Generation settings, named as in transformers' GenerationConfig; unset ones come from the
/// checkpoint's generation_config.json.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct GenArgs {
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    #[arg(long)]
    pub min_new_tokens: Option<usize>,
    /// Sample instead of searching; `--do-sample false` turns off sampling that the checkpoint's
    /// generation_config.json turns on.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub do_sample: Option<bool>,
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    #[arg(long)]
    pub no_repeat_ngram_size: Option<usize>,
    #[arg(long)]
    pub num_beams: Option<usize>,
    /// true, false or never.
    #[arg(long)]
    pub early_stopping: Option<String>,
    #[arg(long)]
    pub length_penalty: Option<f32>,
    #[arg(long)]
    pub num_return_sequences: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
}

impl GenArgs {
    /// Reject flag values that are wrong whatever the checkpoint's generation_config.json says (num_beams 0,
    /// top_p outside (0, 1], a temperature that is not positive, …), and combinations of flags given together
    /// that no checkpoint can make right (`--do-sample` with `--num-beams 4`, `--num-return-sequences` above
    /// `--num-beams`), before anything is loaded. The checks that depend on the checkpoint's settings run again
    /// once it is loaded ([`GenArgs::apply`]).
    pub fn precheck(&self) -> Result<(), String> {
        self.overlay(GenerationConfig::default())?
            .validate_values()
            .map_err(s)?;
        let beams = self.num_beams.unwrap_or(1);
        let do_sample = self.do_sample == Some(true);
        if do_sample && beams > 1 {
            return Err(format!(
                "--do-sample with --num-beams {beams} (beam-search sampling) is not supported: sample with --num-beams 1, or search without --do-sample"
            ));
        }
        if let (Some(b), Some(n)) = (self.num_beams, self.num_return_sequences) {
            // With one beam and no `--do-sample false`, the checkpoint may sample: judged once it is loaded.
            if n > b && (b > 1 || self.do_sample == Some(false)) {
                return Err(format!(
                    "--num-return-sequences {n} must be at most --num-beams {b}"
                ));
            }
        }
        Ok(())
    }

    /// Whether any generation flag was given.
    pub fn any_set(&self) -> bool {
        *self != GenArgs::default()
    }

    /// Overlay the flags on the checkpoint defaults and validate the result.
    pub fn apply(&self, g: GenerationConfig) -> Result<(GenerationConfig, Vec<String>), String> {
        let g = self.overlay(g)?;
        let warnings = g.validate().map_err(s)?;
        Ok((g, warnings))
    }

    /// The flags laid over `g`, not validated. Without `--max-new-tokens`, the checkpoint's `max_length` holds
    /// when it sets one; otherwise 50 new tokens.
    fn overlay(&self, mut g: GenerationConfig) -> Result<GenerationConfig, String> {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { g.$f = v; } )* };
        }
        set!(
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            no_repeat_ngram_size,
            num_beams,
            length_penalty,
            num_return_sequences,
            seed,
            min_new_tokens
        );
        if let Some(n) = self.max_new_tokens {
            g.max_new_tokens = Some(n);
        }
        if g.max_new_tokens.is_none() && g.max_length == GenerationConfig::default().max_length {
            g.max_new_tokens = Some(50);
        }
        if let Some(v) = self.do_sample {
            g.do_sample = v;
        }
        if let Some(e) = &self.early_stopping {
            g.early_stopping = match e.as_str() {
                "true" => EarlyStopping::True,
                "false" => EarlyStopping::False,
                "never" => EarlyStopping::Never,
                other => {
                    return Err(format!(
                        "--early-stopping must be true, false or never, not `{other}`"
                    ))
                }
            };
        }
        Ok(g)
    }
}

fn apply_gen_flags(gen: &GenArgs, base: GenerationConfig) -> Result<GenerationConfig, String> {
    let (cfg, warnings) = gen.apply(base)?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    Ok(cfg)
}

fn read_jsonl(path: &PathBuf) -> Result<Vec<serde_json::Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{} line {}: {e}", path.display(), i + 1))
        })
        .collect()
}

fn field(v: &serde_json::Value, k: &str, path: &PathBuf, line: usize) -> Result<String, String> {
    v.get(k)
        .and_then(|x| x.as_str())
        .map(str::to_string)
        .ok_or_else(|| format!("{} line {line}: missing string field `{k}`", path.display()))
}

/// Whether a PEFT adapter directory holds prompt learning (`PROMPT_TUNING` / `PREFIX_TUNING`) rather than LoRA.
pub fn is_prompt_adapter(dir: &std::path::Path) -> Result<bool, String> {
    let p = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(matches!(
        v.get("peft_type").and_then(|t| t.as_str()),
        Some("PROMPT_TUNING" | "PREFIX_TUNING")
    ))
}

/// The warning to give when a BERT classifier's head was initialised randomly (the checkpoint has none) and
/// `adapter` (if any) does not carry one either (peft saves it as `modules_to_save`: `…classifier.*`).
pub fn random_head_warning(
    dir: &std::path::Path,
    initialised: &[String],
    adapter: Option<&PathBuf>,
) -> Result<Option<String>, String> {
    if !initialised.iter().any(|p| p.starts_with("classifier")) {
        return Ok(None);
    }
    if let Some(a) = adapter {
        // The header is enough (the adapter's tensors are read again when it is applied).
        let tensors =
            kiln_models::weights::inspect_safetensors(&a.join("adapter_model.safetensors"))
                .map_err(s)?;
        if tensors.iter().any(|t| t.name.contains("classifier")) {
            return Ok(None);
        }
    }
    Ok(Some(format!(
        "{} has no classification head{}; it was initialised randomly",
        dir.display(),
        if adapter.is_some() {
            " and the adapter does not carry one"
        } else {
            ""
        }
    )))
}

/// Attach an adapter directory to a model: LoRA (PEFT format) unmerged, with peft's exact semantics; a SAID / DID
/// adapter (`peft_type` `"SAID"`) as the fine-tuned parameters θ₀ + λ·P·d it stands for.
pub fn with_adapter<B: burn::prelude::Backend, M: kiln_peft::PeftModel<B>>(
    model: M,
    adapter: Option<&PathBuf>,
) -> Result<M, String> {
    match adapter {
        None => Ok(model),
        Some(dir) if kiln_peft::said::is_said_adapter(dir).map_err(s)? => {
            kiln_peft::merge_said(model, dir).map_err(s)
        }
        Some(dir) => Ok(kiln_peft::LoraModel::from_pretrained(model, dir, false)
            .map_err(s)?
            .model),
    }
}

/// Fold an adapter into its base model's weights: LoRA's `merge_and_unload`, or SAID's θ₀ + λ·P·d.
pub fn merge_adapter<B: burn::prelude::Backend, M: kiln_peft::PeftModel<B>>(
    model: M,
    dir: &std::path::Path,
) -> Result<M, String> {
    if kiln_peft::said::is_said_adapter(dir).map_err(s)? {
        kiln_peft::merge_said(model, dir).map_err(s)
    } else {
        Ok(kiln_peft::LoraModel::from_pretrained(model, dir, false)
            .map_err(s)?
            .merge_and_unload())
    }
}
