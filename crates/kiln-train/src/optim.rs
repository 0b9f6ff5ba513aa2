//! AdamW with kiln-kernels' one-pass update ([`kiln_kernels::try_adamw_step`]) on flex and burn's own `AdamW`
//! everywhere else. The state is burn's `AdamWState`, so checkpoints written by either load in the other.

use burn::grad_clipping::GradientClippingConfig;
use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, SimpleOptimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

/// burn's `AdamW` defaults for the moments (transformers' too).
const BETA_1: f32 = 0.9;
const BETA_2: f32 = 0.999;

/// AdamW (decoupled weight decay, β = (0.9, 0.999)) whose update is one pass over parameter, gradient and
/// moments on flex; burn's `AdamW` (the same arithmetic as fifteen tensor ops) on other backends.
#[derive(Clone)]
pub struct FusedAdamW {
    burn: AdamW,
    weight_decay: f32,
    epsilon: f32,
}

impl FusedAdamW {
    /// AdamW with this weight decay and epsilon.
    pub fn new(weight_decay: f32, epsilon: f32) -> Self {
        let burn = AdamWConfig::new()
            .with_beta_1(BETA_1)
            .with_beta_2(BETA_2)
            .with_weight_decay(weight_decay)
            .with_epsilon(epsilon)
            .build();
        Self {
            burn,
            weight_decay,
            epsilon,
        }
    }
}

impl<B: Backend> SimpleOptimizer<B> for FusedAdamW {
    type State<const D: usize> = AdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: f64,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let before = state.as_ref().map_or(0, |s| s.momentum.time);
        let moments = state.map(|s| (s.momentum.moment_1, s.momentum.moment_2));
        let step = kiln_kernels::AdamWStep {
            lr,
            beta_1: BETA_1,
            beta_2: BETA_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
            time: before + 1,
        };
        match kiln_kernels::try_adamw_step(tensor, grad, moments, step) {
            Ok((p, m, v)) => (
                p,
                Some(AdamWState::new(AdaptiveMomentumState::new(
                    before + 1,
                    m,
                    v,
                ))),
            ),
            Err((tensor, grad, moments)) => {
                let state =
                    moments.map(|(m, v)| AdamWState::new(AdaptiveMomentumState::new(before, m, v)));
                SimpleOptimizer::<B>::step(&self.burn, lr, tensor, grad, state)
            }
        }
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        <AdamW as SimpleOptimizer<B>>::to_device(state, device)
    }
}

