//! Encoder-decoder decoding shared by T5 and BART: the [`EncoderDecoder`] interface a model implements,
//! cross-attention over grouped rows, and [`Seq2SeqSession`], the [`DecodeSession`] that
//! [`crate::generate::generate`] drives.
//!
//! As in transformers' `generate`, the encoder runs once per call. The engine's "prompt" is the decoder rows
//! (`[decoder_start_token_id]` each), expanded to `batch × num_beams` (or `× num_return_sequences`) rows.
//! The session keeps the encoder's cross-attention keys/values once per *batch item*, not per row: the
//! `g = rows / items` rows of an item are grouped into one attention call ([`grouped_attend`]), so expansion
//! and beam reordering (which only permutes rows within an item) never copy them. They are gathered per row
//! only if a `select` moves rows between items, which the engine never does.

use burn::prelude::*;

use crate::generate::{DecodeSession, GenerateOutput, GenerationConfig};
use crate::load::error::{Error, Result};
use crate::models::attention::{attend, ids_tensor, rows_f32, KvCache, LayerCache, MASKED};

/// What a seq2seq model provides to [`Seq2SeqSession`] (and to its own full forward).
pub trait EncoderDecoder<B: Backend> {
    /// The encoder's final hidden states `[b, s, d]` for `input_ids` `[b, s]` under `attention_mask`
    /// (`[b][s]`, 1 = real token).
    fn encode(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: &[Vec<u8>],
    ) -> Result<Tensor<B, 3>>;

