use kiln_models::bart::{self, BartForConditionalGeneration};

use crate::common::*;
use crate::s2s;

fn model() -> BartForConditionalGeneration<B> {
    let (cfg, m, report) = bart::load::<B>(&fixtures().join("bart"), &device()).unwrap();
    assert!(report.unused.is_empty(), "unused: {:?}", report.unused);
    assert!(
        report.initialised.is_empty(),
        "initialised: {:?}",
        report.initialised
    );
    assert_eq!(cfg.max_position_embeddings, 64);
    m
}

#[test]
fn tokenizer_matches_reference_ids() {
    s2s::tokenizer_matches("bart");
}

#[test]
fn encoder_output_and_logits_match_transformers() {
    let m = model();
    // The fixture's final_logits_bias is non-zero, so the logits check covers it.
    let bias: Vec<f32> = m.final_logits_bias.val().into_data().to_vec().unwrap();
    assert!(bias.iter().any(|&b| b.abs() > 0.1));
    s2s::forward_matches("bart", &m, 1e-4);
}

/// On the training backend (autodiff over flex) BART runs kiln-kernels' fused LayerNorm, attention and GELU:
/// the same reference, the same tolerance.
#[test]
fn training_backend_logits_match_transformers() {
    type AB = burn::backend::Autodiff<B>;
    let (_, m, _) =
        kiln_models::bart::load::<AB>(&fixtures().join("bart"), &Default::default()).unwrap();
    s2s::forward_matches("bart", &m, 1e-4);
}

#[test]
fn generate_matches_transformers_in_every_mode() {
    s2s::generate_matches("bart", &model());
}

#[test]
fn select_across_batch_items_gathers_cross_attention() {
    s2s::select_across_items("bart", &model(), 2);
}

/// Generation that would run past BART's 64 decoder positions stops at them with a warning and returns the
/// tokens (as transformers warns; it used to be an error that lost them).
#[test]
fn decoder_positions_past_the_table_stop_generation_with_a_warning() {
    use kiln_models::generation::GenerationConfig;
    let m = model();
    let r = reference("bart");
    let ids = rows_u32(&r["input_ids"]);
    let mask = rows_u8(&r["attention_mask"]);
    let cfg = GenerationConfig {
        max_new_tokens: Some(80),
        decoder_start_token_id: Some(2),
        ..Default::default()
    };
    let out = kiln_models::seq2seq::generate(&m, &ids[..1], &mask[..1], &cfg, None).unwrap();
    // No EOS in this configuration: the run goes to the limit, 64 decoder positions + the last chosen token.
    assert_eq!(out.sequences[0].len(), 65);
    assert!(
        out.warnings.iter().any(|w| w.contains("64 positions")),
        "{:?}",
        out.warnings
    );
}

#[test]
fn config_errors_name_the_field() {
    use kiln_models::config::RawConfig;
    let p = std::path::Path::new("bart/config.json");
    let raw = RawConfig::parse(
        p,
        r#"{"model_type":"bart","vocab_size":10,"d_model":30,"encoder_attention_heads":4}"#,
    )
    .unwrap();
    let err = bart::BartConfig::from_raw(&raw).unwrap_err().to_string();
    assert!(
        err.contains("bart/config.json")
            && err.contains("d_model")
            && err.contains("encoder_attention_heads"),
        "{err}"
    );
    let raw = RawConfig::parse(p, r#"{"vocab_size":10,"d_model":32,"encoder_attention_heads":4,"decoder_attention_heads":4,"normalize_before":true}"#).unwrap();
    let err = bart::BartConfig::from_raw(&raw).unwrap_err().to_string();
    assert!(err.contains("normalize_before"), "{err}");
}

/// `forced_bos_token_id` (bart-large-cnn sets it) forces the token after the decoder start, in greedy and
/// beam search, as transformers (`tests/data/bart_forced_bos.json`, made by `tests/data/extra_refs.py`).
#[test]
fn forced_bos_matches_transformers() {
    let m = model();
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/bart_forced_bos.json");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let ids = rows_u32(&r["input_ids"]);
    let mask = rows_u8(&r["attention_mask"]);
    for (mode, g) in r["generate"].as_object().unwrap() {
        let cfg = s2s::gen_config("bart", &g["config"]);
        assert_eq!(cfg.forced_bos_token_id, Some(0));
        let out = kiln_models::seq2seq::generate(&m, &ids, &mask, &cfg, None).unwrap();
        assert_eq!(out.sequences, rows_u32(&g["sequences"]), "mode {mode}");
    }
}
