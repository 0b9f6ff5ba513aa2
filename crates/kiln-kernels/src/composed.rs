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

/// Rows and width of a tensor normalised over its last dimension.
fn rows_width<B: Backend>(x: &FloatTensor<B>) -> (usize, usize, burn::tensor::Shape) {
    use burn::tensor::TensorMetadata;
    let shape = x.shape();
    let d = *shape
        .last()
        .expect("layer norm needs at least one dimension");
    let rows = shape.iter().product::<usize>() / d.max(1);
    (rows, d, shape)
}

/// [`crate::KernelOps::layer_norm_fwd`] with burn ops: (y with x's shape, mean `[rows]`, rstd `[rows]`). Without
/// `centre` (RMSNorm) the mean is taken as 0: `rstd = 1 / sqrt(mean(x²) + eps)`.
pub fn layer_norm_fwd<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    eps: f64,
    centre: bool,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (rows, d, shape) = rows_width::<B>(&x);
    let x = float::<B, 2>(B::float_reshape(x, burn::tensor::Shape::new([rows, d])));
    let mean = if centre {
        x.clone().mean_dim(1)
    } else {
        Tensor::<B, 2>::zeros([rows, 1], &x.device())
    };
    let xc = x - mean.clone();
    let var = xc.clone().powi_scalar(2).mean_dim(1);
    let rstd = var.add_scalar(eps).sqrt().recip();
    let y = xc * rstd.clone() * float::<B, 1>(gamma).unsqueeze_dim(0)
        + float::<B, 1>(beta).unsqueeze_dim(0);
    (
        B::float_reshape(prim(y), shape),
        prim(mean.reshape([rows])),
        prim(rstd.reshape([rows])),
    )
}

/// [`crate::KernelOps::layer_norm_bwd`] with burn ops: (dx, dgamma, dbeta). Without `centre` (RMSNorm) dx has
/// no mean term: `dx = (g − x̂ · mean(g · x̂)) · rstd` with `g = dy · gamma`.
pub fn layer_norm_bwd<B: Backend>(
    dy: FloatTensor<B>,
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    mean: FloatTensor<B>,
    rstd: FloatTensor<B>,
    centre: bool,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (rows, d, shape) = rows_width::<B>(&x);
    let x = float::<B, 2>(B::float_reshape(x, burn::tensor::Shape::new([rows, d])));
    let dy = float::<B, 2>(B::float_reshape(dy, burn::tensor::Shape::new([rows, d])));
    let mean = float::<B, 1>(mean).reshape([rows, 1]);
    let rstd = float::<B, 1>(rstd).reshape([rows, 1]);
    let xhat = (x - mean) * rstd.clone();
    let dbeta = dy.clone().sum_dim(0).reshape([d]);
    let dgamma = (dy.clone() * xhat.clone()).sum_dim(0).reshape([d]);
    let g = dy * float::<B, 1>(gamma).unsqueeze_dim(0);
    let centred = if centre {
        g.clone() - g.clone().mean_dim(1)
    } else {
        g.clone()
    };
    let dx = (centred - xhat.clone() * (g * xhat).mean_dim(1)) * rstd;
    (B::float_reshape(prim(dx), shape), prim(dgamma), prim(dbeta))
}

/// `softmax(q·kᵀ·scale + bias)·v` for `[b, h, sq, d]` queries, `[b, h, sk, d]` keys, `[b, h, sk, dv]` values and a
/// bias broadcasting to `[b, h, sq, sk]`: (output `[b, h, sq, dv]`, per-row log-sum-exp `[b, h, sq, 1]`). The
/// `[b, h, sq, sk]` scores live only inside this call.
pub fn attention_fwd<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    scale: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let s = scores::<B>(q, k, bias, scale);
    let m = s.clone().max_dim(3);
    let e = (s - m.clone()).exp();
    let l = e.clone().sum_dim(3);
    // Normalised after the product: one pass over `[b, h, sq, dv]` instead of over the scores.
    let out = e.matmul(float::<B, 4>(v)) / l.clone();
    (prim(out), prim(l.log() + m))
}

fn scores<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    scale: f64,
) -> Tensor<B, 4> {
    // The scale on q (`[b, h, sq, d]`), not on the scores (`[b, h, sq, sk]`).
    let s = float::<B, 4>(q)
        .mul_scalar(scale)
        .matmul(float::<B, 4>(k).swap_dims(2, 3));
    match bias {
        Some(b) => s + float::<B, 4>(b),
        None => s,
    }
}

