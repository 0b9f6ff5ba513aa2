//! The subcommands. Each validates its arguments before loading anything.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use kiln_metrics::aggregate::mean_by_type;
use kiln_metrics::{BootstrapAggregator, RougeScorer};
use kiln_models::auto::{resolve_model, CausalPipeline};
use kiln_models::causal::CausalSession;
use kiln_models::generation::{generate as run_generate, EarlyStopping, GenerationConfig};
use serde_json::json;

use crate::backend::{self, Inference};

type Res = Result<(), String>;

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Where the model comes from.
#[derive(Args, Debug, Clone)]
pub struct ModelArg {
    /// A hub id (e.g. `gpt2`, `facebook/opt-125m`) or a local checkpoint directory.
    #[arg(
        long,
        short = 'm',
        conflicts_with = "model_dir",
        required_unless_present = "model_dir"
    )]
    pub model: Option<String>,
    /// A local checkpoint directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
}

impl ModelArg {
    fn spec(&self) -> String {
        match (&self.model, &self.model_dir) {
            (_, Some(d)) => d.display().to_string(),
            (Some(m), None) => m.clone(),
            (None, None) => unreachable!("clap requires one"),
        }
    }
}

/// Generation settings, named as in transformers' GenerationConfig; unset ones come from the
/// checkpoint's generation_config.json.
#[derive(Args, Debug, Clone, Default)]
pub struct GenArgs {
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    #[arg(long)]
    pub min_new_tokens: Option<usize>,
    #[arg(long)]
    pub do_sample: bool,
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    #[arg(long)]
    pub no_repeat_ngram_size: Option<usize>,
    #[arg(long)]
    pub num_beams: Option<usize>,
    /// true, false or never.
    #[arg(long)]
    pub early_stopping: Option<String>,
    #[arg(long)]
    pub length_penalty: Option<f32>,
    #[arg(long)]
    pub num_return_sequences: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
}

impl GenArgs {
    /// Reject flag values that are wrong whatever the checkpoint's generation_config.json says (num_beams 0,
    /// top_p outside (0, 1], a temperature that is not positive, …), before anything is loaded. The flags are
    /// laid over the defaults with sampling on, which turns off the one check that depends on other fields
    /// (num_return_sequences vs num_beams), so every error here is an error of the flags themselves; that
    /// check runs again on the checkpoint's settings once loaded ([`GenArgs::apply`]).
    pub fn precheck(&self) -> Result<(), String> {
        let base = GenerationConfig {
            do_sample: true,
            ..GenerationConfig::default()
        };
        self.apply(base).map(|_| ())
    }

