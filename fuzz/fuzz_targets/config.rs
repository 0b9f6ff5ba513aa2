//! `config.json` / `generation_config.json` parsing: RawConfig::parse then every architecture's
//! `from_raw`, and GenerationConfig::update_from_json + validate. Errors are fine; panics are not.
#![no_main]

use std::path::Path;

use kiln_models::config::RawConfig;
use kiln_models::generation::GenerationConfig;
use kiln_models::{bart, bert, gpt2, opt, t5};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("fuzz/config.json");
    if let Ok(raw) = RawConfig::parse(path, text) {
        let _ = raw.model_type();
        let _ = gpt2::Gpt2Config::from_raw(&raw);
        let _ = bert::BertConfig::from_raw(&raw);
        let _ = opt::OptConfig::from_raw(&raw);
        let _ = bart::BartConfig::from_raw(&raw);
        let _ = t5::T5Config::from_raw(&raw);
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        let mut g = GenerationConfig::default();
        if g.update_from_json(path, &v).is_ok() {
            let _ = g.validate();
        }
    }
});
