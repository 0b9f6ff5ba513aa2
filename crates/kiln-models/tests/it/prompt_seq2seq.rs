//! Prompt tuning and prefix tuning of BART and T5 against Hugging Face peft 0.21.2: the fixture adapters made by
//! fixtures/peft/generate_seq2seq.py load with peft's logits (padded batch), decode greedily as peft's forward does,
//! save in peft's layout (and load back), initialise from text as peft does, and train only the prompt.

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use kiln_models::attention::ids_tensor;
use kiln_models::auto::Seq2SeqModel;
use kiln_models::generation::GenerationConfig;
use kiln_models::prompt_seq2seq::Seq2SeqPromptModel;
use kiln_models::seq2seq::generate;
use kiln_models::tokenizer::Tokenizer;
use kiln_peft::PromptLearningConfig;
use serde_json::Value;

use crate::common::*;

const ADAPTERS: [&str; 6] = [
    "bart-prompt",
    "bart-prompt-text",
    "bart-prefix",
    "bart-prefix-proj",
    "t5-prompt",
    "t5-prefix",
];

fn dir(name: &str) -> PathBuf {
    fixtures().join("peft").join(name)
}

fn reference_of(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir(name).join("reference.json")).unwrap())
        .unwrap()
}

fn base<BB: Backend>(name: &str, device: &BB::Device) -> Seq2SeqModel<BB> {
    Seq2SeqModel::load(&fixtures().join(name), device)
        .unwrap()
        .0
}

fn logits_of<BB: Backend>(m: &Seq2SeqPromptModel<BB>, r: &Value) -> Vec<f32> {
    m.forward(
        &rows_u32(&r["input_ids"]),
        &rows_u8(&r["attention_mask"]),
        &rows_u32(&r["decoder_input_ids"]),
    )
    .unwrap()
    .into_data()
    .convert::<f32>()
    .to_vec()
    .unwrap()
}

#[test]
fn fixture_prompts_match_peft_logits_and_greedy_decoding() {
    for name in ADAPTERS {
        let r = reference_of(name);
        let b = r["base"].as_str().unwrap();
        let m = Seq2SeqPromptModel::from_pretrained(base::<B>(b, &device()), &dir(name), false)
            .unwrap();
        let d = max_abs_diff(&logits_of(&m, &r), &flat(&r["logits"]));
        eprintln!(
            "{name}: max |Δ| vs peft {d:.2e} (the prompt moves the logits by {})",
            r["max_abs_delta_vs_base"]
        );
        assert!(d < 1e-4, "{name}: max |Δ| = {d}");
        assert!(r["max_abs_delta_vs_base"].as_f64().unwrap() > 0.1);

        // Greedy decoding through the cached session equals peft's repeated full forwards.
        let start = rows_u32(&r["decoder_input_ids"])[0][0];
        let cfg = GenerationConfig {
            max_new_tokens: Some(5),
            decoder_start_token_id: Some(start),
            ..Default::default()
        };
        let out = generate(
            &m,
            &rows_u32(&r["input_ids"]),
            &rows_u8(&r["attention_mask"]),
            &cfg,
            None,
        )
        .unwrap();
        assert_eq!(
            out.sequences,
            rows_u32(&r["generate"]["greedy_forward"]),
            "{name}: greedy decoding"
        );
    }
}

#[test]
fn text_init_copies_the_tokenized_text_embeddings_as_peft() {
    let r = reference_of("bart-prompt-text");
    let tok = Tokenizer::from_dir(&fixtures().join("bart")).unwrap();
    let ids = tok.encode("the cat", None).unwrap().ids;
    let want: Vec<u32> = r["init_token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(
        kiln_peft::prompt::text_init_ids(&ids, 6),
        want,
        "tokenized init text"
    );
    let cfg = PromptLearningConfig::prompt_tuning(3).with_text_init("the cat", "fixtures/bart");
    let m = Seq2SeqPromptModel::inject(base::<B>("bart", &device()), cfg, Some(&ids)).unwrap();
    let got: Vec<f32> = m.prompt.output().into_data().to_vec().unwrap();
    assert!(max_abs_diff(&got, &flat(&r["init_embeddings"])) < 1e-6);
    assert_eq!(
        m.trainable_parameters(),
        r["print_trainable_parameters"].as_str().unwrap()
    );
}

