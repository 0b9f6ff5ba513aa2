//! Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020): a small down-projection,
//! non-linearity and up-projection with a residual connection, inserted inside every transformer layer
//! of a frozen model.
//!
//! - Houlsby: after the attention output projection and after the feed-forward output.
//! - Pfeiffer: after the feed-forward output only.
//!
//! As in the `adapters` library, the adapter acts on a sub-layer's output before that sub-layer's own
//! residual connection and layer norm. The up-projection starts at zero, so a freshly attached adapter is
//! the identity and the model's outputs are unchanged until training moves it.

use burn::module::Module;
use burn::nn::Initializer;
use burn::prelude::*;

use crate::linear::PeftLinear;

/// Where adapters go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AdapterPlacement {
    /// After attention and after the feed-forward block.
    Houlsby,
    /// After the feed-forward block only.
    Pfeiffer,
}

/// Non-linearity of the bottleneck.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AdapterActivation {
    /// ReLU (the default).
    Relu,
    /// GELU (exact, erf-based).
    Gelu,
    /// Swish / SiLU, `x · sigmoid(x)`.
    Swish,
    /// Hyperbolic tangent.
    Tanh,
}

/// Adapter hyper-parameters: the bottleneck size is `size`, or `hidden / reduction_factor`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdapterConfig {
    /// Which sub-layers get an adapter.
    pub placement: AdapterPlacement,
    /// Bottleneck width as `hidden / reduction_factor` (used when `size` is `None`).
    pub reduction_factor: Option<usize>,
    /// Bottleneck width; overrides `reduction_factor`.
    pub size: Option<usize>,
    /// Non-linearity between the down- and up-projection.
    pub activation: AdapterActivation,
    /// Add the adapter's input back to its output (the standard design).
    pub residual: bool,
    /// Standard deviation of the down-projection's initial weights.
    pub init_std: f64,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        Self {
            placement: AdapterPlacement::Pfeiffer,
            reduction_factor: Some(16),
            size: None,
            activation: AdapterActivation::Relu,
            residual: true,
            init_std: 0.02,
        }
    }
}

impl AdapterConfig {
    /// The bottleneck width for a layer of width `hidden`.
    pub fn bottleneck(&self, hidden: usize) -> usize {
        self.size
            .unwrap_or_else(|| (hidden / self.reduction_factor.unwrap_or(16).max(1)).max(1))
    }

    /// A fresh adapter for a layer of width `hidden` (the up-projection at zero: the identity).
    pub fn init<B: Backend>(&self, hidden: usize, device: &B::Device) -> Adapter<B> {
        let m = self.bottleneck(hidden);
        let mut down = PeftLinear::new_normal(hidden, m, true, self.init_std, device);
        down.bias = Some(Initializer::Zeros.init([m], device));
        let up = PeftLinear {
            weight: Initializer::Zeros.init([m, hidden], device),
            bias: Some(Initializer::Zeros.init([hidden], device)),
            lora: Vec::new(),
        };
        Adapter {
            adapter_down: down,
            adapter_up: up,
            activation: self.activation,
            residual: self.residual,
        }
    }
}

/// One bottleneck adapter: `x + up(act(down(x)))`.
#[derive(Module, Debug)]
pub struct Adapter<B: Backend> {
    /// `[hidden, bottleneck]` down-projection.
    pub adapter_down: PeftLinear<B>,
    /// `[bottleneck, hidden]` up-projection (zero at initialisation).
    pub adapter_up: PeftLinear<B>,
    /// Non-linearity between the projections.
    #[module(skip)]
    pub activation: AdapterActivation,
    /// Add the input back to the output.
    pub residual: bool,
}

impl<B: Backend> Adapter<B> {
    /// `x + up(act(down(x)))` (without `x` when not residual), over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        use burn::tensor::activation as act;
        let h = self.adapter_down.forward(x.clone());
        let h = match self.activation {
            AdapterActivation::Relu => act::relu(h),
            AdapterActivation::Gelu => act::gelu(h),
            AdapterActivation::Swish => act::silu(h),
            AdapterActivation::Tanh => h.tanh(),
        };
        let h = self.adapter_up.forward(h);
        if self.residual {
            x + h
        } else {
            h
        }
    }

    /// Parameters of this adapter.
    pub fn num_params(&self) -> usize {
        Module::<B>::num_params(self)
    }
}

/// Whether a parameter's dotted path lies inside a bottleneck adapter: one of its segments is `adapter` (BERT's
/// `…attention.output.adapter.…`) or ends in `_adapter` (`…h.0.attention_adapter.…`, `…layers.0.output_adapter.…`).
pub fn is_adapter_path(path: &str) -> bool {
    path.split('.')
        .any(|s| s == "adapter" || s.ends_with("_adapter"))
}

/// Freeze everything but the bottleneck adapters ([`is_adapter_path`]). Returns the model and its (trainable,
/// total) parameter counts, for [`crate::trainable_summary`].
pub fn freeze_all_but_adapters<B: Backend, M: Module<B>>(model: M) -> (M, usize, usize) {
    crate::freeze_except(model, is_adapter_path)
}

/// Apply an optional adapter.
pub fn maybe_adapt<B: Backend, const D: usize>(
    adapter: &Option<Adapter<B>>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    match adapter {
        Some(a) => a.forward(x),
        None => x,
    }
}

#[cfg(test)]
mod tests {
    use super::is_adapter_path;

    #[test]
    fn adapter_paths() {
        assert!(is_adapter_path(
            "bert.encoder.layer.0.output.adapter.adapter_up.weight"
        ));
        assert!(is_adapter_path(
            "transformer.h.1.attention_adapter.adapter_down.bias"
        ));
        assert!(is_adapter_path(
            "Bart.model.decoder.layers.0.output_adapter.adapter_up.weight"
        ));
        assert!(!is_adapter_path("transformer.h.1.attn.c_proj.weight"));
        assert!(!is_adapter_path("model.decoder.layers.0.fc2.lora.0.lora_A"));
    }
}
