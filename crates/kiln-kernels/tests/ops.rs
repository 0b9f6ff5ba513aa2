//! kiln-kernels' fused ops against burn's decomposed chains through burn's autodiff, on flex (the kernels) and ndarray (the
//! composed defaults inside the custom node). Cross-entropy (`log_softmax` + `gather`): loss rows and the gradient
//! with ignored rows, the untracked path, targets outside the vocabulary. LayerNorm and RMSNorm: y, dx, dgamma, dbeta.

use burn::backend::{Autodiff, Flex, NdArray};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::TensorPrimitive;
use kiln_kernels::{cross_entropy, KernelOps, TargetError};

/// Deterministic logits with a spread like a language model head's (a few large values per row).
fn logits_data(n: usize, v: usize) -> TensorData {
    let x: Vec<f32> = (0..n * v)
        .map(|i| {
            let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            (h as f32 / (1u64 << 24) as f32 - 0.5) * 8.0 + if i % 97 == 0 { 6.0 } else { 0.0 }
        })
        .collect();
    TensorData::new(x, [n, v])
}

fn targets(n: usize, v: usize) -> Vec<i64> {
    (0..n)
        .map(|r| {
            if r % 5 == 3 {
                -100
            } else {
                ((r * 7919) % v) as i64
            }
        })
        .collect()
}

/// Row weights, so that every row's gradient is checked with its own scale.
fn weights(n: usize) -> Vec<f32> {
    (0..n).map(|r| 0.5 + (r % 7) as f32 * 0.25).collect()
}

fn reference<B: Backend>(x: Tensor<B, 2>, t: &[i64]) -> Tensor<B, 1> {
    let [n, _] = x.dims();
    let dev = x.device();
    let idx: Vec<i64> = t.iter().map(|&t| t.max(0)).collect();
    let keep: Vec<f32> = t.iter().map(|&t| (t >= 0) as u8 as f32).collect();
    let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(idx, [n, 1]), &dev);
    let keep = Tensor::<B, 1>::from_data(TensorData::new(keep, [n]), &dev);
    log_softmax(x, 1).gather(1, idx).reshape([n]).neg() * keep
}

fn vec1<B: Backend>(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / scale
}

fn check<B: KernelOps>(n: usize, v: usize)
where
    Autodiff<B>: KernelOps,
{
    let dev: burn::tensor::Device<Autodiff<B>> = Default::default();
    let t = targets(n, v);
    let w = Tensor::<Autodiff<B>, 1>::from_data(TensorData::new(weights(n), [n]), &dev);

    let x = Tensor::<Autodiff<B>, 2>::from_data(logits_data(n, v), &dev).require_grad();
    let fused = cross_entropy(x.clone(), &t).unwrap();
    let fused_rows = vec1(fused.clone().inner());
    let g = (fused * w.clone()).sum().backward();
    let gx = x
        .grad(&g)
        .unwrap()
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap();

    let y = Tensor::<Autodiff<B>, 2>::from_data(logits_data(n, v), &dev).require_grad();
    let refr = reference(y.clone(), &t);
    let ref_rows = vec1(refr.clone().inner());
    let g = (refr * w).sum().backward();
    let gy = y
        .grad(&g)
        .unwrap()
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap();

    let e = rel_err(&fused_rows, &ref_rows);
    assert!(
        e <= 1e-5,
        "{} [{n}, {v}] loss rows: relative error {e}",
        std::any::type_name::<B>()
    );
    for (r, &tr) in t.iter().enumerate() {
        if tr < 0 {
            assert_eq!(fused_rows[r], 0.0);
            assert!(
                gx[r * v..(r + 1) * v].iter().all(|&g| g == 0.0),
                "ignored row {r} got a gradient"
            );
        }
    }
    let e = rel_err(&gx, &gy);
    assert!(
        e <= 1e-4,
        "{} [{n}, {v}] gradient: relative error {e}",
        std::any::type_name::<B>()
    );
}

#[test]
fn fused_cross_entropy_equals_the_decomposed_chain_on_flex() {
    check::<Flex>(23, 1000);
    check::<Flex>(9, 50_265); // BART's vocabulary
    check::<Flex>(1, 3);
}

#[test]
fn fused_cross_entropy_equals_the_decomposed_chain_on_ndarray() {
    check::<NdArray>(23, 1000);
    check::<NdArray>(1, 3);
}