/// [`FusedAdamW`] for a module, with gradient clipping by global norm when `max_grad_norm` is set (as
/// `AdamWConfig::init` with `GradientClippingConfig::Norm`).
pub fn adamw<B: AutodiffBackend, M: AutodiffModule<B>>(
    weight_decay: f32,
    epsilon: f32,
    max_grad_norm: Option<f32>,
) -> OptimizerAdaptor<FusedAdamW, M, B> {
    let optim = OptimizerAdaptor::from(FusedAdamW::new(weight_decay, epsilon));
    match max_grad_norm {
        Some(n) => optim.with_grad_clipping(GradientClippingConfig::Norm(n).init()),
        None => optim,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::{GradientsParams, Optimizer};

    fn data(n: usize, salt: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + salt * 104_729) % 1000) as f32 / 500.0 - 1.0) * scale)
            .collect()
    }

    fn max_diff(a: &Tensor<Flex, 2>, b: &Tensor<Flex, 2>) -> f32 {
        (a.clone() - b.clone()).abs().max().into_scalar()
    }

    /// The one-pass update against burn's `AdamW` step, in place (buffers held by nobody else) and from shared
    /// buffers (the parameter and moments also held by the caller), with and without weight decay, first step and
    /// a later one.
    #[test]
    fn fused_step_equals_burns_adamw() {
        let dev = Default::default();
        let t = |v: Vec<f32>| Tensor::<Flex, 2>::from_data(TensorData::new(v, [33, 70]), &dev);
        let n = 33 * 70;
        for (wd, time, shared) in [
            (0.01, 0usize, false),
            (0.0, 3, false),
            (0.01, 5, true),
            (0.0, 0, true),
        ] {
            let lr = 3e-3;
            let ours = FusedAdamW::new(wd, 1e-8);
            let theirs = AdamWConfig::new()
                .with_weight_decay(wd)
                .with_epsilon(1e-8)
                .build();
            let state = |k: usize| {
                (time > 0).then(|| {
                    let v2: Vec<f32> = data(n, 3 + k, 0.01).iter().map(|x| x * x).collect();
                    AdamWState::new(AdaptiveMomentumState::new(
                        time,
                        t(data(n, 2 + k, 0.1)),
                        t(v2),
                    ))
                })
            };
            let (p1, g1, s1) = (t(data(n, 0, 1.0)), t(data(n, 1, 0.5)), state(0));
            let (p2, g2, s2) = (t(data(n, 0, 1.0)), t(data(n, 1, 0.5)), state(0));
            // Held elsewhere too: the kernel must leave these buffers as they were.
            let keep = shared.then(|| (p1.clone(), s1.clone()));
            let (a, sa) = SimpleOptimizer::<Flex>::step(&ours, lr, p1, g1, s1);
            let (b, sb) = SimpleOptimizer::<Flex>::step(&theirs, lr, p2, g2, s2);
            let (sa, sb) = (sa.unwrap().momentum, sb.unwrap().momentum);
            assert_eq!(sa.time, sb.time);
            for (what, x, y) in [
                ("param", &a, &b),
                ("m", &sa.moment_1, &sb.moment_1),
                ("v", &sa.moment_2, &sb.moment_2),
            ] {
                let d = max_diff(x, y);
                assert!(
                    d <= 1e-6,
                    "wd {wd} time {time} shared {shared}: {what} differs by {d}"
                );
            }
            if let Some((p, s)) = keep {
                assert_eq!(
                    max_diff(&p, &t(data(n, 0, 1.0))),
                    0.0,
                    "the shared parameter was written"
                );
                if let Some(s) = s {
                    assert_eq!(max_diff(&s.momentum.moment_1, &t(data(n, 2, 0.1))), 0.0);
                }
            }
        }
    }

    /// Through burn's optimizer adaptor (gradient clipping, the state map) a few steps of a linear layer agree with
    /// `AdamWConfig::init`.
    #[test]
    fn training_steps_equal_burns_adamw() {
        type A = Autodiff<Flex>;
        let dev = Default::default();
        let start: Linear<A> = LinearConfig::new(37, 29).init(&dev);
        // Parameters initialise lazily: touch them before cloning, or each clone draws its own.
        let _ = (start.weight.val(), start.bias.as_ref().map(|b| b.val()));
        let x = Tensor::<A, 2>::from_data(TensorData::new(data(8 * 37, 5, 1.0), [8, 37]), &dev);
        let w = Tensor::<A, 2>::from_data(TensorData::new(data(8 * 29, 6, 1.0), [8, 29]), &dev);
        let loss = |m: &Linear<A>| (m.forward(x.clone()) * w.clone()).sum();
        let mut ours = adamw::<A, Linear<A>>(0.01, 1e-8, Some(1.0));
        let mut theirs = AdamWConfig::new()
            .with_weight_decay(0.01)
            .with_epsilon(1e-8)
            .with_grad_clipping(Some(GradientClippingConfig::Norm(1.0)))
            .init::<A, Linear<A>>();
        let (mut a, mut b) = (start.clone(), start);
        for _ in 0..4 {
            let ga = GradientsParams::from_grads(loss(&a).backward(), &a);
            a = ours.step(1e-2, a, ga);
            let gb = GradientsParams::from_grads(loss(&b).backward(), &b);
            b = theirs.step(1e-2, b, gb);
        }
        let d = max_diff(&a.weight.val().inner(), &b.weight.val().inner());
        assert!(d <= 1e-6, "weights differ by {d}");
        let (ba, bb) = (a.bias.unwrap().val().inner(), b.bias.unwrap().val().inner());
        let d = (ba - bb).abs().max().into_scalar();
        assert!(d <= 1e-6, "biases differ by {d}");
    }
}
