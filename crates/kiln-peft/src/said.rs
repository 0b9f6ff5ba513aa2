//! Intrinsic-dimension fine-tuning: DID and SAID (Aghajanyan, Zettlemoyer & Gupta, ACL 2021, "Intrinsic
//! Dimensionality Explains the Effectiveness of Language Model Fine-Tuning"; Li et al., ICLR 2018).
//!
//! Only `d` numbers train. Every targeted parameter tensor θᵢ (all of them by default) is
//!
//! ```text
//! DID:   θᵢ = θ₀,ᵢ +      Pᵢ · d
//! SAID:  θᵢ = θ₀,ᵢ + λᵢ · Pᵢ · d        (one trainable scale λᵢ per tensor, initialised to 1)
//! ```
//!
//! with θ₀ frozen, `d` ∈ ℝᵈ starting at zero (so the model starts as the base model, exactly) and Pᵢ a random
//! `[numel(θᵢ), d]` projection that is never stored: the Fastfood transform [`Fastfood`] (Le, Sarlós & Smola,
//! 2013), `Pᵢ = s · R · H · G · Π · H · B · Pad`, regenerated from a seed in O(L log L) time for L = the next
//! power of two ≥ max(numel, d). A saved adapter is `d`, the λ, the seed and the config (a few kilobytes), from
//! which [`Said::apply`] rebuilds the fine-tuned model bit for bit; [`merge_said`] writes it as a normal model.
//!
//! Training goes through [`Said::loss`]: it materialises θ on the inner backend, runs the caller's loss with
//! gradients for the targeted θᵢ only, pulls each gradient gᵢ back through the projection (`Pᵢᵀ gᵢ`, the same
//! transform transposed) and returns a scalar whose value is the loss and whose gradient with respect to
//! [`SaidParams`] is exactly (∂L/∂d, ∂L/∂λ). Any burn optimizer, gradient accumulation and clipping then act on
//! d and λ alone; nothing else gets optimizer state. The projection runs on the CPU (rayon), on every backend.
//!
//! The scaling follows the authors' `fastfood_torched`: `s = 1 / (sqrt(L · Σ G²) · sqrt(numel / L))`, which makes
//! each column of Pᵢ have unit norm in expectation, as a `[numel, d]` Gaussian matrix with entries
//! N(0, 1/numel) has (rows then have expected squared norm d / numel).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::{AutodiffModule, Module, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::{is_module_to_save, LoraConfig, TargetMatcher, Targets};
use crate::error::{PeftError, Result};
use crate::io::{read_tensors, write_tensors, RawTensor, CONFIG_FILE, WEIGHTS_FILE};
use crate::model::{
    base_params, linear_paths, map_base_params, read_base_grads, read_base_params, BaseParam,
    ParamAction, PeftModel,
};

/// `peft_type` of a SAID / DID adapter (a kiln method: Hugging Face peft has no intrinsic-dimension type).
pub const PEFT_TYPE: &str = "SAID";

/// The largest intrinsic dimension a config may ask for (2²⁴; the paper's largest is 10⁴–10⁵).
pub const MAX_INTRINSIC_DIM: usize = 1 << 24;

/// Key of `d` in `adapter_model.safetensors`.
pub const INTRINSIC_KEY: &str = "said.intrinsic";
/// Key of the λ (SAID) in `adapter_model.safetensors`.
pub const SCALES_KEY: &str = "said.scales";
/// Prefix of the stored θ₀ of parameters the base checkpoint does not hold (a new classification head).
pub const BASE_PREFIX: &str = "said.base.";

// ------------------------------------------------------------------------------------------------------------
// Counter-based randomness: every random number of a projection is a pure function of (seed, index), so the
// projection is regenerated identically on any machine and in any order (and never stored).

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `i`-th number of the splitmix64 stream seeded with `seed`.
fn stream(seed: u64, i: u64) -> u64 {
    mix(seed.wrapping_add(i.wrapping_add(1).wrapping_mul(GOLDEN)))
}

/// FNV-1a, to derive a tensor's seed from its name (stable across runs and Rust versions).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// 2¹⁶ standard-normal draws (Box–Muller in f64 from a fixed splitmix64 stream), the values of every
/// projection's `G`. Fixed for the file format: changing them changes every saved adapter's projection.
pub fn gaussian_table() -> &'static [f32; 1 << 16] {
    static TABLE: std::sync::OnceLock<Box<[f32; 1 << 16]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new([0f32; 1 << 16]);
        for p in 0..(1 << 15) {
            let u = stream(0x5A1D_0001, p as u64);
            let u1 = ((u >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let u2 = (stream(0x5A1D_0002, p as u64) >> 11) as f64 / (1u64 << 53) as f64;
            // libm (pure Rust, the same bits on every platform), not the platform's libm: the table defines
            // every saved adapter's projection.
            let r = libm::sqrt(-2.0 * libm::log(u1));
            let a = std::f64::consts::TAU * u2;
            t[2 * p] = (r * libm::cos(a)) as f32;
            t[2 * p + 1] = (r * libm::sin(a)) as f32;
        }
        t
    })
}

/// FNV-1a over the bits of [`gaussian_table`], recorded when the table was fixed (2026-12-01): a pin on the file
/// format, so that a platform or dependency that changes a single bit fails a test instead of silently loading
/// saved adapters with another projection.
#[cfg(test)]
const TABLE_FNV: u64 = 7_968_364_426_213_153_274;

/// Elements per parallel task in the transform's loops.
const CHUNK: usize = 1 << 14;

