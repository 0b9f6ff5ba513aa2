//! Malformed input: bad label, missing column, invalid UTF-8, empty file, truncated JSON line — each reported
//! with file and line (row for parquet), skipped with `Skip`, fatal with `Fail`, never a panic.

use std::path::{Path, PathBuf};

use kiln_data::*;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn with(on_error: OnError) -> LoadOptions {
    LoadOptions {
        on_error,
        ..Default::default()
    }
}

/// Load `file` both ways: `Fail` must name `loc` and a reason containing `why`; `Skip` must keep `good` rows
/// and record exactly that one problem.
fn check_sst2(file: &Path, split: Split, loc: Loc, why: &str, good: usize) {
    let f = file.to_str().unwrap();
    match load_sst2(f, split, &with(OnError::Fail)) {
        Err(Error::Malformed(e)) => {
            assert_eq!(e.file, file);
            assert_eq!(e.loc, loc, "{e}");
            assert!(
                e.reason.contains(why),
                "reason `{}` lacks `{why}`",
                e.reason
            );
            let msg = Error::Malformed(e.clone()).to_string();
            assert!(msg.contains(f), "{msg}");
        }
        other => panic!("{f}: expected a malformed-row error, got {other:?}"),
    }
    let l = load_sst2(f, split, &with(OnError::Skip)).unwrap();
    assert_eq!(l.examples.len(), good, "{f}");
    assert_eq!(l.report.rows, good);
    assert_eq!(l.report.skipped.len(), 1, "{:?}", l.report.skipped);
    assert_eq!(l.report.skipped[0].loc, loc);
    assert!(l.report.skipped[0].reason.contains(why));
}

#[test]
fn tsv_matrix() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let bad_label = write(
        d,
        "bad_label.tsv",
        b"sentence\tlabel\ngood film\t1\nodd film\tpositive\nbad film\t0\n",
    );
    check_sst2(&bad_label, Split::Train, Loc::Line(3), "bad label", 2);
    let out_of_range = write(
        d,
        "range.tsv",
        b"sentence\tlabel\ngood film\t1\nbad film\t0\nodd film\t2\n",
    );
    check_sst2(
        &out_of_range,
        Split::Train,
        Loc::Line(4),
        "not 0, 1 or -1",
        2,
    );
    let missing_field = write(
        d,
        "missing.tsv",
        b"sentence\tlabel\ngood film\t1\nno label here\nbad film\t0\n",
    );
    check_sst2(&missing_field, Split::Train, Loc::Line(3), "found 1", 2);
    let utf8 = write(
        d,
        "utf8.tsv",
        b"sentence\tlabel\ngood film\t1\nbad \xff\xfe bytes\t0\nbad film\t0\n",
    );
    check_sst2(&utf8, Split::Train, Loc::Line(3), "invalid UTF-8", 2);
    // CRLF line ends and a final line without a newline are fine.
    let crlf = write(
        d,
        "crlf.tsv",
        b"sentence\tlabel\r\ngood film\t1\r\nbad film\t0",
    );
    let l = load_sst2(crlf.to_str().unwrap(), Split::Train, &with(OnError::Fail)).unwrap();
    assert_eq!(
        l.examples.iter().map(|e| e.label).collect::<Vec<_>>(),
        [1, 0]
    );
    assert_eq!(l.examples[1].sentence, "bad film");
}

#[test]
fn missing_header_column_is_a_file_problem() {
    let d = tempfile::tempdir().unwrap();
    let f = write(d.path(), "nolabel.tsv", b"sentence\ngood film\nbad film\n");
    check_sst2(&f, Split::Train, Loc::Line(1), "missing column `label`", 0);
    // ... except for the test split, which GLUE ships without labels (and with an `index` column).
    let g = write(
        d.path(),
        "test.tsv",
        b"index\tsentence\n0\tgood film\n1\tbad film\n",
    );
    let l = load_sst2(g.to_str().unwrap(), Split::Test, &with(OnError::Fail)).unwrap();
    assert_eq!(
        l.examples[1],
        SentimentExample {
            idx: 1,
            sentence: "bad film".into(),
            label: -1
        }
    );
    let nos = write(d.path(), "nosentence.csv", b"text,label\nx,1\n");
    check_sst2(
        &nos,
        Split::Test,
        Loc::Line(1),
        "missing column `sentence`",
        0,
    );
}

