//! The PEFT adapter format: `adapter_config.json` + `adapter_model.safetensors` with keys
//! `base_model.model.<module path>.lora_A.weight` `[r, in]` and `.lora_B.weight` `[out, r]`; biases
//! (`bias="all"`/`"lora_only"`) as `<module>.bias`, or `<module>.base_layer.bias` on a LoRA-wrapped layer;
//! `modules_to_save` parameters under their plain names. A non-default adapter goes in a subdirectory named after
//! it (peft's `save_pretrained`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::DType;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::config::{is_module_to_save, module_prefixes, Bias, LoraConfig};
use crate::error::{PeftError, Result};
use crate::linear::LoraInit;
use crate::lora::LoraModel;
use crate::model::{
    base_params, map_base_params, read_base_params, BaseParam, ParamAction, PeftModel,
};

/// The adapter config file in an adapter directory.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The adapter weights file in an adapter directory.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Every peft key starts with this.
pub const KEY_PREFIX: &str = "base_model.model.";

/// A float tensor as stored in a file (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Values in row-major order.
    pub data: Vec<f32>,
}

impl RawTensor {
    /// A tensor of `shape` holding `data` (row-major).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    /// The transpose of a 2-D tensor.
    pub fn t(&self) -> RawTensor {
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut out = vec![0f32; self.data.len()];
        for i in 0..r {
            for j in 0..c {
                out[j * r + i] = self.data[i * c + j];
            }
        }
        RawTensor::new(vec![c, r], out)
    }

    fn from_data(d: TensorData) -> Self {
        let shape = d.shape.to_vec();
        RawTensor::new(shape, d.convert::<f32>().to_vec().expect("f32 data"))
    }

    fn into_data(self) -> TensorData {
        TensorData::new(self.data, self.shape)
    }
}

/// Read every tensor of a safetensors file as f32 (F16, BF16 and F64 are converted).
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, RawTensor>> {
    let bytes = std::fs::read(path).map_err(|e| PeftError::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| PeftError::Safetensors {
        path: path.into(),
        msg: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F64 => DType::F64,
            other => {
                return Err(PeftError::Dtype {
                    path: path.into(),
                    key: name,
                    dtype: format!("{other:?}"),
                })
            }
        };
        let shape = view.shape().to_vec();
        let data = TensorData::from_bytes_vec(view.data().to_vec(), shape.clone(), dtype);
        let data = data
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| PeftError::Safetensors {
                path: path.into(),
                msg: format!("tensor `{name}`: {e:?}"),
            })?;
        out.insert(name, RawTensor::new(shape, data));
    }
    Ok(out)
}

