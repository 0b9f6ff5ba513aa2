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
//! - [`attention`]: `softmax(q·kᵀ·scale + bias)·v`; forward keeps one log-sum-exp per query row, backward
//!   recomputes the probabilities (FlashAttention's scheme with whole-row products), so no `[b, h, sq, sk]` tensor
//!   is kept between the passes. [`try_fused_attention`] is the entry for code generic over `B: Backend`.
//! - [`gelu`]: GELU, exact or tanh form, one vectorised pass each way on flex; [`try_fused_gelu`] for generic code.
//! - [`layer_norm`]: LayerNorm over the last dimension, one pass forward saving the per-row mean and reciprocal
//!   standard deviation; backward from those. [`try_layer_norm`] is the entry for code generic over `B: Backend`.
//! - [`try_linear`], [`try_matmul`]: 2-D products split over the threads by kiln on flex (one single-threaded
//!   `gemm` call per part), the bias written into the output, and under autodiff the gradients' products split the
//!   same way.
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
    /// backward pass needs. Without `centre` it is RMSNorm (T5's): the mean taken as 0 (and returned so).
    fn layer_norm_fwd(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
        centre: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed::layer_norm_fwd::<Self>(x, gamma, beta, eps, centre)
    }

    /// LayerNorm's backward: (dx with x's shape, dgamma `[d]`, dbeta `[d]`) from the saved per-row statistics.
    fn layer_norm_bwd(
        dy: FloatTensor<Self>,
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        centre: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed::layer_norm_bwd::<Self>(dy, x, gamma, mean, rstd, centre)
    }

    /// Attention `softmax(q·kᵀ·scale + bias)·v` and its per-row log-sum-exp (see [`composed::attention_fwd`]).
    fn attention_fwd(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed::attention_fwd::<Self>(q, k, v, bias, scale)
    }

    /// Whether [`Self::attention_bwd`] reads the forward output; when not, the autodiff node does not keep it
    /// (`out` is then `None`).
    const ATTENTION_BWD_NEEDS_OUT: bool = true;

    /// Attention's backward by recomputation (see [`composed::attention_bwd`]); `out` is the forward output, or
    /// `None` when [`Self::ATTENTION_BWD_NEEDS_OUT`] is false.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn attention_bwd(
        dout: FloatTensor<Self>,
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        scale: f64,
        out: Option<FloatTensor<Self>>,
        lse: FloatTensor<Self>,
        bias_grad: bool,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        Option<FloatTensor<Self>>,
    ) {
        composed::attention_bwd::<Self>(dout, q, k, v, bias, scale, out, lse, bias_grad)
    }

    /// Attention's output alone (what `Autodiff<B>` overrides with its own backward node).
    fn attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        scale: f64,
    ) -> FloatTensor<Self> {
        Self::attention_fwd(q, k, v, bias, scale).0
    }

    /// GELU elementwise: exact (`x · Φ(x)`, erf) or, with `tanh_form`, GPT-2's tanh approximation
    /// (`gelu_new`).
    fn gelu_fwd(x: FloatTensor<Self>, tanh_form: bool) -> FloatTensor<Self> {
        composed::gelu_fwd::<Self>(x, tanh_form)
    }

    /// GELU's backward: `dy · gelu′(x)`.
    fn gelu_bwd(dy: FloatTensor<Self>, x: FloatTensor<Self>, tanh_form: bool) -> FloatTensor<Self> {
        composed::gelu_bwd::<Self>(dy, x, tanh_form)
    }

    /// GELU's output (what `Autodiff<B>` overrides with its own backward node).
    fn gelu(x: FloatTensor<Self>, tanh_form: bool) -> FloatTensor<Self> {
        Self::gelu_fwd(x, tanh_form)
    }

    /// LayerNorm's (or RMSNorm's, without `centre`) output alone (what `Autodiff<B>` overrides with its own
    /// backward node).
    fn layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
        centre: bool,
    ) -> FloatTensor<Self> {
        Self::layer_norm_fwd(x, gamma, beta, eps, centre).0
    }

    /// `lhs [m, k] · rhs [k, n]`, both rank 2 (either may be a transposed view).
    fn matmul_2d(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(lhs, rhs)
    }

    /// A dense layer on rows: `x [m, k] · w [k, n] + bias [n]` (burn's `linear` on rank 2; what `Autodiff<B>`
    /// overrides with a backward node that computes its products with [`Self::matmul_2d`]).
    fn linear_2d(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        <Self as burn::tensor::ops::ModuleOps<Self>>::linear(x, w, bias)
    }
}

