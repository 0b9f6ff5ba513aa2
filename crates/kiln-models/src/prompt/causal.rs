//! Prompt tuning and prefix tuning for the decoder-only models (GPT-2, OPT), as Hugging Face peft's
//! `PeftModelForCausalLM` runs them, with peft's adapter files (see `kiln_peft::prompt`).
//!
//! - Prompt tuning: the `[n, d]` prompt is concatenated in front of the input embeddings, the attention mask is
//!   extended with `n` ones, and the model runs on `n + s` positions; like peft, the logits of the virtual positions
//!   are returned too (`[b, n + s, vocab]`).
//! - Prefix tuning: the `[n, num_layers · 2 · d]` prefix becomes each layer's past keys/values
//!   (`[b, heads, n, head_dim]`), the mask is extended with `n` ones and the real tokens are positioned after the
//!   prefix, as transformers does with a `past_key_values` of length `n`.
//!
//! Position ids follow transformers 5.24 in `forward`: GPT-2 uses `cache_position` (`0..n+s` for prompt tuning,
//! `n..n+s` for prefix tuning, padding not skipped); OPT derives them from the extended mask's cumsum (padding at
//! −1). Generation ([`PromptSession`]) numbers positions from the mask (padding at 0, as `generate`), the virtual
//! tokens taking `0..n`.

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use kiln_peft::prompt::{
    read_prompt, save_prompt, PromptEncoder, PromptLearningConfig, PromptMethod,
};

use crate::generate::causal::{CausalLm, CausalSession};
use crate::generate::DecodeSession;
use crate::load::auto::CausalModel;
use crate::load::error::{Error, Result};
use crate::models::attention::{ids_tensor, positions_from_mask, KvCache};
use crate::prompt::{peft_err, prompt_from_file, text_init_rows};

/// A decoder-only model with a trainable prompt (peft's `PeftModelForCausalLM` for `PROMPT_TUNING` /
/// `PREFIX_TUNING`). The base model is frozen; only `prompt` requires grad (unless loaded for inference).
#[derive(Module, Debug)]
pub struct PromptModel<B: Backend> {
    /// The frozen base model.
    pub model: CausalModel<B>,
    /// The trainable prompt: prepended input embeddings (prompt tuning) or per-layer past keys/values
    /// (prefix tuning).
    pub prompt: PromptEncoder<B>,
    /// The resolved prompt-learning config (saved as `adapter_config.json`).
    #[module(skip)]
    pub config: PromptLearningConfig,
}

impl<B: Backend> PromptModel<B> {
    /// `get_peft_model`: resolve the config against the model and create a fresh prompt. `TEXT` init needs the
    /// tokenized `prompt_tuning_init_text` (`init_ids`, as the tokenizer gives them, special tokens included);
    /// they are repeated / truncated to `num_virtual_tokens` and their word embeddings copied, as peft does.
    pub fn inject(
        model: CausalModel<B>,
        mut config: PromptLearningConfig,
        init_ids: Option<&[u32]>,
    ) -> Result<Self> {
        let here = Path::new("<config>");
        if config.is_seq2seq() {
            return Err(Error::Input(
                "a SEQ_2_SEQ_LM prompt config cannot be attached to a decoder-only model".into(),
            ));
        }
        let token_dim = token_dim(&model, config.method);
        config
            .resolve(here, token_dim, model.n_layer(), model.n_head())
            .map_err(peft_err)?;
        let device = CausalLm::device(&model);
        let rows = text_init_rows(&config, init_ids, &device, |t| model.input_embeddings(t))?;
        let prompt = PromptEncoder::init(&config, rows, &device);
        Ok(Self {
            model: model.no_grad(),
            prompt,
            config,
        })
    }

    /// peft's `PeftModel.from_pretrained` for a prompt adapter directory. `is_trainable` makes the prompt
    /// trainable (a prefix saved with `prefix_projection` cannot be, as in peft: only the MLP's output is saved).
    pub fn from_pretrained(model: CausalModel<B>, dir: &Path, is_trainable: bool) -> Result<Self> {
        let (mut config, t) = read_prompt(dir).map_err(peft_err)?;
        let cfg_path = dir.join(kiln_peft::io::CONFIG_FILE);
        if config.is_seq2seq() {
            return Err(Error::Input(format!(
                "{}: a SEQ_2_SEQ_LM prompt adapter cannot be attached to a decoder-only model",
                cfg_path.display()
            )));
        }
        config
            .resolve(
                &cfg_path,
                token_dim(&model, config.method),
                model.n_layer(),
                model.n_head(),
            )
            .map_err(peft_err)?;
        let device = CausalLm::device(&model);
        let prompt = prompt_from_file(&mut config, t, dir, is_trainable, &device)?;
        Ok(Self {
            model: model.no_grad(),
            prompt,
            config,
        })
    }

