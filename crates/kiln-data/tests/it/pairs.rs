//! Sentence-pair datasets in the GLUE schemas (MRPC's original TSV, GLUE's RTE TSV with string labels, the Hub's
//! parquet and JSON lines), and pair tokenization identical to transformers' tokenizer on a pair
//! (fixtures/reference/bert.json `pairs`).

use kiln_data::{load_pairs, tokenize_pairs, LoadOptions, OnError, Split};

use crate::common::*;

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn mrpc_rte_and_jsonl_pairs_load() {
    let t = tempfile::tempdir().unwrap();
    let mrpc = write(
        t.path(),
        "train.tsv",
        "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tThe cat sat.\tA cat was sitting.\n0\t3\t4\tIt rained.\tThe sun shone.\n",
    );
    let got = load_pairs(&mrpc, Split::Train, &LoadOptions::default())
        .unwrap()
        .examples;
    assert_eq!(got.len(), 2);
    assert_eq!(
        (
            got[0].text.as_str(),
            got[0].text_pair.as_str(),
            got[0].label
        ),
        ("The cat sat.", "A cat was sitting.", 1)
    );
    assert_eq!((got[1].idx, got[1].label), (1, 0));

    let rte = write(
        t.path(),
        "dev.tsv",
        "index\tsentence1\tsentence2\tlabel\n7\tA man sleeps.\tA person rests.\tentailment\n8\tA dog runs.\tNo animal moves.\tnot_entailment\n",
    );
    let got = load_pairs(&rte, Split::Validation, &LoadOptions::default())
        .unwrap()
        .examples;
    assert_eq!(
        got.iter().map(|e| (e.idx, e.label)).collect::<Vec<_>>(),
        [(7, 0), (8, 1)]
    );

    let jsonl = write(
        t.path(),
        "validation.jsonl",
        "{\"premise\": \"p\", \"hypothesis\": \"h\", \"label\": 2, \"idx\": 0}\n{\"premise\": \"p2\", \"hypothesis\": \"h2\", \"label\": \"neutral\", \"idx\": 1}\n",
    );
    let got = load_pairs(&jsonl, Split::Validation, &LoadOptions::default())
        .unwrap()
        .examples;
    assert_eq!(got.iter().map(|e| e.label).collect::<Vec<_>>(), [2, 1]);

    // The test split may have no label column; other splits may not.
    let test = write(
        t.path(),
        "test.tsv",
        "index\tsentence1\tsentence2\n0\ta\tb\n",
    );
    assert_eq!(
        load_pairs(&test, Split::Test, &LoadOptions::default())
            .unwrap()
            .examples[0]
            .label,
        -1
    );
    let e = load_pairs(&test, Split::Train, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("label") && e.contains("test.tsv"), "{e}");

    // A bad label names the file and the line; Skip reports it and keeps the rest.
    let bad = write(
        t.path(),
        "bad.tsv",
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n1\tc\td\t1\n",
    );
    let e = load_pairs(&bad, Split::Train, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.tsv") && e.contains("maybe"), "{e}");
    let opts = LoadOptions {
        on_error: OnError::Skip,
        ..Default::default()
    };
    let l = load_pairs(&bad, Split::Train, &opts).unwrap();
    assert_eq!((l.examples.len(), l.report.skipped.len()), (1, 1));
}

#[test]
fn hub_parquet_schema_loads() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("train.parquet");
    write_parquet(
        &p,
        &[
            ("sentence1", Col::strs(&["one", "two"])),
            ("sentence2", Col::strs(&["uno", "dos"])),
            ("label", Col::I64(vec![Some(1), Some(0)])),
            ("idx", Col::I64(vec![Some(10), Some(11)])),
        ],
        1,
    );
    let got = load_pairs(p.to_str().unwrap(), Split::Train, &LoadOptions::default())
        .unwrap()
        .examples;
    assert_eq!(
        got.iter()
            .map(|e| (e.idx, e.label, e.text_pair.as_str()))
            .collect::<Vec<_>>(),
        [(10, 1, "uno"), (11, 0, "dos")]
    );
}

#[test]
fn pair_tokenization_matches_transformers() {
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("reference/bert.json")).unwrap(),
    )
    .unwrap();
    let p = &r["pairs"];
    let examples: Vec<kiln_data::PairExample> = p["first"]
        .as_array()
        .unwrap()
        .iter()
        .zip(p["second"].as_array().unwrap())
        .enumerate()
        .map(|(i, (a, b))| kiln_data::PairExample {
            idx: i as i64,
            text: a.as_str().unwrap().into(),
            text_pair: b.as_str().unwrap().into(),
            label: 1,
        })
        .collect();
    let tok = bert_tokenizer();
    let got = tokenize_pairs(&tok, &examples, None).unwrap();
    for (i, f) in got.features.iter().enumerate() {
        // The reference rows are right-padded with 0; the mask gives each row's length.
        let n = p["attention_mask"][i]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x.as_u64() == Some(1))
            .count();
        let ids: Vec<u32> = p["input_ids"][i].as_array().unwrap()[..n]
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let types: Vec<u32> = p["token_type_ids"][i].as_array().unwrap()[..n]
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(f.input_ids, ids, "row {i}");
        assert_eq!(f.token_type_ids, types, "row {i}");
        assert!(types.contains(&1));
    }
}
