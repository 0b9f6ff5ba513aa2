//! The decode step's two products written out in AVX-512 intrinsics (the auto-vectorised versions in `rows`
//! remain for AVX2 and the baseline). Both are bound by the weight stream for one input row; with several rows
//! (beam search) the compiler's versions became bound by their own instructions instead — separate multiply and
//! add (Rust does not contract `a * b + c`), eight dependent adds per accumulator, broadcasts spilled to the
//! stack, and for the transposed product one dot product (a chain of 48 dependent adds) per row and column.
//! Here every accumulator is a fused multiply-add chain with a partner, and each loaded weight vector serves
//! every input row.
//!
//! The entry points check the slices' extents once; they are `unsafe` only because they need AVX-512F, which
//! their callers in `rows` check (its run-time detection, shared with the other row passes). Tests: the portable versions against these on ragged shapes (`rows::tests`).

use std::arch::x86_64::*;

/// Weight rows per pass of [`rows_axpy`]: the accumulators of the input rows are loaded and stored once per
/// sixteen weight rows (half as often as with eight; measured 1.3–2× on five rows with 3072 columns).
const R: usize = 16;

/// The lanes below `rem` (all sixteen when `rem ≥ 16`).
#[inline(always)]
fn mask(rem: usize) -> __mmask16 {
    if rem >= 16 {
        0xffff
    } else {
        ((1u32 << rem) - 1) as __mmask16
    }
}

/// `acc[i, j] += Σ_r x[i, c + r] · w[c + r, j]` for r < RR, all j < n, M input rows.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn axpy_pass<const M: usize, const RR: usize>(
    acc: *mut f32,
    n: usize,
    x: *const f32,
    k: usize,
    w: *const f32,
    w_row: usize,
    c: usize,
) {
    let xs: [[f32; RR]; M] =
        std::array::from_fn(|i| std::array::from_fn(|r| *x.add(i * k + c + r)));
    let wp = w.add(c * w_row);
    let mut j = 0;
    while j < n {
        let m = mask(n - j);
        let wv: [__m512; RR] =
            std::array::from_fn(|r| _mm512_maskz_loadu_ps(m, wp.add(r * w_row + j)));
        for (i, xi) in xs.iter().enumerate() {
            let o = acc.add(i * n + j);
            let mut s0 = _mm512_maskz_loadu_ps(m, o);
            let mut s1 = _mm512_setzero_ps();
            let mut r = 0;
            while r + 1 < RR {
                s0 = _mm512_fmadd_ps(_mm512_set1_ps(xi[r]), wv[r], s0);
                s1 = _mm512_fmadd_ps(_mm512_set1_ps(xi[r + 1]), wv[r + 1], s1);
                r += 2;
            }
            if RR % 2 == 1 {
                s0 = _mm512_fmadd_ps(_mm512_set1_ps(xi[RR - 1]), wv[RR - 1], s0);
            }
            _mm512_mask_storeu_ps(o, m, _mm512_add_ps(s0, s1));
        }
        j += 16;
    }
}

#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn axpy_m<const M: usize>(
    acc: *mut f32,
    n: usize,
    x: *const f32,
    k: usize,
    w: *const f32,
    w_row: usize,
    r0: usize,
    r1: usize,
) {
    let mut c = r0;
    while c + R <= r1 {
        axpy_pass::<M, R>(acc, n, x, k, w, w_row, c);
        c += R;
    }
    while c < r1 {
        axpy_pass::<M, 1>(acc, n, x, k, w, w_row, c);
        c += 1;
    }
}

/// `acc [m, n] += x[.., r0..r1] · w[r0..r1, ..n]`, as `rows::rows_axpy`.
///
/// # Safety
/// The CPU has AVX-512F (the extents are checked).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn rows_axpy(
    acc: &mut [f32],
    n: usize,
    x: &[f32],
    k: usize,
    w: &[f32],
    w_row: usize,
    r0: usize,
    r1: usize,
) {
    let m = acc.len() / n.max(1);
    assert!(x.len() >= m * k && r1 <= k, "rows_axpy: x too short");
    assert!(
        r1 <= r0 || w.len() >= (r1 - 1) * w_row + n,
        "rows_axpy: w too short"
    );
    for i0 in (0..m).step_by(8) {
        let rows = (m - i0).min(8);
        let (a, xp, wp) = (
            acc.as_mut_ptr().add(i0 * n),
            x.as_ptr().add(i0 * k),
            w.as_ptr(),
        );
        by_rows!(rows, axpy_m(a, n, xp, k, wp, w_row, r0, r1))
    }
}

/// `out[i · n_out + j0 + c] = x_i · w[(j0 + c) · w_col ..][..k]` for c < C: C columns streamed together, each
/// loaded vector of a column used for all M rows, M·C independent accumulators.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_block<const M: usize, const C: usize>(
    out: *mut f32,
    n_out: usize,
    x: *const f32,
    k: usize,
    w: *const f32,
    w_col: usize,
    j0: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); C]; M];
    let mut p = 0;
    while p < k {
        let m = mask(k - p);
        let wv: [__m512; C] =
            std::array::from_fn(|c| _mm512_maskz_loadu_ps(m, w.add((j0 + c) * w_col + p)));
        for (i, a) in acc.iter_mut().enumerate() {
            let xv = _mm512_maskz_loadu_ps(m, x.add(i * k + p));
            for c in 0..C {
                a[c] = _mm512_fmadd_ps(xv, wv[c], a[c]);
            }
        }
        p += 16;
    }
    for (i, a) in acc.iter().enumerate() {
        for (c, &v) in a.iter().enumerate() {
            *out.add(i * n_out + j0 + c) = _mm512_reduce_add_ps(v);
        }
    }
}

#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_m<const M: usize>(
    out: *mut f32,
    n_out: usize,
    x: *const f32,
    k: usize,
    w: *const f32,
    w_col: usize,
    cols: usize,
) {
    // Four columns for one or two rows (eight accumulators), two for more (up to sixteen).
    let mut j = 0;
    if M <= 2 {
        while j + 4 <= cols {
            dot_block::<M, 4>(out, n_out, x, k, w, w_col, j);
            j += 4;
        }
    } else {
        while j + 2 <= cols {
            dot_block::<M, 2>(out, n_out, x, k, w, w_col, j);
            j += 2;
        }
    }
    while j < cols {
        dot_block::<M, 1>(out, n_out, x, k, w, w_col, j);
        j += 1;
    }
}

/// `out[i · n_out + j] = x_i · w[j · w_col ..][..k]` for j < cols, as `rows::rows_dot_columns`.
///
/// # Safety
/// The CPU has AVX-512F (the extents are checked).
pub(crate) unsafe fn rows_dot_columns(
    out: &mut [f32],
    n_out: usize,
    x: &[f32],
    k: usize,
    w: &[f32],
    w_col: usize,
    cols: usize,
) {
    if k == 0 || cols == 0 {
        return;
    }
    let m = x.len() / k;
    assert!(
        m == 0 || out.len() >= (m - 1) * n_out + cols,
        "rows_dot_columns: out too short"
    );
    assert!(
        w.len() >= (cols - 1) * w_col + k,
        "rows_dot_columns: w too short"
    );
    for i0 in (0..m).step_by(8) {
        let rows = (m - i0).min(8);
        let (o, xp, wp) = (
            out.as_mut_ptr().add(i0 * n_out),
            x.as_ptr().add(i0 * k),
            w.as_ptr(),
        );
        by_rows!(rows, dot_m(o, n_out, xp, k, wp, w_col, cols))
    }
}
