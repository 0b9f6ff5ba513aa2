//! One generation engine for every model: greedy, sampling (temperature, top-k, top-p) and beam search,
//! following transformers' `generate` step for step (logits processors in the same order, the same
//! beam-search bookkeeping), so that outputs are token-identical.
//!
//! A model plugs in through [`DecodeSession`]: it returns next-token logits for each row, consumes one
//! token per row per step (its KV cache grows), and reorders its rows for beam search. The engine itself
//! works on plain vectors on the CPU: per step it touches `rows × vocab` floats, which is small next to a
//! forward pass.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::load::error::{Error, Result};

/// `early_stopping` as in transformers: `true`, `false`, or `"never"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    /// Stop a beam search as soon as `num_beams` hypotheses are finished.
    True,
    /// Stop when a better hypothesis is very unlikely (transformers' heuristic on the current length).
    #[default]
    False,
    /// Stop only when no better hypothesis is possible (the canonical beam search).
    Never,
}

/// Generation parameters, named as in transformers' `GenerationConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// New tokens to generate at most (takes precedence over `max_length`).
    pub max_new_tokens: Option<usize>,
    /// Total length (prompt + new tokens) when `max_new_tokens` is not set. Default 20, as transformers.
    pub max_length: usize,
    /// Total length before which end-of-sequence is suppressed.
    pub min_length: usize,
    /// New tokens before which end-of-sequence is suppressed.
    pub min_new_tokens: usize,
    /// Sample (with `temperature`, `top_k`, `top_p`) instead of greedy / beam search.
    pub do_sample: bool,
    /// Divide the logits by this before sampling.
    pub temperature: f32,
    /// Sample among the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Nucleus sampling: among the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f32,
    /// Penalise tokens already in the sequence (CTRL's penalty; 1.0: none).
    pub repetition_penalty: f32,
    /// Never repeat an n-gram of this size (0: off).
    pub no_repeat_ngram_size: usize,
    /// Beams for beam search (1: greedy or sampling).
    pub num_beams: usize,
    /// When beam search stops.
    pub early_stopping: EarlyStopping,
    /// Beam scores are divided by `length ^ length_penalty`.
    pub length_penalty: f32,
    /// Sequences returned per prompt (at most `num_beams` without sampling).
    pub num_return_sequences: usize,
    /// Tokens that end a sequence.
    pub eos_token_id: Vec<u32>,
    /// Fills finished rows (else the first `eos_token_id`).
    pub pad_token_id: Option<u32>,
    /// Beginning-of-sequence token (an encoder-decoder's start when `decoder_start_token_id` is unset).
    pub bos_token_id: Option<u32>,
    /// The first decoder token of an encoder-decoder.
    pub decoder_start_token_id: Option<u32>,
    /// Forced as the first generated token.
    pub forced_bos_token_id: Option<u32>,
    /// Forced as the last token when the maximum length is reached.
    pub forced_eos_token_id: Option<u32>,
    /// Seed of the sampling RNG.
    pub seed: u64,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: None,
            max_length: 20,
            min_length: 0,
            min_new_tokens: 0,
            do_sample: false,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            num_beams: 1,
            early_stopping: EarlyStopping::False,
            length_penalty: 1.0,
            num_return_sequences: 1,
            eos_token_id: vec![],
            pad_token_id: None,
            bos_token_id: None,
            decoder_start_token_id: None,
            forced_bos_token_id: None,
            forced_eos_token_id: None,
            seed: 0,
        }
    }
}

fn token_ids(v: &Value) -> Option<Vec<u32>> {
    let id = |x: &Value| x.as_u64().and_then(|x| u32::try_from(x).ok());
    match v {
        Value::Number(_) => id(v).map(|x| vec![x]),
        Value::Array(a) => a.iter().map(id).collect(),
        Value::Null => Some(vec![]),
        _ => None,
    }
}

