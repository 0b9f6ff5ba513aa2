use std::io::Write;

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use kiln_models::config::RawConfig;
use kiln_models::seq2seq::EncoderDecoder;
use kiln_models::t5::{self, T5Config, T5ForConditionalGeneration};

use crate::common::*;
use crate::s2s;

fn model(name: &str) -> (T5Config, T5ForConditionalGeneration<B>) {
    let (cfg, m, report) = t5::load::<B>(&fixtures().join(name), &device()).unwrap();
    assert!(report.unused.is_empty(), "unused: {:?}", report.unused);
    assert!(
        report.initialised.is_empty(),
        "initialised: {:?}",
        report.initialised
    );
    (cfg, m)
}

#[test]
fn variants_are_read_from_config_and_weights() {
    let (c, m) = model("t5");
    assert!(!c.is_gated_act && c.scale_decoder_outputs && m.lm_head.is_none());
    assert!(m.decoder.block[0].layer[2]
        .DenseReluDense
        .as_ref()
        .unwrap()
        .wi
        .is_some());
    // The v1.1 fixture is saved as T0/flan checkpoints are: its own lm_head.weight (untied), no output
    // scaling, gated-gelu (transformers 5.24 still writes `tie_word_embeddings: true`).
    let (c, m) = model("t5-v1_1");
    assert!(c.is_gated_act && !c.scale_decoder_outputs && m.lm_head.is_some());
    assert_eq!(c.dense_act_fn, kiln_models::config::Activation::GeluNew);
    assert!(m.encoder.block[1].layer[0]
        .SelfAttention
        .as_ref()
        .unwrap()
        .relative_attention_bias
        .is_none());
}

#[test]
fn relative_position_buckets_match_transformers() {
    // torch: T5Attention._relative_position_bucket(torch.tensor([...]), bidirectional, 32, 128)
    let rel = [
        -200i64, -128, -64, -20, -9, -8, -7, -1, 0, 1, 7, 8, 9, 20, 64, 128, 200,
    ];
    let bi = [
        15usize, 15, 14, 10, 8, 8, 7, 1, 0, 17, 23, 24, 24, 26, 30, 31, 31,
    ];
    let causal = [31usize, 31, 26, 17, 9, 8, 7, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    for (i, &r) in rel.iter().enumerate() {
        assert_eq!(
            t5::relative_position_bucket(r, true, 32, 128),
            bi[i],
            "bidirectional {r}"
        );
        assert_eq!(
            t5::relative_position_bucket(r, false, 32, 128),
            causal[i],
            "causal {r}"
        );
    }
}

#[test]
fn tokenizer_matches_reference_ids() {
    s2s::tokenizer_matches("t5");
    s2s::tokenizer_matches("t5-v1_1");
}

#[test]
fn encoder_output_and_logits_match_transformers_v1_0() {
    let (_, m) = model("t5");
    s2s::forward_matches("t5", &m, 1e-4);
}

#[test]
fn encoder_output_and_logits_match_transformers_v1_1() {
    let (_, m) = model("t5-v1_1");
    s2s::forward_matches("t5-v1_1", &m, 1e-4);
}

/// On the training backend (autodiff over flex) the model runs kiln-kernels' fused RMSNorm, attention and GELU
/// instead of the inference ops: the same reference, the same tolerance.
#[test]
fn training_backend_logits_match_transformers() {
    type AB = burn::backend::Autodiff<B>;
    for name in ["t5", "t5-v1_1"] {
        let (_, m, _) = t5::load::<AB>(&fixtures().join(name), &Default::default()).unwrap();
        s2s::forward_matches(name, &m, 1e-4);
    }
}

#[test]
fn generate_matches_transformers_in_every_mode_v1_0() {
    s2s::generate_matches("t5", &model("t5").1);
}

#[test]
fn generate_matches_transformers_in_every_mode_v1_1() {
    s2s::generate_matches("t5-v1_1", &model("t5-v1_1").1);
}

#[test]
fn select_across_batch_items_gathers_cross_attention() {
    s2s::select_across_items("t5", &model("t5").1, 0);
}

#[test]
fn config_errors_name_the_field() {
    let p = std::path::Path::new("t5/config.json");
    let base = r#""vocab_size":100,"d_model":16,"d_kv":4,"d_ff":32,"num_layers":1,"num_heads":2"#;
    let raw = RawConfig::parse(
        p,
        &format!(r#"{{{base},"feed_forward_proj":"gated-gelu-x"}}"#),
    )
    .unwrap();
    let err = T5Config::from_raw(&raw).unwrap_err().to_string();
    assert!(
        err.contains("t5/config.json") && err.contains("feed_forward_proj"),
        "{err}"
    );
    let raw = RawConfig::parse(
        p,
        &format!(r#"{{{base},"relative_attention_num_buckets":2}}"#),
    )
    .unwrap();
    let err = T5Config::from_raw(&raw).unwrap_err().to_string();
    assert!(err.contains("relative_attention_num_buckets"), "{err}");
    let raw = RawConfig::parse(
        p,
        r#"{"vocab_size":100,"d_model":16,"d_ff":32,"num_layers":1,"num_heads":2}"#,
    )
    .unwrap();
    assert!(T5Config::from_raw(&raw)
        .unwrap_err()
        .to_string()
        .contains("d_kv"));
    // Old-style flan config: untied, unscaled, gated.
    let raw = RawConfig::parse(
        p,
        &format!(r#"{{{base},"feed_forward_proj":"gated-gelu","tie_word_embeddings":false}}"#),
    )
    .unwrap();
    let c = T5Config::from_raw(&raw).unwrap();
    assert!(c.untied_lm_head && !c.scale_decoder_outputs && c.is_gated_act);
}

/// Counts parameters, and how many hold a materialised tensor.
#[derive(Default)]
struct Count {
    params: usize,
    initialised: usize,
}

impl<Bk: Backend> ModuleVisitor<Bk> for Count {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Bk, D>>) {
        self.params += 1;
        self.initialised += p.is_initialized() as usize;
    }
}

/// A small deterministic generator for test weights.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
    }
}

/// Write `tensors` (HF names and layouts) as an F32 safetensors file.
fn write_safetensors(path: &std::path::Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    for (name, shape, data) in tensors {
        let n = data.len() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [off, off + n]}),
        );
        off += n;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&h).unwrap();
    for (_, _, data) in tensors {
        for x in data {
            f.write_all(&x.to_le_bytes()).unwrap();
        }
    }
}

