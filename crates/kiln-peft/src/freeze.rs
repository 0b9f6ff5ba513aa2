//! Freezing: only parameters whose path a predicate accepts keep `require_grad`; the rest get neither
//! gradients nor optimizer state.

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;

struct Freezer<F: Fn(&str) -> bool> {
    path: Vec<String>,
    trainable: F,
    kept: usize,
    frozen: usize,
}

impl<B: Backend, F: Fn(&str) -> bool> ModuleMapper<B> for Freezer<F> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let path = self.path.join(".");
        let train = (self.trainable)(&path);
        let n = param.shape().num_elements();
        if train {
            self.kept += n;
        } else {
            self.frozen += n;
        }
        param.set_require_grad(train)
    }
}

/// Keep gradients only for parameters whose dotted path (`bert.encoder.layer.0.output.adapter…`) the
/// predicate accepts. Returns the model and its (trainable, total) parameter counts.
pub fn freeze_except<B: Backend, M: Module<B>>(
    model: M,
    trainable: impl Fn(&str) -> bool,
) -> (M, usize, usize) {
    let mut f = Freezer {
        path: Vec::new(),
        trainable,
        kept: 0,
        frozen: 0,
    };
    let model = model.map(&mut f);
    (model, f.kept, f.kept + f.frozen)
}

/// peft's `print_trainable_parameters` line: `trainable params: 294,912 || all params: 124,734,720 ||
/// trainable%: 0.2364`.
pub fn trainable_summary(trainable: usize, total: usize) -> String {
    crate::lora::ParamCount {
        trainable,
        all: total,
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn summary_formats_like_peft() {
        assert_eq!(
            super::trainable_summary(294_912, 124_734_720),
            "trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364"
        );
    }
}