    /// Overlay the flags on the checkpoint defaults and validate the result.
    pub fn apply(
        &self,
        mut g: GenerationConfig,
    ) -> Result<(GenerationConfig, Vec<String>), String> {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { g.$f = v; } )* };
        }
        set!(
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            no_repeat_ngram_size,
            num_beams,
            length_penalty,
            num_return_sequences,
            seed,
            min_new_tokens
        );
        if let Some(n) = self.max_new_tokens {
            g.max_new_tokens = Some(n);
        }
        if g.max_new_tokens.is_none() {
            g.max_new_tokens = Some(50);
        }
        if self.do_sample {
            g.do_sample = true;
        }
        if let Some(e) = &self.early_stopping {
            g.early_stopping = match e.as_str() {
                "true" => EarlyStopping::True,
                "false" => EarlyStopping::False,
                "never" => EarlyStopping::Never,
                other => {
                    return Err(format!(
                        "--early-stopping must be true, false or never, not `{other}`"
                    ))
                }
            };
        }
        let warnings = g.validate().map_err(s)?;
        Ok((g, warnings))
    }
}

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
    let stream = a.stream
        && !a.json
        && cfg.num_beams == 1
        && prompts.len() == 1
        && cfg.num_return_sequences == 1;
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
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArg,
    #[arg(long, short = 't')]
    pub text: String,
    /// Include the full next-token logits of every position in the JSON.
    #[arg(long)]
    pub logits: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn score(a: ScoreArgs) -> Res {
    let device = backend::device()?;
    let pipe = CausalPipeline::<Inference>::load(&a.model.spec(), &device).map_err(s)?;
    let enc = pipe.tokenizer.encode(&a.text, None).map_err(s)?;
    let sc = kiln_models::scoring::score_tokens(&pipe.model, &enc.ids, a.logits).map_err(s)?;
    if a.json {
        let tokens: Vec<String> = sc
            .ids
            .iter()
            .map(|&i| pipe.tokenizer.decode(&[i], false).unwrap_or_default())
            .collect();
        let mut v = serde_json::to_value(&sc).map_err(s)?;
        v["tokens"] = json!(tokens);
        println!("{v}");
    } else {
        for (i, lp) in sc.logprobs.iter().enumerate() {
            let t = pipe
                .tokenizer
                .decode(&[sc.ids[i + 1]], false)
                .unwrap_or_default();
            println!("{:>6} {:>12.5}  {:?}", sc.ids[i + 1], lp, t);
        }
        println!("perplexity: {:.4}", sc.perplexity);
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct RougeArgs {
    /// Predictions: one per line, or JSONL with `prediction` (and `reference`) fields.
    #[arg(long)]
    pub predictions: PathBuf,
    /// References, one per line (not needed when --predictions is JSONL with `reference`).
    #[arg(long)]
    pub references: Option<PathBuf>,
    #[arg(long)]
    pub stemmer: bool,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "rouge1,rouge2,rougeL,rougeLsum"
    )]
    pub types: Vec<String>,
    /// Bootstrap seed for the confidence intervals.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
    /// Write a bar chart of the F-measures (PNG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

fn read_lines(p: &PathBuf) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(text.lines().map(|l| l.replace("\\n", "\n")).collect())
}

pub fn rouge(a: RougeArgs) -> Res {
    let scorer = RougeScorer::new(a.types.iter(), a.stemmer).map_err(s)?;
    let is_jsonl = a.predictions.extension().is_some_and(|e| e == "jsonl");
    let (preds, refs): (Vec<String>, Vec<String>) = if is_jsonl {
        let text = std::fs::read_to_string(&a.predictions)
            .map_err(|e| format!("{}: {e}", a.predictions.display()))?;
        let mut p = Vec::new();
        let mut r = Vec::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| format!("{} line {}: {e}", a.predictions.display(), i + 1))?;
            let get = |k: &str| {
                v.get(k)
                    .and_then(|x| x.as_str())
                    .map(str::to_string)
                    .ok_or_else(|| {
                        format!(
                            "{} line {}: missing string field `{k}`",
                            a.predictions.display(),
                            i + 1
                        )
                    })
            };
            p.push(get("prediction")?);
            r.push(get("reference")?);
        }
        (p, r)
    } else {
        let refs = a
            .references
            .as_ref()
            .ok_or("--references is required unless --predictions is JSONL")?;
        (read_lines(&a.predictions)?, read_lines(refs)?)
    };
    if preds.len() != refs.len() {
        return Err(format!(
            "{} predictions but {} references",
            preds.len(),
            refs.len()
        ));
    }
    if preds.is_empty() {
        return Err("no examples".into());
    }
    let pairs: Vec<(String, String)> = refs.into_iter().zip(preds).collect();
    let rows = scorer.score_batch(&pairs);
    let mut agg = BootstrapAggregator::new().with_seed(a.seed);
    for r in &rows {
        agg.add_scores(r);
    }
    let ci = agg.aggregate();
    let mean = mean_by_type(&rows);
    if let Some(path) = &a.plot {
        let bars: Vec<(String, f64)> = mean
            .iter()
            .map(|(t, sc)| (t.name().to_string(), sc.fmeasure))
            .collect();
        kiln_train::chart::bar_chart(path, "ROUGE F-measure", &bars).map_err(s)?;
    }
    if a.json {
        println!(
            "{}",
            json!({"n": pairs.len(), "use_stemmer": a.stemmer, "mean": mean, "bootstrap": ci})
        );
    } else {
        println!(
            "{:<10} {:>9} {:>9} {:>9}   F 95% CI",
            "type", "precision", "recall", "F"
        );
        for (t, m) in mean.iter() {
            let c = &ci[t];
            println!(
                "{:<10} {:>9.4} {:>9.4} {:>9.4}   [{:.4}, {:.4}]",
                t.name(),
                m.precision,
                m.recall,
                m.fmeasure,
                c.low.fmeasure,
                c.high.fmeasure
            );
        }
        println!("{} pairs", pairs.len());
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArg,
    #[arg(long)]
    pub json: bool,
}

