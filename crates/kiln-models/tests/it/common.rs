use std::path::PathBuf;

pub type B = burn::backend::Flex;

pub fn device() -> burn::backend::flex::FlexDevice {
    Default::default()
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn reference(name: &str) -> serde_json::Value {
    let p = fixtures().join("reference").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

pub fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn rows_u32(v: &serde_json::Value) -> Vec<Vec<u32>> {
    v.as_array().unwrap().iter().map(u32s).collect()
}

pub fn rows_u8(v: &serde_json::Value) -> Vec<Vec<u8>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u8)
                .collect()
        })
        .collect()
}

/// Flatten a nested JSON array of numbers.
pub fn flat(v: &serde_json::Value) -> Vec<f32> {
    match v {
        serde_json::Value::Array(a) => a.iter().flat_map(flat).collect(),
        x => vec![x.as_f64().unwrap() as f32],
    }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Every float parameter's values, in visiting order (to check that weights stayed bit-identical).
pub struct Collect(pub Vec<Vec<f32>>);

impl<BB: burn::prelude::Backend> burn::module::ModuleVisitor<BB> for Collect {
    fn visit_float<const D: usize>(
        &mut self,
        p: &burn::module::Param<burn::prelude::Tensor<BB, D>>,
    ) {
        self.0
            .push(p.val().into_data().convert::<f32>().to_vec().unwrap());
    }
}

/// Two PEFT adapter files hold the same keys, shapes and (within `tol`) values.
pub fn assert_same_tensors(theirs: &std::path::Path, ours: &std::path::Path, tol: f32) {
    let a = kiln_peft::read_tensors(&theirs.join("adapter_model.safetensors")).unwrap();
    let b = kiln_peft::read_tensors(&ours.join("adapter_model.safetensors")).unwrap();
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, t) in &a {
        assert_eq!(t.shape, b[k].shape, "{k}");
        assert!(max_abs_diff(&t.data, &b[k].data) < tol, "{k}");
    }
}

/// An `adapter_config.json` as JSON.
pub fn adapter_config(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
        .unwrap()
}
