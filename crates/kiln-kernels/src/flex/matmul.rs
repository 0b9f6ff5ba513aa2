//! 2-D products (the linear layers, the LM head and their gradients) with the work split over the threads by
//! kiln: one single-threaded `gemm` call per part, on the inputs' strides (a transposed view is read without a
//! copy), each part writing its own rows (or columns) of the output; the bias, when there is one, written into
//! the output first and accumulated onto.
//!
//! flex hands a large product to `gemm` with `Parallelism::Rayon`, whose split scales poorly on two threads:
//! measured alone (2048 × 768 × 768 … 2048 × 3072 × 768, docs/performance.md) 126–175 GFLOP/s against 200–219
//! for two single-threaded halves, and PyTorch's 169–231.

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, TensorData, TensorMetadata};
use rayon::prelude::*;

use super::rows;

/// Below this many multiply-adds one call on the calling thread (flex's own threshold).
const PARALLEL_OPS: usize = 192 * 192 * 192;

/// Rows (or columns) of a part are a multiple of this (gemm's register tile is 16 or 32 wide), and a part has at
/// least [`MIN_PART`] of them.
const ALIGN: usize = 32;
const MIN_PART: usize = 64;

/// A matrix of f32 as gemm takes it: base pointer (as an address, to cross threads), row and column strides.
#[derive(Clone, Copy)]
struct Mat {
    at: usize,
    rs: isize,
    cs: isize,
}

impl Mat {
    fn of(t: &FlexTensor) -> Self {
        let s = t.layout().strides();
        let base: &[f32] = t.storage::<f32>();
        Mat {
            // SAFETY (of the offset): start_offset lies inside the storage, as flex's own kernels assume.
            at: base[t.layout().start_offset()..].as_ptr() as usize,
            rs: s[0],
            cs: s[1],
        }
    }

    /// The same matrix from row `r` on, column `c` on.
    fn at(self, r: usize, c: usize) -> Self {
        let off = r as isize * self.rs + c as isize * self.cs;
        Mat {
            at: (self.at as *const f32).wrapping_offset(off) as usize,
            ..self
        }
    }
}

/// `dst [m, n] (+)= a [m, k] · b [k, n]` on the calling thread. `accumulate`: add onto what `dst` holds.
///
/// # Safety
/// `a`, `b` address m×k and k×n matrices inside live buffers; `dst` an m×n row-major block with row stride
/// `dst_rs`, written by nobody else meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_part(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    a: Mat,
    b: Mat,
    accumulate: bool,
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            a.at as *const f32,
            a.cs,
            a.rs,
            b.at as *const f32,
            b.cs,
            b.rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `[0, len)` cut into `parts` ranges whose inner edges are multiples of [`ALIGN`].
fn cuts(len: usize, parts: usize) -> Vec<(usize, usize)> {
    let edge = |p: usize| {
        if p == parts {
            len
        } else {
            (len * p / parts) / ALIGN * ALIGN
        }
    };
    (0..parts)
        .map(|p| (edge(p), edge(p + 1)))
        .filter(|(a, b)| b > a)
        .collect()
}

/// Rows up to which a product with a row-major or transposed right-hand side is a decode step ([`few_rows`],
/// [`few_rows_dot`]).
pub(crate) const FEW_ROWS: usize = 8;