    /// Write `adapter_config.json` + `adapter_model.safetensors` as peft's `save_pretrained`.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        save_prompt(dir, &self.config, &self.prompt).map_err(peft_err)
    }

    /// Number of virtual tokens (`num_virtual_tokens`).
    pub fn num_virtual_tokens(&self) -> usize {
        self.config.num_virtual_tokens
    }

    /// peft's `print_trainable_parameters()` line.
    pub fn trainable_parameters(&self) -> String {
        let trainable = self.prompt.num_params();
        let base = kiln_peft::model::hf_param_count(&self.model);
        kiln_peft::trainable_summary(trainable, base + trainable)
    }

    /// The prefix as a pre-filled KV cache for `batch` rows.
    pub fn prefix_cache(&self, batch: usize) -> KvCache<B> {
        let mut cache = KvCache::new(self.model.n_layer());
        for (i, (k, v)) in self
            .prompt
            .past_key_values(self.model.n_layer(), self.model.n_head(), batch)
            .into_iter()
            .enumerate()
        {
            cache.set(i, k, v);
        }
        cache
    }

    /// Prompt rows repeated for `batch`: `[batch, n, d]`.
    fn prompt_rows(&self, batch: usize) -> Tensor<B, 3> {
        self.prompt.output().unsqueeze::<3>().repeat_dim(0, batch)
    }

    /// Hidden states as `PeftModelForCausalLM.forward` computes them: `[b, n + s, d]` for prompt tuning (virtual
    /// positions first), `[b, s, d]` for prefix tuning. `attention_mask` `[b, s]`, 1 = real token.
    pub fn hidden(
        &self,
        ids: Tensor<B, 2, Int>,
        attention_mask: Option<&[Vec<u8>]>,
    ) -> Tensor<B, 3> {
        let [b, s] = ids.dims();
        let n = self.num_virtual_tokens();
        let device = ids.device();
        let ones = vec![vec![1u8; s]; b];
        let mask = attention_mask.unwrap_or(&ones);
        let ext: Vec<Vec<u8>> = mask
            .iter()
            .map(|r| [vec![1u8; n], r.clone()].concat())
            .collect();
        let gpt2 = matches!(self.model, CausalModel::Gpt2(_));
        let arange = |from: usize, len: usize| {
            Tensor::<B, 1, Int>::arange(from as i64..(from + len) as i64, &device)
                .unsqueeze::<2>()
                .repeat_dim(0, b)
        };
        match self.config.method {
            PromptMethod::PromptTuning => {
                let embeds = Tensor::cat(
                    vec![self.prompt_rows(b), self.model.input_embeddings(ids)],
                    1,
                );
                let positions = if gpt2 {
                    arange(0, n + s)
                } else {
                    positions_from_mask::<B>(&ext, -1, 0, &device)
                };
                self.model.hidden_from_embeds(embeds, positions, &ext, None)
            }
            PromptMethod::PrefixTuning => {
                let mut cache = self.prefix_cache(b);
                let positions = if gpt2 {
                    arange(n, s)
                } else {
                    positions_from_mask::<B>(mask, -1 - n as i64, n as i64, &device)
                };
                self.model.hidden(ids, positions, &ext, Some(&mut cache))
            }
        }
    }

    /// Logits as peft returns them (prompt tuning: `[b, n + s, vocab]`; prefix tuning: `[b, s, vocab]`).
    pub fn forward(
        &self,
        ids: Tensor<B, 2, Int>,
        attention_mask: Option<&[Vec<u8>]>,
    ) -> Tensor<B, 3> {
        self.model.logits(self.hidden(ids, attention_mask))
    }

    /// Logits of the real tokens only, `[b, s, vocab]` (what a loss over the input uses; peft labels the virtual
    /// positions -100).
    pub fn token_logits(
        &self,
        ids: Tensor<B, 2, Int>,
        attention_mask: Option<&[Vec<u8>]>,
    ) -> Tensor<B, 3> {
        let s = ids.dims()[1];
        let l = self.forward(ids, attention_mask);
        let [b, t, v] = l.dims();
        l.slice([0..b, t - s..t, 0..v])
    }

    /// Per-token log-probabilities of `ids` (at least two tokens) with the prompt in front, as
    /// [`crate::generate::scoring::score_tokens`] gives them for the base model: the virtual positions are not
    /// scored.
    pub fn score_tokens(
        &self,
        ids: &[u32],
        with_logits: bool,
    ) -> Result<crate::generate::scoring::TokenScores> {
        if ids.len() < 2 {
            return Err(Error::Input("need at least two tokens to score".into()));
        }
        let rows = [ids.to_vec()];
        crate::models::attention::check_ids(&rows, self.model.vocab_size(), "text")?;
        let max = self.model.max_positions();
        if ids.len() + self.num_virtual_tokens() > max {
            return Err(Error::Input(format!(
                "{} tokens and {} virtual tokens exceed the model's {max} positions",
                ids.len(),
                self.num_virtual_tokens()
            )));
        }
        let device = CausalLm::device(&self.model);
        let logits = self.token_logits(ids_tensor::<B>(&rows, &device), None);
        Ok(crate::generate::scoring::scores_from_logits(
            logits,
            ids,
            with_logits,
        ))
    }

    /// A decoding session for [`crate::generate::generate`].
    pub fn session(&self) -> PromptSession<'_, B> {
        PromptSession {
            m: self,
            inner: CausalSession::new(&self.model),
        }
    }
}

