//! kiln-peft: parameter-efficient fine-tuning for kiln's models, compatible with Hugging Face peft's files.
//!
//! - [`PeftLinear`]: the linear layer kiln-models builds its architectures from, stored `[in, out]` with the
//!   checkpoint's parameter names (`weight`, `bias`), with optional LoRA branches
//!   (`base(x) + scale · B(A(dropout(x)))`, never materialising `W + BA` unless merged).
//! - [`PeftModel`]: how a PEFT method reaches a model's linear layers by their Hugging Face module paths
//!   (`transformer.h.0.attn.c_attn`), implemented by every kiln architecture.
//! - [`Adapter`]: bottleneck adapters (Houlsby / Pfeiffer) inserted inside transformer layers, and
//!   [`freeze_except`] to train only them.
//! - [`LoraConfig`] (peft's, read from / written to `adapter_config.json`) and [`LoraModel`] (inject, freeze,
//!   count, merge/unmerge, several named adapters, save/load in peft's layout).
//!
//! Dependencies point one way: kiln-peft depends on burn only; kiln-models depends on kiln-peft. See
//! docs/peft.md for the design and how other PEFT methods slot in.

pub mod adapter;
pub mod config;
pub mod error;
pub mod export;
pub mod freeze;
pub mod io;
pub mod linear;
pub mod lora;
pub mod model;
pub mod prompt;

pub use adapter::{
    freeze_all_but_adapters, is_adapter_path, Adapter, AdapterActivation, AdapterConfig,
    AdapterPlacement,
};
pub use config::{Bias, InitLoraWeights, LayerIndices, LoraConfig, TargetMatcher, Targets};
pub use error::{PeftError, Result};
pub use freeze::{freeze_except, trainable_summary};
pub use io::{read_tensors, write_tensors, RawTensor};
pub use linear::{LoraInit, LoraLayer, PeftLinear};
pub use lora::{check_adapter_name, LoraModel, ParamCount, PlannedLayer};
pub use model::{base_params, BaseParam, PeftModel};
pub use prompt::{PromptEncoder, PromptLearningConfig, PromptMethod};