#[cfg(feature = "ndarray")]
impl KernelOps for burn::backend::NdArray {}

#[cfg(feature = "cuda")]
impl KernelOps for burn::backend::Cuda {}

impl<B: KernelOps, C: CheckpointStrategy> KernelOps for Autodiff<B, C> {
    fn gelu(x: FloatTensor<Self>, tanh_form: bool) -> FloatTensor<Self> {
        /// Saved: x (a checkpointed parent, which the graph keeps anyway as the linear layer's output).
        #[derive(Debug)]
        struct GeluBackward {
            tanh_form: bool,
        }

        impl<B: KernelOps> Backward<B, 1> for GeluBackward {
            type State = NodeId;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [parent] = ops.parents;
                let dy = grads.consume::<B>(&ops.node);
                let x: FloatTensor<B> = checkpointer.retrieve_node_output(ops.state);
                if let Some(p) = parent {
                    grads.register::<B>(p.id, B::gelu_bwd(dy, x, self.tanh_form));
                }
            }
        }

        let prep = GeluBackward { tanh_form }
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful();
        match prep {
            OpsKind::Tracked(mut prep) => {
                let x_id = prep.checkpoint(&x);
                prep.finish(x_id, B::gelu_fwd(x.primitive, tanh_form))
            }
            OpsKind::UnTracked(prep) => prep.finish(<B as KernelOps>::gelu(x.primitive, tanh_form)),
        }
    }

    fn attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        scale: f64,
    ) -> FloatTensor<Self> {
        attention_tracked::<B, C>(q, k, v, bias, scale)
    }

    fn matmul_2d(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        linear_tracked::<B, C>(lhs, rhs, None)
    }

    fn linear_2d(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        linear_tracked::<B, C>(x, w, bias)
    }

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
        centre: bool,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LayerNormBackward {
            centre: bool,
        }

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
                let (dx, dg, db) = B::layer_norm_bwd(dy, x, g, mean, rstd, self.centre);
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

        match (LayerNormBackward { centre })
            .prepare::<C>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_id = prep.checkpoint(&x);
                let g_id = prep.checkpoint(&gamma);
                let (y, mean, rstd) =
                    B::layer_norm_fwd(x.primitive, gamma.primitive, beta.primitive, eps, centre);
                prep.finish((x_id, g_id, mean, rstd), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(<B as KernelOps>::layer_norm(
                x.primitive,
                gamma.primitive,
                beta.primitive,
                eps,
                centre,
            )),
        }
    }
}

/// `x · w (+ bias)` on rows with a backward node whose products are the inner backend's
/// [`KernelOps::matmul_2d`] on transposed views: `dx = dy · wᵀ`, `dw = xᵀ · dy`, `dbias = Σ_rows dy`. Saves x only
/// when w needs a gradient and w only when x does (as burn's own linear).
fn linear_tracked<B: KernelOps, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    w: FloatTensor<Autodiff<B, C>>,
    bias: Option<FloatTensor<Autodiff<B, C>>>,
) -> FloatTensor<Autodiff<B, C>> {
    /// `bias`: whether the third parent is the bias (without one, x's node stands in and gets no gradient).
    #[derive(Debug)]
    struct LinearBackward {
        bias: bool,
    }

    impl<B: KernelOps> Backward<B, 3> for LinearBackward {
        /// x (kept when w needs a gradient) and w (kept when x does).
        type State = (Option<NodeId>, Option<NodeId>);

        fn backward(
            self,
            ops: Ops<Self::State, 3>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let [px, pw, pb] = ops.parents.map(|p| p.map(|n| n.id));
            let dy = grads.consume::<B>(&ops.node);
            let (x, w) = ops.state;
            let x: Option<FloatTensor<B>> = x.map(|id| checkpointer.retrieve_node_output(id));
            let w: Option<FloatTensor<B>> = w.map(|id| checkpointer.retrieve_node_output(id));
            if let (Some(n), Some(w)) = (px, w) {
                grads.register::<B>(n, B::matmul_2d(dy.clone(), B::float_transpose(w)));
            }
            if let (Some(n), Some(x)) = (pw, x) {
                grads.register::<B>(n, B::matmul_2d(B::float_transpose(x), dy.clone()));
            }
            if let (Some(n), true) = (pb, self.bias) {
                let cols = burn::tensor::TensorMetadata::shape(&dy)[1];
                let db = B::float_reshape(B::float_sum_dim(dy, 0), [cols].into());
                grads.register::<B>(n, db);
            }
        }
    }

    let (x_tracked, w_tracked) = (x.is_tracked(), w.is_tracked());
    let third = bias
        .as_ref()
        .map_or_else(|| x.node.clone(), |b| b.node.clone());
    let forward = |x: FloatTensor<B>, w, bias: Option<FloatTensor<Autodiff<B, C>>>| match bias {
        Some(b) => B::linear_2d(x, w, Some(b.primitive)),
        None => B::matmul_2d(x, w),
    };
    match (LinearBackward {
        bias: bias.is_some(),
    })
    .prepare::<C>([x.node.clone(), w.node.clone(), third])
    .compute_bound()
    .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let xs = w_tracked.then(|| prep.checkpoint(&x));
            let ws = x_tracked.then(|| prep.checkpoint(&w));
            prep.finish((xs, ws), forward(x.primitive, w.primitive, bias))
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive, w.primitive, bias)),
    }
}

