//! `kiln inspect`: load a checkpoint of any architecture kiln loads and report what was loaded: the model type,
//! its head, parameter count, what the weights files provided, and the generation defaults.

use burn::module::Module;
use clap::Args;
use kiln_models::auto::{resolve_model, CausalPipeline, Seq2SeqPipeline};
use kiln_models::generation::GenerationConfig;
use serde_json::json;

use crate::backend::{self, Inference};

use super::*;

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArg,
    #[arg(long)]
    pub json: bool,
}

/// The generation settings a checkpoint sets (`config.json` ids, `generation_config.json`), as transformers
/// names them.
fn generation_json(g: &GenerationConfig) -> serde_json::Value {
    json!({
        "max_length": g.max_length, "max_new_tokens": g.max_new_tokens, "min_length": g.min_length,
        "do_sample": g.do_sample, "num_beams": g.num_beams, "temperature": g.temperature, "top_k": g.top_k,
        "top_p": g.top_p, "repetition_penalty": g.repetition_penalty,
        "no_repeat_ngram_size": g.no_repeat_ngram_size, "length_penalty": g.length_penalty,
        "early_stopping": format!("{:?}", g.early_stopping).to_lowercase(),
        "eos_token_id": g.eos_token_id, "pad_token_id": g.pad_token_id, "bos_token_id": g.bos_token_id,
        "decoder_start_token_id": g.decoder_start_token_id,
        "forced_bos_token_id": g.forced_bos_token_id, "forced_eos_token_id": g.forced_eos_token_id,
    })
}

pub fn inspect(a: InspectArgs) -> Res {
    let dir = resolve_model(&a.model.spec()).map_err(s)?;
    let device = backend::device()?;
    let model_type = kiln_models::auto::model_type(&dir).map_err(s)?;
    let spec = dir.display().to_string();
    let (report, params, head, generation, tokenizer_vocab) = match model_type.as_str() {
        "gpt2" | "opt" => {
            let p = CausalPipeline::<Inference>::load(&spec, &device).map_err(s)?;
            let n = p.model.num_params();
            let v = p.tokenizer.vocab_size();
            (
                p.report,
                n,
                "causal LM head tied to the token embedding".to_string(),
                Some(generation_json(&p.generation)),
                v,
            )
        }
        "t5" | "mt5" | "bart" => {
            let p = Seq2SeqPipeline::<Inference>::load(&spec, &device).map_err(s)?;
            let n = p.model.num_params();
            let tied = match &p.model {
                kiln_models::auto::Seq2SeqModel::T5(m) => m.lm_head.is_none(),
                kiln_models::auto::Seq2SeqModel::Bart(_) => true,
            };
            let head = if tied {
                "seq2seq LM head tied to the shared embedding"
            } else {
                "seq2seq LM head (its own lm_head.weight)"
            };
            let v = p.tokenizer.vocab_size();
            (
                p.report,
                n,
                head.to_string(),
                Some(generation_json(&p.generation)),
                v,
            )
        }
        "bert" => {
            let (cfg, m, report) =
                kiln_models::bert::load_for_classification::<Inference>(&dir, &device)
                    .map_err(s)?;
            let random_head = report
                .initialised
                .iter()
                .any(|p| p.starts_with("classifier"));
            let head = if random_head {
                "encoder only: no classification head in the weights (`kiln classify` would initialise one randomly)".to_string()
            } else {
                format!(
                    "sequence classification head, {} labels",
                    cfg.id2label.len()
                )
            };
            let n = if random_head {
                m.bert.num_params()
            } else {
                m.num_params()
            };
            let v = kiln_models::tokenizer::Tokenizer::from_dir(&dir)
                .map(|t| t.vocab_size())
                .map_err(s)?;
            (report, n, head, None, v)
        }
        other => {
            return Err(format!(
                "{}: kiln does not load model_type `{other}`",
                dir.join("config.json").display()
            ))
        }
    };
    let v = json!({
        "dir": dir,
        "model_type": model_type,
        "head": head,
        "parameters": params,
        "tensors_loaded": report.applied,
        "unused_tensors": report.unused,
        "initialised": report.initialised,
        "tokenizer_vocab_size": tokenizer_vocab,
        "generation": generation,
        "backend": backend::name(),
    });
    if a.json {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(&v).map_err(s)?);
    }
    Ok(())
}
