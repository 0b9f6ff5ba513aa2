//! A linear layer with optional LoRA adapters.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer};
use burn::prelude::*;
use burn::tensor::module::linear;

/// A dense layer `y = x W + b` with `W` stored `[d_in, d_out]` (burn's layout).
///
/// Hugging Face `nn.Linear` checkpoints store `[d_out, d_in]`; the loader in kiln-models transposes them
/// (GPT-2's `Conv1D` is already `[d_in, d_out]` and is loaded as is). The field names `weight`/`bias`
/// match the checkpoint's so that no key remapping is needed.
///
/// PEFT methods that act on one linear layer hang off it as fields: today [`Self::lora`]. With no adapter
/// attached the forward pass is exactly `x W + b`.
#[derive(Module, Debug)]
pub struct PeftLinear<B: Backend> {
    /// `[d_in, d_out]`.
    pub weight: Param<Tensor<B, 2>>,
    /// `[d_out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// LoRA adapters attached to this layer, in the order they were added (usually none or one; several when a
    /// model holds several named adapters, as peft's `add_adapter`).
    pub lora: Vec<LoraLayer<B>>,
}

/// burn's `linear` on rows, through kiln-kernels' product where the backend has it (flex and `Autodiff<Flex>`: split
/// over the threads, the bias written into the output, the same split for the gradients' products).
fn dense<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    w: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    if D != 2 {
        return linear(x, w, bias);
    }
    let dims = x.dims();
    let mut out = dims;
    out[1] = w.dims()[1];
    match kiln_kernels::try_linear(x.reshape([dims[0], dims[1]]), w, bias) {
        Ok(y) => y.reshape(out),
        Err((x, w, bias)) => linear(x, w, bias).reshape(out),
    }
}

/// One named LoRA adapter on a linear layer: `scale · B(A(dropout(x)))`.
#[derive(Module, Debug)]
pub struct LoraLayer<B: Backend> {
    /// `[d_in, r]` (peft's `lora_A.weight` is `[r, d_in]`).
    pub lora_a: Param<Tensor<B, 2>>,
    /// `[r, d_out]` (peft's `lora_B.weight` is `[d_out, r]`).
    pub lora_b: Param<Tensor<B, 2>>,
    /// Dropout on the branch's input (`lora_dropout`).
    pub dropout: Dropout,
    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub scale: f64,
    /// The adapter's name (peft's `adapter_name`; `default` unless named).
    pub adapter: String,
    /// Whether the branch takes part in the forward pass (peft's active adapter).
    pub active: bool,
    /// Whether `scale · A B` has been added into the base weight; the branch is then skipped.
    pub merged: bool,
}

/// How a new LoRA branch is initialised (peft's `init_lora_weights`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoraInit {
    /// `True`: A kaiming-uniform (a = sqrt(5)), B zero — the branch starts as a no-op.
    Kaiming,
    /// `"gaussian"`: A ~ N(0, 1/r), B zero.
    Gaussian,
    /// `False`: A and B both as torch's `nn.Linear` default (kaiming-uniform); not a no-op (for tests).
    Random,
    /// A and B zero (used before loading saved weights).
    Zeros,
}

impl<B: Backend> LoraLayer<B> {
    /// A fresh branch for a `[d_in, d_out]` layer.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        adapter: &str,
        d_in: usize,
        d_out: usize,
        r: usize,
        scale: f64,
        dropout: f64,
        init: LoraInit,
        device: &B::Device,
    ) -> Self {
        // torch's kaiming_uniform_(a=sqrt(5)) on a [fan_out, fan_in] weight: bound = sqrt(6 / ((1 + 5) * fan_in))
        // = 1 / sqrt(fan_in). lora_A is [r, d_in] in peft (fan_in = d_in), lora_B [d_out, r] (fan_in = r).
        let uniform = |fan_in: usize| {
            let k = 1.0 / (fan_in as f64).sqrt();
            Initializer::Uniform { min: -k, max: k }
        };
        let (a_init, b_init) = match init {
            LoraInit::Kaiming => (uniform(d_in), Initializer::Zeros),
            LoraInit::Gaussian => (
                Initializer::Normal {
                    mean: 0.0,
                    std: 1.0 / r as f64,
                },
                Initializer::Zeros,
            ),
            LoraInit::Random => (uniform(d_in), uniform(r)),
            LoraInit::Zeros => (Initializer::Zeros, Initializer::Zeros),
        };
        Self {
            lora_a: a_init.init([d_in, r], device),
            lora_b: b_init.init([r, d_out], device),
            dropout: DropoutConfig::new(dropout).init(),
            scale,
            adapter: adapter.to_string(),
            active: true,
            merged: false,
        }
    }

    /// The rank `r`.
    pub fn r(&self) -> usize {
        self.lora_a.dims()[1]
    }

    /// `scale · A B`, `[d_in, d_out]` (the transpose of peft's `get_delta_weight`).
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        self.lora_a
            .val()
            .matmul(self.lora_b.val())
            .mul_scalar(self.scale)
    }

    /// The number of parameters (A and B).
    pub fn num_params(&self) -> usize {
        self.lora_a.shape().num_elements() + self.lora_b.shape().num_elements()
    }
}

