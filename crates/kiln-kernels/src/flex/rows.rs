//! Row passes that the compiler vectorises: `exp` as a polynomial (Cephes' `expf`: range reduction by ln 2, a
//! degree-6 polynomial, the power of two put in the exponent bits; ≤ 2 ulp on [−87, 88]) instead of one libm call
//! per element, and the softmax rows of the attention kernels built on it. Each entry is compiled three times —
//! AVX-512, AVX2 + FMA and the baseline — and picked at run time (`is_x86_feature_detected!`).

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two so that `n · C1` is exact for the n that occur.
const C1: f32 = 0.693_359_4;
const C2: f32 = -2.121_944_4e-4;
/// Above this `exp` gives e^88 (so that the power of two stays finite); the kernels only take `exp` of values
/// ≤ 0 (softmax after the max, `e^(−z²)`, `e^(−2|u|)`).
const HI: f32 = 88.0;
/// Below this `exp` gives 0 (the power-of-two construction needs n ≥ −126).
const LO: f32 = -87.336_55;

/// `e^x` for one element, written so that a loop over a slice vectorises: no branch, no call, no saturating
/// float-to-int conversion (the compiler scalarises those). Values below −87.3 give 0 (the true value is
/// < 1.2e-38); NaN stays NaN.
#[inline(always)]
fn exp(x: f32) -> f32 {
    // `max`/`min` turn a NaN into a bound, so the conversions below never see one.
    let xc = x.max(LO).min(HI);
    let f = xc * LOG2E + 0.5;
    // floor(f), f in [−125.5, 127.5]: truncate, then step down below 0.
    // SAFETY: f is finite and far inside i32's range.
    let t = unsafe { f.to_int_unchecked::<i32>() } as f32;
    let n = if t > f { t - 1.0 } else { t };
    let r = xc - n * C1 - n * C2;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let y = p * r * r + r + 1.0;
    // SAFETY: n is an integer in [−126, 127].
    let e = unsafe { n.to_int_unchecked::<i32>() } + 127;
    let v = y * f32::from_bits((e as u32) << 23);
    let v = if x < LO { 0.0 } else { v };
    if x.is_nan() {
        x
    } else {
        v
    }
}

/// Lanes for the reductions: a float sum or max in one accumulator is a serial chain the compiler may not
/// reorder (and so does not vectorise); sixteen independent accumulators it does.
const LANES: usize = 16;

#[inline(always)]
fn lane_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    let m = tail
        .iter()
        .fold(f32::NEG_INFINITY, |a, &v| if v > a { v } else { a });
    acc.iter().fold(m, |a, &v| if v > a { v } else { a })
}

#[inline(always)]
fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

