//! [`kiln_peft::PeftModel`] for kiln's architectures: every linear layer under the module path peft sees inside the
//! Hugging Face model, so that LoRA (and later PEFT methods) can target them and read/write peft's adapter files.
//!
//! Adding an architecture (T5 and BART are next): list its linear layers once inside `visit_fns!`, in Hugging Face
//! module order and naming, e.g. for T5 `encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}`,
//! `decoder.block.{i}.layer.1.EncDecAttention.{q,k,v,o}`, `….layer.{1|2}.DenseReluDense.{wi|wi_0|wi_1|wo}` and
//! `lm_head` when untied; for BART `model.{encoder,decoder}.layers.{i}.self_attn.{k,v,q,out}_proj`,
//! `model.decoder.layers.{i}.encoder_attn.*`, `….fc1`, `….fc2`. Implement the rest of `PeftModel`: the model
//! type (`t5`, `bart`; peft's default targets are `q, v` and `q_proj, v_proj`), `output_layers` returning
//! `lm_head` where it is a linear layer, and `hf_module_path` wherever a kiln field or enum differs from the
//! Hugging Face module path (BERT's `self_attn` → `self` below; T5's `layer` entries if they are a kiln enum,
//! whose variant names burn adds to parameter paths). Then add the variant to [`CausalModel`]'s impl (or the
//! seq2seq enum's), and a fixture adapter to `fixtures/peft/generate_peft.py`.

use burn::prelude::*;
use kiln_peft::{PeftLinear, PeftModel};

use crate::load::auto::CausalModel;
use crate::models::bert::{BertForSequenceClassification, BertModel};
use crate::models::gpt2::Gpt2LmHead;
use crate::models::opt::OptForCausalLm;

/// Write `visit_linears` and `visit_linears_ref` from one body. Inside it, `$m` is the model (`&mut Self` or
/// `&Self`), `lin!(path, place)` reports one layer, `iter!(vec)` enumerates a `Vec` field, `opt!(option)` borrows
/// an `Option` field, and `sub!(prefix, place)` reports every layer of a nested `PeftModel` under `prefix`.
macro_rules! visit_fns {
    (|$m:ident, $f:ident| $body:block) => {
        fn visit_linears(&mut self, $f: &mut dyn FnMut(&str, &mut PeftLinear<B>)) {
            let $m = self;
            #[allow(unused_macros)]
            macro_rules! lin {
                ($p:expr, $x:expr) => {
                    $f(&$p, &mut $x)
                };
            }
            #[allow(unused_macros)]
            macro_rules! iter {
                ($v:expr) => {
                    $v.iter_mut().enumerate()
                };
            }
            #[allow(unused_macros)]
            macro_rules! opt {
                ($v:expr) => {
                    $v.as_mut()
                };
            }
            #[allow(unused_macros)]
            macro_rules! sub {
                ($prefix:expr, $x:expr) => {
                    PeftModel::<B>::visit_linears(&mut $x, &mut |p: &str, l: &mut PeftLinear<B>| {
                        $f(&format!("{}{}", $prefix, p), l)
                    })
                };
            }
            $body
        }

        fn visit_linears_ref(&self, $f: &mut dyn FnMut(&str, &PeftLinear<B>)) {
            let $m = self;
            #[allow(unused_macros)]
            macro_rules! lin {
                ($p:expr, $x:expr) => {
                    $f(&$p, &$x)
                };
            }
            #[allow(unused_macros)]
            macro_rules! iter {
                ($v:expr) => {
                    $v.iter().enumerate()
                };
            }
            #[allow(unused_macros)]
            macro_rules! opt {
                ($v:expr) => {
                    $v.as_ref()
                };
            }
            #[allow(unused_macros)]
            macro_rules! sub {
                ($prefix:expr, $x:expr) => {
                    PeftModel::<B>::visit_linears_ref(&$x, &mut |p: &str, l: &PeftLinear<B>| {
                        $f(&format!("{}{}", $prefix, p), l)
                    })
                };
            }
            $body
        }
    };
}

