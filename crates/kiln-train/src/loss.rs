//! Losses as transformers computes them.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// Labels equal to this are ignored (as PyTorch's `CrossEntropyLoss(ignore_index=-100)`).
pub const IGNORE_INDEX: i64 = -100;

/// Mean cross-entropy over `[b, t, v]` logits and `[b][t]` labels, ignoring [`IGNORE_INDEX`].
pub fn token_cross_entropy<B: Backend>(logits: Tensor<B, 3>, labels: &[Vec<i64>]) -> Tensor<B, 1> {
    let [b, t, v] = logits.dims();
    let device = logits.device();
    let flat: Vec<i64> = labels
        .iter()
        .flat_map(|r| r.iter().map(|&x| if x < 0 { 0 } else { x }))
        .collect();
    let keep: Vec<f32> = labels
        .iter()
        .flat_map(|r| r.iter().map(|&x| (x != IGNORE_INDEX) as u8 as f32))
        .collect();
    let n = keep.iter().sum::<f32>().max(1.0);
    let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [b * t, 1]), &device);
    let mask = Tensor::<B, 1>::from_data(TensorData::new(keep, [b * t]), &device);
    let lp = log_softmax(logits.reshape([b * t, v]), 1);
    let picked = lp.gather(1, targets).reshape([b * t]);
    (picked * mask).sum().neg().div_scalar(n)
}

/// Mean cross-entropy over `[b, c]` logits and class labels.
pub fn class_cross_entropy<B: Backend>(logits: Tensor<B, 2>, labels: &[i64]) -> Tensor<B, 1> {
    let [b, c] = logits.dims();
    token_cross_entropy(
        logits.reshape([b, 1, c]),
        &labels.iter().map(|&l| vec![l]).collect::<Vec<_>>(),
    )
}

/// Next-token loss of a causal LM: logits `[b, t, v]` predict `ids` shifted left; padding ignored.
pub fn causal_lm_loss<B: Backend>(
    logits: Tensor<B, 3>,
    ids: &[Vec<u32>],
    mask: &[Vec<u8>],
) -> Tensor<B, 1> {
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
