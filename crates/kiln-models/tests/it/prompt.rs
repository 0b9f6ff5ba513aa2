//! Prompt tuning and prefix tuning against Hugging Face peft 0.21.2: the fixture adapters in fixtures/peft (made by
//! fixtures/peft/generate_prompt.py) load with peft's logits, decode greedily as peft's forward does, save in peft's
//! layout, and train only the prompt.

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use kiln_models::attention::ids_tensor;
use kiln_models::auto::CausalModel;
use kiln_models::generation::{generate, GenerationConfig};
use kiln_models::prompt::PromptModel;
use kiln_models::tokenizer::Tokenizer;
use kiln_peft::{read_tensors, PromptLearningConfig};
use serde_json::Value;

use crate::common::*;

const ADAPTERS: [&str; 7] = [
    "gpt2-prompt",
    "gpt2-prompt-text",
    "gpt2-prefix",
    "gpt2-prefix-proj",
    "opt-prompt",
    "opt-prefix",
    "opt-prefix-proj",
];

fn dir(name: &str) -> PathBuf {
    fixtures().join("peft").join(name)
}

fn reference_of(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir(name).join("reference.json")).unwrap())
        .unwrap()
}

fn base<BB: Backend>(name: &str, device: &BB::Device) -> CausalModel<BB> {
    CausalModel::load(&fixtures().join(name), device).unwrap().0
}

fn logits(
    m: &PromptModel<B>,
    ids: &[Vec<u32>],
    mask: Option<&[Vec<u8>]>,
) -> (Vec<f32>, [usize; 3]) {
    let l = m.forward(ids_tensor::<B>(ids, &device()), mask);
    let dims = l.dims();
    (l.into_data().to_vec().unwrap(), dims)
}

#[test]
fn fixture_prompts_match_peft_logits_padded_logits_and_greedy_decoding() {
    for name in ADAPTERS {
        let r = reference_of(name);
        let m = PromptModel::from_pretrained(
            base(r["base"].as_str().unwrap(), &device()),
            &dir(name),
            false,
        )
        .unwrap();
        let (got, _) = logits(&m, &rows_u32(&r["input_ids"]), None);
        let d = max_abs_diff(&got, &flat(&r["logits"]));
        eprintln!(
            "{name}: max |Δ| vs peft {d:.2e} (the prompt moves the logits by {})",
            r["max_abs_delta_vs_base"]
        );
        assert!(d < 1e-4, "{name}: max |Δ| = {d}");

        // Left-padded batch: compare every real-token position (and the virtual ones for prompt tuning).
        let p = &r["padded"];
        let mask = rows_u8(&p["attention_mask"]);
        let (got, [b, t, v]) = logits(&m, &rows_u32(&p["input_ids"]), Some(&mask));
        let want = flat(&p["logits"]);
        let s = mask[0].len();
        let mut worst = 0f32;
        for bi in 0..b {
            for ti in 0..t {
                let real = ti < t - s || mask[bi][ti - (t - s)] == 1;
                if real {
                    let o = (bi * t + ti) * v;
                    worst = worst.max(max_abs_diff(&got[o..o + v], &want[o..o + v]));
                }
            }
        }
        eprintln!("{name}: padded batch max |Δ| {worst:.2e}");
        assert!(worst < 1e-4, "{name}: padded max |Δ| = {worst}");

        let g = &r["generate"];
        let prompt = rows_u32(&g["prompt_ids"]);
        let cfg = GenerationConfig {
            max_new_tokens: Some(5),
            ..Default::default()
        };
        let mask = vec![vec![1u8; prompt[0].len()]];
        let out = generate(&mut m.session(), &prompt, &mask, &cfg, None).unwrap();
        assert_eq!(
            out.sequences,
            rows_u32(&g["greedy_forward"]),
            "{name}: greedy decoding"
        );
    }
}

#[test]
fn text_init_copies_the_tokenized_text_embeddings_as_peft() {
    let r = reference_of("gpt2-prompt-text");
    let tok = Tokenizer::from_dir(&fixtures().join("gpt2")).unwrap();
    let ids = tok.encode("the cat!", None).unwrap().ids;
    let cfg = PromptLearningConfig::prompt_tuning(4).with_text_init("the cat!", "fixtures/gpt2");
    let m = PromptModel::inject(base::<B>("gpt2", &device()), cfg, Some(&ids)).unwrap();
    let got: Vec<f32> = m.prompt.output().into_data().to_vec().unwrap();
    assert_eq!(got, flat(&r["init_embeddings"]));
    assert_eq!(
        m.trainable_parameters(),
        r["print_trainable_parameters"].as_str().unwrap()
    );
}

