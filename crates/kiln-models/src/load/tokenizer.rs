//! Tokenization through the `tokenizers` crate: `tokenizer.json`, or GPT-2's `vocab.json` + `merges.txt`,
//! or BERT's `vocab.txt` (the uncased BERT pipeline is built from it).

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::BPE;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{Tokenizer as HfTokenizer, TruncationParams, TruncationStrategy};

use crate::load::error::{Error, Result};

/// One encoded text (or pair).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// Token ids, with the tokenizer's special tokens.
    pub ids: Vec<u32>,
    /// Segment ids (0 for the first text, 1 for the second of a pair).
    pub type_ids: Vec<u32>,
    /// True when the input was longer than `max_len` and was cut.
    pub truncated: bool,
}

/// A tokenizer plus the file it came from (for error messages).
#[derive(Clone)]
pub struct Tokenizer {
    /// The Hugging Face `tokenizers` tokenizer (never pads or truncates).
    pub inner: HfTokenizer,
    /// The file it was read from.
    pub path: PathBuf,
    /// Truncating copies of `inner`, one per length limit used.
    truncating: std::sync::Arc<std::sync::Mutex<Vec<(usize, std::sync::Arc<HfTokenizer>)>>>,
    /// The vocabulary of the model this tokenizer feeds (rows of its input embedding), once known: every
    /// encoded id is checked against it ([`Tokenizer::with_model_vocab`]).
    model_vocab: Option<usize>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer({})", self.path.display())
    }
}

