//! kiln-kernels: fused, differentiable ops for burn 0.21, as a backend-extension trait.
//!
//! Every op of [`KernelOps`] has three implementations:
//! - a default body composed of burn ops ([`composed`]), so that every backend (ndarray, CUDA, …) works unchanged;
//! - a CPU kernel for flex that runs on the tensor's raw buffer, with rayon over rows (feature `flex`);
//! - for `Autodiff<B>`, a custom backward node that saves the minimum (a per-row statistic, not the decomposed
//!   chain's intermediates) and calls the inner backend's backward kernel.
//!
//! A downstream crate cannot implement a trait of its own for a foreign backend type and also have burn's
//! `ModuleOps` call it, so code that wants the fused op calls this crate's functions (e.g. [`cross_entropy`]) with
//! a `B: KernelOps` bound; `Autodiff<B>` implements the trait whenever `B` does.
//!
//! # Ops
//! - [`cross_entropy`]: per-row negative log-likelihood over a vocabulary, rows with a negative target ignored
//!   (transformers' −100). Forward keeps one log-sum-exp per row; backward writes `softmax − one-hot` once. The
//!   composed chain (`log_softmax` then `gather`) keeps several `[n, v]` buffers alive until the backward pass —
//!   for BART's `[4 × 128, 50265]` decoder logits that is about 100 MB per buffer.
//! - [`layer_norm`]: LayerNorm over the last dimension, one pass forward saving the per-row mean and reciprocal
//!   standard deviation; backward from those (not yet used by kiln-models' architectures, issue #16).
//!
//! # Quick start
//!
//! ```rust
//! use burn::backend::{Autodiff, Flex};
//! use burn::prelude::*;
//!
//! type B = Autodiff<Flex>;
//! let device = Default::default();
//! let logits = Tensor::<B, 2>::random([4, 10], burn::tensor::Distribution::Default, &device).require_grad();
//! // One target per row; -100 ignores the row (its loss is 0 and it gets no gradient).
//! let nll = kiln_kernels::cross_entropy(logits.clone(), &[3, -100, 9, 0])?; // [4]
//! let loss = nll.sum().div_scalar(3.0); // the mean over the three counted rows
//! let grads = loss.backward();
//! assert_eq!(logits.grad(&grads).unwrap().dims(), [4, 10]);
//! # Ok::<(), kiln_kernels::TargetError>(())
//! ```

#![warn(missing_docs)]

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorPrimitive;

pub mod composed;
#[cfg(feature = "flex")]
mod flex;

/// A target outside the vocabulary, or one target count that does not match the rows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// `targets` has another length than `logits` has rows.
    #[error("{targets} targets for {rows} rows of logits")]
    Rows {
        /// Rows of the logits.
        rows: usize,
        /// Targets given.
        targets: usize,
    },
    /// A target id ≥ the vocabulary size.
    #[error("target {target} of row {row} is outside the vocabulary of {vocab}")]
    OutOfRange {
        /// The row.
        row: usize,
        /// Its target.
        target: i64,
        /// The vocabulary size (logits' last dimension).
        vocab: usize,
    },
}

/// burn's `Backend` extended with kiln's fused ops. Implemented for flex (kernels), ndarray and CUDA (composed
/// defaults) behind the features of the same names, and for `Autodiff<B>` (custom backward) whenever `B` is.
pub trait KernelOps: Backend {
    /// Per-row negative log-likelihood `[n]` of `logits` `[n, v]` against `targets` (one per row; a negative
    /// target ignores the row: loss 0), and the per-row log-sum-exp `[n]` the backward pass needs. Targets are
    /// checked by the caller ([`cross_entropy`]).
    fn cross_entropy_fwd(
        logits: FloatTensor<Self>,
        targets: &[i64],
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed::cross_entropy_fwd::<Self>(logits, targets)
    }

    /// The gradient `[n, v]` with respect to the logits given the loss rows' gradient `dloss` `[n]`:
    /// `dloss[r] · (softmax(logits[r]) − onehot(targets[r]))`, zero on ignored rows.
    fn cross_entropy_bwd(
        dloss: FloatTensor<Self>,
        logits: FloatTensor<Self>,
        targets: &[i64],
        lse: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        composed::cross_entropy_bwd::<Self>(dloss, logits, targets, lse)
    }

    /// The loss rows alone (what `Autodiff<B>` overrides with its own backward node).
    fn cross_entropy(logits: FloatTensor<Self>, targets: &[i64]) -> FloatTensor<Self> {
        Self::cross_entropy_fwd(logits, targets).0
    }

    /// LayerNorm over the last dimension, `y = (x − mean) · rstd · gamma + beta` with
    /// `rstd = 1 / sqrt(var + eps)` (biased variance, as PyTorch), and the per-row `mean`, `rstd` `[rows]` the
    /// backward pass needs.
    fn layer_norm_fwd(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed::layer_norm_fwd::<Self>(x, gamma, beta, eps)
    }