fn token_dim<B: Backend>(model: &CausalModel<B>, method: PromptMethod) -> usize {
    match method {
        // inputs_embeds width (OPT: word_embed_proj_dim)
        PromptMethod::PromptTuning => model
            .input_embeddings(ids_tensor::<B>(&[vec![0]], &CausalLm::device(model)))
            .dims()[2],
        PromptMethod::PrefixTuning => model.hidden_size(),
    }
}

/// Incremental decoding with the prompt in front: the prefill runs the virtual tokens (prompt tuning) or
/// starts from the prefix cache (prefix tuning); every later step is an ordinary [`CausalSession`] step.
pub struct PromptSession<'a, B: Backend> {
    m: &'a PromptModel<B>,
    inner: CausalSession<'a, B, CausalModel<B>>,
}

impl<B: Backend> DecodeSession for PromptSession<'_, B> {
    fn vocab_size(&self) -> Option<usize> {
        self.inner.vocab_size()
    }
    fn max_length(&self) -> Option<usize> {
        // The virtual tokens take the first positions.
        self.inner
            .max_length()
            .map(|m| m.saturating_sub(self.m.num_virtual_tokens()))
    }
    fn prefill(&mut self, rows: &[Vec<u32>], mask: &[Vec<u8>]) -> Result<Vec<Vec<f32>>> {
        let model = &self.m.model;
        let n = self.m.num_virtual_tokens();
        let b = rows.len();
        let max = model.max_positions();
        if rows[0].len() + n > max {
            return Err(Error::Input(format!(
                "prompt of {} + {n} virtual tokens exceeds the model's {max} positions",
                rows[0].len()
            )));
        }
        let device = CausalLm::device(model);
        let key_mask: Vec<Vec<u8>> = mask
            .iter()
            .map(|r| [vec![1u8; n], r.clone()].concat())
            .collect();
        // Real tokens: cumsum(mask) - 1 after the n virtual positions, padding at 0 (as `generate`).
        let positions = positions_from_mask::<B>(mask, -(n as i64), n as i64, &device);
        let next_pos = mask
            .iter()
            .map(|r| n as i64 + r.iter().map(|&m| m as i64).sum::<i64>())
            .collect();
        let ids = ids_tensor::<B>(rows, &device);
        let (cache, h) = match self.m.config.method {
            PromptMethod::PromptTuning => {
                let mut cache = KvCache::new(model.n_layer());
                let virt = Tensor::<B, 1, Int>::arange(0..n as i64, &device)
                    .unsqueeze::<2>()
                    .repeat_dim(0, b);
                let embeds =
                    Tensor::cat(vec![self.m.prompt_rows(b), model.input_embeddings(ids)], 1);
                let h = model.hidden_from_embeds(
                    embeds,
                    Tensor::cat(vec![virt, positions], 1),
                    &key_mask,
                    Some(&mut cache),
                );
                (cache, h)
            }
            PromptMethod::PrefixTuning => {
                let mut cache = self.m.prefix_cache(b);
                let h = model.hidden(ids, positions, &key_mask, Some(&mut cache));
                (cache, h)
            }
        };
        Ok(self.inner.adopt(cache, key_mask, next_pos, h))
    }

    fn step(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.inner.step(tokens)
    }

    fn select(&mut self, idx: &[usize]) -> Result<()> {
        self.inner.select(idx)
    }
}