/// The fast Walsh–Hadamard transform in place (unnormalised: `H` has entries ±1, `H·H = n·I`), `n` a power of
/// two. Stages with spans below 2¹³ run inside cache-sized blocks; the larger ones across the buffer.
pub fn fwht(a: &mut [f32]) {
    let n = a.len();
    assert!(n.is_power_of_two(), "fwht needs a power-of-two length");
    let block = n.min(1 << 13);
    a.par_chunks_mut(block).for_each(|c| {
        let mut h = 1;
        while h < c.len() {
            for pair in c.chunks_exact_mut(2 * h) {
                let (x, y) = pair.split_at_mut(h);
                butterfly(x, y);
            }
            h *= 2;
        }
    });
    let mut h = block;
    while h < n {
        a.par_chunks_mut(2 * h).for_each(|pair| {
            let (x, y) = pair.split_at_mut(h);
            x.par_chunks_mut(CHUNK)
                .zip(y.par_chunks_mut(CHUNK))
                .for_each(|(x, y)| butterfly(x, y));
        });
        h *= 2;
    }
}

#[inline(always)]
fn butterfly(x: &mut [f32], y: &mut [f32]) {
    for (u, v) in x.iter_mut().zip(y.iter_mut()) {
        let (s, d) = (*u + *v, *u - *v);
        *u = s;
        *v = d;
    }
}

/// The Fastfood projection `P = s · R · H · G · Π · H · B · Pad` from ℝ^`d_in` to ℝ^`d_out`: `Pad` pads the input
/// with zeros to L (the next power of two ≥ max(d_in, d_out)), `B` is a random ±1 diagonal, `H` the Walsh–Hadamard
/// matrix, `Π` a random permutation, `G` a diagonal of standard Gaussians, `R` keeps the first `d_out` rows and `s`
/// is the scale that gives the columns unit norm in expectation (see the module docs). `G`'s entries are drawn
/// from a fixed table of 2¹⁶ standard-normal values ([`gaussian_table`]).
///
/// Nothing is stored but the seed and the scale: `B`, `G` and `Π` are recomputed from the seed, element by element.
#[derive(Debug, Clone)]
pub struct Fastfood {
    d_in: usize,
    d_out: usize,
    l: usize,
    seed_b: u64,
    seed_g: u64,
    keys: [u64; 4],
    mults: [u64; 4],
    shift: u32,
    scale: f32,
}

impl Fastfood {
    /// The projection from ℝ^`d_in` to ℝ^`d_out` drawn from `seed`. Both sizes must be at least 1 (callers check:
    /// [`Said::new`] validates what comes from a file first).
    pub fn new(seed: u64, d_in: usize, d_out: usize) -> Self {
        assert!(d_in >= 1 && d_out >= 1, "Fastfood sizes must be positive");
        let l = d_in.max(d_out).next_power_of_two();
        let bits = l.trailing_zeros();
        let s = |i| stream(seed, i);
        let keys = [s(2), s(3), s(4), s(5)];
        let mults = [s(6) | 1, s(7) | 1, s(8) | 1, s(9) | 1];
        let mut f = Self {
            d_in,
            d_out,
            l,
            seed_b: s(0),
            seed_g: s(1),
            keys,
            mults,
            shift: (bits / 2).max(1),
            scale: 1.0,
        };
        // Σ G² in fixed chunks summed in order: the same value on every run (rayon's own reduction order is not).
        let chunk_sums: Vec<f64> = (0..l.div_ceil(CHUNK))
            .into_par_iter()
            .map(|c| {
                let j0 = c * CHUNK;
                let mut acc = 0f64;
                f.for_each_g(j0, CHUNK.min(l - j0), |_, g| acc += (g as f64).powi(2));
                acc
            })
            .collect();
        let sum_g2: f64 = chunk_sums.iter().sum();
        let divisor = (l as f64 * sum_g2).sqrt() * (d_out as f64 / l as f64).sqrt();
        f.scale = (1.0 / divisor) as f32;
        f
    }

    /// Input size (the intrinsic dimension).
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Output size (the parameter tensor's element count).
    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// The padded size L on which the Hadamard transforms run.
    pub fn padded_len(&self) -> usize {
        self.l
    }

    /// The ±1 diagonal `B`.
    pub fn b(&self, j: usize) -> f32 {
        if stream(self.seed_b, j as u64) >> 63 == 0 {
            1.0
        } else {
            -1.0
        }
    }

    /// The Gaussian diagonal `G`: entry j is one of 2¹⁶ fixed standard-normal draws ([`gaussian_table`]),
    /// picked by a hash of (seed, j) — one hash and one cached load per entry instead of a logarithm and a
    /// sine, which made Box–Muller per entry the largest cost of a training step.
    #[inline]
    pub fn g(&self, j: usize) -> f32 {
        gaussian_table()[(stream(self.seed_g, j as u64) >> 48) as usize]
    }

    /// Runs `f(t, g(j0 + t))` for t in 0..len.
    #[inline]
    fn for_each_g(&self, j0: usize, len: usize, mut f: impl FnMut(usize, f32)) {
        let table = gaussian_table();
        for t in 0..len {
            f(
                t,
                table[(stream(self.seed_g, (j0 + t) as u64) >> 48) as usize],
            );
        }
    }

    /// The size M of the input block: the next power of two ≥ d_in (≤ L).
    fn m(&self) -> usize {
        self.d_in.next_power_of_two()
    }

    /// The permutation `Π`: `(Πx)[j] = x[perm(j)]`. A bijection of 0..L built from invertible steps on L's bits
    /// (xor with a key, multiplication by an odd number, xor-shift), four rounds.
    pub fn perm(&self, j: usize) -> usize {
        let mask = self.l as u64 - 1;
        let mut x = j as u64;
        for r in 0..4 {
            x ^= self.keys[r] & mask;
            x = x.wrapping_mul(self.mults[r]) & mask;
            x ^= x >> self.shift;
        }
        x as usize
    }

    /// `P · x` for `x` of length `d_in`; the result has length `d_out`.
    ///
    /// `B · Pad · x` is non-zero in its first M = 2^⌈log₂ d_in⌉ entries only, so `H` of it is `H_M` of them
    /// repeated L / M times (Sylvester's ordering): one small transform, then one O(L) pass reading a cache-sized
    /// array for `G · Π`, then the full transform of size L.
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        assert_eq!(x.len(), self.d_in, "Fastfood input length");
        let m = self.m();
        let mut h = vec![0f32; m];
        for (j, (h, &x)) in h.iter_mut().zip(x).enumerate() {
            *h = x * self.b(j);
        }
        fwht(&mut h);
        let mask = m - 1;
        let mut c = vec![0f32; self.l];
        c.par_chunks_mut(CHUNK).enumerate().for_each(|(k, c)| {
            let j0 = k * CHUNK;
            let len = c.len();
            self.for_each_g(j0, len, |t, g| c[t] = h[self.perm(j0 + t) & mask] * g);
        });
        fwht(&mut c);
        c.truncate(self.d_out);
        let s = self.scale;
        c.par_chunks_mut(CHUNK)
            .for_each(|c| c.iter_mut().for_each(|v| *v *= s));
        c
    }

