//! Pieces shared by every architecture: multi-head attention over `[batch, heads, seq, head_dim]`,
//! additive masks built from padding masks, and the per-layer key/value cache.

use burn::prelude::*;
use burn::tensor::activation::softmax;

/// The value added to masked attention scores (HF fills with the dtype's minimum; a large finite value
/// gives the same probabilities without overflowing to NaN on fully masked rows).
pub const MASKED: f32 = -1.0e9;

/// Logits `[b, s, vocab]` through a tied embedding `[vocab, d]`: `hidden · Eᵀ` as one 2-D product over all
/// `b·s` rows (burn 0.21 runs a rank-3 product as one product per batch row, re-packing the weight each time).
pub fn tied_head<B: Backend>(hidden: Tensor<B, 3>, embedding: Tensor<B, 2>) -> Tensor<B, 3> {
    let [b, s, d] = hidden.dims();
    let v = embedding.dims()[0];
    hidden
        .reshape([b * s, d])
        .matmul(embedding.transpose())
        .reshape([b, s, v])
}

/// `[b, s, h*d]` → `[b, h, s, d]`.
pub fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [b, s, hd] = x.dims();
    x.reshape([b, s, heads, hd / heads]).swap_dims(1, 2)
}

/// `[b, h, s, d]` → `[b, s, h*d]`.
pub fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, h, s, d] = x.dims();
    x.swap_dims(1, 2).reshape([b, s, h * d])
}

/// `softmax(q kᵀ · scale + bias) v`; `bias` broadcasts to `[b, h, sq, sk]`.
///
/// On a training backend (`Autodiff<Flex | NdArray | Cuda>`) this is kiln-kernels' fused attention, whose backward
/// recomputes the probabilities instead of keeping the `[b, h, sq, sk]` tensors of every layer until the backward
/// pass; inference backends run the burn ops below.
pub fn attend<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: Option<f64>,
    bias: Option<Tensor<B, 4>>,
) -> Tensor<B, 4> {
    let (q, k, v, bias) =
        match kiln_kernels::try_fused_attention(q, k, v, bias, scale.unwrap_or(1.0)) {
            Ok(out) => return out,
            Err(inputs) => inputs,
        };
    let mut scores = q.matmul(k.swap_dims(2, 3));
    if let Some(s) = scale {
        scores = scores.mul_scalar(s);
    }
    if let Some(b) = bias {
        scores = scores + b;
    }
    softmax(scores, 3).matmul(v)
}

/// An additive mask `[b, 1, sq, sk]` from a key padding mask (`1` = attend) and, when `causal`, the causal
/// constraint that query `i` (at absolute position `past + i`) sees keys `≤ past + i`.
pub fn additive_mask<B: Backend>(
    key_mask: &[Vec<u8>],
    sq: usize,
    causal: bool,
    device: &B::Device,
) -> Tensor<B, 4> {
    let b = key_mask.len();
    let sk = key_mask.first().map_or(0, |r| r.len());
    let past = sk - sq;
    let mut data = vec![0f32; b * sq * sk];
    for (bi, row) in key_mask.iter().enumerate() {
        for i in 0..sq {
            for j in 0..sk {
                let visible = row[j] != 0 && (!causal || j <= past + i);
                if !visible {
                    data[(bi * sq + i) * sk + j] = MASKED;
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [b, 1, sq, sk]), device)
}

/// Keys and values of one attention layer for the tokens seen so far, `[b, h, t, d]`.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    /// Keys, `[batch, heads, tokens, head_dim]`.
    pub k: Tensor<B, 4>,
    /// Values, `[batch, heads, tokens, head_dim]`.
    pub v: Tensor<B, 4>,
}

/// One [`LayerCache`] per layer. Grows with `cat` (measured faster than a preallocated buffer with
/// `slice_assign` on burn 0.21's flex backend).
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    /// Per layer, the keys/values cached so far; `None` until the layer has run once.
    pub layers: Vec<Option<LayerCache<B>>>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for a model with `n_layers` layers.
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![None; n_layers],
        }
    }

    /// Append this step's keys/values to layer `i` and return the full keys/values.
    pub fn extend(
        &mut self,
        i: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let (k, v) = match self.layers[i].take() {
            None => (k, v),
            Some(c) => (Tensor::cat(vec![c.k, k], 2), Tensor::cat(vec![c.v, v], 2)),
        };
        self.layers[i] = Some(LayerCache {
            k: k.clone(),
            v: v.clone(),
        });
        (k, v)
    }

    /// Keep rows `idx` (beam reordering / expansion).
    pub fn select(&mut self, idx: &[usize]) {
        let Some(Some(first)) = self.layers.first() else {
            return;
        };
        let device = first.k.device();
        let ids: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
        let t = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [idx.len()]), &device);
        for l in self.layers.iter_mut().flatten() {
            l.k = l.k.clone().select(0, t.clone());
            l.v = l.v.clone().select(0, t.clone());
        }
    }

    /// Tokens cached so far.
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some(c)) => c.k.dims()[2],
            _ => 0,
        }
    }

    /// Whether no token is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An error naming the first id in `rows` at or beyond `vocab` (`what` says which input), so that no