impl GenerationConfig {
    /// Overlay the fields present in a JSON object (`generation_config.json`, or a model's `config.json`).
    pub fn update_from_json(&mut self, path: &Path, v: &Value) -> Result<()> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::field(path, "<root>", "expected a JSON object"))?;
        let bad = |f: &str, v: &Value| Error::field(path, f, format!("unexpected value {v}"));
        for (k, val) in obj {
            if val.is_null() {
                continue;
            }
            let u = || val.as_u64().map(|x| x as usize).ok_or_else(|| bad(k, val));
            let f = || val.as_f64().map(|x| x as f32).ok_or_else(|| bad(k, val));
            let id = || {
                val.as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| bad(k, val))
            };
            // A value that no generation could use is an error naming this file and field (not, later, a
            // message that reads as if a command-line flag were wrong).
            let at_least_1 = |n: usize| {
                if n == 0 {
                    Err(Error::field(path, k, "must be at least 1"))
                } else {
                    Ok(n)
                }
            };
            // Only what is wrong whatever the other settings are: a temperature of 0 with sampling off loads in
            // transformers (it warns), so 0 passes here and `validate` judges it once the flags are laid over.
            let non_negative = |x: f32| {
                if x.is_finite() && x >= 0.0 {
                    Ok(x)
                } else {
                    Err(Error::field(
                        path,
                        k,
                        format!("must be a number ≥ 0, got {val}"),
                    ))
                }
            };
            match k.as_str() {
                "max_new_tokens" => self.max_new_tokens = Some(at_least_1(u()?)?),
                "max_length" => self.max_length = u()?,
                "min_length" => self.min_length = u()?,
                "min_new_tokens" => self.min_new_tokens = u()?,
                "do_sample" => self.do_sample = val.as_bool().ok_or_else(|| bad(k, val))?,
                "temperature" => self.temperature = non_negative(f()?)?,
                "top_k" => self.top_k = u()?,
                "top_p" => {
                    let p = f()?;
                    if !(0.0..=1.0).contains(&p) {
                        return Err(Error::field(
                            path,
                            k,
                            format!("must be in [0, 1], got {val}"),
                        ));
                    }
                    self.top_p = p
                }
                "repetition_penalty" => {
                    let x = f()?;
                    if !(x.is_finite() && x > 0.0) {
                        return Err(Error::field(
                            path,
                            k,
                            format!("must be a positive number, got {val}"),
                        ));
                    }
                    self.repetition_penalty = x
                }
                "no_repeat_ngram_size" => self.no_repeat_ngram_size = u()?,
                "num_beams" => self.num_beams = at_least_1(u()?)?,
                "length_penalty" => {
                    let x = f()?;
                    if !x.is_finite() {
                        return Err(Error::field(path, k, "must be finite"));
                    }
                    self.length_penalty = x
                }
                "num_return_sequences" => self.num_return_sequences = at_least_1(u()?)?,
                "early_stopping" => {
                    self.early_stopping = match val {
                        Value::Bool(true) => EarlyStopping::True,
                        Value::Bool(false) => EarlyStopping::False,
                        Value::String(s) if s == "never" => EarlyStopping::Never,
                        _ => return Err(bad(k, val)),
                    }
                }
                "eos_token_id" => self.eos_token_id = token_ids(val).ok_or_else(|| bad(k, val))?,
                "pad_token_id" => self.pad_token_id = Some(id()?),
                "bos_token_id" => self.bos_token_id = Some(id()?),
                "decoder_start_token_id" => self.decoder_start_token_id = Some(id()?),
                "forced_bos_token_id" => self.forced_bos_token_id = Some(id()?),
                "forced_eos_token_id" => self.forced_eos_token_id = Some(id()?),
                _ => {}
            }
        }
        Ok(())
    }

    /// Defaults from a checkpoint directory: special ids from `config.json`, then `generation_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let mut g = Self::default();
        for (name, only_ids) in [("config.json", true), ("generation_config.json", false)] {
            let p = dir.join(name);
            if !p.is_file() {
                continue;
            }
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
            let v: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
                path: p.clone(),
                source,
            })?;
            if only_ids {
                let keep = [
                    "eos_token_id",
                    "pad_token_id",
                    "bos_token_id",
                    "decoder_start_token_id",
                    "forced_bos_token_id",
                    "forced_eos_token_id",
                ];
                let sub: serde_json::Map<String, Value> = v
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .filter(|(k, _)| keep.contains(&k.as_str()))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                g.update_from_json(&p, &Value::Object(sub))?;
            } else {
                g.update_from_json(&p, &v)?;
            }
        }
        Ok(g)
    }

    /// The token an encoder-decoder's decoder starts from: `decoder_start_token_id`, else `bos_token_id` (as
    /// transformers' `_get_decoder_start_token_id`).
    pub fn decoder_start(&self) -> Result<u32> {
        self.decoder_start_token_id
            .or(self.bos_token_id)
            .ok_or_else(|| {
                Error::Generation(
                    "`decoder_start_token_id` or `bos_token_id` has to be set for encoder-decoder generation"
                        .into(),
                )
            })
    }

    /// [`Self::check_token_ids`] for a configuration read by [`Self::from_dir`]: the error names the file the id
    /// came from (`generation_config.json`, which overrides `config.json`) and the field.
    pub fn check_token_ids_in_dir(&self, dir: &Path, vocab: usize) -> Result<()> {
        let Some(&(field, id)) = self.out_of_vocab_ids(vocab).first() else {
            return Ok(());
        };
        let gen = dir.join("generation_config.json");
        let in_gen = std::fs::read_to_string(&gen)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|v| v.get(field).is_some_and(|x| !x.is_null()));
        let path = if in_gen { gen } else { dir.join("config.json") };
        Err(Error::field(
            path,
            field,
            format!("token id {id} is outside the model's vocabulary of {vocab}"),
        ))
    }

    /// Reject nonsense before any work; return warnings (as transformers warns) for ignored settings.
    pub fn validate(&self) -> Result<Vec<String>> {
        let e = |m: String| Err(Error::Generation(m));
        self.validate_values()?;
        if self.do_sample && self.num_beams > 1 {
            return e(format!(
                "do_sample with num_beams {} (beam-search sampling) is not supported: sample with num_beams 1, or search without do_sample",
                self.num_beams
            ));
        }
        if self.num_beams > 1 && self.num_return_sequences > self.num_beams {
            return e(format!(
                "num_return_sequences ({}) must be at most num_beams ({})",
                self.num_return_sequences, self.num_beams
            ));
        }
        if !self.do_sample && self.num_return_sequences > self.num_beams {
            return e(format!(
                "num_return_sequences ({}) must be at most num_beams ({}) without sampling",
                self.num_return_sequences, self.num_beams
            ));
        }
        self.warnings()
    }

    /// The checks of [`Self::validate`] that each value must pass on its own, whatever the others are.
    pub fn validate_values(&self) -> Result<()> {
        let e = |m: String| Err(Error::Generation(m));
        if self.num_beams == 0 {
            return e("num_beams must be at least 1".into());
        }
        if self.num_return_sequences == 0 {
            return e("num_return_sequences must be at least 1".into());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return e(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return e(format!(
                "temperature must be a positive number, got {}",
                self.temperature
            ));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return e(format!(
                "repetition_penalty must be positive, got {}",
                self.repetition_penalty
            ));
        }
        if !self.length_penalty.is_finite() {
            return e("length_penalty must be finite".into());
        }
        if self.max_new_tokens == Some(0) {
            return e("max_new_tokens must be at least 1".into());
        }
        Ok(())
    }

    /// Settings that have no effect with the others (transformers warns about the same ones).
    fn warnings(&self) -> Result<Vec<String>> {
        let mut warnings = Vec::new();
        if !self.do_sample {
            if self.temperature != 1.0 {
                warnings.push(format!("`do_sample` is false but `temperature` is {}: it only applies to sampling and is ignored", self.temperature));
            }
            if self.top_p != 1.0 {
                warnings.push(format!("`do_sample` is false but `top_p` is {}: it only applies to sampling and is ignored", self.top_p));
            }
        }
        if self.num_beams == 1 && self.early_stopping != EarlyStopping::False {
            warnings.push("`num_beams` is 1 but `early_stopping` is set: it only applies to beam search and is ignored".into());
        }
        if !self.do_sample && self.top_k != 50 {
            warnings.push(format!("`do_sample` is false but `top_k` is {}: it only applies to sampling and is ignored", self.top_k));
        }
        if self.num_beams == 1 && self.length_penalty != 1.0 {
            warnings.push(format!("`num_beams` is 1 but `length_penalty` is {}: it only applies to beam search and is ignored", self.length_penalty));
        }
        Ok(warnings)
    }

    /// The special token ids (`eos_token_id`, `pad_token_id`, `bos_token_id`, `decoder_start_token_id`,
    /// `forced_bos_token_id`, `forced_eos_token_id`) that are at or beyond `vocab`, as `(field, id)`.
    pub fn out_of_vocab_ids(&self, vocab: usize) -> Vec<(&'static str, u32)> {
        let mut bad = Vec::new();
        for &e in &self.eos_token_id {
            bad.push(("eos_token_id", e));
        }
        for (f, v) in [
            ("pad_token_id", self.pad_token_id),
            ("bos_token_id", self.bos_token_id),
            ("decoder_start_token_id", self.decoder_start_token_id),
            ("forced_bos_token_id", self.forced_bos_token_id),
            ("forced_eos_token_id", self.forced_eos_token_id),
        ] {
            if let Some(v) = v {
                bad.push((f, v));
            }
        }
        bad.retain(|&(_, id)| id as usize >= vocab);
        bad
    }

    /// An error naming the first special id at or beyond `vocab` (see [`Self::out_of_vocab_ids`]).
    pub fn check_token_ids(&self, vocab: usize) -> Result<()> {
        match self.out_of_vocab_ids(vocab).first() {
            None => Ok(()),
            Some((f, id)) => Err(Error::Generation(format!(
                "{f} {id} is outside the model's vocabulary of {vocab}"
            ))),
        }
    }

    fn max_total(&self, prompt_len: usize) -> usize {
        match self.max_new_tokens {
            // saturating: max_new_tokens comes from generation_config.json and may be any u64.
            Some(n) => prompt_len.saturating_add(n),
            None => self.max_length,
        }
    }
}