    /// `Pᵀ · y` for `y` of length `d_out`; the result has length `d_in`.
    ///
    /// Only the first d_in entries of the last `H` are kept, which depend on the sums of the L / M blocks of size
    /// M: `(Πᵀ G H y)` is accumulated straight into M bins (a fixed split in f64, summed in order, so the result
    /// is the same on every run), then transformed with `H_M`.
    pub fn transpose(&self, y: &[f32]) -> Vec<f32> {
        assert_eq!(y.len(), self.d_out, "Fastfood transpose input length");
        let m = self.m();
        let mask = m - 1;
        let mut a = vec![0f32; self.l];
        a[..self.d_out].copy_from_slice(y);
        fwht(&mut a);
        // At most L/M parts of M bins each: never more than 8·L bytes, whatever d is.
        let parts = (self.l / m).clamp(1, 16);
        let part = self.l.div_ceil(parts);
        let partials: Vec<Vec<f64>> = a
            .par_chunks(part)
            .enumerate()
            .map(|(k, a)| {
                let j0 = k * part;
                let mut acc = vec![0f64; m];
                self.for_each_g(j0, a.len(), |t, g| {
                    acc[self.perm(j0 + t) & mask] += (a[t] * g) as f64
                });
                acc
            })
            .collect();
        drop(a);
        let mut s = vec![0f32; m];
        for (i, v) in s.iter_mut().enumerate() {
            *v = partials.iter().map(|p| p[i]).sum::<f64>() as f32;
        }
        fwht(&mut s);
        s.truncate(self.d_in);
        for (j, v) in s.iter_mut().enumerate() {
            *v *= self.scale * self.b(j);
        }
        s
    }

    /// The explicit `[d_out, d_in]` matrix (row-major), computed in f64 from the definition — for tests and
    /// small sizes only (O(d_out · d_in · L)).
    pub fn matrix(&self) -> Vec<f64> {
        let h = |i: usize, j: usize| {
            if (i & j).count_ones() % 2 == 0 {
                1.0
            } else {
                -1.0
            }
        };
        let mut m = vec![0f64; self.d_out * self.d_in];
        for i in 0..self.d_out {
            for j in 0..self.d_in {
                let mut acc = 0f64;
                for k in 0..self.l {
                    acc += h(i, k) * self.g(k) as f64 * h(self.perm(k), j);
                }
                m[i * self.d_in + j] = acc * self.b(j) as f64 * self.scale as f64;
            }
        }
        m
    }
}

// ------------------------------------------------------------------------------------------------------------
// Config, plan and file format.

/// One projected parameter tensor, as recorded in the config (its order is the order of the λ).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaidParameter {
    /// Hugging Face name, e.g. `bert.encoder.layer.0.attention.self.query.weight`.
    pub name: String,
    /// Shape in kiln's layout (linear weights `[in, out]`).
    pub shape: Vec<usize>,
}

fn yes() -> bool {
    true
}

fn fastfood_name() -> String {
    "fastfood".into()
}

fn said_type() -> String {
    PEFT_TYPE.into()
}

/// A SAID / DID adapter's `adapter_config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaidConfig {
    /// Always `"SAID"` (DID is `structure_aware: false`).
    #[serde(default = "said_type")]
    pub peft_type: String,
    /// d: the number of trained coordinates.
    pub intrinsic_dim: usize,
    /// SAID (one trainable scale λ per parameter tensor) or DID (`false`: no scales).
    #[serde(default = "yes")]
    pub structure_aware: bool,
    /// Seed of every projection (each tensor's own seed is derived from it and the tensor's name).
    #[serde(default)]
    pub seed: u64,
    /// The projection: `"fastfood"` (the only one).
    #[serde(default = "fastfood_name")]
    pub projection: String,
    /// Which modules' parameters are projected, with LoRA's syntax (a list of names or suffixes, a regex, or
    /// `"all-linear"`); `None`: every parameter of the model, as in the paper.
    #[serde(default)]
    pub target_modules: Option<Targets>,
    /// Modules left out, LoRA's syntax.
    #[serde(default)]
    pub exclude_modules: Option<Targets>,
    /// Modules whose initial values the adapter file carries because the base checkpoint does not (a fresh
    /// classification head); `None` uses the task type's (`SEQ_CLS`: `classifier`, `score`, as peft).
    #[serde(default)]
    pub stored_base_modules: Option<Vec<String>>,
    /// peft's task type (`SEQ_CLS`, `CAUSAL_LM`, `SEQ_2_SEQ_LM`, …).
    #[serde(default)]
    pub task_type: Option<String>,
    /// The base model (hub id or path) the adapter was trained on.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// The projected tensors in order, filled in by [`Said::new`]; a loaded adapter must find exactly these.
    #[serde(default)]
    pub parameters: Vec<SaidParameter>,
}