/// `GPT2LMHeadModel`; its layers are `Conv1D` in transformers (peft sets `fan_in_fan_out`). The LM head is tied to
/// the token embedding and is not a linear layer here.
impl<B: Backend> PeftModel<B> for Gpt2LmHead<B> {
    fn model_type(&self) -> &str {
        "gpt2"
    }

    visit_fns!(|m, f| {
        for (i, b) in iter!(m.transformer.h) {
            lin!(format!("transformer.h.{i}.attn.c_attn"), b.attn.c_attn);
            lin!(format!("transformer.h.{i}.attn.c_proj"), b.attn.c_proj);
            lin!(format!("transformer.h.{i}.mlp.c_fc"), b.mlp.c_fc);
            lin!(format!("transformer.h.{i}.mlp.c_proj"), b.mlp.c_proj);
        }
    });

    fn conv1d(&self) -> bool {
        true
    }
}

/// `OPTForCausalLM` (LM head tied).
impl<B: Backend> PeftModel<B> for OptForCausalLm<B> {
    fn model_type(&self) -> &str {
        "opt"
    }

    visit_fns!(|m, f| {
        if let Some(p) = opt!(m.model.decoder.project_out) {
            lin!("model.decoder.project_out", *p);
        }
        if let Some(p) = opt!(m.model.decoder.project_in) {
            lin!("model.decoder.project_in", *p);
        }
        for (i, l) in iter!(m.model.decoder.layers) {
            lin!(
                format!("model.decoder.layers.{i}.self_attn.k_proj"),
                l.self_attn.k_proj
            );
            lin!(
                format!("model.decoder.layers.{i}.self_attn.v_proj"),
                l.self_attn.v_proj
            );
            lin!(
                format!("model.decoder.layers.{i}.self_attn.q_proj"),
                l.self_attn.q_proj
            );
            lin!(
                format!("model.decoder.layers.{i}.self_attn.out_proj"),
                l.self_attn.out_proj
            );
            lin!(format!("model.decoder.layers.{i}.fc1"), l.fc1);
            lin!(format!("model.decoder.layers.{i}.fc2"), l.fc2);
        }
    });
}

/// HF's `attention.self` is kiln's `attention.self_attn` (`self` is a Rust keyword).
fn bert_hf_path(module_path: &str) -> String {
    let parts: Vec<&str> = module_path.split('.').collect();
    let mut out = Vec::with_capacity(parts.len());
    for (i, p) in parts.iter().enumerate() {
        out.push(
            if *p == "self_attn" && i > 0 && parts[i - 1] == "attention" {
                "self"
            } else {
                p
            },
        );
    }
    out.join(".")
}

/// `BertModel`.
impl<B: Backend> PeftModel<B> for BertModel<B> {
    fn model_type(&self) -> &str {
        "bert"
    }

    visit_fns!(|m, f| {
        for (i, l) in iter!(m.encoder.layer) {
            lin!(
                format!("encoder.layer.{i}.attention.self.query"),
                l.attention.self_attn.query
            );
            lin!(
                format!("encoder.layer.{i}.attention.self.key"),
                l.attention.self_attn.key
            );
            lin!(
                format!("encoder.layer.{i}.attention.self.value"),
                l.attention.self_attn.value
            );
            lin!(
                format!("encoder.layer.{i}.attention.output.dense"),
                l.attention.output.dense
            );
            lin!(
                format!("encoder.layer.{i}.intermediate.dense"),
                l.intermediate.dense
            );
            lin!(format!("encoder.layer.{i}.output.dense"), l.output.dense);
        }
        lin!("pooler.dense", m.pooler.dense);
    });

    fn hf_module_path(&self, module_path: &str) -> String {
        bert_hf_path(module_path)
    }
}

/// `BertForSequenceClassification`.
impl<B: Backend> PeftModel<B> for BertForSequenceClassification<B> {
    fn model_type(&self) -> &str {
        "bert"
    }

    visit_fns!(|m, f| {
        sub!("bert.", m.bert);
        lin!("classifier", m.classifier);
    });

    fn hf_module_path(&self, module_path: &str) -> String {
        bert_hf_path(module_path)
    }