fn attention_tracked<B: KernelOps, C: CheckpointStrategy>(
    q: FloatTensor<Autodiff<B, C>>,
    k: FloatTensor<Autodiff<B, C>>,
    v: FloatTensor<Autodiff<B, C>>,
    bias: Option<FloatTensor<Autodiff<B, C>>>,
    scale: f64,
) -> FloatTensor<Autodiff<B, C>> {
    /// Saved: q, k, v and the bias (checkpointed parents, which the graph keeps anyway), the output (only for a
    /// backend whose backward reads it) and one log-sum-exp per query row — never the `[b, h, sq, sk]`
    /// probabilities.
    #[derive(Debug)]
    struct AttentionBackward {
        scale: f64,
    }

    type State<B> = (
        [NodeId; 3],
        Option<(NodeId, [usize; 4])>,
        Option<FloatTensor<B>>,
        FloatTensor<B>,
    );

    impl<B: KernelOps> Backward<B, 4> for AttentionBackward {
        type State = State<B>;

        fn backward(
            self,
            ops: Ops<Self::State, 4>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let [pq, pk, pv, pb] = ops.parents;
            let dout = grads.consume::<B>(&ops.node);
            let ([qi, ki, vi], bias, out, lse) = ops.state;
            let q: FloatTensor<B> = checkpointer.retrieve_node_output(qi);
            let k: FloatTensor<B> = checkpointer.retrieve_node_output(ki);
            let v: FloatTensor<B> = checkpointer.retrieve_node_output(vi);
            let (bias, shape) = match bias {
                Some((id, shape)) => (
                    Some(checkpointer.retrieve_node_output::<FloatTensor<B>>(id)),
                    Some(shape),
                ),
                None => (None, None),
            };
            // Without a bias the fourth parent slot holds q's node: no bias gradient then.
            let bias_grad = pb.is_some() && shape.is_some();
            let (dq, dk, dv, ds) =
                B::attention_bwd(dout, q, k, v, bias, self.scale, out, lse, bias_grad);
            for (p, g) in [(pq, dq), (pk, dk), (pv, dv)] {
                if let Some(n) = p {
                    grads.register::<B>(n.id, g);
                }
            }
            if let (Some(n), Some(ds), Some(shape)) = (pb, ds, shape) {
                grads.register::<B>(n.id, composed::unbroadcast::<B>(ds, shape));
            }
        }
    }

    // Without a bias, an untracked zero-size stand-in fills the fourth parent slot (it never gets a gradient).
    let bias_node = bias.as_ref().map(|b| b.node.clone());
    let q_node = q.node.clone();
    let parents = [
        q.node.clone(),
        k.node.clone(),
        v.node.clone(),
        bias_node.unwrap_or_else(|| q_node.clone()),
    ];
    let prep = AttentionBackward { scale }
        .prepare::<C>(parents)
        .compute_bound()
        .stateful();
    match prep {
        OpsKind::Tracked(mut prep) => {
            let ids = [
                prep.checkpoint(&q),
                prep.checkpoint(&k),
                prep.checkpoint(&v),
            ];
            let b = bias.map(|b| {
                let shape: [usize; 4] =
                    burn::tensor::TensorMetadata::shape(&b.primitive).dims::<4>();
                ((prep.checkpoint(&b), shape), b.primitive)
            });
            let (b_state, b_prim) = match b {
                Some((s, p)) => (Some(s), Some(p)),
                None => (None, None),
            };
            let (out, lse) = B::attention_fwd(q.primitive, k.primitive, v.primitive, b_prim, scale);
            let kept = B::ATTENTION_BWD_NEEDS_OUT.then(|| out.clone());
            prep.finish((ids, b_state, kept, lse), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(<B as KernelOps>::attention(
            q.primitive,
            k.primitive,
            v.primitive,
            bias.map(|b| b.primitive),
            scale,
        )),
    }
}

/// Attention `softmax(q·kᵀ·scale + bias)·v` over `[b, h, sq, d]` queries, `[b, h, sk, d]` keys, `[b, h, sk, dv]`
/// values and an additive `bias` that broadcasts to `[b, h, sq, sk]` (padding and causal masks, T5's relative
/// position bias). On an autodiff backend the backward pass recomputes the probabilities from q, k, the bias and
/// one saved log-sum-exp per query row (FlashAttention's scheme), so no `[b, h, sq, sk]` tensor is kept between
/// the passes (burn's decomposed softmax keeps several per layer). Differentiable in q, k, v and the bias.
pub fn attention<B: KernelOps>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<Tensor<B, 4>>,
    scale: f64,
) -> Tensor<B, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(<B as KernelOps>::attention(
        q.into_primitive().tensor(),
        k.into_primitive().tensor(),
        v.into_primitive().tensor(),
        bias.map(|b| b.into_primitive().tensor()),
        scale,
    )))
}

