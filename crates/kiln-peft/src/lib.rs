//! kiln-peft: parameter-efficient fine-tuning layers for kiln's models.
//!
//! The layers here are what kiln-models builds its architectures from, so that a PEFT method can be
//! attached to any model without changing the model's code:
//!
//! - [`PeftLinear`]: a linear layer stored in burn's `[in, out]` layout whose parameter names match the
//!   Hugging Face checkpoint (`weight`, `bias`), with an optional LoRA branch
//!   (`base(x) + scale · B(A(dropout(x)))`, never materialising `W + BA`).
//!
//! Dependencies point one way: kiln-peft depends on burn only; kiln-models depends on kiln-peft.

pub mod adapter;
pub mod freeze;
pub mod linear;

pub use adapter::{Adapter, AdapterActivation, AdapterConfig, AdapterPlacement};
pub use freeze::{freeze_except, trainable_summary};
pub use linear::{LoraConfig, LoraLayer, PeftLinear};
