use kiln_models::causal::CausalSession;
use kiln_models::generation::{generate, GenerationConfig};
use kiln_models::icl::{classify, label_scores, Example, IclTemplate};
use kiln_models::opt;
use kiln_models::tokenizer::Tokenizer;

use crate::common::*;

fn examples() -> Vec<Example> {
    let text = std::fs::read_to_string(fixtures().join("samples/icl_examples.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn k_shot_prompts_label_likelihoods_and_completions_match_transformers() {
    let dir = fixtures().join("opt");
    let (_, m, _) = opt::load::<B>(&dir, &device()).unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let r = reference("opt-icl");
    let t = IclTemplate::default();
    let ex = examples();
    let cases = r["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for c in cases {
        let input = c["input"].as_str().unwrap();
        let prompt = t.prompt(&ex, input);
        assert_eq!(prompt, c["prompt"].as_str().unwrap());
        let ids = tok.encode(&prompt, None).unwrap().ids;
        assert_eq!(ids, u32s(&c["prompt_ids"]));
        let scores = label_scores(&m, &tok, &prompt, &["positive", "negative"]).unwrap();
        for (s, l) in scores.iter().zip(["positive", "negative"]) {
            let want = c["label_logprobs"][l].as_f64().unwrap() as f32;
            assert!((s - want).abs() < 1e-3, "{input}/{l}: {s} vs {want}");
        }
        let best = classify(&m, &tok, &t, &ex, input, &["positive", "negative"]).unwrap();
        assert_eq!(best, if scores[0] > scores[1] { 0 } else { 1 });
        let cfg = GenerationConfig {
            max_new_tokens: Some(5),
            pad_token_id: Some(1),
            eos_token_id: vec![2],
            ..Default::default()
        };
        let out = generate(
            &mut CausalSession::new(&m),
            &[ids.clone()],
            &[vec![1; ids.len()]],
            &cfg,
            None,
        )
        .unwrap();
        assert_eq!(
            out.sequences[0][ids.len()..].to_vec(),
            u32s(&c["greedy"]),
            "{input}"
        );
    }
}