/// Whether the `try_fused_*` entries use kiln's kernels: yes unless `KILN_KERNELS=0` is in the environment (read
/// once; for comparing against burn's own ops, as `docs/performance.md` does). `KILN_FUSED_ATTENTION=0` turns off
/// the attention alone.
pub fn kernels_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_KERNELS").map_or(true, |v| v != "0"))
}

/// Whether [`try_fused_attention`] fuses: [`kernels_enabled`] and not `KILN_FUSED_ATTENTION=0`.
pub fn fused_attention_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        kernels_enabled() && std::env::var("KILN_FUSED_ATTENTION").map_or(true, |v| v != "0")
    })
}

/// `t` as a `U` when `T` and `U` are the same type (a backend picked by `TypeId`), else `t` back.
fn cast<T: 'static, U: 'static>(t: T) -> Result<U, T> {
    use std::any::Any;
    let boxed: Box<dyn Any> = Box::new(t);
    match boxed.downcast::<U>() {
        Ok(u) => Ok(*u),
        Err(b) => Err(*b.downcast::<T>().expect("the box holds a T")),
    }
}

/// Attention's inputs, handed back by [`try_fused_attention`] when the backend has no fused op.
pub type AttentionInputs<B> = (
    Tensor<B, 4>,
    Tensor<B, 4>,
    Tensor<B, 4>,
    Option<Tensor<B, 4>>,
);

