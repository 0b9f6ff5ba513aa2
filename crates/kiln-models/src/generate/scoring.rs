//! Per-token log-probabilities and perplexity of a text under a causal LM.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::models::attention::ids_tensor;
use crate::generate::causal::CausalLm;
use crate::load::error::{Error, Result};

/// The score of one token sequence.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenScores {
    pub ids: Vec<u32>,
    /// `log p(ids[i] | ids[..i])` for `i ≥ 1` (the first token has no prediction).
    pub logprobs: Vec<f32>,
    /// `exp(-mean(logprobs))`.
    pub perplexity: f32,
    /// Full next-token logits for each position when requested, `[len][vocab]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logits: Option<Vec<Vec<f32>>>,
}

/// Score `ids` (at least two tokens) in one forward pass.
pub fn score_tokens<B: Backend, M: CausalLm<B>>(
    model: &M,
    ids: &[u32],
    with_logits: bool,
) -> Result<TokenScores> {
    if ids.len() < 2 {
        return Err(Error::Input("need at least two tokens to score".into()));
    }
    if ids.len() > model.max_positions() {
        return Err(Error::Input(format!(
            "{} tokens exceed the model's {} positions",
            ids.len(),
            model.max_positions()
        )));
    }
    let ids_row = [ids.to_vec()];
    crate::models::attention::check_ids(&ids_row, model.vocab_size(), "text")?;
    let device = model.device();
    let n = ids.len();
    let mask = vec![vec![1u8; n]];
    let positions = Tensor::<B, 1, Int>::arange(0..n as i64, &device).unsqueeze::<2>();
    let h = model.hidden(
        ids_tensor::<B>(&ids_row, &device),
        positions,
        &mask,
        None,
    );
    let logits = model.logits(h); // [1, n, v]
    let v = logits.dims()[2];
    let lp: Vec<f32> = log_softmax(logits.clone(), 2)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32");
    let logprobs: Vec<f32> = (1..n).map(|i| lp[(i - 1) * v + ids[i] as usize]).collect();
    let mean = logprobs.iter().sum::<f32>() / logprobs.len() as f32;
    let logits = with_logits.then(|| crate::models::attention::rows_f32(logits.reshape([n, v])));
    Ok(TokenScores {
        ids: ids.to_vec(),
        logprobs,
        perplexity: (-mean).exp(),
        logits,
    })
}
