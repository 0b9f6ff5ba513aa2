//! Loading Hugging Face safetensors checkpoints into kiln's burn modules (through burn-store).
//!
//! kiln's modules mirror the checkpoint's names (`h.0.attn.c_attn.weight`, …), so loading needs only
//! per-architecture prefix remaps. Three adaptations happen on the fly, lazily, tensor by tensor (the file is
//! memory-mapped by burn-store, so a checkpoint is never held twice in memory):
//! - `nn.Linear` weights (`[out, in]`) are transposed into [`kiln_peft::PeftLinear`]'s `[in, out]`;
//! - LayerNorm `weight`/`bias` become burn's `gamma`/`beta`;
//! - fp16 / bf16 tensors are cast to f32.
//!
//! Before burn-store sees a file, its header is validated here so that a truncated or lying file gives an
//! [`Error::Safetensors`] naming the file rather than a panic deep inside a loader.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use burn::prelude::*;
use burn::store::{
    ApplyError, ModuleAdapter, ModuleSnapshot, PyTorchToBurnAdapter, TensorSnapshot,
    TensorSnapshotError,
};
use burn::tensor::{DType, TensorData};

use crate::load::error::{Error, Result};

/// What a load did besides filling the module.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Tensors written into the module.
    pub applied: usize,
    /// Tensors in the files that the model has no place for (reported, not fatal).
    pub unused: Vec<String>,
    /// Module parameters the files did not provide but that the architecture allows to be absent
    /// (e.g. a fresh classification head); they keep their initial values.
    pub initialised: Vec<String>,
}

/// How to map one architecture's checkpoint onto its kiln module.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// `(regex, replacement)` applied to checkpoint keys, in order.
    pub remaps: Vec<(String, String)>,
    /// Module parameter paths (regexes) that may be missing from the checkpoint.
    pub optional: Vec<String>,
    /// Transpose `nn.Linear` weights (`[out, in]` → `[in, out]`). False for GPT-2, whose `Conv1D`
    /// weights are already `[in, out]`.
    pub transpose_linear: bool,
}

/// The weight files of a checkpoint directory: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json`. Pickle files are refused unless `allow_pickle`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        return shards_from_index(&index);
    }
    for pickle in ["pytorch_model.bin", "pytorch_model.bin.index.json"] {
        if dir.join(pickle).is_file() {
            return Err(Error::Pickle {
                path: dir.join(pickle),
            });
        }
    }
    Err(Error::MissingFile {
        path: single,
        hint: " (nor model.safetensors.index.json)".into(),
    })
}

/// The shard files named in a `model.safetensors.index.json`, each checked to exist.
pub fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: index.to_path_buf(),
        source,
    })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::field(index, "weight_map", "missing or not an object"))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files = BTreeSet::new();
    for (key, file) in map {
        let file = file.as_str().ok_or_else(|| {
            Error::field(index, &format!("weight_map.{key}"), "expected a file name")
        })?;
        if file.contains("..") || file.starts_with('/') {
            return Err(Error::field(
                index,
                &format!("weight_map.{key}"),
                format!("unsafe shard path `{file}`"),
            ));
        }
        files.insert(file.to_string());
    }
    if files.is_empty() {
        return Err(Error::field(index, "weight_map", "names no shard"));
    }
    let mut out = Vec::new();
    for f in files {
        let p = dir.join(&f);
        if !p.is_file() {
            return Err(Error::MissingFile {
                path: p,
                hint: format!(" (shard named by {})", index.display()),
            });
        }
        out.push(p);
    }
    Ok(out)
}

/// A tensor's name, dtype and shape, from a validated header.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// The tensor's key in the file (e.g. `transformer.h.0.attn.c_attn.weight`).
    pub name: String,
    /// The safetensors dtype name (`F32`, `F16`, `BF16`, `F64`, `I64`, …).
    pub dtype: String,
    /// The tensor's shape, as stored (PyTorch layout).
    pub shape: Vec<usize>,
    /// Byte range of the tensor's data in the file.
    pub start: u64,
    /// End of the byte range (exclusive), as an absolute file offset.
    pub end: u64,
}