#[test]
fn untracked_logits_and_inference_backends_give_the_same_rows() {
    let n = 12;
    let v = 300;
    let t = targets(n, v);
    let on_flex = vec1(
        cross_entropy(
            Tensor::<Flex, 2>::from_data(logits_data(n, v), &Default::default()),
            &t,
        )
        .unwrap(),
    );
    let on_ndarray = vec1(
        cross_entropy(
            Tensor::<NdArray, 2>::from_data(logits_data(n, v), &Default::default()),
            &t,
        )
        .unwrap(),
    );
    // Logits that need no gradient through the autodiff backend take the untracked path.
    let untracked = vec1(
        cross_entropy(
            Tensor::<Autodiff<Flex>, 2>::from_data(logits_data(n, v), &Default::default()),
            &t,
        )
        .unwrap()
        .inner(),
    );
    assert!(rel_err(&on_flex, &on_ndarray) <= 1e-5);
    assert_eq!(on_flex, untracked);
}

#[test]
fn targets_outside_the_vocabulary_are_errors() {
    let x = Tensor::<Flex, 2>::from_data(logits_data(2, 5), &Default::default());
    assert_eq!(
        cross_entropy(x.clone(), &[1, 5]).unwrap_err(),
        TargetError::OutOfRange {
            row: 1,
            target: 5,
            vocab: 5
        }
    );
    assert_eq!(
        cross_entropy(x, &[1]).unwrap_err(),
        TargetError::Rows {
            rows: 2,
            targets: 1
        }
    );
}

// ------------------------------------------------------------------------------------------------ LayerNorm

fn ln_check<B: KernelOps>(dims: [usize; 3], centre: bool)
where
    Autodiff<B>: KernelOps,
{
    let dev: burn::tensor::Device<Autodiff<B>> = Default::default();
    let [a, b, d] = dims;
    let data = |n: usize, f: f32, off: f32| {
        (0..n)
            .map(|i| (i as f32 * f).sin() * 2.0 + off)
            .collect::<Vec<f32>>()
    };
    let x0 = TensorData::new(data(a * b * d, 0.37, 3.0), [a, b, d]);
    let g0 = TensorData::new(data(d, 1.3, 1.0), [d]);
    let b0 = TensorData::new(data(d, 0.7, 0.0), [d]);
    let w = Tensor::<Autodiff<B>, 3>::from_data(
        TensorData::new(data(a * b * d, 2.1, 0.0), [a, b, d]),
        &dev,
    );
    let run = |fused: bool| {
        let x = Tensor::<Autodiff<B>, 3>::from_data(x0.clone(), &dev).require_grad();
        let g = Tensor::<Autodiff<B>, 1>::from_data(g0.clone(), &dev).require_grad();
        let bb = Tensor::<Autodiff<B>, 1>::from_data(b0.clone(), &dev).require_grad();
        let bias = bb.clone().unsqueeze_dim::<2>(0).unsqueeze_dim::<3>(0);
        // RMSNorm (T5's) has no bias of its own: burn's add puts one after it, so dbeta is checked either way.
        let y = match (fused, centre) {
            (true, true) => kiln_kernels::layer_norm(x.clone(), g.clone(), bb.clone(), 1e-5),
            (true, false) => kiln_kernels::rms_norm(x.clone(), g.clone(), 1e-5) + bias,
            (false, _) => {
                let xc = if centre {
                    x.clone() - x.clone().mean_dim(2)
                } else {
                    x.clone()
                };
                let var = xc.clone().powi_scalar(2).mean_dim(2);
                xc / (var + 1e-5).sqrt() * g.clone().unsqueeze_dim::<2>(0).unsqueeze_dim::<3>(0)
                    + bias
            }
        };
        let yv: Vec<f32> = y.clone().inner().into_data().to_vec().unwrap();
        let grads = (y * w.clone()).sum().backward();
        let v = |t: Option<Tensor<B, 3>>| t.unwrap().into_data().to_vec::<f32>().unwrap();
        let v1 = |t: Option<Tensor<B, 1>>| t.unwrap().into_data().to_vec::<f32>().unwrap();
        (
            yv,
            v(x.grad(&grads)),
            v1(g.grad(&grads)),
            v1(bb.grad(&grads)),
        )
    };
    let (fy, fx, fg, fb) = run(true);
    let (ry, rx, rg, rb) = run(false);
    let name = format!("{} centre={centre}", std::any::type_name::<B>());
    assert!(
        rel_err(&fy, &ry) <= 1e-5,
        "{name} {dims:?} y: {}",
        rel_err(&fy, &ry)
    );
    for (what, f, r) in [("dx", &fx, &rx), ("dgamma", &fg, &rg), ("dbeta", &fb, &rb)] {
        let e = rel_err(f, r);
        assert!(e <= 1e-4, "{name} {dims:?} {what}: relative error {e}");
    }
}