/// [`attention`] for code generic over `B: Backend` (kiln-models' architectures): when `B` is a backend with
/// kiln's kernel — flex (training and inference) or the composed op with its recomputing backward
/// (`Autodiff<NdArray>`, `Autodiff<Cuda>`), by feature — the fused op runs and its output is returned; otherwise
/// the inputs come back unchanged (`Err`) for the caller's own path (ndarray and CUDA inference).
pub fn try_fused_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<Tensor<B, 4>>,
    scale: f64,
) -> Result<Tensor<B, 4>, AttentionInputs<B>> {
    if !fused_attention_enabled() {
        return Err((q, k, v, bias));
    }
    #[allow(dead_code)]
    fn run<B: Backend, K: KernelOps>(
        inputs: AttentionInputs<B>,
        scale: f64,
    ) -> Result<Tensor<B, 4>, AttentionInputs<B>> {
        let (q, k, v, bias) = cast::<_, AttentionInputs<K>>(inputs)?;
        Ok(cast(attention::<K>(q, k, v, bias, scale))
            .ok()
            .expect("K is B: the cast above succeeded"))
    }
    let inputs = (q, k, v, bias);
    #[cfg(feature = "flex")]
    let inputs = match run::<B, Autodiff<burn::backend::Flex>>(inputs, scale)
        .or_else(|i| run::<B, burn::backend::Flex>(i, scale))
    {
        Ok(out) => return Ok(out),
        Err(i) => i,
    };
    #[cfg(feature = "ndarray")]
    let inputs = match run::<B, Autodiff<burn::backend::NdArray>>(inputs, scale) {
        Ok(out) => return Ok(out),
        Err(i) => i,
    };
    #[cfg(feature = "cuda")]
    let inputs = match run::<B, Autodiff<burn::backend::Cuda>>(inputs, scale) {
        Ok(out) => return Ok(out),
        Err(i) => i,
    };
    let _ = scale;
    Err(inputs)
}

/// `value` `[b, h, n, d]` written into `buf` `[b, h, cap, d]` at positions `at..at + n` of dim 2 — a KV cache's
/// decode step — in place when `B` is flex and nobody else holds `buf`; otherwise both come back (`Err`) for the
/// caller's `slice_assign`. (flex's `slice_assign` copies the whole buffer even when it is not shared.)
#[allow(clippy::type_complexity)]
pub fn try_write_positions<B: Backend>(
    buf: Tensor<B, 4>,
    at: usize,
    value: Tensor<B, 4>,
) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>)> {
    #[cfg(feature = "flex")]
    {
        type F = burn::backend::Flex;
        let (buf, value) = cast::<_, (Tensor<F, 4>, Tensor<F, 4>)>((buf, value))?;
        let prim = |t: Tensor<F, 4>| t.into_primitive().tensor();
        let back = |t| Tensor::<F, 4>::from_primitive(TensorPrimitive::Float(t));
        let out = match flex::write_positions(prim(buf), at, prim(value)) {
            Ok(t) => Ok(back(t)),
            Err((b, v)) => Err((back(b), back(v))),
        };
        match out {
            Ok(t) => Ok(cast(t).ok().expect("F is B")),
            Err(bv) => Err(cast(bv).ok().expect("F is B")),
        }
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = at;
        Err((buf, value))
    }
}

/// One AdamW update's settings for [`try_adamw_step`]: burn's `AdamWConfig` (no AMSGrad, no cautious decay) and
/// the step count after this update (1 on the first).
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay (burn's default 0.9).
    pub beta_1: f32,
    /// Second-moment decay (burn's default 0.999).
    pub beta_2: f32,
    /// Added to the root of the corrected second moment.
    pub epsilon: f32,
    /// Decoupled weight decay (multiplied by the learning rate).
    pub weight_decay: f32,
    /// The step count after this update: 1 on the first.
    pub time: usize,
}

/// [`try_adamw_step`]'s inputs: parameter, gradient and (first, second) moments (`None` on the first step).
pub type AdamWInputs<B, const D: usize> = (
    Tensor<B, D>,
    Tensor<B, D>,
    Option<(Tensor<B, D>, Tensor<B, D>)>,
);

/// One AdamW update of a parameter, as burn's `AdamW` computes it (`m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
/// `p ← p·(1 − lr·λ) − lr · m̂ / (√v̂ + ε)` with the bias corrections), returning (parameter, m, v). On flex one
/// pass over the four buffers, written in place where they are not shared — burn's optimizer runs about fifteen
/// elementwise ops per parameter, each a pass over memory into a fresh buffer (a BART-base full fine-tuning step:
/// ≈ 20% of the step). Other backends (and other dtypes) get the inputs back.
pub fn try_adamw_step<B: Backend, const D: usize>(
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    moments: Option<(Tensor<B, D>, Tensor<B, D>)>,
    step: AdamWStep,
) -> Result<(Tensor<B, D>, Tensor<B, D>, Tensor<B, D>), AdamWInputs<B, D>> {
    if !kernels_enabled() {
        return Err((param, grad, moments));
    }
    #[cfg(feature = "flex")]
    {
        type F = burn::backend::Flex;
        let (p, g, mv) = cast::<AdamWInputs<B, D>, AdamWInputs<F, D>>((param, grad, moments))?;
        let prim = |t: Tensor<F, D>| t.into_primitive().tensor();
        let back = |t| Tensor::<F, D>::from_primitive(TensorPrimitive::Float(t));
        let out =
            match flex::adamw_step(prim(p), prim(g), mv.map(|(m, v)| (prim(m), prim(v))), &step) {
                Ok((p, m, v)) => Ok((back(p), back(m), back(v))),
                Err((p, g, mv)) => Err((back(p), back(g), mv.map(|(m, v)| (back(m), back(v))))),
            };
        match out {
            Ok(t) => Ok(cast(t).ok().expect("F is B")),
            Err(i) => Err(cast(i).ok().expect("F is B")),
        }
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = step;
        Err((param, grad, moments))
    }
}

