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
    let rows = hidden.reshape([b * s, d]);
    let logits = match kiln_kernels::try_small_rows_matmul(rows, embedding.transpose()) {
        Ok(l) => l,
        Err((rows, et)) => match kiln_kernels::try_matmul(rows, et) {
            Ok(l) => l,
            Err((rows, et)) => rows.matmul(et),
        },
    };
    logits.reshape([b, s, v])
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

/// Self-attention keys and values of every layer for the tokens seen so far, in buffers `[b, h, capacity, d]`
/// that grow by doubling: a decode step writes its one position in place (`slice_assign` on a buffer nobody
/// else holds) and attention reads the filled part as a view, so a step allocates nothing proportional to the
/// cache (`cat` copied the whole cache of every layer on every step). Beam search's reordering (`select`) still
/// copies, as transformers' `_reorder_cache` does.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<Growing<B>>>,
}

/// `value` `[b, h, n, d]` into `buf` `[b, h, cap, d]` at positions `at..at + n`: in place on flex (kiln-kernels),
/// `slice_assign` elsewhere.
fn write_positions<B: Backend>(buf: Tensor<B, 4>, at: usize, value: Tensor<B, 4>) -> Tensor<B, 4> {
    match kiln_kernels::try_write_positions(buf, at, value) {
        Ok(t) => t,
        Err((buf, value)) => {
            let [b, h, n, d] = value.dims();
            buf.slice_assign([0..b, 0..h, at..at + n, 0..d], value)
        }
    }
}

/// One layer's buffers and how many positions hold tokens.
#[derive(Debug, Clone)]
struct Growing<B: Backend> {
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    len: usize,
}

/// Positions a new buffer holds at least (decoding 64 tokens then grows once).
const MIN_CAPACITY: usize = 64;

impl<B: Backend> KvCache<B> {
    /// An empty cache for a model with `n_layers` layers.
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![None; n_layers],
        }
    }

    /// Append this step's keys/values `[b, h, new, d]` to layer `i` and return the keys/values of every cached
    /// token (views of the buffers; drop them before the next call, or that call copies the buffer).
    pub fn extend(
        &mut self,
        i: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [b, h, new, d] = k.dims();
        let dv = v.dims()[3];
        if B::ad_enabled(&k.device()) {
            // Training through a cache (prefix tuning's virtual tokens): `cat`, whose backward is a slice,
            // and no spare capacity for the autodiff graph to keep.
            let (k, v) = match self.layers[i].take() {
                None => (k, v),
                Some(g) => (
                    Tensor::cat(vec![g.k.slice([0..b, 0..h, 0..g.len, 0..d]), k], 2),
                    Tensor::cat(vec![g.v.slice([0..b, 0..h, 0..g.len, 0..dv]), v], 2),
                ),
            };
            self.set(i, k.clone(), v.clone());
            return (k, v);
        }
        let device = k.device();
        // A buffer of `cap` positions with the first `len` of `t` copied in.
        let grown = |t: Tensor<B, 4>, len: usize, cap: usize| {
            let w = t.dims()[3];
            let fresh = Tensor::zeros([b, h, cap, w], &device);
            write_positions(fresh, 0, t.slice([0..b, 0..h, 0..len, 0..w]))
        };
        let (len, mut kb, mut vb) = match self.layers[i].take() {
            Some(g) if g.k.dims()[2] >= g.len + new => (g.len, g.k, g.v),
            Some(g) => {
                // Grow: a buffer of twice the capacity needed, the filled part copied over.
                let cap = ((g.len + new) * 2).max(MIN_CAPACITY);
                (g.len, grown(g.k, g.len, cap), grown(g.v, g.len, cap))
            }
            None => {
                let cap = (new * 2).max(MIN_CAPACITY);
                (
                    0,
                    Tensor::zeros([b, h, cap, d], &device),
                    Tensor::zeros([b, h, cap, dv], &device),
                )
            }
        };
        let end = len + new;
        kb = write_positions(kb, len, k);
        vb = write_positions(vb, len, v);
        let out = (
            kb.clone().slice([0..b, 0..h, 0..end, 0..d]),
            vb.clone().slice([0..b, 0..h, 0..end, 0..dv]),
        );
        self.layers[i] = Some(Growing {
            k: kb,
            v: vb,
            len: end,
        });
        out
    }

    /// Layer `i` holds exactly these keys/values `[b, h, t, d]` (a prefix's virtual tokens).
    pub fn set(&mut self, i: usize, k: Tensor<B, 4>, v: Tensor<B, 4>) {
        let len = k.dims()[2];
        self.layers[i] = Some(Growing { k, v, len });
    }

    /// Keep rows `idx` (beam reordering / expansion).
    pub fn select(&mut self, idx: &[usize]) {
        let Some(Some(first)) = self.layers.first() else {
            return;
        };
        let device = first.k.device();
        let ids: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
        let t = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [idx.len()]), &device);
        // In place on flex (only the rows that change, only the filled positions); `select` copies the buffer.
        let reorder = |buf: Tensor<B, 4>, len: usize| {
            kiln_kernels::try_select_rows(buf, idx, len)
                .unwrap_or_else(|buf| buf.select(0, t.clone()))
        };
        // Each layer taken out of its slot, so that its buffers are not shared while they are reordered.
        for slot in self.layers.iter_mut() {
            if let Some(g) = slot.take() {
                *slot = Some(Growing {
                    k: reorder(g.k, g.len),
                    v: reorder(g.v, g.len),
                    len: g.len,
                });
            }
        }
    }

    /// Tokens cached so far.
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some(c)) => c.len,
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn step<B: Backend>(b: usize, t: usize, seed: usize, dev: &B::Device) -> Tensor<B, 4> {
        let n = b * 2 * t * 3;
        let x: Vec<f32> = (0..n).map(|i| ((i * 31 + seed * 17) % 97) as f32).collect();
        // A head-swapped view, as split_heads hands the cache its keys.
        Tensor::<B, 4>::from_data(TensorData::new(x, [b, t, 2, 3]), dev).swap_dims(1, 2)
    }

    /// Step by step (prompt, then single tokens past the first growth, a beam reorder in between), the cache
    /// returns exactly the concatenation of everything written (in place on flex).
    fn cache_equals_concatenation<B: Backend>() {
        let dev = Default::default();
        let mut cache = KvCache::<B>::new(1);
        let mut all: Vec<Tensor<B, 4>> = Vec::new();
        for (i, t) in [5usize]
            .into_iter()
            .chain(std::iter::repeat_n(1, 140))
            .enumerate()
        {
            let (k, v) = (step::<B>(2, t, i, &dev), step::<B>(2, t, i + 1000, &dev));
            let (ck, cv) = cache.extend(0, k.clone(), v.clone());
            all.push(k);
            let want = Tensor::cat(all.clone(), 2);
            assert_eq!(ck.into_data(), want.into_data(), "keys after step {i}");
            assert_eq!(cv.dims(), [2, 2, cache.len(), 3]);
            if i == 70 {
                // Swap the two rows (a beam reorder): the history follows.
                cache.select(&[1, 0]);
                let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(vec![1i64, 0], [2]), &dev);
                all = vec![Tensor::cat(all, 2).select(0, idx)];
            }
        }
        assert_eq!(cache.len(), 145);
    }

    #[test]
    fn kv_cache_equals_concatenation() {
        cache_equals_concatenation::<Flex>();
    }
}
