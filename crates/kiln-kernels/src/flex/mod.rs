//! The flex kernels: the ops on the tensors' raw f32 buffers, rayon over rows (flex's own thread pool).

/// `f::<M>(args…)` for a row count 1–8 known only at run time (8 for anything larger): the const-generic row
/// blocks of the decode products.
macro_rules! by_rows {
    ($rows:expr, $f:ident($($arg:expr),*)) => {
        match $rows {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            _ => $f::<8>($($arg),*),
        }
    };
}

mod attention;
#[cfg(target_arch = "x86_64")]
mod decode512;
mod matmul;
pub(crate) mod rows;

use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorData, TensorMetadata};
use rayon::prelude::*;

use crate::{composed, KernelOps};

/// Rows per rayon task (a vocabulary row is tens of kilobytes).
const ROWS: usize = 4;

fn f32_tensor(v: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}

/// Elements per rayon task for the elementwise ops (64 KiB of f32).
const ELEMS: usize = 16 * 1024;

/// Rows per rayon task for the norms (rows are a few kilobytes).
const NORM_ROWS: usize = 64;

/// (elements, rows, width) of a tensor normalised over its last dimension.
fn rows_width(shape: &[usize]) -> (usize, usize, usize) {
    let d = *shape
        .last()
        .expect("layer norm needs at least one dimension");
    let n = shape.iter().product::<usize>();
    (n, n / d.max(1), d)
}

impl KernelOps for Flex {
    // The per-head backward uses Σ p·dp, not rowsum(dO ∘ O).
    const ATTENTION_BWD_NEEDS_OUT: bool = false;

    fn matmul_2d(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        match matmul::matmul(lhs, rhs, None) {
            Ok(y) => y,
            Err((lhs, rhs, _)) => {
                <Self as burn::tensor::ops::FloatTensorOps<Self>>::float_matmul(lhs, rhs)
            }
        }
    }

    fn linear_2d(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        match matmul::matmul(x, w, bias) {
            Ok(y) => y,
            Err((x, w, bias)) => <Self as burn::tensor::ops::ModuleOps<Self>>::linear(x, w, bias),
        }
    }

