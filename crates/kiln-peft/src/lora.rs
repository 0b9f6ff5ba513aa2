//! LoRA on a whole model: peft's `LoraModel` / `PeftModel` — inject, freeze, count, merge, switch adapters.

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use burn::prelude::*;

use crate::config::{is_module_to_save, module_prefixes, Bias, LoraConfig, TargetMatcher, Targets};
use crate::error::{PeftError, Result};
use crate::linear::{LoraInit, LoraLayer};
use crate::model::{base_params, linear_paths, map_base_params, BaseParam, ParamAction, PeftModel};

/// Check that an adapter name can name a subdirectory of a save directory and nothing else: not empty, no
/// `.` (as peft, whose adapters are `ModuleDict` keys; this also rules out `.` and `..`), no path
/// separator, no NUL. [`LoraModel::save_pretrained`] writes adapter `name` into `dir/name`, so a name
/// from input data can never lead a write out of `dir`.
pub fn check_adapter_name(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        "empty"
    } else if name.contains('.') {
        "contains `.` (peft adapter names cannot; `..` would leave the save directory)"
    } else if name.contains(['/', '\\']) {
        "contains a path separator"
    } else if name.contains('\0') {
        "contains NUL"
    } else {
        return Ok(());
    };
    Err(PeftError::InvalidAdapterName {
        name: name.into(),
        why,
    })
}

/// A model with named LoRA adapters (peft's `PeftModel` around a `LoraModel`).
///
/// The wrapped model stays a plain kiln model: run it through [`Self::model`] (its forward passes include the
/// active adapter), hand it to an optimizer, save it. One adapter is active at a time (peft's `set_adapter`);
/// the first one added is.
///
/// `modules_to_save` (e.g. a classifier head) are trained in place: kiln keeps no separate copy per adapter, so
/// switching adapters does not switch heads and [`Self::unload`] does not restore the original head.
pub struct LoraModel<B: Backend, M: PeftModel<B>> {
    /// The wrapped model; its forward passes include the active adapter.
    pub model: M,
    adapters: Vec<(String, LoraConfig)>,
    active: Option<String>,
    _b: PhantomData<fn() -> B>,
}

/// One module an adapter targets.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedLayer {
    /// The module's Hugging Face path (`transformer.h.0.attn.c_attn`).
    pub path: String,
    /// Input width of the linear layer.
    pub d_in: usize,
    /// Output width of the linear layer.
    pub d_out: usize,
    /// Rank for this module (after `rank_pattern`).
    pub r: usize,
    /// Scale for this module (after `alpha_pattern`).
    pub scale: f64,
}

/// Trainable and total parameter counts, as peft's `get_nb_trainable_parameters` (a `modules_to_save` module is
/// counted twice in `all`, as peft keeps the original and a trainable copy). `Display` prints what
/// `print_trainable_parameters()` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCount {
    /// Parameters that train.
    pub trainable: usize,
    /// All parameters, adapters included.
    pub all: usize,
}

impl fmt::Display for ParamCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = if self.all == 0 {
            0.0
        } else {
            100.0 * self.trainable as f64 / self.all as f64
        };
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {:.4}",
            thousands(self.trainable),
            thousands(self.all),
            pct
        )
    }
}

/// `{:,d}`.
fn thousands(n: usize) -> String {
    let digits: Vec<char> = n.to_string().chars().collect();
    digits
        .rchunks(3)
        .rev()
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(",")
}

impl<B: Backend, M: PeftModel<B>> LoraModel<B, M> {
    /// A model with no adapter (its forward pass is the base model's, bit for bit).
    pub fn new(model: M) -> Self {
        Self {
            model,
            adapters: Vec::new(),
            active: None,
            _b: PhantomData,
        }
    }

    /// peft's `get_peft_model`: attach adapter `default`, freeze everything else.
    pub fn inject(model: M, config: LoraConfig) -> Result<Self> {
        let mut m = Self::new(model);
        m.add_adapter("default", config)?;
        Ok(m)
    }

    /// Attach a freshly initialised adapter; returns the module paths it targets. The first adapter becomes the
    /// active one; later ones wait for [`Self::set_adapter`] (as peft's `add_adapter`). Gradients are then
    /// enabled only where the active adapter trains ([`Self::mark_trainable`]).
    pub fn add_adapter(&mut self, name: &str, config: LoraConfig) -> Result<Vec<String>> {
        config.validate(Path::new("<LoraConfig>"))?;
        let init = config.init()?;
        let (config, plan) = self.plan(name, config)?;
        let paths = plan.iter().map(|p| p.path.clone()).collect();
        self.attach(name, config, &plan, init);
        Ok(paths)
    }

