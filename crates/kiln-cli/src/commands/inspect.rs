//! `kiln inspect`: load a checkpoint and report what was loaded.

use clap::Args;
use kiln_models::auto::{resolve_model, CausalPipeline};
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

pub fn inspect(a: InspectArgs) -> Res {
    let dir = resolve_model(&a.model.spec()).map_err(s)?;
    let device = backend::device()?;
    let pipe = CausalPipeline::<Inference>::load(&dir.display().to_string(), &device).map_err(s)?;
    let v = json!({
        "dir": dir,
        "model_type": kiln_models::auto::model_type(&dir).map_err(s)?,
        "tensors_loaded": pipe.report.applied,
        "unused_tensors": pipe.report.unused,
        "initialised": pipe.report.initialised,
        "vocab_size": pipe.tokenizer.vocab_size(),
        "backend": backend::name(),
    });
    if a.json {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(&v).map_err(s)?);
    }
    Ok(())
}
