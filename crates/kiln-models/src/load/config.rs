//! Reading `config.json` with errors that name the file and the field.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::load::error::{Error, Result};

/// A parsed `config.json`, with typed accessors that report the file and field on error.
#[derive(Debug, Clone)]
pub struct RawConfig {
    /// The file the config was read from (named in errors).
    pub path: PathBuf,
    /// The top-level JSON object.
    pub map: Map<String, Value>,
}

impl RawConfig {
    /// Reads and parses the config file at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(path, &text)
    }

    /// Parses `text` as the config at `path`; errors unless it is a JSON object.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        match value {
            Value::Object(map) => Ok(Self {
                path: path.to_path_buf(),
                map,
            }),
            _ => Err(Error::field(path, "<root>", "expected a JSON object")),
        }
    }

    /// The required `model_type` string (e.g. `"gpt2"`, `"t5"`).
    pub fn model_type(&self) -> Result<String> {
        self.req_str("model_type")
    }

    fn get(&self, field: &str) -> Option<&Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn err(&self, field: &str, msg: impl Into<String>) -> Error {
        Error::field(&self.path, field, msg)
    }

    /// A required positive integer.
    pub fn req_usize(&self, field: &str) -> Result<usize> {
        match self.get(field) {
            None => Err(self.err(field, "missing required field")),
            Some(v) => self.as_usize(field, v),
        }
    }

    /// An optional integer, `default` when absent.
    pub fn usize_or(&self, field: &str, default: usize) -> Result<usize> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => self.as_usize(field, v),
        }
    }

    /// The first of several alias fields that is present (e.g. `n_embd` / `hidden_size`).
    pub fn req_usize_any(&self, fields: &[&str]) -> Result<usize> {
        for f in fields {
            if let Some(v) = self.get(f) {
                return self.as_usize(f, v);
            }
        }
        Err(self.err(fields[0], "missing required field"))
    }

    /// An optional non-negative integer; `None` when absent or `null`.
    pub fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        self.get(field).map(|v| self.as_usize(field, v)).transpose()
    }

    /// An optional token id; accepts a list (takes the first element), as some configs store eos lists.
    pub fn opt_token_id(&self, field: &str) -> Result<Option<u32>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Array(a)) if a.is_empty() => Ok(None),
            Some(Value::Array(a)) => Ok(Some(self.as_usize(field, &a[0])? as u32)),
            Some(v) => Ok(Some(self.as_usize(field, v)? as u32)),
        }
    }

    fn as_usize(&self, field: &str, v: &Value) -> Result<usize> {
        v.as_u64()
            .map(|x| x as usize)
            .ok_or_else(|| self.err(field, format!("expected a non-negative integer, found {v}")))
    }

    /// An optional number, `default` when absent or `null`.
    pub fn f64_or(&self, field: &str, default: f64) -> Result<f64> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(field, format!("expected a number, found {v}"))),
        }
    }

    /// An optional boolean, `default` when absent or `null`.
    pub fn bool_or(&self, field: &str, default: bool) -> Result<bool> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(field, format!("expected true or false, found {v}"))),
        }
    }

    /// An optional string, `default` when absent or `null`.
    pub fn str_or(&self, field: &str, default: &str) -> Result<String> {
        match self.get(field) {
            None => Ok(default.to_string()),
            Some(v) => v
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| self.err(field, format!("expected a string, found {v}"))),
        }
    }

    /// A required string.
    pub fn req_str(&self, field: &str) -> Result<String> {
        match self.get(field) {
            None => Err(self.err(field, "missing required field")),
            Some(v) => v
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| self.err(field, format!("expected a string, found {v}"))),
        }
    }

    /// Check a size is in a sane range, naming the field when it is not.
    pub fn check_range(&self, field: &str, value: usize, min: usize, max: usize) -> Result<()> {
        if value < min || value > max {
            return Err(self.err(field, format!("{value} is out of range [{min}, {max}]")));
        }
        Ok(())
    }

    /// `a % b == 0`, naming both fields otherwise.
    pub fn check_divides(
        &self,
        field: &str,
        value: usize,
        by_field: &str,
        by: usize,
    ) -> Result<()> {
        if by == 0 || value % by != 0 {
            return Err(self.err(
                field,
                format!("{value} is not divisible by {by_field} = {by}"),
            ));
        }
        Ok(())
    }

    /// An activation name from the config, checked against what kiln implements.
    pub fn activation(&self, field: &str, default: &str) -> Result<Activation> {
        let name = self.str_or(field, default)?;
        Activation::parse(&name).ok_or_else(|| {
            self.err(field, format!("unsupported activation `{name}` (supported: gelu, gelu_new, relu, gelu_pytorch_tanh, silu)"))
        })
    }
}

/// Activation functions as named in HF configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact erf gelu.
    Gelu,
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluNew,
    /// ReLU (`relu`): `max(x, 0)`.
    Relu,
    /// SiLU / swish (`silu`, `swish`): `x · sigmoid(x)`.
    Silu,
}

impl Activation {
    /// The activation for an HF name (`gelu`, `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`, `relu`, `silu`,
    /// `swish`); `None` for any other.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluNew,
            "relu" => Self::Relu,
            "silu" | "swish" => Self::Silu,
            _ => return None,
        })
    }

    /// Applies the activation elementwise (GELU through kiln-kernels' vectorised kernel on flex).
    pub fn forward<B: burn::prelude::Backend, const D: usize>(
        self,
        x: burn::prelude::Tensor<B, D>,
    ) -> burn::prelude::Tensor<B, D> {
        use burn::tensor::activation as act;
        let x = match self {
            Self::Gelu | Self::GeluNew => {
                match kiln_kernels::try_fused_gelu(x, self == Self::GeluNew) {
                    Ok(y) => return y,
                    Err(x) => x,
                }
            }
            _ => x,
        };
        match self {
            Self::Gelu => act::gelu(x),
            Self::GeluNew => {
                // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
                let c = (2.0f64 / std::f64::consts::PI).sqrt();
                let inner =
                    (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044715)).mul_scalar(c);
                x.mul_scalar(0.5) * (inner.tanh().add_scalar(1.0))
            }
            Self::Relu => act::relu(x),
            Self::Silu => act::silu(x),
        }
    }
}
