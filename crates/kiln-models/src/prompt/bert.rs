//! Prompt tuning for BERT sequence classification, as Hugging Face peft 0.21.2's
//! `PeftModelForSequenceClassification` runs `PROMPT_TUNING` with transformers 5.24 (`task_type` `SEQ_CLS`):
//!
//! - the `[n, d]` prompt is prepended to the word embeddings (`inputs_embeds`), the attention mask gets `n` leading
//!   ones and `token_type_ids` `n` leading zeros; positions run `0..n + s` over the whole sequence;
//! - the pooler reads position 0, which is the first *virtual* token (not `[CLS]`), as in peft;
//! - the classification head is in peft's `modules_to_save`: it trains beside the prompt and is saved in the adapter
//!   file as `base_model.classifier.weight` / `.bias` (Hugging Face layout, `[labels, d]`).
//!
//! Prefix tuning is not offered for BERT: peft 0.21.2 itself refuses it with transformers 5.24 ("Model does not
//! support past key values which are required for prefix tuning").

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, Param};
use burn::prelude::*;
use kiln_peft::io::RawTensor;
use kiln_peft::prompt::{
    read_prompt_with_modules, save_prompt_with_modules, PromptEncoder, PromptLearningConfig,
    PromptMethod,
};
use kiln_peft::PeftError;

use crate::load::error::{Error, Result};
use crate::models::attention::ids_tensor;
use crate::models::bert::{BertBatch, BertForSequenceClassification};
use crate::prompt::{peft_err, prompt_from_file, text_init_rows};

/// peft's keys for the saved classification head.
pub const HEAD_WEIGHT: &str = "base_model.classifier.weight";
/// peft's key for the saved classification head's bias, `[num_labels]`.
pub const HEAD_BIAS: &str = "base_model.classifier.bias";

/// BERT sequence classification with a trainable prompt (peft's `PeftModelForSequenceClassification` with
/// `PROMPT_TUNING`). The backbone is frozen; the prompt and the classifier train.
#[derive(Module, Debug)]
pub struct BertPromptModel<B: Backend> {
    /// The BERT classifier (backbone frozen; its `classifier` head trains with the prompt).
    pub model: BertForSequenceClassification<B>,
    /// The trainable prompt, prepended to the input embeddings.
    pub prompt: PromptEncoder<B>,
    /// The resolved prompt-tuning config (saved as `adapter_config.json`).
    #[module(skip)]
    pub config: PromptLearningConfig,
}

fn resolve<B: Backend>(
    model: &BertForSequenceClassification<B>,
    config: &mut PromptLearningConfig,
    path: &Path,
) -> Result<()> {
    if !config.is_seq_cls() || config.method != PromptMethod::PromptTuning {
        return Err(Error::Input(format!(
            "{}: BERT classification takes SEQ_CLS prompt tuning (got {} with task_type {})",
            path.display(),
            config.method.peft_type(),
            config.task_type.as_deref().unwrap_or("null")
        )));
    }
    let layers = model.bert.encoder.layer.len();
    let heads = model.bert.encoder.layer[0]
        .attention
        .self_attn
        .num_attention_heads;
    config
        .resolve(path, model.bert.hidden_size(), layers, heads)
        .map_err(peft_err)
}

impl<B: Backend> BertPromptModel<B> {
    /// `get_peft_model` with a prompt-tuning config (switched to `SEQ_CLS`, head in `modules_to_save`). `TEXT`
    /// init takes the tokenized init text.
    pub fn inject(
        model: BertForSequenceClassification<B>,
        mut config: PromptLearningConfig,
        init_ids: Option<&[u32]>,
    ) -> Result<Self> {
        if !config.is_seq_cls() {
            config = config.for_seq_cls();
        }
        resolve(&model, &mut config, Path::new("<config>"))?;
        let device = model.classifier.weight.device();
        let words = &model.bert.embeddings.word_embeddings;
        let rows = text_init_rows(&config, init_ids, &device, |t| words.forward(t))?;
        let prompt = PromptEncoder::init(&config, rows, &device);
        Ok(Self {
            model: freeze_backbone(model, true),
            prompt,
            config,
        })
    }

