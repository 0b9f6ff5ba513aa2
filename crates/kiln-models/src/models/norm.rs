//! LayerNorm as the architectures use it: burn's `nn::LayerNorm` fields (`gamma`, `beta`, so checkpoints load
//! the same way) with the epsilon readable, so that training runs kiln-kernels' fused LayerNorm
//! ([`kiln_kernels::try_layer_norm`]: one pass each way, the per-row mean and reciprocal standard deviation
//! saved) instead of burn's autodiff chain of eight tracked ops. Inference runs burn's `layer_norm`, which flex
//! already fuses.

use burn::module::Param;
use burn::nn::Initializer;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;

/// `y = (x − mean) / sqrt(var + epsilon) · gamma + beta` over the last dimension (PyTorch's `nn.LayerNorm`).
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// Scale `[d]` (the checkpoint's `weight`).
    pub gamma: Param<Tensor<B, 1>>,
    /// Shift `[d]` (the checkpoint's `bias`).
    pub beta: Option<Param<Tensor<B, 1>>>,
    /// Added to the variance (`layer_norm_eps`, `layer_norm_epsilon`; PyTorch's default 1e-5).
    pub epsilon: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// Ones and zeros of width `d` (as `nn.LayerNorm`).
    pub fn new(d: usize, epsilon: f64, device: &B::Device) -> Self {
        Self {
            gamma: Initializer::Ones.init([d], device),
            beta: Some(Initializer::Zeros.init([d], device)),
            epsilon,
        }
    }

    /// Normalises over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let beta = self.beta.as_ref().map(|b| b.val());
        match kiln_kernels::try_layer_norm(x, self.gamma.val(), beta, self.epsilon) {
            Ok(y) => y,
            Err((x, gamma, beta)) => Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
                x.into_primitive().tensor(),
                gamma.into_primitive().tensor(),
                beta.map(|b| b.into_primitive().tensor()),
                self.epsilon,
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LayerNorm;
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;
    use burn::nn::LayerNormConfig;
    use burn::prelude::*;
    use burn::tensor::Distribution;

    /// On a training backend (the fused op) and on inference flex (burn's op) the output and, under autodiff,
    /// the gradients of x, gamma and beta equal burn's `nn::LayerNorm` with the same epsilon.
    #[test]
    fn equals_burns_layer_norm_with_gradients() {
        type A = Autodiff<Flex>;
        let dev = Default::default();
        for eps in [1e-5, 1e-12] {
            let mut ours = LayerNorm::<A>::new(48, eps, &dev);
            let g = Tensor::<A, 1>::random([48], Distribution::Uniform(0.5, 1.5), &dev);
            let b = Tensor::<A, 1>::random([48], Distribution::Uniform(-0.5, 0.5), &dev);
            ours.gamma = burn::module::Param::from_tensor(g.clone());
            ours.beta = Some(burn::module::Param::from_tensor(b.clone()));
            let mut theirs = LayerNormConfig::new(48).with_epsilon(eps).init::<A>(&dev);
            theirs.gamma = burn::module::Param::from_tensor(g);
            theirs.beta = Some(burn::module::Param::from_tensor(b));
            let x = Tensor::<A, 3>::random([2, 5, 48], Distribution::Normal(0.3, 2.0), &dev);
            let w = Tensor::<A, 3>::random([2, 5, 48], Distribution::Default, &dev);
            let (x1, x2) = (x.clone().require_grad(), x.require_grad());
            let (y1, y2) = (ours.forward(x1.clone()), theirs.forward(x2.clone()));
            let close = |a: Tensor<Flex, 3>, b: Tensor<Flex, 3>, what: &str| {
                let d = (a - b).abs().max().into_scalar();
                assert!(d < 1e-5, "eps {eps}: {what} differs by {d}");
            };
            close(y1.clone().inner(), y2.clone().inner(), "y");
            let (g1, g2) = ((y1 * w.clone()).sum().backward(), (y2 * w).sum().backward());
            close(x1.grad(&g1).unwrap(), x2.grad(&g2).unwrap(), "dx");
            for (p, q, what) in [
                (&ours.gamma, &theirs.gamma, "dgamma"),
                (
                    ours.beta.as_ref().unwrap(),
                    theirs.beta.as_ref().unwrap(),
                    "dbeta",
                ),
            ] {
                let (a, b) = (p.val().grad(&g1).unwrap(), q.val().grad(&g2).unwrap());
                close(a.reshape([1, 1, 48]), b.reshape([1, 1, 48]), what);
            }
            // Inference flex: burn's own op.
            let plain = ours.valid();
            let x = Tensor::<Flex, 3>::random([3, 4, 48], Distribution::Default, &dev);
            close(
                plain.forward(x.clone()),
                theirs.valid().forward(x),
                "inference y",
            );
        }
    }
}