/// Row r (dim 0) of a KV cache buffer `[b, h, cap, d]` becomes row `idx[r]` over its first `len` positions, in
/// place on flex when the buffer is not shared (a beam search's reorder: only the rows that change, only the
/// filled positions — `select` copies the whole buffer). `Err(buf)` elsewhere, or when `idx` changes the row count.
pub fn try_select_rows<B: Backend>(
    buf: Tensor<B, 4>,
    idx: &[usize],
    len: usize,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    #[cfg(feature = "flex")]
    {
        type F = burn::backend::Flex;
        let buf = cast::<Tensor<B, 4>, Tensor<F, 4>>(buf)?;
        let out = flex::select_rows(buf.into_primitive().tensor(), idx, len)
            .map(|t| Tensor::<F, 4>::from_primitive(TensorPrimitive::Float(t)))
            .map_err(|t| Tensor::<F, 4>::from_primitive(TensorPrimitive::Float(t)));
        match out {
            Ok(t) => Ok(cast(t).ok().expect("F is B")),
            Err(t) => Err(cast(t).ok().expect("F is B")),
        }
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = (idx, len);
        Err(buf)
    }
}

/// Whether [`try_small_rows_matmul`] takes products on backend `B` (flex, with the kernels on): callers that would
/// otherwise prepare a layout for burn's product (a materialised `Eᵀ`) can skip it.
pub fn has_small_rows_matmul<B: Backend>() -> bool {
    #[cfg(feature = "flex")]
    {
        small_rows_enabled()
            && std::any::TypeId::of::<B>() == std::any::TypeId::of::<burn::backend::Flex>()
    }
    #[cfg(not(feature = "flex"))]
    {
        false
    }
}

/// [`kernels_enabled`] and not `KILN_SMALL_ROWS=0`.
#[cfg(feature = "flex")]
fn small_rows_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        kernels_enabled() && std::env::var("KILN_SMALL_ROWS").map_or(true, |v| v != "0")
    })
}

/// `x [m, k] · w [k, n]` for a few rows (`m ≤ 8`: a decode step, beams) on flex: the weight read once with no
/// packing, over the threads (a row-major weight by rows, a transposed one by columns). Other backends and larger products
/// get their inputs back (`Err`). flex runs such a product on one thread with `gemm`, which packs the whole weight
/// on every call. `KILN_SMALL_ROWS=0` turns this one off.
#[allow(clippy::type_complexity)]
pub fn try_small_rows_matmul<B: Backend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
) -> Result<Tensor<B, 2>, (Tensor<B, 2>, Tensor<B, 2>)> {
    #[cfg(feature = "flex")]
    {
        if !small_rows_enabled() || x.dims()[0] > flex::SMALL_ROWS {
            return Err((x, w));
        }
        type F = burn::backend::Flex;
        let (x, w) = cast::<_, (Tensor<F, 2>, Tensor<F, 2>)>((x, w))?;
        let prim = |t: Tensor<F, 2>| t.into_primitive().tensor();
        let back = |t| Tensor::<F, 2>::from_primitive(TensorPrimitive::Float(t));
        match flex::small_rows_matmul(prim(x), prim(w)) {
            Ok(t) => Ok(cast(back(t)).ok().expect("F is B")),
            Err((x, w)) => Err(cast((back(x), back(w))).ok().expect("F is B")),
        }
    }
    #[cfg(not(feature = "flex"))]
    {
        Err((x, w))
    }
}

