//! The tasks of the recipes: sequence classification (BERT) and sequence-to-sequence (T5, BART) scored by
//! generation (accuracy or ROUGE).

use crate::loss::TrainBackend;
use burn::module::AutodiffModule;
use burn::prelude::*;
use kiln_data::{Batch, Batcher, Labels};
use kiln_metrics::aggregate::mean_by_type;
use kiln_metrics::{RougeScorer, SentenceSplit};
use kiln_models::attention::ids_tensor;
use kiln_models::auto::Seq2SeqModel;
use kiln_models::bert::{BertBatch, BertForSequenceClassification};
use kiln_models::generation::GenerationConfig;
use kiln_models::prompt_seq2seq::Seq2SeqPromptModel;
use kiln_models::seq2seq::EncoderDecoder;
use kiln_models::tokenizer::Tokenizer;
use serde_json::json;

use crate::error::{Error, Result};
use crate::loss::{class_cross_entropy, token_cross_entropy};
use crate::trainer::{EvalResult, Task};

fn bert_batch(b: &Batch) -> BertBatch {
    BertBatch {
        input_ids: b.input_ids.clone(),
        token_type_ids: b.token_type_ids.clone(),
        attention_mask: b.attention_mask.clone(),
    }
}

fn class_labels(b: &Batch) -> Result<&[i64]> {
    match &b.labels {
        Labels::Class(l) => Ok(l),
        _ => Err(Error::Config(
            "classification batches need class labels".into(),
        )),
    }
}

fn token_labels(b: &Batch) -> Result<&[Vec<i64>]> {
    match &b.labels {
        Labels::Tokens(l) => Ok(l),
        _ => Err(Error::Config("seq2seq batches need token labels".into())),
    }
}

/// BERT sequence classification; accuracy on the evaluation batches.
pub struct Classification {
    /// The evaluation batches.
    pub eval: Batcher,
}

impl<B: TrainBackend> Task<B> for Classification {
    type Model = BertForSequenceClassification<B>;

    fn loss(&self, model: &Self::Model, batch: &Batch) -> Result<Tensor<B, 1>> {
        let logits = model.forward_batch(&bert_batch(batch))?;
        class_cross_entropy(logits, class_labels(batch)?)
    }

    fn evaluate(
        &self,
        model: &<Self::Model as AutodiffModule<B>>::InnerModule,
    ) -> Result<EvalResult> {
        let (mut correct, mut n, mut loss_sum) = (0usize, 0usize, 0f64);
        for (_, batch) in self.eval.epoch(0) {
            let labels = class_labels(&batch)?;
            let logits = model.forward_batch(&bert_batch(&batch))?;
            loss_sum += class_cross_entropy(logits.clone(), labels)?
                .into_scalar()
                .elem::<f64>()
                * labels.len() as f64;
            let preds = kiln_models::attention::rows_f32(logits);
            for (p, &l) in preds.iter().zip(labels) {
                let best = p
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(i, _)| i as i64)
                    .unwrap_or(0);
                correct += (best == l) as usize;
                n += 1;
            }
        }
        let mut r = EvalResult::default();
        r.metrics
            .insert("accuracy".into(), json!(correct as f64 / n.max(1) as f64));
        r.metrics
            .insert("eval_loss".into(), json!(loss_sum / n.max(1) as f64));
        r.metrics.insert("examples".into(), json!(n));
        Ok(r)
    }

    fn primary_metric(&self) -> (&str, bool) {
        ("accuracy", true)
    }
}

/// How a seq2seq task is scored on its evaluation set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seq2SeqMetric {
    /// Generated text equals the target text (trimmed, case-insensitive): prompt-based classification.
    Accuracy,
    /// ROUGE-1/2/L/Lsum F (rouge-score semantics, stemmer); `rougeLsum` splits sentences first.
    Rouge,
}

/// T5 / BART with teacher-forced cross-entropy; evaluated by generation.
pub struct Seq2Seq {
    /// The evaluation batches.
    pub eval: Batcher,
    /// Decodes generated and reference tokens for the metric.
    pub tokenizer: Tokenizer,
    /// Decoding settings for evaluation.
    pub generation: GenerationConfig,
    /// The decoder's start token (T5: pad, BART: `</s>`).
    pub decoder_start_id: u32,
    /// The pad token id.
    pub pad_id: u32,
    /// How generations are scored.
    pub metric: Seq2SeqMetric,
    /// Predictions and references of the last evaluation are written here (JSONL) when set.
    pub predictions_path: Option<std::path::PathBuf>,
}

