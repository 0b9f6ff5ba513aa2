//! PEFT adapter files: `adapter_config.json` (LoraConfig::from_json, which validates, then the target
//! matcher and init) and `adapter_model.safetensors` (kiln_peft::read_tensors on a temp file).
#![no_main]

use std::io::Write;
use std::path::Path;

use kiln_peft::{LoraConfig, TargetMatcher};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which & 1 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        let path = Path::new("fuzz/adapter_config.json");
        if let Ok(cfg) = LoraConfig::from_json(path, text) {
            let _ = cfg.init();
            let _ = cfg.resolved_modules_to_save();
            let _ = cfg.to_json();
            let linears: Vec<String> = [
                "encoder.layer.0.attention.self.query",
                "h.1.attn.c_attn",
                "lm_head",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if let Ok(m) = TargetMatcher::new(&cfg, "bert", &linears, &["lm_head".to_string()]) {
                for l in &linears {
                    if m.is_target(l) {
                        let _ = m.rank_alpha(l);
                    }
                }
            }
        }
    } else {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(rest).expect("write temp file");
        f.flush().expect("flush");
        let _ = kiln_peft::read_tensors(f.path());
    }
});
