//! Dataset row parsers (JSON lines, TSV, CSV) through the public loaders `load_sst2` / `load_cnndm` on a
//! temp file, with both error policies. The first byte picks format, loader and policy.
#![no_main]

use std::io::Write;

use kiln_data::load::{load_cnndm, load_sst2, LoadOptions, OnError, Split};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let ext = match sel % 3 {
        0 => ".jsonl",
        1 => ".tsv",
        _ => ".csv",
    };
    let mut f = tempfile::Builder::new()
        .prefix("train")
        .suffix(ext)
        .tempfile()
        .expect("temp file");
    f.write_all(rest).expect("write temp file");
    f.flush().expect("flush");
    let opts = LoadOptions {
        on_error: if sel & 8 != 0 {
            OnError::Skip
        } else {
            OnError::Fail
        },
        max_samples: if sel & 16 != 0 { Some(3) } else { None },
        ..Default::default()
    };
    let src = f.path().to_str().expect("utf-8 temp path");
    if sel & 4 == 0 {
        let _ = load_sst2(src, Split::Train, &opts);
    } else {
        let _ = load_cnndm(src, Split::Train, &opts);
    }
});