/// Validate a safetensors file's header against its size; return the tensors it declares.
pub fn inspect_safetensors(path: &Path) -> Result<Vec<TensorInfo>> {
    use std::io::Read;
    let bad = |msg: String| Error::Safetensors {
        path: path.to_path_buf(),
        msg,
    };
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut len8 = [0u8; 8];
    f.read_exact(&mut len8)
        .map_err(|_| bad(format!("file is {file_len} bytes, too short for a header")))?;
    let header_len = u64::from_le_bytes(len8);
    if header_len > file_len.saturating_sub(8) || header_len > 100_000_000 {
        return Err(bad(format!(
            "header claims {header_len} bytes but the file has {file_len}"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header)
        .map_err(|e| bad(format!("reading header: {e}")))?;
    check_header(path, file_len, &header)
}

/// [`inspect_safetensors`] on a file's bytes held in memory (`path` only names it in errors).
pub fn inspect_safetensors_bytes(path: &Path, bytes: &[u8]) -> Result<Vec<TensorInfo>> {
    let bad = |msg: String| Error::Safetensors {
        path: path.to_path_buf(),
        msg,
    };
    let file_len = bytes.len() as u64;
    let len8: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad(format!("file is {file_len} bytes, too short for a header")))?;
    let header_len = u64::from_le_bytes(len8);
    if header_len > file_len.saturating_sub(8) || header_len > 100_000_000 {
        return Err(bad(format!(
            "header claims {header_len} bytes but the file has {file_len}"
        )));
    }
    check_header(path, file_len, &bytes[8..8 + header_len as usize])
}

/// Validate a header (`header.len()` bytes after the 8-byte length) against the file's total length.
fn check_header(path: &Path, file_len: u64, header: &[u8]) -> Result<Vec<TensorInfo>> {
    let bad = |msg: String| Error::Safetensors {
        path: path.to_path_buf(),
        msg,
    };
    let header_len = header.len() as u64;
    let v: serde_json::Value = serde_json::from_slice(header)
        .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("header is not a JSON object".into()))?;
    let data_len = file_len - 8 - header_len;
    let mut out = Vec::new();
    let mut spans = Vec::new();
    for (name, t) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dtype = t
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad(format!("tensor `{name}`: no dtype")))?;
        let shape: Vec<usize> = t
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|a| {
                a.iter()
                    .map(|x| x.as_u64().map(|x| x as usize))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| bad(format!("tensor `{name}`: bad shape")))?;
        let offs = t
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|x| x.as_u64()).collect::<Option<Vec<_>>>())
            .filter(|a| a.len() == 2)
            .ok_or_else(|| bad(format!("tensor `{name}`: bad data_offsets")))?;
        let elem = match dtype {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
            other => return Err(bad(format!("tensor `{name}`: unknown dtype {other}"))),
        };
        let numel = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        let expected = numel.and_then(|n| n.checked_mul(elem));
        if offs[1] < offs[0] || Some(offs[1] - offs[0]) != expected {
            return Err(bad(format!(
                "tensor `{name}`: data_offsets {offs:?} do not match shape {shape:?} of {dtype}"
            )));
        }
        if offs[1] > data_len {
            return Err(bad(format!(
                "tensor `{name}`: data ends at byte {} but the file holds only {data_len} bytes of data",
                offs[1]
            )));
        }
        spans.push((offs[0], offs[1]));
        let base = 8 + header_len;
        out.push(TensorInfo {
            name: name.clone(),
            dtype: dtype.to_string(),
            shape,
            start: base + offs[0],
            end: base + offs[1],
        });
    }
    spans.sort();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(bad("tensors overlap in the data section".into()));
        }
    }
    Ok(out)
}

/// burn's dtype for a safetensors dtype name (`None` for dtypes kiln never loads, e.g. fp8).
fn burn_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "F64" => DType::F64,
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "I64" => DType::I64,
        "I32" => DType::I32,
        "I16" => DType::I16,
        "I8" => DType::I8,
        "U64" => DType::U64,
        "U32" => DType::U32,
        "U16" => DType::U16,
        "U8" => DType::U8,
        "BOOL" => DType::U8,
        _ => return None,
    })
}

/// Casts fp16/bf16 to f32 and transposes `nn.Linear` weights for [`kiln_peft::PeftLinear`].
#[derive(Clone, Default)]
struct HfAdapter {
    transpose_linear: bool,
}