impl<B: Backend> PeftLinear<B> {
    /// A freshly initialised layer (uniform ±1/sqrt(d_in), as torch's `nn.Linear`).
    pub fn new(d_in: usize, d_out: usize, bias: bool, device: &B::Device) -> Self {
        let k = 1.0 / (d_in as f64).sqrt();
        let init = Initializer::Uniform { min: -k, max: k };
        let weight = init.init_with([d_in, d_out], Some(d_in), Some(d_out), device);
        let bias = bias.then(|| init.init_with([d_out], Some(d_in), Some(d_out), device));
        Self {
            weight,
            bias,
            lora: Vec::new(),
        }
    }

    /// A layer initialised from a normal distribution with standard deviation `std` (as HF's
    /// `_init_weights` for most architectures), bias zero.
    pub fn new_normal(d_in: usize, d_out: usize, bias: bool, std: f64, device: &B::Device) -> Self {
        let weight = Initializer::Normal { mean: 0.0, std }.init([d_in, d_out], device);
        let bias = bias.then(|| Initializer::Zeros.init([d_out], device));
        Self {
            weight,
            bias,
            lora: Vec::new(),
        }
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.weight.dims()[1]
    }

    /// `x W + b`, plus `scale · B(A(dropout(x)))` for every active, unmerged LoRA adapter (as peft's
    /// `lora.Linear.forward`). With no adapter this is burn's `linear` (on flex through kiln-kernels' product,
    /// which sums in another order).
    ///
    /// Inputs of rank > 2 are flattened to `[rows, d_in]` first: burn 0.21 runs `linear` on a rank-3 input as
    /// one matrix product per batch row (each packing the weight again, and under autodiff a per-row weight
    /// gradient that is then summed); one 2-D product over all rows is the same arithmetic, done once
    /// (docs/performance.md).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        if D > 2 {
            let dims = x.dims();
            let rows = dims[..D - 1].iter().product::<usize>();
            let y = self.forward_2d(x.reshape([rows, dims[D - 1]]));
            let mut out = dims;
            out[D - 1] = self.d_out();
            return y.reshape(out);
        }
        self.forward_2d(x)
    }

    fn forward_2d<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let bias = self.bias.as_ref().map(|b| b.val());
        if !self.lora.iter().any(|l| l.active && !l.merged) {
            return dense(x, self.weight.val(), bias);
        }
        let mut y = dense(x.clone(), self.weight.val(), bias);
        for l in self.lora.iter().filter(|l| l.active && !l.merged) {
            let h = dense(l.dropout.forward(x.clone()), l.lora_a.val(), None);
            y = y + dense(h, l.lora_b.val(), None).mul_scalar(l.scale);
        }
        y
    }

    /// The LoRA adapter named `adapter`, if attached.
    pub fn adapter(&self, adapter: &str) -> Option<&LoraLayer<B>> {
        self.lora.iter().find(|l| l.adapter == adapter)
    }

    /// The LoRA adapter named `adapter`, mutably, if attached.
    pub fn adapter_mut(&mut self, adapter: &str) -> Option<&mut LoraLayer<B>> {
        self.lora.iter_mut().find(|l| l.adapter == adapter)
    }

    /// Attach a LoRA branch (replacing one of the same name).
    pub fn add_lora(&mut self, layer: LoraLayer<B>) {
        self.lora.retain(|l| l.adapter != layer.adapter);
        self.lora.push(layer);
    }

    /// Attach a LoRA branch named `default` from the config's `r`, `lora_alpha`, `use_rslora`, `lora_dropout`
    /// and `init_lora_weights` (patterns are not consulted; see `LoraModel` for model-wide injection).
    pub fn with_lora(mut self, cfg: &crate::LoraConfig) -> Self {
        let init = cfg.init().unwrap_or(LoraInit::Kaiming);
        let device = self.weight.device();
        let layer = LoraLayer::new(
            "default",
            self.d_in(),
            self.d_out(),
            cfg.r,
            cfg.scale_for(cfg.r, cfg.lora_alpha),
            cfg.lora_dropout,
            init,
            &device,
        );
        self.add_lora(layer);
        self
    }

    /// Add `sign · delta` (`[d_in, d_out]`) into the weight, keeping its id and its require-grad flag.
    fn add_to_weight(&mut self, delta: Tensor<B, 2>) {
        let w = self.weight.clone();
        self.weight = w.map(|w| {
            let rg = w.is_require_grad();
            (w + delta.detach()).detach().set_require_grad(rg)
        });
    }

    /// Merge adapter `adapter` into the weight (`W += scale · A B`); a no-op if it is absent or merged already.
    /// Returns whether a merge happened.
    pub fn merge_adapter(&mut self, adapter: &str) -> bool {
        let Some(i) = self
            .lora
            .iter()
            .position(|l| l.adapter == adapter && !l.merged)
        else {
            return false;
        };
        let delta = self.lora[i].delta_weight();
        self.add_to_weight(delta);
        self.lora[i].merged = true;
        true
    }

    /// Undo [`Self::merge_adapter`] (`W -= scale · A B`). Returns whether anything was unmerged.
    pub fn unmerge_adapter(&mut self, adapter: &str) -> bool {
        let Some(i) = self
            .lora
            .iter()
            .position(|l| l.adapter == adapter && l.merged)
        else {
            return false;
        };
        let delta = self.lora[i].delta_weight().neg();
        self.add_to_weight(delta);
        self.lora[i].merged = false;
        true
    }

    /// Remove adapter `adapter` without merging (a merged one is unmerged first).
    pub fn remove_adapter(&mut self, adapter: &str) -> Option<LoraLayer<B>> {
        self.unmerge_adapter(adapter);
        let i = self.lora.iter().position(|l| l.adapter == adapter)?;
        Some(self.lora.remove(i))
    }

    /// Whether any adapter is merged into the weight.
    pub fn is_merged(&self) -> bool {
        self.lora.iter().any(|l| l.merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    type B = Flex;

    fn vals(t: Tensor<B, 2>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    }

    #[test]
    fn lora_forward_merge_and_unmerge() {
        let dev = Default::default();
        B::seed(&dev, 3);
        let mut l = PeftLinear::<B>::new(6, 5, true, &dev);
        let x = Tensor::<B, 2>::random([4, 6], burn::tensor::Distribution::Normal(0.0, 1.0), &dev);
        let plain = vals(l.forward(x.clone()));
        // burn's linear up to the summation order (kiln-kernels' product on flex).
        let burns = vals(linear(
            x.clone(),
            l.weight.val(),
            l.bias.as_ref().map(|b| b.val()),
        ));
        let d = max_diff(&plain, &burns);
        assert!(d < 1e-6, "no adapter: burn's linear, {d}");

        // Kaiming init: B = 0, so the branch is a no-op.
        l.add_lora(LoraLayer::new(
            "default",
            6,
            5,
            2,
            4.0,
            0.0,
            LoraInit::Kaiming,
            &dev,
        ));
        assert_eq!(vals(l.forward(x.clone())), plain);
        assert!(vals(l.lora[0].lora_b.val()).iter().all(|&v| v == 0.0));
        let a = vals(l.lora[0].lora_a.val());
        assert!(a.iter().all(|v| v.abs() <= 1.0 / 6f32.sqrt()) && a.iter().any(|&v| v != 0.0));

        // Random init: a real branch; by hand x W + b + 4 (x A) B.
        l.add_lora(LoraLayer::new(
            "default",
            6,
            5,
            2,
            4.0,
            0.0,
            LoraInit::Random,
            &dev,
        ));
        assert_eq!(l.lora.len(), 1, "same name replaces");
        let la = &l.lora[0];
        let want = linear(x.clone(), l.weight.val(), l.bias.as_ref().map(|b| b.val()))
            + x.clone()
                .matmul(la.lora_a.val())
                .matmul(la.lora_b.val())
                .mul_scalar(4.0);
        let got = vals(l.forward(x.clone()));
        let d = max_diff(&got, &vals(want));
        assert!(d < 1e-5, "{d}");
        assert!(got.iter().zip(&plain).any(|(a, b)| (a - b).abs() > 1e-3));

        let w0 = vals(l.weight.val());
        assert!(l.merge_adapter("default") && l.is_merged() && !l.merge_adapter("default"));
        let merged = vals(l.forward(x.clone()));
        let d = max_diff(&got, &merged);
        assert!(d < 1e-5, "merged vs unmerged {d}");
        assert!(l.unmerge_adapter("default") && !l.is_merged());
        let d = max_diff(&w0, &vals(l.weight.val()));
        assert!(d < 1e-6, "unmerge restores W: {d}");

        // Inactive adapters are skipped; removal gives the plain layer back.
        l.lora[0].active = false;
        let without = {
            let mut bare = l.clone();
            bare.lora.clear();
            vals(bare.forward(x.clone()))
        };
        assert_eq!(vals(l.forward(x.clone())), without);
        assert!(l.remove_adapter("default").is_some() && l.lora.is_empty());
    }

    #[test]
    fn gaussian_init_has_std_one_over_r() {
        let dev = Default::default();
        B::seed(&dev, 1);
        let l = LoraLayer::<B>::new("g", 400, 3, 4, 1.0, 0.0, LoraInit::Gaussian, &dev);
        let a = vals(l.lora_a.val());
        let std = (a.iter().map(|v| v * v).sum::<f32>() / a.len() as f32).sqrt();
        assert!((std - 0.25).abs() < 0.02, "{std}");
    }
}