/// A flan-style T5 (gated-gelu, own lm_head, d_kv · heads ≠ d_model) of ~9M parameters built from a config:
/// `init` allocates nothing (every parameter is lazy), loading fills each parameter once from the
/// memory-mapped file (burn-store through `weights::load_into`), non-square projections come out
/// transposed, and the model runs.
#[test]
fn larger_random_t5_builds_lazily_and_loads_from_mmap() {
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "model_type": "t5", "vocab_size": 4000, "d_model": 256, "d_kv": 48, "d_ff": 640, "num_layers": 4,
        "num_decoder_layers": 3, "num_heads": 6, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": false,
        "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
        "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let cfg = T5Config::load(&dir.path().join("config.json")).unwrap();
    assert!(cfg.untied_lm_head);

    let fresh = cfg.init::<B>(&device());
    let mut count = Count::default();
    fresh.visit(&mut count);
    assert!(count.params > 50);
    assert_eq!(count.initialised, 0, "init materialised parameters");

    // The checkpoint, in transformers' names and [out, in] layouts.
    let (d, inner, ff, v) = (256usize, 6 * 48usize, 640usize, 4000usize);
    let mut rng = Lcg(7);
    let mut t = |name: String, shape: Vec<usize>| {
        let n = shape.iter().product();
        (
            name,
            shape,
            (0..n).map(|_| rng.next()).collect::<Vec<f32>>(),
        )
    };
    let mut tensors = vec![
        t("shared.weight".into(), vec![v, d]),
        t("lm_head.weight".into(), vec![v, d]),
    ];
    for (stack, n) in [("encoder", 4), ("decoder", 3)] {
        for b in 0..n {
            let p = format!("{stack}.block.{b}.layer");
            for x in ["q", "k", "v"] {
                tensors.push(t(format!("{p}.0.SelfAttention.{x}.weight"), vec![inner, d]));
            }
            tensors.push(t(format!("{p}.0.SelfAttention.o.weight"), vec![d, inner]));
            if b == 0 {
                tensors.push(t(
                    format!("{p}.0.SelfAttention.relative_attention_bias.weight"),
                    vec![32, 6],
                ));
            }
            tensors.push(t(format!("{p}.0.layer_norm.weight"), vec![d]));
            let mut ffl = 1;
            if stack == "decoder" {
                for x in ["q", "k", "v"] {
                    tensors.push(t(
                        format!("{p}.1.EncDecAttention.{x}.weight"),
                        vec![inner, d],
                    ));
                }
                tensors.push(t(format!("{p}.1.EncDecAttention.o.weight"), vec![d, inner]));
                tensors.push(t(format!("{p}.1.layer_norm.weight"), vec![d]));
                ffl = 2;
            }
            tensors.push(t(
                format!("{p}.{ffl}.DenseReluDense.wi_0.weight"),
                vec![ff, d],
            ));
            tensors.push(t(
                format!("{p}.{ffl}.DenseReluDense.wi_1.weight"),
                vec![ff, d],
            ));
            tensors.push(t(
                format!("{p}.{ffl}.DenseReluDense.wo.weight"),
                vec![d, ff],
            ));
            tensors.push(t(format!("{p}.{ffl}.layer_norm.weight"), vec![d]));
        }
        tensors.push(t(format!("{stack}.final_layer_norm.weight"), vec![d]));
    }
    let n_params: usize = tensors.iter().map(|x| x.2.len()).sum();
    assert!(n_params > 8_000_000, "{n_params}");
    write_safetensors(&dir.path().join("model.safetensors"), &tensors);

    let (_, m, report) = t5::load::<B>(dir.path(), &device()).unwrap();
    assert_eq!(report.applied, tensors.len());
    assert!(
        report.unused.is_empty() && report.initialised.is_empty(),
        "{report:?}"
    );
    let mut count = Count::default();
    m.visit(&mut count);
    assert_eq!(count.params, tensors.len());
    assert_eq!(count.initialised, count.params);

    // A non-square projection, [inner, d] in the file, is [d, inner] in the module.
    let (_, shape, data) = tensors
        .iter()
        .find(|x| x.0 == "decoder.block.2.layer.1.EncDecAttention.q.weight")
        .unwrap();
    let w = m.decoder.block[2].layer[1]
        .EncDecAttention
        .as_ref()
        .unwrap()
        .q
        .weight
        .val();
    assert_eq!(w.dims(), [shape[1], shape[0]]);
    let got: Vec<f32> = w.transpose().into_data().to_vec().unwrap();
    assert_eq!(&got, data);

    let ids = vec![vec![5u32, 6, 7, 8, 1]];
    let logits = m.forward(&ids, &[vec![1u8; 5]], &[vec![0u32, 9]]).unwrap();
    assert_eq!(logits.dims(), [1, 2, v]);
    let l: Vec<f32> = logits.into_data().to_vec().unwrap();
    assert!(l.iter().all(|x| x.is_finite()));
    let _ = m.n_decoder_layers();
}
