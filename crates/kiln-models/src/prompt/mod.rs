//! Prompt learning (peft's `PROMPT_TUNING` / `PREFIX_TUNING`) wrapped around kiln's architectures, one file per
//! model family as peft's `PeftModelForCausalLM`, `PeftModelForSeq2SeqLM` and `PeftModelForSequenceClassification`:
//! [`causal`] (GPT-2, OPT), [`seq2seq`] (BART, T5), [`bert`] (BERT classification). The prompt itself (encoder,
//! file format) lives in `kiln_peft::prompt`; here are the forward passes that feed it to each model.

use std::path::Path;

use burn::prelude::*;
use kiln_peft::prompt::{text_init_ids, PromptEncoder, PromptLearningConfig, PromptMethod};
use kiln_peft::PeftError;

use crate::load::error::{Error, Result};
use crate::models::attention::ids_tensor;

pub mod bert;
pub mod causal;
pub mod seq2seq;

pub use causal::{PromptModel, PromptSession};

pub(crate) fn peft_err(e: PeftError) -> Error {
    Error::Input(e.to_string())
}

/// The initial prompt rows of a new prompt-tuning adapter: `TEXT` init embeds the tokenized init text (repeated /
/// truncated to the stored rows) with `embed` (the model's word embeddings, as peft's `word_embeddings`); `RANDOM`
/// gives `None` (the encoder draws N(0, 1)); `SAMPLE_VOCAB` is not implemented.
pub(crate) fn text_init_rows<B: Backend>(
    config: &PromptLearningConfig,
    init_ids: Option<&[u32]>,
    device: &B::Device,
    embed: impl FnOnce(Tensor<B, 2, Int>) -> Tensor<B, 3>,
) -> Result<Option<Tensor<B, 2>>> {
    match (config.method, config.prompt_tuning_init.as_str()) {
        (PromptMethod::PromptTuning, "TEXT") => {
            let ids = init_ids
                .ok_or_else(|| Error::Input("TEXT init needs the tokenized init text".into()))?;
            let ids = text_init_ids(ids, config.stored_rows());
            if ids.is_empty() {
                return Err(Error::Input(
                    "TEXT init: the init text has no tokens".into(),
                ));
            }
            let t = ids_tensor::<B>(&[ids], device);
            Ok(Some(embed(t).squeeze_dim::<2>(0).detach()))
        }
        (PromptMethod::PromptTuning, "SAMPLE_VOCAB") => Err(Error::Input(
            "prompt_tuning_init SAMPLE_VOCAB is not implemented for new prompts".into(),
        )),
        _ => Ok(None),
    }
}

/// The prompt stored in an adapter file (`t`, its `prompt_embeddings`) for a resolved `config`, as peft's
/// `from_pretrained` loads it: checked against the config's shape, requiring grad iff `is_trainable` (which a prefix
/// saved with `prefix_projection` cannot be: the file holds the projection's output, as in peft). Sets
/// `config.inference_mode`.
pub(crate) fn prompt_from_file<B: Backend>(
    config: &mut PromptLearningConfig,
    t: kiln_peft::RawTensor,
    dir: &Path,
    is_trainable: bool,
    device: &B::Device,
) -> Result<PromptEncoder<B>> {
    if is_trainable && config.prefix_projection {
        return Err(peft_err(PeftError::Unsupported {
            path: dir.join(kiln_peft::io::CONFIG_FILE),
            field: "prefix_projection".into(),
            msg: "the file holds the projection's output; it can be loaded for inference only (as in peft)".into(),
        }));
    }
    let want = vec![config.stored_rows(), config.row_width()];
    if t.shape != want {
        return Err(peft_err(PeftError::ShapeMismatch {
            path: dir.join(kiln_peft::io::WEIGHTS_FILE),
            key: kiln_peft::prompt::PROMPT_KEY.into(),
            expected: want,
            found: t.shape,
        }));
    }
    config.inference_mode = !is_trainable;
    let rows = Tensor::from_data(TensorData::new(t.data, t.shape), device);
    let prompt = PromptEncoder::from_rows(rows);
    Ok(if is_trainable {
        prompt
    } else {
        prompt.no_grad()
    })
}