    /// peft's `PeftModel.from_pretrained` for a `SEQ_CLS` prompt adapter: the prompt and the saved head.
    pub fn from_pretrained(
        model: BertForSequenceClassification<B>,
        dir: &Path,
        is_trainable: bool,
    ) -> Result<Self> {
        let (mut config, t, mut extra) = read_prompt_with_modules(dir).map_err(peft_err)?;
        let cfg_path = dir.join(kiln_peft::io::CONFIG_FILE);
        let weights = dir.join(kiln_peft::io::WEIGHTS_FILE);
        resolve(&model, &mut config, &cfg_path)?;
        let mut model = model;
        let device = model.classifier.weight.device();
        let [d, labels] = model.classifier.weight.dims();
        // peft's saved head, `[labels, d]` (Hugging Face layout) and `[labels]`.
        let mut take = |key: &str, shape: Vec<usize>| -> Result<Option<TensorData>> {
            match extra.remove(key) {
                None => Ok(None),
                Some(t) if t.shape == shape => Ok(Some(TensorData::new(t.data, shape))),
                Some(t) => Err(peft_err(PeftError::ShapeMismatch {
                    path: weights.clone(),
                    key: key.into(),
                    expected: shape,
                    found: t.shape,
                })),
            }
        };
        if let Some(w) = take(HEAD_WEIGHT, vec![labels, d])? {
            let w = Tensor::<B, 2>::from_data(w, &device).transpose();
            model.classifier.weight = Param::from_tensor(w);
        }
        if let Some(bias) = take(HEAD_BIAS, vec![labels])? {
            model.classifier.bias = Some(Param::from_tensor(Tensor::from_data(bias, &device)));
        }
        if let Some(k) = extra.keys().next() {
            return Err(peft_err(PeftError::UnsupportedKey {
                path: weights,
                key: k.clone(),
                kind: "tensor other than the prompt and the classifier".into(),
            }));
        }
        let prompt = prompt_from_file(&mut config, t, dir, is_trainable, &device)?;
        Ok(Self {
            model: freeze_backbone(model, is_trainable),
            prompt,
            config,
        })
    }

    /// Write the prompt and the classification head as peft's `save_pretrained` does.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        let c = &self.model.classifier;
        let w = c.weight.val().transpose();
        let shape = w.dims().to_vec();
        let f32s = |t: TensorData| t.convert::<f32>().to_vec::<f32>().expect("f32");
        let mut extra = BTreeMap::new();
        extra.insert(
            HEAD_WEIGHT.to_string(),
            RawTensor::new(shape, f32s(w.into_data())),
        );
        if let Some(b) = &c.bias {
            let b = b.val();
            extra.insert(
                HEAD_BIAS.to_string(),
                RawTensor::new(b.dims().to_vec(), f32s(b.into_data())),
            );
        }
        save_prompt_with_modules(dir, &self.config, &self.prompt, extra).map_err(peft_err)
    }

    /// Number of virtual tokens prepended to every input (`num_virtual_tokens`).
    pub fn num_virtual_tokens(&self) -> usize {
        self.config.num_virtual_tokens
    }

    /// peft's `print_trainable_parameters()` line (prompt + classifier trainable).
    pub fn trainable_parameters(&self) -> String {
        let prompt = self.prompt.num_params();
        let head = self.model.classifier.num_params();
        let base = kiln_peft::model::hf_param_count(&self.model);
        // peft counts the head twice in "all" (the original and its `modules_to_save` copy).
        kiln_peft::trainable_summary(prompt + head, base + head + prompt)
    }

    /// Logits `[b, labels]`, as `peft_model(input_ids, token_type_ids, attention_mask).logits`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        token_type_ids: Option<Tensor<B, 2, Int>>,
        attention_mask: Option<&[Vec<u8>]>,
    ) -> Result<Tensor<B, 2>> {
        let [b, s] = input_ids.dims();
        let n = self.num_virtual_tokens();
        let device = input_ids.device();
        let rows = self.prompt.output();
        let d = rows.dims()[1];
        let prompt = rows.slice([0..n, 0..d]).unsqueeze::<3>().repeat_dim(0, b);
        let words = self
            .model
            .bert
            .embeddings
            .word_embeddings
            .forward(input_ids);
        let embeds = Tensor::cat(vec![prompt, words], 1);
        let types = token_type_ids
            .map(|t| Tensor::cat(vec![Tensor::<B, 2, Int>::zeros([b, n], &device), t], 1));
        let ones = vec![vec![1u8; s]; b];
        let mask: Vec<Vec<u8>> = attention_mask
            .unwrap_or(&ones)
            .iter()
            .map(|r| [vec![1u8; n], r.clone()].concat())
            .collect();
        let out = self.model.bert.forward_embeds(embeds, types, Some(&mask))?;
        Ok(self
            .model
            .classifier
            .forward(self.model.dropout.forward(out.pooler_output)))
    }

    /// [`Self::forward`] on a host-side batch.
    pub fn forward_batch(&self, batch: &BertBatch) -> Result<Tensor<B, 2>> {
        let device = self.model.classifier.weight.device();
        let e = &self.model.bert.embeddings;
        batch.check(
            e.word_embeddings.weight.dims()[0],
            e.token_type_embeddings.weight.dims()[0],
        )?;
        self.forward(
            ids_tensor::<B>(&batch.input_ids, &device),
            Some(ids_tensor::<B>(&batch.token_type_ids, &device)),
            Some(&batch.attention_mask),
        )
    }
}

/// Freeze the backbone; the classifier requires grad iff `train_head` (peft's `modules_to_save`).
fn freeze_backbone<B: Backend>(
    model: BertForSequenceClassification<B>,
    train_head: bool,
) -> BertForSequenceClassification<B> {
    kiln_peft::freeze_except(model, |p| train_head && p.starts_with("classifier")).0
}
