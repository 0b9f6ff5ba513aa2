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
//! - [`Said`]: intrinsic-dimension fine-tuning (SAID / DID, Aghajanyan et al. 2021): only d numbers train,
//!   projected onto every parameter by the Fastfood transform ([`Fastfood`]), saved as a few kilobytes.
//!
//! Dependencies point one way: kiln-peft depends on burn only; kiln-models depends on kiln-peft. See
//! docs/peft.md for the design and how other PEFT methods slot in.
//!
//! # Quick start
//!
//! peft's `get_peft_model` → train → `save_pretrained` → `PeftModel.from_pretrained` → `merge_and_unload`,
//! on the tiny random GPT-2 bundled in `fixtures/` (any kiln model works: GPT-2, OPT, BERT, BART, T5).
//! The adapter directory has Python peft's layout: `PeftModel.from_pretrained` loads it, and kiln loads peft's.
//!
//! ```rust
//! use burn::backend::{Autodiff, Flex};
//! use kiln_models::auto::CausalModel;
//! use kiln_peft::{LoraConfig, LoraModel};
//!
//! type B = Autodiff<Flex>; // an autodiff backend, to train
//! let device = Default::default();
//! let gpt2 = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/gpt2"));
//! let (base, _report) = CausalModel::<B>::load(gpt2, &device)?;
//!
//! // LoRA r 4, alpha 8 on GPT-2's fused attention projection; everything else is frozen.
//! let config = LoraConfig::new(4, 8.0).with_target_modules(["c_attn"]).with_task_type("CAUSAL_LM");
//! let mut lora = LoraModel::inject(base, config)?;
//! lora.mark_trainable(); // done by `inject`; again after changing require-grad flags yourself
//! println!("{}", lora.trainable_parameters()); // trainable params: 1,024 || all params: … || trainable%: …
//! assert!(lora.trainable_parameters().trainable > 0);
//!
//! // … train `lora.model` with any burn optimizer (see kiln-train's `lora_finetune` example), then save.
//! let dir = std::env::temp_dir().join(format!("kiln-peft-quickstart-{}", std::process::id()));
//! lora.save_pretrained(&dir)?; // adapter_config.json + adapter_model.safetensors
//!
//! // Load onto a fresh base model, fold W += scale · BA into the weights, drop the LoRA branches.
//! let (fresh, _) = CausalModel::<B>::load(gpt2, &device)?;
//! let merged: CausalModel<B> = LoraModel::from_pretrained(fresh, &dir, false)?.merge_and_unload();
//! std::fs::remove_dir_all(&dir)?;
//! # let _ = merged;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

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
pub mod said;

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
pub use said::{merge_said, Fastfood, Said, SaidConfig, SaidParams};