    /// peft's `_maybe_include_all_linear_layers`: the model has no output embedding, so the classifier is left out
    /// of `"all-linear"` for `SEQ_CLS` only.
    fn output_layers(&self, task_type: Option<&str>) -> Vec<String> {
        if task_type == Some("SEQ_CLS") {
            vec!["classifier".into()]
        } else {
            vec![]
        }
    }
}

/// Any decoder-only model: the inner model's paths (burn adds the enum variant, `Gpt2.`/`Opt.`, to parameter
/// paths; it is stripped here).
impl<B: Backend> PeftModel<B> for CausalModel<B> {
    fn model_type(&self) -> &str {
        match self {
            CausalModel::Gpt2(m) => m.model_type(),
            CausalModel::Opt(m) => m.model_type(),
        }
    }

    visit_fns!(|m, f| {
        match m {
            CausalModel::Gpt2(x) => sub!("", *x),
            CausalModel::Opt(x) => sub!("", *x),
        }
    });

    fn hf_module_path(&self, module_path: &str) -> String {
        let strip = |variant: &str| {
            module_path
                .strip_prefix(variant)
                .map(|r| r.strip_prefix('.').unwrap_or(r))
                .unwrap_or(module_path)
                .to_string()
        };
        match self {
            CausalModel::Gpt2(m) => m.hf_module_path(&strip("Gpt2")),
            CausalModel::Opt(m) => m.hf_module_path(&strip("Opt")),
        }
    }

    fn output_layers(&self, task_type: Option<&str>) -> Vec<String> {
        match self {
            CausalModel::Gpt2(m) => m.output_layers(task_type),
            CausalModel::Opt(m) => m.output_layers(task_type),
        }
    }

    fn conv1d(&self) -> bool {
        match self {
            CausalModel::Gpt2(m) => m.conv1d(),
            CausalModel::Opt(m) => m.conv1d(),
        }
    }
}

/// `BartForConditionalGeneration` (LM head tied to `model.shared`).
impl<B: Backend> PeftModel<B> for crate::models::bart::BartForConditionalGeneration<B> {
    fn model_type(&self) -> &str {
        "bart"
    }

    visit_fns!(|m, f| {
        for (i, l) in iter!(m.model.encoder.layers) {
            let p = format!("model.encoder.layers.{i}");
            lin!(format!("{p}.self_attn.k_proj"), l.self_attn.k_proj);
            lin!(format!("{p}.self_attn.v_proj"), l.self_attn.v_proj);
            lin!(format!("{p}.self_attn.q_proj"), l.self_attn.q_proj);
            lin!(format!("{p}.self_attn.out_proj"), l.self_attn.out_proj);
            lin!(format!("{p}.fc1"), l.fc1);
            lin!(format!("{p}.fc2"), l.fc2);
        }
        for (i, l) in iter!(m.model.decoder.layers) {
            let p = format!("model.decoder.layers.{i}");
            lin!(format!("{p}.self_attn.k_proj"), l.self_attn.k_proj);
            lin!(format!("{p}.self_attn.v_proj"), l.self_attn.v_proj);
            lin!(format!("{p}.self_attn.q_proj"), l.self_attn.q_proj);
            lin!(format!("{p}.self_attn.out_proj"), l.self_attn.out_proj);
            lin!(format!("{p}.encoder_attn.k_proj"), l.encoder_attn.k_proj);
            lin!(format!("{p}.encoder_attn.v_proj"), l.encoder_attn.v_proj);
            lin!(format!("{p}.encoder_attn.q_proj"), l.encoder_attn.q_proj);
            lin!(
                format!("{p}.encoder_attn.out_proj"),
                l.encoder_attn.out_proj
            );
            lin!(format!("{p}.fc1"), l.fc1);
            lin!(format!("{p}.fc2"), l.fc2);
        }
    });
}

/// `T5ForConditionalGeneration` (v1.0 and v1.1; `lm_head` is a linear layer only when untied).
impl<B: Backend> PeftModel<B> for crate::models::t5::T5ForConditionalGeneration<B> {
    fn model_type(&self) -> &str {
        "t5"
    }

