//! A minimal LoRA fine-tuning loop on the library API (no recipe, no `kiln_train::train`): load GPT-2, attach
//! LoRA, take ten AdamW steps on a few texts with the causal-LM loss, save the adapter in peft's format.
//!
//!     cargo run --release -p kiln-train --example lora_finetune -- [MODEL_DIR_OR_HUB_ID] [OUT_DIR]
//!
//! Defaults to the tiny random GPT-2 in `fixtures/gpt2` and a directory under the system temp dir. The saved
//! adapter loads in Python (`PeftModel.from_pretrained(model, out_dir)`) and in kiln
//! (`kiln_peft::LoraModel::from_pretrained`, `kiln generate --adapter OUT_DIR`).

use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use kiln_models::attention::ids_tensor;
use kiln_models::auto::{CausalModel, CausalPipeline};
use kiln_peft::{LoraConfig, LoraModel};
use kiln_train::loss::causal_lm_loss;

/// Training needs an autodiff backend: burn's CPU backend with gradients.
type B = Autodiff<Flex>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/gpt2").to_string());
    let out_dir = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("kiln-lora-finetune-example"));

    let device = Default::default();
    B::seed(&device, 0); // LoRA A's initialisation and dropout masks
    let CausalPipeline {
        model: base,
        tokenizer,
        generation,
        ..
    } = CausalPipeline::<B>::load(&model, &device)?;

    // peft's get_peft_model: LoRA on the attention projection; only the LoRA matrices require gradients.
    let config = LoraConfig::new(8, 16.0)
        .with_target_modules(["c_attn"])
        .with_task_type("CAUSAL_LM");
    let mut lora = LoraModel::inject(base, config)?;
    lora.mark_trainable();
    println!("{}", lora.trainable_parameters());

    // A few texts, tokenized, right-padded into one batch with its attention mask.
    let texts = [
        "the script is sharp, witty and full of heart.",
        "a warm, funny film with a wonderful cast.",
        "the film wastes its interesting premise on a dull, tired plot.",
        "slow, muddled and far too long.",
    ];
    let rows = texts
        .iter()
        .map(|t| tokenizer.encode(t, Some(32)).map(|e| e.ids))
        .collect::<Result<Vec<_>, _>>()?;
    let len = rows.iter().map(Vec::len).max().unwrap_or(0);
    let pad = generation
        .pad_token_id
        .or(generation.eos_token_id.first().copied())
        .unwrap_or(0);
    let mask: Vec<Vec<u8>> = rows
        .iter()
        .map(|r| (0..len).map(|i| u8::from(i < r.len())).collect())
        .collect();
    let ids: Vec<Vec<u32>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .copied()
                .chain(std::iter::repeat(pad))
                .take(len)
                .collect()
        })
        .collect();

    // Plain burn: forward, loss, backward, optimizer step. The optimizer only sees LoRA's gradients.
    let mut optim = AdamWConfig::new()
        .with_weight_decay(0.01)
        .init::<B, CausalModel<B>>();
    for step in 1..=10 {
        let logits = lora
            .model
            .forward(ids_tensor::<B>(&ids, &device), Some(mask.as_slice()));
        // Next-token cross-entropy: logits at position i predict ids[i + 1]; padding is ignored.
        let loss = causal_lm_loss(logits, &ids, &mask)?;
        println!(
            "step {step:2}  loss {:.4}",
            loss.clone().into_scalar().elem::<f32>()
        );
        let grads = GradientsParams::from_grads(loss.backward(), &lora.model);
        lora.model = optim.step(1e-2, lora.model, grads);
    }

    // adapter_config.json + adapter_model.safetensors, in peft's layout.
    lora.save_pretrained(&out_dir)?;
    println!("adapter saved to {}", out_dir.display());
    Ok(())
}
