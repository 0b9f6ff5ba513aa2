//! Encoder-decoder models: `kiln zero-shot`, `kiln summarize`.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use crate::backend::{self, Inference};

use super::*;

#[derive(Args, Debug)]
pub struct ZeroShotArgs {
    #[command(flatten)]
    pub model: ModelArg,
    #[arg(long, required_unless_present = "input", conflicts_with = "input")]
    pub context: Option<String>,
    #[arg(long, required_unless_present = "input", conflicts_with = "input")]
    pub question: Option<String>,
    /// JSONL with `context` and `question` fields; prints one JSON answer per line.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// The prompt; `{context}` and `{question}` are replaced.
    #[arg(long, default_value = "context: {context} question: {question}")]
    pub template: String,
    /// Rank classification, as T0 is evaluated: score each answer choice (`yes|no|maybe`) as the target given
    /// the prompt and answer with the most likely one, reporting every choice's score; a JSONL `choices` field
    /// (a list, or a `|`-separated string) overrides it per line. No generation.
    #[arg(long)]
    pub choices: Option<String>,
    /// With answer choices (--choices or JSONL `choices`): rank by the mean log-probability per target token
    /// instead of the sum.
    #[arg(long)]
    pub length_normalize: bool,
    #[command(flatten)]
    pub gen: GenArgs,
    #[arg(long)]
    pub json: bool,
}

pub fn zero_shot(a: ZeroShotArgs) -> Res {
    a.gen.precheck()?;
    if a.choices.is_some() && a.gen.any_set() {
        return Err("--choices ranks the answer choices by likelihood; generation flags have no effect with it".into());
    }
    let split = |c: &str| -> Vec<String> { c.split('|').map(|x| x.trim().to_string()).collect() };
    let device = backend::device()?;
    let pipe = kiln_models::auto::Seq2SeqPipeline::<Inference>::load(&a.model.spec(), &device)
        .map_err(s)?;
    // The seed's T0 settings: beam 5, max length 50.
    let mut base = pipe.generation.clone();
    base.num_beams = 5;
    let mut gen = a.gen.clone();
    if gen.max_new_tokens.is_none() {
        gen.max_new_tokens = Some(49);
    }
    let cfg = apply_gen_flags(&gen, base)?;
    let rows: Vec<(String, String, Option<Vec<String>>)> = match &a.input {
        Some(p) => read_jsonl(p)?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let choices = match v.get("choices") {
                    None | Some(serde_json::Value::Null) => a.choices.as_deref().map(split),
                    Some(serde_json::Value::String(c)) => Some(split(c)),
                    Some(serde_json::Value::Array(xs)) => Some(
                        xs.iter()
                            .map(|x| x.as_str().map(str::to_string))
                            .collect::<Option<Vec<_>>>()
                            .ok_or_else(|| {
                                format!("{} line {}: `choices` must be strings", p.display(), i + 1)
                            })?,
                    ),
                    Some(_) => {
                        return Err(format!(
                        "{} line {}: `choices` must be a list of strings or a `|`-separated string",
                        p.display(),
                        i + 1
                    ))
                    }
                };
                Ok((
                    field(v, "context", p, i + 1)?,
                    field(v, "question", p, i + 1)?,
                    choices,
                ))
            })
            .collect::<Result<_, String>>()?,
        None => vec![(
            a.context.clone().unwrap_or_default(),
            a.question.clone().unwrap_or_default(),
            a.choices.as_deref().map(split),
        )],
    };
    let ranking = rows.iter().any(|(_, _, ch)| ch.is_some());
    if ranking && a.gen.any_set() {
        return Err(
            "answer choices are ranked by likelihood; generation flags have no effect with them"
                .into(),
        );
    }
    if a.length_normalize && !ranking {
        return Err(
            "--length-normalize applies to answer choices (--choices or a JSONL `choices` field)"
                .into(),
        );
    }
    for (c, q, choices) in &rows {
        for (name, value) in [("{context}", c), ("{question}", q)] {
            if !value.is_empty() && !a.template.contains(name) {
                return Err(format!(
                    "--template has no {name}: the {} given would be ignored",
                    name.trim_matches(['{', '}'])
                ));
            }
        }
        let prompt = a.template.replace("{context}", c).replace("{question}", q);
        if let Some(choices) = choices {
            if choices.is_empty() || choices.iter().any(|x| x.is_empty()) {
                return Err(format!("empty answer choice in {choices:?}"));
            }
            let (ids, _, truncated) = pipe
                .encode_right_padded(&[&prompt], Some(1024))
                .map_err(s)?;
            if truncated > 0 {
                eprintln!("warning: input truncated to the model's maximum source length");
            }
            let start = pipe.generation.decoder_start().map_err(s)?;
            let targets = choices
                .iter()
                .map(|x| pipe.tokenizer.encode(x, None).map(|e| e.ids))
                .collect::<Result<Vec<_>, _>>()
                .map_err(s)?;
            let scores = kiln_models::scoring::rank_choices(&pipe.model, &ids[0], &targets, start)
                .map_err(s)?;
            let key = |(sum, mean): (f32, f32)| if a.length_normalize { mean } else { sum };
            let best = (0..choices.len())
                .max_by(|&i, &j| key(scores[i]).total_cmp(&key(scores[j])).then(j.cmp(&i)))
                .unwrap_or(0);
            let per: Vec<serde_json::Value> = choices
                .iter()
                .zip(&scores)
                .map(|(ch, &(sum, mean))| json!({"choice": ch, "score": sum, "mean": mean}))
                .collect();
            if a.json || a.input.is_some() {
                println!(
                    "{}",
                    json!({"context": c, "question": q, "answer": choices[best], "choices": per})
                );
            } else {
                println!("{}", choices[best]);
                for (ch, &(sum, mean)) in choices.iter().zip(&scores) {
                    println!("  {ch}: log-prob {sum:.4} (mean {mean:.4})");
                }
            }
            continue;
        }
        let (ids, mask, truncated) = pipe
            .encode_right_padded(&[&prompt], Some(1024))
            .map_err(s)?;
        if truncated > 0 {
            eprintln!("warning: input truncated to the model's maximum source length");
        }
        let out =
            kiln_models::seq2seq::generate(&pipe.model, &ids, &mask, &cfg, None).map_err(s)?;
        for w in &out.warnings {
            eprintln!("warning: {w}");
        }
        let seqs = returned_sequences(&out, &pipe.tokenizer)?;
        if a.json || a.input.is_some() {
            println!(
                "{}",
                json!({"context": c, "question": q, "answer": seqs[0]["text"], "sequences": seqs})
            );
        } else {
            print_sequences(&seqs);
        }
    }
    Ok(())
}