    /// Resolve a config against the model (default targets, `"all-linear"`, task heads, `fan_in_fan_out`), as
    /// peft records it in the saved config, and list the layers it targets with their rank and scale.
    pub fn plan(
        &self,
        name: &str,
        mut config: LoraConfig,
    ) -> Result<(LoraConfig, Vec<PlannedLayer>)> {
        check_adapter_name(name)?;
        if self.adapters.iter().any(|(n, _)| n == name) {
            return Err(PeftError::DuplicateAdapter(name.into()));
        }
        let model_type = self.model.model_type().to_string();
        let linears = linear_paths(&self.model);
        let heads = self.model.output_layers(config.task_type.as_deref());
        let matcher = TargetMatcher::new(&config, &model_type, &linears, &heads)?;
        let mut plan = Vec::new();
        self.model.visit_linears_ref(&mut |path, l| {
            if matcher.is_target(path) {
                let (r, alpha) = matcher.rank_alpha(path);
                plan.push(PlannedLayer {
                    path: path.into(),
                    d_in: l.d_in(),
                    d_out: l.d_out(),
                    r,
                    scale: config.scale_for(r, alpha),
                });
            }
        });
        if plan.is_empty() {
            let examples = linears
                .iter()
                .take(6)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            return Err(PeftError::NoTargetMatched {
                targets: matcher.describe().into(),
                model_type,
                examples,
                adapter: String::new(),
            });
        }
        // What peft writes back into the config.
        match &config.target_modules {
            None => {
                let defaults = crate::config::default_target_modules(&model_type).unwrap_or(&[]);
                config.target_modules = Some(Targets::List(
                    defaults.iter().map(|s| s.to_string()).collect(),
                ));
            }
            Some(t) if t.is_all_linear() => {
                config.target_modules = Some(Targets::List(
                    linears
                        .iter()
                        .filter(|p| !heads.contains(p))
                        .cloned()
                        .collect(),
                ));
            }
            _ => {}
        }
        let mts = config.resolved_modules_to_save();
        if !mts.is_empty() {
            config.modules_to_save = Some(mts);
        }
        config.fan_in_fan_out = self.model.conv1d();
        Ok((config, plan))
    }

    /// Attach planned layers (no checks).
    pub(crate) fn attach(
        &mut self,
        name: &str,
        config: LoraConfig,
        plan: &[PlannedLayer],
        init: LoraInit,
    ) {
        let active = self.active.is_none();
        let dropout = config.lora_dropout;
        let mut i = 0;
        self.model.visit_linears(&mut |path, l| {
            if plan.get(i).is_some_and(|p| p.path == path) {
                let p = &plan[i];
                let mut layer = LoraLayer::new(
                    name,
                    p.d_in,
                    p.d_out,
                    p.r,
                    p.scale,
                    dropout,
                    init,
                    &l.weight.device(),
                );
                layer.active = active;
                l.add_lora(layer);
                i += 1;
            }
        });
        self.adapters.push((name.to_string(), config));
        if active {
            self.active = Some(name.to_string());
        }
        self.mark_trainable();
    }

    /// The adapter names, in the order they were added.
    pub fn adapter_names(&self) -> Vec<&str> {
        self.adapters.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The active adapter.
    pub fn active_adapter(&self) -> Option<&str> {
        self.active.as_deref()
    }

    /// An adapter's config as peft would save it.
    pub fn config(&self, name: &str) -> Option<&LoraConfig> {
        self.adapters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c)
    }