#[test]
fn fused_layer_norm_and_rms_norm_equal_the_decomposed_chain() {
    for centre in [true, false] {
        ln_check::<Flex>([2, 3, 64], centre);
        ln_check::<Flex>([3, 50, 37], centre); // several rayon tasks, d not a multiple of 8
        ln_check::<Flex>([1, 130, 768], centre);
        ln_check::<NdArray>([2, 3, 64], centre);
    }
}

/// Deterministic values in [-scale/2, scale/2).
fn data4(dims: [usize; 4], seed: u64, scale: f32) -> TensorData {
    let n: usize = dims.iter().product();
    let x: Vec<f32> = (0..n as u64)
        .map(|i| {
            let h = (i.wrapping_add(seed.wrapping_mul(0x1234_5678_9ABC)))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                >> 40;
            (h as f32 / (1u64 << 24) as f32 - 0.5) * scale
        })
        .collect();
    TensorData::new(x, dims)
}

/// A padding mask (the last `r` keys of batch row r masked) plus, when `causal`, the causal constraint, as burn's
/// attention code builds it: `[b, 1, sq, sk]` with −1e9 on masked positions.
fn mask4(b: usize, sq: usize, sk: usize, causal: bool) -> TensorData {
    let mut m = vec![0f32; b * sq * sk];
    for r in 0..b {
        for i in 0..sq {
            for j in 0..sk {
                if j + r >= sk || (causal && j > i + (sk - sq)) {
                    m[(r * sq + i) * sk + j] = -1.0e9;
                }
            }
        }
    }
    TensorData::new(m, [b, 1, sq, sk])
}