#[test]
fn save_load_round_trip_in_peft_layout() {
    for name in ADAPTERS {
        let r = reference_of(name);
        let b = r["base"].as_str().unwrap();
        let m = PromptModel::from_pretrained(base(b, &device()), &dir(name), false).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        m.save_pretrained(tmp.path()).unwrap();
        // Same keys, shapes and values as peft's file; same config keys and values.
        let ours = read_tensors(&tmp.path().join("adapter_model.safetensors")).unwrap();
        let theirs = read_tensors(&dir(name).join("adapter_model.safetensors")).unwrap();
        assert_eq!(ours, theirs, "{name}");
        let cfg = |p: PathBuf| -> Value {
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
        };
        let (mut a, mut bb) = (
            cfg(tmp.path().join("adapter_config.json")),
            cfg(dir(name).join("adapter_config.json")),
        );
        bb.as_object_mut().unwrap().remove("peft_version");
        a.as_object_mut().unwrap().remove("peft_version");
        assert_eq!(a, bb, "{name}: adapter_config.json");
        let again = PromptModel::from_pretrained(base(b, &device()), tmp.path(), false).unwrap();
        let ids = rows_u32(&r["input_ids"]);
        assert_eq!(logits(&again, &ids, None).0, logits(&m, &ids, None).0);
    }
}

#[test]
fn fresh_prompts_save_with_peft_keys_and_shapes() {
    let cases = [
        ("gpt2", PromptLearningConfig::prompt_tuning(3), vec![3, 32]),
        (
            "opt",
            PromptLearningConfig::prefix_tuning(2),
            vec![2, 2 * 2 * 32],
        ),
        (
            "gpt2",
            PromptLearningConfig::prefix_tuning(5).with_prefix_projection(8),
            vec![5, 2 * 2 * 32],
        ),
    ];
    for (b, cfg, shape) in cases {
        let m = PromptModel::inject(base(b, &device()), cfg, None).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        m.save_pretrained(tmp.path()).unwrap();
        let t = read_tensors(&tmp.path().join("adapter_model.safetensors")).unwrap();
        assert_eq!(t.keys().collect::<Vec<_>>(), vec!["prompt_embeddings"]);
        assert_eq!(t["prompt_embeddings"].shape, shape);
        let c = PromptLearningConfig::load(&tmp.path().join("adapter_config.json")).unwrap();
        assert_eq!(
            (
                c.token_dim,
                c.num_layers,
                c.num_attention_heads,
                c.inference_mode
            ),
            (Some(32), Some(2), Some(4), true)
        );
        // A projected prefix reloads for inference with the same logits, and refuses training like peft.
        let again = PromptModel::from_pretrained(base(b, &device()), tmp.path(), false).unwrap();
        let ids = vec![vec![5u32, 9, 30, 2]];
        let d = max_abs_diff(&logits(&again, &ids, None).0, &logits(&m, &ids, None).0);
        assert!(d < 1e-5, "{d}");
        if m.config.prefix_projection {
            assert!(
                PromptModel::from_pretrained(base::<B>(b, &device()), tmp.path(), true).is_err()
            );
        }
    }
}

#[test]
fn no_prompt_means_bit_identical_logits() {
    // `hidden` is `hidden_from_embeds(input_embeddings(ids))`; the plain forward is unchanged.
    for b in ["gpt2", "opt"] {
        let m = base::<B>(b, &device());
        let r = reference(b);
        for inp in r["inputs"].as_array().unwrap() {
            let t = ids_tensor::<B>(&[u32s(&inp["ids"])], &device());
            let got: Vec<f32> = m.forward(t, None).into_data().to_vec().unwrap();
            assert!(max_abs_diff(&got, &flat(&inp["logits"])) < 1e-4);
        }
    }
}

type AD = Autodiff<B>;

#[test]
fn adamw_trains_only_the_prompt() {
    for cfg in [
        PromptLearningConfig::prompt_tuning(4),
        PromptLearningConfig::prefix_tuning(4).with_prefix_projection(16),
    ] {
        let dev = device();
        let mut m = PromptModel::<AD>::inject(base::<AD>("gpt2", &dev), cfg, None).unwrap();
        let base_before: Vec<f32> = m
            .model
            .valid()
            .forward(ids_tensor::<B>(&[vec![3u32, 4]], &dev), None)
            .into_data()
            .to_vec()
            .unwrap();
        let ids_rows = vec![
            vec![17u32, 93, 250, 41, 7, 388, 12, 99],
            vec![5, 120, 33, 301, 64, 12, 77, 8],
        ];
        let loss_of = |m: &PromptModel<AD>| {
            let ids = ids_tensor::<AD>(&ids_rows, &dev);
            let l = m.token_logits(ids.clone(), None);
            let [b, s, v] = l.dims();
            let pred = l.slice([0..b, 0..s - 1, 0..v]).reshape([b * (s - 1), v]);
            let tgt = ids.slice([0..b, 1..s]).reshape([b * (s - 1)]);
            CrossEntropyLossConfig::new().init(&dev).forward(pred, tgt)
        };
        let mut optim = AdamWConfig::new().init::<AD, PromptModel<AD>>();
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
            "{}: loss {first:.4} → {last:.4}",
            m.config.method.peft_type()
        );
        assert!(last < first - 0.05, "loss {first} → {last}");
        let base_after: Vec<f32> = m
            .model
            .valid()
            .forward(ids_tensor::<B>(&[vec![3u32, 4]], &dev), None)
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(base_before, base_after, "base weights unchanged");
    }
}