/// Write f32 tensors as safetensors with peft's metadata (`{"format": "pt"}`).
pub fn write_tensors(path: &Path, tensors: &BTreeMap<String, RawTensor>) -> Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.shape.clone(),
                t.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(k, s, b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| PeftError::Safetensors {
                    path: path.into(),
                    msg: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize_to_file(views, Some(meta), path).map_err(|e| {
        PeftError::Safetensors {
            path: path.into(),
            msg: e.to_string(),
        }
    })
}

/// The checkpoint key of a base parameter: `<module>.base_layer.<name>` when LoRA wraps the module.
fn base_key(p: &BaseParam, wrapped: &HashSet<String>) -> String {
    if wrapped.contains(&p.module) {
        format!("{KEY_PREFIX}{}.base_layer.{}", p.module, p.name)
    } else {
        format!("{KEY_PREFIX}{}", p.path)
    }
}

fn tensor_raw<B: Backend>(t: Tensor<B, 2>) -> RawTensor {
    RawTensor::from_data(t.into_data())
}

impl<B: Backend, M: PeftModel<B>> LoraModel<B, M> {
    /// The tensors peft's `get_peft_model_state_dict` returns for adapter `name`, in peft's layouts.
    pub fn adapter_state_dict(&self, name: &str) -> Result<BTreeMap<String, RawTensor>> {
        let cfg = self.config(name).ok_or_else(|| PeftError::UnknownAdapter {
            name: name.into(),
            have: self.adapter_names().join(", "),
        })?;
        let mut out = BTreeMap::new();
        let mut wrapped = HashSet::new();
        self.model.visit_linears_ref(&mut |path, l| {
            if !l.lora.is_empty() {
                wrapped.insert(path.to_string());
            }
            if let Some(a) = l.adapter(name) {
                out.insert(
                    format!("{KEY_PREFIX}{path}.lora_A.weight"),
                    tensor_raw(a.lora_a.val().transpose()),
                );
                out.insert(
                    format!("{KEY_PREFIX}{path}.lora_B.weight"),
                    tensor_raw(a.lora_b.val().transpose()),
                );
            }
        });
        let mts = cfg.modules_to_save.clone().unwrap_or_default();
        let conv1d = self.model.conv1d();
        let bias = cfg.bias;
        let in_mts = |p: &BaseParam| {
            !mts.is_empty() && module_prefixes(&p.path).any(|m| is_module_to_save(&mts, m))
        };
        let want_bias = |p: &BaseParam| {
            p.name == "bias"
                && match bias {
                    Bias::None => false,
                    Bias::All => true,
                    Bias::LoraOnly => wrapped.contains(&p.module),
                }
        };
        for (p, data) in read_base_params(&self.model, &mut |p| want_bias(p) || in_mts(p)) {
            let raw = RawTensor::from_data(data);
            if in_mts(&p) {
                let raw = if p.linear_weight && !conv1d {
                    raw.t()
                } else {
                    raw
                };
                out.insert(format!("{KEY_PREFIX}{}", p.path), raw);
            } else {
                out.insert(base_key(&p, &wrapped), raw);
            }
        }
        Ok(out)
    }

    /// Write adapter `name` to `dir` (`adapter_config.json` with `inference_mode: true`, as peft writes it, and
    /// `adapter_model.safetensors`).
    pub fn save_adapter(&self, name: &str, dir: &Path) -> Result<()> {
        let tensors = self.adapter_state_dict(name)?;
        let mut cfg = self
            .config(name)
            .expect("checked by adapter_state_dict")
            .clone();
        cfg.inference_mode = true;
        std::fs::create_dir_all(dir).map_err(|e| PeftError::io(dir, e))?;
        cfg.save(&dir.join(CONFIG_FILE))?;
        write_tensors(&dir.join(WEIGHTS_FILE), &tensors)
    }

    /// peft's `save_pretrained`: adapter `default` in `dir`, every other adapter in `dir/<name>`.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        for name in self.adapter_names() {
            crate::lora::check_adapter_name(name)?;
            let d = if name == "default" {
                dir.to_path_buf()
            } else {
                dir.join(name)
            };
            self.save_adapter(name, &d)?;
        }
        Ok(())
    }

    /// peft's `PeftModel.from_pretrained`: load the adapter in `dir` as `default`. With `is_trainable = false` (peft's
    /// default) nothing trains.
    pub fn from_pretrained(model: M, dir: &Path, is_trainable: bool) -> Result<Self> {
        let mut m = Self::new(model);
        m.load_adapter(dir, "default", is_trainable)?;
        Ok(m)
    }

    /// peft's `load_adapter`: read the adapter in `dir` under the name `name`. The file is checked against the model
    /// before anything is attached: a tensor for a module the model lacks, a wrong shape or rank, a missing tensor, or
    /// another `peft_type` is an error naming the key, and the model is left as it was.
    pub fn load_adapter(&mut self, dir: &Path, name: &str, is_trainable: bool) -> Result<()> {
        let cfg_path = dir.join(CONFIG_FILE);
        let mut config = LoraConfig::load(&cfg_path)?;
        config.inference_mode = !is_trainable;
        let made_for = config.base_model_name_or_path.clone();
        let (config, plan) = self.plan(name, config).map_err(|e| match e {
            PeftError::NoTargetMatched {
                targets,
                model_type,
                examples,
                ..
            } => PeftError::NoTargetMatched {
                targets,
                model_type,
                examples,
                adapter: format!(
                    "{}: adapter {}{}: ",
                    cfg_path.display(),
                    dir.display(),
                    made_for
                        .map(|b| format!(" (made for `{b}`)"))
                        .unwrap_or_default()
                ),
            },
            e => e,
        })?;
        let weights = dir.join(WEIGHTS_FILE);
        if !weights.is_file() && dir.join("adapter_model.bin").is_file() {
            return Err(PeftError::Unsupported {
                path: dir.join("adapter_model.bin"),
                field: "adapter_model.bin".into(),
                msg: "pickle adapters are not read; re-save with safe_serialization=True".into(),
            });
        }
        let file = read_tensors(&weights)?;

        // What the model expects: LoRA tensors of the planned layers (peft layout) and base parameters.
        let mut lora_expected: BTreeMap<String, (usize, Vec<usize>)> = BTreeMap::new();
        for (i, p) in plan.iter().enumerate() {
            lora_expected.insert(
                format!("{KEY_PREFIX}{}.lora_A.weight", p.path),
                (i, vec![p.r, p.d_in]),
            );
            lora_expected.insert(
                format!("{KEY_PREFIX}{}.lora_B.weight", p.path),
                (i, vec![p.d_out, p.r]),
            );
        }
        let linears: HashSet<String> = crate::model::linear_paths(&self.model)
            .into_iter()
            .collect();
        let base: HashMap<String, BaseParam> = base_params(&self.model)
            .into_iter()
            .map(|p| (p.path.clone(), p))
            .collect();
        let conv1d = self.model.conv1d();
        let mut lora_values: HashMap<String, RawTensor> = HashMap::new();
        let mut base_values: HashMap<String, RawTensor> = HashMap::new();
        for (key, t) in file {
            let rel = key.strip_prefix(KEY_PREFIX).unwrap_or(&key).to_string();
            let full = format!("{KEY_PREFIX}{rel}");
            if let Some(module) = rel
                .strip_suffix(".lora_A.weight")
                .or_else(|| rel.strip_suffix(".lora_B.weight"))
            {
                let Some((_, expected)) = lora_expected.get(&full) else {
                    let err = if linears.contains(module) {
                        untargeted
                    } else {
                        missing
                    };
                    return Err(err(&weights, &key, module));
                };
                if &t.shape != expected {
                    let is_a = rel.ends_with(".lora_A.weight");
                    let (r_dim, other_dim) = if is_a { (0, 1) } else { (1, 0) };
                    if t.shape.len() == 2 && t.shape[other_dim] == expected[other_dim] {
                        return Err(PeftError::RankMismatch {
                            path: weights,
                            key,
                            expected: expected[r_dim],
                            found: t.shape[r_dim],
                        });
                    }
                    return Err(PeftError::ShapeMismatch {
                        path: weights,
                        key,
                        expected: expected.clone(),
                        found: t.shape,
                    });
                }
                lora_values.insert(full, t);
                continue;
            }
            let last = rel.rsplit('.').next().unwrap_or_default();
            if last.starts_with("lora_") || rel.contains(".lora_") {
                return Err(PeftError::UnsupportedKey {
                    path: weights,
                    key,
                    kind:
                        "LoRA tensor of a kind other than lora_A/lora_B (DoRA, embedding LoRA, …)"
                            .into(),
                });
            }
            let param_path = rel.replace(".base_layer.", ".");
            let Some(p) = base.get(&param_path) else {
                let module = param_path
                    .rsplit_once('.')
                    .map_or(param_path.as_str(), |(m, _)| m)
                    .to_string();
                return Err(missing(&weights, &key, &module));
            };
            let t = if p.linear_weight && !conv1d && t.shape.len() == 2 {
                t.t()
            } else {
                t
            };
            if t.shape != p.shape {
                let hf_shape = |s: &[usize]| {
                    if p.linear_weight && !conv1d {
                        vec![s[1], s[0]]
                    } else {
                        s.to_vec()
                    }
                };
                return Err(PeftError::ShapeMismatch {
                    path: weights,
                    key,
                    expected: hf_shape(&p.shape),
                    found: hf_shape(&t.shape),
                });
            }
            base_values.insert(param_path, t);
        }
        if let Some(k) = lora_expected.keys().find(|k| !lora_values.contains_key(*k)) {
            return Err(PeftError::MissingKey {
                path: weights,
                key: k.clone(),
            });
        }

        // All checked: attach and fill.
        self.attach(name, config, &plan, LoraInit::Zeros);
        self.model.visit_linears(&mut |path, l| {
            let Some(a) = l.adapter_mut(name) else { return };
            let ka = format!("{KEY_PREFIX}{path}.lora_A.weight");
            let kb = format!("{KEY_PREFIX}{path}.lora_B.weight");
            if let (Some(ta), Some(tb)) = (lora_values.remove(&ka), lora_values.remove(&kb)) {
                a.lora_a = replace(a.lora_a.clone(), ta.t());
                a.lora_b = replace(a.lora_b.clone(), tb.t());
            }
        });
        if !base_values.is_empty() {
            let model = self.model.clone();
            self.model = map_base_params(model, &mut |p| match base_values.remove(&p.path) {
                Some(t) => ParamAction::Replace(t.into_data()),
                None => ParamAction::Keep,
            });
        }
        Ok(())
    }

    /// Directory of adapter `name` under a [`Self::save_pretrained`] directory.
    pub fn adapter_dir(dir: &Path, name: &str) -> PathBuf {
        if name == "default" {
            dir.to_path_buf()
        } else {
            dir.join(name)
        }
    }

    /// Mark `name` trainable (or not) after loading; see [`LoraModel::mark_trainable`].
    pub fn set_trainable(&mut self, name: &str, trainable: bool) -> Result<()> {
        let have = self.adapter_names().join(", ");
        let cfg = self
            .config_mut(name)
            .ok_or_else(|| PeftError::UnknownAdapter {
                name: name.into(),
                have,
            })?;
        cfg.inference_mode = !trainable;
        self.mark_trainable();
        Ok(())
    }
}

fn missing(path: &Path, key: &str, module: &str) -> PeftError {
    PeftError::MissingModule {
        path: path.into(),
        key: key.into(),
        module: module.into(),
    }
}

fn untargeted(path: &Path, key: &str, module: &str) -> PeftError {
    PeftError::UntargetedModule {
        path: path.into(),
        key: key.into(),
        module: module.into(),
    }
}

/// A parameter with a new value (kiln layout), keeping its id and require-grad flag.
fn replace<B: Backend>(p: Param<Tensor<B, 2>>, t: RawTensor) -> Param<Tensor<B, 2>> {
    p.map(|old| {
        let rg = old.is_require_grad();
        Tensor::<B, 2>::from_data(t.into_data(), &old.device()).set_require_grad(rg)
    })
}
