//! Minimal reproduction for issue 10: burn 0.21 flex `matmul` on the shapes of GPT-2 decoding and of
//! BERT/BART training, against the machine's memory bandwidth. Pair with `bench/reference/matmul.py`
//! (the same shapes in PyTorch). `cargo run --release -p kiln-models --example matmul_floor`
//!
//! - decode: `[1, 768] × [768, 2304]` (GPT-2's c_attn at one token). For m = 1 the `gemm` crate takes its
//!   gemv path (no packing), but single-threaded: `Parallelism` is ignored there.
//! - the same through `linear`'s rank-3 path (`[1, 1, 768] × [1, 768, 2304]`), and beam search's five rows
//!   (`[5, 1, 768]`: five gemvs, the weight read five times) against one `[5, 768]` product.
//! - GEMM: `[1024, 768] × [768, 3072]` (BERT b16 × s64 FFN) as one 2-D product and as burn's `linear` does it
//!   on a rank-3 input (`[16, 64, 768] × [1, 768, 3072]`: 16 products, each packing the weight again).
//! - bandwidth: one pass summing 1 GiB of f32 with 1 and 2 threads, the floor for reading weights.
use std::time::Instant;

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::Distribution;

type B = Flex;

fn median<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f();
    let mut ts: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    ts.sort_by(|a, b| a.total_cmp(b));
    ts[ts.len() / 2]
}

fn rand<const D: usize>(shape: [usize; D], dev: &burn::tensor::Device<B>) -> Tensor<B, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), dev)
}

fn main() {
    let dev = Default::default();
    let threads = rayon::current_num_threads();
    println!("threads {threads}");

    // Memory bandwidth: read 1 GiB once (16 independent accumulators so the loop vectorises and is not
    // bound by the latency of one add chain).
    fn sum(c: &[f32]) -> f32 {
        let mut acc = [0f32; 16];
        for ch in c.chunks_exact(16) {
            for i in 0..16 {
                acc[i] += ch[i];
            }
        }
        acc.iter().sum()
    }
    let n = 1usize << 28;
    let buf: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let gb = (n * 4) as f64 / 1e9;
    let one = median(5, || {
        std::hint::black_box(sum(&buf));
    });
    let two = median(5, || {
        use rayon::prelude::*;
        std::hint::black_box(buf.par_chunks(1 << 22).map(sum).sum::<f32>());
    });
    drop(buf);
    println!(
        "bandwidth read 1 GiB: 1 thread {:.1} GB/s, {threads} threads {:.1} GB/s",
        gb / one,
        gb / two
    );
    // GPT-2 small fp32: 12 × (768·2304 + 768·768 + 2·768·3072) + 50257·768 weights read per token.
    let per_token =
        (12 * (768 * 2304 + 768 * 768 + 2 * 768 * 3072) + 50257 * 768) as f64 * 4.0 / 1e9;
    println!(
        "GPT-2 small reads {:.0} MB of weights per token: bandwidth floor {:.1} tok/s (1 thread {:.1})",
        per_token * 1e3,
        gb / two / per_token,
        gb / one / per_token
    );

    let report = |name: &str, s: f64, bytes: f64, flops: f64| {
        println!(
            "{name:<44} {:>9.3} ms  {:>6.1} GB/s of weights  {:>6.1} GFLOP/s",
            s * 1e3,
            bytes / s / 1e9,
            flops / s / 1e9
        );
    };
    let w = rand([768, 2304], &dev);
    let x = rand([1, 768], &dev);
    let wb = 768.0 * 2304.0 * 4.0;
    let fl = 2.0 * 768.0 * 2304.0;
    report(
        "decode [1,768]x[768,2304] 2-D",
        median(200, || {
            let _ = x.clone().matmul(w.clone()).into_data();
        }),
        wb,
        fl,
    );
    report(
        "decode via linear [1,1,768]",
        median(200, || {
            let _ = burn::tensor::module::linear(x.clone().unsqueeze::<3>(), w.clone(), None)
                .into_data();
        }),
        wb,
        fl,
    );
    // Two gemvs on the two column halves, one per thread: what a threaded gemv would give.
    let w0 = Tensor::<B, 2>::from_data(w.clone().slice([0..768, 0..1152]).into_data(), &dev);
    let w1 = Tensor::<B, 2>::from_data(w.clone().slice([0..768, 1152..2304]).into_data(), &dev);
    report(
        "decode, column halves on 2 threads (join)",
        median(200, || {
            let (a, b) = rayon::join(
                || x.clone().matmul(w0.clone()).into_data(),
                || x.clone().matmul(w1.clone()).into_data(),
            );
            std::hint::black_box((a, b));
        }),
        wb,
        fl,
    );
    let x5 = rand([5, 1, 768], &dev);
    report(
        "beam 5 via linear [5,1,768] (5 gemvs)",
        median(100, || {
            let _ = burn::tensor::module::linear(x5.clone(), w.clone(), None).into_data();
        }),
        wb,
        5.0 * fl,
    );
    report(
        "beam 5 as one [5,768] product",
        median(100, || {
            let _ = x5.clone().reshape([5, 768]).matmul(w.clone()).into_data();
        }),
        wb,
        5.0 * fl,
    );
    let head = rand([768, 50257], &dev);
    report(
        "LM head [1,768]x[768,50257]",
        median(20, || {
            let _ = x.clone().matmul(head.clone()).into_data();
        }),
        768.0 * 50257.0 * 4.0,
        2.0 * 768.0 * 50257.0,
    );
    drop(head);

    let w = rand([768, 3072], &dev);
    let x = rand([1024, 768], &dev);
    let fl = 2.0 * 1024.0 * 768.0 * 3072.0;
    report(
        "GEMM [1024,768]x[768,3072] 2-D",
        median(10, || {
            let _ = x.clone().matmul(w.clone()).into_data();
        }),
        768.0 * 3072.0 * 4.0,
        fl,
    );
    let x3 = x.clone().reshape([16, 64, 768]);
    report(
        "GEMM via linear [16,64,768] (16 products)",
        median(10, || {
            let _ = burn::tensor::module::linear(x3.clone(), w.clone(), None).into_data();
        }),
        768.0 * 3072.0 * 4.0,
        fl,
    );
    // Weight gradient of that layer: xᵀ · dy, [768,1024]x[1024,3072] (autodiff's linear_weight_backward does it
    // per batch row on a rank-3 input and sums).
    let dy = rand([1024, 3072], &dev);
    report(
        "weight grad xT[768,1024]x[1024,3072] 2-D",
        median(10, || {
            let _ = x.clone().transpose().matmul(dy.clone()).into_data();
        }),
        0.0,
        fl,
    );
    let dy3 = dy.clone().reshape([16, 64, 3072]);
    report(
        "weight grad rank-3 (16 products + sum)",
        median(10, || {
            let _ = x3
                .clone()
                .swap_dims(1, 2)
                .matmul(dy3.clone())
                .sum_dim(0)
                .into_data();
        }),
        0.0,
        fl,
    );
}
