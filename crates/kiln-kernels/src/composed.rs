//! The composed defaults: each op written with burn's tensor API, for any backend. Free functions so that a
//! backend's override (e.g. flex for a non-f32 dtype) can fall back to them.

use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorPrimitive;

fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// Targets as an index column `[n, 1]` (ignored rows point at 0) and a keep mask `[n, 1]`.
fn index_and_mask<B: Backend>(
    targets: &[i64],
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 2>) {
    let n = targets.len();
    let idx: Vec<i64> = targets.iter().map(|&t| t.max(0)).collect();
    let keep: Vec<f32> = targets.iter().map(|&t| (t >= 0) as u8 as f32).collect();
    (
        Tensor::from_data(TensorData::new(idx, [n, 1]), device),
        Tensor::from_data(TensorData::new(keep, [n, 1]), device),
    )
}

/// [`crate::KernelOps::cross_entropy_fwd`] with burn ops: (loss rows `[n]`, log-sum-exp `[n]`).
pub fn cross_entropy_fwd<B: Backend>(
    logits: FloatTensor<B>,
    targets: &[i64],
) -> (FloatTensor<B>, FloatTensor<B>) {
    let x = float::<B, 2>(logits);
    let [n, _] = x.dims();
    let device = x.device();
    let m = x.clone().max_dim(1);
    let lse = (x.clone() - m.clone()).exp().sum_dim(1).log() + m;
    let (idx, keep) = index_and_mask::<B>(targets, &device);
    let picked = x.gather(1, idx);
    let loss = (lse.clone() - picked) * keep;
    (prim(loss.reshape([n])), prim(lse.reshape([n])))
}

/// [`crate::KernelOps::cross_entropy_bwd`] with burn ops.
pub fn cross_entropy_bwd<B: Backend>(
    dloss: FloatTensor<B>,
    logits: FloatTensor<B>,
    targets: &[i64],
    lse: FloatTensor<B>,
) -> FloatTensor<B> {
    let x = float::<B, 2>(logits);
    let [n, v] = x.dims();
    let device = x.device();
    let (idx, keep) = index_and_mask::<B>(targets, &device);
    let p = (x - float::<B, 1>(lse).reshape([n, 1])).exp();
    let onehot = Tensor::<B, 2>::zeros([n, v], &device).scatter(
        1,
        idx,
        Tensor::ones([n, 1], &device),
        burn::tensor::IndexingUpdateOp::Add,
    );
    let d = float::<B, 1>(dloss).reshape([n, 1]) * keep;
    prim((p - onehot) * d)
}
