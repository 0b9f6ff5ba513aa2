//! Parity checks shared by the encoder-decoder models (T5, BART) against `fixtures/reference/<name>.json`.

use kiln_models::generation::{generate, GenerationConfig};
use kiln_models::seq2seq::{self, EncoderDecoder, Seq2SeqSession};
use kiln_models::tokenizer::Tokenizer;

use crate::common::*;

/// Tokenizing the reference texts gives the reference ids (the real, unpadded part of each row).
pub fn tokenizer_matches(name: &str) {
    let tok = Tokenizer::from_dir(&fixtures().join(name)).unwrap();
    let r = reference(name);
    let ids = rows_u32(&r["input_ids"]);
    let mask = rows_u8(&r["attention_mask"]);
    for ((text, row), m) in r["texts"].as_array().unwrap().iter().zip(&ids).zip(&mask) {
        let enc = tok.encode(text.as_str().unwrap(), None).unwrap();
        let real: Vec<u32> = row
            .iter()
            .zip(m)
            .filter(|(_, &m)| m == 1)
            .map(|(&t, _)| t)
            .collect();
        assert_eq!(enc.ids, real, "{name}: {text}");
    }
    // The single-input generate entries were tokenized the same way.
    for e in r["generate"]["greedy"]["single"].as_array().unwrap() {
        assert!(ids
            .iter()
            .any(|row| row.starts_with(&u32s(&e["input_ids"]))));
    }
}

/// kiln's encoder output (where attention_mask = 1) and teacher-forced logits for the reference inputs,
/// with their max |Δ| from `want_enc` / `want_logits` (flattened `[b, s, d]` / `[b, t, vocab]`).
pub fn forward_errors<Bk: burn::prelude::Backend, M: EncoderDecoder<Bk>>(
    name: &str,
    m: &M,
    want_enc: &[f32],
    want_logits: &[f32],
) -> (f32, f32) {
    let r = reference(name);
    let ids = rows_u32(&r["input_ids"]);
    let mask = rows_u8(&r["attention_mask"]);
    let dev: Bk::Device = Default::default();
    let t = kiln_models::attention::ids_tensor::<Bk>(&ids, &dev);
    let enc = m.encode(t, &mask).unwrap();
    let [b, s, d] = enc.dims();
    let got: Vec<f32> = enc.clone().into_data().to_vec().unwrap();
    assert_eq!(got.len(), want_enc.len());
    let mut enc_err = 0f32;
    for bi in 0..b {
        for si in 0..s {
            if mask[bi][si] == 1 {
                let o = (bi * s + si) * d;
                enc_err = enc_err.max(max_abs_diff(&got[o..o + d], &want_enc[o..o + d]));
            }
        }
    }
    let dec = kiln_models::attention::ids_tensor::<Bk>(&rows_u32(&r["decoder_input_ids"]), &dev);
    let logits: Vec<f32> = m
        .decoder_logits(dec, enc, &mask)
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    (enc_err, max_abs_diff(&logits, want_logits))
}

/// Encoder output and logits within `tol` of transformers' fp32 reference.
pub fn forward_matches<Bk: burn::prelude::Backend, M: EncoderDecoder<Bk>>(
    name: &str,
    m: &M,
    tol: f32,
) {
    let r = reference(name);
    let (e, l) = forward_errors(
        name,
        m,
        &flat(&r["encoder_last_hidden_state"]),
        &flat(&r["logits"]),
    );
    assert!(
        e < tol && l < tol,
        "{name}: encoder max |Δ| = {e}, logits max |Δ| = {l}"
    );
}

/// The generation defaults transformers used: the checkpoint's `config.json` / `generation_config.json`
/// (e.g. BART's `forced_eos_token_id`) overlaid with the arguments passed to `generate`.
pub fn gen_config(name: &str, args: &serde_json::Value) -> GenerationConfig {
    let mut g = GenerationConfig::from_dir(&fixtures().join(name)).unwrap();
    g.update_from_json(std::path::Path::new("reference"), args)
        .unwrap();
    g
}

/// Every generate mode of the reference, one input at a time and batched (right-padded encoder inputs),
/// token for token.
pub fn generate_matches<M: EncoderDecoder<B>>(name: &str, m: &M) {
    let r = reference(name);
    let modes = r["generate"].as_object().unwrap();
    assert!(modes.len() >= 6, "{name}: {} modes", modes.len());
    for (mode, g) in modes {
        let cfg = gen_config(name, &g["config"]);
        for e in g["single"].as_array().unwrap() {
            let ids = u32s(&e["input_ids"]);
            let mask = vec![vec![1u8; ids.len()]];
            let out = seq2seq::generate(m, &[ids], &mask, &cfg, None).unwrap();
            assert_eq!(
                out.sequences,
                rows_u32(&e["sequences"]),
                "{name} mode {mode} single"
            );
        }
        let b = &g["batched"];
        let ids = rows_u32(&b["input_ids"]);
        let mask = rows_u8(&b["attention_mask"]);
        // Through the session directly, to also check that beams never copied cross-attention keys/values.
        let mut session = Seq2SeqSession::new(m, &ids, &mask).unwrap();
        let start = cfg.decoder_start_token_id.unwrap();
        let n = ids.len();
        let out = generate(
            &mut session,
            &vec![vec![start]; n],
            &vec![vec![1u8]; n],
            &cfg,
            None,
        )
        .unwrap();
        assert_eq!(
            out.sequences,
            rows_u32(&b["sequences"]),
            "{name} mode {mode} batched"
        );
        assert_eq!(
            session.cross_gathers(),
            0,
            "{name} mode {mode}: cross keys/values were copied"
        );
    }
}

/// Moving rows between batch items (which `generate` never does) gathers cross keys/values per row and
/// still decodes each row against its own encoder input.
pub fn select_across_items<M: EncoderDecoder<B>>(name: &str, m: &M, start: u32) {
    use kiln_models::generation::DecodeSession;
    let r = reference(name);
    let ids = rows_u32(&r["input_ids"]);
    let mask = rows_u8(&r["attention_mask"]);
    let mut s = Seq2SeqSession::new(m, &ids, &mask).unwrap();
    // Two rows per item: [a, a, b, b, c, c].
    let rows = vec![vec![start]; 2 * ids.len()];
    let ones = vec![vec![1u8]; rows.len()];
    s.prefill(&rows, &ones).unwrap();
    // Reverse the rows: item order c, c, b, b, a, a.
    let idx: Vec<usize> = (0..rows.len()).rev().collect();
    s.select(&idx).unwrap();
    assert_eq!(s.cross_gathers(), 1);
    let toks: Vec<u32> = (0..rows.len() as u32).map(|i| 5 + i).collect();
    let got = s.step(&toks).unwrap();

    let rev_ids: Vec<Vec<u32>> = ids.iter().rev().cloned().collect();
    let rev_mask: Vec<Vec<u8>> = mask.iter().rev().cloned().collect();
    let mut fresh = Seq2SeqSession::new(m, &rev_ids, &rev_mask).unwrap();
    fresh.prefill(&rows, &ones).unwrap();
    let want = fresh.step(&toks).unwrap();
    for (g, w) in got.iter().zip(&want) {
        let d = max_abs_diff(g, w);
        assert!(d < 1e-4, "{name}: max |Δ| = {d}");
    }
    // Back to the grouped layout: the per-item keys/values are used again, nothing is gathered.
    s.select(&idx).unwrap();
    assert_eq!(s.cross_gathers(), 1);
}