    /// The input word embeddings `[b, s, d]` as transformers' `get_input_embeddings()(input_ids)` (BART's
    /// scaled embedding includes `embed_scale`).
    fn input_embeddings(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3>;

    /// The encoder's final hidden states for input embeddings `[b, s, d]` (as `encoder(inputs_embeds=…)`).
    fn encode_embeds(
        &self,
        embeds: Tensor<B, 3>,
        attention_mask: &[Vec<u8>],
    ) -> Result<Tensor<B, 3>>;

    /// The mask of what [`EncoderDecoder::encode`] returns, for inputs masked by `attention_mask` (the same,
    /// unless the model adds encoder positions, as prompt tuning does).
    fn encoder_mask(&self, attention_mask: &[Vec<u8>]) -> Vec<Vec<u8>> {
        attention_mask.to_vec()
    }

    /// Per decoder layer, the cross-attention keys and values `[b, heads, s, head_dim]` of encoder states.
    fn cross_kv(&self, encoder_hidden: Tensor<B, 3>) -> Vec<LayerCache<B>>;

    /// Number of decoder layers (the length of the decoder's [`KvCache`]).
    fn n_decoder_layers(&self) -> usize;

    /// Rows of the (shared) input embedding: every token id fed to the encoder or decoder must be below it.
    fn vocab_size(&self) -> usize;

    /// The longest decoder sequence the model has positions for (BART's learned positions); `None` when
    /// unbounded (T5's relative attention).
    fn max_target_positions(&self) -> Option<usize> {
        None
    }

    /// The decoder's final hidden states `[r, t, d]` for `ids` `[r, t]`, after the `cache.len()` tokens
    /// already in `cache` (if any; the new keys/values are appended). `self_mask` is `[r][past + t]`
    /// (1 = real token). `cross` holds `n` items' keys/values with `r = n · g`: row `i` attends to item
    /// `i / g`, under the additive `cross_mask` `[n, 1, 1, s]`.
    fn decode(
        &self,
        ids: Tensor<B, 2, Int>,
        self_mask: &[Vec<u8>],
        cache: Option<&mut KvCache<B>>,
        cross: &[LayerCache<B>],
        cross_mask: Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>>;

    /// LM-head logits `[r, t, vocab]` from decoder hidden states.
    fn lm_logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3>;

    /// The device the model's parameters live on.
    fn device(&self) -> B::Device;

    /// Full teacher-forced forward: logits `[b, t, vocab]` for `decoder_input_ids` given the encoder's
    /// output for inputs masked by `attention_mask` (as `model(encoder_outputs=…, attention_mask=…,
    /// decoder_input_ids=…)`).
    fn decoder_logits(
        &self,
        decoder_input_ids: Tensor<B, 2, Int>,
        encoder_hidden: Tensor<B, 3>,
        attention_mask: &[Vec<u8>],
    ) -> Result<Tensor<B, 3>> {
        let [b, t] = decoder_input_ids.dims();
        let device = self.device();
        let cross = self.cross_kv(encoder_hidden);
        let mask = cross_mask::<B>(&self.encoder_mask(attention_mask), &device);
        let ones = vec![vec![1u8; t]; b];
        let h = self.decode(decoder_input_ids, &ones, None, &cross, mask)?;
        Ok(self.lm_logits(h))
    }
}

/// Check `input_ids` rows against their mask and build the id tensor.
pub(crate) fn encoder_inputs<B: Backend>(
    input_ids: &[Vec<u32>],
    attention_mask: &[Vec<u8>],
    vocab: usize,
    device: &B::Device,
) -> Result<Tensor<B, 2, Int>> {
    let s = input_ids.first().map_or(0, |r| r.len());
    if input_ids.is_empty() || s == 0 {
        return Err(Error::Input("no encoder input".into()));
    }
    if attention_mask.len() != input_ids.len()
        || input_ids.iter().any(|r| r.len() != s)
        || attention_mask.iter().any(|r| r.len() != s)
    {
        return Err(Error::Input(
            "encoder inputs must be padded to one length, with one attention-mask row of that length each".into(),
        ));
    }
    crate::models::attention::check_ids(input_ids, vocab, "encoder input")?;
    Ok(ids_tensor::<B>(input_ids, device))
}

/// The additive cross-attention mask `[n, 1, 1, s]` from encoder padding masks (1 = attend).
pub fn cross_mask<B: Backend>(mask: &[Vec<u8>], device: &B::Device) -> Tensor<B, 4> {
    let n = mask.len();
    let s = mask.first().map_or(0, |r| r.len());
    let data: Vec<f32> = mask
        .iter()
        .flat_map(|r| r.iter().map(|&m| if m != 0 { 0.0 } else { MASKED }))
        .collect();
    Tensor::from_data(TensorData::new(data, [n, 1, 1, s]), device)
}

/// Attention of `r = n · g` query rows `[r, h, t, d]` over `n` items' keys/values `[n, h, s, d]`: row `i`
/// uses item `i / g`. The `g` rows of an item are stacked along the query axis, so keys and values are
/// never repeated. `mask` is additive and broadcasts to `[n, h, g·t, s]`.
pub fn grouped_attend<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: Option<f64>,
    mask: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [r, h, t, d] = q.dims();
    let n = k.dims()[0];
    assert!(
        n > 0 && r % n == 0,
        "grouped_attend: {r} query rows are not a multiple of {n} items"
    );
    if n == r {
        return attend(q, k, v, scale, Some(mask));
    }
    let g = r / n;
    let q = q
        .reshape([n, g, h, t, d])
        .swap_dims(1, 2)
        .reshape([n, h, g * t, d]);
    let out = attend(q, k, v, scale, Some(mask));
    let dv = out.dims()[3];
    out.reshape([n, h, g, t, dv])
        .swap_dims(1, 2)
        .reshape([r, h, t, dv])
}

/// Incremental seq2seq decoding over one encoder pass, for [`crate::generate::generate`].
pub struct Seq2SeqSession<'a, B: Backend, M: EncoderDecoder<B>> {
    model: &'a M,
    encoder_hidden: Tensor<B, 3>,
    encoder_mask: Vec<Vec<u8>>,
    /// Cross keys/values per batch item, computed at the first prefill and reused by later ones.
    item_cross: Option<Vec<LayerCache<B>>>,
    /// Cross keys/values the rows currently attend to (`n` entries; row `i` uses entry `i / (rows / n)`).
    cross: Vec<LayerCache<B>>,
    cross_mask: Option<Tensor<B, 4>>,
    /// Whether `cross` holds one entry per batch item (else one per row).
    cross_is_items: bool,
    /// The batch item of each row.
    row_item: Vec<usize>,
    cache: KvCache<B>,
    dec_mask: Vec<Vec<u8>>,
    cross_gathers: usize,
}