#[inline(always)]
fn lane_dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (cx, cy) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    let tail: f32 = cx
        .remainder()
        .iter()
        .zip(cy.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in cx.zip(cy) {
        for ((s, &u), &v) in acc.iter_mut().zip(a).zip(b) {
            *s += u * v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// One softmax row of the forward pass, in place: `x ← softmax(x · scale + bias)`; returns the row's
/// log-sum-exp. `bias` is `None` (no bias), or a slice read at `j · stride` (stride 0 broadcasts one value).
/// A row whose every entry is −∞ gets probabilities 0 and log-sum-exp −∞; a NaN anywhere makes the row NaN.
#[inline(always)]
fn softmax_row_body(x: &mut [f32], bias: Option<(&[f32], usize)>, scale: f32) -> f32 {
    let n = x.len();
    match bias {
        Some((b, 1)) => x.iter_mut().zip(&b[..n]).for_each(
            #[inline(always)]
            |(x, b)| *x = *x * scale + b,
        ),
        Some((b, s)) => x.iter_mut().enumerate().for_each(
            #[inline(always)]
            |(j, x)| *x = *x * scale + b[j * s],
        ),
        None => x.iter_mut().for_each(
            #[inline(always)]
            |x| *x *= scale,
        ),
    }
    // The max skips NaN; a NaN then reaches the sum through `exp`.
    let m = lane_max(x);
    if m == f32::NEG_INFINITY {
        let fill = if x.iter().any(|v| v.is_nan()) {
            f32::NAN
        } else {
            0.0
        };
        x.fill(fill);
        return if fill == 0.0 {
            f32::NEG_INFINITY
        } else {
            f32::NAN
        };
    }
    x.iter_mut().for_each(
        #[inline(always)]
        |v| *v = exp(*v - m),
    );
    let sum = lane_sum(x);
    if sum.is_nan() {
        x.fill(f32::NAN);
        return f32::NAN;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(
        #[inline(always)]
        |v| *v *= inv,
    );
    m + sum.ln()
}

/// The backward pass's row, in place, from the recomputed scores `s` (`q·kᵀ`, unscaled) and the output
/// gradient's product `dp` (`dO·vᵀ`): `p = exp(s · scale + bias − lse)`, then
/// `dp ← p ∘ (dp − Σⱼ pⱼ dpⱼ)` (the scores' gradient, unscaled; `Σⱼ pⱼ dpⱼ` equals `dO·O`). `s` is left
/// holding `p` (for dv).
#[inline(always)]
fn softmax_grad_row_body(
    s: &mut [f32],
    dp: &mut [f32],
    bias: Option<(&[f32], usize)>,
    scale: f32,
    lse: f32,
) {
    if lse == f32::NEG_INFINITY {
        s.fill(0.0);
        dp.fill(0.0);
        return;
    }
    let n = s.len();
    match bias {
        Some((b, 1)) => s.iter_mut().zip(&b[..n]).for_each(
            #[inline(always)]
            |(x, b)| *x = exp(*x * scale + b - lse),
        ),
        Some((b, st)) => s.iter_mut().enumerate().for_each(
            #[inline(always)]
            |(j, x)| *x = exp(*x * scale + b[j * st] - lse),
        ),
        None => s.iter_mut().for_each(
            #[inline(always)]
            |x| *x = exp(*x * scale - lse),
        ),
    }
    let d = lane_dot(s, dp);
    s.iter().zip(dp.iter_mut()).for_each(
        #[inline(always)]
        |(p, g)| *g = p * (*g - d),
    );
}

macro_rules! multiversion {
    ($(#[$doc:meta])* pub fn $name:ident = $body:ident($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                if *HAS_AVX512 {
                    // SAFETY: the CPU has AVX-512F (checked at run time).
                    return unsafe { avx512($($arg),*) };
                }
                if *HAS_AVX2 {
                    // SAFETY: the CPU has AVX2 and FMA (checked at run time).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

#[cfg(target_arch = "x86_64")]
static HAS_AVX512: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::arch::is_x86_feature_detected!("avx512f"));
#[cfg(target_arch = "x86_64")]
static HAS_AVX2: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
});

multiversion! {
    /// [`softmax_row_body`] on the widest vectors the CPU has.
    pub fn softmax_row = softmax_row_body(x: &mut [f32], bias: Option<(&[f32], usize)>, scale: f32) -> f32
}

multiversion! {
    /// [`softmax_grad_row_body`] on the widest vectors the CPU has.
    pub fn softmax_grad_row = softmax_grad_row_body(
        s: &mut [f32],
        dp: &mut [f32],
        bias: Option<(&[f32], usize)>,
        scale: f32,
        lse: f32
    ) -> ()
}

#[inline(always)]
fn log_sum_exp_body(x: &[f32]) -> f32 {
    let m = lane_max(x);
    if m == f32::NEG_INFINITY {
        return if x.iter().any(|v| v.is_nan()) {
            f32::NAN
        } else {
            f32::NEG_INFINITY
        };
    }
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&v| exp(v - m)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += exp(v - m);
        }
    }
    m + (acc.iter().sum::<f32>() + tail).ln()
}

multiversion! {
    /// `ln Σ eˣ` of a row (max-shifted), on the widest vectors the CPU has; NaN if the row has one.
    pub fn log_sum_exp = log_sum_exp_body(x: &[f32]) -> f32
}

#[inline(always)]
fn scaled_exp_body(out: &mut [f32], x: &[f32], shift: f32, mul: f32) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = mul * exp(v - shift);
    }
}

multiversion! {
    /// `out ← mul · e^(x − shift)` elementwise, on the widest vectors the CPU has.
    pub fn scaled_exp = scaled_exp_body(out: &mut [f32], x: &[f32], shift: f32, mul: f32) -> ()
}