impl SaidConfig {
    /// SAID with intrinsic dimension `d` over every parameter, seed 0.
    pub fn new(intrinsic_dim: usize) -> Self {
        Self {
            peft_type: PEFT_TYPE.into(),
            intrinsic_dim,
            structure_aware: true,
            seed: 0,
            projection: fastfood_name(),
            target_modules: None,
            exclude_modules: None,
            stored_base_modules: None,
            task_type: None,
            base_model_name_or_path: None,
            parameters: Vec::new(),
        }
    }

    /// DID instead of SAID (no per-tensor scales).
    pub fn direct(mut self) -> Self {
        self.structure_aware = false;
        self
    }

    /// Set the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Set the task type.
    pub fn with_task_type(mut self, task_type: &str) -> Self {
        self.task_type = Some(task_type.into());
        self
    }

    /// Project only these modules (LoRA's list syntax).
    pub fn with_target_modules<S: Into<String>>(
        mut self,
        names: impl IntoIterator<Item = S>,
    ) -> Self {
        self.target_modules = Some(Targets::List(names.into_iter().map(Into::into).collect()));
        self
    }

    /// The modules whose initial values the adapter file stores.
    pub fn resolved_stored_base_modules(&self) -> Vec<String> {
        match &self.stored_base_modules {
            Some(v) => v.clone(),
            None => crate::config::task_modules_to_save(self.task_type.as_deref())
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }

    /// Check the values a file may carry; `path` names the file in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, msg: String| {
            Err(PeftError::Config {
                path: path.into(),
                field: field.into(),
                msg,
            })
        };
        if self.peft_type != PEFT_TYPE {
            return Err(PeftError::WrongPeftType {
                path: path.into(),
                found: self.peft_type.clone(),
                expected: PEFT_TYPE.into(),
            });
        }
        if !(1..=MAX_INTRINSIC_DIM).contains(&self.intrinsic_dim) {
            return bad(
                "intrinsic_dim",
                format!(
                    "must be between 1 and {MAX_INTRINSIC_DIM}, got {}",
                    self.intrinsic_dim
                ),
            );
        }
        if self.projection != "fastfood" {
            return Err(PeftError::Unsupported {
                path: path.into(),
                field: "projection".into(),
                msg: format!("`{}` (kiln implements \"fastfood\")", self.projection),
            });
        }
        for p in &self.parameters {
            let n = p.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if n.is_none_or(|n| n == 0) {
                return bad(
                    "parameters",
                    format!(
                        "`{}` has an empty or overflowing shape {:?}",
                        p.name, p.shape
                    ),
                );
            }
        }
        Ok(())
    }

    /// Read and validate `adapter_config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| PeftError::io(path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| PeftError::Json {
            path: path.into(),
            source: e,
        })?;
        let found = v.get("peft_type").and_then(|t| t.as_str()).unwrap_or("");
        if found != PEFT_TYPE {
            return Err(PeftError::WrongPeftType {
                path: path.into(),
                found: found.into(),
                expected: PEFT_TYPE.into(),
            });
        }
        let cfg: Self = serde_json::from_value(v).map_err(|e| PeftError::Json {
            path: path.into(),
            source: e,
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }
}

/// Whether an adapter directory holds a SAID / DID adapter (`peft_type` `"SAID"`).
pub fn is_said_adapter(dir: &Path) -> Result<bool> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| PeftError::io(&path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| PeftError::Json {
        path: path.clone(),
        source: e,
    })?;
    Ok(v.get("peft_type").and_then(|t| t.as_str()) == Some(PEFT_TYPE))
}

/// One projected tensor of a [`Said`] plan.
#[derive(Debug, Clone)]
pub struct SaidTarget {
    /// The parameter (Hugging Face name, kiln shape).
    pub param: BaseParam,
    /// Its projection from ℝᵈ.
    pub projection: Fastfood,
}

/// The trainable numbers of a SAID / DID model: `intrinsic` (d, zeros at the start) and, for SAID, `scales`
/// (one λ per projected tensor, ones at the start).
#[derive(Module, Debug)]
pub struct SaidParams<B: Backend> {
    /// d `[intrinsic_dim]`.
    pub intrinsic: Param<Tensor<B, 1>>,
    /// λ `[number of projected tensors]` (SAID), `None` for DID.
    pub scales: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> SaidParams<B> {
    /// d as numbers.
    pub fn intrinsic_values(&self) -> Vec<f32> {
        host(self.intrinsic.val())
    }

    /// λ as numbers (`None` for DID).
    pub fn scale_values(&self) -> Option<Vec<f32>> {
        self.scales.as_ref().map(|s| host(s.val()))
    }

    /// Parameters from saved values.
    pub fn from_values(intrinsic: &[f32], scales: Option<&[f32]>, device: &B::Device) -> Self {
        let t = |v: &[f32]| {
            Param::from_tensor(Tensor::from_data(
                TensorData::new(v.to_vec(), [v.len()]),
                device,
            ))
        };
        Self {
            intrinsic: t(intrinsic),
            scales: scales.map(t),
        }
    }
}

fn host<B: Backend>(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 tensor data")
}

/// A SAID / DID plan for one model: which tensors are projected and their projections.
#[derive(Debug, Clone)]
pub struct Said {
    config: SaidConfig,
    targets: Vec<SaidTarget>,
    index: HashMap<String, usize>,
}

impl Said {
    /// Plan SAID on `model`: select the projected tensors (every parameter, or the modules the config targets)
    /// and draw their projections. A config loaded from a file must find exactly the tensors it records.
    pub fn new<B: Backend, M: PeftModel<B>>(model: &M, config: SaidConfig) -> Result<Self> {
        Self::with_source(model, config, Path::new("SaidConfig"))
    }