impl<'a, B: Backend, M: EncoderDecoder<B>> Seq2SeqSession<'a, B, M> {
    /// Run the encoder on `input_ids` (`[batch][s]`, padded to one length) under `attention_mask`.
    pub fn new(model: &'a M, input_ids: &[Vec<u32>], attention_mask: &[Vec<u8>]) -> Result<Self> {
        let ids = encoder_inputs::<B>(
            input_ids,
            attention_mask,
            model.vocab_size(),
            &model.device(),
        )?;
        let hidden = model.encode(ids, attention_mask)?;
        Ok(Self::from_encoder_output(
            model,
            hidden,
            model.encoder_mask(attention_mask),
        ))
    }

    /// A session over an encoder output `[batch, s, d]` computed elsewhere, with its mask `[batch][s]`.
    pub fn from_encoder_output(
        model: &'a M,
        encoder_hidden: Tensor<B, 3>,
        attention_mask: Vec<Vec<u8>>,
    ) -> Self {
        Self {
            model,
            encoder_hidden,
            encoder_mask: attention_mask,
            item_cross: None,
            cross: vec![],
            cross_mask: None,
            cross_is_items: true,
            row_item: vec![],
            cache: KvCache::new(model.n_decoder_layers()),
            dec_mask: vec![],
            cross_gathers: 0,
        }
    }

    /// Batch items (encoder rows).
    pub fn batch(&self) -> usize {
        self.encoder_mask.len()
    }

    /// The encoder's final hidden states, `[batch, src_len, hidden]` (one row per batch item).
    pub fn encoder_hidden(&self) -> &Tensor<B, 3> {
        &self.encoder_hidden
    }

    /// How many times cross-attention keys/values were gathered per row because a `select` moved rows
    /// between batch items (0 for everything the generation engine does).
    pub fn cross_gathers(&self) -> usize {
        self.cross_gathers
    }

    fn last_logits(&self, h: Tensor<B, 3>) -> Vec<Vec<f32>> {
        let [r, t, d] = h.dims();
        let logits = self.model.lm_logits(h.slice([0..r, t - 1..t, 0..d]));
        let v = logits.dims()[2];
        rows_f32(logits.reshape([r, v]))
    }

    fn run(&mut self, ids: Tensor<B, 2, Int>) -> Result<Vec<Vec<f32>>> {
        let mask = self
            .cross_mask
            .clone()
            .expect("prefill sets the cross mask");
        let h = self.model.decode(
            ids,
            &self.dec_mask,
            Some(&mut self.cache),
            &self.cross,
            mask,
        )?;
        Ok(self.last_logits(h))
    }

    /// True when `row_item` is the grouped layout over `n` cross entries that are the batch items.
    fn grouped_over_items(row_item: &[usize], n: usize) -> bool {
        n > 0 && row_item.len() % n == 0 && {
            let g = row_item.len() / n;
            row_item.iter().enumerate().all(|(i, &it)| it == i / g)
        }
    }
}

