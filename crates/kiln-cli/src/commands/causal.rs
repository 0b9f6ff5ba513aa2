//! Decoder-only models: `kiln generate`, `kiln icl`.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use kiln_models::auto::CausalPipeline;
use kiln_models::causal::CausalSession;
use kiln_models::generation::{generate as run_generate, GenerationConfig};
use serde_json::json;

use crate::backend::{self, Inference};

use super::*;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// A PEFT adapter directory: LoRA, or prompt / prefix tuning (peft's PROMPT_TUNING / PREFIX_TUNING).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The prompt; repeat for a batch (left-padded, as transformers does).
    #[arg(long, short = 'p', required = true)]
    pub prompt: Vec<String>,
    #[command(flatten)]
    pub gen: GenArgs,
    /// Print tokens as they are decoded (greedy and sampling).
    #[arg(long)]
    pub stream: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn generate(a: GenerateArgs) -> Res {
    a.gen.precheck()?;
    let device = backend::device()?;
    let mut pipe = CausalPipeline::<Inference>::load(&a.model.spec(), &device).map_err(s)?;
    let prompt_model = match a.adapter.as_ref() {
        Some(dir) if is_prompt_adapter(dir)? => Some(
            kiln_models::prompt::PromptModel::from_pretrained(pipe.model.clone(), dir, false)
                .map_err(s)?,
        ),
        _ => {
            pipe.model = with_adapter(pipe.model, a.adapter.as_ref())?;
            None
        }
    };
    let (cfg, warnings) = a.gen.apply(pipe.generation.clone())?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    let prompts: Vec<&str> = a.prompt.iter().map(String::as_str).collect();
    let (ids, mask) = pipe.encode_left_padded(&prompts).map_err(s)?;
    if a.stream {
        let why = if a.json {
            Some("--json".to_string())
        } else if cfg.num_beams > 1 {
            Some(format!("beam search (num_beams {})", cfg.num_beams))
        } else if prompts.len() > 1 {
            Some("several prompts".to_string())
        } else if cfg.num_return_sequences > 1 {
            Some("--num-return-sequences above 1".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            return Err(format!(
                "--stream prints one greedy or sampled sequence as it is decoded; it cannot be used with {why}"
            ));
        }
    }
    let stream = a.stream;
    let tok = &pipe.tokenizer;
    let mut printed = String::new();
    let mut generated: Vec<u32> = Vec::new();
    let mut cb = |t: &[u32]| {
        generated.push(t[0]);
        if let Ok(text) = tok.decode(&generated, true) {
            if text.len() > printed.len() && text.starts_with(&printed) {
                print!("{}", &text[printed.len()..]);
                let _ = std::io::stdout().flush();
                printed = text;
            }
        }
    };
    if stream {
        print!("{}", prompts[0]);
    }
    let on_token: Option<&mut dyn FnMut(&[u32])> = if stream { Some(&mut cb) } else { None };
    let out = match &prompt_model {
        Some(pm) => run_generate(&mut pm.session(), &ids, &mask, &cfg, on_token),
        None => run_generate(
            &mut CausalSession::new(&pipe.model),
            &ids,
            &mask,
            &cfg,
            on_token,
        ),
    }
    .map_err(s)?;
    for w in &out.warnings {
        eprintln!("warning: {w}");
    }
    if stream {
        println!();
        return Ok(());
    }
    let per = cfg.num_return_sequences;
    let mut results = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let mut seqs = Vec::new();
        for j in 0..per {
            let row = i * per + j;
            let new: Vec<u32> = out.sequences[row][out.prompt_len..].to_vec();
            let text = pipe.tokenizer.decode(&new, true).map_err(s)?;
            let score = out.sequences_scores.as_ref().map(|v| v[row]);
            seqs.push(json!({"ids": new, "text": text, "score": score}));
        }
        results.push(json!({"prompt": p, "prompt_ids": ids[i], "sequences": seqs}));
    }
    if a.json {
        println!(
            "{}",
            json!({"model": a.model.spec(), "backend": backend::name(), "results": results})
        );
    } else {
        for r in &results {
            for sq in r["sequences"].as_array().unwrap() {
                println!(
                    "{}{}",
                    r["prompt"].as_str().unwrap(),
                    sq["text"].as_str().unwrap()
                );
                if results.len() > 1 || per > 1 {
                    println!("---");
                }
            }
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct IclArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// JSONL demonstrations with `input` and `output` fields.
    #[arg(long)]
    pub examples: PathBuf,
    #[arg(long, required = true)]
    pub input: Vec<String>,
    /// Classify by label likelihood among these (comma-separated) instead of free generation.
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// New tokens generated per answer (default 5); generation only, not with --labels.
    #[arg(long, conflicts_with = "labels")]
    pub max_new_tokens: Option<usize>,
    #[arg(long)]
    pub json: bool,
}

pub fn icl(a: IclArgs) -> Res {
    use kiln_models::icl::{Example, IclTemplate};
    let examples: Vec<Example> = read_jsonl(&a.examples)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_value(v)
                .map_err(|e| format!("{} line {}: {e}", a.examples.display(), i + 1))
        })
        .collect::<Result<_, _>>()?;
    let device = backend::device()?;
    let pipe = CausalPipeline::<Inference>::load(&a.model.spec(), &device).map_err(s)?;
    let t = IclTemplate::default();
    for input in &a.input {
        let mut scores = None;
        let answer = if a.labels.is_empty() {
            let prompt = t.prompt(&examples, input);
            let (ids, mask) = pipe.encode_left_padded(&[&prompt]).map_err(s)?;
            let cfg = GenerationConfig {
                max_new_tokens: Some(a.max_new_tokens.unwrap_or(5)),
                ..pipe.generation.clone()
            };
            let out = run_generate(
                &mut CausalSession::new(&pipe.model),
                &ids,
                &mask,
                &cfg,
                None,
            )
            .map_err(s)?;
            let text = pipe
                .tokenizer
                .decode(&out.sequences[0][out.prompt_len..], true)
                .map_err(s)?;
            t.extract_answer(&text).to_string()
        } else {
            // Rank classification: each label's summed log-probability as the continuation; the best wins.
            let labels: Vec<&str> = a.labels.iter().map(String::as_str).collect();
            let sc = kiln_models::icl::label_scores(
                &pipe.model,
                &pipe.tokenizer,
                &t.prompt(&examples, input),
                &labels,
            )
            .map_err(s)?;
            let best = (0..labels.len())
                .max_by(|&i, &j| sc[i].total_cmp(&sc[j]).then(j.cmp(&i)))
                .unwrap_or(0);
            scores = Some(
                labels
                    .iter()
                    .zip(&sc)
                    .map(|(l, v)| json!({"label": l, "score": v}))
                    .collect::<Vec<_>>(),
            );
            labels[best].to_string()
        };
        if a.json {
            println!(
                "{}",
                json!({"input": input, "answer": answer, "scores": scores})
            );
        } else {
            println!("{answer}\t{input}");
        }
    }
    Ok(())
}