    fn with_source<B: Backend, M: PeftModel<B>>(
        model: &M,
        mut config: SaidConfig,
        source: &Path,
    ) -> Result<Self> {
        config.validate(source)?;
        // LoRA's matcher on module paths: the targets (with exclusions), or, with exclusions only, the exclusions
        // themselves matched as targets.
        let matcher = |targets: &Targets, exclude: Option<Targets>| {
            let mut lc = LoraConfig::new(1, 1.0);
            lc.target_modules = Some(targets.clone());
            lc.exclude_modules = exclude;
            let outputs = model.output_layers(config.task_type.as_deref());
            TargetMatcher::new(&lc, model.model_type(), &linear_paths(model), &outputs)
        };
        let (matcher, exclude) = match (&config.target_modules, &config.exclude_modules) {
            (Some(t), e) => (Some(matcher(t, e.clone())?), None),
            (None, Some(e)) => (None, Some(matcher(e, None)?)),
            (None, None) => (None, None),
        };
        let selected: Vec<BaseParam> = base_params(model)
            .into_iter()
            .filter(|p| p.numel() > 0)
            .filter(|p| match &matcher {
                Some(m) => m.is_target(&p.module),
                None => !exclude.as_ref().is_some_and(|e| e.is_target(&p.module)),
            })
            .collect();
        if selected.is_empty() {
            return Err(PeftError::NoTargetMatched {
                targets: format!("{:?}", config.target_modules),
                model_type: model.model_type().into(),
                examples: linear_paths(model)
                    .into_iter()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(", "),
                adapter: String::new(),
            });
        }
        let found: Vec<SaidParameter> = selected
            .iter()
            .map(|p| SaidParameter {
                name: p.path.clone(),
                shape: p.shape.clone(),
            })
            .collect();
        if config.parameters.is_empty() {
            config.parameters = found;
        } else if config.parameters != found {
            let have: HashMap<&str, &Vec<usize>> =
                found.iter().map(|p| (p.name.as_str(), &p.shape)).collect();
            for p in &config.parameters {
                match have.get(p.name.as_str()) {
                    None => {
                        return Err(PeftError::MissingModule {
                            path: source.into(),
                            key: format!("parameters: {}", p.name),
                            module: p.name.clone(),
                        })
                    }
                    Some(s) if **s != p.shape => {
                        return Err(PeftError::ShapeMismatch {
                            path: source.into(),
                            key: format!("parameters: {}", p.name),
                            expected: (*s).clone(),
                            found: p.shape.clone(),
                        })
                    }
                    _ => {}
                }
            }
            return Err(PeftError::Config {
                path: source.into(),
                field: "parameters".into(),
                msg: format!(
                    "the adapter projects {} tensors, the base model selects {} (or in another order): an adapter for another model or another target list",
                    config.parameters.len(),
                    found.len()
                ),
            });
        }
        let d = config.intrinsic_dim;
        let targets: Vec<SaidTarget> = selected
            .into_iter()
            .map(|p| {
                let seed = mix(config.seed ^ fnv1a(&p.path));
                let projection = Fastfood::new(seed, d, p.numel());
                SaidTarget {
                    param: p,
                    projection,
                }
            })
            .collect();
        let index = targets
            .iter()
            .enumerate()
            .map(|(i, t)| (t.param.path.clone(), i))
            .collect();
        Ok(Self {
            config,
            targets,
            index,
        })
    }

    /// The config, with the projected tensors recorded.
    pub fn config(&self) -> &SaidConfig {
        &self.config
    }

    /// The projected tensors, in order.
    pub fn targets(&self) -> &[SaidTarget] {
        &self.targets
    }

    /// d.
    pub fn intrinsic_dim(&self) -> usize {
        self.config.intrinsic_dim
    }

    /// The number of λ (the number of projected tensors for SAID, 0 for DID).
    pub fn num_scales(&self) -> usize {
        if self.config.structure_aware {
            self.targets.len()
        } else {
            0
        }
    }

    /// What trains: d + the number of λ.
    pub fn trainable_parameters(&self) -> usize {
        self.intrinsic_dim() + self.num_scales()
    }

    /// The number of projected parameter values (Σ numel θᵢ).
    pub fn projected_parameters(&self) -> usize {
        self.targets.iter().map(|t| t.param.numel()).sum()
    }

    /// The largest padded length L: the projection's transient buffers are two of L floats.
    pub fn max_padded_len(&self) -> usize {
        self.targets
            .iter()
            .map(|t| t.projection.padded_len())
            .max()
            .unwrap_or(0)
    }

    /// Fresh trainable parameters: d = 0, λ = 1 (the model starts as the base model).
    pub fn init<B: Backend>(&self, device: &B::Device) -> SaidParams<B> {
        let d = vec![0f32; self.intrinsic_dim()];
        let l = vec![1f32; self.num_scales()];
        SaidParams::from_values(&d, self.config.structure_aware.then_some(&l[..]), device)
    }

    fn check_values(&self, d: &[f32], scales: Option<&[f32]>) {
        assert_eq!(d.len(), self.intrinsic_dim(), "intrinsic vector length");
        if let Some(s) = scales {
            assert_eq!(
                s.len(),
                self.targets.len(),
                "one scale per projected tensor"
            );
        }
    }

    /// θᵢ − θ₀,ᵢ = λᵢ · Pᵢ · d for target `i` (row-major in kiln's layout).
    pub fn delta(&self, i: usize, d: &[f32], scales: Option<&[f32]>) -> Vec<f32> {
        self.check_values(d, scales);
        if d.iter().all(|&v| v == 0.0) {
            return vec![0f32; self.targets[i].param.numel()];
        }
        self.delta_checked(i, d, scales)
    }

    /// [`Self::delta`] once the lengths are checked and d is known to be non-zero.
    fn delta_checked(&self, i: usize, d: &[f32], scales: Option<&[f32]>) -> Vec<f32> {
        let mut v = self.targets[i].projection.apply(d);
        if let Some(s) = scales {
            let s = s[i];
            v.iter_mut().for_each(|x| *x *= s);
        }
        v
    }

