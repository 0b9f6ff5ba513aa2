//! Every bundled sample file parses, with the documented counts; the formats agree.

use kiln_data::*;

use crate::common::*;

fn opts() -> LoadOptions {
    LoadOptions::default()
}

#[test]
fn sentiment_counts_and_formats_agree() {
    for (split, n) in [
        (Split::Train, 240),
        (Split::Validation, 60),
        (Split::Test, 40),
    ] {
        let tsv = load_sst2(&sample(&format!("sentiment/{split}.tsv")), split, &opts()).unwrap();
        let jsonl =
            load_sst2(&sample(&format!("sentiment/{split}.jsonl")), split, &opts()).unwrap();
        assert_eq!(tsv.examples.len(), n, "{split} tsv");
        assert_eq!(tsv.report.rows, n);
        assert!(tsv.report.skipped.is_empty() && jsonl.report.skipped.is_empty());
        // The TSV has no idx column: idx is the row position, which is what the JSONL's idx holds.
        assert_eq!(
            tsv.examples, jsonl.examples,
            "{split}: TSV and JSONL differ"
        );
        let pos = tsv.examples.iter().filter(|e| e.label == 1).count();
        let neg = tsv.examples.iter().filter(|e| e.label == 0).count();
        match split {
            Split::Test => assert!(tsv.examples.iter().all(|e| e.label == -1)),
            _ => assert_eq!((pos, neg), (n / 2, n / 2), "{split}"),
        }
        assert!(tsv.examples.iter().all(|e| !e.sentence.is_empty()));
    }
}

#[test]
fn cnndm_counts_and_csv_matches_jsonl() {
    for (split, n) in [
        (Split::Train, 36),
        (Split::Validation, 10),
        (Split::Test, 6),
    ] {
        let l = load_cnndm(&sample(&format!("cnndm/{split}.jsonl")), split, &opts()).unwrap();
        assert_eq!(l.examples.len(), n, "{split}");
        for e in &l.examples {
            assert_eq!(e.id.len(), 40, "{}", e.id);
            assert!(e.id.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(!e.article.is_empty() && !e.highlights.is_empty());
        }
        assert!(l.examples.iter().any(|e| e.highlights.contains('\n')));
    }
    let csv = load_cnndm(&sample("cnndm/validation.csv"), Split::Validation, &opts()).unwrap();
    let jsonl = load_cnndm(
        &sample("cnndm/validation.jsonl"),
        Split::Validation,
        &opts(),
    )
    .unwrap();
    assert_eq!(csv.examples.len(), 10);
    assert_eq!(
        csv.examples, jsonl.examples,
        "CSV (quoted, multi-line fields) and JSONL differ"
    );
}

#[test]
fn directory_source_finds_the_split() {
    let dir = sample("sentiment");
    let v = load_sst2(&dir, Split::Validation, &opts()).unwrap();
    assert_eq!(v.examples.len(), 60);
    // Both formats are there; JSON lines is preferred over TSV unless a format is forced.
    assert!(
        v.report.files[0].ends_with("validation.jsonl"),
        "{:?}",
        v.report.files
    );
    let t = load_sst2(
        &dir,
        Split::Validation,
        &LoadOptions {
            format: Some(Format::Tsv),
            ..opts()
        },
    )
    .unwrap();
    assert!(t.report.files[0].ends_with("validation.tsv"));
    assert_eq!(t.examples, v.examples);

    let c = load_cnndm(
        &sample("cnndm"),
        Split::Validation,
        &LoadOptions {
            format: Some(Format::Csv),
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(c.examples.len(), 10);

    // GLUE's `dev.tsv` name for validation.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        samples().join("sentiment/validation.tsv"),
        tmp.path().join("dev.tsv"),
    )
    .unwrap();
    let d = load_sst2(
        tmp.path().to_str().unwrap(),
        "validation".parse().unwrap(),
        &opts(),
    )
    .unwrap();
    assert_eq!(d.examples, v.examples);
    assert!(matches!(
        load_sst2(tmp.path().to_str().unwrap(), Split::Train, &opts()),
        Err(Error::NoSplit { .. })
    ));
}

#[test]
fn max_samples_keeps_the_first_rows() {
    let all = load_sst2(&sample("sentiment/train.tsv"), Split::Train, &opts()).unwrap();
    let some = load_sst2(
        &sample("sentiment/train.tsv"),
        Split::Train,
        &LoadOptions {
            max_samples: Some(7),
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(some.examples, all.examples[..7]);
    assert_eq!(some.report.rows, 7);
    let none = load_sst2(
        &sample("sentiment/train.tsv"),
        Split::Train,
        &LoadOptions {
            max_samples: Some(0),
            ..opts()
        },
    )
    .unwrap();
    assert!(none.examples.is_empty());
}

#[test]
fn split_names_parse() {
    assert_eq!("train".parse::<Split>().unwrap(), Split::Train);
    assert_eq!("dev".parse::<Split>().unwrap(), Split::Validation);
    assert_eq!("Validation".parse::<Split>().unwrap(), Split::Validation);
    assert!("holdout".parse::<Split>().is_err());
}

#[test]
fn missing_sources_are_clear_errors() {
    let e = load_sst2("/nonexistent/kiln/sst2", Split::Train, &opts()).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/kiln/sst2"), "{e}");
    let tmp = tempfile::tempdir().unwrap();
    let odd = tmp.path().join("train.xlsx");
    std::fs::write(&odd, "x").unwrap();
    assert!(matches!(
        load_sst2(odd.to_str().unwrap(), Split::Train, &opts()),
        Err(Error::UnsupportedFormat { .. })
    ));
}