#[test]
fn trainable_parameter_lines_match_peft() {
    for (name, cfg) in [
        ("bart-prompt", PromptLearningConfig::prompt_tuning(3)),
        ("bart-prefix", PromptLearningConfig::prefix_tuning(3)),
        (
            "bart-prefix-proj",
            PromptLearningConfig::prefix_tuning(3).with_prefix_projection(16),
        ),
        ("t5-prompt", PromptLearningConfig::prompt_tuning(3)),
        ("t5-prefix", PromptLearningConfig::prefix_tuning(3)),
    ] {
        let r = reference_of(name);
        let m = Seq2SeqPromptModel::inject(
            base::<B>(r["base"].as_str().unwrap(), &device()),
            cfg,
            None,
        )
        .unwrap();
        assert_eq!(
            m.trainable_parameters(),
            r["print_trainable_parameters"].as_str().unwrap(),
            "{name}"
        );
    }
}

#[test]
fn save_load_round_trip_in_peft_layout() {
    for name in ADAPTERS {
        let r = reference_of(name);
        let b = r["base"].as_str().unwrap();
        let m = Seq2SeqPromptModel::from_pretrained(base::<B>(b, &device()), &dir(name), false)
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        m.save_pretrained(tmp.path()).unwrap();
        assert_same_tensors(&dir(name), tmp.path(), 1e-6);
        let (a, b2) = (adapter_config(&dir(name)), adapter_config(tmp.path()));
        for k in [
            "peft_type",
            "task_type",
            "num_virtual_tokens",
            "num_transformer_submodules",
            "num_layers",
            "num_attention_heads",
            "token_dim",
        ] {
            assert_eq!(a[k], b2[k], "{name}: {k}");
        }
        let back = Seq2SeqPromptModel::from_pretrained(base::<B>(b, &device()), tmp.path(), false)
            .unwrap();
        assert!(max_abs_diff(&logits_of(&back, &r), &flat(&r["logits"])) < 1e-4);
    }
}

#[test]
fn adapters_for_another_model_are_rejected() {
    // A prefix for another width (token_dim / num_layers as another model would record them).
    for (key, val) in [("token_dim", 48), ("num_layers", 3)] {
        let tmp = tempfile::tempdir().unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(dir("bart-prefix").join(f), tmp.path().join(f)).unwrap();
        }
        let p = tmp.path().join("adapter_config.json");
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        v[key] = serde_json::json!(val);
        std::fs::write(&p, v.to_string()).unwrap();
        let e = Seq2SeqPromptModel::from_pretrained(base::<B>("t5", &device()), tmp.path(), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("adapter_config.json") && e.contains(key), "{e}");
    }
    let causal = kiln_models::auto::CausalModel::<B>::load(&fixtures().join("gpt2"), &device())
        .unwrap()
        .0;
    let e = kiln_models::prompt::PromptModel::from_pretrained(causal, &dir("bart-prompt"), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("SEQ_2_SEQ_LM"), "{e}");
    // A causal prompt on BART.
    let e = Seq2SeqPromptModel::from_pretrained(
        base::<B>("bart", &device()),
        &dir("gpt2-prompt"),
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("SEQ_2_SEQ_LM"), "{e}");
}

type AD = Autodiff<B>;

