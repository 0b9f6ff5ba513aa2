use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use kiln_models::bert::{self, l2_normalize, mean_pool, BertBatch, BertConfig};
use kiln_models::config::RawConfig;
use kiln_models::tokenizer::Tokenizer;

use crate::common::*;

fn bert_dir() -> PathBuf {
    fixtures().join("bert")
}

fn batch(r: &serde_json::Value) -> BertBatch {
    BertBatch {
        input_ids: rows_u32(&r["input_ids"]),
        token_type_ids: rows_u32(&r["token_type_ids"]),
        attention_mask: rows_u8(&r["attention_mask"]),
    }
}

fn to_vec<BB: Backend, const D: usize>(t: Tensor<BB, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// Max |Δ| over the positions where `mask` is 1 of `[b, s, d]` tensors.
fn masked_max_diff(got: &[f32], want: &[f32], mask: &[Vec<u8>], d: usize) -> f32 {
    assert_eq!(got.len(), want.len());
    let s = mask[0].len();
    let mut m = 0f32;
    for (bi, row) in mask.iter().enumerate() {
        for (si, &on) in row.iter().enumerate() {
            if on == 1 {
                let o = (bi * s + si) * d;
                m = m.max(max_abs_diff(&got[o..o + d], &want[o..o + d]));
            }
        }
    }
    m
}

fn unpadded(rows: &[Vec<u32>], mask: &[Vec<u8>]) -> Vec<Vec<u32>> {
    rows.iter()
        .zip(mask)
        .map(|(r, m)| {
            r.iter()
                .zip(m)
                .filter(|(_, &m)| m == 1)
                .map(|(&x, _)| x)
                .collect()
        })
        .collect()
}

// ------------------------------------------------------------------------------------------- config

fn raw(text: &str) -> RawConfig {
    RawConfig::parse(Path::new("config.json"), text).unwrap()
}

#[test]
fn config_reads_the_fixture_and_names_bad_fields() {
    let c = BertConfig::load(&bert_dir().join("config.json")).unwrap();
    assert_eq!(
        (
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.intermediate_size
        ),
        (32, 2, 4, 64)
    );
    assert_eq!(
        (c.vocab_size, c.max_position_embeddings, c.type_vocab_size),
        (300, 64, 2)
    );
    assert_eq!(c.layer_norm_eps, 1e-12);
    assert_eq!(
        c.num_labels(),
        2,
        "no id2label in the file: HF's default of 2 labels"
    );
    assert_eq!(c.classifier_dropout, None);
    assert_eq!(c.classifier_dropout_prob(), 0.1);

    let base = r#""model_type":"bert","vocab_size":100,"hidden_size":32,"num_hidden_layers":1,"intermediate_size":64"#;
    let c = BertConfig::from_raw(&raw(&format!(
        r#"{{{base},"num_attention_heads":4,"id2label":{{"1":"POS","0":"NEG","2":"MIX"}},"classifier_dropout":0.3}}"#
    )))
    .unwrap();
    assert_eq!(c.id2label, ["NEG", "POS", "MIX"]);
    assert_eq!(c.classifier_dropout_prob(), 0.3);
    assert_eq!(c.layer_norm_eps, 1e-12, "default eps");
    assert_eq!(c.num_labels(), 3);
    let c = BertConfig::from_raw(&raw(&format!(
        r#"{{{base},"num_attention_heads":4,"num_labels":5}}"#
    )))
    .unwrap();
    assert_eq!(c.num_labels(), 5);

    for (extra, field) in [
        (r#""num_attention_heads":5"#, "hidden_size"),
        (
            r#""num_attention_heads":4,"hidden_act":"mish""#,
            "hidden_act",
        ),
        (
            r#""num_attention_heads":4,"hidden_dropout_prob":1.5"#,
            "hidden_dropout_prob",
        ),
        (
            r#""num_attention_heads":4,"type_vocab_size":0"#,
            "type_vocab_size",
        ),
        (
            r#""num_attention_heads":4,"position_embedding_type":"relative_key""#,
            "position_embedding_type",
        ),
        (
            r#""num_attention_heads":4,"id2label":{"0":"a","5":"b"}"#,
            "id2label",
        ),
        (
            r#""num_attention_heads":4,"id2label":{"0":"a"},"num_labels":3"#,
            "num_labels",
        ),
        (r#""num_attention_heads":0"#, "num_attention_heads"),
    ] {
        let err = BertConfig::from_raw(&raw(&format!("{{{base},{extra}}}")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config.json") && err.contains(&format!("`{field}`")),
            "{extra}: {err}"
        );
    }
    let err = BertConfig::from_raw(&raw(r#"{"model_type":"bert","hidden_size":32}"#))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`vocab_size`") && err.contains("missing"),
        "{err}"
    );
}

// ------------------------------------------------------------------------------------------- tokenizer

fn check_reference_ids(tok: &Tokenizer) {
    let r = reference("bert");
    let mask = rows_u8(&r["attention_mask"]);
    let ids = unpadded(&rows_u32(&r["input_ids"]), &mask);
    let types = unpadded(&rows_u32(&r["token_type_ids"]), &mask);
    for (i, text) in r["texts"].as_array().unwrap().iter().enumerate() {
        let enc = tok.encode(text.as_str().unwrap(), None).unwrap();
        assert_eq!(enc.ids, ids[i], "{text}");
        assert_eq!(enc.type_ids, types[i], "{text}");
    }
    let p = &r["pairs"];
    let mask = rows_u8(&p["attention_mask"]);
    let ids = unpadded(&rows_u32(&p["input_ids"]), &mask);
    let types = unpadded(&rows_u32(&p["token_type_ids"]), &mask);
    for i in 0..ids.len() {
        let (a, b) = (
            p["first"][i].as_str().unwrap(),
            p["second"][i].as_str().unwrap(),
        );
        let enc = tok.encode_pair(a, b, None).unwrap();
        assert_eq!(enc.ids, ids[i], "{a} / {b}");
        assert_eq!(enc.type_ids, types[i], "{a} / {b}");
    }
}

#[test]
fn tokenizer_json_gives_reference_ids() {
    check_reference_ids(&Tokenizer::from_dir(&bert_dir()).unwrap());
}

/// `vocab.txt`, one token a line in id order, from a `tokenizer.json`'s WordPiece vocabulary.
fn vocab_txt_from(tokenizer_json: &Path) -> String {
    let t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tokenizer_json).unwrap()).unwrap();
    let by_id: BTreeMap<u64, &str> = t["model"]["vocab"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (v.as_u64().unwrap(), k.as_str()))
        .collect();
    assert_eq!(
        *by_id.keys().last().unwrap() as usize,
        by_id.len() - 1,
        "ids are dense"
    );
    by_id.values().map(|t| format!("{t}\n")).collect()
}

#[test]
fn vocab_txt_only_dir_gives_the_same_ids() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("vocab.txt"),
        vocab_txt_from(&bert_dir().join("tokenizer.json")),
    )
    .unwrap();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert!(tok.path.ends_with("vocab.txt"));
    check_reference_ids(&tok);

    // A cased model says so in tokenizer_config.json; then "Hello" is not lower-cased.
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"do_lower_case": false}"#,
    )
    .unwrap();
    let cased = Tokenizer::from_dir(dir.path()).unwrap();
    let uncased = tok.encode("Hello world", None).unwrap().ids;
    assert_ne!(cased.encode("Hello world", None).unwrap().ids, uncased);
    assert_eq!(cased.encode("hello world", None).unwrap().ids, uncased);
}