impl<B: Backend, M: EncoderDecoder<B>> DecodeSession for Seq2SeqSession<'_, B, M> {
    fn vocab_size(&self) -> Option<usize> {
        Some(self.model.vocab_size())
    }
    fn max_length(&self) -> Option<usize> {
        self.model.max_target_positions()
    }
    fn prefill(&mut self, rows: &[Vec<u32>], mask: &[Vec<u8>]) -> Result<Vec<Vec<f32>>> {
        let batch = self.batch();
        if rows.is_empty() || rows.len() % batch != 0 {
            return Err(Error::Input(format!(
                "{} decoder rows cannot be spread over {batch} encoder inputs",
                rows.len()
            )));
        }
        if mask.len() != rows.len() || mask.iter().zip(rows).any(|(m, r)| m.len() != r.len()) {
            return Err(Error::Input(
                "decoder rows and their mask differ in shape".into(),
            ));
        }
        let device = self.model.device();
        if self.item_cross.is_none() {
            self.item_cross = Some(self.model.cross_kv(self.encoder_hidden.clone()));
        }
        self.cross = self.item_cross.clone().unwrap_or_default();
        self.cross_mask = Some(cross_mask::<B>(&self.encoder_mask, &device));
        self.cross_is_items = true;
        let g = rows.len() / batch;
        self.row_item = (0..rows.len()).map(|i| i / g).collect();
        self.cache = KvCache::new(self.model.n_decoder_layers());
        self.dec_mask = mask.to_vec();
        let ids = ids_tensor::<B>(rows, &device);
        self.run(ids)
    }

    fn step(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        if tokens.len() != self.dec_mask.len() {
            return Err(Error::Input(format!(
                "{} tokens for {} rows",
                tokens.len(),
                self.dec_mask.len()
            )));
        }
        for m in self.dec_mask.iter_mut() {
            m.push(1);
        }
        let rows: Vec<Vec<u32>> = tokens.iter().map(|&t| vec![t]).collect();
        let ids = ids_tensor::<B>(&rows, &self.model.device());
        self.run(ids)
    }

    fn select(&mut self, idx: &[usize]) -> Result<()> {
        let n_rows = self.dec_mask.len();
        if let Some(&bad) = idx.iter().find(|&&i| i >= n_rows) {
            return Err(Error::Input(format!("select: row {bad} of {n_rows}")));
        }
        let identity = idx.len() == n_rows && idx.iter().enumerate().all(|(i, &j)| i == j);
        if identity {
            return Ok(());
        }
        self.cache.select(idx);
        self.dec_mask = idx.iter().map(|&i| self.dec_mask[i].clone()).collect();
        let row_item: Vec<usize> = idx.iter().map(|&i| self.row_item[i]).collect();
        let device = self.model.device();
        if Self::grouped_over_items(&row_item, self.batch()) {
            if !self.cross_is_items {
                self.cross = self.item_cross.clone().unwrap_or_default();
                self.cross_mask = Some(cross_mask::<B>(&self.encoder_mask, &device));
                self.cross_is_items = true;
            }
        } else {
            // Rows moved between items: give every row its own copy (never the case in `generate`).
            let ids: Vec<i64> = row_item.iter().map(|&i| i as i64).collect();
            let t = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [row_item.len()]), &device);
            self.cross = self
                .item_cross
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|c| LayerCache {
                    k: c.k.select(0, t.clone()),
                    v: c.v.select(0, t.clone()),
                })
                .collect();
            self.cross_mask = Some(cross_mask::<B>(&self.encoder_mask, &device).select(0, t));
            self.cross_is_items = false;
            self.cross_gathers += 1;
        }
        self.row_item = row_item;
        Ok(())
    }
}

/// `generate` for an encoder-decoder model, as transformers does it: encode `input_ids` once, start every
/// decoder row from `decoder_start_token_id` (or `bos_token_id`), and decode. The returned sequences are the
/// decoder's (they begin with the start token).
pub fn generate<B: Backend, M: EncoderDecoder<B>>(
    model: &M,
    input_ids: &[Vec<u32>],
    attention_mask: &[Vec<u8>],
    cfg: &GenerationConfig,
    on_token: Option<&mut dyn FnMut(&[u32])>,
) -> Result<GenerateOutput> {
    let start = cfg.decoder_start()?;
    cfg.check_token_ids(model.vocab_size())?;
    let mut session = Seq2SeqSession::new(model, input_ids, attention_mask)?;
    let b = input_ids.len();
    crate::generate::generate(
        &mut session,
        &vec![vec![start]; b],
        &vec![vec![1u8]; b],
        cfg,
        on_token,
    )
}