/// `acc [M, n] += x[.., r0..r1] · w[r0..r1, ..n]` (see [`rows_axpy`]) for a fixed row count: eight weight rows
/// at a time (eight sequential streams), each vector of those rows loaded once and used for all M input rows.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rows_axpy_m<const M: usize>(
    acc: &mut [f32],
    n: usize,
    x: &[f32],
    k: usize,
    w: &[f32],
    w_row: usize,
    r0: usize,
    r1: usize,
) {
    let mut c = r0;
    while c + 8 <= r1 {
        let wr: [&[f32]; 8] = std::array::from_fn(|r| &w[(c + r) * w_row..(c + r) * w_row + n]);
        let a: [[f32; 8]; M] = std::array::from_fn(|i| std::array::from_fn(|r| x[i * k + c + r]));
        let mut rows = acc.chunks_exact_mut(n);
        let out: [&mut [f32]; M] = std::array::from_fn(|_| rows.next().expect("M rows"));
        for j in 0..n {
            let wv: [f32; 8] = std::array::from_fn(|r| wr[r][j]);
            for i in 0..M {
                let mut s = out[i][j];
                for r in 0..8 {
                    s += a[i][r] * wv[r];
                }
                out[i][j] = s;
            }
        }
        c += 8;
    }
    for c in c..r1 {
        let w0 = &w[c * w_row..c * w_row + n];
        for i in 0..M {
            let a = x[i * k + c];
            for (o, &v) in acc[i * n..(i + 1) * n].iter_mut().zip(w0) {
                *o += a * v;
            }
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rows_axpy_body(
    acc: &mut [f32],
    n: usize,
    x: &[f32],
    k: usize,
    w: &[f32],
    w_row: usize,
    r0: usize,
    r1: usize,
) {
    // Blocks of up to eight rows, each a register-blocked pass over w (no recursion: this body must inline into
    // the target-feature variants of `rows_axpy`).
    let m = acc.len() / n.max(1);
    for i0 in (0..m).step_by(8) {
        let rows = (m - i0).min(8);
        let (acc, x) = (
            &mut acc[i0 * n..(i0 + rows) * n],
            &x[i0 * k..(i0 + rows) * k],
        );
        by_rows!(rows, rows_axpy_m(acc, n, x, k, w, w_row, r0, r1))
    }
}

multiversion! {
    /// `acc [m, n] += x[.., r0..r1] · w[r0..r1, ..n]` for a few rows `x [m, k]` (contiguous) and a row-major
    /// matrix `w` (rows `w_row` apart): the rows r0..r1 of `w` read once, in order, with no packing — a decode
    /// step's product, bound by memory bandwidth. Threads take disjoint row ranges into their own accumulators.
    /// (More than 8 rows are taken 8 at a time, each block re-reading `w`.)
    pub fn rows_axpy_portable = rows_axpy_body(
        acc: &mut [f32],
        n: usize,
        x: &[f32],
        k: usize,
        w: &[f32],
        w_row: usize,
        r0: usize,
        r1: usize
    ) -> ()
}

#[inline(always)]
fn rows_dot_columns_body(
    out: &mut [f32],
    n_out: usize,
    x: &[f32],
    k: usize,
    w: &[f32],
    w_col: usize,
    cols: usize,
) {
    // out[i, j] = x[i, ..] · w[.., j], column j contiguous at w[j · w_col ..][..k] (read from L1 for every row).
    let m = x.len() / k.max(1);
    for j in 0..cols {
        let col = &w[j * w_col..j * w_col + k];
        for i in 0..m {
            out[i * n_out + j] = lane_dot(&x[i * k..(i + 1) * k], col);
        }
    }
}

multiversion! {
    /// A few rows `x [m, k]` times columns that are contiguous in memory (a transposed matrix, e.g. a tied
    /// embedding `Eᵀ`), into `out[i * n_out + j]` for j < cols.
    pub fn rows_dot_columns_portable = rows_dot_columns_body(
        out: &mut [f32],
        n_out: usize,
        x: &[f32],
        k: usize,
        w: &[f32],
        w_col: usize,
        cols: usize
    ) -> ()
}

/// `acc [m, n] += x[.., r0..r1] · w[r0..r1, ..n]` for a few rows `x [m, k]` (contiguous) and a row-major `w`
/// (rows `w_row` apart): AVX-512 intrinsics where the CPU has them (`decode512`), else [`rows_axpy_portable`].
#[allow(clippy::too_many_arguments)]
pub fn rows_axpy(
    acc: &mut [f32],
    n: usize,
    x: &[f32],
    k: usize,
    w: &[f32],
    w_row: usize,
    r0: usize,
    r1: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if *HAS_AVX512 {
        // SAFETY: the CPU has AVX-512F (checked at run time); the extents are checked inside.
        return unsafe { super::decode512::rows_axpy(acc, n, x, k, w, w_row, r0, r1) };
    }
    rows_axpy_portable(acc, n, x, k, w, w_row, r0, r1)
}

/// A few rows `x [m, k]` times contiguous columns `w[j · w_col ..][..k]`, into `out[i · n_out + j]` for j < cols:
/// AVX-512 intrinsics where the CPU has them (`decode512`), else [`rows_dot_columns_portable`].
pub fn rows_dot_columns(
    out: &mut [f32],
    n_out: usize,
    x: &[f32],
    k: usize,
    w: &[f32],
    w_col: usize,
    cols: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if *HAS_AVX512 {
        // SAFETY: the CPU has AVX-512F (checked at run time); the extents are checked inside.
        return unsafe { super::decode512::rows_dot_columns(out, n_out, x, k, w, w_col, cols) };
    }
    rows_dot_columns_portable(out, n_out, x, k, w, w_col, cols)
}

/// One AdamW update's per-element constants (see `flex::adamw_step`).
#[derive(Clone, Copy, Debug)]
pub struct AdamWConsts {
    pub b1: f32,
    pub b2: f32,
    pub f1: f32,
    pub f2: f32,
    pub c1: f32,
    pub c2: f32,
    pub eps: f32,
    /// `1 − lr·λ`, or `None` without weight decay.
    pub keep: Option<f32>,
    pub lr: f32,
}

#[inline(always)]
fn adamw_elem(pv: f32, mv: f32, vv: f32, g: f32, k: &AdamWConsts) -> (f32, f32, f32) {
    let mi = mv * k.b1 + g * k.f1;
    let vi = vv * k.b2 + g * g * k.f2;
    let delta = (mi / k.c1) / ((vi / k.c2).sqrt() + k.eps);
    let pv = match k.keep {
        Some(keep) => pv * keep,
        None => pv,
    };
    (pv - delta * k.lr, mi, vi)
}

/// The values before the update, when they are not read from the output buffers themselves.
pub type AdamWSources<'a> = Option<(&'a [f32], &'a [f32], &'a [f32])>;

#[inline(always)]
fn adamw_body(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    src: AdamWSources,
    k: AdamWConsts,
) {
    let n = p.len().min(m.len()).min(v.len()).min(g.len());
    let (p, m, v, g) = (&mut p[..n], &mut m[..n], &mut v[..n], &g[..n]);
    match src {
        // Shared buffers: read the old values there, write the new ones here.
        Some((ps, ms, vs)) => {
            let (ps, ms, vs) = (&ps[..n], &ms[..n], &vs[..n]);
            for i in 0..n {
                (p[i], m[i], v[i]) = adamw_elem(ps[i], ms[i], vs[i], g[i], &k);
            }
        }
        None => {
            for i in 0..n {
                (p[i], m[i], v[i]) = adamw_elem(p[i], m[i], v[i], g[i], &k);
            }
        }
    }
}

multiversion! {
    /// One AdamW update over a chunk of parameter, moments and gradient (in place, or from `src`), on the widest
    /// vectors the CPU has.
    pub fn adamw = adamw_body(
        p: &mut [f32],
        m: &mut [f32],
        v: &mut [f32],
        g: &[f32],
        src: AdamWSources,
        k: AdamWConsts
    ) -> ()
}

/// The normal CDF Φ(x) = ½·(1 + erf(x/√2)) with erf as PyTorch's vectorised CPU kernel computes it (Abramowitz &
/// Stegun 7.1.26: `erfc(z) = t·P(t)·e^(−z²)`, `t = 1 / (1 + 0.3275911·z)`, absolute error ≤ 1.5e-7), taking the
/// tail `½·erfc(|z|)` directly for x < 0 (no cancellation in `1 + erf`).
#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let p = 1.061_405_4_f32;
    let p = p * t - 1.453_152_1;
    let p = p * t + 1.421_413_8;
    let p = p * t - 0.284_496_74;
    let p = p * t + 0.254_829_6;
    let tail = 0.5 * p * t * exp(-z * z);
    if x < 0.0 {
        tail
    } else {
        1.0 - tail
    }
}

/// 1 / √(2π).
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;
/// √(2/π), the tanh form's inner factor.
const SQRT_2_PI: f32 = 0.797_884_6;
const GELU_CUBIC: f32 = 0.044_715;

/// For the tanh form: (½·(1 + tanh u), sech² u) from `e = e^(−2|u|)`, both without cancellation (the tails of
/// `1 + tanh` and `1 − tanh²` are what the gradient is made of for |u| ≳ 8).
#[inline(always)]
fn half_one_plus_tanh_and_sech2(u: f32) -> (f32, f32) {
    let e = exp(-2.0 * u.abs());
    let r = 1.0 / (1.0 + e);
    let half = if u < 0.0 { e * r } else { r };
    (half, 4.0 * e * r * r)
}

// GELU and its gradient as index loops over slices cut to one length: an iterator chain's `for_each` (a
// three-way zip for the gradient) was left out of line by the compiler, so it ran as baseline x86-64 code
// under the AVX-512 entry point (4.5% of a BERT adapters step in `perf`).
#[inline(always)]
fn gelu_body(y: &mut [f32], x: &[f32], tanh_form: bool) {
    let n = y.len().min(x.len());
    let (y, x) = (&mut y[..n], &x[..n]);
    if tanh_form {
        for i in 0..n {
            let v = x[i];
            let u = SQRT_2_PI * (v + GELU_CUBIC * v * v * v);
            y[i] = v * half_one_plus_tanh_and_sech2(u).0;
        }
    } else {
        for i in 0..n {
            let v = x[i];
            y[i] = v * normal_cdf(v);
        }
    }
}

#[inline(always)]
fn gelu_grad_body(dx: &mut [f32], dy: &[f32], x: &[f32], tanh_form: bool) {
    let n = dx.len().min(dy.len()).min(x.len());
    let (dx, dy, x) = (&mut dx[..n], &dy[..n], &x[..n]);
    if tanh_form {
        for i in 0..n {
            let v = x[i];
            let u = SQRT_2_PI * (v + GELU_CUBIC * v * v * v);
            let (half, sech2) = half_one_plus_tanh_and_sech2(u);
            let du = SQRT_2_PI * (1.0 + 3.0 * GELU_CUBIC * v * v);
            dx[i] = dy[i] * (half + 0.5 * v * sech2 * du);
        }
    } else {
        for i in 0..n {
            let v = x[i];
            dx[i] = dy[i] * (normal_cdf(v) + v * FRAC_1_SQRT_2PI * exp(-0.5 * v * v));
        }
    }
}

multiversion! {
    /// GELU elementwise, `y ← x · Φ(x)` (exact, erf) or the tanh form, on the widest vectors the CPU has.
    pub fn gelu = gelu_body(y: &mut [f32], x: &[f32], tanh_form: bool) -> ()
}

multiversion! {
    /// GELU's gradient elementwise, `dx ← dy · gelu′(x)`, on the widest vectors the CPU has.
    pub fn gelu_grad = gelu_grad_body(dx: &mut [f32], dy: &[f32], x: &[f32], tanh_form: bool) -> ()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 87.9 {
            let (a, b) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.001_37;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        let v: Vec<f32> = [0.5f32, -1.0, 10.0, f32::NEG_INFINITY, -200.0, f32::NAN, 0.0]
            .iter()
            .map(|&x| exp(x))
            .collect();
        assert_eq!(v[3], 0.0);
        assert_eq!(v[4], 0.0);
        assert!(v[5].is_nan());
        assert_eq!(v[6], 1.0);
        assert!((v[2] - 10f32.exp()).abs() / 10f32.exp() < 2.5e-7);
    }

    #[test]
    fn gelu_matches_the_libm_formula() {
        let xs: Vec<f32> = (-4000..4000).map(|i| i as f32 * 0.0025).collect();
        for tanh_form in [false, true] {
            let (mut y, mut dx) = (vec![0f32; xs.len()], vec![0f32; xs.len()]);
            gelu(&mut y, &xs, tanh_form);
            gelu_grad(&mut dx, &vec![1.0; xs.len()], &xs, tanh_form);
            for ((&x, &y), &d) in xs.iter().zip(&y).zip(&dx) {
                let x64 = x as f64;
                let (want, dwant) = if tanh_form {
                    let c = (2.0 / std::f64::consts::PI).sqrt();
                    let t = (c * (x64 + 0.044715 * x64.powi(3))).tanh();
                    let du = c * (1.0 + 3.0 * 0.044715 * x64 * x64);
                    (
                        0.5 * x64 * (1.0 + t),
                        0.5 * (1.0 + t) + 0.5 * x64 * (1.0 - t * t) * du,
                    )
                } else {
                    let cdf = 0.5 * (1.0 + libm::erf(x64 / std::f64::consts::SQRT_2));
                    let pdf = (-0.5 * x64 * x64).exp() / (2.0 * std::f64::consts::PI).sqrt();
                    (x64 * cdf, cdf + x64 * pdf)
                };
                assert!(
                    (y as f64 - want).abs() < 1e-6,
                    "gelu({x}) = {y}, want {want}"
                );
                assert!(
                    (d as f64 - dwant).abs() < 1e-6,
                    "gelu'({x}) = {d}, want {dwant}"
                );
            }
        }
    }

    #[test]
    fn softmax_rows_cover_masked_and_nan_rows() {
        let mut x = vec![1.0f32, 2.0, 3.0];
        let lse = softmax_row(&mut x, None, 1.0);
        let want = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
        assert!((lse - want).abs() < 1e-6);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let mut x = vec![0.0f32; 4];
        let bias = [f32::NEG_INFINITY];
        assert_eq!(
            softmax_row(&mut x, Some((&bias, 0)), 1.0),
            f32::NEG_INFINITY
        );
        assert_eq!(x, vec![0.0; 4]);
        let mut x = vec![0.0f32, f32::NAN];
        assert!(softmax_row(&mut x, None, 1.0).is_nan());
        assert!(x.iter().all(|v| v.is_nan()));
    }

    /// The dispatched products (AVX-512 intrinsics on this CPU where it has them) against the portable ones, on
    /// ragged shapes: row counts 1–11 (blocks of eight and a rest), widths not a multiple of 16, weight row ranges
    /// that start and end off the sixteen-row passes, and padded row strides.
    #[test]
    fn decode_products_equal_the_portable_ones() {
        let val = |i: usize, salt: usize| ((i * 7919 + salt * 104_729) % 1000) as f32 / 500.0 - 1.0;
        for m in [1usize, 2, 3, 5, 8, 11] {
            for (k, n, r0, r1, pad) in [
                (40usize, 37usize, 3usize, 38usize, 5usize),
                (64, 16, 0, 64, 0),
                (33, 50, 0, 33, 3),
            ] {
                let x: Vec<f32> = (0..m * k).map(|i| val(i, 1)).collect();
                let w_row = n + pad;
                let w: Vec<f32> = (0..k * w_row).map(|i| val(i, 2)).collect();
                let init: Vec<f32> = (0..m * n).map(|i| val(i, 3)).collect();
                let (mut a, mut b) = (init.clone(), init.clone());
                rows_axpy(&mut a, n, &x, k, &w, w_row, r0, r1);
                rows_axpy_portable(&mut b, n, &x, k, &w, w_row, r0, r1);
                let d = a
                    .iter()
                    .zip(&b)
                    .map(|(u, v)| (u - v).abs())
                    .fold(0f32, f32::max);
                assert!(d < 1e-5, "rows_axpy m={m} k={k} n={n}: {d}");
                // Columns: w read as n columns of length k, `w_col` = k + pad apart.
                let w_col = k + pad;
                let wc: Vec<f32> = (0..n * w_col).map(|i| val(i, 4)).collect();
                let n_out = n + 2;
                let (mut a, mut b) = (vec![9f32; m * n_out], vec![9f32; m * n_out]);
                rows_dot_columns(&mut a, n_out, &x, k, &wc, w_col, n);
                rows_dot_columns_portable(&mut b, n_out, &x, k, &wc, w_col, n);
                let d = a
                    .iter()
                    .zip(&b)
                    .map(|(u, v)| (u - v).abs())
                    .fold(0f32, f32::max);
                assert!(d < 1e-5, "rows_dot_columns m={m} k={k} n={n}: {d}");
            }
        }
    }
}