// ------------------------------------------------------------------------------------------- parity

#[test]
fn encoder_outputs_match_transformers() {
    let (_, m, report) = bert::load::<B>(&bert_dir(), &device()).unwrap();
    assert!(report.initialised.is_empty(), "{:?}", report.initialised);
    assert_eq!(
        report.unused,
        ["classifier.bias", "classifier.weight"],
        "the head has no place in BertModel"
    );
    let r = reference("bert");
    let b = batch(&r);
    let out = m.forward_batch(&b).unwrap();
    let d = m.hidden_size();

    let last = to_vec(out.last_hidden_state.clone());
    let e = masked_max_diff(&last, &flat(&r["last_hidden_state"]), &b.attention_mask, d);
    assert!(e < 1e-4, "last_hidden_state: max |Δ| = {e}");
    let e = max_abs_diff(&to_vec(out.pooler_output), &flat(&r["pooler_output"]));
    assert!(e < 1e-4, "pooler_output: max |Δ| = {e}");
    let mean = mean_pool(out.last_hidden_state, &b.attention_mask);
    let e = max_abs_diff(&to_vec(mean.clone()), &flat(&r["mean_pooled"]));
    assert!(e < 1e-4, "mean_pooled: max |Δ| = {e}");

    // L2 normalisation: unit rows, same direction.
    let n = to_vec(l2_normalize(mean.clone()));
    let raw = to_vec(mean);
    for (row, raw) in n.chunks(d).zip(raw.chunks(d)) {
        let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        let rn: f32 = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(max_abs_diff(row, &raw.iter().map(|x| x / rn).collect::<Vec<_>>()) < 1e-6);
    }

    // Tensor API without token types or mask equals the batch API on an unpadded row.
    let ids = kiln_models::attention::ids_tensor::<B>(&[b.input_ids[1].clone()], &device());
    let alone = to_vec(m.forward(ids, None, None).unwrap().last_hidden_state);
    let s = b.input_ids[1].len();
    assert!(max_abs_diff(&alone, &last[s * d..2 * s * d]) < 1e-5);
}