fn vec4<B: Backend>(t: Tensor<B, 4>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// Fused attention vs burn's decomposed `softmax(q·kᵀ·s + bias)·v` through autodiff: output and every input's
/// gradient (a weighted sum of the output as the loss), with a padding (and causal) mask and, when `rel_bias`, a
/// trainable T5-style relative bias `[1, h, sq, sk]` added to the mask.
fn attn_check<B: KernelOps>(
    b: usize,
    h: usize,
    sq: usize,
    sk: usize,
    d: usize,
    causal: bool,
    rel_bias: bool,
) where
    B: burn::tensor::backend::AutodiffBackend,
{
    let dev = Default::default();
    let mk = |dims, seed, scale| {
        Tensor::<B, 4>::from_data(data4(dims, seed, scale), &dev).require_grad()
    };
    let q = mk([b, h, sq, d], 1, 2.0);
    let k = mk([b, h, sk, d], 2, 2.0);
    let v = mk([b, h, sk, d], 3, 1.0);
    let rb = mk([1, h, sq, sk], 4, 3.0);
    let mask = Tensor::<B, 4>::from_data(mask4(b, sq, sk, causal), &dev);
    let w = Tensor::<B, 4>::from_data(data4([b, h, sq, d], 5, 1.0), &dev);
    let scale = 1.0 / (d as f64).sqrt();
    let bias = |rb: Tensor<B, 4>| {
        if rel_bias {
            mask.clone() + rb
        } else {
            mask.clone()
        }
    };
    let fused = kiln_kernels::attention(
        q.clone(),
        k.clone(),
        v.clone(),
        Some(bias(rb.clone())),
        scale,
    );
    let reference = burn::tensor::activation::softmax(
        q.clone()
            .matmul(k.clone().swap_dims(2, 3))
            .mul_scalar(scale)
            + bias(rb.clone()),
        3,
    )
    .matmul(v.clone());
    let e = rel_err(&vec4(fused.clone()), &vec4(reference.clone()));
    assert!(e < 1e-5, "output: relative error {e}");
    let gf = (fused * w.clone()).sum().backward();
    let gr = (reference * w).sum().backward();
    let mut inputs = vec![("q", q), ("k", k), ("v", v)];
    if rel_bias {
        inputs.push(("relative bias", rb));
    }
    for (name, t) in inputs {
        let (a, r) = (t.grad(&gf).expect(name), t.grad(&gr).expect(name));
        let e = rel_err(
            &a.into_data().convert::<f32>().to_vec::<f32>().unwrap(),
            &r.into_data().convert::<f32>().to_vec::<f32>().unwrap(),
        );
        assert!(
            e < 1e-4,
            "d{name}: relative error {e} (b{b} h{h} sq{sq} sk{sk} d{d} causal {causal})"
        );
    }
}

#[test]
fn fused_attention_equals_the_decomposed_chain() {
    for (b, h, sq, sk, d, causal, rel) in [
        (2, 3, 5, 5, 8, false, false),
        (3, 2, 7, 7, 16, true, false),
        (2, 4, 6, 6, 8, false, true),
        (2, 2, 3, 9, 8, false, false), // cross-attention: other key length
        (1, 12, 33, 33, 64, true, false),
    ] {
        attn_check::<Autodiff<Flex>>(b, h, sq, sk, d, causal, rel);
        attn_check::<Autodiff<NdArray>>(b, h, sq, sk, d, causal, rel);
    }
}

#[test]
fn fused_attention_dispatch_takes_flex_and_training_backends() {
    let dev = Default::default();
    // ndarray's inference backend gets its inputs back for the caller's own path.
    let qn = Tensor::<NdArray, 4>::from_data(data4([1, 2, 3, 4], 1, 1.0), &Default::default());
    assert!(
        kiln_kernels::try_fused_attention(qn.clone(), qn.clone(), qn.clone(), None, 0.5).is_err()
    );
    let q = Tensor::<Flex, 4>::from_data(data4([1, 2, 3, 4], 1, 1.0), &dev);
    let want = burn::tensor::activation::softmax(
        q.clone().matmul(q.clone().swap_dims(2, 3)).mul_scalar(0.5),
        3,
    )
    .matmul(q.clone());
    // Flex, for inference and for training, takes the kernel.
    let out = kiln_kernels::try_fused_attention(q.clone(), q.clone(), q.clone(), None, 0.5)
        .ok()
        .expect("Flex is fused");
    assert!(rel_err(&vec4(out), &vec4(want.clone())) < 1e-6);
    let qa = Tensor::<Autodiff<Flex>, 4>::from_data(data4([1, 2, 3, 4], 1, 1.0), &dev);
    let out = kiln_kernels::try_fused_attention(qa.clone(), qa.clone(), qa.clone(), None, 0.5)
        .ok()
        .expect("Autodiff<Flex> is fused");
    assert!(rel_err(&vec4(out), &vec4(want)) < 1e-6);
}

/// GELU (exact and tanh form) through `try_fused_gelu` — flex's kernel on flex and `Autodiff<Flex>`, ndarray's
/// inputs handed back — against burn's ops: values and, through autodiff, the gradient.
#[test]
fn fused_gelu_equals_burns_gelu() {
    type B = Autodiff<Flex>;
    let dev = Default::default();
    let data = data4([2, 3, 50, 41], 9, 12.0);
    let x = Tensor::<B, 4>::from_data(data.clone(), &dev).require_grad();
    let w = Tensor::<B, 4>::from_data(data4([2, 3, 50, 41], 4, 1.0), &dev);
    for tanh_form in [false, true] {
        let fused = kiln_kernels::try_fused_gelu(x.clone(), tanh_form)
            .ok()
            .expect("Autodiff<Flex> is fused");
        let reference = if tanh_form {
            let c = (2.0f64 / std::f64::consts::PI).sqrt();
            let inner = (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044715)).mul_scalar(c);
            x.clone().mul_scalar(0.5) * inner.tanh().add_scalar(1.0)
        } else {
            burn::tensor::activation::gelu(x.clone())
        };
        let e = rel_err(&vec4(fused.clone()), &vec4(reference.clone()));
        assert!(e < 1e-6, "gelu (tanh {tanh_form}): relative error {e}");
        let gf = (fused * w.clone()).sum().backward();
        let gr = (reference * w.clone()).sum().backward();
        let e = rel_err(&vec4(x.grad(&gf).unwrap()), &vec4(x.grad(&gr).unwrap()));
        assert!(e < 1e-5, "gelu' (tanh {tanh_form}): relative error {e}");
        let xf = Tensor::<Flex, 4>::from_data(data.clone(), &dev);
        let yf = kiln_kernels::try_fused_gelu(xf.clone(), tanh_form)
            .ok()
            .expect("Flex is fused");
        let e = rel_err(&vec4(yf), &vec4(kiln_kernels::gelu(xf, tanh_form)));
        assert!(e == 0.0, "flex inference and training differ: {e}");
        let xn = Tensor::<NdArray, 4>::from_data(data.clone(), &Default::default());
        assert!(kiln_kernels::try_fused_gelu(xn, tanh_form).is_err());
    }
}