/// Every sequence `generate` returned for one input (`num_return_sequences` of them), as
/// `{ids, text, score}` — `score` is beam search's length-penalised `sequences_scores` (null otherwise).
fn returned_sequences(
    out: &kiln_models::generation::GenerateOutput,
    tok: &kiln_models::tokenizer::Tokenizer,
) -> Result<Vec<serde_json::Value>, String> {
    out.sequences
        .iter()
        .enumerate()
        .map(|(i, ids)| {
            let text = tok.decode(ids, true).map_err(s)?;
            let score = out.sequences_scores.as_ref().map(|v| v[i]);
            Ok(json!({"ids": ids, "text": text.trim(), "score": score}))
        })
        .collect()
}

/// One line per returned sequence: the text alone when there is one, numbered with its score otherwise.
fn print_sequences(seqs: &[serde_json::Value]) {
    if seqs.len() == 1 {
        println!("{}", seqs[0]["text"].as_str().unwrap_or_default());
        return;
    }
    for (j, sq) in seqs.iter().enumerate() {
        let text = sq["text"].as_str().unwrap_or_default();
        match sq["score"].as_f64() {
            Some(sc) => println!("{}. [{sc:.4}] {text}", j + 1),
            None => println!("{}. {text}", j + 1),
        }
    }
}

#[derive(Args, Debug)]
pub struct SummarizeArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// A text file with one article, or a JSONL file with an `article` field per line.
    #[arg(long)]
    pub input: PathBuf,
    /// A PEFT adapter directory: LoRA, or prompt / prefix tuning (`SEQ_2_SEQ_LM`).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Source tokens kept (longer articles are truncated, with a warning).
    #[arg(long, default_value_t = 1024)]
    pub max_source_length: usize,
    #[command(flatten)]
    pub gen: GenArgs,
    #[arg(long)]
    pub json: bool,
}

pub fn summarize(a: SummarizeArgs) -> Res {
    a.gen.precheck()?;
    let device = backend::device()?;
    let mut pipe = kiln_models::auto::Seq2SeqPipeline::<Inference>::load(&a.model.spec(), &device)
        .map_err(s)?;
    let prompt_model = match a.adapter.as_ref() {
        Some(dir) if is_prompt_adapter(dir)? => Some(
            kiln_models::prompt_seq2seq::Seq2SeqPromptModel::from_pretrained(
                pipe.model.clone(),
                dir,
                false,
            )
            .map_err(s)?,
        ),
        _ => {
            pipe.model = with_adapter(pipe.model, a.adapter.as_ref())?;
            None
        }
    };
    // Prompt tuning puts its virtual tokens in front of the source: keep them within BART's positions.
    let mut max_source = a.max_source_length;
    if let (Some(pm), Some(limit)) = (&prompt_model, pipe.max_source_positions) {
        if pm.config.method == kiln_peft::PromptMethod::PromptTuning {
            max_source = max_source.min(limit.saturating_sub(pm.num_virtual_tokens()));
        }
    }
    let cfg = apply_gen_flags(&a.gen, pipe.generation.clone())?;
    let articles: Vec<String> = if a
        .input
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "json")
    {
        read_jsonl(&a.input)?
            .iter()
            .enumerate()
            .map(|(i, v)| field(v, "article", &a.input, i + 1))
            .collect::<Result<_, _>>()?
    } else {
        vec![std::fs::read_to_string(&a.input).map_err(|e| format!("{}: {e}", a.input.display()))?]
    };
    for art in &articles {
        let (ids, mask, truncated) = pipe
            .encode_right_padded(&[art], Some(max_source))
            .map_err(s)?;
        if truncated > 0 {
            eprintln!("warning: article truncated to the model's maximum source length");
        }
        let out = match &prompt_model {
            Some(pm) => kiln_models::seq2seq::generate(pm, &ids, &mask, &cfg, None),
            None => kiln_models::seq2seq::generate(&pipe.model, &ids, &mask, &cfg, None),
        }
        .map_err(s)?;
        for w in &out.warnings {
            eprintln!("warning: {w}");
        }
        let seqs = returned_sequences(&out, &pipe.tokenizer)?;
        if a.json {
            println!(
                "{}",
                json!({"summary": seqs[0]["text"], "ids": seqs[0]["ids"], "sequences": seqs})
            );
        } else {
            print_sequences(&seqs);
        }
    }
    Ok(())
}