#[test]
fn classifier_logits_match_transformers_for_texts_and_pairs() {
    let (cfg, m, report) = bert::load_for_classification::<B>(&bert_dir(), &device()).unwrap();
    assert!(
        report.initialised.is_empty() && report.unused.is_empty(),
        "{report:?}"
    );
    assert_eq!(m.num_labels(), cfg.num_labels());
    let r = reference("bert");
    let e = max_abs_diff(
        &to_vec(m.forward_batch(&batch(&r)).unwrap()),
        &flat(&r["logits"]),
    );
    assert!(e < 1e-4, "logits: max |Δ| = {e}");

    // Pairs, tokenized here (type ids 1 on the second segment) and padded by BertBatch.
    let p = &r["pairs"];
    let tok = Tokenizer::from_dir(&bert_dir()).unwrap();
    let encs: Vec<_> = (0..2)
        .map(|i| {
            tok.encode_pair(
                p["first"][i].as_str().unwrap(),
                p["second"][i].as_str().unwrap(),
                None,
            )
            .unwrap()
        })
        .collect();
    let pb = BertBatch::from_encodings(&encs, 0).unwrap();
    assert_eq!(pb, batch(p));
    let e = max_abs_diff(&to_vec(m.forward_batch(&pb).unwrap()), &flat(&p["logits"]));
    assert!(e < 1e-4, "pair logits: max |Δ| = {e}");
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let (_, m, _) = bert::load::<B>(&bert_dir(), &device()).unwrap();
    let mut b = batch(&reference("bert"));
    b.input_ids[0][0] = 300;
    assert!(m
        .forward_batch(&b)
        .unwrap_err()
        .to_string()
        .contains("vocab_size = 300"));
    let mut b = batch(&reference("bert"));
    b.token_type_ids[0][0] = 2;
    assert!(m
        .forward_batch(&b)
        .unwrap_err()
        .to_string()
        .contains("type_vocab_size = 2"));
    let mut b = batch(&reference("bert"));
    b.attention_mask[1].pop();
    assert!(m.forward_batch(&b).is_err());
    let long = vec![vec![5u32; 65]];
    let b = BertBatch {
        token_type_ids: vec![vec![0; 65]],
        attention_mask: vec![vec![1; 65]],
        input_ids: long,
    };
    assert!(m
        .forward_batch(&b)
        .unwrap_err()
        .to_string()
        .contains("1..=64"));
}

