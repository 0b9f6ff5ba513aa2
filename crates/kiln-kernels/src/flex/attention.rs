//! Attention on flex: the products through flex's strided GEMM (q, k, v may be head-swapped views, no copy),
//! the softmax rows in one multi-threaded, vectorised pass over the scores buffer, in place (scale, bias with its
//! broadcast read through strides, max, exp, sum, normalise), and the backward's rows the same way — where the
//! composed version made five full passes, one of them a single-threaded broadcast add.

use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{DType, TensorData, TensorMetadata};
use rayon::prelude::*;

use super::rows::{softmax_grad_row, softmax_row};

/// Query rows per rayon task (a row is `sk` floats; 512 keys → 2 KiB).
const ROWS: usize = 16;

/// Where one query row's bias lives: the bias's storage, its offset per (batch, head, query) index and the stride
/// along the keys (0 when the bias broadcasts over them).
struct BiasRows<'a> {
    data: &'a [f32],
    start: usize,
    strides: [usize; 3],
    key_stride: usize,
    heads: usize,
    queries: usize,
}

impl<'a> BiasRows<'a> {
    /// `None` when the bias cannot be read in place (another dtype, a negative stride, a shape that does not
    /// broadcast to `[b, h, sq, sk]`): the caller takes the composed path.
    fn new(bias: &'a FlexTensor, dims: [usize; 4]) -> Option<Self> {
        if bias.dtype() != DType::F32 {
            return None;
        }
        let layout = bias.layout();
        let shape = layout.shape();
        if shape.num_dims() != 4 {
            return None;
        }
        let mut strides = [0usize; 4];
        for i in 0..4 {
            let (n, s) = (shape[i], layout.strides()[i]);
            if n != 1 && n != dims[i] {
                return None;
            }
            if n != 1 {
                strides[i] = usize::try_from(s).ok()?;
            }
        }
        let data: &[f32] = bias.storage();
        // The last element read must be inside the buffer.
        let last =
            layout.start_offset() + (0..4).map(|i| strides[i] * (dims[i] - 1)).sum::<usize>();
        if dims.iter().any(|&d| d == 0) || last >= data.len() {
            return None;
        }
        Some(Self {
            data,
            start: layout.start_offset(),
            strides: [strides[0], strides[1], strides[2]],
            key_stride: strides[3],
            heads: dims[1],
            queries: dims[2],
        })
    }

    /// The bias of flat query row `r` (over `[b, h, sq]`) and its key stride.
    fn row(&self, r: usize) -> (&'a [f32], usize) {
        let (i, bh) = (r % self.queries, r / self.queries);
        let (hi, bi) = (bh % self.heads, bh / self.heads);
        let off = self.start + bi * self.strides[0] + hi * self.strides[1] + i * self.strides[2];
        (&self.data[off..], self.key_stride)
    }
}

fn dims4(t: &FlexTensor) -> Option<[usize; 4]> {
    let s = t.shape();
    (s.num_dims() == 4).then(|| [s[0], s[1], s[2], s[3]])
}

/// The inputs the kernel handles: f32 everywhere, rank 4, consistent shapes. Anything else takes the composed
/// path (which reports shape errors the way burn does).
fn supported(q: &FlexTensor, k: &FlexTensor, v: &FlexTensor) -> Option<[usize; 4]> {
    if [q, k, v].iter().any(|t| t.dtype() != DType::F32) {
        return None;
    }
    let (qd, kd, vd) = (dims4(q)?, dims4(k)?, dims4(v)?);
    let [b, h, sq, d] = qd;
    let sk = kd[2];
    (kd == [b, h, sk, d] && vd[..3] == [b, h, sk]).then_some([b, h, sq, sk])
}

/// `q·kᵀ` `[b, h, sq, sk]`, freshly allocated (so the rows can be rewritten in place).
fn scores(q: FlexTensor, k: FlexTensor) -> FlexTensor {
    let mut s = Flex::float_matmul(q, Flex::float_swap_dims(k, 2, 3));
    if !s.is_unique() || !s.is_contiguous() {
        s = FlexTensor::from_data(s.into_data());
    }
    s
}

