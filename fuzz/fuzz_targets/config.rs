//! `config.json` / `generation_config.json` parsing: RawConfig::parse then every architecture's
//! `from_raw`, and GenerationConfig::update_from_json + validate. Errors are fine; panics are not.
//!
//! Then config → model construction → loading against the bundled fixture's weights (shapes compared with the
//! safetensors headers before anything is allocated), and the special ids against the config's vocabulary. Run
//! under libFuzzer's memory limits (`-rss_limit_mb`, `-malloc_limit_mb`, 2048 MB by default), an allocation
//! sized by the config rather than by the weights is a crash: a config whose fields are each in range but whose
//! model is terabytes used to abort the process there.
#![no_main]

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use kiln_models::config::RawConfig;
use kiln_models::generation::GenerationConfig;
use kiln_models::weights::load_into;
use kiln_models::{bart, bert, gpt2, opt, t5};
use libfuzzer_sys::fuzz_target;

type B = Flex;

fn weights(model: &str) -> Vec<PathBuf> {
    vec![Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(model)
        .join("model.safetensors")]
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz/config.json");
    let dev = Default::default();
    let mut vocab = None;
    if let Ok(raw) = RawConfig::parse(path, text) {
        let _ = raw.model_type();
        if let Ok(c) = gpt2::Gpt2Config::from_raw(&raw) {
            vocab = Some(c.vocab_size);
            let mut m = c.init::<B>(&dev);
            let _ = load_into(&mut m, &weights("gpt2"), &gpt2::Gpt2Config::load_spec());
        }
        if let Ok(c) = bert::BertConfig::from_raw(&raw) {
            vocab = Some(c.vocab_size);
            let mut m = c.init::<B>(&dev);
            let _ = load_into(
                &mut m,
                &weights("bert"),
                &bert::BertConfig::model_load_spec(),
            );
        }
        if let Ok(c) = opt::OptConfig::from_raw(&raw) {
            vocab = Some(c.vocab_size);
            let mut m = c.init::<B>(&dev);
            let _ = load_into(&mut m, &weights("opt"), &opt::OptConfig::load_spec());
        }
        if let Ok(c) = bart::BartConfig::from_raw(&raw) {
            vocab = Some(c.vocab_size);
            let mut m = c.init::<B>(&dev);
            let _ = load_into(&mut m, &weights("bart"), &bart::BartConfig::load_spec());
        }
        if let Ok(c) = t5::T5Config::from_raw(&raw) {
            vocab = Some(c.vocab_size);
            let mut m = c.init::<B>(&dev);
            let _ = load_into(&mut m, &weights("t5"), &t5::T5Config::load_spec());
        }
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        let mut g = GenerationConfig::default();
        if g.update_from_json(path, &v).is_ok() {
            let _ = g.validate();
            let _ = g.check_token_ids(vocab.unwrap_or(400));
        }
    }
});