impl ModuleAdapter for HfAdapter {
    fn adapt(&self, s: &TensorSnapshot) -> TensorSnapshot {
        let is_half = matches!(s.dtype, DType::F16 | DType::BF16 | DType::F64);
        let is_linear_weight = self.transpose_linear
            && s.module_type().as_deref() == Some("Struct:PeftLinear")
            && s.path_stack
                .as_ref()
                .and_then(|p| p.last())
                .map(String::as_str)
                == Some("weight")
            && s.shape.num_dims() == 2;
        if !is_half && !is_linear_weight {
            return s.clone();
        }
        let data = s.clone_data_fn();
        let dims = s.shape.to_vec();
        // Never panic in here: burn-store applies adapters inside an unsafe in-place module map.
        let shape = if is_linear_weight {
            vec![dims[1], dims[0]]
        } else {
            dims
        };
        let dtype = if is_half { DType::F32 } else { s.dtype };
        let f = Rc::new(move || {
            let mut d: TensorData = data()?;
            if is_half {
                d = d.convert_dtype(DType::F32);
            }
            if is_linear_weight {
                let (rows, cols) = (d.shape[0], d.shape[1]);
                let v: Vec<f32> = d.convert::<f32>().to_vec().expect("f32 data");
                let mut t = vec![0f32; v.len()];
                for r in 0..rows {
                    for c in 0..cols {
                        t[c * rows + r] = v[r * cols + c];
                    }
                }
                d = TensorData::new(t, [cols, rows]);
            }
            Ok(d)
        });
        TensorSnapshot::from_closure(
            f,
            dtype,
            shape.into(),
            s.path_stack.clone().unwrap_or_default(),
            s.container_stack.clone().unwrap_or_default(),
            s.tensor_id.unwrap_or_default(),
        )
    }