/// out-of-range index from user data reaches a backend's embedding gather.
pub fn check_ids(rows: &[Vec<u32>], vocab: usize, what: &str) -> crate::Result<()> {
    for (r, row) in rows.iter().enumerate() {
        if let Some(&t) = row.iter().find(|&&t| t as usize >= vocab) {
            return Err(crate::Error::Input(format!(
                "{what} row {r}: token id {t} is outside the model's vocabulary of {vocab}"
            )));
        }
    }
    Ok(())
}

/// An `[b, s]` Int tensor from rows of ids.
pub fn ids_tensor<B: Backend>(rows: &[Vec<u32>], device: &B::Device) -> Tensor<B, 2, Int> {
    let b = rows.len();
    let s = rows.first().map_or(0, |r| r.len());
    let data: Vec<i64> = rows
        .iter()
        .flat_map(|r| r.iter().map(|&x| x as i64))
        .collect();
    Tensor::from_data(TensorData::new(data, [b, s]), device)
}

/// Rows of a float tensor `[b, n]` as vectors.
pub fn rows_f32<B: Backend>(t: Tensor<B, 2>) -> Vec<Vec<f32>> {
    let [b, n] = t.dims();
    let v: Vec<f32> = t.into_data().convert::<f32>().to_vec().expect("f32 tensor");
    (0..b).map(|i| v[i * n..(i + 1) * n].to_vec()).collect()
}

/// Position ids from a padding mask: `cumsum(mask) - 1 + offset`, padding at `pad + offset`
/// (`generate` uses pad 0 for GPT-2; OPT's forward uses -1).
pub fn positions_from_mask<B: Backend>(
    mask: &[Vec<u8>],
    pad: i64,
    offset: i64,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let rows: Vec<Vec<i64>> = mask
        .iter()
        .map(|r| {
            let mut c = 0i64;
            r.iter()
                .map(|&m| {
                    c += m as i64;
                    if m == 0 {
                        pad + offset
                    } else {
                        c - 1 + offset
                    }
                })
                .collect()
        })
        .collect();
    let b = rows.len();
    let s = rows.first().map_or(0, |r| r.len());
    Tensor::from_data(TensorData::new(rows.concat(), [b, s]), device)
}

/// [`attend`] with dropout on the attention probabilities (BERT's `attention_probs_dropout_prob`). burn's
/// `Dropout` is the identity outside autodiff, so at inference this equals [`attend`].
pub fn attend_with_dropout<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: Option<f64>,
    bias: Option<Tensor<B, 4>>,
    dropout: &burn::nn::Dropout,
) -> Tensor<B, 4> {
    // Without dropout (inference, or a probability of 0) this is `attend`, with its fused kernels.
    if dropout.prob == 0.0 || !B::ad_enabled(&q.device()) {
        return attend(q, k, v, scale, bias);
    }
    let mut scores = q.matmul(k.swap_dims(2, 3));
    if let Some(s) = scale {
        scores = scores.mul_scalar(s);
    }
    if let Some(b) = bias {
        scores = scores + b;
    }
    dropout.forward(softmax(scores, 3)).matmul(v)
}
