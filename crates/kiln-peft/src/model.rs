//! How a PEFT method sees a model: its linear layers by Hugging Face module path ([`PeftModel`]), and every other
//! parameter by its Hugging Face name ([`base_params`], [`read_base_params`], [`map_base_params`]).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

use crate::linear::PeftLinear;

/// A model a PEFT method can be attached to.
///
/// Paths are module paths as peft sees them inside the Hugging Face model (`model.named_modules()` of e.g.
/// `GPT2LMHeadModel`): `transformer.h.0.attn.c_attn`, `model.decoder.layers.0.self_attn.q_proj`,
/// `bert.encoder.layer.0.attention.self.query`. They are what `target_modules` matches and what adapter files
/// are keyed by.
///
/// A new architecture implements [`Self::model_type`], the two visitors (the same list of layers, once by shared
/// and once by mutable reference) and, where a kiln field name differs from the Hugging Face one, one of
/// [`Self::hf_module_path`]. A new PEFT method that acts on linear layers adds a field to [`PeftLinear`]
/// (as `lora`) and reaches the layers through the visitors; one that acts elsewhere (prompt tuning on the
/// embeddings, bottleneck adapters after a block) adds a hook of its own here.
pub trait PeftModel<B: Backend>: Module<B> {
    /// `config.json`'s `model_type` (selects peft's default target modules).
    fn model_type(&self) -> &str;

    /// Every linear layer with its Hugging Face module path, in module order.
    fn visit_linears(&mut self, f: &mut dyn FnMut(&str, &mut PeftLinear<B>));

    /// [`Self::visit_linears`] by shared reference.
    fn visit_linears_ref(&self, f: &mut dyn FnMut(&str, &PeftLinear<B>));

    /// The Hugging Face module path of a kiln (burn) module path, e.g. BERT's `…attention.self_attn` →
    /// `…attention.self`. Identity by default.
    fn hf_module_path(&self, module_path: &str) -> String {
        module_path.to_string()
    }

    /// The output head(s) `target_modules="all-linear"` leaves out, as peft (the output embedding of a
    /// generation model, the classifier of a `SEQ_CLS` model). None by default.
    fn output_layers(&self, _task_type: Option<&str>) -> Vec<String> {
        Vec::new()
    }

    /// Whether the Hugging Face model's linear layers are `Conv1D` (weights stored `[in, out]`; peft sets
    /// `fan_in_fan_out`). GPT-2 only, of kiln's models.
    fn conv1d(&self) -> bool {
        false
    }
}

/// The Hugging Face module paths of a model's linear layers, in order.
pub fn linear_paths<B: Backend, M: PeftModel<B>>(model: &M) -> Vec<String> {
    let mut v = Vec::new();
    model.visit_linears_ref(&mut |p, _| v.push(p.to_string()));
    v
}

/// A parameter of the base model (LoRA parameters excluded) as Hugging Face names it.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseParam {
    /// e.g. `transformer.h.0.ln_1.bias` (LayerNorm `gamma`/`beta` are reported as `weight`/`bias`).
    pub path: String,
    /// The module holding it, e.g. `transformer.h.0.ln_1`.
    pub module: String,
    /// The last path component (`weight`, `bias`, …).
    pub name: String,
    /// Shape in kiln's layout.
    pub shape: Vec<usize>,
    /// A [`PeftLinear`] weight: kiln stores `[in, out]`, Hugging Face `nn.Linear` `[out, in]`.
    pub linear_weight: bool,
}