    /// The model with θ = θ₀ + λ · P · d (`model` holds θ₀). `scales` must be given for SAID (`None`: all 1).
    pub fn apply<B: Backend, M: PeftModel<B>>(
        &self,
        model: M,
        d: &[f32],
        scales: Option<&[f32]>,
    ) -> M {
        self.check_values(d, scales);
        if d.iter().all(|&v| v == 0.0) {
            return model;
        }
        map_base_params(model, &mut |p| match self.index.get(&p.path) {
            Some(&i) => ParamAction::Add(TensorData::new(
                self.delta_checked(i, d, scales),
                p.shape.clone(),
            )),
            None => ParamAction::Keep,
        })
    }

    /// A differentiable loss for training d and λ: runs `loss_fn` on θ = θ₀ + λ · P · d (`base` holds θ₀, on the
    /// inner backend) with gradients for the projected tensors only, pulls them back through the projections
    /// and returns a scalar equal to the loss whose gradient with respect to `params` is (∂L/∂d, ∂L/∂λ). Call
    /// `backward()` on it as on any loss; the base model never changes.
    pub fn loss<B, M, E>(
        &self,
        params: &SaidParams<B>,
        base: &M::InnerModule,
        loss_fn: impl FnOnce(&M) -> std::result::Result<Tensor<B, 1>, E>,
    ) -> std::result::Result<Tensor<B, 1>, E>
    where
        B: AutodiffBackend,
        M: AutodiffModule<B> + PeftModel<B>,
        M::InnerModule: PeftModel<B::InnerBackend> + Clone,
    {
        let d = params.intrinsic_values();
        let scales = params.scale_values();
        let theta = self.apply::<B::InnerBackend, _>(base.clone(), &d, scales.as_deref());
        let model = map_base_params(M::from_inner(theta), &mut |p| {
            ParamAction::RequireGrad(self.index.contains_key(&p.path))
        });
        let loss = loss_fn(&model)?;
        let value = Tensor::<B, 1>::from_inner(loss.clone().inner());
        let grads = loss.backward();
        let g = read_base_grads(&model, &grads, &mut |p| self.index.contains_key(&p.path));
        drop(grads);
        drop(model);
        let mut gd = vec![0f64; d.len()];
        let mut gs = vec![0f32; self.num_scales()];
        for (p, g) in g {
            let (Some(&i), Some(g)) = (self.index.get(&p.path), g) else {
                continue;
            };
            let g = g.convert::<f32>().to_vec::<f32>().expect("f32 gradient");
            let u = self.targets[i].projection.transpose(&g);
            let s = scales.as_ref().map_or(1.0, |s| s[i]);
            for (a, &u) in gd.iter_mut().zip(&u) {
                *a += (s * u) as f64;
            }
            if !gs.is_empty() {
                gs[i] = d.iter().zip(&u).map(|(a, b)| (a * b) as f64).sum::<f64>() as f32;
            }
        }
        let device = value.device();
        let gd: Vec<f32> = gd.into_iter().map(|x| x as f32).collect();
        let n = gd.len();
        let lin =
            (params.intrinsic.val() * Tensor::from_data(TensorData::new(gd, [n]), &device)).sum();
        // value + (x − stop_grad(x)): the value stays the loss bit for bit, the gradient is x's.
        let mut out = value + (lin.clone() - Tensor::from_inner(lin.inner()));
        if let Some(s) = &params.scales {
            let m = gs.len();
            let lin = (s.val() * Tensor::from_data(TensorData::new(gs, [m]), &device)).sum();
            out = out + (lin.clone() - Tensor::from_inner(lin.inner()));
        }
        Ok(out)
    }

    /// Write the adapter: `adapter_config.json` (with the projected tensors listed) and
    /// `adapter_model.safetensors` with `said.intrinsic` `[d]`, `said.scales` `[m]` (SAID) and the initial values
    /// of the stored base modules (`said.base.<name>`, Hugging Face layout) taken from `base`.
    pub fn save_pretrained<B: Backend, PB: Backend, M: PeftModel<B>>(
        &self,
        dir: &Path,
        params: &SaidParams<PB>,
        base: &M,
    ) -> Result<()> {
        let d = params.intrinsic_values();
        let scales = params.scale_values();
        let bad = |msg: String| PeftError::Config {
            path: dir.into(),
            field: "SaidParams".into(),
            msg,
        };
        if d.len() != self.intrinsic_dim() {
            return Err(bad(format!(
                "d has {} values, the plan's intrinsic dimension is {}",
                d.len(),
                self.intrinsic_dim()
            )));
        }
        match (&scales, self.config.structure_aware) {
            (Some(s), true) if s.len() != self.targets.len() => {
                return Err(bad(format!(
                    "{} scales for {} projected tensors",
                    s.len(),
                    self.targets.len()
                )))
            }
            (None, true) => return Err(bad("SAID needs one scale per tensor, none given".into())),
            (Some(_), false) => return Err(bad("DID has no scales, but some were given".into())),
            _ => {}
        }
        std::fs::create_dir_all(dir).map_err(|e| PeftError::io(dir, e))?;
        let mut tensors = BTreeMap::new();
        tensors.insert(INTRINSIC_KEY.to_string(), RawTensor::new(vec![d.len()], d));
        if let Some(s) = scales {
            tensors.insert(SCALES_KEY.to_string(), RawTensor::new(vec![s.len()], s));
        }
        let stored = self.config.resolved_stored_base_modules();
        let conv1d = base.conv1d();
        for (p, data) in read_base_params(base, &mut |p| is_module_to_save(&stored, &p.module)) {
            let t = RawTensor::new(
                p.shape.clone(),
                data.convert::<f32>().to_vec().expect("f32 data"),
            );
            let t = if p.linear_weight && !conv1d { t.t() } else { t };
            tensors.insert(format!("{BASE_PREFIX}{}", p.path), t);
        }
        write_tensors(&dir.join(WEIGHTS_FILE), &tensors)?;
        let json = serde_json::to_string_pretty(&self.config).expect("config serialises");
        let path = dir.join(CONFIG_FILE);
        std::fs::write(&path, json).map_err(|e| PeftError::io(&path, e))
    }

