//! Intrinsic-dimension fine-tuning (SAID / DID) as a training task: [`SaidTask`] wraps any [`Task`] whose model
//! is a PEFT model and trains only the intrinsic vector d (and SAID's per-tensor scales λ) with the same loop,
//! schedule, accumulation, clipping and checkpoints as every other method. The checkpoints hold d and λ only.

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use kiln_data::Batch;
use kiln_peft::{PeftModel, Said, SaidParams};

use crate::error::{Error, Result};
use crate::trainer::{EvalResult, Task};

/// `inner`'s task trained in SAID's subspace: the loss is `inner`'s loss at θ = θ₀ + λ · P · d, θ₀ = `base`.
pub struct SaidTask<'a, B: AutodiffBackend, T: Task<B>> {
    /// The task on the full model (loss and evaluation).
    pub inner: &'a T,
    /// The projection plan.
    pub said: &'a Said,
    /// θ₀, the frozen base model, on the inner backend.
    pub base: <T::Model as AutodiffModule<B>>::InnerModule,
}

impl<B, T> Task<B> for SaidTask<'_, B, T>
where
    B: AutodiffBackend,
    T: Task<B>,
    T::Model: PeftModel<B>,
    <T::Model as AutodiffModule<B>>::InnerModule: PeftModel<B::InnerBackend> + Clone,
{
    type Model = SaidParams<B>;

    fn loss(&self, model: &SaidParams<B>, batch: &Batch) -> Result<Tensor<B, 1>> {
        self.said
            .loss::<B, T::Model, Error>(model, &self.base, |m| self.inner.loss(m, batch))
    }

    fn evaluate(&self, model: &SaidParams<B::InnerBackend>) -> Result<EvalResult> {
        let m = self.said.apply(
            self.base.clone(),
            &model.intrinsic_values(),
            model.scale_values().as_deref(),
        );
        self.inner.evaluate(&m)
    }

    fn primary_metric(&self) -> (&str, bool) {
        self.inner.primary_metric()
    }

    fn loss_weight(&self, batch: &Batch) -> f64 {
        self.inner.loss_weight(batch)
    }
}

/// The paper's d90: the smallest d whose accuracy reaches 90% of full fine-tuning's (`None` if none does).
pub fn d90(runs: &[(usize, f64)], full: f64) -> Option<usize> {
    runs.iter()
        .filter(|(_, acc)| *acc >= 0.9 * full)
        .map(|(d, _)| *d)
        .min()
}

#[cfg(test)]
mod tests {
    #[test]
    fn d90_is_the_smallest_dimension_reaching_ninety_percent() {
        let runs = [(10, 0.55), (100, 0.80), (1000, 0.86), (10000, 0.9)];
        assert_eq!(super::d90(&runs, 0.92), Some(1000));
        assert_eq!(super::d90(&runs, 0.88), Some(100));
        assert_eq!(super::d90(&runs, 1.2), None);
    }
}