/// Without a bias (the fourth parent slot then holds q's node), q, k and v still get exactly their gradients.
#[test]
fn fused_attention_without_a_bias_equals_the_decomposed_chain() {
    type B = Autodiff<Flex>;
    let dev = Default::default();
    let mk = |seed| Tensor::<B, 4>::from_data(data4([2, 3, 6, 8], seed, 2.0), &dev).require_grad();
    let (q, k, v) = (mk(1), mk(2), mk(3));
    let w = Tensor::<B, 4>::from_data(data4([2, 3, 6, 8], 5, 1.0), &dev);
    let fused = kiln_kernels::attention(q.clone(), k.clone(), v.clone(), None, 0.35);
    let reference = burn::tensor::activation::softmax(
        q.clone().matmul(k.clone().swap_dims(2, 3)).mul_scalar(0.35),
        3,
    )
    .matmul(v.clone());
    assert!(rel_err(&vec4(fused.clone()), &vec4(reference.clone())) < 1e-5);
    let (gf, gr) = (
        (fused * w.clone()).sum().backward(),
        (reference * w).sum().backward(),
    );
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        let e = rel_err(&vec4(t.grad(&gf).unwrap()), &vec4(t.grad(&gr).unwrap()));
        assert!(e < 1e-4, "d{name}: relative error {e}");
    }
}

/// The models hand the kernel head-swapped views (`[b, s, h, d]` buffers seen as `[b, h, s, d]`) and biases that
/// broadcast in every dimension, including over the keys (stride 0 there); a row whose keys are all masked with
/// −∞ gets probabilities 0 (no NaN). Output and gradients as burn's decomposed chain, on flex's kernel.
#[test]
fn fused_attention_reads_strided_views_and_broadcast_biases() {
    type B = Autodiff<Flex>;
    let dev = Default::default();
    let (b, s, h, d) = (2, 9, 3, 8);
    let mk = |seed| Tensor::<B, 4>::from_data(data4([b, s, h, d], seed, 2.0), &dev).require_grad();
    let leaves = [mk(1), mk(2), mk(3)];
    // Fresh views for every graph (a backward pass consumes the intermediate nodes it went through).
    let views = || leaves.clone().map(|t| t.swap_dims(1, 2));
    let w = Tensor::<B, 4>::from_data(data4([b, h, s, d], 5, 1.0), &dev);
    // One value per (batch, query), broadcast over heads and keys: [b, 1, s, 1] expanded to [b, 1, s, s].
    let per_query = Tensor::<B, 4>::from_data(data4([b, 1, s, 1], 7, 1.0), &dev);
    for bias in [
        per_query.clone().expand([b, 1, s, s]),
        Tensor::<B, 4>::from_data(mask4(b, s, s, true), &dev)
            .swap_dims(0, 1)
            .swap_dims(0, 1),
    ] {
        let [q, k, v] = views();
        let fused = kiln_kernels::attention(q, k, v, Some(bias.clone()), 0.3);
        let [q, k, v] = views();
        let reference = burn::tensor::activation::softmax(
            q.clone().matmul(k.clone().swap_dims(2, 3)).mul_scalar(0.3) + bias,
            3,
        )
        .matmul(v.clone());
        assert!(rel_err(&vec4(fused.clone()), &vec4(reference.clone())) < 1e-5);
        let (gf, gr) = (
            (fused * w.clone()).sum().backward(),
            (reference * w.clone()).sum().backward(),
        );
        for (name, t) in ["q", "k", "v"].iter().zip(&leaves) {
            let e = rel_err(&vec4(t.grad(&gf).unwrap()), &vec4(t.grad(&gr).unwrap()));
            assert!(e < 1e-4, "d{name}: relative error {e}");
        }
    }
    // Every key of batch row 1 masked with −∞: zeros there, no NaN anywhere.
    let mut m = vec![0f32; b * s];
    m[s..].fill(f32::NEG_INFINITY);
    let bias = Tensor::<B, 4>::from_data(TensorData::new(m, [b, 1, 1, s]), &dev);
    let [q, k, v] = views();
    let out = kiln_kernels::attention(q, k, v, Some(bias), 0.3);
    let g = (out.clone() * w).sum().backward();
    let out = vec4(out);
    assert!(out.iter().all(|x| x.is_finite()));
    assert!(out[out.len() / 2..].iter().all(|&x| x == 0.0));
    assert!(vec4(leaves[0].grad(&g).unwrap())
        .iter()
        .all(|x| x.is_finite()));
}