#[test]
fn adamw_trains_only_the_prompt_and_the_base_stays_bit_identical() {
    let src = vec![
        vec![17u32, 93, 150, 41, 7, 188],
        vec![5, 120, 33, 201, 64, 12],
    ];
    let mask = vec![vec![1u8; 6]; 2];
    let dec = vec![vec![2u32, 12, 99, 45, 8], vec![2, 60, 7, 130, 9]];
    for (b, cfg) in [
        ("bart", PromptLearningConfig::prompt_tuning(3)),
        ("bart", PromptLearningConfig::prefix_tuning(3)),
        (
            "bart",
            PromptLearningConfig::prefix_tuning(3).with_prefix_projection(16),
        ),
        ("t5", PromptLearningConfig::prompt_tuning(3)),
        ("t5", PromptLearningConfig::prefix_tuning(3)),
    ] {
        let dev = device();
        let mut m = Seq2SeqPromptModel::<AD>::inject(base::<AD>(b, &dev), cfg, None).unwrap();
        let prompt_before: Vec<f32> = m.prompt.valid().output().into_data().to_vec().unwrap();
        let loss_of = |m: &Seq2SeqPromptModel<AD>| {
            let l = m.forward(&src, &mask, &dec).unwrap();
            let [bb, t, v] = l.dims();
            let pred = l.slice([0..bb, 0..t - 1, 0..v]).reshape([bb * (t - 1), v]);
            let tgt = ids_tensor::<AD>(&dec, &dev)
                .slice([0..bb, 1..t])
                .reshape([bb * (t - 1)]);
            burn::nn::loss::CrossEntropyLossConfig::new()
                .init(&dev)
                .forward(pred, tgt)
        };
        let mut optim = AdamWConfig::new().init::<AD, Seq2SeqPromptModel<AD>>();
        let first: f32 = loss_of(&m).into_scalar();
        let mut last = first;
        for _ in 0..8 {
            let loss = loss_of(&m);
            last = loss.clone().into_scalar();
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            assert_eq!(
                grads.len(),
                if m.prompt.transform.is_some() { 5 } else { 1 },
                "only the prompt has gradients"
            );
            m = optim.step(0.05, m, grads);
        }
        eprintln!(
            "{b} {}: loss {first:.4} → {last:.4}",
            m.config.method.peft_type()
        );
        assert!(last < first - 0.05, "{b}: loss {first} → {last}");
        let prompt_after: Vec<f32> = m.prompt.valid().output().into_data().to_vec().unwrap();
        assert_ne!(prompt_before, prompt_after, "the prompt moved");
        // Every base parameter is bit-identical (compare the records tensor by tensor).
        let after = m.model.valid();
        let before = base::<B>(b, &dev);
        let mut visitor = Collect(vec![]);
        after.visit(&mut visitor);
        let a = std::mem::take(&mut visitor.0);
        before.visit(&mut visitor);
        assert_eq!(a.len(), visitor.0.len());
        assert!(a == visitor.0, "{b}: base weights changed");
    }
}

/// Sum of log-probabilities of `seq[1..]` under teacher forcing (full forward, no cache).
fn sequence_logprob(m: &Seq2SeqPromptModel<B>, src: &[u32], mask: &[u8], seq: &[u32]) -> f32 {
    let l = m
        .forward(
            &[src.to_vec()],
            &[mask.to_vec()],
            &[seq[..seq.len() - 1].to_vec()],
        )
        .unwrap();
    let [_, t, v] = l.dims();
    let lp: Vec<f32> = burn::tensor::activation::log_softmax(l.reshape([t, v]), 1)
        .into_data()
        .to_vec()
        .unwrap();
    (0..t).map(|i| lp[i * v + seq[i + 1] as usize]).sum()
}

#[test]
fn beam_search_with_a_prompt_scores_what_full_forwards_score() {
    // Beam search reorders the per-row prefix cache; with length_penalty 0 and no EOS a beam's score is the
    // summed log-probability of its tokens, which a full forward without cache must reproduce.
    for name in ["bart-prefix", "t5-prefix", "bart-prompt"] {
        let r = reference_of(name);
        let b = r["base"].as_str().unwrap();
        let m = Seq2SeqPromptModel::from_pretrained(base::<B>(b, &device()), &dir(name), false)
            .unwrap();
        let src = rows_u32(&r["input_ids"]);
        let mask = rows_u8(&r["attention_mask"]);
        let cfg = GenerationConfig {
            max_new_tokens: Some(5),
            decoder_start_token_id: Some(rows_u32(&r["decoder_input_ids"])[0][0]),
            num_beams: 3,
            num_return_sequences: 3,
            length_penalty: 0.0,
            ..Default::default()
        };
        let out = generate(&m, &src, &mask, &cfg, None).unwrap();
        let scores = out.sequences_scores.clone().unwrap();
        assert_eq!(out.sequences.len(), 6);
        for (i, seq) in out.sequences.iter().enumerate() {
            let item = i / 3;
            let lp = sequence_logprob(&m, &src[item], &mask[item], seq);
            assert!(
                (lp - scores[i]).abs() < 1e-3,
                "{name} beam {i}: {lp} vs {}",
                scores[i]
            );
        }
        // The best beam is at least as likely as the greedy path.
        for item in 0..2 {
            let greedy = rows_u32(&r["generate"]["greedy_forward"])[item].clone();
            let g = sequence_logprob(&m, &src[item], &mask[item], &greedy);
            assert!(
                scores[item * 3] >= g - 1e-4,
                "{name}: beam {} < greedy {g}",
                scores[item * 3]
            );
        }
    }
}