/// `out [m, n] += x [m, k] · w [k, n]` (`w` row-major, rows `w_row` apart) for a few rows: the rows of `w` split
/// over the threads into contiguous ranges, each streamed once by [`rows::rows_axpy`] into its own accumulator
/// (the first into `out`), the others then added. Measured alone (GPT-2's shapes, 12 layers' weights, 2 threads):
/// 2.2–3.5× gemm's single-threaded product for 1 and 5 rows.
pub(crate) fn few_rows(out: &mut [f32], x: &[f32], k: usize, w: &[f32], w_row: usize, n: usize) {
    let m = out.len() / n.max(1);
    let threads = rayon::current_num_threads();
    let parts = if k * n >= 1 << 16 {
        threads.min(k / MIN_PART).max(1)
    } else {
        1
    };
    let ranges = cuts(k, parts);
    let Some((&(r0, r1), rest)) = ranges.split_first() else {
        return;
    };
    let (_, partials) = rayon::join(
        || rows::rows_axpy(out, n, x, k, w, w_row, r0, r1),
        || {
            rest.par_iter()
                .map(|&(r0, r1)| {
                    let mut acc = vec![0f32; m * n];
                    rows::rows_axpy(&mut acc, n, x, k, w, w_row, r0, r1);
                    acc
                })
                .collect::<Vec<_>>()
        },
    );
    for p in &partials {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
}

/// `out [m, n] += x [m, k] · w [k, n]` for a few rows and a transposed `w` (column j contiguous at
/// `w[j · w_col ..][..k]`, e.g. a tied embedding `Eᵀ`): blocks of 256 columns dealt to the threads, each a dot
/// product per (row, column) with the column read from L1 for every row.
pub(crate) fn few_rows_dot(
    out: &mut [f32],
    x: &[f32],
    k: usize,
    w: &[f32],
    w_col: usize,
    n: usize,
) {
    const BLOCK: usize = 256;
    let m = out.len() / n.max(1);
    let blocks: Vec<Vec<f32>> = (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .map(|p| {
            let (c0, c1) = (p * BLOCK, ((p + 1) * BLOCK).min(n));
            let width = c1 - c0;
            let mut o = vec![0f32; m * width];
            rows::rows_dot_columns(&mut o, width, x, k, &w[c0 * w_col..], w_col, width);
            o
        })
        .collect();
    for (p, o) in blocks.iter().enumerate() {
        let (c0, width) = (p * BLOCK, o.len() / m);
        for i in 0..m {
            let row = &mut out[i * n + c0..i * n + c0 + width];
            for (r, v) in row.iter_mut().zip(&o[i * width..(i + 1) * width]) {
                *r += v;
            }
        }
    }
}

/// `lhs [m, k] · rhs [k, n] (+ bias [n])` for f32 rank-2 tensors with `k > 0`, or the inputs back.
#[allow(clippy::type_complexity)]
pub(crate) fn matmul(
    lhs: FlexTensor,
    rhs: FlexTensor,
    bias: Option<FlexTensor>,
) -> Result<FlexTensor, (FlexTensor, FlexTensor, Option<FlexTensor>)> {
    let (ls, rs) = (lhs.shape(), rhs.shape());
    let fits = lhs.dtype() == DType::F32
        && rhs.dtype() == DType::F32
        && ls.num_dims() == 2
        && rs.num_dims() == 2
        && ls[1] == rs[0]
        && ls.num_elements() > 0
        && rs.num_elements() > 0
        && bias.as_ref().is_none_or(|b| {
            b.dtype() == DType::F32 && b.shape().num_dims() == 1 && b.shape()[0] == rs[1]
        });
    if !fits {
        return Err((lhs, rhs, bias));
    }
    let (m, k, n) = (ls[0], ls[1], rs[1]);
    let (a, b) = (Mat::of(&lhs), Mat::of(&rhs));
    let len = m
        .checked_mul(n)
        .expect("an m × n output that fits in memory");
    // The bias rows the product accumulates onto (none: the product overwrites).
    let bias_rows = bias.map(|bias| {
        let bias = bias.to_contiguous();
        bias.storage::<f32>()[..n].repeat(m)
    });
    let row_major = b.cs == 1 && b.rs >= n as isize;
    let transposed = b.rs == 1 && b.cs >= k as isize;
    if m <= FEW_ROWS && (row_major || transposed) {
        // A decode step: the weight read once in place over the threads (gemm would pack all of it on one thread).
        let mut out = bias_rows.unwrap_or_else(|| vec![0f32; len]);
        let x = lhs.to_contiguous();
        let x: &[f32] = &x.storage::<f32>()[..m * k];
        let w: &[f32] = &rhs.storage::<f32>()[rhs.layout().start_offset()..];
        if row_major {
            few_rows(&mut out, x, k, w, b.rs as usize, n);
        } else {
            few_rows_dot(&mut out, x, k, w, b.cs as usize, n);
        }
        return Ok(FlexTensor::from_data(TensorData::new(out, vec![m, n])));
    }
    let accumulate = bias_rows.is_some();
    let mut out: Vec<f32> = bias_rows.unwrap_or_else(|| Vec::with_capacity(len));
    let dst = out.as_mut_ptr() as usize;
    let threads = rayon::current_num_threads();
    let ops = m.saturating_mul(n).saturating_mul(k);
    // Split the longer side of the output: each part then re-packs the other operand's shorter side.
    let (long, by_rows) = if m >= n { (m, true) } else { (n, false) };
    let parts = threads.min(long / MIN_PART).max(1);
    if ops < PARALLEL_OPS || parts == 1 {
        // SAFETY: a, b address the inputs' m×k and k×n matrices (their layouts); out has room for m×n.
        unsafe { gemm_part(m, n, k, dst as *mut f32, n, a, b, accumulate) };
    } else {
        cuts(long, parts).into_par_iter().for_each(|(p0, p1)| {
            // SAFETY: as above; the parts write disjoint rows (or columns) of out.
            unsafe {
                if by_rows {
                    let d = (dst as *mut f32).add(p0 * n);
                    gemm_part(p1 - p0, n, k, d, n, a.at(p0, 0), b, accumulate);
                } else {
                    let d = (dst as *mut f32).add(p0);
                    gemm_part(m, p1 - p0, k, d, n, a, b.at(0, p0), accumulate);
                }
            }
        });
    }
    // SAFETY: every element of the m×n output was written (the bias rows, or gemm with accumulate off).
    unsafe { out.set_len(len) };
    drop((lhs, rhs));
    Ok(FlexTensor::from_data(TensorData::new(out, vec![m, n])))
}

#[cfg(test)]
mod tests {
    use super::cuts;

    #[test]
    fn cuts_cover_the_range_once() {
        for len in [1, 31, 64, 100, 2048, 50265] {
            for parts in 1..=5 {
                let c = cuts(len, parts);
                assert_eq!(c.first().unwrap().0, 0);
                assert_eq!(c.last().unwrap().1, len);
                assert!(c.windows(2).all(|w| w[0].1 == w[1].0));
            }
        }
    }
}