    fn gelu_fwd(x: FloatTensor<Self>, tanh_form: bool) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 {
            return composed::gelu_fwd::<Self>(x, tanh_form);
        }
        let x = x.to_contiguous();
        let shape = x.shape();
        let n = shape.num_elements();
        let xs: &[f32] = &x.storage::<f32>()[..n];
        let mut y = vec![0f32; n];
        y.par_chunks_mut(ELEMS)
            .zip(xs.par_chunks(ELEMS))
            .for_each(|(y, x)| rows::gelu(y, x, tanh_form));
        f32_tensor(y, shape.to_vec())
    }

    fn gelu_bwd(dy: FloatTensor<Self>, x: FloatTensor<Self>, tanh_form: bool) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 || dy.dtype() != DType::F32 || dy.shape() != x.shape() {
            return composed::gelu_bwd::<Self>(dy, x, tanh_form);
        }
        let (x, dy) = (x.to_contiguous(), dy.to_contiguous());
        let shape = x.shape();
        let n = shape.num_elements();
        let xs: &[f32] = &x.storage::<f32>()[..n];
        let gs: &[f32] = &dy.storage::<f32>()[..n];
        let mut dx = vec![0f32; n];
        dx.par_chunks_mut(ELEMS)
            .zip(gs.par_chunks(ELEMS).zip(xs.par_chunks(ELEMS)))
            .for_each(|(dx, (g, x))| rows::gelu_grad(dx, g, x, tanh_form));
        f32_tensor(dx, shape.to_vec())
    }

    fn attention_fwd(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        match attention::forward(q, k, v, bias, scale) {
            Ok(out) => out,
            Err((q, k, v, bias)) => composed::attention_fwd::<Self>(q, k, v, bias, scale),
        }
    }

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
        if let Some(grads) =
            attention::backward(&dout, &q, &k, &v, bias.as_ref(), scale, &lse, bias_grad)
        {
            return grads;
        }
        composed::attention_bwd::<Self>(dout, q, k, v, bias, scale, out, lse, bias_grad)
    }

    fn layer_norm_fwd(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
        centre: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        if [&x, &gamma, &beta].iter().any(|t| t.dtype() != DType::F32) {
            return composed::layer_norm_fwd::<Self>(x, gamma, beta, eps, centre);
        }
        let shape = x.shape();
        let (n, rows, d) = rows_width(&shape);
        let (x, gamma, beta) = (
            x.to_contiguous(),
            gamma.to_contiguous(),
            beta.to_contiguous(),
        );
        let xs: &[f32] = &x.storage::<f32>()[..n];
        let (g, b): (&[f32], &[f32]) = (&gamma.storage::<f32>()[..d], &beta.storage::<f32>()[..d]);
        let mut y = vec![0f32; n];
        let mut mean = vec![0f32; rows];
        let mut rstd = vec![0f32; rows];
        let eps = eps as f32;
        y.par_chunks_mut(NORM_ROWS * d)
            .zip(mean.par_chunks_mut(NORM_ROWS))
            .zip(rstd.par_chunks_mut(NORM_ROWS))
            .enumerate()
            .for_each(|(c, ((y, mean), rstd))| {
                for (k, (y, (m, r))) in y
                    .chunks_mut(d)
                    .zip(mean.iter_mut().zip(rstd.iter_mut()))
                    .enumerate()
                {
                    let row = &xs[(c * NORM_ROWS + k) * d..][..d];
                    // Two passes over the row (in cache): the mean, then the centred variance (more accurate
                    // than one pass of sum and sum of squares). RMSNorm: the mean is 0.
                    let mu = if centre {
                        row.iter().sum::<f32>() / d as f32
                    } else {
                        0.0
                    };
                    let var = row.iter().map(|&v| (v - mu) * (v - mu)).sum::<f32>() / d as f32;
                    let rs = 1.0 / (var + eps).sqrt();
                    for (((y, &v), &g), &b) in y.iter_mut().zip(row).zip(g).zip(b) {
                        *y = (v - mu) * rs * g + b;
                    }
                    *m = mu;
                    *r = rs;
                }
            });
        (
            f32_tensor(y, shape.to_vec()),
            f32_tensor(mean, vec![rows]),
            f32_tensor(rstd, vec![rows]),
        )
    }

    fn layer_norm_bwd(
        dy: FloatTensor<Self>,
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        centre: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        if [&dy, &x, &gamma, &mean, &rstd]
            .iter()
            .any(|t| t.dtype() != DType::F32)
        {
            return composed::layer_norm_bwd::<Self>(dy, x, gamma, mean, rstd, centre);
        }
        let shape = x.shape();
        let (n, rows, d) = rows_width(&shape);
        let (dy, x, gamma) = (dy.to_contiguous(), x.to_contiguous(), gamma.to_contiguous());
        let (mean, rstd) = (mean.to_contiguous(), rstd.to_contiguous());
        let dys: &[f32] = &dy.storage::<f32>()[..n];
        let xs: &[f32] = &x.storage::<f32>()[..n];
        let g: &[f32] = &gamma.storage::<f32>()[..d];
        let (ms, rs): (&[f32], &[f32]) = (
            &mean.storage::<f32>()[..rows],
            &rstd.storage::<f32>()[..rows],
        );
        let mut dx = vec![0f32; n];
        // Each task sums dgamma and dbeta over its rows into its own [2, d] slot; the slots are added in order.
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(NORM_ROWS * d)
            .enumerate()
            .map(|(c, dx)| {
                let mut acc = vec![0f32; 2 * d];
                let (dg, db) = acc.split_at_mut(d);
                for (k, dx) in dx.chunks_mut(d).enumerate() {
                    let r = c * NORM_ROWS + k;
                    let (row, dyr) = (&xs[r * d..][..d], &dys[r * d..][..d]);
                    let (mu, rsd) = (ms[r], rs[r]);
                    let (mut sum_g, mut sum_gx) = (0f32, 0f32);
                    for (((&v, &dyv), &gv), (dgv, dbv)) in row
                        .iter()
                        .zip(dyr)
                        .zip(g)
                        .zip(dg.iter_mut().zip(db.iter_mut()))
                    {
                        let xhat = (v - mu) * rsd;
                        let gg = dyv * gv;
                        sum_g += gg;
                        sum_gx += gg * xhat;
                        *dgv += dyv * xhat;
                        *dbv += dyv;
                    }
                    // RMSNorm's dx has no mean term.
                    let mg = if centre { sum_g / d as f32 } else { 0.0 };
                    let mgx = sum_gx / d as f32;
                    for (((dxv, &v), &dyv), &gv) in dx.iter_mut().zip(row).zip(dyr).zip(g) {
                        let xhat = (v - mu) * rsd;
                        *dxv = (dyv * gv - mg - xhat * mgx) * rsd;
                    }
                }
                acc
            })
            .collect();
        let mut dgb = vec![0f32; 2 * d];
        for p in &partials {
            for (a, b) in dgb.iter_mut().zip(p) {
                *a += b;
            }
        }
        let db = dgb.split_off(d);
        (
            f32_tensor(dx, shape.to_vec()),
            f32_tensor(dgb, vec![d]),
            f32_tensor(db, vec![d]),
        )
    }

    fn cross_entropy_fwd(
        logits: FloatTensor<Self>,
        targets: &[i64],
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if logits.dtype() != DType::F32 {
            return composed::cross_entropy_fwd::<Self>(logits, targets);
        }
        let x = logits.to_contiguous();
        let shape = x.shape();
        let (n, v) = (shape[0], shape[1]);
        let xs: &[f32] = &x.storage::<f32>()[..n * v];
        let mut loss = vec![0f32; n];
        let mut lse = vec![0f32; n];
        loss.par_chunks_mut(ROWS)
            .zip(lse.par_chunks_mut(ROWS))
            .enumerate()
            .for_each(|(c, (loss, lse))| {
                for (k, (l, s)) in loss.iter_mut().zip(lse.iter_mut()).enumerate() {
                    let r = c * ROWS + k;
                    let row = &xs[r * v..(r + 1) * v];
                    *s = rows::log_sum_exp(row);
                    let t = targets[r];
                    *l = if t >= 0 { *s - row[t as usize] } else { 0.0 };
                }
            });
        (f32_tensor(loss, vec![n]), f32_tensor(lse, vec![n]))
    }

    fn cross_entropy_bwd(
        dloss: FloatTensor<Self>,
        logits: FloatTensor<Self>,
        targets: &[i64],
        lse: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        if [&dloss, &logits, &lse]
            .iter()
            .any(|t| t.dtype() != DType::F32)
        {
            return composed::cross_entropy_bwd::<Self>(dloss, logits, targets, lse);
        }
        let x = logits.to_contiguous();
        let shape = x.shape();
        let (n, v) = (shape[0], shape[1]);
        let xs: &[f32] = &x.storage::<f32>()[..n * v];
        let d = dloss.to_contiguous();
        let d: &[f32] = &d.storage::<f32>()[..n];
        let s = lse.to_contiguous();
        let s: &[f32] = &s.storage::<f32>()[..n];
        let mut g = vec![0f32; n * v];
        g.par_chunks_mut(v).enumerate().for_each(|(r, g)| {
            let t = targets[r];
            if t < 0 {
                return;
            }
            let (dr, sr) = (d[r], s[r]);
            rows::scaled_exp(g, &xs[r * v..(r + 1) * v], sr, dr);
            g[t as usize] -= dr;
        });
        f32_tensor(g, vec![n, v])
    }
}

