//! In-context learning: k-shot prompts, answer extraction, and classification by label likelihood.
//!
//! The seed notebook's format: each example is `Input: {input}\nOutput: {output}`, examples are joined by
//! `\n---\n`, and the query ends with `Input: {input}\nOutput:` for the model to complete.

use burn::prelude::*;

use crate::generate::causal::CausalLm;
use crate::generate::scoring::score_tokens;
use crate::load::error::{Error, Result};
use crate::load::tokenizer::Tokenizer;

/// How examples and the query are laid out. `{input}` and `{output}` are replaced.
#[derive(Debug, Clone, PartialEq)]
pub struct IclTemplate {
    /// Layout of one demonstration (default `Input: {input}\nOutput: {output}`).
    pub example: String,
    /// Layout of the query the model completes (default `Input: {input}\nOutput:`).
    pub query: String,
    /// Joins the demonstrations and the query (default `\n---\n`).
    pub separator: String,
}

impl Default for IclTemplate {
    fn default() -> Self {
        Self {
            example: "Input: {input}\nOutput: {output}".into(),
            query: "Input: {input}\nOutput:".into(),
            separator: "\n---\n".into(),
        }
    }
}

/// One demonstration.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct Example {
    /// The demonstration's input text (replaces `{input}`).
    pub input: String,
    /// The demonstration's expected output text (replaces `{output}`).
    pub output: String,
}

impl IclTemplate {
    /// The k-shot prompt for `input`.
    pub fn prompt(&self, examples: &[Example], input: &str) -> String {
        let mut parts: Vec<String> = examples
            .iter()
            .map(|e| {
                self.example
                    .replace("{input}", &e.input)
                    .replace("{output}", &e.output)
            })
            .collect();
        parts.push(self.query.replace("{input}", input));
        parts.join(&self.separator)
    }

    /// The answer in a completion (the text generated after the prompt): up to the first separator or
    /// newline, trimmed.
    pub fn extract_answer<'a>(&self, completion: &'a str) -> &'a str {
        let mut end = completion.len();
        let sep = self.separator.trim();
        if !sep.is_empty() {
            if let Some(i) = completion.find(sep) {
                end = end.min(i);
            }
        }
        if let Some(i) = completion.trim_start().find('\n') {
            let lead = completion.len() - completion.trim_start().len();
            end = end.min(lead + i);
        }
        completion[..end].trim()
    }
}

/// Score each label as a continuation of `prompt`: the summed log-probability of its tokens
/// (`" " + label`, as it would be generated after `Output:`). Returns one score per label.
pub fn label_scores<B: Backend, M: CausalLm<B>>(
    model: &M,
    tokenizer: &Tokenizer,
    prompt: &str,
    labels: &[&str],
) -> Result<Vec<f32>> {
    if labels.is_empty() {
        return Err(Error::Input("no labels to score".into()));
    }
    let prompt_ids = tokenizer.encode(prompt, None)?.ids;
    let mut out = Vec::with_capacity(labels.len());
    for label in labels {
        let cont = tokenizer.encode_plain(&format!(" {label}"))?;
        if cont.is_empty() {
            return Err(Error::Input(format!(
                "label {label:?} encodes to no tokens"
            )));
        }
        let mut ids = prompt_ids.clone();
        ids.extend(&cont);
        let s = score_tokens(model, &ids, false)?;
        // logprobs[i] scores ids[i + 1]; the label's tokens are the last `cont.len()`.
        out.push(s.logprobs[s.logprobs.len() - cont.len()..].iter().sum());
    }
    Ok(out)
}

/// The index of the most likely label.
pub fn classify<B: Backend, M: CausalLm<B>>(
    model: &M,
    tokenizer: &Tokenizer,
    template: &IclTemplate,
    examples: &[Example],
    input: &str,
    labels: &[&str],
) -> Result<usize> {
    let scores = label_scores(model, tokenizer, &template.prompt(examples, input), labels)?;
    Ok(scores
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .expect("at least one label"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_matches_the_seed_format() {
        let t = IclTemplate::default();
        let ex = vec![
            Example {
                input: "I love it".into(),
                output: "positive".into(),
            },
            Example {
                input: "Awful".into(),
                output: "negative".into(),
            },
        ];
        assert_eq!(
            t.prompt(&ex, "Great fun"),
            "Input: I love it\nOutput: positive\n---\nInput: Awful\nOutput: negative\n---\nInput: Great fun\nOutput:"
        );
        assert_eq!(t.extract_answer(" positive\n---\nInput: x"), "positive");
        assert_eq!(t.extract_answer(" negative---Input"), "negative");
        assert_eq!(t.extract_answer("\n positive\nmore"), "positive");
        assert_eq!(t.extract_answer(""), "");
    }
}