pub fn inspect(a: InspectArgs) -> Res {
    let dir = resolve_model(&a.model.spec()).map_err(s)?;
    let device = backend::device()?;
    let pipe = CausalPipeline::<Inference>::load(&dir.display().to_string(), &device).map_err(s)?;
    let v = json!({
        "dir": dir,
        "model_type": kiln_models::auto::model_type(&dir).map_err(s)?,
        "tensors_loaded": pipe.report.applied,
        "unused_tensors": pipe.report.unused,
        "initialised": pipe.report.initialised,
        "vocab_size": pipe.tokenizer.vocab_size(),
        "backend": backend::name(),
    });
    if a.json {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(&v).map_err(s)?);
    }
    Ok(())
}

fn apply_gen_flags(gen: &GenArgs, base: GenerationConfig) -> Result<GenerationConfig, String> {
    let (cfg, warnings) = gen.apply(base)?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    Ok(cfg)
}

fn read_jsonl(path: &PathBuf) -> Result<Vec<serde_json::Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{} line {}: {e}", path.display(), i + 1))
        })
        .collect()
}

fn field(v: &serde_json::Value, k: &str, path: &PathBuf, line: usize) -> Result<String, String> {
    v.get(k)
        .and_then(|x| x.as_str())
        .map(str::to_string)
        .ok_or_else(|| format!("{} line {line}: missing string field `{k}`", path.display()))
}

#[derive(Args, Debug)]
pub struct ZeroShotArgs {
    #[command(flatten)]
    pub model: ModelArg,
    #[arg(long, required_unless_present = "input")]
    pub context: Option<String>,
    #[arg(long, required_unless_present = "input")]
    pub question: Option<String>,
    /// JSONL with `context` and `question` fields; prints one JSON answer per line.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// The prompt; `{context}` and `{question}` are replaced.
    #[arg(long, default_value = "context: {context} question: {question}")]
    pub template: String,
    #[command(flatten)]
    pub gen: GenArgs,
    #[arg(long)]
    pub json: bool,
}