impl BaseParam {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// What [`map_base_params`] does to one parameter.
#[derive(Debug, Clone)]
pub enum ParamAction {
    /// Leave the parameter as it is.
    Keep,
    /// Set its require-grad flag (meaningful on autodiff backends).
    RequireGrad(bool),
    /// Replace its value (same shape, kiln's layout), keeping its id and, on an autodiff backend, its
    /// require-grad flag (inner backends have none).
    Replace(TensorData),
    /// Add to its value (same shape, kiln's layout), keeping its id and, on an autodiff backend, its require-grad
    /// flag (the result is a fresh leaf).
    Add(TensorData),
}

const NORMS: &[&str] = &[
    "Struct:LayerNorm",
    "Struct:RmsNorm",
    "Struct:GroupNorm",
    "Struct:BatchNorm",
    "Struct:InstanceNorm",
];

/// Tracks the module path during a burn visit/map.
struct PathStack<'m, B: Backend, M: PeftModel<B>> {
    model: &'m M,
    stack: Vec<(String, String)>,
    _b: std::marker::PhantomData<B>,
}

impl<'m, B: Backend, M: PeftModel<B>> PathStack<'m, B, M> {
    fn new(model: &'m M) -> Self {
        Self {
            model,
            stack: Vec::new(),
            _b: std::marker::PhantomData,
        }
    }

    fn enter(&mut self, name: &str, container: &str) {
        self.stack.push((name.to_string(), container.to_string()));
    }

    fn exit(&mut self) {
        self.stack.pop();
    }

    /// The current parameter, or `None` inside a LoRA branch.
    fn current(&self, shape: Vec<usize>) -> Option<BaseParam> {
        if self
            .stack
            .iter()
            .any(|(n, c)| n == "lora" && c == "Struct:PeftLinear")
        {
            return None;
        }
        let (name, container) = self.stack.last()?;
        let module_burn = self.stack[..self.stack.len() - 1]
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(".");
        let module = self.model.hf_module_path(&module_burn);
        let name = match (name.as_str(), NORMS.contains(&container.as_str())) {
            ("gamma", true) => "weight".to_string(),
            ("beta", true) => "bias".to_string(),
            (n, _) => n.to_string(),
        };
        let linear_weight =
            container == "Struct:PeftLinear" && name == "weight" && shape.len() == 2;
        let path = if module.is_empty() {
            name.clone()
        } else {
            format!("{module}.{name}")
        };
        Some(BaseParam {
            path,
            module,
            name,
            shape,
            linear_weight,
        })
    }
}

struct Reader<'m, 'f, B: Backend, M: PeftModel<B>> {
    at: PathStack<'m, B, M>,
    want: &'f mut dyn FnMut(&BaseParam) -> bool,
    out: Vec<(BaseParam, Option<TensorData>)>,
}

impl<B: Backend, M: PeftModel<B>> ModuleVisitor<B> for Reader<'_, '_, B, M> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.at.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.at.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(p) = self.at.current(param.dims().to_vec()) {
            let data = (self.want)(&p).then(|| param.val().into_data());
            self.out.push((p, data));
        }
    }
}

/// Every float parameter of the model outside LoRA branches, with Hugging Face names, in module order.
pub fn base_params<B: Backend, M: PeftModel<B>>(model: &M) -> Vec<BaseParam> {
    let mut r = Reader {
        at: PathStack::new(model),
        want: &mut |_| false,
        out: Vec::new(),
    };
    model.visit(&mut r);
    r.out.into_iter().map(|(p, _)| p).collect()
}

/// Tensors that kiln stores as parameters but transformers registers as buffers (not in `model.parameters()`,
/// so not in peft's counts): BART's `final_logits_bias`.
pub const HF_BUFFERS: &[&str] = &["final_logits_bias"];

impl BaseParam {
    /// Whether transformers counts it as a parameter (see [`HF_BUFFERS`]).
    pub fn is_hf_parameter(&self) -> bool {
        !HF_BUFFERS.contains(&self.name.as_str())
    }
}

/// The base model's parameter count as `sum(p.numel() for p in model.parameters())` gives it.
pub fn hf_param_count<B: Backend, M: PeftModel<B>>(model: &M) -> usize {
    base_params(model)
        .iter()
        .filter(|p| p.is_hf_parameter())
        .map(BaseParam::numel)
        .sum()
}