/// A model being decoded: rows of tokens, each with its own cache.
pub trait DecodeSession {
    /// Run the prompt (`rows`, left-padded, with `mask`) and return each row's next-token logits.
    fn prefill(&mut self, rows: &[Vec<u32>], mask: &[Vec<u8>]) -> Result<Vec<Vec<f32>>>;
    /// Feed one token per row; return each row's next-token logits.
    fn step(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>>;
    /// Keep rows `idx`, in that order (beam reordering).
    fn select(&mut self, idx: &[usize]) -> Result<()>;
    /// The longest sequence (prompt with its padding, plus new tokens) the model can run, when it has a limit
    /// (learned positions): [`generate`] stops there, with a warning, instead of failing and losing the tokens.
    fn max_length(&self) -> Option<usize> {
        None
    }
    /// Rows of the model's input embedding, when known: [`generate`] then refuses prompt and special ids at or
    /// beyond it before any of them reaches the model (a backend's gather must never see them).
    fn vocab_size(&self) -> Option<usize> {
        None
    }
}

/// The result of one `generate` call.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOutput {
    /// `batch × num_return_sequences` rows: prompt (with its padding) followed by the new tokens,
    /// padded to a common length as transformers pads them.
    pub sequences: Vec<Vec<u32>>,
    /// Beam search: each returned sequence's length-penalised score.
    pub sequences_scores: Option<Vec<f32>>,
    /// The prompt length (including padding) that the new tokens follow.
    pub prompt_len: usize,
    /// What the caller should tell the user (as transformers warns), e.g. that generation stopped at the
    /// model's maximum length rather than at the requested one.
    pub warnings: Vec<String>,
}

