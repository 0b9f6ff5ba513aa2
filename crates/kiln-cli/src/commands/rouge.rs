//! `kiln rouge`: ROUGE-1/2/L/Lsum of predictions against references.

use std::path::PathBuf;

use clap::Args;
use kiln_metrics::aggregate::mean_by_type;
use kiln_metrics::{BootstrapAggregator, RougeScorer};
use serde_json::json;

use super::*;

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
    /// Write each pair's scores (as rouge-score's `score(target, prediction)` returns them) to this JSONL file:
    /// `{index, prediction, reference, scores: {rouge1: {precision, recall, fmeasure}, …}}` per line.
    #[arg(long)]
    pub per_example: Option<PathBuf>,
}

fn read_lines(p: &PathBuf) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(text.lines().map(|l| l.replace("\\n", "\n")).collect())
}

pub fn rouge(a: RougeArgs) -> Res {
    let scorer = RougeScorer::new(a.types.iter(), a.stemmer).map_err(s)?;
    let is_jsonl = a
        .predictions
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "json");
    if is_jsonl && a.references.is_some() {
        return Err(format!(
            "{} is JSONL and holds the references (a `reference` field per line); drop --references",
            a.predictions.display()
        ));
    }
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
    if let Some(path) = &a.per_example {
        let mut out = String::new();
        for (i, ((reference, prediction), sc)) in pairs.iter().zip(&rows).enumerate() {
            out.push_str(
                &json!({"index": i, "prediction": prediction, "reference": reference, "scores": sc})
                    .to_string(),
            );
            out.push('\n');
        }
        std::fs::write(path, out).map_err(|e| format!("{}: {e}", path.display()))?;
    }
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