pub fn zero_shot(a: ZeroShotArgs) -> Res {
    a.gen.precheck()?;
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
    let pairs: Vec<(String, String)> = match &a.input {
        Some(p) => read_jsonl(p)?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                Ok((
                    field(v, "context", p, i + 1)?,
                    field(v, "question", p, i + 1)?,
                ))
            })
            .collect::<Result<_, String>>()?,
        None => vec![(
            a.context.clone().unwrap_or_default(),
            a.question.clone().unwrap_or_default(),
        )],
    };
    for (c, q) in &pairs {
        let prompt = a.template.replace("{context}", c).replace("{question}", q);
        let ans = pipe
            .generate_text(&[&prompt], Some(1024), &cfg)
            .map_err(s)?;
        if a.json || a.input.is_some() {
            println!("{}", json!({"context": c, "question": q, "answer": ans[0]}));
        } else {
            println!("{}", ans[0]);
        }
    }
    Ok(())
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
    let articles: Vec<String> = if a.input.extension().is_some_and(|e| e == "jsonl") {
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
        let text = pipe.tokenizer.decode(&out.sequences[0], true).map_err(s)?;
        if a.json {
            println!(
                "{}",
                json!({"summary": text.trim(), "ids": out.sequences[0]})
            );
        } else {
            println!("{}", text.trim());
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Text to embed; repeat for several.
    #[arg(long, short = 't', required = true)]
    pub text: Vec<String>,
    #[arg(long, default_value_t = 256)]
    pub max_len: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn embed(a: EmbedArgs) -> Res {
    let device = backend::device()?;
    let dir = resolve_model(&a.model.spec()).map_err(s)?;
    let (_, model, _) = kiln_models::bert::load::<Inference>(&dir, &device).map_err(s)?;
    let tok = kiln_models::tokenizer::Tokenizer::from_dir(&dir).map_err(s)?;
    let texts: Vec<&str> = a.text.iter().map(String::as_str).collect();
    let e = model
        .sentence_embeddings(&tok, &texts, Some(a.max_len))
        .map_err(s)?;
    let [n, d] = e.dims();
    let v: Vec<f32> = e
        .into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| format!("{e:?}"))?;
    let rows: Vec<&[f32]> = (0..n).map(|i| &v[i * d..(i + 1) * d]).collect();
    if a.json {
        println!(
            "{}",
            json!({"model": a.model.spec(), "dim": d, "embeddings": rows})
        );
    } else {
        for (t, r) in texts.iter().zip(&rows) {
            let head: Vec<String> = r.iter().take(6).map(|x| format!("{x:.4}")).collect();
            println!("{t:?}: [{} …] (dim {d})", head.join(", "));
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// A LoRA adapter directory in the PEFT format.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    #[arg(long, short = 't', required = true)]
    pub text: Vec<String>,
    #[arg(long, default_value_t = 512)]
    pub max_len: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn classify(a: ClassifyArgs) -> Res {
    let device = backend::device()?;
    let dir = resolve_model(&a.model.spec()).map_err(s)?;
    let (_, model, report) =
        kiln_models::bert::load_for_classification::<Inference>(&dir, &device).map_err(s)?;
    let model = with_adapter(model, a.adapter.as_ref())?;
    if a.adapter.is_none()
        && report
            .initialised
            .iter()
            .any(|p| p.starts_with("classifier"))
    {
        eprintln!(
            "warning: {} has no classification head; it was initialised randomly",
            dir.display()
        );
    }
    let raw = kiln_models::config::RawConfig::load(&dir.join("config.json")).map_err(s)?;
    let tok = kiln_models::tokenizer::Tokenizer::from_dir(&dir).map_err(s)?;
    let encs = a
        .text
        .iter()
        .map(|t| tok.encode(t, Some(a.max_len)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(s)?;
    let pad = tok.token_to_id("[PAD]").unwrap_or(0);
    let batch = kiln_models::bert::BertBatch::from_encodings(&encs, pad).map_err(s)?;
    let logits = model.forward_batch(&batch).map_err(s)?;
    let probs = kiln_models::attention::rows_f32(burn::tensor::activation::softmax(logits, 1));
    let label = |i: usize| {
        raw.map
            .get("id2label")
            .and_then(|m| m.get(i.to_string()))
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or(format!("LABEL_{i}"))
    };
    for (t, p) in a.text.iter().zip(&probs) {
        let best = p
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.total_cmp(y.1))
            .map(|(i, _)| i)
            .unwrap_or(0);
        if a.json {
            println!("{}", json!({"text": t, "label": label(best), "probs": p}));
        } else {
            println!("{}\t{:.4}\t{t}", label(best), p[best]);
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
    #[arg(long, default_value_t = 5)]
    pub max_new_tokens: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn icl(a: IclArgs) -> Res {
    use kiln_models::icl::{classify as icl_classify, Example, IclTemplate};
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
        let answer = if a.labels.is_empty() {
            let prompt = t.prompt(&examples, input);
            let (ids, mask) = pipe.encode_left_padded(&[&prompt]).map_err(s)?;
            let cfg = GenerationConfig {
                max_new_tokens: Some(a.max_new_tokens),
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
            let labels: Vec<&str> = a.labels.iter().map(String::as_str).collect();
            let i = icl_classify(&pipe.model, &pipe.tokenizer, &t, &examples, input, &labels)
                .map_err(s)?;
            labels[i].to_string()
        };
        if a.json {
            println!("{}", json!({"input": input, "answer": answer}));
        } else {
            println!("{answer}\t{input}");
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A recipe: t5-prompt-sst2, bert-adapters-sst2, bert-sst2, bart-lora-cnndm, bart-cnndm, bart-lora-vs-full, prefix-cnndm, prompt-tuning-sst2, opt-icl-sst2, gpt2-generate, t0-zero-shot.
    #[arg(long)]
    pub recipe: String,
    /// Model hub id or directory (default: the recipe's, e.g. t5-small).
    #[arg(long)]
    pub model: Option<String>,
    /// Dataset hub id, directory or file (default: the recipe's, e.g. stanfordnlp/sst2).
    #[arg(long)]
    pub dataset: Option<String>,
    #[arg(long, default_value = "kiln-out/train")]
    pub out: PathBuf,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Training examples to use (the seed uses 5000 CNN/DailyMail articles).
    #[arg(long)]
    pub max_samples: Option<usize>,
    #[arg(long)]
    pub max_eval_samples: Option<usize>,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    pub max_steps: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue from the checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Also write the checkpoint every this many optimizer steps (it is always written at the end of
    /// each epoch).
    #[arg(long)]
    pub save_every_steps: Option<usize>,
    /// Bottleneck size of the adapters (bert-adapters-sst2).
    #[arg(long)]
    pub adapter_size: Option<usize>,
    /// Virtual tokens of the prompt / prefix (prefix-cnndm: 20).
    #[arg(long)]
    pub num_virtual_tokens: Option<usize>,
    #[arg(long)]
    pub no_progress: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn train(a: TrainArgs) -> Res {
    if !kiln_train::recipes::RECIPES.contains(&a.recipe.as_str()) {
        return Err(format!(
            "unknown recipe `{}` (known: {})",
            a.recipe,
            kiln_train::recipes::RECIPES.join(", ")
        ));
    }
    if a.epochs == Some(0)
        || a.batch_size == Some(0)
        || a.num_virtual_tokens == Some(0)
        || a.save_every_steps == Some(0)
        || a.learning_rate.is_some_and(|l| !(l > 0.0))
    {
        return Err(
            "--epochs, --batch-size, --num-virtual-tokens, --save-every-steps and --learning-rate must be positive"
                .into(),
        );
    }
    let device = backend::device()?;
    let args = kiln_train::recipes::RecipeArgs {
        model: a.model,
        dataset: a.dataset,
        out_dir: a.out,
        epochs: a.epochs,
        batch_size: a.batch_size,
        learning_rate: a.learning_rate,
        max_samples: a.max_samples,
        max_eval_samples: a.max_eval_samples,
        max_steps: a.max_steps,
        seed: a.seed,
        resume: a.resume,
        save_every_steps: a.save_every_steps,
        progress: !a.no_progress && !a.json,
        adapter_size: a.adapter_size,
        num_virtual_tokens: a.num_virtual_tokens,
    };
    let summary = kiln_train::recipes::run_recipe::<backend::Training>(&a.recipe, &args, &device)
        .map_err(s)?;
    if a.json {
        println!("{summary}");
    } else {
        let mut short = summary.clone();
        if let Some(o) = short.as_object_mut() {
            o.remove("train");
        }
        println!("{}", serde_json::to_string_pretty(&short).map_err(s)?);
        println!("reports in {}", args.out_dir.display());
    }
    Ok(())
}

/// Whether a PEFT adapter directory holds prompt learning (`PROMPT_TUNING` / `PREFIX_TUNING`) rather than LoRA.
pub fn is_prompt_adapter(dir: &std::path::Path) -> Result<bool, String> {
    let p = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(matches!(
        v.get("peft_type").and_then(|t| t.as_str()),
        Some("PROMPT_TUNING" | "PREFIX_TUNING")
    ))
}

/// Attach a LoRA adapter directory (PEFT format) to a model, unmerged (exact peft semantics).
pub fn with_adapter<B: burn::prelude::Backend, M: kiln_peft::PeftModel<B>>(
    model: M,
    adapter: Option<&PathBuf>,
) -> Result<M, String> {
    match adapter {
        None => Ok(model),
        Some(dir) => Ok(kiln_peft::LoraModel::from_pretrained(model, dir, false)
            .map_err(s)?
            .model),
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum PeftCmd {
    /// Show an adapter directory's config and tensors.
    Inspect {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Merge a LoRA adapter into its base model and write a Hugging Face checkpoint directory.
    Merge {
        #[command(flatten)]
        model: ModelArg,
        #[arg(long)]
        adapter: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct PeftArgs {
    #[command(subcommand)]
    pub cmd: PeftCmd,
}

pub fn peft(a: PeftArgs) -> Res {
    match a.cmd {
        PeftCmd::Inspect { dir, json: as_json } => {
            let cfg_path = dir.join("adapter_config.json");
            let text = std::fs::read_to_string(&cfg_path)
                .map_err(|e| format!("{}: {e}", cfg_path.display()))?;
            let cfg: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", cfg_path.display()))?;
            let tensors =
                kiln_peft::read_tensors(&dir.join("adapter_model.safetensors")).map_err(s)?;
            let params: usize = tensors.values().map(|t| t.data.len()).sum();
            let list: Vec<serde_json::Value> = tensors
                .iter()
                .map(|(k, t)| json!({"name": k, "shape": t.shape}))
                .collect();
            let v = json!({
                "dir": dir, "peft_type": cfg["peft_type"], "task_type": cfg["task_type"],
                "base_model_name_or_path": cfg["base_model_name_or_path"], "r": cfg["r"], "lora_alpha": cfg["lora_alpha"],
                "target_modules": cfg["target_modules"], "tensors": list.len(), "parameters": params,
            });
            if as_json {
                println!("{}", json!({"summary": v, "tensors": list}));
            } else {
                println!("{}", serde_json::to_string_pretty(&v).map_err(s)?);
            }
            Ok(())
        }
        PeftCmd::Merge {
            model,
            adapter,
            out,
        } => {
            let device = backend::device()?;
            let dir = resolve_model(&model.spec()).map_err(s)?;
            let mt = kiln_models::auto::model_type(&dir).map_err(s)?;
            std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            let weights = out.join("model.safetensors");
            let n = match mt.as_str() {
                "gpt2" | "opt" => {
                    let (m, _) = kiln_models::auto::CausalModel::<Inference>::load(&dir, &device)
                        .map_err(s)?;
                    let m = kiln_peft::LoraModel::from_pretrained(m, &adapter, false)
                        .map_err(s)?
                        .merge_and_unload();
                    kiln_peft::export::save_hf_weights(&m, &weights).map_err(s)?
                }
                "t5" | "bart" => {
                    let (m, _) = kiln_models::auto::Seq2SeqModel::<Inference>::load(&dir, &device)
                        .map_err(s)?;
                    let m = kiln_peft::LoraModel::from_pretrained(m, &adapter, false)
                        .map_err(s)?
                        .merge_and_unload();
                    kiln_peft::export::save_hf_weights(&m, &weights).map_err(s)?
                }
                "bert" => {
                    let (_, m, _) =
                        kiln_models::bert::load_for_classification::<Inference>(&dir, &device)
                            .map_err(s)?;
                    let m = kiln_peft::LoraModel::from_pretrained(m, &adapter, false)
                        .map_err(s)?
                        .merge_and_unload();
                    kiln_peft::export::save_hf_weights(&m, &weights).map_err(s)?
                }
                other => {
                    return Err(format!(
                        "{}: cannot merge into model_type `{other}`",
                        dir.display()
                    ))
                }
            };
            for f in [
                "config.json",
                "generation_config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "vocab.json",
                "merges.txt",
                "vocab.txt",
            ] {
                if dir.join(f).is_file() {
                    std::fs::copy(dir.join(f), out.join(f))
                        .map_err(|e| format!("{}: {e}", out.join(f).display()))?;
                }
            }
            println!(
                "merged {} into {} ({n} tensors) → {}",
                adapter.display(),
                dir.display(),
                out.display()
            );
            Ok(())
        }
    }
}
