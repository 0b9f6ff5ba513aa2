//! The causal (decoder-only) face of the generation engine: any model that can run new tokens against a
//! KV cache gets a [`CausalSession`] implementing [`DecodeSession`].

use burn::prelude::*;

use crate::generate::DecodeSession;
use crate::load::error::{Error, Result};
use crate::models::attention::{ids_tensor, positions_from_mask, rows_f32, KvCache};

/// A decoder-only language model, as the generation engine and scorers see it.
pub trait CausalLm<B: Backend> {
    /// Number of transformer layers (the length of a [`KvCache`] for this model).
    fn n_layer(&self) -> usize;
    /// Rows of the input embedding: every token id fed to the model must be below it.
    fn vocab_size(&self) -> usize;
    /// The largest position id the model has an embedding for, plus one.
    fn max_positions(&self) -> usize;
    /// The device the model's parameters live on.
    fn device(&self) -> B::Device;
    /// Final hidden states for `ids` at raw `positions`, attending to the cache and the new tokens under
    /// `key_mask` (`[b, past + s]`, 1 = real token).
    fn hidden(
        &self,
        ids: Tensor<B, 2, Int>,
        positions: Tensor<B, 2, Int>,
        key_mask: &[Vec<u8>],
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3>;
    /// The input (word) embeddings of `ids`, `[b, s, d_embed]` (transformers' `inputs_embeds`).
    fn input_embeddings(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3>;
    /// [`Self::hidden`] from input embeddings instead of ids (`hidden(ids, …)` is
    /// `hidden_from_embeds(input_embeddings(ids), …)`, bit for bit).
    fn hidden_from_embeds(
        &self,
        embeds: Tensor<B, 3>,
        positions: Tensor<B, 2, Int>,
        key_mask: &[Vec<u8>],
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3>;
    /// Attention heads per layer.
    fn n_head(&self) -> usize;
    /// Width of the attention keys/values (`n_head · head_dim`).
    fn hidden_size(&self) -> usize;
    /// LM-head logits from hidden states.
    fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3>;
    /// The output embedding `[vocab, d]` when the LM head is `hidden @ Eᵀ` (tied heads), so that decoding
    /// can keep a contiguous transposed copy instead of transposing 50k × 768 floats every step.
    fn output_embedding(&self) -> Option<Tensor<B, 2>> {
        None
    }
}

/// Incremental decoding state: the KV cache, each row's padding mask and next position id.
pub struct CausalSession<'a, B: Backend, M: CausalLm<B>> {
    model: &'a M,
    /// `Eᵀ` `[d, vocab]`, materialised once per session (not on flex: see [`Self::new`]).
    head_t: Option<Tensor<B, 2>>,
    cache: KvCache<B>,
    mask: Vec<Vec<u8>>,
    next_pos: Vec<i64>,
}

impl<'a, B: Backend, M: CausalLm<B>> CausalSession<'a, B, M> {
    /// A session on `model`, with an empty cache (one per `generate` call).
    pub fn new(model: &'a M) -> Self {
        // Where kiln-kernels' few-rows product runs (flex), the model's own tied head reads E in place (its rows
        // are Eᵀ's contiguous columns); elsewhere Eᵀ is materialised once for burn's product.
        let materialise = !kiln_kernels::has_small_rows_matmul::<B>();
        let head_t = model.output_embedding().filter(|_| materialise).map(|e| {
            let device = e.device();
            let [v, d] = e.dims();
            let t: Vec<f32> = e
                .transpose()
                .into_data()
                .convert::<f32>()
                .to_vec()
                .expect("f32 weights");
            Tensor::<B, 2>::from_data(TensorData::new(t, [d, v]), &device)
        });
        Self {
            model,
            head_t,
            cache: KvCache::new(model.n_layer()),
            mask: vec![],
            next_pos: vec![],
        }
    }

    /// Continue from a prefill run elsewhere (e.g. with virtual tokens in front): adopt its cache, key
    /// mask and next position ids; return each row's next-token logits from its hidden states `h`.
    pub(crate) fn adopt(
        &mut self,
        cache: KvCache<B>,
        mask: Vec<Vec<u8>>,
        next_pos: Vec<i64>,
        h: Tensor<B, 3>,
    ) -> Vec<Vec<f32>> {
        self.cache = cache;
        self.mask = mask;
        self.next_pos = next_pos;
        self.last_logits(h)
    }

    fn last_logits(&self, h: Tensor<B, 3>) -> Vec<Vec<f32>> {
        let [b, s, d] = h.dims();
        let last = h.slice([0..b, s - 1..s, 0..d]);
        // One [b, d] × [d, vocab] product: the head is read once for all rows (a rank-3 product would be one
        // per row, re-reading the 154 MB GPT-2 head per beam).
        let logits = match &self.head_t {
            Some(w) => last.reshape([b, d]).matmul(w.clone()),
            None => {
                let l = self.model.logits(last);
                let v = l.dims()[2];
                l.reshape([b, v])
            }
        };
        rows_f32(logits)
    }
}

impl<B: Backend, M: CausalLm<B>> DecodeSession for CausalSession<'_, B, M> {
    fn vocab_size(&self) -> Option<usize> {
        Some(self.model.vocab_size())
    }
    fn max_length(&self) -> Option<usize> {
        // A row's positions never exceed its length (padding takes none).
        Some(self.model.max_positions())
    }
    fn prefill(&mut self, rows: &[Vec<u32>], mask: &[Vec<u8>]) -> Result<Vec<Vec<f32>>> {
        let max = self.model.max_positions();
        if rows[0].len() > max {
            return Err(Error::Input(format!(
                "prompt of {} tokens exceeds the model's {max} positions",
                rows[0].len()
            )));
        }
        let device = self.model.device();
        self.cache = KvCache::new(self.model.n_layer());
        self.mask = mask.to_vec();
        // As `generate`: position ids are cumsum(mask) - 1, padding at 0.
        let positions = positions_from_mask::<B>(mask, 0, 0, &device);
        self.next_pos = mask
            .iter()
            .map(|r| r.iter().map(|&m| m as i64).sum::<i64>())
            .collect();
        let h = self.model.hidden(
            ids_tensor::<B>(rows, &device),
            positions,
            &self.mask,
            Some(&mut self.cache),
        );
        Ok(self.last_logits(h))
    }

    fn step(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        let max = self.model.max_positions() as i64;
        // The position table is the limit (padding and prefix keys take no positions).
        if self.next_pos.iter().any(|&p| p >= max) {
            return Err(Error::Input(format!(
                "generation reached the model's {max} positions"
            )));
        }
        let device = self.model.device();
        for m in self.mask.iter_mut() {
            m.push(1);
        }
        let n = tokens.len();
        let pos =
            Tensor::<B, 2, Int>::from_data(TensorData::new(self.next_pos.clone(), [n, 1]), &device);
        for p in self.next_pos.iter_mut() {
            *p += 1;
        }
        let rows: Vec<Vec<u32>> = tokens.iter().map(|&t| vec![t]).collect();
        let h = self.model.hidden(
            ids_tensor::<B>(&rows, &device),
            pos,
            &self.mask,
            Some(&mut self.cache),
        );
        Ok(self.last_logits(h))
    }

    fn select(&mut self, idx: &[usize]) -> Result<()> {
        if idx.iter().any(|&i| i >= self.mask.len()) {
            return Err(Error::Input("beam index out of range".into()));
        }
        self.cache.select(idx);
        self.mask = idx.iter().map(|&i| self.mask[i].clone()).collect();
        self.next_pos = idx.iter().map(|&i| self.next_pos[i]).collect();
        Ok(())
    }
}
