//! Pick the architecture from `config.json`'s `model_type`, and resolve a model argument (a local
//! directory or a hub id) to a directory with the checkpoint's files.

use std::path::{Path, PathBuf};

use burn::prelude::*;

use crate::attention::KvCache;
use crate::causal::CausalLm;
use crate::config::RawConfig;
use crate::error::{Error, Result};
use crate::generation::GenerationConfig;
use crate::hub::{HubOptions, Source};
use crate::tokenizer::Tokenizer;
use crate::weights::LoadReport;
use crate::{gpt2, opt};

/// The decoder-only architectures kiln implements.
pub const CAUSAL_TYPES: &str = "gpt2, opt";

/// A local directory, or a hub id fetched into the hub cache (honouring `HF_HOME`, `HF_HUB_OFFLINE`).
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    Source::resolve(spec, HubOptions::from_env())?.materialise()
}

/// The `model_type` of a checkpoint directory.
pub fn model_type(dir: &Path) -> Result<String> {
    RawConfig::load(&dir.join("config.json"))?.model_type()
}

/// Any decoder-only model.
#[derive(Module, Debug)]
pub enum CausalModel<B: Backend> {
    Gpt2(gpt2::Gpt2LmHead<B>),
    Opt(opt::OptForCausalLm<B>),
}

impl<B: Backend> CausalModel<B> {
    /// Load a checkpoint directory whose `model_type` is one of [`CAUSAL_TYPES`].
    pub fn load(dir: &Path, device: &B::Device) -> Result<(Self, LoadReport)> {
        let mt = model_type(dir)?;
        match mt.as_str() {
            "gpt2" => gpt2::load(dir, device).map(|(_, m, r)| (Self::Gpt2(m), r)),
            "opt" => opt::load(dir, device).map(|(_, m, r)| (Self::Opt(m), r)),
            _ => Err(Error::UnsupportedArchitecture {
                path: dir.join("config.json"),
                model_type: mt,
                supported: CAUSAL_TYPES.into(),
            }),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $m:ident => $e:expr) => {
        match $self {
            CausalModel::Gpt2($m) => $e,
            CausalModel::Opt($m) => $e,
        }
    };
}

impl<B: Backend> CausalLm<B> for CausalModel<B> {
    fn n_layer(&self) -> usize {
        delegate!(self, m => CausalLm::<B>::n_layer(m))
    }
    fn max_positions(&self) -> usize {
        delegate!(self, m => CausalLm::<B>::max_positions(m))
    }
    fn device(&self) -> B::Device {
        delegate!(self, m => CausalLm::<B>::device(m))
    }
    fn hidden(
        &self,
        ids: Tensor<B, 2, Int>,
        positions: Tensor<B, 2, Int>,
        key_mask: &[Vec<u8>],
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        delegate!(self, m => CausalLm::<B>::hidden(m, ids, positions, key_mask, cache))
    }
    fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        delegate!(self, m => CausalLm::<B>::logits(m, hidden))
    }
}

/// A decoder-only model with its tokenizer and generation defaults, ready to use.
pub struct CausalPipeline<B: Backend> {
    pub dir: PathBuf,
    pub model: CausalModel<B>,
    pub tokenizer: Tokenizer,
    pub generation: GenerationConfig,
    pub report: LoadReport,
}

impl<B: Backend> CausalPipeline<B> {
    /// Load from a directory or hub id.
    pub fn load(spec: &str, device: &B::Device) -> Result<Self> {
        let dir = resolve_model(spec)?;
        let (model, report) = CausalModel::load(&dir, device)?;
        let tokenizer = Tokenizer::from_dir(&dir)?;
        let generation = GenerationConfig::from_dir(&dir)?;
        Ok(Self { dir, model, tokenizer, generation, report })
    }

    /// Tokenize prompts and left-pad them to one length (as `padding_side="left"`).
    pub fn encode_left_padded(&self, prompts: &[&str]) -> Result<(Vec<Vec<u32>>, Vec<Vec<u8>>)> {
        let pad = self.generation.pad_token_id.or(self.generation.eos_token_id.first().copied()).unwrap_or(0);
        let mut ids = Vec::new();
        for p in prompts {
            if p.is_empty() {
                return Err(Error::Input("empty prompt".into()));
            }
            let e = self.tokenizer.encode(p, None)?;
            if e.ids.is_empty() {
                return Err(Error::Input(format!("prompt {p:?} encodes to no tokens")));
            }
            ids.push(e.ids);
        }
        Ok(left_pad(&ids, pad))
    }
}

/// Left-pad rows to one length; returns rows and their masks.
pub fn left_pad(rows: &[Vec<u32>], pad: u32) -> (Vec<Vec<u32>>, Vec<Vec<u8>>) {
    let n = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let ids = rows.iter().map(|r| std::iter::repeat_n(pad, n - r.len()).chain(r.iter().copied()).collect()).collect();
    let mask = rows.iter().map(|r| std::iter::repeat_n(0u8, n - r.len()).chain(std::iter::repeat_n(1u8, r.len())).collect()).collect();
    (ids, mask)
}