/// Whether [`try_linear`] and [`try_matmul`] use kiln's product: [`kernels_enabled`] and not `KILN_GEMM=0`.
pub fn gemm_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| kernels_enabled() && std::env::var("KILN_GEMM").map_or(true, |v| v != "0"))
}

/// A dense layer's inputs, handed back by [`try_linear`] when the backend has no kernel.
pub type LinearInputs<B> = (Tensor<B, 2>, Tensor<B, 2>, Option<Tensor<B, 1>>);

/// `x [m, k] · w [k, n] + bias [n]` (burn's `linear` on rows) through [`KernelOps::linear_2d`] when `B` is flex
/// or `Autodiff<Flex>`: the product split over the threads by kiln (flex's own split of a large product scales
/// poorly on two threads), the bias written into the output instead of a second pass, and under autodiff the
/// gradients' products split the same way. Other backends get the inputs back (`Err`) for burn's `linear`.
pub fn try_linear<B: Backend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Result<Tensor<B, 2>, LinearInputs<B>> {
    if !gemm_enabled() {
        return Err((x, w, bias));
    }
    #[cfg(feature = "flex")]
    {
        fn run<B: Backend, K: KernelOps>(
            inputs: LinearInputs<B>,
        ) -> Result<Tensor<B, 2>, LinearInputs<B>> {
            let (x, w, bias) = cast::<_, LinearInputs<K>>(inputs)?;
            let y = <K as KernelOps>::linear_2d(
                x.into_primitive().tensor(),
                w.into_primitive().tensor(),
                bias.map(|b| b.into_primitive().tensor()),
            );
            let y = Tensor::<K, 2>::from_primitive(TensorPrimitive::Float(y));
            Ok(cast(y).ok().expect("K is B: the cast above succeeded"))
        }
        run::<B, Autodiff<burn::backend::Flex>>((x, w, bias)).or_else(run::<B, burn::backend::Flex>)
    }
    #[cfg(not(feature = "flex"))]
    {
        Err((x, w, bias))
    }
}

/// `lhs [m, k] · rhs [k, n]` through [`KernelOps::matmul_2d`] on flex and `Autodiff<Flex>` (see [`try_linear`]);
/// other backends get the inputs back (`Err`).
#[allow(clippy::type_complexity)]
pub fn try_matmul<B: Backend>(
    lhs: Tensor<B, 2>,
    rhs: Tensor<B, 2>,
) -> Result<Tensor<B, 2>, (Tensor<B, 2>, Tensor<B, 2>)> {
    try_linear(lhs, rhs, None).map_err(|(l, r, _)| (l, r))
}

/// GELU elementwise — exact (`x · Φ(x)`, erf; HF's `gelu`) or, with `tanh_form`, the tanh approximation (HF's
/// `gelu_new`, GPT-2) — with its own backward node on an autodiff backend (saves x only). On flex one vectorised,
/// multi-threaded pass each way; burn's exact GELU calls libm's `erf` per element on one thread, and the tanh form
/// composed of burn ops is six passes.
pub fn gelu<B: KernelOps, const D: usize>(x: Tensor<B, D>, tanh_form: bool) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(<B as KernelOps>::gelu(
        x.into_primitive().tensor(),
        tanh_form,
    )))
}

/// [`gelu`] for code generic over `B: Backend`: runs on flex and `Autodiff<Flex>` (the kernels), and hands `x`
/// back (`Err`) on other backends, whose own ops are as good as the composed default.
pub fn try_fused_gelu<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    tanh_form: bool,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if !kernels_enabled() {
        return Err(x);
    }
    #[cfg(feature = "flex")]
    {
        fn run<B: Backend, K: KernelOps, const D: usize>(
            x: Tensor<B, D>,
            tanh_form: bool,
        ) -> Result<Tensor<B, D>, Tensor<B, D>> {
            let x = cast::<_, Tensor<K, D>>(x)?;
            Ok(cast(gelu::<K, D>(x, tanh_form))
                .ok()
                .expect("K is B: the cast above succeeded"))
        }
        run::<B, Autodiff<burn::backend::Flex>, D>(x, tanh_form)
            .or_else(|x| run::<B, burn::backend::Flex, D>(x, tanh_form))
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = tanh_form;
        Err(x)
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
    norm(x, gamma, Some(beta), eps, true)
}