impl Tokenizer {
    /// Load from a checkpoint directory: `tokenizer.json`, else `vocab.json` + `merges.txt`, else `vocab.txt`
    /// (lower-casing unless `tokenizer_config.json` says `"do_lower_case": false`).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_file(&json);
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if vocab.is_file() && merges.is_file() {
            return Self::from_bpe_files(&vocab, &merges);
        }
        let wp = dir.join("vocab.txt");
        if wp.is_file() {
            return Self::from_wordpiece_vocab(&wp, Self::do_lower_case(dir)?);
        }
        if vocab.is_file() || merges.is_file() {
            // One of the BPE pair without the other: name the missing one (from_bpe_files checks both).
            return Self::from_bpe_files(&vocab, &merges);
        }
        Err(Error::MissingFile {
            path: json,
            hint: " (nor vocab.json + merges.txt, nor vocab.txt)".into(),
        })
    }

    /// `do_lower_case` from `tokenizer_config.json` when there is one, else true (uncased BERT's default).
    fn do_lower_case(dir: &Path) -> Result<bool> {
        let p = dir.join("tokenizer_config.json");
        if !p.is_file() {
            return Ok(true);
        }
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: p.clone(),
            source,
        })?;
        match v.get("do_lower_case") {
            None | Some(serde_json::Value::Null) => Ok(true),
            Some(serde_json::Value::Bool(b)) => Ok(*b),
            Some(other) => Err(Error::ConfigField {
                path: p.clone(),
                field: "do_lower_case".into(),
                msg: format!("expected true or false, found {other}"),
            }),
        }
    }

    /// Read a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let err = |e: tokenizers::Error| Error::Tokenizer {
            path: path.to_path_buf(),
            msg: e.to_string(),
        };
        let mut inner = HfTokenizer::from_bytes(&bytes).map_err(err)?;
        // Drop the file's own padding/truncation (all-MiniLM-L6-v2's pads and cuts to 128): kiln pads batches
        // itself and truncates only when asked (`max_len`).
        inner.with_padding(None);
        inner.with_truncation(None).map_err(err)?;
        Ok(Self {
            inner,
            path: path.to_path_buf(),
            truncating: Default::default(),
            model_vocab: None,
        })
    }

    /// GPT-2's byte-level BPE from `vocab.json` and `merges.txt` (no special-token post-processing, as GPT-2).
    pub fn from_bpe_files(vocab: &Path, merges: &Path) -> Result<Self> {
        let err = |msg: String| Error::Tokenizer {
            path: vocab.to_path_buf(),
            msg,
        };
        let v = vocab.to_str().ok_or_else(|| err("non-UTF-8 path".into()))?;
        let m = merges
            .to_str()
            .ok_or_else(|| err("non-UTF-8 path".into()))?;
        for p in [vocab, merges] {
            if !p.is_file() {
                return Err(Error::MissingFile {
                    path: p.to_path_buf(),
                    hint: " (a byte-level BPE tokenizer needs vocab.json and merges.txt)".into(),
                });
            }
        }
        let bpe = BPE::from_file(v, m)
            .build()
            .map_err(|e| err(format!("with {}: {e}", merges.display())))?;
        let mut inner = HfTokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevel::default()));
        let mut t = Self {
            inner,
            path: vocab.to_path_buf(),
            truncating: Default::default(),
            model_vocab: None,
        };
        if let Some(id) = t.inner.token_to_id("<|endoftext|>") {
            let _ = id;
            t.inner
                .add_special_tokens(&[tokenizers::AddedToken::from("<|endoftext|>", true)]);
        }
        Ok(t)
    }

    /// BERT's WordPiece pipeline from `vocab.txt` alone (as `BertTokenizerFast` builds it).
    pub fn from_wordpiece_vocab(vocab: &Path, lowercase: bool) -> Result<Self> {
        let err = |msg: String| Error::Tokenizer {
            path: vocab.to_path_buf(),
            msg,
        };
        let v = vocab.to_str().ok_or_else(|| err("non-UTF-8 path".into()))?;
        if !vocab.is_file() {
            return Err(Error::MissingFile {
                path: vocab.to_path_buf(),
                hint: String::new(),
            });
        }
        let wp = WordPiece::from_file(v)
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| err(e.to_string()))?;
        let mut inner = HfTokenizer::new(wp);
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| err(format!("vocabulary has no `{t}`")))
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        inner.with_normalizer(Some(BertNormalizer::new(
            true,
            true,
            Some(lowercase),
            lowercase,
        )));
        inner.with_pre_tokenizer(Some(BertPreTokenizer));
        inner.with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), sep),
            ("[CLS]".into(), cls),
        )));
        inner.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
        let specials: Vec<_> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            .iter()
            .filter(|t| inner.token_to_id(t).is_some())
            .map(|t| tokenizers::AddedToken::from(*t, true))
            .collect();
        inner.add_special_tokens(&specials);
        Ok(Self {
            inner,
            path: vocab.to_path_buf(),
            truncating: Default::default(),
            model_vocab: None,
        })
    }

    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            msg: msg.to_string(),
        }
    }

    /// Check every id this tokenizer produces against the model's vocabulary of `n` (the rows of its input
    /// embedding): a tokenizer whose vocabulary is larger than the model's then gives an error naming its file,
    /// the id and the size instead of an out-of-range index inside the backend.
    pub fn with_model_vocab(mut self, n: usize) -> Self {
        self.model_vocab = Some(n);
        self
    }

    /// An error naming this tokenizer's file when an id is outside the model's vocabulary (set by
    /// [`Tokenizer::with_model_vocab`]; without it every id passes). Every `encode*` method calls it; code that
    /// encodes through [`Tokenizer::inner`] directly should too.
    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match (self.model_vocab, ids.iter().max()) {
            (Some(v), Some(&m)) if m as usize >= v => Err(self.err(format!(
                "token id {m} (`{}`) is outside the model's vocabulary of {v}: the tokenizer does not belong to this model",
                self.inner.id_to_token(m).unwrap_or_default()
            ))),
            _ => Ok(()),
        }
    }

    /// Encode one text with the tokenizer's special tokens; cut to `max_len` tokens when given.
    pub fn encode(&self, text: &str, max_len: Option<usize>) -> Result<Encoding> {
        self.encode_inner(tokenizers::EncodeInput::Single(text.into()), max_len)
    }

    /// Encode a pair (`[CLS] a [SEP] b [SEP]` for BERT), truncating the longest first.
    pub fn encode_pair(&self, a: &str, b: &str, max_len: Option<usize>) -> Result<Encoding> {
        self.encode_inner(tokenizers::EncodeInput::Dual(a.into(), b.into()), max_len)
    }

    fn encode_inner(
        &self,
        input: tokenizers::EncodeInput,
        max_len: Option<usize>,
    ) -> Result<Encoding> {
        // `inner` never pads or truncates (see `from_file`); with a limit, a truncating copy built once per
        // limit and cached is used, so each text is encoded once.
        let enc = match max_len {
            None => self.inner.encode(input, true),
            Some(m) => self.truncating(m)?.encode(input, true),
        }
        .map_err(|e| self.err(e))?;
        self.check_ids(enc.get_ids())?;
        Ok(Encoding {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
            truncated: !enc.get_overflowing().is_empty(),
        })
    }

    /// A copy of the tokenizer that truncates to `max_len` (longest first), cached per limit.
    fn truncating(&self, max_len: usize) -> Result<std::sync::Arc<HfTokenizer>> {
        let mut cache = self.truncating.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, t)) = cache.iter().find(|(m, _)| *m == max_len) {
            return Ok(t.clone());
        }
        let mut tok = self.inner.clone();
        tok.with_truncation(Some(TruncationParams {
            max_length: max_len,
            strategy: TruncationStrategy::LongestFirst,
            ..Default::default()
        }))
        .map_err(|e| self.err(e))?;
        let t = std::sync::Arc::new(tok);
        cache.push((max_len, t.clone()));
        Ok(t)
    }

    /// Encode without special tokens (for continuation text and prompt pieces).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let ids = self
            .inner
            .encode(text, false)
            .map_err(|e| self.err(e))?
            .get_ids()
            .to_vec();
        self.check_ids(&ids)?;
        Ok(ids)
    }

    /// Decode ids to text, without the special tokens when `skip_special_tokens`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| self.err(e))
    }

    /// The id of a token (`"[PAD]"`, `"</s>"`), if in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
