//! Parquet in the hub's schemas: written here with the parquet crate's writer, read back.

use kiln_data::*;

use crate::common::*;

fn sst2_train() -> Vec<SentimentExample> {
    load_sst2(
        &sample("sentiment/train.jsonl"),
        Split::Train,
        &LoadOptions::default(),
    )
    .unwrap()
    .examples
}

fn cnndm(split: Split) -> Vec<SummaryExample> {
    load_cnndm(
        &sample(&format!("cnndm/{split}.jsonl")),
        split,
        &LoadOptions::default(),
    )
    .unwrap()
    .examples
}

#[test]
fn sst2_round_trip_over_row_groups() {
    let rows = sst2_train();
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("data/train-00000-of-00001.parquet");
    write_sst2_parquet(&f, &rows, 64); // 4 row groups, the last one partial
    let l = load_sst2(f.to_str().unwrap(), Split::Train, &LoadOptions::default()).unwrap();
    assert_eq!(l.examples, rows);
    // From the directory (the hub's `data/` layout), and with max_samples inside the second row group.
    let l = load_sst2(
        d.path().to_str().unwrap(),
        Split::Train,
        &LoadOptions {
            max_samples: Some(70),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(l.examples, rows[..70]);
}

#[test]
fn glue_column_order_and_test_labels() {
    // nyu-mll/glue's sst2 files: sentence, label, idx; the test split has label -1.
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("sst2/test-00000-of-00001.parquet");
    write_parquet(
        &f,
        &[
            ("sentence", Col::strs(&["a fine film", "a dull film"])),
            ("label", Col::I64(vec![Some(-1), Some(-1)])),
            ("idx", Col::I32(vec![Some(0), Some(1)])),
        ],
        100,
    );
    let l = load_sst2(
        d.path().to_str().unwrap(),
        Split::Test,
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(
        l.examples[1],
        SentimentExample {
            idx: 1,
            sentence: "a dull film".into(),
            label: -1
        }
    );
}

#[test]
fn cnndm_shards_in_config_directories() {
    let train = cnndm(Split::Train);
    let d = tempfile::tempdir().unwrap();
    // abisee/cnn_dailymail: one directory per config, train in several shards.
    for (i, chunk) in train.chunks(12).enumerate() {
        write_cnndm_parquet(
            &d.path()
                .join(format!("3.0.0/train-0000{i}-of-00003.parquet")),
            chunk,
            5,
        );
    }
    write_cnndm_parquet(
        &d.path().join("1.0.0/train-00000-of-00001.parquet"),
        &train[..3],
        5,
    );
    write_cnndm_parquet(
        &d.path().join("3.0.0/validation-00000-of-00001.parquet"),
        &cnndm(Split::Validation),
        5,
    );
    let src = d.path().to_str().unwrap();
    let l = load_cnndm(src, Split::Train, &LoadOptions::default()).unwrap();
    assert_eq!(
        l.examples, train,
        "3.0.0 is the default config, shards in order"
    );
    assert_eq!(l.report.files.len(), 3);
    let one = load_cnndm(
        src,
        Split::Train,
        &LoadOptions {
            config: Some("1.0.0".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(one.examples, train[..3]);
    // max_samples stops before reading later shards.
    let l = load_cnndm(
        src,
        Split::Train,
        &LoadOptions {
            max_samples: Some(14),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(l.examples, train[..14]);
    assert_eq!(l.report.files.len(), 2);
    assert_eq!(
        load_cnndm(src, Split::Validation, &LoadOptions::default())
            .unwrap()
            .examples
            .len(),
        10
    );
    // SST-2 has no default among these configs: ambiguous.
    write_sst2_parquet(
        &d.path().join("cola/train-00000-of-00001.parquet"),
        &sst2_train()[..2],
        5,
    );
    write_sst2_parquet(
        &d.path().join("mrpc/train-00000-of-00001.parquet"),
        &sst2_train()[..2],
        5,
    );
    let e = load_sst2(src, Split::Train, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&e, Error::AmbiguousConfig { configs, .. } if configs.len() == 4),
        "{e}"
    );
}

#[test]
fn malformed_parquet_rows_keep_columns_aligned() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("train.parquet");
    write_parquet(
        &f,
        &[
            (
                "idx",
                Col::I32(vec![Some(0), Some(1), Some(2), Some(3), Some(4)]),
            ),
            (
                "sentence",
                Col::Str(vec![
                    Some(b"zero".to_vec()),
                    Some(b"bad \xff".to_vec()),
                    Some(b"two".to_vec()),
                    None,
                    Some(b"four".to_vec()),
                ]),
            ),
            (
                "label",
                Col::I64(vec![Some(1), Some(0), Some(7), Some(1), Some(0)]),
            ),
        ],
        2,
    );
    let p = f.to_str().unwrap();
    match load_sst2(p, Split::Train, &LoadOptions::default()) {
        Err(Error::Malformed(e)) => {
            assert_eq!(e.loc, Loc::Row(1));
            assert!(e.reason.contains("invalid UTF-8"), "{e}");
            assert!(e.to_string().contains("row 1"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let l = load_sst2(
        p,
        Split::Train,
        &LoadOptions {
            on_error: OnError::Skip,
            ..Default::default()
        },
    )
    .unwrap();
    let got: Vec<_> = l
        .examples
        .iter()
        .map(|e| (e.idx, e.sentence.as_str(), e.label))
        .collect();
    assert_eq!(got, [(0, "zero", 1), (4, "four", 0)]);
    let skipped: Vec<_> = l.report.skipped.iter().map(|s| s.loc).collect();
    assert_eq!(skipped, [Loc::Row(1), Loc::Row(2), Loc::Row(3)]);
    assert!(l.report.skipped[1].reason.contains("bad label"));
    assert!(l.report.skipped[2].reason.contains("null"));
}

#[test]
fn parquet_file_problems() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("nolabel.parquet");
    write_parquet(&f, &[("sentence", Col::strs(&["x"]))], 10);
    let e = load_sst2(f.to_str().unwrap(), Split::Train, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&e, Error::Malformed(r) if r.loc == Loc::File && r.reason.contains("missing column `label`")),
        "{e}"
    );
    // Not a parquet file at all.
    let g = d.path().join("garbage.parquet");
    std::fs::write(&g, b"this is not parquet, just text pretending to be").unwrap();
    let e = load_sst2(g.to_str().unwrap(), Split::Train, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&e, Error::Malformed(r) if r.loc == Loc::File),
        "{e}"
    );
    let l = load_sst2(
        g.to_str().unwrap(),
        Split::Train,
        &LoadOptions {
            on_error: OnError::Skip,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((l.examples.len(), l.report.skipped.len()), (0, 1));
    // A truncated download (the footer cut off).
    let h = d.path().join("cut.parquet");
    write_sst2_parquet(&h, &sst2_train(), 64);
    let bytes = std::fs::read(&h).unwrap();
    std::fs::write(&h, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        load_sst2(h.to_str().unwrap(), Split::Train, &LoadOptions::default()),
        Err(Error::Malformed(_))
    ));
    // Zero rows is fine.
    let z = d.path().join("zero.parquet");
    write_sst2_parquet(&z, &[], 10);
    assert!(
        load_sst2(z.to_str().unwrap(), Split::Train, &LoadOptions::default())
            .unwrap()
            .examples
            .is_empty()
    );
}
