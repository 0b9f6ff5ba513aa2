//! The architectures, one file each, each reading top to bottom like its paper: config → modules → forward →
//! loading. [`attention`] holds the blocks they share (multi-head attention, masks, the KV cache, tied heads), [`norm`] the LayerNorm they use.

pub mod attention;
pub mod bart;
pub mod bert;
pub mod gpt2;
pub mod norm;
pub mod opt;
pub mod t5;
