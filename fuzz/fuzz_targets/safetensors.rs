//! Safetensors header validation (kiln_models::weights::inspect_safetensors) on arbitrary bytes.
#![no_main]

use kiln_models::weights::inspect_safetensors_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = inspect_safetensors_bytes(std::path::Path::new("fuzz.safetensors"), data);
});