/// `value` `[b, h, n, d]` written into `buf` `[b, h, cap, d]` at positions `at..at + n` of dim 2, in place:
/// `Err` with both back when `buf` is shared, not a plain contiguous f32 buffer, or the shapes do not fit (flex's
/// own `slice_assign` always copies the whole buffer: it keeps a second handle on it while writing).
pub(crate) fn write_positions(
    mut buf: FlexTensor,
    at: usize,
    value: FlexTensor,
) -> Result<FlexTensor, (FlexTensor, FlexTensor)> {
    let (bs, vs) = (buf.shape(), value.shape());
    let fits = buf.dtype() == DType::F32
        && value.dtype() == DType::F32
        && bs.num_dims() == 4
        && vs.num_dims() == 4
        && (bs[0], bs[1], bs[3]) == (vs[0], vs[1], vs[3])
        && at + vs[2] <= bs[2]
        && buf.is_contiguous()
        && buf.layout().start_offset() == 0
        && value.layout().strides().iter().all(|&s| s >= 0);
    if !fits || !buf.is_unique() {
        return Err((buf, value));
    }
    let [b, h, cap, d] = [bs[0], bs[1], bs[2], bs[3]];
    let n = vs[2];
    let st: Vec<usize> = value
        .layout()
        .strides()
        .iter()
        .map(|&s| s as usize)
        .collect();
    let start = value.layout().start_offset();
    let src: &[f32] = value.storage();
    let Some(dst) = buf.try_storage_mut::<f32>() else {
        return Err((buf, value));
    };
    for bi in 0..b {
        for hi in 0..h {
            for j in 0..n {
                let o = ((bi * h + hi) * cap + at + j) * d;
                let s0 = start + bi * st[0] + hi * st[1] + j * st[2];
                let row = &mut dst[o..o + d];
                if st[3] == 1 {
                    row.copy_from_slice(&src[s0..s0 + d]);
                } else {
                    for (c, x) in row.iter_mut().enumerate() {
                        *x = src[s0 + c * st[3]];
                    }
                }
            }
        }
    }
    Ok(buf)
}

