//! Per-token log-probabilities and perplexity of a text under a causal LM ([`score_tokens`]), of a target given a
//! source under an encoder-decoder ([`score_seq2seq`]), and rank classification over answer choices
//! ([`rank_choices`]).

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::generate::causal::CausalLm;
use crate::generate::seq2seq::EncoderDecoder;
use crate::load::error::{Error, Result};
use crate::models::attention::ids_tensor;

/// The score of one token sequence.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenScores {
    /// The scored token ids (at least two).
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
    let h = model.hidden(ids_tensor::<B>(&ids_row, &device), positions, &mask, None);
    Ok(scores_from_logits(model.logits(h), ids, with_logits))
}

/// [`TokenScores`] of `ids` from next-token logits `[1, n, vocab]` over them (position `i` predicts `ids[i + 1]`).
pub(crate) fn scores_from_logits<B: Backend>(
    logits: Tensor<B, 3>,
    ids: &[u32],
    with_logits: bool,
) -> TokenScores {
    let [_, n, v] = logits.dims();
    let lp: Vec<f32> = log_softmax(logits.clone(), 2)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32");
    let logprobs: Vec<f32> = (1..n).map(|i| lp[(i - 1) * v + ids[i] as usize]).collect();
    let mean = logprobs.iter().sum::<f32>() / logprobs.len() as f32;
    let logits = with_logits.then(|| crate::models::attention::rows_f32(logits.reshape([n, v])));
    TokenScores {
        ids: ids.to_vec(),
        logprobs,
        perplexity: (-mean).exp(),
        logits,
    }
}

/// The score of a target sequence given a source under an encoder-decoder.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Seq2SeqScores {
    /// The source (encoder input) token ids.
    pub source_ids: Vec<u32>,
    /// The target (the labels), as the tokenizer gives it (with its special tokens).
    pub ids: Vec<u32>,
    /// `log p(ids[i] | source, ids[..i])` for every target token.
    pub logprobs: Vec<f32>,
    /// The sequence log-probability (the sum of `logprobs`).
    pub sum: f32,
    /// `exp(-mean(logprobs))`.
    pub perplexity: f32,
    /// The decoder's logits for each target position when requested, `[len][vocab]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logits: Option<Vec<Vec<f32>>>,
}

/// Score `target` given `source` under an encoder-decoder by teacher forcing, as transformers'
/// `model(input_ids=source, labels=target)`: the decoder reads `[decoder_start] + target[..len-1]` and
/// `logprobs[i]` is the log-probability of `target[i]`. Works on any [`EncoderDecoder`] — BART, T5, a LoRA model,
/// or a prompt / prefix tuned [`crate::prompt::seq2seq::Seq2SeqPromptModel`].
pub fn score_seq2seq<B: Backend, M: EncoderDecoder<B>>(
    model: &M,
    source: &[u32],
    target: &[u32],
    decoder_start: u32,
    with_logits: bool,
) -> Result<Seq2SeqScores> {
    let (enc, mask) = encode_source(model, source)?;
    score_target(
        model,
        enc,
        &mask,
        source,
        target,
        decoder_start,
        with_logits,
    )
}

/// The encoder's output for one source row (and its mask), checked.
fn encode_source<B: Backend, M: EncoderDecoder<B>>(
    model: &M,
    source: &[u32],
) -> Result<(Tensor<B, 3>, Vec<Vec<u8>>)> {
    if source.is_empty() {
        return Err(Error::Input(
            "need a non-empty source to score against".into(),
        ));
    }
    let mask = vec![vec![1u8; source.len()]];
    let ids = crate::generate::seq2seq::encoder_inputs::<B>(
        &[source.to_vec()],
        &mask,
        model.vocab_size(),
        &model.device(),
    )?;
    Ok((model.encode(ids, &mask)?, mask))
}

/// [`score_seq2seq`] of `target` over an encoder output computed once ([`encode_source`]).
fn score_target<B: Backend, M: EncoderDecoder<B>>(
    model: &M,
    enc: Tensor<B, 3>,
    mask: &[Vec<u8>],
    source: &[u32],
    target: &[u32],
    decoder_start: u32,
    with_logits: bool,
) -> Result<Seq2SeqScores> {
    if target.is_empty() {
        return Err(Error::Input("need a non-empty target to score".into()));
    }
    let v = model.vocab_size();
    crate::models::attention::check_ids(&[vec![decoder_start]], v, "decoder_start_token_id")?;
    crate::models::attention::check_ids(&[target.to_vec()], v, "target")?;
    let dec: Vec<u32> = std::iter::once(decoder_start)
        .chain(target[..target.len() - 1].iter().copied())
        .collect();
    let logits = model.decoder_logits(ids_tensor::<B>(&[dec], &model.device()), enc, mask)?; // [1, t, v]
    let [_, t, vocab] = logits.dims();
    let lp: Vec<f32> = log_softmax(logits.clone(), 2)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32");
    let logprobs: Vec<f32> = (0..t).map(|i| lp[i * vocab + target[i] as usize]).collect();
    let sum: f32 = logprobs.iter().sum();
    let logits =
        with_logits.then(|| crate::models::attention::rows_f32(logits.reshape([t, vocab])));
    Ok(Seq2SeqScores {
        source_ids: source.to_vec(),
        ids: target.to_vec(),
        perplexity: (-sum / t as f32).exp(),
        sum,
        logprobs,
        logits,
    })
}

/// Rank classification (Sanh et al. 2021, how T0 is evaluated): each of `choices` (token ids, as the tokenizer
/// gives a target) scored as the target given `source` (the encoder runs once); returns each choice's summed
/// log-probability and its length-normalised mean, in order. The prediction is the choice with the highest score
/// of the kind chosen.
pub fn rank_choices<B: Backend, M: EncoderDecoder<B>>(
    model: &M,
    source: &[u32],
    choices: &[Vec<u32>],
    decoder_start: u32,
) -> Result<Vec<(f32, f32)>> {
    if choices.is_empty() {
        return Err(Error::Input("no answer choices to rank".into()));
    }
    let (enc, mask) = encode_source(model, source)?;
    choices
        .iter()
        .map(|c| {
            let s = score_target(model, enc.clone(), &mask, source, c, decoder_start, false)?;
            Ok((s.sum, s.sum / c.len() as f32))
        })
        .collect()
}