    fn get_alternative_param_name(&self, param_name: &str, container_type: &str) -> Option<String> {
        PyTorchToBurnAdapter.get_alternative_param_name(param_name, container_type)
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// A module parameter as the loader sees it before loading: its shape (lazy, nothing initialised) and whether
/// it is a [`kiln_peft::PeftLinear`] weight (stored `[in, out]`, `[out, in]` in an `nn.Linear` checkpoint).
#[derive(Debug, Clone)]
struct ParamShape {
    shape: Vec<usize>,
    linear_weight: bool,
}

/// Every float parameter of `model` by path (norm parameters under both burn's `gamma`/`beta` and the
/// checkpoint's `weight`/`bias`), from the parameters' lazy shapes: visiting initialises nothing, unlike
/// burn-store's `collect`, which reads every value (and so fills a random initialisation of the whole model).
/// Also returns the backend's name (`B::name` of the parameters' device) and the number of parameter values.
fn param_shapes<B: Backend, M: Module<B>>(
    model: &M,
) -> (std::collections::HashMap<String, ParamShape>, String, u64) {
    struct V {
        path: Vec<String>,
        containers: Vec<String>,
        out: std::collections::HashMap<String, ParamShape>,
        backend: Option<String>,
        numel: u64,
    }
    impl<B: Backend> burn::module::ModuleVisitor<B> for V {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.push(name.to_string());
            self.containers.push(container_type.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
            self.containers.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            if self.backend.is_none() {
                self.backend = Some(B::name(&param.lazy_device()));
            }
            let p = self.path.join(".");
            let dims = param.lazy_shape().to_vec();
            self.numel = self
                .numel
                .saturating_add(dims.iter().fold(1u64, |a, &d| a.saturating_mul(d as u64)));
            let shape = ParamShape {
                shape: dims,
                linear_weight: D == 2
                    && self.path.last().map(String::as_str) == Some("weight")
                    && self
                        .containers
                        .iter()
                        .rev()
                        .find(|c| c.starts_with("Struct:") || c.starts_with("Enum:"))
                        .map(String::as_str)
                        == Some("Struct:PeftLinear"),
            };
            if let Some(base) = p.strip_suffix(".gamma") {
                self.out.insert(format!("{base}.weight"), shape.clone());
            }
            if let Some(base) = p.strip_suffix(".beta") {
                self.out.insert(format!("{base}.bias"), shape.clone());
            }
            self.out.insert(p, shape);
        }
    }
    let mut v = V {
        path: Vec::new(),
        containers: Vec::new(),
        out: Default::default(),
        backend: None,
        numel: 0,
    };
    model.visit(&mut v);
    (v.out, v.backend.unwrap_or_default(), v.numel)
}

/// Bytes of memory this process can still use: `MemAvailable` from `/proc/meminfo`, lowered to the cgroup's
/// remaining limit when there is one (a container). `None` where neither can be read (not Linux); the
/// `KILN_MEMORY_LIMIT` environment variable (bytes) overrides both, for tests and for users who want a cap.
pub fn available_memory() -> Option<u64> {
    if let Some(v) = std::env::var("KILN_MEMORY_LIMIT")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Some(v);
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb.saturating_mul(1024))
    });
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
    };
    // The cgroup's usage counts page cache it can drop (a checkpoint just downloaded or read): leave out its
    // inactive file pages, as a kubelet's working set does.
    let inactive_file = std::fs::read_to_string("/sys/fs/cgroup/memory.stat")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("inactive_file "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    let cgroup = match (
        read("/sys/fs/cgroup/memory.max"),
        read("/sys/fs/cgroup/memory.current"),
    ) {
        (Some(max), Some(cur)) => Some(max.saturating_sub(cur.saturating_sub(inactive_file))),
        _ => None,
    };
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Load every weight file into `model`, following `spec`. Missing parameters that `spec` does not allow
/// are an error naming them; unused checkpoint tensors are reported in the [`LoadReport`].
pub fn load_into<B: Backend, M: Module<B> + ModuleSnapshot<B>>(
    model: &mut M,
    files: &[PathBuf],
    spec: &LoadSpec,
) -> Result<LoadReport> {
    let optional: Vec<regex::Regex> = spec
        .optional
        .iter()
        .map(|r| regex::Regex::new(r).expect("valid optional regex"))
        .collect();
    let mut applied = BTreeSet::new();
    let mut unused = BTreeSet::new();
    let mut missing_all: Option<BTreeSet<String>> = None;
    let first = files.first().cloned().unwrap_or_default();
    // The module's parameters as their lazy shapes: nothing is initialised here (burn's parameters are
    // lazy; a parameter that the checkpoint provides is replaced by the loaded tensor without ever being
    // randomly initialised, and one it does not provide is initialised when first used).
    let (params, backend, numel) = param_shapes(model);
    let remaps: Vec<(regex::Regex, String)> = spec
        .remaps
        .iter()
        .map(|(f, t)| (regex::Regex::new(f).expect("valid remap regex"), t.clone()))
        .collect();
    let remap = |name: &str| {
        let mut key = name.to_string();
        for (re, to) in &remaps {
            key = re.replace_all(&key, to.as_str()).into_owned();
        }
        key
    };
    // Every header first, before any tensor is allocated: integer tensors on float parameters and shapes
    // that disagree with the config are errors naming the file and key.
    let mut headers = Vec::with_capacity(files.len());
    for file in files {
        // Each tensor with its key after the architecture's remaps (computed once, used again below).
        let infos: Vec<(TensorInfo, String)> = inspect_safetensors(file)?
            .into_iter()
            .map(|info| {
                let key = remap(&info.name);
                (info, key)
            })
            .collect();
        for (info, key) in &infos {
            let Some(p) = params.get(key) else { continue };
            if !matches!(info.dtype.as_str(), "F32" | "F16" | "BF16" | "F64") {
                return Err(Error::Dtype {
                    path: file.clone(),
                    key: info.name.clone(),
                    dtype: info.dtype.clone(),
                });
            }
            let transposed = spec.transpose_linear && p.linear_weight;
            let expected: Vec<usize> = if transposed {
                p.shape.iter().rev().copied().collect()
            } else {
                p.shape.clone()
            };
            if info.shape != expected {
                return Err(Error::ShapeMismatch {
                    path: file.clone(),
                    key: info.name.clone(),
                    expected,
                    found: info.shape.clone(),
                });
            }
        }
        headers.push(infos);
    }
    // The config's model, in bytes, against the memory there is (the parameters are f32 once loaded). Only for
    // the CPU backends: on a GPU the parameters live in device memory, which this does not see.
    let needed = numel.saturating_mul(4);
    let cpu = ["flex", "ndarray"]
        .iter()
        .any(|n| backend.to_lowercase().contains(n));
    if let Some(available) = available_memory().filter(|_| cpu) {
        if needed > available {
            let dir = first.parent().map(Path::to_path_buf).unwrap_or_default();
            return Err(Error::TooLarge {
                path: dir.join("config.json"),
                needed,
                available,
            });
        }
    }
    for (file, infos) in files.iter().zip(headers) {
        // One lazily read snapshot per tensor: each is read from the file (pread) only when burn-store applies
        // it, converted, and dropped, so peak memory is the model plus one tensor — a memory map of the whole
        // file would add the checkpoint's size again to the resident set while loading.
        let mut snapshots = Vec::with_capacity(infos.len());
        for (info, key) in &infos {
            let Some(dtype) = burn_dtype(&info.dtype) else {
                continue;
            };
            let (path, start, len, shape) = (
                file.clone(),
                info.start,
                (info.end - info.start) as usize,
                info.shape.clone(),
            );
            let read = Rc::new(move || {
                use std::io::{Read, Seek, SeekFrom};
                let io = |e: std::io::Error| {
                    TensorSnapshotError::IoError(format!("{}: {e}", path.display()))
                };
                let mut f = std::fs::File::open(&path).map_err(io)?;
                f.seek(SeekFrom::Start(start)).map_err(io)?;
                let mut bytes = vec![0u8; len];
                f.read_exact(&mut bytes).map_err(io)?;
                Ok(TensorData::from_bytes_vec(bytes, shape.clone(), dtype))
            });
            snapshots.push(TensorSnapshot::from_closure(
                read,
                dtype,
                info.shape.clone().into(),
                key.split('.').map(str::to_string).collect(),
                vec![],
                burn::module::ParamId::new(),
            ));
        }
        let adapter: Box<dyn ModuleAdapter> = Box::new(HfAdapter {
            transpose_linear: spec.transpose_linear,
        });
        let res = model.apply(snapshots, None, Some(adapter), false);
        for e in &res.errors {
            return Err(match e {
                ApplyError::ShapeMismatch {
                    path,
                    expected,
                    found,
                } => Error::ShapeMismatch {
                    path: file.clone(),
                    key: path.clone(),
                    expected: expected.to_vec(),
                    found: found.to_vec(),
                },
                ApplyError::DTypeMismatch { path, found, .. } => Error::Dtype {
                    path: file.clone(),
                    key: path.clone(),
                    dtype: format!("{found:?}"),
                },
                ApplyError::AdapterError { path, message }
                | ApplyError::LoadError { path, message } => Error::Tensor {
                    path: file.clone(),
                    key: path.clone(),
                    msg: message.clone(),
                },
            });
        }
        applied.extend(res.applied.iter().cloned());
        unused.extend(res.unused.iter().cloned());
        let missing: BTreeSet<String> = res.missing.iter().map(|(p, _)| p.clone()).collect();
        missing_all = Some(match missing_all {
            None => missing,
            Some(prev) => prev.intersection(&missing).cloned().collect(),
        });
    }
    // Norm parameters show up in `unused` under their PyTorch names even when applied (burn 0.21 quirk).
    let unused: Vec<String> = unused
        .into_iter()
        .filter(|k| {
            let alt = k.strip_suffix(".weight").map(|p| format!("{p}.gamma"));
            let alt2 = k.strip_suffix(".bias").map(|p| format!("{p}.beta"));
            !applied.contains(k)
                && !alt.is_some_and(|a| applied.contains(&a))
                && !alt2.is_some_and(|a| applied.contains(&a))
        })
        .collect();
    let missing = missing_all.unwrap_or_default();
    let (initialised, missing): (Vec<String>, Vec<String>) = missing
        .into_iter()
        .partition(|p| optional.iter().any(|r| r.is_match(p)));
    if !missing.is_empty() {
        return Err(Error::MissingKeys {
            path: first,
            keys: missing,
        });
    }
    Ok(LoadReport {
        applied: applied.len(),
        unused,
        initialised,
    })
}
