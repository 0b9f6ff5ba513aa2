//! Attention on flex, one (batch, head) pair per rayon task, everything for that head in cache: the scores
//! `q·kᵀ` of the head into a per-thread scratch buffer (`[sq, sk]`: 1 MiB at 512 × 512), the softmax rows over it
//! in place (scale, bias read through its strides, max, exp, sum, normalise; vectorised), then `P·v` straight into
//! the output. No `[b, h, sq, sk]` tensor exists at any time. The products call `gemm` (the library flex's own
//! matmul uses) on the inputs' strides, so head-swapped views (`[b, s, h, d]` buffers seen as `[b, h, s, d]`) are
//! read without a copy, and the outputs — the attention's output and the gradients of q, k and v — are written in
//! the `[b, s, h, d]` layout and returned as `[b, h, s, d]` views of it: the models' `merge_heads` (and, in the
//! backward pass, `split_heads`' reshape) then find them contiguous instead of copying them element by element.

use std::cell::RefCell;

use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::Flex;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Bytes, DType, Shape, TensorData, TensorMetadata};
use rayon::prelude::*;

use super::rows::{softmax_grad_row, softmax_row};

/// A rank-4 f32 tensor read in place: its whole buffer, start offset and (non-negative) strides.
struct View<'a> {
    data: &'a [f32],
    start: usize,
    strides: [usize; 4],
    dims: [usize; 4],
}

impl<'a> View<'a> {
    /// `None` for another dtype, rank or a negative stride (the caller takes the composed path).
    fn new(t: &'a FlexTensor) -> Option<Self> {
        if t.dtype() != DType::F32 {
            return None;
        }
        let layout = t.layout();
        let shape = layout.shape();
        if shape.num_dims() != 4 {
            return None;
        }
        let mut strides = [0usize; 4];
        let mut dims = [0usize; 4];
        for i in 0..4 {
            dims[i] = shape[i];
            strides[i] = if dims[i] == 1 {
                0
            } else {
                usize::try_from(layout.strides()[i]).ok()?
            };
        }
        let data: &[f32] = t.storage();
        let last = layout.start_offset()
            + (0..4)
                .map(|i| strides[i] * dims[i].saturating_sub(1))
                .sum::<usize>();
        if dims.contains(&0) || last >= data.len() {
            return None;
        }
        Some(Self {
            data,
            start: layout.start_offset(),
            strides,
            dims,
        })
    }

    /// The `[rows, cols]` matrix of (batch `bi`, head `hi`) — index 0 or 1 is broadcast when that dim is 1 — as
    /// (pointer, row stride, column stride).
    fn head(&self, bi: usize, hi: usize) -> (*const f32, isize, isize) {
        let off = self.start + bi * self.strides[0] + hi * self.strides[1];
        (
            self.data[off..].as_ptr(),
            self.strides[2] as isize,
            self.strides[3] as isize,
        )
    }

    /// Row `i` of (batch `bi`, head `hi`) with its column stride, for biases that broadcast (a dim of size 1 has
    /// stride 0, so any index reads its one row).
    fn row(&self, bi: usize, hi: usize, i: usize) -> (&'a [f32], usize) {
        let off = self.start + bi * self.strides[0] + hi * self.strides[1] + i * self.strides[2];
        (&self.data[off..], self.strides[3])
    }
}

/// A bias that broadcasts to `[b, h, sq, sk]`.
fn bias_fits(bias: &View, dims: [usize; 4]) -> bool {
    (0..4).all(|i| bias.dims[i] == 1 || bias.dims[i] == dims[i])
}

/// An output buffer shared by the tasks, each writing its own (batch, head) block.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: the tasks write disjoint blocks (one (batch, head) pair each) and the buffer outlives them.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// Element `off` (a method, so that closures capture the whole `Out`, which is `Sync`).
    fn at(self, off: usize) -> *mut f32 {
        // SAFETY: callers pass offsets inside the buffer.
        unsafe { self.0.add(off) }
    }
}

/// `[b, s, h, d]` storage seen as `[b, h, s, d]`.
fn heads_view(buf: Vec<f32>, [b, h, s, d]: [usize; 4]) -> FlexTensor {
    let layout = Layout::new(
        Shape::new([b, h, s, d]),
        vec![(s * h * d) as isize, d as isize, (h * d) as isize, 1],
        0,
    );
    FlexTensor::new(Bytes::from_elems(buf), layout, DType::F32)
}

/// Offset and row stride of (batch, head) in a `[b, s, h, d]` buffer.
fn heads_block(bi: usize, hi: usize, [_, h, s, d]: [usize; 4]) -> (usize, isize) {
    (bi * s * h * d + hi * d, (h * d) as isize)
}