/// Forward: (output `[b, h, sq, dv]`, log-sum-exp `[b, h, sq, 1]`), or the inputs back when unsupported.
#[allow(clippy::type_complexity)]
pub fn forward(
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    bias: Option<FlexTensor>,
    scale: f64,
) -> Result<(FlexTensor, FlexTensor), (FlexTensor, FlexTensor, FlexTensor, Option<FlexTensor>)> {
    let Some(dims) = supported(&q, &k, &v) else {
        return Err((q, k, v, bias));
    };
    if let Some(b) = &bias {
        if BiasRows::new(b, dims).is_none() {
            return Err((q, k, v, bias));
        }
    }
    let [b, h, sq, sk] = dims;
    let rows = b * h * sq;
    let mut s = scores(q, k);
    let mut lse = vec![0f32; rows];
    {
        let bias_rows = bias.as_ref().and_then(|t| BiasRows::new(t, dims));
        let buf: &mut [f32] = s.storage_mut();
        let scale = scale as f32;
        buf[..rows * sk]
            .par_chunks_mut(ROWS * sk.max(1))
            .zip(lse.par_chunks_mut(ROWS))
            .enumerate()
            .for_each(|(c, (x, lse))| {
                for (k, (x, l)) in x.chunks_mut(sk.max(1)).zip(lse.iter_mut()).enumerate() {
                    let r = c * ROWS + k;
                    *l = softmax_row(x, bias_rows.as_ref().map(|br| br.row(r)), scale);
                }
            });
    }
    let out = Flex::float_matmul(s, v);
    Ok((
        out,
        FlexTensor::from_data(TensorData::new(lse, vec![b, h, sq, 1])),
    ))
}

/// Backward: (dq, dk, dv, the scores' gradient when `bias_grad`), or `None` when unsupported (the caller takes
/// the composed path with the same inputs, which it still holds).
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn backward(
    dout: &FlexTensor,
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    bias: Option<&FlexTensor>,
    scale: f64,
    lse: &FlexTensor,
    bias_grad: bool,
) -> Option<(
    FloatTensor<Flex>,
    FloatTensor<Flex>,
    FloatTensor<Flex>,
    Option<FloatTensor<Flex>>,
)> {
    let dims = supported(q, k, v)?;
    let [b, h, sq, sk] = dims;
    let rows = b * h * sq;
    if dout.dtype() != DType::F32 || dims4(dout)? != [b, h, sq, v.shape()[3]] {
        return None;
    }
    if lse.dtype() != DType::F32 || lse.shape().num_elements() != rows {
        return None;
    }
    let bias_rows = match bias {
        Some(t) => Some(BiasRows::new(t, dims)?),
        None => None,
    };
    let lse = lse.to_contiguous();
    let lse: &[f32] = &lse.storage::<f32>()[lse.layout().start_offset()..][..rows];
    let mut p = scores(q.clone(), k.clone());
    let mut dp = Flex::float_matmul(dout.clone(), Flex::float_swap_dims(v.clone(), 2, 3));
    if !dp.is_unique() || !dp.is_contiguous() {
        dp = FlexTensor::from_data(dp.into_data());
    }
    // The bias's gradient is the unscaled dS; otherwise the scale goes into dS here (one pass fewer).
    let out_scale = if bias_grad { 1.0 } else { scale as f32 };
    {
        let pb: &mut [f32] = p.storage_mut();
        let gb: &mut [f32] = dp.storage_mut();
        let (scale, w) = (scale as f32, sk.max(1));
        pb[..rows * sk]
            .par_chunks_mut(ROWS * w)
            .zip(gb[..rows * sk].par_chunks_mut(ROWS * w))
            .enumerate()
            .for_each(|(c, (ps, gs))| {
                for (k, (p, g)) in ps.chunks_mut(w).zip(gs.chunks_mut(w)).enumerate() {
                    let r = c * ROWS + k;
                    let bias = bias_rows.as_ref().map(|br| br.row(r));
                    softmax_grad_row(p, g, bias, scale, lse[r], out_scale);
                }
            });
    }
    let dv = Flex::float_matmul(Flex::float_swap_dims(p, 2, 3), dout.clone());
    let ds = dp;
    let mut dq = Flex::float_matmul(ds.clone(), k.clone());
    let mut dk = Flex::float_matmul(Flex::float_swap_dims(ds.clone(), 2, 3), q.clone());
    if bias_grad && scale != 1.0 {
        dq = Flex::float_mul_scalar(dq, scale.into());
        dk = Flex::float_mul_scalar(dk, scale.into());
    }
    Some((dq, dk, dv, bias_grad.then_some(ds)))
}