/// `try_write_positions`: in place on a flex buffer nobody else holds (the same allocation comes back), handed
/// back when the buffer is shared or on another backend.
#[test]
fn write_positions_is_in_place_on_an_unshared_flex_buffer() {
    let dev = Default::default();
    let buf = Tensor::<Flex, 4>::zeros([2, 3, 8, 4], &dev);
    let value = Tensor::<Flex, 4>::from_data(data4([2, 2, 3, 4], 3, 1.0), &dev).swap_dims(1, 2);
    let ptr = |t: &Tensor<Flex, 4>| {
        t.clone()
            .into_primitive()
            .tensor()
            .storage::<f32>()
            .as_ptr() as usize
    };
    let before = ptr(&buf);
    let out = kiln_kernels::try_write_positions(buf, 5, value.clone())
        .ok()
        .expect("unshared flex buffer");
    assert_eq!(ptr(&out), before, "written in place");
    let want = Tensor::<Flex, 4>::zeros([2, 3, 8, 4], &dev)
        .slice_assign([0..2, 0..3, 5..7, 0..4], value.clone());
    assert_eq!(out.clone().into_data(), want.into_data());
    // Shared: handed back untouched.
    let keep = out.clone();
    assert!(kiln_kernels::try_write_positions(out, 0, value).is_err());
    drop(keep);
    let nd = Tensor::<NdArray, 4>::zeros([1, 1, 4, 2], &Default::default());
    assert!(
        kiln_kernels::try_write_positions(nd.clone(), 0, nd.slice([0..1, 0..1, 0..1, 0..2]))
            .is_err()
    );
}

/// `try_select_rows` (a beam reorder of a KV cache buffer, in place) equals `select` on the filled positions, for
/// reorders with repeated parents, cycles and untouched rows; shared buffers, other row counts and ndarray get the
/// buffer back.
#[test]
fn select_rows_in_place_equals_select() {
    let dev = Default::default();
    let (b, h, cap, d, len) = (5, 3, 9, 4, 6);
    for idx in [
        vec![0usize, 0, 1, 2, 2],
        vec![1, 2, 3, 4, 0],
        vec![0, 1, 2, 3, 4],
        vec![4, 4, 4, 4, 4],
        vec![2, 0, 2, 1, 3],
    ] {
        let fresh = || Tensor::<Flex, 4>::from_data(data4([b, h, cap, d], 11, 2.0), &dev);
        let ids: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
        let t = Tensor::<Flex, 1, Int>::from_data(TensorData::new(ids, [b]), &dev);
        let want = fresh().select(0, t).slice([0..b, 0..h, 0..len, 0..d]);
        let got = kiln_kernels::try_select_rows(fresh(), &idx, len)
            .ok()
            .expect("unshared flex buffer")
            .slice([0..b, 0..h, 0..len, 0..d]);
        assert_eq!(got.into_data(), want.into_data(), "{idx:?}");
    }
    let buf = Tensor::<Flex, 4>::zeros([2, 1, 4, 2], &dev);
    let keep = buf.clone();
    assert!(kiln_kernels::try_select_rows(buf, &[1, 0], 4).is_err());
    assert!(kiln_kernels::try_select_rows(keep, &[0, 0, 1], 4).is_err());
    let nd = Tensor::<NdArray, 4>::zeros([2, 1, 4, 2], &Default::default());
    assert!(kiln_kernels::try_select_rows(nd, &[1, 0], 4).is_err());
}

