//! Losses as transformers computes them.

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use kiln_kernels::KernelOps;

use crate::error::{Error, Result};

/// A backend kiln trains on: autodiff with kiln-kernels' fused ops, on the autodiff backend and on its inner
/// (evaluation) backend. `Autodiff<Flex>`, `Autodiff<NdArray>` and `Autodiff<Cuda>` are, with kiln-kernels'
/// feature of the same name.
pub trait TrainBackend: AutodiffBackend<InnerBackend: KernelOps> + KernelOps {}

impl<B> TrainBackend for B
where
    B: AutodiffBackend + KernelOps,
    B::InnerBackend: KernelOps,
{
}

/// Labels equal to this are ignored (as PyTorch's `CrossEntropyLoss(ignore_index=-100)`).
pub const IGNORE_INDEX: i64 = -100;

/// The number of positions [`token_cross_entropy`] averages over: labels that are not ignored. A data-parallel
/// replica weighs its shard's mean loss by its share of these, so that the replicas' gradients add up to the
/// whole batch's.
pub fn token_count(labels: &[Vec<i64>]) -> usize {
    labels.iter().flatten().filter(|&&x| x >= 0).count()
}

/// The number of positions [`causal_lm_loss`] averages over: every position whose next token is real.
pub fn causal_token_count(mask: &[Vec<u8>]) -> usize {
    mask.iter()
        .map(|m| m.iter().skip(1).filter(|&&x| x == 1).count())
        .sum()
}

/// Mean cross-entropy over `[b, t, v]` logits and `[b][t]` labels, ignoring [`IGNORE_INDEX`] (any negative label).
///
/// Runs kiln-kernels' fused op: one log-sum-exp per position is kept for the backward pass, never the `[b·t, v]`
/// log-softmax of the decomposed chain. A label outside the vocabulary is an error naming it.
pub fn token_cross_entropy<B: KernelOps>(
    logits: Tensor<B, 3>,
    labels: &[Vec<i64>],
) -> Result<Tensor<B, 1>> {
    let [b, t, v] = logits.dims();
    let flat: Vec<i64> = labels.iter().flatten().copied().collect();
    let n = flat.iter().filter(|&&x| x >= 0).count().max(1);
    let rows = kiln_kernels::cross_entropy(logits.reshape([b * t, v]), &flat)
        .map_err(|e| Error::Config(format!("labels: {e}")))?;
    Ok(rows.sum().div_scalar(n as f64))
}

/// Mean cross-entropy over `[b, c]` logits and class labels.
pub fn class_cross_entropy<B: KernelOps>(
    logits: Tensor<B, 2>,
    labels: &[i64],
) -> Result<Tensor<B, 1>> {
    let [b, c] = logits.dims();
    token_cross_entropy(
        logits.reshape([b, 1, c]),
        &labels.iter().map(|&l| vec![l]).collect::<Vec<_>>(),
    )
}

/// Next-token loss of a causal LM: logits `[b, t, v]` predict `ids` shifted left; padding ignored.
pub fn causal_lm_loss<B: KernelOps>(
    logits: Tensor<B, 3>,
    ids: &[Vec<u32>],
    mask: &[Vec<u8>],
) -> Result<Tensor<B, 1>> {
    let [b, t, v] = logits.dims();
    let labels: Vec<Vec<i64>> = ids
        .iter()
        .zip(mask)
        .map(|(r, m)| {
            (0..t)
                .map(|i| {
                    if i + 1 < t && m[i + 1] == 1 {
                        r[i + 1] as i64
                    } else {
                        IGNORE_INDEX
                    }
                })
                .collect()
        })
        .collect();
    token_cross_entropy(logits.slice([0..b, 0..t, 0..v]), &labels)
}
