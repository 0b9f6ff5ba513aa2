//! Seq2seq scoring and rank classification against transformers / peft
//! (fixtures/reference/seq2seq_scores.json, from fixtures/generate_seq2seq_scores.py), and causal scoring with a
//! prompt / prefix adapter against peft's logits.

use kiln_models::auto::{CausalPipeline, Seq2SeqPipeline};
use kiln_models::prompt::PromptModel;
use kiln_models::prompt_seq2seq::Seq2SeqPromptModel;
use kiln_models::scoring::{rank_choices, score_seq2seq, Seq2SeqScores};

use crate::common::*;

fn check(got: &Seq2SeqScores, want: &serde_json::Value, what: &str) {
    assert_eq!(got.ids, u32s(&want["target_ids"]), "{what}");
    assert_eq!(got.source_ids, u32s(&want["source_ids"]), "{what}");
    let d = max_abs_diff(&got.logprobs, &flat(&want["logprobs"]));
    assert!(d < 1e-4, "{what}: logprobs differ by {d}");
    let sum = want["sum"].as_f64().unwrap() as f32;
    assert!(
        (got.sum - sum).abs() < 1e-3,
        "{what}: sum {} vs {sum}",
        got.sum
    );
    let logits: Vec<f32> = got.logits.as_ref().unwrap().concat();
    let d = max_abs_diff(&logits, &flat(&want["logits"]));
    assert!(d < 1e-4, "{what}: logits differ by {d}");
}

#[test]
fn seq2seq_scores_match_transformers_and_peft() {
    let r = reference("seq2seq_scores");
    for case in r["cases"].as_array().unwrap() {
        let model = case["model"].as_str().unwrap();
        let adapter = case["adapter"].as_str();
        let what = format!("{model} + {adapter:?}");
        let pipe = Seq2SeqPipeline::<B>::load(fixtures().join(model).to_str().unwrap(), &device())
            .unwrap();
        let start = pipe.generation.decoder_start_token_id.unwrap();
        let (src, tgt) = (u32s(&case["source_ids"]), u32s(&case["target_ids"]));
        // The tokenizer gives the ids transformers' tokenizer gave.
        assert_eq!(
            pipe.tokenizer
                .encode(case["source"].as_str().unwrap(), None)
                .unwrap()
                .ids,
            src
        );
        assert_eq!(
            pipe.tokenizer
                .encode(case["target"].as_str().unwrap(), None)
                .unwrap()
                .ids,
            tgt
        );
        let got = match adapter {
            None => score_seq2seq(&pipe.model, &src, &tgt, start, true),
            Some(a) if a.contains("lora") => {
                let m = kiln_peft::LoraModel::from_pretrained(
                    pipe.model,
                    &fixtures().join("peft").join(a),
                    false,
                )
                .unwrap()
                .model;
                score_seq2seq(&m, &src, &tgt, start, true)
            }
            Some(a) => {
                let m = Seq2SeqPromptModel::from_pretrained(
                    pipe.model,
                    &fixtures().join("peft").join(a),
                    false,
                )
                .unwrap();
                score_seq2seq(&m, &src, &tgt, start, true)
            }
        }
        .unwrap();
        check(&got, case, &what);
    }
}

#[test]
fn rank_classification_matches_transformers_choice_scores() {
    let r = reference("seq2seq_scores");
    let c = &r["choices"][0];
    let pipe =
        Seq2SeqPipeline::<B>::load(fixtures().join("t5").to_str().unwrap(), &device()).unwrap();
    let prompt = c["template"]
        .as_str()
        .unwrap()
        .replace("{context}", c["context"].as_str().unwrap())
        .replace("{question}", c["question"].as_str().unwrap());
    let src = pipe.tokenizer.encode(&prompt, None).unwrap().ids;
    let want = c["scores"].as_array().unwrap();
    let targets: Vec<Vec<u32>> = want.iter().map(|w| u32s(&w["target_ids"])).collect();
    for (w, t) in want.iter().zip(&targets) {
        assert_eq!(
            &pipe
                .tokenizer
                .encode(w["choice"].as_str().unwrap(), None)
                .unwrap()
                .ids,
            t
        );
    }
    let got = rank_choices(
        &pipe.model,
        &src,
        &targets,
        pipe.generation.decoder_start_token_id.unwrap(),
    )
    .unwrap();
    for ((sum, mean), w) in got.iter().zip(want) {
        assert!(
            (sum - w["sum"].as_f64().unwrap() as f32).abs() < 1e-3,
            "{sum} vs {}",
            w["sum"]
        );
        assert!(
            (mean - w["mean"].as_f64().unwrap() as f32).abs() < 1e-4,
            "{mean} vs {}",
            w["mean"]
        );
    }
}

/// Causal scoring with a prompt / prefix adapter: the log-probabilities peft's logits give for the real tokens.
#[test]
fn causal_prompt_scores_follow_peft_logits() {
    for name in ["gpt2-prompt", "gpt2-prefix", "opt-prefix"] {
        let dir = fixtures().join("peft").join(name);
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let base = if name.starts_with("gpt2") {
            "gpt2"
        } else {
            "opt"
        };
        let pipe =
            CausalPipeline::<B>::load(fixtures().join(base).to_str().unwrap(), &device()).unwrap();
        let pm = PromptModel::from_pretrained(pipe.model, &dir, false).unwrap();
        let ids = u32s(&r["input_ids"][0]);
        let got = pm.score_tokens(&ids, false).unwrap();
        // peft's logits for row 0: [t, vocab], t = n + s for prompt tuning (virtual positions first), s for prefix.
        let logits = flat(&r["logits"][0]);
        let s = ids.len();
        let v = logits.len() / r["logits"][0].as_array().unwrap().len();
        let t = logits.len() / v;
        let rows: Vec<&[f32]> = (t - s..t).map(|i| &logits[i * v..(i + 1) * v]).collect();
        let want: Vec<f32> = (1..s)
            .map(|i| {
                let row = rows[i - 1];
                let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f32>().ln();
                row[ids[i] as usize] - lse
            })
            .collect();
        let d = max_abs_diff(&got.logprobs, &want);
        assert!(d < 1e-4, "{name}: {d}");
    }
}