/// `try_small_rows_matmul` (decode products) equals flex's matmul for 1 to 8 rows, a row-major weight and a
/// transposed view (a tied embedding), widths that are not a multiple of its blocks; more rows and ndarray get
/// their inputs back.
#[test]
fn small_rows_matmul_equals_matmul() {
    let dev = Default::default();
    let two = |dims: [usize; 2], seed| {
        let d = data4([1, 1, dims[0], dims[1]], seed, 2.0);
        Tensor::<Flex, 4>::from_data(d, &dev).reshape(dims)
    };
    for m in [1usize, 3, 4, 5, 8] {
        // k ≥ 128 splits the weight's rows over the threads (203: ragged parts and a tail of three rows).
        for (k, n) in [
            (64usize, 300usize),
            (96, 1000),
            (33, 256),
            (256, 300),
            (203, 520),
        ] {
            let x = two([m, k], 1);
            let w = two([k, n], 2);
            let wt = two([n, k], 3).transpose();
            for w in [w, wt] {
                let want = x.clone().matmul(w.clone());
                let got = kiln_kernels::try_small_rows_matmul(x.clone(), w)
                    .ok()
                    .expect("few rows on flex");
                let e = rel_err(
                    &got.into_data().to_vec::<f32>().unwrap(),
                    &want.into_data().to_vec::<f32>().unwrap(),
                );
                assert!(e < 1e-5, "m {m} k {k} n {n}: relative error {e}");
            }
        }
    }
    assert!(kiln_kernels::try_small_rows_matmul(two([9, 8], 1), two([8, 300], 2)).is_err());
    let nd = Tensor::<NdArray, 2>::zeros([1, 8], &Default::default());
    assert!(kiln_kernels::try_small_rows_matmul(nd.clone(), nd.reshape([8, 1])).is_err());
}

/// A deterministic `[r, c]` matrix on any backend.
fn mat<B: Backend>(dims: [usize; 2], seed: u64, dev: &B::Device) -> Tensor<B, 2> {
    Tensor::<B, 4>::from_data(data4([1, 1, dims[0], dims[1]], seed, 2.0), dev).reshape(dims)
}