/// Row r of `buf` `[b, h, cap, d]` (dim 0) becomes row `idx[r]` over the first `len` positions of dim 2, in place
/// (a beam search's cache reorder): only rows that change are written, and a source row that is itself
/// overwritten is saved first. `Err` with `buf` back when it is shared, not a plain contiguous f32 buffer, or
/// `idx` / `len` do not fit.
pub(crate) fn select_rows(
    mut buf: FlexTensor,
    idx: &[usize],
    len: usize,
) -> Result<FlexTensor, FlexTensor> {
    let bs = buf.shape();
    let fits = buf.dtype() == DType::F32
        && bs.num_dims() == 4
        && idx.len() == bs[0]
        && idx.iter().all(|&i| i < bs[0])
        && len <= bs[2]
        && buf.is_contiguous()
        && buf.layout().start_offset() == 0;
    if !fits || !buf.is_unique() {
        return Err(buf);
    }
    let [b, h, cap, d] = [bs[0], bs[1], bs[2], bs[3]];
    let seg = len * d;
    let at = |r: usize, hh: usize| (r * h + hh) * cap * d;
    let Some(data) = buf.try_storage_mut::<f32>() else {
        return Err(buf);
    };
    let changed: Vec<usize> = (0..b).filter(|&r| idx[r] != r).collect();
    // Sources that are overwritten too: their filled parts, read before any write.
    let mut saved: Vec<(usize, Vec<f32>)> = Vec::new();
    for &r in &changed {
        let s = idx[r];
        if idx[s] != s && !saved.iter().any(|(t, _)| *t == s) {
            let mut v = Vec::with_capacity(h * seg);
            for hh in 0..h {
                v.extend_from_slice(&data[at(s, hh)..at(s, hh) + seg]);
            }
            saved.push((s, v));
        }
    }
    for &r in &changed {
        let s = idx[r];
        let kept = saved.iter().find(|(t, _)| *t == s).map(|(_, v)| v);
        for hh in 0..h {
            match kept {
                Some(v) => {
                    data[at(r, hh)..at(r, hh) + seg].copy_from_slice(&v[hh * seg..(hh + 1) * seg])
                }
                None => data.copy_within(at(s, hh)..at(s, hh) + seg, at(r, hh)),
            }
        }
    }
    Ok(buf)
}

/// Rows up to which [`small_rows_matmul`] takes a product (decoding: one row per sequence or beam).
pub(crate) const SMALL_ROWS: usize = matmul::FEW_ROWS;

/// `x [m, k] · w [k, n]` for a few rows (1 to [`SMALL_ROWS`]) over the rayon threads, reading `w` once in place
/// (row-major: its rows streamed; a transposed view: dot products over its contiguous columns) — the few-rows
/// branch of kiln's product: flex runs a product this small on one thread, and `gemm` packs the whole matrix
/// first, which for a few rows costs as much as the product. `Err` with both back for other row counts, shapes
/// or dtypes.
pub(crate) fn small_rows_matmul(
    x: FlexTensor,
    w: FlexTensor,
) -> Result<FlexTensor, (FlexTensor, FlexTensor)> {
    let (xs, ws) = (x.shape(), w.shape());
    let fits = xs.num_dims() == 2 && ws.num_dims() == 2 && (1..=SMALL_ROWS).contains(&xs[0]);
    if !fits {
        return Err((x, w));
    }
    matmul::matmul(x, w, None).map_err(|(x, w, _)| (x, w))
}