/// The values (kiln's layout) of the base parameters `want` selects.
pub fn read_base_params<B: Backend, M: PeftModel<B>>(
    model: &M,
    want: &mut dyn FnMut(&BaseParam) -> bool,
) -> Vec<(BaseParam, TensorData)> {
    let mut r = Reader {
        at: PathStack::new(model),
        want,
        out: Vec::new(),
    };
    model.visit(&mut r);
    r.out
        .into_iter()
        .filter_map(|(p, d)| d.map(|d| (p, d)))
        .collect()
}

struct Mapper<'m, 'f, B: Backend, M: PeftModel<B>> {
    at: PathStack<'m, B, M>,
    f: &'f mut dyn FnMut(&BaseParam) -> ParamAction,
}

impl<B: Backend, M: PeftModel<B>> ModuleMapper<B> for Mapper<'_, '_, B, M> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.at.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.at.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some(p) = self.at.current(param.dims().to_vec()) else {
            return param;
        };
        match (self.f)(&p) {
            ParamAction::Keep => param,
            ParamAction::RequireGrad(rg) => param.set_require_grad(rg),
            ParamAction::Replace(data) => {
                let (id, t, mapper) = param.consume();
                let rg = t.is_require_grad();
                let new = Tensor::<B, D>::from_data(data, &t.device()).set_require_grad(rg);
                Param::from_mapped_value(id, new, mapper)
            }
            ParamAction::Add(data) => {
                let (id, t, mapper) = param.consume();
                let rg = t.is_require_grad();
                let delta = Tensor::<B, D>::from_data(data, &t.device());
                // Untracked first (burn's `detach` keeps the flag): on an autodiff backend the sum of a tracked
                // leaf is not a leaf, and only a leaf can be made to require a gradient again.
                let sum = t.set_require_grad(false) + delta;
                Param::from_mapped_value(id, sum.set_require_grad(rg), mapper)
            }
        }
    }
}

/// Apply `f` to every base parameter (LoRA branches are left alone).
pub fn map_base_params<B: Backend, M: PeftModel<B>>(
    model: M,
    f: &mut dyn FnMut(&BaseParam) -> ParamAction,
) -> M {
    // The mapper borrows a copy for path translation (cheap: burn tensors are reference-counted).
    let view = model.clone();
    let mut m = Mapper {
        at: PathStack::new(&view),
        f,
    };
    model.map(&mut m)
}

struct GradReader<'m, 'g, 'f, B: burn::tensor::backend::AutodiffBackend, M: PeftModel<B>> {
    at: PathStack<'m, B, M>,
    grads: &'g B::Gradients,
    want: &'f mut dyn FnMut(&BaseParam) -> bool,
    out: Vec<(BaseParam, Option<TensorData>)>,
}

impl<B: burn::tensor::backend::AutodiffBackend, M: PeftModel<B>> ModuleVisitor<B>
    for GradReader<'_, '_, '_, B, M>
{
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.at.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.at.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(p) = self.at.current(param.dims().to_vec()) {
            if (self.want)(&p) {
                let g = param.val().grad(self.grads).map(|g| g.into_data());
                self.out.push((p, g));
            }
        }
    }
}

/// The gradients (kiln's layout) of the base parameters `want` selects, after `loss.backward()`: `None` for a
/// parameter that did not require a gradient or did not take part in the loss.
pub fn read_base_grads<B: burn::tensor::backend::AutodiffBackend, M: PeftModel<B>>(
    model: &M,
    grads: &B::Gradients,
    want: &mut dyn FnMut(&BaseParam) -> bool,
) -> Vec<(BaseParam, Option<TensorData>)> {
    let mut r = GradReader {
        at: PathStack::new(model),
        grads,
        want,
        out: Vec::new(),
    };
    model.visit(&mut r);
    r.out
}