impl Seq2Seq {
    fn teacher_forced<B: kiln_kernels::KernelOps, M: EncoderDecoder<B>>(
        &self,
        model: &M,
        batch: &Batch,
    ) -> Result<Tensor<B, 1>> {
        let device = model.device();
        let labels = token_labels(batch)?;
        let dec = batch
            .decoder_input_ids(self.decoder_start_id, self.pad_id)
            .ok_or_else(|| Error::Config("no decoder inputs".into()))?;
        let hidden = model.encode(
            ids_tensor::<B>(&batch.input_ids, &device),
            &batch.attention_mask,
        )?;
        let logits = model.decoder_logits(
            ids_tensor::<B>(&dec, &device),
            hidden,
            &batch.attention_mask,
        )?;
        token_cross_entropy(logits, labels)
    }

    /// Generate for every evaluation example; returns (predictions, references, mean loss).
    pub fn predict<B: kiln_kernels::KernelOps, M: EncoderDecoder<B>>(
        &self,
        model: &M,
    ) -> Result<(Vec<String>, Vec<String>, f64)> {
        let (mut preds, mut refs, mut loss_sum, mut n) = (Vec::new(), Vec::new(), 0f64, 0usize);
        for (_, batch) in self.eval.epoch(0) {
            let labels = token_labels(&batch)?;
            loss_sum += self
                .teacher_forced(model, &batch)?
                .into_scalar()
                .elem::<f64>()
                * batch.len() as f64;
            n += batch.len();
            let out = kiln_models::seq2seq::generate(
                model,
                &batch.input_ids,
                &batch.attention_mask,
                &self.generation,
                None,
            )?;
            for s in &out.sequences {
                preds.push(self.tokenizer.decode(s, true)?.trim().to_string());
            }
            for l in labels {
                let ids: Vec<u32> = l.iter().filter(|&&x| x >= 0).map(|&x| x as u32).collect();
                refs.push(self.tokenizer.decode(&ids, true)?.trim().to_string());
            }
        }
        Ok((preds, refs, loss_sum / n.max(1) as f64))
    }
}

impl Seq2Seq {
    /// Generate for the evaluation set and score it (accuracy or ROUGE); writes the predictions when asked.
    pub fn evaluate_model<B: kiln_kernels::KernelOps, M: EncoderDecoder<B>>(
        &self,
        model: &M,
    ) -> Result<EvalResult> {
        let (preds, refs, loss) = self.predict(model)?;
        let mut r = EvalResult::default();
        r.metrics.insert("eval_loss".into(), json!(loss));
        r.metrics.insert("examples".into(), json!(preds.len()));
        match self.metric {
            Seq2SeqMetric::Accuracy => {
                let correct = preds
                    .iter()
                    .zip(&refs)
                    .filter(|(p, r)| p.to_lowercase() == r.to_lowercase())
                    .count();
                r.metrics.insert(
                    "accuracy".into(),
                    json!(correct as f64 / preds.len().max(1) as f64),
                );
            }
            Seq2SeqMetric::Rouge => {
                let scorer = RougeScorer::new(["rouge1", "rouge2", "rougeL", "rougeLsum"], true)?
                    .sentence_split(SentenceSplit::SentencesIfNoNewline);
                let pairs: Vec<(String, String)> =
                    refs.iter().cloned().zip(preds.iter().cloned()).collect();
                let mean = mean_by_type(&scorer.score_batch(&pairs));
                for (t, s) in mean.iter() {
                    r.metrics.insert(t.name().to_string(), json!(s.fmeasure));
                }
            }
        }
        if let Some(p) = &self.predictions_path {
            let lines: Vec<String> = preds
                .iter()
                .zip(&refs)
                .map(|(p, r)| json!({"prediction": p, "reference": r}).to_string())
                .collect();
            std::fs::write(p, lines.join("\n") + "\n")
                .map_err(|e| Error::Io(format!("{}: {e}", p.display())))?;
        }
        Ok(r)
    }

    fn primary(&self) -> (&str, bool) {
        match self.metric {
            Seq2SeqMetric::Accuracy => ("accuracy", true),
            Seq2SeqMetric::Rouge => ("rougeL", true),
        }
    }
}

impl<B: TrainBackend> Task<B> for Seq2Seq {
    type Model = Seq2SeqModel<B>;

    fn loss(&self, model: &Self::Model, batch: &Batch) -> Result<Tensor<B, 1>> {
        self.teacher_forced(model, batch)
    }

    fn loss_weight(&self, batch: &Batch) -> f64 {
        token_labels(batch).map_or(0, crate::loss::token_count) as f64
    }