#[test]
fn jsonl_matrix() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let ok = r#"{"idx": 0, "sentence": "good film", "label": 1}"#;
    let rows = |bad: &str| format!("{ok}\n{bad}\n{ok}\n").into_bytes();
    check_sst2(
        &write(
            d,
            "a.jsonl",
            &rows(r#"{"idx": 1, "sentence": "x", "label": "positive"}"#),
        ),
        Split::Train,
        Loc::Line(2),
        "bad label",
        2,
    );
    check_sst2(
        &write(
            d,
            "b.jsonl",
            &rows(r#"{"idx": 1, "sentence": "x", "label": 1.5}"#),
        ),
        Split::Train,
        Loc::Line(2),
        "bad label",
        2,
    );
    check_sst2(
        &write(d, "c.jsonl", &rows(r#"{"idx": 1, "sentence": "x"}"#)),
        Split::Train,
        Loc::Line(2),
        "missing column `label`",
        2,
    );
    check_sst2(
        &write(d, "d.jsonl", &rows(r#"{"idx": 1, "label": 0}"#)),
        Split::Train,
        Loc::Line(2),
        "missing column `sentence`",
        2,
    );
    check_sst2(
        &write(
            d,
            "e.jsonl",
            &rows(r#"{"idx": 1, "sentence": null, "label": 0}"#),
        ),
        Split::Train,
        Loc::Line(2),
        "found null",
        2,
    );
    check_sst2(
        &write(d, "f.jsonl", &rows(r#"[1, 2]"#)),
        Split::Train,
        Loc::Line(2),
        "JSON object",
        2,
    );
    let mut utf8 = rows("").to_vec();
    utf8.splice(
        ok.len() + 1..ok.len() + 1,
        b"{\"sentence\": \"\xc3\x28\", \"label\": 0}"
            .iter()
            .copied(),
    );
    check_sst2(
        &write(d, "g.jsonl", &utf8),
        Split::Train,
        Loc::Line(2),
        "invalid UTF-8",
        2,
    );
    // A truncated last line (a download cut short), without a final newline.
    let cut = format!("{ok}\n{ok}\n{}", &ok[..20]);
    check_sst2(
        &write(d, "h.jsonl", cut.as_bytes()),
        Split::Train,
        Loc::Line(3),
        "invalid JSON",
        2,
    );
    // Blank lines are not rows.
    let blank = format!("\n{ok}\n\n{ok}\n\n");
    let l = load_sst2(
        write(d, "i.jsonl", blank.as_bytes()).to_str().unwrap(),
        Split::Train,
        &with(OnError::Fail),
    )
    .unwrap();
    assert_eq!(l.examples.len(), 2);
}

#[test]
fn csv_matrix() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let f = write(d, "a.csv", b"id,article,highlights\n1,\"one, \"\"quoted\"\"\nline two\",h1\n2,art\xff,h2\n3,plain,h3\n");
    match load_cnndm(f.to_str().unwrap(), Split::Validation, &with(OnError::Fail)) {
        Err(Error::Malformed(e)) => {
            assert_eq!(e.loc, Loc::Line(4), "{e}");
            assert!(e.reason.contains("invalid UTF-8"));
        }
        other => panic!("{other:?}"),
    }
    let l = load_cnndm(f.to_str().unwrap(), Split::Validation, &with(OnError::Skip)).unwrap();
    assert_eq!(l.examples.len(), 2);
    assert_eq!(l.examples[0].article, "one, \"quoted\"\nline two");
    assert_eq!(l.examples[1].id, "3");
    assert_eq!(l.report.skipped[0].loc, Loc::Line(4));

    let g = write(
        d,
        "b.csv",
        b"id,article,highlights\n1,a,h\n2,\"never closed,h\n3,b,h\n",
    );
    let l = load_cnndm(g.to_str().unwrap(), Split::Validation, &with(OnError::Skip)).unwrap();
    assert_eq!(l.examples.len(), 1);
    assert_eq!(l.report.skipped[0].loc, Loc::Line(3));
    assert!(l.report.skipped[0].reason.contains("unterminated"));

    let h = write(d, "c.csv", b"id,article\n1,a\n");
    let e = load_cnndm(h.to_str().unwrap(), Split::Validation, &with(OnError::Fail)).unwrap_err();
    assert!(e.to_string().contains("missing column `highlights`"), "{e}");
}

#[test]
fn empty_files() {
    let d = tempfile::tempdir().unwrap();
    for name in ["e.tsv", "e.jsonl", "e.csv", "e.parquet"] {
        for bytes in [&b""[..], b"\n \n"] {
            if name.ends_with("parquet") && !bytes.is_empty() {
                continue;
            }
            let f = write(d.path(), name, bytes);
            check_sst2(&f, Split::Train, Loc::File, "empty file", 0);
        }
    }
    // A header and no rows is not malformed: zero rows.
    let f = write(d.path(), "h.tsv", b"sentence\tlabel\n");
    let l = load_sst2(f.to_str().unwrap(), Split::Train, &with(OnError::Fail)).unwrap();
    assert!(l.examples.is_empty() && l.report.skipped.is_empty());
}

#[test]
fn skip_continues_past_a_bad_file_in_a_directory() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "train-00000-of-00002.jsonl", b"");
    write(
        d.path(),
        "train-00001-of-00002.jsonl",
        br#"{"sentence": "fine", "label": 1}"#,
    );
    let src = d.path().to_str().unwrap();
    let l = load_sst2(src, Split::Train, &with(OnError::Skip)).unwrap();
    assert_eq!(l.examples.len(), 1);
    assert_eq!(l.report.files.len(), 2);
    assert_eq!(l.report.skipped[0].loc, Loc::File);
    assert!(matches!(
        load_sst2(src, Split::Train, &with(OnError::Fail)),
        Err(Error::Malformed(_))
    ));
}
