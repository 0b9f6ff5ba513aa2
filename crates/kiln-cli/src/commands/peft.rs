//! `kiln peft`: inspect an adapter, merge one into its base model.

use std::path::PathBuf;

use clap::Args;
use kiln_models::auto::resolve_model;
use serde_json::json;

use crate::backend::{self, Inference};

use super::*;

#[derive(clap::Subcommand, Debug)]
pub enum PeftCmd {
    /// Show an adapter directory's config and tensors.
    Inspect {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Merge a LoRA or SAID adapter into its base model and write a Hugging Face checkpoint directory.
    Merge {
        #[command(flatten)]
        model: ModelArg,
        #[arg(long)]
        adapter: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct PeftArgs {
    #[command(subcommand)]
    pub cmd: PeftCmd,
}

pub fn peft(a: PeftArgs) -> Res {
    match a.cmd {
        PeftCmd::Inspect { dir, json: as_json } => {
            let cfg_path = dir.join("adapter_config.json");
            let text = std::fs::read_to_string(&cfg_path)
                .map_err(|e| format!("{}: {e}", cfg_path.display()))?;
            let cfg: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", cfg_path.display()))?;
            let tensors =
                kiln_peft::read_tensors(&dir.join("adapter_model.safetensors")).map_err(s)?;
            let params: usize = tensors.values().map(|t| t.data.len()).sum();
            let list: Vec<serde_json::Value> = tensors
                .iter()
                .map(|(k, t)| json!({"name": k, "shape": t.shape}))
                .collect();
            let v = json!({
                "dir": dir, "peft_type": cfg["peft_type"], "task_type": cfg["task_type"],
                "base_model_name_or_path": cfg["base_model_name_or_path"], "r": cfg["r"], "lora_alpha": cfg["lora_alpha"],
                "intrinsic_dim": cfg["intrinsic_dim"], "structure_aware": cfg["structure_aware"],
                "target_modules": cfg["target_modules"], "tensors": list.len(), "parameters": params,
            });
            if as_json {
                println!("{}", json!({"summary": v, "tensors": list}));
            } else {
                println!("{}", serde_json::to_string_pretty(&v).map_err(s)?);
            }
            Ok(())
        }
        PeftCmd::Merge {
            model,
            adapter,
            out,
        } => {
            let device = backend::device()?;
            let dir = resolve_model(&model.spec()).map_err(s)?;
            let mt = kiln_models::auto::model_type(&dir).map_err(s)?;
            std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            let weights = out.join("model.safetensors");
            let n = match mt.as_str() {
                "gpt2" | "opt" => {
                    let (m, _) = kiln_models::auto::CausalModel::<Inference>::load(&dir, &device)
                        .map_err(s)?;
                    let m = merge_adapter(m, &adapter)?;
                    kiln_peft::export::save_hf_weights(&m, &weights).map_err(s)?
                }
                "t5" | "bart" => {
                    let (m, _) = kiln_models::auto::Seq2SeqModel::<Inference>::load(&dir, &device)
                        .map_err(s)?;
                    let m = merge_adapter(m, &adapter)?;
                    kiln_peft::export::save_hf_weights(&m, &weights).map_err(s)?
                }
                "bert" => {
                    let (_, m, report) =
                        kiln_models::bert::load_for_classification::<Inference>(&dir, &device)
                            .map_err(s)?;
                    if let Some(w) = random_head_warning(&dir, &report.initialised, Some(&adapter))?
                    {
                        eprintln!("warning: {w}; the merged checkpoint holds that random head");
                    }
                    let m = merge_adapter(m, &adapter)?;
                    kiln_peft::export::save_hf_weights(&m, &weights).map_err(s)?
                }
                other => {
                    return Err(format!(
                        "{}: cannot merge into model_type `{other}`",
                        dir.display()
                    ))
                }
            };
            for f in [
                "config.json",
                "generation_config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "vocab.json",
                "merges.txt",
                "vocab.txt",
            ] {
                if dir.join(f).is_file() {
                    std::fs::copy(dir.join(f), out.join(f))
                        .map_err(|e| format!("{}: {e}", out.join(f).display()))?;
                }
            }
            println!(
                "merged {} into {} ({n} tensors) → {}",
                adapter.display(),
                dir.display(),
                out.display()
            );
            Ok(())
        }
    }
}