#[test]
fn dropout_is_active_in_training_only_and_gradients_reach_every_part() {
    use burn::module::AutodiffModule;
    type AD = burn::backend::Autodiff<B>;
    let mut cfg = BertConfig::load(&bert_dir().join("config.json")).unwrap();
    cfg.hidden_dropout_prob = 0.5;
    cfg.attention_probs_dropout_prob = 0.5;
    let m = cfg.init_classifier::<AD>(&device());
    let b = batch(&reference("bert"));
    let (x, y) = (m.forward_batch(&b).unwrap(), m.forward_batch(&b).unwrap());
    assert_ne!(
        to_vec(x.clone().inner()),
        to_vec(y.inner()),
        "dropout should make training passes differ"
    );
    let grads = x.sum().backward();
    assert!(m.classifier.weight.grad(&grads).is_some());
    assert!(m.bert.pooler.dense.weight.grad(&grads).is_some());
    assert!(m.bert.encoder.layer[0]
        .attention
        .self_attn
        .query
        .weight
        .grad(&grads)
        .is_some());
    assert!(m.bert.embeddings.LayerNorm.gamma.grad(&grads).is_some());
    assert!(m
        .bert
        .embeddings
        .word_embeddings
        .weight
        .grad(&grads)
        .is_some());
    let v = m.valid();
    assert_eq!(
        to_vec(v.forward_batch(&b).unwrap()),
        to_vec(v.forward_batch(&b).unwrap()),
        "inference is deterministic"
    );

    // A loaded checkpoint trains too: every parameter gets a gradient, the fresh head included.
    let dir = tempfile::tempdir().unwrap();
    write_plain_checkpoint(dir.path(), false);
    let (_, m, _) = bert::load_for_classification::<AD>(dir.path(), &device()).unwrap();
    let grads = m.forward_batch(&b).unwrap().sum().backward();
    let grads = burn::optim::GradientsParams::from_grads(grads, &m);
    assert_eq!(
        grads.len(),
        m.num_params_tensors(),
        "parameters without a gradient"
    );
}

trait NumParamTensors {
    fn num_params_tensors(&self) -> usize;
}

impl<M: Module<burn::backend::Autodiff<B>>> NumParamTensors for M {
    fn num_params_tensors(&self) -> usize {
        struct Count(usize);
        impl<BB: Backend> burn::module::ModuleVisitor<BB> for Count {
            fn visit_float<const D: usize>(&mut self, _: &burn::module::Param<Tensor<BB, D>>) {
                self.0 += 1;
            }
        }
        let mut c = Count(0);
        self.visit(&mut c);
        c.0
    }
}

// ------------------------------------------------------------------------------------------- checkpoint forms

/// Rewrite the fixture checkpoint: keys without `bert.`, no classifier, an int64 `embeddings.position_ids`
/// buffer as real checkpoints carry, and float tensors stored as `F32` or `F16`.
fn write_plain_checkpoint(dir: &Path, f16: bool) {
    let src = std::fs::read(bert_dir().join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(src[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&src[8..8 + n]).unwrap();
    let data = &src[8 + n..];
    let mut tensors: Vec<(String, &str, Vec<u64>, Vec<u8>)> = Vec::new();
    for (k, v) in &header {
        let Some(name) = k.strip_prefix("bert.") else {
            continue;
        };
        let shape: Vec<u64> = v["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        let o: Vec<usize> = v["data_offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let bytes = &data[o[0]..o[1]];
        let (dtype, bytes) = if f16 {
            let b = bytes
                .chunks(4)
                .flat_map(|c| {
                    burn::tensor::f16::from_f32(f32::from_le_bytes(c.try_into().unwrap()))
                        .to_le_bytes()
                })
                .collect();
            ("F16", b)
        } else {
            ("F32", bytes.to_vec())
        };
        tensors.push((name.to_string(), dtype, shape, bytes));
    }
    let pos: Vec<u8> = (0..64i64).flat_map(|i| i.to_le_bytes()).collect();
    tensors.push(("embeddings.position_ids".into(), "I64", vec![1, 64], pos));
    let mut head = serde_json::Map::new();
    let mut body = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = body.len();
        body.extend_from_slice(&bytes);
        head.insert(name, serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, body.len()]}));
    }
    let mut h = serde_json::to_vec(&head).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(body);
    std::fs::write(dir.join("model.safetensors"), out).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bert_dir().join("config.json")).unwrap())
            .unwrap();
    cfg["architectures"] = serde_json::json!(["BertModel"]);
    cfg["id2label"] = serde_json::json!({"0": "negative", "1": "neutral", "2": "positive"});
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
}