/// RMSNorm over the last dimension of `x` with `weight` `[d]` (T5's `T5LayerNorm`):
/// `y = x / sqrt(mean(x²) + eps) · weight`, one pass forward keeping only the per-row reciprocal root mean square
/// (LayerNorm's kernel with the mean taken as 0). Differentiable in x and weight.
pub fn rms_norm<B: KernelOps, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    norm(x, weight, None, eps, false)
}

/// [`KernelOps::layer_norm`] on tensors; no bias (RMSNorm): zeros stand in.
fn norm<B: KernelOps, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Option<Tensor<B, 1>>,
    eps: f64,
    centre: bool,
) -> Tensor<B, D> {
    let beta = beta.unwrap_or_else(|| gamma.zeros_like());
    Tensor::from_primitive(TensorPrimitive::Float(<B as KernelOps>::layer_norm(
        x.into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        beta.into_primitive().tensor(),
        eps,
        centre,
    )))
}

/// LayerNorm's inputs, handed back by [`try_layer_norm`] when the backend has no kernel.
pub type LayerNormInputs<B, const D: usize> = (Tensor<B, D>, Tensor<B, 1>, Option<Tensor<B, 1>>);

/// [`layer_norm`] for code generic over `B: Backend` (kiln-models' architectures): on the training backends
/// (`Autodiff<Flex>`: the kernels; `Autodiff<NdArray>`, `Autodiff<Cuda>`: the composed op inside the same
/// backward node, by feature) with a bias, the fused op with its saved per-row statistics runs — burn's autodiff
/// runs LayerNorm as a chain of eight tracked ops, keeping about four x-sized tensors per norm. Inference backends
/// (whose `layer_norm` is burn's own, fused on flex) and a norm without bias get the inputs back (`Err`).
pub fn try_layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Option<Tensor<B, 1>>,
    eps: f64,
) -> Result<Tensor<B, D>, LayerNormInputs<B, D>> {
    if beta.is_none() {
        return Err((x, gamma, beta));
    }
    try_norm((x, gamma, beta), eps, true)
}

/// [`rms_norm`] for code generic over `B: Backend` (T5's norm): on the training backends the fused op (saved:
/// the per-row reciprocal root mean square) instead of burn's autodiff chain (square, mean, add, sqrt,
/// reciprocal, two products, each tracked); elsewhere the inputs back (`Err`).
#[allow(clippy::type_complexity)]
pub fn try_rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, 1>)> {
    try_norm((x, weight, None), eps, false).map_err(|(x, w, _)| (x, w))
}

/// LayerNorm (`centre`, with a bias) or RMSNorm (no bias: zeros stand in) on the training backends.
fn try_norm<B: Backend, const D: usize>(
    inputs: LayerNormInputs<B, D>,
    eps: f64,
    centre: bool,
) -> Result<Tensor<B, D>, LayerNormInputs<B, D>> {
    if !kernels_enabled() {
        return Err(inputs);
    }
    #[allow(dead_code)]
    fn run<B: Backend, K: KernelOps, const D: usize>(
        inputs: LayerNormInputs<B, D>,
        eps: f64,
        centre: bool,
    ) -> Result<Tensor<B, D>, LayerNormInputs<B, D>> {
        let (x, gamma, beta) = cast::<_, LayerNormInputs<K, D>>(inputs)?;
        Ok(
            cast::<Tensor<K, D>, Tensor<B, D>>(norm(x, gamma, beta, eps, centre))
                .ok()
                .expect("K is B: the cast above succeeded"),
        )
    }
    #[cfg(feature = "flex")]
    let inputs = match run::<B, Autodiff<burn::backend::Flex>, D>(inputs, eps, centre) {
        Ok(y) => return Ok(y),
        Err(i) => i,
    };
    #[cfg(feature = "ndarray")]
    let inputs = match run::<B, Autodiff<burn::backend::NdArray>, D>(inputs, eps, centre) {
        Ok(y) => return Ok(y),
        Err(i) => i,
    };
    #[cfg(feature = "cuda")]
    let inputs = match run::<B, Autodiff<burn::backend::Cuda>, D>(inputs, eps, centre) {
        Ok(y) => return Ok(y),
        Err(i) => i,
    };
    let _ = (eps, centre);
    Err(inputs)
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