/// Generate from left-padded prompt rows (`mask`: 1 = real token). `on_token` is called with each
/// step's chosen tokens for greedy/sampling (streaming); beam search reports only at the end.
pub fn generate<S: DecodeSession>(
    session: &mut S,
    prompts: &[Vec<u32>],
    mask: &[Vec<u8>],
    cfg: &GenerationConfig,
    on_token: Option<&mut dyn FnMut(&[u32])>,
) -> Result<GenerateOutput> {
    cfg.validate()?;
    if prompts.is_empty() {
        return Err(Error::Input("no prompts".into()));
    }
    let len = prompts[0].len();
    if len == 0 || prompts.iter().any(|p| p.len() != len) || mask.len() != prompts.len() {
        return Err(Error::Input(
            "prompts must be non-empty, padded to one length, with a mask row each".into(),
        ));
    }
    if let Some(v) = session.vocab_size() {
        cfg.check_token_ids(v)?;
        crate::models::attention::check_ids(prompts, v, "prompt")?;
    }
    if cfg.num_beams > 1 {
        beam_search(session, prompts, mask, cfg)
    } else {
        sample(session, prompts, mask, cfg, on_token)
    }
}

/// `max_length` lowered to what the session's positions allow, with the warning to give when it was. A session
/// with `limit` positions runs sequences of `limit` tokens, and the token chosen after the last one needs no
/// position: `limit + 1` tokens in all. A prompt longer than `limit` is an error (nothing could be generated).
fn clamp_max_length<S: DecodeSession>(
    session: &S,
    max_length: usize,
    prompt_len: usize,
) -> Result<(usize, Vec<String>)> {
    match session.max_length() {
        Some(limit) if prompt_len > limit => Err(Error::Input(format!(
            "the prompt ({prompt_len} tokens, padding included) exceeds the model's {limit} positions"
        ))),
        Some(limit) if limit.saturating_add(1) < max_length => Ok((
            limit + 1,
            vec![format!(
                "generation stops at {} tokens, the most the model's {limit} positions allow (asked for {}); the tokens generated so far are returned",
                limit + 1,
                if max_length == usize::MAX { "no limit".to_string() } else { max_length.to_string() }
            )],
        )),
        _ => Ok((max_length, Vec::new())),
    }
}

/// Logits processors in transformers' order (`_get_logits_processor`), applied to one row.
struct Processors<'a> {
    cfg: &'a GenerationConfig,
    prompt_len: usize,
    max_length: usize,
    /// Per row: prompt positions ignored by the repetition penalty (its left padding).
    ignore: Vec<usize>,
}