thread_local! {
    /// Per-thread scratch for one head's `[sq, sk]` scores and their gradient.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `dst[m, n] = beta · lhs[m, k] · rhs[k, n]` (dst overwritten), single-threaded (the tasks are the parallelism).
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: isize,
    (lhs, lhs_rs, lhs_cs): (*const f32, isize, isize),
    (rhs, rhs_rs, rhs_cs): (*const f32, isize, isize),
    beta: f32,
) {
    // SAFETY: the caller's pointers and strides address m×k, k×n and m×n matrices inside their buffers.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs,
            false,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            0.0f32,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The shapes the kernel takes: f32 rank-4 views with non-negative strides, `q [b, h, sq, d]`, `k [b, h, sk, d]`,
/// `v [b, h, sk, dv]`; returns `[b, h, sq, sk, d, dv]`.
fn shapes(q: &View, k: &View, v: &View) -> Option<[usize; 6]> {
    let [b, h, sq, d] = q.dims;
    let sk = k.dims[2];
    (k.dims == [b, h, sk, d] && v.dims[..3] == [b, h, sk]).then_some([b, h, sq, sk, d, v.dims[3]])
}

/// Forward: (output `[b, h, sq, dv]` as a view of a `[b, sq, h, dv]` buffer, log-sum-exp `[b, h, sq, 1]`), or the
/// inputs back when the kernel does not take them.
#[allow(clippy::type_complexity)]
pub fn forward(
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    bias: Option<FlexTensor>,
    scale: f64,
) -> Result<(FlexTensor, FlexTensor), (FlexTensor, FlexTensor, FlexTensor, Option<FlexTensor>)> {
    let Some(out) = forward_views(&q, &k, &v, bias.as_ref(), scale as f32) else {
        return Err((q, k, v, bias));
    };
    Ok(out)
}

fn forward_views(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    bias: Option<&FlexTensor>,
    scale: f32,
) -> Option<(FlexTensor, FlexTensor)> {
    let (qv, kv, vv) = (View::new(q)?, View::new(k)?, View::new(v)?);
    let [b, h, sq, sk, d, dv] = shapes(&qv, &kv, &vv)?;
    let bv = match bias {
        Some(t) => Some(View::new(t).filter(|bv| bias_fits(bv, [b, h, sq, sk]))?),
        None => None,
    };
    let out_dims = [b, h, sq, dv];
    let mut out = vec![0f32; b * h * sq * dv];
    let mut lse = vec![0f32; b * h * sq];
    let (o, l) = (Out(out.as_mut_ptr()), Out(lse.as_mut_ptr()));
    (0..b * h).into_par_iter().for_each(|bh| {
        let (bi, hi) = (bh / h, bh % h);
        SCRATCH.with_borrow_mut(|(s, _)| {
            s.resize(sq * sk, 0.0);
            // SAFETY: q, k, v views were checked to cover their dims; s holds sq × sk.
            unsafe {
                matmul(
                    (sq, sk, d),
                    s.as_mut_ptr(),
                    sk as isize,
                    qv.head(bi, hi),
                    // kᵀ: element (c, j) is k[j, c].
                    {
                        let (p, rs, cs) = kv.head(bi, hi);
                        (p, cs, rs)
                    },
                    1.0,
                );
            }
            for (i, row) in s.chunks_mut(sk).enumerate() {
                let bias = bv.as_ref().map(|bv| bv.row(bi, hi, i));
                let r = bh * sq + i;
                // SAFETY: row r of lse belongs to this task.
                unsafe { *l.at(r) = softmax_row(row, bias, scale) };
            }
            let (off, rs) = heads_block(bi, hi, out_dims);
            // SAFETY: this task's block of `out`; s is [sq, sk]; v's head is [sk, dv].
            unsafe {
                matmul(
                    (sq, dv, sk),
                    o.at(off),
                    rs,
                    (s.as_ptr(), sk as isize, 1),
                    vv.head(bi, hi),
                    1.0,
                );
            }
        });
    });
    Some((
        heads_view(out, out_dims),
        FlexTensor::from_data(TensorData::new(lse, vec![b, h, sq, 1])),
    ))
}

/// Backward: (dq, dk, dv as views of `[b, s, h, d]` buffers, and the unscaled scores' gradient
/// `[b, h, sq, sk]` when `bias_grad`), or `None` when the kernel does not take the inputs (the caller takes the
/// composed path with the same inputs, which it still holds).
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn backward(
    dout: &FlexTensor,
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    bias: Option<&FlexTensor>,
    scale: f64,
    lse: &FlexTensor,
    bias_grad: bool,
) -> Option<(
    FloatTensor<Flex>,
    FloatTensor<Flex>,
    FloatTensor<Flex>,
    Option<FloatTensor<Flex>>,
)> {
    let (qv, kv, vv) = (View::new(q)?, View::new(k)?, View::new(v)?);
    let [b, h, sq, sk, d, dv] = shapes(&qv, &kv, &vv)?;
    let gv = View::new(dout).filter(|g| g.dims == [b, h, sq, dv])?;
    let bv = match bias {
        Some(t) => Some(View::new(t).filter(|bv| bias_fits(bv, [b, h, sq, sk]))?),
        None => None,
    };
    if lse.dtype() != DType::F32 || lse.shape().num_elements() != b * h * sq {
        return None;
    }
    let lse = lse.to_contiguous();
    let lse: &[f32] = &lse.storage::<f32>()[..b * h * sq];
    let scale = scale as f32;
    let (dq_dims, dk_dims, dv_dims) = ([b, h, sq, d], [b, h, sk, d], [b, h, sk, dv]);
    let mut dq = vec![0f32; b * h * sq * d];
    let mut dk = vec![0f32; b * h * sk * d];
    let mut dvb = vec![0f32; b * h * sk * dv];
    let mut ds_full = if bias_grad {
        vec![0f32; b * h * sq * sk]
    } else {
        Vec::new()
    };
    let (pq, pk, pv, pds) = (
        Out(dq.as_mut_ptr()),
        Out(dk.as_mut_ptr()),
        Out(dvb.as_mut_ptr()),
        Out(ds_full.as_mut_ptr()),
    );
    (0..b * h).into_par_iter().for_each(|bh| {
        let (bi, hi) = (bh / h, bh % h);
        SCRATCH.with_borrow_mut(|(p, g)| {
            p.resize(sq * sk, 0.0);
            g.resize(sq * sk, 0.0);
            let transposed = |(ptr, rs, cs): (*const f32, isize, isize)| (ptr, cs, rs);
            // SAFETY (every product below): the views were checked to cover their dims; p and g hold sq × sk; the
            // destinations are this task's blocks.
            unsafe {
                // Scores again (P is recomputed from them and the saved log-sum-exp), and dP = dO·vᵀ.
                matmul(
                    (sq, sk, d),
                    p.as_mut_ptr(),
                    sk as isize,
                    qv.head(bi, hi),
                    transposed(kv.head(bi, hi)),
                    1.0,
                );
                matmul(
                    (sq, sk, dv),
                    g.as_mut_ptr(),
                    sk as isize,
                    gv.head(bi, hi),
                    transposed(vv.head(bi, hi)),
                    1.0,
                );
            }
            for (i, (pr, gr)) in p.chunks_mut(sk).zip(g.chunks_mut(sk)).enumerate() {
                let bias = bv.as_ref().map(|bv| bv.row(bi, hi, i));
                softmax_grad_row(pr, gr, bias, scale, lse[bh * sq + i]);
            }
            if bias_grad {
                // SAFETY: this task's [sq, sk] block of the full scores' gradient.
                unsafe {
                    std::ptr::copy_nonoverlapping(g.as_ptr(), pds.at(bh * sq * sk), sq * sk);
                }
            }
            let (ps, gs) = ((p.as_ptr(), sk as isize, 1), (g.as_ptr(), sk as isize, 1));
            unsafe {
                // dv = Pᵀ·dO, dq = dS·k·scale, dk = dSᵀ·q·scale.
                let (off, rs) = heads_block(bi, hi, dv_dims);
                matmul(
                    (sk, dv, sq),
                    pv.at(off),
                    rs,
                    transposed(ps),
                    gv.head(bi, hi),
                    1.0,
                );
                let (off, rs) = heads_block(bi, hi, dq_dims);
                matmul((sq, d, sk), pq.at(off), rs, gs, kv.head(bi, hi), scale);
                let (off, rs) = heads_block(bi, hi, dk_dims);
                matmul(
                    (sk, d, sq),
                    pk.at(off),
                    rs,
                    transposed(gs),
                    qv.head(bi, hi),
                    scale,
                );
            }
        });
    });
    let ds = bias_grad.then(|| FlexTensor::from_data(TensorData::new(ds_full, vec![b, h, sq, sk])));
    Some((
        heads_view(dq, dq_dims),
        heads_view(dk, dk_dims),
        heads_view(dvb, dv_dims),
        ds,
    ))
}