/// The gradients of [`attention_fwd`] from the output's gradient, recomputing the probabilities from q, k, the bias
/// and the saved log-sum-exp (FlashAttention's backward, with whole-row products): (dq, dk, dv, and the scores'
/// gradient `[b, h, sq, sk]` — the bias's before its broadcast is undone — when `bias_grad`).
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd<B: Backend>(
    dout: FloatTensor<B>,
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    scale: f64,
    out: Option<FloatTensor<B>>,
    lse: FloatTensor<B>,
    bias_grad: bool,
) -> (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    Option<FloatTensor<B>>,
) {
    let (qt, kt) = (float::<B, 4>(q.clone()), float::<B, 4>(k.clone()));
    let p = (scores::<B>(q, k, bias, scale) - float::<B, 4>(lse)).exp();
    let dout = float::<B, 4>(dout);
    let dv = p.clone().swap_dims(2, 3).matmul(dout.clone());
    let dp = dout.clone().matmul(float::<B, 4>(v).swap_dims(2, 3));
    // rowsum(dO ∘ O), or without the output the same sum as rowsum(P ∘ dP) (O = P·V).
    let d = match out {
        Some(out) => (dout * float::<B, 4>(out)).sum_dim(3),
        None => (p.clone() * dp.clone()).sum_dim(3),
    };
    let ds = p * (dp - d);
    let dq = ds.clone().matmul(kt).mul_scalar(scale);
    let dk = ds.clone().swap_dims(2, 3).matmul(qt).mul_scalar(scale);
    (prim(dq), prim(dk), prim(dv), bias_grad.then(|| prim(ds)))
}

/// `full` summed over the dimensions where `shape` is 1 (undoing a broadcast to `full`'s shape).
pub fn unbroadcast<B: Backend>(full: FloatTensor<B>, shape: [usize; 4]) -> FloatTensor<B> {
    let mut t = float::<B, 4>(full);
    for (i, &n) in shape.iter().enumerate() {
        if n == 1 && t.dims()[i] != 1 {
            t = t.sum_dim(i);
        }
    }
    prim(t)
}

/// GELU, exact (`x · Φ(x)` with erf) or the tanh form `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, with burn ops
/// on a tensor of any rank.
pub fn gelu_fwd<B: Backend>(x: FloatTensor<B>, tanh_form: bool) -> FloatTensor<B> {
    let shape = burn::tensor::TensorMetadata::shape(&x);
    let n = shape.num_elements();
    let x = float::<B, 1>(B::float_reshape(x, burn::tensor::Shape::new([n])));
    let y = if tanh_form {
        let c = (2.0f64 / std::f64::consts::PI).sqrt();
        let inner = (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044715)).mul_scalar(c);
        x.mul_scalar(0.5) * inner.tanh().add_scalar(1.0)
    } else {
        burn::tensor::activation::gelu(x)
    };
    B::float_reshape(prim(y), shape)
}

/// GELU's backward with burn ops: `dy · gelu′(x)`.
pub fn gelu_bwd<B: Backend>(
    dy: FloatTensor<B>,
    x: FloatTensor<B>,
    tanh_form: bool,
) -> FloatTensor<B> {
    let shape = burn::tensor::TensorMetadata::shape(&x);
    let n = shape.num_elements();
    let x = float::<B, 1>(B::float_reshape(x, burn::tensor::Shape::new([n])));
    let dy = float::<B, 1>(B::float_reshape(dy, burn::tensor::Shape::new([n])));
    let d = if tanh_form {
        let c = (2.0f64 / std::f64::consts::PI).sqrt();
        let t = (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044715))
            .mul_scalar(c)
            .tanh();
        let du = x
            .clone()
            .powi_scalar(2)
            .mul_scalar(3.0 * 0.044715 * c)
            .add_scalar(c);
        t.clone().add_scalar(1.0).mul_scalar(0.5)
            + x.mul_scalar(0.5) * (t.clone() * t).neg().add_scalar(1.0) * du
    } else {
        let cdf = x
            .clone()
            .mul_scalar(std::f64::consts::FRAC_1_SQRT_2)
            .erf()
            .add_scalar(1.0)
            .mul_scalar(0.5);
        let pdf = x
            .clone()
            .powi_scalar(2)
            .mul_scalar(-0.5)
            .exp()
            .mul_scalar(1.0 / (2.0 * std::f64::consts::PI).sqrt());
        cdf + x * pdf
    };
    B::float_reshape(prim(dy * d), shape)
}