    /// LayerNorm's backward: (dx with x's shape, dgamma `[d]`, dbeta `[d]`) from the saved per-row statistics.
    fn layer_norm_bwd(
        dy: FloatTensor<Self>,
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed::layer_norm_bwd::<Self>(dy, x, gamma, mean, rstd)
    }

    /// LayerNorm's output alone (what `Autodiff<B>` overrides with its own backward node).
    fn layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        Self::layer_norm_fwd(x, gamma, beta, eps).0
    }
}

#[cfg(feature = "ndarray")]
impl KernelOps for burn::backend::NdArray {}

#[cfg(feature = "cuda")]
impl KernelOps for burn::backend::Cuda {}

impl<B: KernelOps, C: CheckpointStrategy> KernelOps for Autodiff<B, C> {
    fn cross_entropy(logits: FloatTensor<Self>, targets: &[i64]) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct CrossEntropyBackward;

        impl<B: KernelOps> Backward<B, 1> for CrossEntropyBackward {
            // The logits (a checkpointed parent: the autodiff graph keeps them anyway, as the head's output), the
            // targets, and one log-sum-exp per row.
            type State = (NodeId, Arc<Vec<i64>>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [parent] = ops.parents;
                let dloss = grads.consume::<B>(&ops.node);
                let (logits_id, targets, lse) = ops.state;
                let logits: FloatTensor<B> = checkpointer.retrieve_node_output(logits_id);
                if let Some(p) = parent {
                    let dx = B::cross_entropy_bwd(dloss, logits, &targets, lse);
                    grads.register::<B>(p.id, dx);
                }
            }
        }

        match CrossEntropyBackward
            .prepare::<C>([logits.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let logits_id = prep.checkpoint(&logits);
                let (loss, lse) = B::cross_entropy_fwd(logits.primitive, targets);
                prep.finish((logits_id, Arc::new(targets.to_vec()), lse), loss)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(<B as KernelOps>::cross_entropy(logits.primitive, targets))
            }
        }
    }

    fn layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LayerNormBackward;

        impl<B: KernelOps> Backward<B, 3> for LayerNormBackward {
            // x and gamma (checkpointed parents) and the per-row mean and rstd.
            type State = (NodeId, NodeId, FloatTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [px, pg, pb] = ops.parents;
                let dy = grads.consume::<B>(&ops.node);
                let (x_id, g_id, mean, rstd) = ops.state;
                let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_id);
                let g: FloatTensor<B> = checkpointer.retrieve_node_output(g_id);
                let (dx, dg, db) = B::layer_norm_bwd(dy, x, g, mean, rstd);
                if let Some(n) = px {
                    grads.register::<B>(n.id, dx);
                }
                if let Some(n) = pg {
                    grads.register::<B>(n.id, dg);
                }
                if let Some(n) = pb {
                    grads.register::<B>(n.id, db);
                }
            }
        }

        match LayerNormBackward
            .prepare::<C>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_id = prep.checkpoint(&x);
                let g_id = prep.checkpoint(&gamma);
                let (y, mean, rstd) =
                    B::layer_norm_fwd(x.primitive, gamma.primitive, beta.primitive, eps);
                prep.finish((x_id, g_id, mean, rstd), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(<B as KernelOps>::layer_norm(
                x.primitive,
                gamma.primitive,
                beta.primitive,
                eps,
            )),
        }
    }
}

/// LayerNorm over the last dimension of `x` with `gamma`, `beta` `[d]` (PyTorch's `nn.LayerNorm`): one pass
/// forward keeping only the per-row mean and reciprocal standard deviation for the backward pass (the decomposed
/// chain keeps about four tensors of x's size). Differentiable in x, gamma and beta.
pub fn layer_norm<B: KernelOps, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(<B as KernelOps>::layer_norm(
        x.into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        beta.into_primitive().tensor(),
        eps,
    )))
}

/// Per-row cross-entropy `[n]` of `logits` `[n, v]` against one target per row (a negative target, e.g.
/// transformers' −100, ignores the row: loss 0, no gradient). Differentiable with respect to the logits on an
/// autodiff backend, through [`KernelOps`]' fused forward and backward. A target ≥ v is an error, never an
/// out-of-bounds read.
pub fn cross_entropy<B: KernelOps>(
    logits: Tensor<B, 2>,
    targets: &[i64],
) -> Result<Tensor<B, 1>, TargetError> {
    let [n, v] = logits.dims();
    if targets.len() != n {
        return Err(TargetError::Rows {
            rows: n,
            targets: targets.len(),
        });
    }
    if let Some((row, &target)) = targets.iter().enumerate().find(|(_, &t)| t >= v as i64) {
        return Err(TargetError::OutOfRange {
            row,
            target,
            vocab: v,
        });
    }
    Ok(Tensor::from_primitive(TensorPrimitive::Float(
        <B as KernelOps>::cross_entropy(logits.into_primitive().tensor(), targets),
    )))
}