/// `try_linear` (kiln's split product, the bias written into the output, its own backward node) against burn's
/// `linear` through ndarray's autodiff: y, dx, dw, dbias; shapes run as one call and split by rows or by columns
/// over the threads; transposed views for x and w; frozen weights (no dw, x not kept) and no bias.
#[test]
fn kiln_linear_equals_burns_linear_with_gradients() {
    type K = Autodiff<Flex>;
    type R = Autodiff<NdArray>;
    let (dk, dr): (burn::tensor::Device<K>, burn::tensor::Device<R>) = Default::default();
    let flat = |t: Tensor<K, 2>| t.into_data().to_vec::<f32>().unwrap();
    let flat_r = |t: Tensor<R, 2>| t.into_data().to_vec::<f32>().unwrap();
    let cases = [
        (3usize, 5usize, 7usize),
        (1, 256, 300), // a decode step: the weight's rows streamed, split over the threads
        (5, 203, 520), // beams, ragged parts
        (256, 192, 160), // ≥ the parallel threshold, split by rows
        (96, 256, 320), // split by columns
        (200, 40, 90), // below it, ragged
    ];
    for (case, &(m, k, n)) in cases.iter().enumerate() {
        for (transposed, w_tracked, with_bias) in [
            (false, true, true),
            (true, true, false),
            (false, false, true),
            (true, false, false),
        ] {
            let what = format!(
                "m {m} k {k} n {n} transposed {transposed} w tracked {w_tracked} bias {with_bias}"
            );
            let seed = 10 * case as u64;
            // x, w as given to both backends; a transposed view is built from the transposed data.
            let make = |dims: [usize; 2], s: u64| -> (Tensor<K, 2>, Tensor<R, 2>) {
                if transposed {
                    let t = [dims[1], dims[0]];
                    (
                        mat::<K>(t, s, &dk).transpose(),
                        mat::<R>(t, s, &dr).transpose(),
                    )
                } else {
                    (mat::<K>(dims, s, &dk), mat::<R>(dims, s, &dr))
                }
            };
            let (xk, xr) = make([m, k], seed + 1);
            let (wk, wr) = make([k, n], seed + 2);
            let (xk, xr) = (xk.require_grad(), xr.require_grad());
            let (wk, wr) = if w_tracked {
                (wk.require_grad(), wr.require_grad())
            } else {
                (wk, wr)
            };
            let bk = with_bias.then(|| mat::<K>([1, n], seed + 3, &dk).reshape([n]).require_grad());
            let br = with_bias.then(|| mat::<R>([1, n], seed + 3, &dr).reshape([n]).require_grad());
            let gy_k = mat::<K>([m, n], seed + 4, &dk);
            let gy_r = mat::<R>([m, n], seed + 4, &dr);

            let yk = kiln_kernels::try_linear(xk.clone(), wk.clone(), bk.clone())
                .ok()
                .expect("Autodiff<Flex> takes kiln's product");
            let yr = burn::tensor::module::linear(xr.clone(), wr.clone(), br.clone());
            let e = rel_err(&flat(yk.clone()), &flat_r(yr.clone()));
            assert!(e < 1e-5, "{what}: y relative error {e}");

            let gk = (yk * gy_k).sum().backward();
            let gr = (yr * gy_r).sum().backward();
            let grad_k =
                |t: &Tensor<K, 2>| t.grad(&gk).map(|g| g.into_data().to_vec::<f32>().unwrap());
            let grad_r =
                |t: &Tensor<R, 2>| t.grad(&gr).map(|g| g.into_data().to_vec::<f32>().unwrap());
            let e = rel_err(&grad_k(&xk).unwrap(), &grad_r(&xr).unwrap());
            assert!(e < 1e-5, "{what}: dx relative error {e}");
            assert_eq!(
                grad_k(&wk).is_some(),
                w_tracked,
                "{what}: dw present iff w is tracked"
            );
            if w_tracked {
                let e = rel_err(&grad_k(&wk).unwrap(), &grad_r(&wr).unwrap());
                assert!(e < 1e-5, "{what}: dw relative error {e}");
            }
            if let (Some(bk), Some(br)) = (bk, br) {
                let db = |g: Option<Vec<f32>>| g.unwrap();
                let e = rel_err(
                    &db(bk.grad(&gk).map(|g| g.into_data().to_vec().unwrap())),
                    &db(br.grad(&gr).map(|g| g.into_data().to_vec().unwrap())),
                );
                assert!(e < 1e-5, "{what}: dbias relative error {e}");
            }
        }
    }
    // Inference flex takes it too; ndarray gets its inputs back.
    let x = mat::<Flex>([300, 64], 1, &Default::default());
    let w = mat::<Flex>([64, 500], 2, &Default::default());
    let want = x
        .clone()
        .matmul(w.clone())
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let got = kiln_kernels::try_matmul(x, w)
        .ok()
        .expect("flex takes kiln's product");
    assert!(rel_err(&got.into_data().to_vec::<f32>().unwrap(), &want) < 1e-5);
    let nd = mat::<NdArray>([4, 8], 1, &Default::default());
    assert!(kiln_kernels::try_matmul(nd.clone(), nd.transpose()).is_err());
}

/// The composed backward without the forward output (a backend that does not keep it) gives the gradients it
/// gives with it: rowsum(P ∘ dP) in place of rowsum(dO ∘ O).
#[test]
fn composed_attention_backward_without_the_output() {
    type N = NdArray;
    let dev = Default::default();
    let t = |dims, seed| {
        Tensor::<N, 4>::from_data(data4(dims, seed, 1.0), &dev)
            .into_primitive()
            .tensor()
    };
    let (q, k, v) = (t([2, 3, 5, 8], 1), t([2, 3, 7, 8], 2), t([2, 3, 7, 8], 3));
    let bias = Some(t([1, 3, 5, 7], 4));
    let dout = t([2, 3, 5, 8], 5);
    let (out, lse) = kiln_kernels::composed::attention_fwd::<N>(
        q.clone(),
        k.clone(),
        v.clone(),
        bias.clone(),
        0.35,
    );
    let run = |out| {
        let (dq, dk, dv, ds) = kiln_kernels::composed::attention_bwd::<N>(
            dout.clone(),
            q.clone(),
            k.clone(),
            v.clone(),
            bias.clone(),
            0.35,
            out,
            lse.clone(),
            true,
        );
        [dq, dk, dv, ds.unwrap()]
            .map(|g| vec4(Tensor::<N, 4>::from_primitive(TensorPrimitive::Float(g))))
    };
    for (a, b) in run(Some(out)).iter().zip(run(None).iter()) {
        let e = rel_err(a, b);
        assert!(e < 1e-5, "relative error {e}");
    }
}