    pub(crate) fn config_mut(&mut self, name: &str) -> Option<&mut LoraConfig> {
        self.adapters
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c)
    }

    fn check_name(&self, name: &str) -> Result<()> {
        if self.config(name).is_none() {
            return Err(PeftError::UnknownAdapter {
                name: name.into(),
                have: self.adapter_names().join(", "),
            });
        }
        Ok(())
    }

    /// The module paths adapter `name` is attached to.
    pub fn targeted_modules(&self, name: &str) -> Vec<String> {
        let mut v = Vec::new();
        self.model.visit_linears_ref(&mut |p, l| {
            if l.adapter(name).is_some() {
                v.push(p.to_string());
            }
        });
        v
    }

    /// Make `name` the active adapter (the others stop taking part in the forward pass and stop training).
    pub fn set_adapter(&mut self, name: &str) -> Result<()> {
        self.check_name(name)?;
        self.model.visit_linears(&mut |_, l| {
            for a in l.lora.iter_mut() {
                a.active = a.adapter == name;
            }
        });
        self.active = Some(name.to_string());
        self.mark_trainable();
        Ok(())
    }

    /// Remove adapter `name` (unmerging it first if merged).
    pub fn delete_adapter(&mut self, name: &str) -> Result<()> {
        self.check_name(name)?;
        self.model.visit_linears(&mut |_, l| {
            l.remove_adapter(name);
        });
        self.adapters.retain(|(n, _)| n != name);
        if self.active.as_deref() == Some(name) {
            self.active = None;
        }
        self.mark_trainable();
        Ok(())
    }

    /// The module paths carrying any LoRA branch.
    fn lora_wrapped(&self) -> HashSet<String> {
        let mut s = HashSet::new();
        self.model.visit_linears_ref(&mut |p, l| {
            if !l.lora.is_empty() {
                s.insert(p.to_string());
            }
        });
        s
    }

    /// Whether base parameter `p` trains with adapter `cfg` (its bias rule and modules_to_save).
    fn base_trainable(cfg: &LoraConfig, wrapped: &HashSet<String>, p: &BaseParam) -> bool {
        let bias = p.name == "bias"
            && match cfg.bias {
                Bias::None => false,
                Bias::All => true,
                Bias::LoraOnly => wrapped.contains(&p.module),
            };
        bias || Self::in_modules_to_save(cfg, p)
    }

    fn in_modules_to_save(cfg: &LoraConfig, p: &BaseParam) -> bool {
        let names = cfg.modules_to_save.as_deref().unwrap_or(&[]);
        !names.is_empty() && module_prefixes(&p.path).any(|m| is_module_to_save(names, m))
    }

    /// Set require-grad flags as peft does: everything frozen but the active adapter's LoRA weights, the biases
    /// its `bias` selects and its `modules_to_save`. An adapter loaded for inference (`inference_mode`) trains
    /// nothing. Only meaningful on autodiff backends (elsewhere flags do not exist); called by every method that
    /// changes adapters.
    pub fn mark_trainable(&mut self) {
        let active = self.active.clone();
        let cfg = active
            .as_deref()
            .and_then(|a| self.config(a))
            .filter(|c| !c.inference_mode)
            .cloned();
        let wrapped = self.lora_wrapped();
        let model = self.model.clone();
        self.model = map_base_params(model, &mut |p| {
            ParamAction::RequireGrad(
                cfg.as_ref()
                    .is_some_and(|c| Self::base_trainable(c, &wrapped, p)),
            )
        });
        let train_lora = cfg.is_some();
        self.model.visit_linears(&mut |_, l| {
            for a in l.lora.iter_mut() {
                let rg = train_lora && Some(&a.adapter) == active.as_ref();
                a.lora_a = a.lora_a.clone().set_require_grad(rg);
                a.lora_b = a.lora_b.clone().set_require_grad(rg);
            }
        });
    }

    /// Trainable and total parameters, counted as peft counts them (see [`ParamCount`]).
    pub fn trainable_parameters(&self) -> ParamCount {
        let wrapped = self.lora_wrapped();
        let base = base_params(&self.model);
        let mut all: usize = base
            .iter()
            .filter(|p| p.is_hf_parameter())
            .map(BaseParam::numel)
            .sum();
        let mut trainable = 0;
        let mut lora_by_adapter = std::collections::HashMap::<String, usize>::new();
        self.model.visit_linears_ref(&mut |_, l| {
            for a in &l.lora {
                *lora_by_adapter.entry(a.adapter.clone()).or_default() += a.num_params();
            }
        });
        for (name, cfg) in &self.adapters {
            let lora = lora_by_adapter.get(name).copied().unwrap_or(0);
            let mts: usize = base
                .iter()
                .filter(|p| Self::in_modules_to_save(cfg, p))
                .map(BaseParam::numel)
                .sum();
            all += lora + mts;
            if self.active.as_deref() == Some(name.as_str()) && !cfg.inference_mode {
                let bias: usize = base
                    .iter()
                    .filter(|p| p.name == "bias" && !Self::in_modules_to_save(cfg, p))
                    .filter(|p| Self::base_trainable(cfg, &wrapped, p))
                    .map(BaseParam::numel)
                    .sum();
                trainable += lora + mts + bias;
            }
        }
        ParamCount { trainable, all }
    }

    /// Merge the active adapter into the base weights (`W += scale · A B`); its branch is then skipped, so the
    /// outputs stay the same up to rounding. Returns the number of layers merged.
    pub fn merge(&mut self) -> usize {
        let Some(name) = self.active.clone() else {
            return 0;
        };
        let mut n = 0;
        self.model
            .visit_linears(&mut |_, l| n += usize::from(l.merge_adapter(&name)));
        n
    }

    /// Undo [`Self::merge`] for every merged adapter. Returns the number of layers unmerged.
    pub fn unmerge(&mut self) -> usize {
        let names = self
            .adapters
            .iter()
            .map(|(n, _)| n.clone())
            .collect::<Vec<_>>();
        let mut n = 0;
        self.model.visit_linears(&mut |_, l| {
            for name in &names {
                n += usize::from(l.unmerge_adapter(name));
            }
        });
        n
    }

    /// peft's `merge_and_unload`: merge the active adapter, drop every LoRA branch, return the plain model.
    pub fn merge_and_unload(mut self) -> M {
        self.merge();
        self.model.visit_linears(&mut |_, l| l.lora.clear());
        self.model
    }

    /// peft's `unload`: drop every LoRA branch without merging (merged ones are unmerged first).
    pub fn unload(mut self) -> M {
        self.unmerge();
        self.model.visit_linears(&mut |_, l| l.lora.clear());
        self.model
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_print_as_peft_prints_them() {
        let c = ParamCount {
            trainable: 1024,
            all: 41344,
        };
        assert_eq!(
            c.to_string(),
            "trainable params: 1,024 || all params: 41,344 || trainable%: 2.4768"
        );
        let c = ParamCount {
            trainable: 294_912,
            all: 124_734_720,
        };
        assert_eq!(
            c.to_string(),
            "trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364"
        );
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }
}
