//! Parity tests shared by every decoder-only architecture (GPT-2, OPT): tokenizer ids, logits with and
//! without left padding, and every decoding mode of `generate`, against fixtures/reference/<name>.json.

use kiln_models::auto::CausalModel;
use kiln_models::causal::CausalSession;
use kiln_models::generation::{generate, EarlyStopping, GenerationConfig};
use kiln_models::tokenizer::Tokenizer;

use crate::common::*;

pub fn model(name: &str) -> CausalModel<B> {
    let (m, report) = CausalModel::<B>::load(&fixtures().join(name), &device()).unwrap();
    assert!(report.unused.is_empty(), "unused: {:?}", report.unused);
    m
}

pub fn tokenizer_matches_reference_ids(name: &str) {
    let tok = Tokenizer::from_dir(&fixtures().join(name)).unwrap();
    let r = reference(name);
    for inp in r["inputs"].as_array().unwrap() {
        let enc = tok.encode(inp["text"].as_str().unwrap(), None).unwrap();
        assert_eq!(enc.ids, u32s(&inp["ids"]));
    }
}

pub fn logits_match_transformers(name: &str) {
    let m = model(name);
    let r = reference(name);
    for inp in r["inputs"].as_array().unwrap() {
        let t = kiln_models::attention::ids_tensor::<B>(&[u32s(&inp["ids"])], &device());
        let got: Vec<f32> = m.forward(t, None).into_data().to_vec().unwrap();
        let d = max_abs_diff(&got, &flat(&inp["logits"]));
        assert!(d < 1e-4, "{name}: max |Δ| = {d}");
    }
}

pub fn left_padded_logits_match_on_real_tokens(name: &str) {
    let m = model(name);
    let r = &reference(name)["left_padded"];
    let ids = rows_u32(&r["input_ids"]);
    let mask = rows_u8(&r["attention_mask"]);
    let t = kiln_models::attention::ids_tensor::<B>(&ids, &device());
    let got = m.forward(t, Some(&mask));
    let [b, s, v] = got.dims();
    let got: Vec<f32> = got.into_data().to_vec().unwrap();
    let want = flat(&r["logits"]);
    for bi in 0..b {
        for si in (0..s).filter(|&si| mask[bi][si] == 1) {
            let o = (bi * s + si) * v;
            let d = max_abs_diff(&got[o..o + v], &want[o..o + v]);
            assert!(d < 1e-4, "{name} row {bi} pos {si}: max |Δ| = {d}");
        }
    }
}

pub fn gen_config(c: &serde_json::Value) -> GenerationConfig {
    let mut g = GenerationConfig::default();
    g.update_from_json(std::path::Path::new("reference"), c)
        .unwrap();
    if c.get("early_stopping") == Some(&serde_json::json!("never")) {
        assert_eq!(g.early_stopping, EarlyStopping::Never);
    }
    g
}

pub fn generate_matches_transformers_in_every_mode(name: &str) {
    let m = model(name);
    let r = reference(name);
    assert!(r["generate"].as_object().unwrap().len() >= 5);
    for (mode, g) in r["generate"].as_object().unwrap() {
        let cfg = gen_config(&g["config"]);
        for e in g["single"].as_array().unwrap() {
            let p = u32s(&e["prompt_ids"]);
            let mask = vec![vec![1u8; p.len()]];
            let out = generate(&mut CausalSession::new(&m), &[p], &mask, &cfg, None).unwrap();
            assert_eq!(
                out.sequences,
                rows_u32(&e["sequences"]),
                "{name} mode {mode}"
            );
        }
        let b = &g["batched"];
        let out = generate(
            &mut CausalSession::new(&m),
            &rows_u32(&b["input_ids"]),
            &rows_u8(&b["attention_mask"]),
            &cfg,
            None,
        )
        .unwrap();
        assert_eq!(
            out.sequences,
            rows_u32(&b["sequences"]),
            "{name} mode {mode} batched"
        );
    }
}

pub fn seeded_sampling_is_reproducible_and_top_k_1_is_greedy(name: &str) {
    let m = model(name);
    let p = vec![vec![5u32, 9, 30]];
    let mask = vec![vec![1u8; 3]];
    let mut cfg = GenerationConfig {
        do_sample: true,
        max_new_tokens: Some(10),
        seed: 7,
        top_k: 0,
        ..Default::default()
    };
    let a = generate(&mut CausalSession::new(&m), &p, &mask, &cfg, None).unwrap();
    let b = generate(&mut CausalSession::new(&m), &p, &mask, &cfg, None).unwrap();
    assert_eq!(a, b);
    let samples: Vec<_> = (0..5)
        .map(|s| {
            cfg.seed = s;
            generate(&mut CausalSession::new(&m), &p, &mask, &cfg, None)
                .unwrap()
                .sequences
        })
        .collect();
    assert!(
        samples.iter().any(|s| *s != samples[0]),
        "different seeds should differ"
    );
    cfg.top_k = 1;
    let s = generate(&mut CausalSession::new(&m), &p, &mask, &cfg, None).unwrap();
    let greedy = GenerationConfig {
        max_new_tokens: Some(10),
        ..Default::default()
    };
    let g = generate(&mut CausalSession::new(&m), &p, &mask, &greedy, None).unwrap();
    assert_eq!(s.sequences, g.sequences);
}

/// One `#[test]` per shared check for an architecture's fixture.
macro_rules! causal_parity_tests {
    ($name:literal) => {
        #[test]
        fn tokenizer_matches_reference_ids() {
            crate::causal::tokenizer_matches_reference_ids($name);
        }
        #[test]
        fn logits_match_transformers() {
            crate::causal::logits_match_transformers($name);
        }
        #[test]
        fn left_padded_logits_match_on_real_tokens() {
            crate::causal::left_padded_logits_match_on_real_tokens($name);
        }
        #[test]
        fn generate_matches_transformers_in_every_mode() {
            crate::causal::generate_matches_transformers_in_every_mode($name);
        }
        #[test]
        fn seeded_sampling_is_reproducible_and_top_k_1_is_greedy() {
            crate::causal::seeded_sampling_is_reproducible_and_top_k_1_is_greedy($name);
        }
    };
}
pub(crate) use causal_parity_tests;