    fn evaluate(
        &self,
        model: &<Self::Model as AutodiffModule<B>>::InnerModule,
    ) -> Result<EvalResult> {
        self.evaluate_model(model)
    }

    fn primary_metric(&self) -> (&str, bool) {
        self.primary()
    }
}

/// Prompt or prefix tuning of T5 / BART (peft's `PeftModelForSeq2SeqLM`): the same loss and evaluation as
/// [`Seq2Seq`], through the prompt model.
pub struct Seq2SeqPrompt(pub Seq2Seq);

impl<B: TrainBackend> Task<B> for Seq2SeqPrompt {
    type Model = Seq2SeqPromptModel<B>;

    fn loss(&self, model: &Self::Model, batch: &Batch) -> Result<Tensor<B, 1>> {
        self.0.teacher_forced(model, batch)
    }

    fn loss_weight(&self, batch: &Batch) -> f64 {
        token_labels(batch).map_or(0, crate::loss::token_count) as f64
    }

    fn evaluate(
        &self,
        model: &<Self::Model as AutodiffModule<B>>::InnerModule,
    ) -> Result<EvalResult> {
        self.0.evaluate_model(model)
    }

    fn primary_metric(&self) -> (&str, bool) {
        self.0.primary()
    }
}

/// One labelled evaluation example for label-likelihood scoring: the prompt's ids and each label's ids.
#[derive(Debug, Clone)]
pub struct LabelledPrompt {
    /// The prompt's token ids.
    pub prompt_ids: Vec<u32>,
    /// The index of the correct label.
    pub label: usize,
}

/// Prompt / prefix tuning of a decoder-only model (peft's `PeftModelForCausalLM`): causal-LM loss over the
/// real tokens; evaluated by which label continuation is more likely.
pub struct PromptCausal {
    /// The evaluation examples.
    pub eval: Vec<LabelledPrompt>,
    /// Token ids of each label as a continuation (e.g. `" positive"`).
    pub label_ids: Vec<Vec<u32>>,
}

impl PromptCausal {
    /// Summed log-probability of each label after `prompt_ids`.
    fn label_scores<B: Backend>(
        &self,
        model: &kiln_models::prompt::PromptModel<B>,
        prompt_ids: &[u32],
    ) -> Vec<f64> {
        let device = kiln_models::causal::CausalLm::device(&model.model);
        self.label_ids
            .iter()
            .map(|lab| {
                let mut ids = prompt_ids.to_vec();
                ids.extend(lab);
                let n = ids.len();
                let logits = model.token_logits(ids_tensor::<B>(&[ids.clone()], &device), None);
                let v = logits.dims()[2];
                let lp: Vec<f32> = burn::tensor::activation::log_softmax(logits.reshape([n, v]), 1)
                    .into_data()
                    .convert::<f32>()
                    .to_vec()
                    .expect("f32");
                (0..lab.len())
                    .map(|i| lp[(prompt_ids.len() - 1 + i) * v + lab[i] as usize] as f64)
                    .sum()
            })
            .collect()
    }
}

impl<B: TrainBackend> Task<B> for PromptCausal {
    type Model = kiln_models::prompt::PromptModel<B>;

    fn loss(&self, model: &Self::Model, batch: &Batch) -> Result<Tensor<B, 1>> {
        let device = kiln_models::causal::CausalLm::device(&model.model);
        let logits = model.token_logits(
            ids_tensor::<B>(&batch.input_ids, &device),
            Some(&batch.attention_mask),
        );
        crate::loss::causal_lm_loss(logits, &batch.input_ids, &batch.attention_mask)
    }

    fn loss_weight(&self, batch: &Batch) -> f64 {
        crate::loss::causal_token_count(&batch.attention_mask) as f64
    }

    fn evaluate(
        &self,
        model: &<Self::Model as AutodiffModule<B>>::InnerModule,
    ) -> Result<EvalResult> {
        let mut correct = 0usize;
        for e in &self.eval {
            let s = self.label_scores(model, &e.prompt_ids);
            let best = s
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                .unwrap_or(0);
            correct += (best == e.label) as usize;
        }
        let mut r = EvalResult::default();
        r.metrics.insert(
            "accuracy".into(),
            json!(correct as f64 / self.eval.len().max(1) as f64),
        );
        r.metrics.insert("examples".into(), json!(self.eval.len()));
        Ok(r)
    }

    fn primary_metric(&self) -> (&str, bool) {
        ("accuracy", true)
    }
}