/// Writes kiln-made encoder-decoder adapters (prompt tuning, prefix tuning with and without projection, LoRA) and
/// kiln's logits for fixtures/peft/check_kiln_adapter.py into $KILN_PEFT_EXPORT (a temp dir otherwise); each is
/// checked to reload in kiln to the same logits.
#[test]
fn export_kiln_seq2seq_adapters_for_the_python_check() {
    let keep = std::env::var_os("KILN_PEFT_EXPORT").map(PathBuf::from);
    let tmp = tempfile::tempdir().unwrap();
    let root = keep.unwrap_or_else(|| tmp.path().to_path_buf());
    let r = reference_of("bart-prefix");
    let rt = reference_of("t5-prefix");
    let write_ref = |d: &std::path::Path, base: &str, r: &Value, logits: Vec<f32>| {
        let v = serde_json::json!({
            "base": base, "head": "seq2seq", "input_ids": r["input_ids"],
            "attention_mask": r["attention_mask"], "decoder_input_ids": r["decoder_input_ids"],
            "logits": logits,
        });
        std::fs::write(d.join("reference.json"), v.to_string()).unwrap();
    };
    B::seed(&device(), 11);
    for (name, b, rr, cfg) in [
        (
            "kiln-bart-prompt",
            "bart",
            &r,
            PromptLearningConfig::prompt_tuning(3),
        ),
        (
            "kiln-bart-prefix",
            "bart",
            &r,
            PromptLearningConfig::prefix_tuning(3),
        ),
        (
            "kiln-bart-prefix-proj",
            "bart",
            &r,
            PromptLearningConfig::prefix_tuning(3).with_prefix_projection(16),
        ),
        (
            "kiln-t5-prompt",
            "t5",
            &rt,
            PromptLearningConfig::prompt_tuning(2),
        ),
        (
            "kiln-t5-prefix",
            "t5",
            &rt,
            PromptLearningConfig::prefix_tuning(2),
        ),
    ] {
        let m = Seq2SeqPromptModel::inject(base::<B>(b, &device()), cfg, None).unwrap();
        let d = root.join(name);
        m.save_pretrained(&d).unwrap();
        let logits = logits_of(&m, rr);
        let back = Seq2SeqPromptModel::from_pretrained(base::<B>(b, &device()), &d, false).unwrap();
        assert!(
            max_abs_diff(&logits_of(&back, rr), &logits) < 1e-5,
            "{name}"
        );
        write_ref(&d, b, rr, logits);
    }
    // LoRA on BART (peft's default targets) and T5 (all-linear), random non-zero B.
    for (name, b, rr, targets) in [
        ("kiln-bart-lora", "bart", &r, None),
        ("kiln-t5-lora-all", "t5", &rt, Some("all-linear")),
    ] {
        let mut c = kiln_peft::LoraConfig::new(4, 8.0).with_task_type("SEQ_2_SEQ_LM");
        if let Some(t) = targets {
            c = c.with_target_regex(t);
        }
        c.init_lora_weights = kiln_peft::InitLoraWeights::Bool(false);
        let lm = kiln_peft::LoraModel::inject(base::<B>(b, &device()), c).unwrap();
        let d = root.join(name);
        lm.save_pretrained(&d).unwrap();
        let run = |m: &Seq2SeqModel<B>| -> Vec<f32> {
            let out = match m {
                Seq2SeqModel::Bart(m) => m.forward(
                    &rows_u32(&rr["input_ids"]),
                    &rows_u8(&rr["attention_mask"]),
                    &rows_u32(&rr["decoder_input_ids"]),
                ),
                Seq2SeqModel::T5(m) => m.forward(
                    &rows_u32(&rr["input_ids"]),
                    &rows_u8(&rr["attention_mask"]),
                    &rows_u32(&rr["decoder_input_ids"]),
                ),
            };
            out.unwrap().into_data().to_vec().unwrap()
        };
        let logits = run(&lm.model);
        let back =
            kiln_peft::LoraModel::from_pretrained(base::<B>(b, &device()), &d, false).unwrap();
        assert_eq!(run(&back.model), logits, "{name}");
        write_ref(&d, b, rr, logits);
    }
}

#[test]
fn every_seq2seq_peft_fixture_file_is_listed_and_present() {
    let dir = fixtures().join("peft");
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("MANIFEST-seq2seq.json")).unwrap())
            .unwrap();
    assert_eq!(m["versions"]["peft"], "0.21.2");
    let files = m["files"].as_array().unwrap();
    assert_eq!(
        files.len(),
        (ADAPTERS.len() + 2) * 3,
        "prompts + bart-lora + t5-lora"
    );
    for f in files {
        assert!(dir.join(f.as_str().unwrap()).is_file(), "missing {f}");
    }
}