    visit_fns!(|m, f| {
        for (i, b) in iter!(m.encoder.block) {
            for (j, l) in iter!(b.layer) {
                let p = format!("encoder.block.{i}.layer.{j}");
                if let Some(a) = opt!(l.SelfAttention) {
                    lin!(format!("{p}.SelfAttention.q"), a.q);
                    lin!(format!("{p}.SelfAttention.k"), a.k);
                    lin!(format!("{p}.SelfAttention.v"), a.v);
                    lin!(format!("{p}.SelfAttention.o"), a.o);
                }
                if let Some(d) = opt!(l.DenseReluDense) {
                    if let Some(w) = opt!(d.wi) {
                        lin!(format!("{p}.DenseReluDense.wi"), *w);
                    }
                    if let Some(w) = opt!(d.wi_0) {
                        lin!(format!("{p}.DenseReluDense.wi_0"), *w);
                    }
                    if let Some(w) = opt!(d.wi_1) {
                        lin!(format!("{p}.DenseReluDense.wi_1"), *w);
                    }
                    lin!(format!("{p}.DenseReluDense.wo"), d.wo);
                }
            }
        }
        for (i, b) in iter!(m.decoder.block) {
            for (j, l) in iter!(b.layer) {
                let p = format!("decoder.block.{i}.layer.{j}");
                if let Some(a) = opt!(l.SelfAttention) {
                    lin!(format!("{p}.SelfAttention.q"), a.q);
                    lin!(format!("{p}.SelfAttention.k"), a.k);
                    lin!(format!("{p}.SelfAttention.v"), a.v);
                    lin!(format!("{p}.SelfAttention.o"), a.o);
                }
                if let Some(a) = opt!(l.EncDecAttention) {
                    lin!(format!("{p}.EncDecAttention.q"), a.q);
                    lin!(format!("{p}.EncDecAttention.k"), a.k);
                    lin!(format!("{p}.EncDecAttention.v"), a.v);
                    lin!(format!("{p}.EncDecAttention.o"), a.o);
                }
                if let Some(d) = opt!(l.DenseReluDense) {
                    if let Some(w) = opt!(d.wi) {
                        lin!(format!("{p}.DenseReluDense.wi"), *w);
                    }
                    if let Some(w) = opt!(d.wi_0) {
                        lin!(format!("{p}.DenseReluDense.wi_0"), *w);
                    }
                    if let Some(w) = opt!(d.wi_1) {
                        lin!(format!("{p}.DenseReluDense.wi_1"), *w);
                    }
                    lin!(format!("{p}.DenseReluDense.wo"), d.wo);
                }
            }
        }
        if let Some(h) = opt!(m.lm_head) {
            lin!("lm_head", *h);
        }
    });

    fn output_layers(&self, _task_type: Option<&str>) -> Vec<String> {
        vec!["lm_head".into()]
    }
}

/// Any encoder-decoder model.
impl<B: Backend> PeftModel<B> for crate::load::auto::Seq2SeqModel<B> {
    fn model_type(&self) -> &str {
        match self {
            crate::load::auto::Seq2SeqModel::T5(m) => m.model_type(),
            crate::load::auto::Seq2SeqModel::Bart(m) => m.model_type(),
        }
    }

    visit_fns!(|m, f| {
        match m {
            crate::load::auto::Seq2SeqModel::T5(x) => sub!("", *x),
            crate::load::auto::Seq2SeqModel::Bart(x) => sub!("", *x),
        }
    });

    fn hf_module_path(&self, module_path: &str) -> String {
        let strip = |variant: &str| {
            module_path
                .strip_prefix(variant)
                .map(|r| r.strip_prefix('.').unwrap_or(r))
                .unwrap_or(module_path)
                .to_string()
        };
        match self {
            crate::load::auto::Seq2SeqModel::T5(m) => m.hf_module_path(&strip("T5")),
            crate::load::auto::Seq2SeqModel::Bart(m) => m.hf_module_path(&strip("Bart")),
        }
    }

    fn output_layers(&self, task_type: Option<&str>) -> Vec<String> {
        match self {
            crate::load::auto::Seq2SeqModel::T5(m) => m.output_layers(task_type),
            crate::load::auto::Seq2SeqModel::Bart(m) => m.output_layers(task_type),
        }
    }
}
