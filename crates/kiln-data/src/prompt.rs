//! Prompt templates for casting SST-2 as text-to-text (the notebook's T5 recipe).

use serde::{Deserialize, Serialize};

use crate::load::SentimentExample;
use crate::tokenize::Seq2SeqExample;

/// A sentiment prompt: `template` with `{sentence}` replaced, and a verbaliser word per label.
///
/// The default is the notebook's T5 recipe: `"Sentiment analysis: {sentence} The sentiment is [MASK]."`,
/// targets `"positive"` (label 1) / `"negative"` (label 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTemplate {
    /// Must contain `{sentence}`.
    pub template: String,
    /// The target word for label 1.
    pub positive: String,
    /// The target word for label 0.
    pub negative: String,
}

impl Default for PromptTemplate {
    fn default() -> Self {
        Self {
            template: "Sentiment analysis: {sentence} The sentiment is [MASK].".into(),
            positive: "positive".into(),
            negative: "negative".into(),
        }
    }
}

impl PromptTemplate {
    /// A custom template (must contain `{sentence}`).
    pub fn new(template: &str, positive: &str, negative: &str) -> crate::Result<Self> {
        if !template.contains("{sentence}") {
            return Err(crate::Error::Input(format!(
                "prompt template `{template}` has no `{{sentence}}`"
            )));
        }
        Ok(Self {
            template: template.into(),
            positive: positive.into(),
            negative: negative.into(),
        })
    }

    /// The prompt for one sentence.
    pub fn render(&self, sentence: &str) -> String {
        self.template.replace("{sentence}", sentence)
    }

    /// The target word for a label (`None` for -1 / unlabeled).
    pub fn target(&self, label: i64) -> Option<&str> {
        match label {
            1 => Some(&self.positive),
            0 => Some(&self.negative),
            _ => None,
        }
    }

    /// The label a generated text stands for: 1 or 0 when it starts with (case-insensitively, after
    /// whitespace) the positive or negative word, else `None`.
    pub fn parse(&self, generated: &str) -> Option<i64> {
        let g = generated.trim().to_lowercase();
        let (p, n) = (self.positive.to_lowercase(), self.negative.to_lowercase());
        // Test the longer word first, in case one word is a prefix of the other.
        let mut words = [(p, 1), (n, 0)];
        words.sort_by_key(|(w, _)| std::cmp::Reverse(w.len()));
        words
            .into_iter()
            .find(|(w, _)| !w.is_empty() && g.starts_with(w.as_str()))
            .map(|(_, l)| l)
    }

    /// The example as a prompt/target pair; `None` when it is unlabeled.
    pub fn to_seq2seq(&self, e: &SentimentExample) -> Option<Seq2SeqExample> {
        Some(Seq2SeqExample {
            source: self.render(&e.sentence),
            target: self.target(e.label)?.to_string(),
        })
    }

    /// Every labeled example as a prompt/target pair (unlabeled ones are left out).
    pub fn apply(&self, examples: &[SentimentExample]) -> Vec<Seq2SeqExample> {
        examples.iter().filter_map(|e| self.to_seq2seq(e)).collect()
    }
}
