//! Export a model's weights under Hugging Face names (e.g. after `merge_and_unload`), so that
//! transformers' `from_pretrained` loads the directory.

use std::collections::BTreeMap;
use std::path::Path;

use burn::prelude::*;

use crate::io::{write_tensors, RawTensor};
use crate::model::{read_base_params, PeftModel};
use crate::Result;

/// Write every base parameter of `model` to `path` (`model.safetensors`) with the checkpoint's names and
/// layouts: `nn.Linear` weights back to `[out, in]` (GPT-2's Conv1D stays `[in, out]`).
pub fn save_hf_weights<B: Backend, M: PeftModel<B>>(model: &M, path: &Path) -> Result<usize> {
    let conv1d = model.conv1d();
    let mut out = BTreeMap::new();
    for (p, data) in read_base_params(model, &mut |_| true) {
        let v: Vec<f32> = data.convert::<f32>().to_vec().unwrap_or_default();
        let t = if p.linear_weight && !conv1d && p.shape.len() == 2 {
            let (rows, cols) = (p.shape[0], p.shape[1]);
            let mut t = vec![0f32; v.len()];
            for r in 0..rows {
                for c in 0..cols {
                    t[c * rows + r] = v[r * cols + c];
                }
            }
            RawTensor::new(vec![cols, rows], t)
        } else {
            RawTensor::new(p.shape.clone(), v)
        };
        out.insert(p.path, t);
    }
    let n = out.len();
    write_tensors(path, &out)?;
    Ok(n)
}