/// One AdamW update (burn's `AdamW` without AMSGrad or cautious decay, the same f32 arithmetic per element) in
/// one pass over parameter, gradient and moments, written into the parameter's and the moments' buffers when they
/// are not shared. `moments` `None` is the first step (moments start at 0). `Err` with the inputs back for other
/// dtypes or mismatched shapes.
#[allow(clippy::type_complexity)]
pub(crate) fn adamw_step(
    p: FlexTensor,
    g: FlexTensor,
    moments: Option<(FlexTensor, FlexTensor)>,
    s: &crate::AdamWStep,
) -> Result<
    (FlexTensor, FlexTensor, FlexTensor),
    (FlexTensor, FlexTensor, Option<(FlexTensor, FlexTensor)>),
> {
    let shape = p.shape();
    let same = |t: &FlexTensor| t.dtype() == DType::F32 && t.shape() == shape;
    if !same(&p) || !same(&g) || moments.as_ref().is_some_and(|(m, v)| !same(m) || !same(v)) {
        return Err((p, g, moments));
    }
    let n = shape.num_elements();
    // `to_contiguous` borrows: the input is dropped after it, so a buffer held by nobody else stays unique.
    let contiguous = |t: FlexTensor| {
        let c = t.to_contiguous();
        drop(t);
        c
    };
    let (p, g) = (contiguous(p), contiguous(g));
    let fresh = || f32_tensor(vec![0.0; n], shape.to_vec());
    let moments = moments.map(|(m, v)| (contiguous(m), contiguous(v)));
    // In place when no buffer is shared (moments absent: the first step); else every new value goes to a fresh
    // buffer, read from the old ones (optimizer states arrive shared with burn's record map).
    let in_place = p.is_unique()
        && moments
            .as_ref()
            .is_none_or(|(m, v)| m.is_unique() && v.is_unique());
    let (mut out, mut m, mut v, src) = match moments {
        Some((m, v)) if in_place => (p, m, v, None),
        None if in_place => (p, fresh(), fresh(), None),
        Some((m, v)) => (fresh(), fresh(), fresh(), Some((p, m, v))),
        None => (fresh(), fresh(), fresh(), Some((p, fresh(), fresh()))),
    };
    let (b1, b2) = (s.beta_1, s.beta_2);
    let t = s.time as i32;
    let decay_rate = s.lr * s.weight_decay as f64;
    let k = rows::AdamWConsts {
        b1,
        b2,
        f1: 1.0 - b1,
        f2: 1.0 - b2,
        c1: 1f32 - b1.powi(t),
        c2: 1f32 - b2.powi(t),
        eps: s.epsilon,
        keep: (decay_rate != 0.0).then_some((1.0 - decay_rate) as f32),
        lr: s.lr as f32,
    };
    let gs: &[f32] = &g.storage::<f32>()[..n];
    let src = src.as_ref().map(|(p, m, v)| {
        (
            &p.storage::<f32>()[..n],
            &m.storage::<f32>()[..n],
            &v.storage::<f32>()[..n],
        )
    });
    let (Some(ps), Some(ms), Some(vs)) = (
        out.try_storage_mut::<f32>(),
        m.try_storage_mut::<f32>(),
        v.try_storage_mut::<f32>(),
    ) else {
        unreachable!("unique or fresh buffers")
    };
    ps[..n]
        .par_chunks_mut(ELEMS)
        .zip(ms[..n].par_chunks_mut(ELEMS))
        .zip(vs[..n].par_chunks_mut(ELEMS))
        .zip(gs.par_chunks(ELEMS))
        .enumerate()
        .for_each(|(c, (((p, m), v), g))| {
            let r = c * ELEMS..c * ELEMS + p.len();
            let src = src.map(|(a, b, d)| (&a[r.clone()], &b[r.clone()], &d[r]));
            rows::adamw(p, m, v, g, src, k);
        });
    let p = out;
    Ok((p, m, v))
}
