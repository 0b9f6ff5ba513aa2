//! A linear layer with an optional LoRA branch.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer};
use burn::prelude::*;
use burn::tensor::module::linear;

/// A dense layer `y = x W + b` with `W` stored `[d_in, d_out]` (burn's layout).
///
/// Hugging Face `nn.Linear` checkpoints store `[d_out, d_in]`; the loader in kiln-models transposes them
/// (GPT-2's `Conv1D` is already `[d_in, d_out]` and is loaded as is). The field names `weight`/`bias`
/// match the checkpoint's so that no key remapping is needed.
#[derive(Module, Debug)]
pub struct PeftLinear<B: Backend> {
    /// `[d_in, d_out]`.
    pub weight: Param<Tensor<B, 2>>,
    /// `[d_out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// The LoRA branch, when one is attached.
    pub lora: Option<LoraLayer<B>>,
}

/// A LoRA branch: `scale · B(A(dropout(x)))`.
#[derive(Module, Debug)]
pub struct LoraLayer<B: Backend> {
    /// `[d_in, r]` (peft's `lora_A.weight` is `[r, d_in]`).
    pub lora_a: Param<Tensor<B, 2>>,
    /// `[r, d_out]` (peft's `lora_B.weight` is `[d_out, r]`).
    pub lora_b: Param<Tensor<B, 2>>,
    pub dropout: Dropout,
    pub scale: f64,
}

/// LoRA hyper-parameters, named as in peft's `LoraConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self { r: 8, lora_alpha: 8.0, lora_dropout: 0.0, use_rslora: false }
    }
}

impl LoraConfig {
    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA (as peft).
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }
}

impl<B: Backend> PeftLinear<B> {
    /// A freshly initialised layer (uniform ±1/sqrt(d_in), as torch's `nn.Linear`).
    pub fn new(d_in: usize, d_out: usize, bias: bool, device: &B::Device) -> Self {
        let k = 1.0 / (d_in as f64).sqrt();
        let init = Initializer::Uniform { min: -k, max: k };
        let weight = init.init_with([d_in, d_out], Some(d_in), Some(d_out), device);
        let bias = bias.then(|| init.init_with([d_out], Some(d_in), Some(d_out), device));
        Self { weight, bias, lora: None }
    }

    /// A layer initialised from a normal distribution with standard deviation `std` (as HF's
    /// `_init_weights` for most architectures), bias zero.
    pub fn new_normal(d_in: usize, d_out: usize, bias: bool, std: f64, device: &B::Device) -> Self {
        let weight = Initializer::Normal { mean: 0.0, std }.init([d_in, d_out], device);
        let bias = bias.then(|| Initializer::Zeros.init([d_out], device));
        Self { weight, bias, lora: None }
    }

    pub fn d_in(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn d_out(&self) -> usize {
        self.weight.dims()[1]
    }

    /// `x W + b (+ scale · B(A(dropout(x))))`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match &self.lora {
            None => linear(x, self.weight.val(), self.bias.as_ref().map(|b| b.val())),
            Some(lora) => {
                let base = linear(x.clone(), self.weight.val(), self.bias.as_ref().map(|b| b.val()));
                let h = linear(lora.dropout.forward(x), lora.lora_a.val(), None);
                let h = linear(h, lora.lora_b.val(), None);
                base + h.mul_scalar(lora.scale)
            }
        }
    }

    /// Attach a LoRA branch initialised as peft does (A kaiming-uniform with a = sqrt(5), B zero).
    pub fn with_lora(mut self, cfg: &LoraConfig) -> Self {
        let device = self.weight.device();
        let (d_in, d_out) = (self.d_in(), self.d_out());
        // torch's kaiming_uniform_(a=sqrt(5)) on a [r, d_in] weight: bound = sqrt(6 / ((1 + 5) * fan_in))
        // with fan_in = d_in, i.e. 1 / sqrt(d_in).
        let bound = 1.0 / (d_in as f64).sqrt();
        let lora_a = Initializer::Uniform { min: -bound, max: bound }.init([d_in, cfg.r], &device);
        let lora_b = Initializer::Zeros.init([cfg.r, d_out], &device);
        self.lora = Some(LoraLayer {
            lora_a,
            lora_b,
            dropout: DropoutConfig::new(cfg.lora_dropout).init(),
            scale: cfg.scale(),
        });
        self
    }
}
