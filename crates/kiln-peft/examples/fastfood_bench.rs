//! Time the Fastfood transform at the sizes of a BERT model's tensors: `cargo run --release -p kiln-peft --example fastfood_bench`.
use kiln_peft::said::{fwht, Fastfood};
use std::time::Instant;

fn main() {
    let n = 1 << 24;
    let mut a: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let t = Instant::now();
    fwht(&mut a);
    println!("fwht 2^24: {:.3} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let f = Fastfood::new(1, 1000, 30522 * 384);
    println!("new (Σ G²) 2^24: {:.3} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let s: f32 = (0..n).map(|j| f.g(j)).sum();
    println!("g() x 2^24: {:.3} s ({s})", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let s: usize = (0..n).map(|j| f.perm(j)).fold(0, |a, b| a ^ b);
    println!("perm() x 2^24: {:.3} s ({s})", t.elapsed().as_secs_f64());
    let x: Vec<f32> = (0..1000).map(|i| i as f32 * 1e-3).collect();
    let t = Instant::now();
    let y = f.apply(&x);
    println!("apply: {:.3} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let z = f.transpose(&y);
    println!("transpose: {:.3} s ({})", t.elapsed().as_secs_f64(), z[0]);
}