#[test]
fn plain_bert_model_checkpoint_loads_into_the_classifier_with_a_fresh_head() {
    let r = reference("bert");
    let b = batch(&r);
    let want = flat(&r["last_hidden_state"]);
    for f16 in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        write_plain_checkpoint(dir.path(), f16);
        let (cfg, m, report) = bert::load_for_classification::<B>(dir.path(), &device()).unwrap();
        assert_eq!(
            report.initialised,
            ["classifier.bias", "classifier.weight"],
            "the report names the fresh head"
        );
        assert_eq!(
            report.unused,
            ["bert.embeddings.position_ids"],
            "the int64 buffer is skipped, not an error"
        );
        assert_eq!((cfg.num_labels(), m.num_labels()), (3, 3));
        let logits = m.forward_batch(&b).unwrap();
        assert_eq!(logits.dims(), [3, 3]);
        let (tol, what) = if f16 { (5e-2, "f16") } else { (1e-4, "f32") };
        let last = to_vec(m.bert.forward_batch(&b).unwrap().last_hidden_state);
        let e = masked_max_diff(&last, &want, &b.attention_mask, 32);
        assert!(e < tol, "{what}: last_hidden_state max |Δ| = {e}");

        // The same file as a BertModel.
        let (_, enc, report) = bert::load::<B>(dir.path(), &device()).unwrap();
        assert!(report.initialised.is_empty());
        assert_eq!(report.unused, ["embeddings.position_ids"]);
        let again = to_vec(enc.forward_batch(&b).unwrap().last_hidden_state);
        assert_eq!(again, last);
    }
}

#[test]
fn missing_encoder_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    write_plain_checkpoint(dir.path(), false);
    // Drop one layer's query weight by renaming it out of the way.
    let p = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    let needle = b"encoder.layer.1.attention.self.query.weight";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    bytes[at..at + 7].copy_from_slice(b"XXXXXXX");
    std::fs::write(&p, bytes).unwrap();
    let err = bert::load_for_classification::<B>(dir.path(), &device())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.safetensors")
            && err.contains("bert.encoder.layer.1.attention.self_attn.query.weight"),
        "{err}"
    );
}

// ------------------------------------------------------------------------------------------- real weights

fn minilm_dir() -> PathBuf {
    match std::env::var_os("KILN_MINILM_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/kiln-cache/all-MiniLM-L6-v2"),
    }
}

