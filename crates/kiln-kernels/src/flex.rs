//! The flex kernels: the ops on the tensors' raw f32 buffers, rayon over rows (flex's own thread pool).

use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorData, TensorMetadata};
use rayon::prelude::*;

use crate::{composed, KernelOps};

/// Rows per rayon task (a vocabulary row is tens of kilobytes).
const ROWS: usize = 4;

fn f32_tensor(v: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}

impl KernelOps for Flex {
    fn cross_entropy_fwd(
        logits: FloatTensor<Self>,
        targets: &[i64],
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if logits.dtype() != DType::F32 {
            return composed::cross_entropy_fwd::<Self>(logits, targets);
        }
        let x = logits.to_contiguous();
        let shape = x.shape();
        let (n, v) = (shape[0], shape[1]);
        let xs: &[f32] = &x.storage::<f32>()[..n * v];
        let mut loss = vec![0f32; n];
        let mut lse = vec![0f32; n];
        loss.par_chunks_mut(ROWS)
            .zip(lse.par_chunks_mut(ROWS))
            .enumerate()
            .for_each(|(c, (loss, lse))| {
                for (k, (l, s)) in loss.iter_mut().zip(lse.iter_mut()).enumerate() {
                    let r = c * ROWS + k;
                    let row = &xs[r * v..(r + 1) * v];
                    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    let sum: f32 = row.iter().map(|&x| (x - m).exp()).sum();
                    *s = m + sum.ln();
                    let t = targets[r];
                    *l = if t >= 0 { *s - row[t as usize] } else { 0.0 };
                }
            });
        (f32_tensor(loss, vec![n]), f32_tensor(lse, vec![n]))
    }

    fn cross_entropy_bwd(
        dloss: FloatTensor<Self>,
        logits: FloatTensor<Self>,
        targets: &[i64],
        lse: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        if [&dloss, &logits, &lse]
            .iter()
            .any(|t| t.dtype() != DType::F32)
        {
            return composed::cross_entropy_bwd::<Self>(dloss, logits, targets, lse);
        }
        let x = logits.to_contiguous();
        let shape = x.shape();
        let (n, v) = (shape[0], shape[1]);
        let xs: &[f32] = &x.storage::<f32>()[..n * v];
        let d = dloss.to_contiguous();
        let d: &[f32] = &d.storage::<f32>()[..n];
        let s = lse.to_contiguous();
        let s: &[f32] = &s.storage::<f32>()[..n];
        let mut g = vec![0f32; n * v];
        g.par_chunks_mut(v).enumerate().for_each(|(r, g)| {
            let t = targets[r];
            if t < 0 {
                return;
            }
            let (dr, sr) = (d[r], s[r]);
            for (g, &x) in g.iter_mut().zip(&xs[r * v..(r + 1) * v]) {
                *g = dr * (x - sr).exp();
            }
            g[t as usize] -= dr;
        });
        f32_tensor(g, vec![n, v])
    }
}