impl Processors<'_> {
    fn apply(&self, row: usize, seq: &[u32], scores: &mut [f32]) {
        let cfg = self.cfg;
        let v = scores.len();
        if cfg.repetition_penalty != 1.0 {
            let mut seen = vec![false; v];
            for &t in &seq[self.ignore[row].min(seq.len())..] {
                if (t as usize) < v {
                    seen[t as usize] = true;
                }
            }
            for (t, s) in scores.iter_mut().enumerate() {
                if seen[t] {
                    *s = if *s < 0.0 {
                        *s * cfg.repetition_penalty
                    } else {
                        *s / cfg.repetition_penalty
                    };
                }
            }
        }
        let n = cfg.no_repeat_ngram_size;
        // As transformers: nothing to ban before the sequence holds a complete n-gram (a seq2seq decoder
        // starts from one token).
        if n > 0 && seq.len() >= n {
            let cur = seq.len();
            let prefix = &seq[cur + 1 - n..cur];
            for start in 0..=(cur - n) {
                if &seq[start..start + n - 1] == prefix {
                    let banned = seq[start + n - 1] as usize;
                    if banned < v {
                        scores[banned] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        let ban_eos = |scores: &mut [f32]| {
            for &e in &cfg.eos_token_id {
                if (e as usize) < v {
                    scores[e as usize] = f32::NEG_INFINITY;
                }
            }
        };
        if cfg.min_length > 0 && !cfg.eos_token_id.is_empty() && seq.len() < cfg.min_length {
            ban_eos(scores);
        }
        if cfg.min_new_tokens > 0
            && !cfg.eos_token_id.is_empty()
            && seq.len() - self.prompt_len < cfg.min_new_tokens
        {
            ban_eos(scores);
        }
        if let Some(bos) = cfg.forced_bos_token_id {
            if seq.len() == 1 {
                force(scores, bos);
            }
        }
        if let Some(eos) = cfg.forced_eos_token_id {
            if seq.len() == self.max_length - 1 {
                force(scores, eos);
            }
        }
    }

    /// Temperature, top-k and top-p (sampling only), as the warpers do.
    fn warp(&self, scores: &mut [f32], min_keep: usize) {
        let cfg = self.cfg;
        if cfg.temperature != 1.0 {
            for s in scores.iter_mut() {
                *s /= cfg.temperature;
            }
        }
        if cfg.top_k != 0 {
            let k = cfg.top_k.max(min_keep).min(scores.len());
            let mut sorted = scores.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let kth = sorted[k - 1];
            for s in scores.iter_mut() {
                if *s < kth {
                    *s = f32::NEG_INFINITY;
                }
            }
        }
        if cfg.top_p < 1.0 {
            // Ascending sort; drop the low tail whose cumulative probability is ≤ 1 - top_p.
            let mut idx: Vec<usize> = (0..scores.len()).collect();
            idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
            let sorted: Vec<f32> = idx.iter().map(|&i| scores[i]).collect();
            let probs = softmax(&sorted);
            let mut cum = 0f32;
            let n = scores.len();
            let mut remove = vec![false; n];
            for (j, p) in probs.iter().enumerate() {
                cum += p;
                remove[j] = cum <= 1.0 - cfg.top_p && j < n.saturating_sub(min_keep);
            }
            for (j, &i) in idx.iter().enumerate() {
                if remove[j] {
                    scores[i] = f32::NEG_INFINITY;
                }
            }
        }
    }
}

fn force(scores: &mut [f32], id: u32) {
    for s in scores.iter_mut() {
        *s = f32::NEG_INFINITY;
    }
    if (id as usize) < scores.len() {
        scores[id as usize] = 0.0;
    }
}

/// Softmax of logits, computed in `f32` after subtracting the maximum.
pub fn softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Log-softmax of logits, `x - max - ln Σ exp(x - max)`, in `f32`.
pub fn log_softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let s: f32 = x.iter().map(|v| (v - m).exp()).sum();
    let l = s.ln();
    x.iter().map(|v| v - m - l).collect()
}

fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best
}

fn padding_lengths(mask: &[Vec<u8>]) -> Vec<usize> {
    // transformers: (mask != 0).argmax() — index of the first real token (0 when none).
    mask.iter()
        .map(|r| r.iter().position(|&m| m != 0).unwrap_or(0))
        .collect()
}

fn expand<T: Clone>(rows: &[T], n: usize) -> Vec<T> {
    rows.iter()
        .flat_map(|r| std::iter::repeat_n(r.clone(), n))
        .collect()
}

/// Greedy decoding and multinomial sampling (`_sample`).
fn sample<S: DecodeSession>(
    session: &mut S,
    prompts: &[Vec<u32>],
    mask: &[Vec<u8>],
    cfg: &GenerationConfig,
    mut on_token: Option<&mut dyn FnMut(&[u32])>,
) -> Result<GenerateOutput> {
    let n = cfg.num_return_sequences;
    let mut seqs = expand(prompts, n);
    let mask = expand(mask, n);
    let prompt_len = seqs[0].len();
    let (max_length, warnings) = clamp_max_length(session, cfg.max_total(prompt_len), prompt_len)?;
    let procs = Processors {
        cfg,
        prompt_len,
        max_length,
        ignore: padding_lengths(&mask),
    };
    let pad = cfg
        .pad_token_id
        .or(cfg.eos_token_id.first().copied())
        .unwrap_or(0);
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut unfinished = vec![true; seqs.len()];
    if prompt_len >= max_length {
        return Ok(GenerateOutput {
            sequences: seqs,
            sequences_scores: None,
            prompt_len,
            warnings,
        });
    }
    let mut logits = session.prefill(&seqs, &mask)?;
    loop {
        let mut next = Vec::with_capacity(seqs.len());
        for (r, row_logits) in logits.iter_mut().enumerate() {
            procs.apply(r, &seqs[r], row_logits);
            let tok = if cfg.do_sample {
                procs.warp(row_logits, 1);
                let p = softmax(row_logits);
                let u: f32 = rng.random();
                let mut acc = 0f32;
                let mut pick = p.len() - 1;
                for (i, q) in p.iter().enumerate() {
                    acc += q;
                    if u < acc {
                        pick = i;
                        break;
                    }
                }
                pick
            } else {
                argmax(row_logits)
            };
            let tok = if unfinished[r] { tok as u32 } else { pad };
            next.push(tok);
        }
        for (r, &t) in next.iter().enumerate() {
            seqs[r].push(t);
            if cfg.eos_token_id.contains(&t) {
                unfinished[r] = false;
            }
        }
        if let Some(cb) = on_token.as_deref_mut() {
            cb(&next);
        }
        if seqs[0].len() >= max_length || unfinished.iter().all(|u| !u) {
            break;
        }
        logits = session.step(&next)?;
    }
    Ok(GenerateOutput {
        sequences: seqs,
        sequences_scores: None,
        prompt_len,
        warnings,
    })
}

/// Beam search, as transformers' vectorised `_beam_search` (≥ 4.50).
fn beam_search<S: DecodeSession>(
    session: &mut S,
    prompts: &[Vec<u32>],
    mask: &[Vec<u8>],
    cfg: &GenerationConfig,
) -> Result<GenerateOutput> {
    const NEG: f32 = -1.0e9;
    let nb = cfg.num_beams;
    let batch = prompts.len();
    let rows = expand(prompts, nb);
    let mask = expand(mask, nb);
    let prompt_len = rows[0].len();
    let (max_length, warnings) = clamp_max_length(session, cfg.max_total(prompt_len), prompt_len)?;
    let procs = Processors {
        cfg,
        prompt_len,
        max_length,
        ignore: padding_lengths(&mask),
    };
    let n_eos = cfg.eos_token_id.len();
    let keep = 2usize.max(1 + n_eos) * nb;
    let lp = cfg.length_penalty;
    let fill = match (cfg.pad_token_id, cfg.eos_token_id.first()) {
        (_, None) => u32::MAX,
        (Some(p), _) if p != 0 => p,
        (_, Some(&e)) => e,
    };

    // running[b][j]: sequence and score of live beam j of batch item b.
    let mut running: Vec<Vec<Vec<u32>>> = (0..batch)
        .map(|b| rows[b * nb..(b + 1) * nb].to_vec())
        .collect();
    let mut running_scores: Vec<Vec<f32>> = (0..batch)
        .map(|_| (0..nb).map(|j| if j == 0 { 0.0 } else { NEG }).collect())
        .collect();
    let mut finished: Vec<Vec<Vec<u32>>> = running.clone();
    let mut finished_scores = vec![vec![NEG; nb]; batch];
    let mut is_finished = vec![vec![false; nb]; batch];
    let mut heuristic_unsatisfied = vec![true; batch];
    let mut cur_len = prompt_len;
    if prompt_len >= max_length {
        return Ok(GenerateOutput {
            sequences: expand(prompts, cfg.num_return_sequences),
            sequences_scores: None,
            prompt_len,
            warnings,
        });
    }
    let mut logits = session.prefill(&rows, &mask)?;
    loop {
        let mut all_hit = true;
        let mut next_tokens = vec![0u32; batch * nb];
        let mut reorder = vec![0usize; batch * nb];
        for b in 0..batch {
            // Accumulated log-probs of every (beam, token) continuation.
            let mut acc: Vec<(f32, usize, u32)> = Vec::new();
            for j in 0..nb {
                let r = b * nb + j;
                let mut lp_row = log_softmax(&logits[r]);
                procs.apply(r, &running[b][j], &mut lp_row);
                let base = running_scores[b][j];
                acc.extend(
                    lp_row
                        .iter()
                        .enumerate()
                        .map(|(t, &s)| (s + base, j, t as u32)),
                );
            }
            let top = top_k_desc(&acc, keep, |c| c.0);
            let cands: Vec<(f32, usize, u32)> = top.iter().map(|&i| acc[i]).collect();
            let hits: Vec<bool> = cands
                .iter()
                .map(|&(_, _, t)| cfg.eos_token_id.contains(&t) || cur_len + 1 >= max_length)
                .collect();
            all_hit &= hits.iter().all(|&h| h);
            // Live beams for the next step: the best candidates that did not stop.
            let live: Vec<f32> = cands
                .iter()
                .zip(&hits)
                .map(|(c, &h)| c.0 + if h { NEG } else { 0.0 })
                .collect();
            let pick = top_k_desc(&live, nb, |s| *s);
            let new_running: Vec<Vec<u32>> = pick
                .iter()
                .map(|&i| {
                    let (_, j, t) = cands[i];
                    let mut s = running[b][j].clone();
                    s.push(t);
                    s
                })
                .collect();
            for (slot, &i) in pick.iter().enumerate() {
                next_tokens[b * nb + slot] = cands[i].2;
                reorder[b * nb + slot] = b * nb + cands[i].1;
            }
            // Finished hypotheses: merge the best stopping candidates with those kept so far.
            let all_done =
                is_finished[b].iter().all(|&f| f) && cfg.early_stopping == EarlyStopping::True;
            let denom = ((cur_len + 1 - prompt_len) as f32).powf(lp);
            let mut merged: Vec<(f32, Vec<u32>, bool)> = (0..nb)
                .map(|j| {
                    (
                        finished_scores[b][j],
                        finished[b][j].clone(),
                        is_finished[b][j],
                    )
                })
                .collect();
            for (k, &(s, j, t)) in cands.iter().enumerate() {
                let did_finish = hits[k] && k < nb;
                let mut s = s / denom;
                if all_done {
                    s += NEG;
                }
                if !heuristic_unsatisfied[b] {
                    s += NEG;
                }
                if !did_finish {
                    s += NEG;
                }
                let mut seq = running[b][j].clone();
                seq.push(t);
                merged.push((s, seq, did_finish));
            }
            let best = top_k_desc(&merged, nb, |m| m.0);
            finished[b] = best.iter().map(|&i| merged[i].1.clone()).collect();
            finished_scores[b] = best.iter().map(|&i| merged[i].0).collect();
            is_finished[b] = best.iter().map(|&i| merged[i].2).collect();
            running_scores[b] = pick.iter().map(|&i| live[i]).collect();
            running[b] = new_running;
        }
        cur_len += 1;
        for b in 0..batch {
            let best_len = if cfg.early_stopping == EarlyStopping::Never && lp > 0.0 {
                max_length - prompt_len
            } else {
                cur_len - prompt_len
            };
            let best_running = running_scores[b][0] / (best_len as f32).powf(lp);
            let min_finished = finished_scores[b]
                .iter()
                .cloned()
                .fold(f32::INFINITY, f32::min);
            let improvable = is_finished[b]
                .iter()
                .any(|&f| best_running > if f { min_finished } else { NEG });
            heuristic_unsatisfied[b] &= improvable;
        }
        let improvement_possible = heuristic_unsatisfied.iter().any(|&u| u);
        let all_finished = is_finished.iter().all(|r| r.iter().all(|&f| f));
        let open = !(all_finished && cfg.early_stopping == EarlyStopping::True);
        if !(improvement_possible && open && !all_hit) {
            break;
        }
        session.select(&reorder)?;
        logits = session.step(&next_tokens)?;
    }
    let nr = cfg.num_return_sequences;
    let mut out: Vec<Vec<u32>> = Vec::new();
    let mut scores = Vec::new();
    for b in 0..batch {
        for j in 0..nr {
            out.push(finished[b][j].clone());
            scores.push(finished_scores[b][j]);
        }
    }
    let width = out.iter().map(|s| s.len()).max().unwrap_or(prompt_len);
    for s in out.iter_mut() {
        s.resize(width, fill);
    }
    Ok(GenerateOutput {
        sequences: out,
        sequences_scores: Some(scores),
        prompt_len,
        warnings,
    })
}

/// Indices of the `k` largest items, in descending order; ties keep the earlier index first.
fn top_k_desc<T>(items: &[T], k: usize, key: impl Fn(&T) -> f32) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..items.len()).collect();
    let k = k.min(items.len());
    if k < items.len() {
        idx.select_nth_unstable_by(k, |&a, &b| {
            key(&items[b]).total_cmp(&key(&items[a])).then(a.cmp(&b))
        });
        idx.truncate(k);
    }
    idx.sort_by(|&a, &b| key(&items[b]).total_cmp(&key(&items[a])).then(a.cmp(&b)));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "model" whose next-token logits are always the same.
    struct Fixed(Vec<f32>);

    impl DecodeSession for Fixed {
        fn prefill(&mut self, rows: &[Vec<u32>], _mask: &[Vec<u8>]) -> Result<Vec<Vec<f32>>> {
            Ok(vec![self.0.clone(); rows.len()])
        }
        fn step(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
            Ok(vec![self.0.clone(); tokens.len()])
        }
        fn select(&mut self, _idx: &[usize]) -> Result<()> {
            Ok(())
        }
    }

    fn draws(logits: &[f32], cfg: GenerationConfig, n: u64) -> Vec<usize> {
        let mut counts = vec![0usize; logits.len()];
        for seed in 0..n {
            let c = GenerationConfig {
                seed,
                max_new_tokens: Some(1),
                do_sample: true,
                ..cfg.clone()
            };
            let out = generate(
                &mut Fixed(logits.to_vec()),
                &[vec![0]],
                &[vec![1]],
                &c,
                None,
            )
            .unwrap();
            counts[out.sequences[0][1] as usize] += 1;
        }
        counts
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus_and_its_mass() {
        // probabilities 0.5, 0.25, 0.125, 0.0625, 0.0625
        let lp: Vec<f32> = [0.5f32, 0.25, 0.125, 0.0625, 0.0625]
            .iter()
            .map(|p| p.ln())
            .collect();
        let counts = draws(
            &lp,
            GenerationConfig {
                top_p: 0.7,
                top_k: 0,
                ..Default::default()
            },
            3000,
        );
        // Nucleus for 0.7: {0, 1} (0.75); renormalised 2/3 and 1/3.
        assert_eq!(counts[2] + counts[3] + counts[4], 0, "{counts:?}");
        let f0 = counts[0] as f64 / 3000.0;
        assert!((f0 - 2.0 / 3.0).abs() < 0.04, "{counts:?}");
    }

    #[test]
    fn top_k_and_temperature() {
        let lp: Vec<f32> = [0.4f32, 0.3, 0.2, 0.1].iter().map(|p| p.ln()).collect();
        let counts = draws(
            &lp,
            GenerationConfig {
                top_k: 2,
                ..Default::default()
            },
            2000,
        );
        assert_eq!(counts[2] + counts[3], 0);
        // A very low temperature is (almost) greedy.
        let counts = draws(
            &lp,
            GenerationConfig {
                temperature: 0.05,
                top_k: 0,
                ..Default::default()
            },
            500,
        );
        assert!(counts[0] > 490, "{counts:?}");
        // Without filtering, frequencies follow the distribution.
        let counts = draws(
            &lp,
            GenerationConfig {
                top_k: 0,
                ..Default::default()
            },
            4000,
        );
        assert!(
            (counts[3] as f64 / 4000.0 - 0.1).abs() < 0.025,
            "{counts:?}"
        );
    }

    #[test]
    fn validation_rejects_nonsense_and_warns_like_transformers() {
        let bad = [
            GenerationConfig {
                num_beams: 0,
                ..Default::default()
            },
            GenerationConfig {
                top_p: 1.5,
                ..Default::default()
            },
            GenerationConfig {
                do_sample: true,
                temperature: 0.0,
                ..Default::default()
            },
            GenerationConfig {
                num_return_sequences: 3,
                num_beams: 2,
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
        let w = GenerationConfig {
            temperature: 0.7,
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert!(w.iter().any(|m| m.contains("temperature")));
    }

    /// A `max_new_tokens` near u64::MAX from generation_config.json overflowed `prompt_len + n` (a panic
    /// with overflow checks) when decoding started; it now saturates.
    #[test]
    fn huge_max_new_tokens_saturates() {
        let mut g = GenerationConfig::default();
        let v: Value = serde_json::from_str(r#"{"max_new_tokens": 18446744073709551615}"#).unwrap();
        g.update_from_json(Path::new("generation_config.json"), &v)
            .unwrap();
        assert!(g.validate().is_ok());
        assert_eq!(g.max_total(5), usize::MAX);
    }
}