fn rows(t: Tensor<B, 2>) -> Vec<Vec<f32>> {
    kiln_models::attention::rows_f32(t)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn at_dims(rows: &[Vec<f32>], dims: &[usize]) -> Vec<f32> {
    rows.iter()
        .flat_map(|r| dims.iter().map(|&i| r[i]))
        .collect()
}

#[test]
fn all_minilm_l6_v2_matches_sentence_transformers() {
    let dir = minilm_dir();
    if !dir.join("config.json").is_file() {
        println!("skipping: all-MiniLM-L6-v2 not found; run `cargo xtask fetch-minilm`");
        return;
    }
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("minilm/reference.json")).unwrap(),
    )
    .unwrap();
    let (cfg, m, report) = bert::load::<B>(&dir, &device()).unwrap();
    assert_eq!(
        (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size),
        (384, 6, 30522)
    );
    assert_eq!(
        report.unused,
        ["embeddings.position_ids"],
        "the int64 buffer is skipped"
    );
    assert!(report.initialised.is_empty(), "{:?}", report.initialised);

    let tok = Tokenizer::from_dir(&dir).unwrap();
    let max_len = r["max_seq_length"].as_u64().map(|x| x as usize);
    let sentences: Vec<&str> = r["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let want_ids = rows_u32(&r["input_ids"]);
    for (s, want) in sentences.iter().zip(&want_ids) {
        assert_eq!(&tok.encode(s, max_len).unwrap().ids, want, "{s}");
    }
    // The vocab.txt-only pipeline agrees on real text (accents, digits, punctuation).
    let vdir = tempfile::tempdir().unwrap();
    for f in ["vocab.txt", "tokenizer_config.json"] {
        std::fs::copy(dir.join(f), vdir.path().join(f)).unwrap();
    }
    let vtok = Tokenizer::from_dir(vdir.path()).unwrap();
    for (s, want) in sentences.iter().zip(&want_ids) {
        assert_eq!(
            &vtok.encode(s, max_len).unwrap().ids,
            want,
            "vocab.txt: {s}"
        );
    }

    let dims: Vec<usize> = r["dims"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let emb = rows(m.sentence_embeddings(&tok, &sentences, max_len).unwrap());
    let mut worst = max_abs_diff(&at_dims(&emb, &dims), &flat(&r["embeddings_at_dims"]));
    let sim: Vec<f32> = (0..emb.len())
        .flat_map(|i| ((i + 1)..emb.len()).map(move |j| (i, j)))
        .map(|(i, j)| dot(&emb[i], &emb[j]))
        .collect();
    worst = worst.max(max_abs_diff(&sim, &flat(&r["similarity_upper"])));
    for e in &emb {
        assert!((dot(e, e) - 1.0).abs() < 1e-5);
    }

    let texts = |k: &str| -> Vec<&str> {
        r[k].as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect()
    };
    let q = rows(
        m.sentence_embeddings(&tok, &texts("queries"), max_len)
            .unwrap(),
    );
    let d = rows(
        m.sentence_embeddings(&tok, &texts("documents"), max_len)
            .unwrap(),
    );
    worst = worst.max(max_abs_diff(
        &at_dims(&q, &dims),
        &flat(&r["query_embeddings_at_dims"]),
    ));
    worst = worst.max(max_abs_diff(
        &at_dims(&d, &dims),
        &flat(&r["document_embeddings_at_dims"]),
    ));
    let scores: Vec<Vec<f32>> = q
        .iter()
        .map(|qi| d.iter().map(|dj| dot(qi, dj)).collect())
        .collect();
    worst = worst.max(max_abs_diff(&scores.concat(), &flat(&r["scores"])));
    let ranking: Vec<Vec<u32>> = scores
        .iter()
        .map(|s| {
            let mut idx: Vec<u32> = (0..s.len() as u32).collect();
            idx.sort_by(|&a, &b| s[b as usize].total_cmp(&s[a as usize]));
            idx
        })
        .collect();
    println!("all-MiniLM-L6-v2: max |Δ| vs sentence-transformers = {worst:e}");
    assert!(worst < 1e-4, "max |Δ| = {worst}");
    assert_eq!(ranking, rows_u32(&r["ranking"]));

    // The plain BertModel checkpoint loads into the classifier with a fresh head, reported as such.
    let (_, c, report) = bert::load_for_classification::<B>(&dir, &device()).unwrap();
    assert_eq!(report.initialised, ["classifier.bias", "classifier.weight"]);
    assert_eq!(report.unused, ["bert.embeddings.position_ids"]);
    let enc = tok.encode(sentences[0], max_len).unwrap();
    let logits = c
        .forward_batch(&BertBatch::from_encodings(&[enc], 0).unwrap())
        .unwrap();
    assert_eq!(logits.dims(), [1, 2]);
}