    /// Load an adapter onto `model` (the base model): the stored base values replace the model's (a fresh head's
    /// random values), and the plan, d and λ are returned; [`Self::apply`] then gives the fine-tuned model.
    pub fn from_pretrained<B: Backend, M: PeftModel<B>>(
        model: M,
        dir: &Path,
    ) -> Result<(M, Self, Vec<f32>, Option<Vec<f32>>)> {
        let cfg_path = dir.join(CONFIG_FILE);
        let config = SaidConfig::load(&cfg_path)?;
        let said = Self::with_source(&model, config, &cfg_path)?;
        let wpath = dir.join(WEIGHTS_FILE);
        let mut tensors = read_tensors(&wpath)?;
        let take = |tensors: &mut BTreeMap<String, RawTensor>, key: &str, n: usize| {
            let t = tensors.remove(key).ok_or_else(|| PeftError::MissingKey {
                path: wpath.clone(),
                key: key.into(),
            })?;
            if t.shape != [n] {
                return Err(PeftError::ShapeMismatch {
                    path: wpath.clone(),
                    key: key.into(),
                    expected: vec![n],
                    found: t.shape,
                });
            }
            if let Some(bad) = t.data.iter().position(|v| !v.is_finite()) {
                return Err(PeftError::Config {
                    path: wpath.clone(),
                    field: key.into(),
                    msg: format!("value {bad} is not finite ({})", t.data[bad]),
                });
            }
            Ok(t.data)
        };
        let d = take(&mut tensors, INTRINSIC_KEY, said.intrinsic_dim())?;
        let scales = if said.config.structure_aware {
            Some(take(&mut tensors, SCALES_KEY, said.num_scales())?)
        } else {
            None
        };
        let params = base_params(&model);
        let stored = said.config.resolved_stored_base_modules();
        for p in params
            .iter()
            .filter(|p| is_module_to_save(&stored, &p.module))
        {
            let key = format!("{BASE_PREFIX}{}", p.path);
            if !tensors.contains_key(&key) {
                return Err(PeftError::MissingKey {
                    path: wpath.clone(),
                    key,
                });
            }
        }
        let conv1d = model.conv1d();
        let by_name: HashMap<&str, &BaseParam> =
            params.iter().map(|p| (p.path.as_str(), p)).collect();
        let mut replace: HashMap<String, TensorData> = HashMap::new();
        for (key, t) in tensors {
            let Some(name) = key.strip_prefix(BASE_PREFIX) else {
                return Err(PeftError::UnsupportedKey {
                    path: wpath.clone(),
                    key,
                    kind: "tensor a SAID adapter does not have".into(),
                });
            };
            let Some(p) = by_name.get(name) else {
                return Err(PeftError::MissingModule {
                    path: wpath.clone(),
                    key: key.clone(),
                    module: name.into(),
                });
            };
            let t = if p.linear_weight && !conv1d && t.shape.len() == 2 {
                t.t()
            } else {
                t
            };
            if t.shape != p.shape {
                return Err(PeftError::ShapeMismatch {
                    path: wpath.clone(),
                    key,
                    expected: p.shape.clone(),
                    found: t.shape,
                });
            }
            if let Some(bad) = t.data.iter().position(|v| !v.is_finite()) {
                return Err(PeftError::Config {
                    path: wpath.clone(),
                    field: key,
                    msg: format!("value {bad} is not finite ({})", t.data[bad]),
                });
            }
            replace.insert(p.path.clone(), TensorData::new(t.data, t.shape));
        }
        let model = if replace.is_empty() {
            model
        } else {
            map_base_params(model, &mut |p| match replace.remove(&p.path) {
                Some(data) => ParamAction::Replace(data),
                None => ParamAction::Keep,
            })
        };
        Ok((model, said, d, scales))
    }
}

/// Load a SAID / DID adapter onto its base model and return the fine-tuned model (θ = θ₀ + λ · P · d), ready
/// to run or to save as a normal checkpoint.
pub fn merge_said<B: Backend, M: PeftModel<B>>(model: M, dir: &Path) -> Result<M> {
    let (model, said, d, scales) = Said::from_pretrained(model, dir)?;
    Ok(said.apply(model, &d, scales.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fwht_matches_the_hadamard_matrix() {
        for n in [1usize, 2, 8, 64, 1 << 15] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
            let mut y = x.clone();
            fwht(&mut y);
            // Check a few rows against the definition H_ij = (-1)^popcount(i & j).
            for i in [0, n / 3, n - 1] {
                let want: f64 = (0..n)
                    .map(|j| {
                        let s = if (i & j).count_ones() % 2 == 0 {
                            1.0
                        } else {
                            -1.0
                        };
                        s * x[j] as f64
                    })
                    .sum();
                assert!(
                    (y[i] as f64 - want).abs() <= 1e-3 * (1.0 + want.abs()),
                    "n {n} row {i}"
                );
            }
        }
    }

    #[test]
    fn permutation_is_a_bijection() {
        for (d_in, d_out) in [(1, 1), (1, 2), (3, 5), (10, 1000), (7, 1 << 16)] {
            let f = Fastfood::new(42, d_in, d_out);
            let mut seen = vec![false; f.padded_len()];
            for j in 0..f.padded_len() {
                let p = f.perm(j);
                assert!(!seen[p], "{p} twice");
                seen[p] = true;
            }
        }
    }

    #[test]
    fn apply_and_transpose_equal_the_explicit_matrix() {
        for (seed, d_in, d_out) in [(1, 5, 37), (2, 40, 24), (3, 16, 16), (4, 1, 3), (5, 9, 1)] {
            let f = Fastfood::new(seed, d_in, d_out);
            let m = f.matrix();
            let x: Vec<f32> = (0..d_in).map(|i| (i as f32 * 0.37).sin()).collect();
            let y = f.apply(&x);
            for i in 0..d_out {
                let want: f64 = (0..d_in).map(|j| m[i * d_in + j] * x[j] as f64).sum();
                assert!(
                    (y[i] as f64 - want).abs() < 1e-5,
                    "P·x row {i}: {} vs {want}",
                    y[i]
                );
            }
            let v: Vec<f32> = (0..d_out).map(|i| (i as f32 * 0.11).cos()).collect();
            let z = f.transpose(&v);
            for j in 0..d_in {
                let want: f64 = (0..d_out).map(|i| m[i * d_in + j] * v[i] as f64).sum();
                assert!(
                    (z[j] as f64 - want).abs() < 1e-5,
                    "Pᵀ·v col {j}: {} vs {want}",
                    z[j]
                );
            }
        }
    }

    #[test]
    fn norms_are_those_of_a_gaussian_projection() {
        // A [D, d] matrix with N(0, 1/D) entries: E‖column‖² = 1, E‖row‖² = d / D.
        for (d, big_d) in [(16usize, 1000usize), (100, 3000), (300, 200)] {
            let f = Fastfood::new(7, d, big_d);
            let cols: Vec<Vec<f32>> = (0..d)
                .map(|j| {
                    let mut e = vec![0f32; d];
                    e[j] = 1.0;
                    f.apply(&e)
                })
                .collect();
            let col_sq: f64 = cols
                .iter()
                .map(|c| c.iter().map(|v| (*v as f64).powi(2)).sum::<f64>())
                .sum::<f64>()
                / d as f64;
            let row_sq: f64 = (0..big_d)
                .map(|i| cols.iter().map(|c| (c[i] as f64).powi(2)).sum::<f64>())
                .sum::<f64>()
                / big_d as f64;
            assert!(
                (col_sq - 1.0).abs() < 0.1,
                "mean squared column norm {col_sq}"
            );
            let want = d as f64 / big_d as f64;
            assert!(
                (row_sq / want - 1.0).abs() < 0.1,
                "mean squared row norm {row_sq}, want {want}"
            );
        }
    }

    #[test]
    fn transpose_is_the_adjoint_at_sizes_that_use_every_parallel_path() {
        // ⟨P·x, y⟩ = ⟨x, Pᵀ·y⟩ with L = 2¹⁷ (several chunks and parts) and with L = M (d ≥ numel).
        for (d, big_d) in [(300usize, 100_000usize), (5000, 3000), (1, 70_000)] {
            let f = Fastfood::new(11, d, big_d);
            let x: Vec<f32> = (0..d)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let y: Vec<f32> = (0..big_d)
                .map(|i| ((i * 53 % 89) as f32 - 44.0) / 44.0)
                .collect();
            let px = f.apply(&x);
            let pty = f.transpose(&y);
            let a: f64 = px.iter().zip(&y).map(|(a, b)| *a as f64 * *b as f64).sum();
            let b: f64 = x.iter().zip(&pty).map(|(a, b)| *a as f64 * *b as f64).sum();
            assert!(
                (a - b).abs() <= 1e-4 * a.abs().max(b.abs()).max(1.0),
                "d {d}, D {big_d}: {a} vs {b}"
            );
        }
    }

    #[test]
    fn the_gaussian_table_is_the_one_adapters_were_saved_with() {
        // The table defines every projection: a change (another libm, another stream) breaks saved adapters.
        let t = gaussian_table();
        let sum: f64 = t.iter().map(|&v| v as f64).sum();
        let sq: f64 = t.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / t.len() as f64;
        assert!(
            sum.abs() < 1000.0 && (sq - 1.0).abs() < 0.02,
            "sum {sum}, mean square {sq}"
        );
        let bits: u64 = t.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
            (h ^ v.to_bits() as u64).wrapping_mul(0x0100_0000_01b3)
        });
        assert_eq!(bits, TABLE_FNV, "the Gaussian table changed");
    }

    #[test]
    fn projection_is_deterministic_and_depends_on_the_seed() {
        let x: Vec<f32> = (0..50).map(|i| i as f32 / 50.0).collect();
        let a = Fastfood::new(9, 50, 5000).apply(&x);
        let b = Fastfood::new(9, 50, 5000).apply(&x);
        let c = Fastfood::new(10, 50, 5000).apply(&x);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn config_round_trips_and_rejects_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(CONFIG_FILE);
        let c = SaidConfig::new(100).with_seed(3).with_task_type("SEQ_CLS");
        std::fs::write(&p, serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(SaidConfig::load(&p).unwrap(), c);
        for (json, want) in [
            (r#"{"peft_type":"SAID","intrinsic_dim":0}"#, "intrinsic_dim"),
            (
                r#"{"peft_type":"SAID","intrinsic_dim":99999999999}"#,
                "intrinsic_dim",
            ),
            (r#"{"peft_type":"LORA","intrinsic_dim":10}"#, "peft_type"),
            (
                r#"{"peft_type":"SAID","intrinsic_dim":10,"projection":"dense"}"#,
                "projection",
            ),
            (
                r#"{"peft_type":"SAID","intrinsic_dim":10,"parameters":[{"name":"w","shape":[0]}]}"#,
                "parameters",
            ),
            (r#"{"peft_type":"SAID"}"#, "intrinsic_dim"),
            ("not json", "JSON"),
        ] {
            std::fs::write(&p, json).unwrap();
            let e = SaidConfig::load(&p).unwrap_err().to_string();
            assert!(
                e.contains(want) && e.contains("adapter_config.json"),
                "{json}: {e}"
            );
        }
    }
}
