//! Hub dataset repositories through a loopback server in the hub's URL layout, then offline from the cache.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use kiln_data::*;

use crate::common::*;
use crate::fake_hub::FakeHub;

fn sst2_split(split: Split) -> Vec<SentimentExample> {
    load_sst2(
        &sample(&format!("sentiment/{split}.jsonl")),
        split,
        &LoadOptions::default(),
    )
    .unwrap()
    .examples
}

fn with_hub(o: kiln_models::hub::HubOptions) -> LoadOptions {
    LoadOptions {
        hub: Some(o),
        ..Default::default()
    }
}

#[test]
fn download_parquet_split_then_offline() {
    // stanfordnlp/sst2's layout.
    let repo = tempfile::tempdir().unwrap();
    write_sst2_parquet(
        &repo.path().join("data/train-00000-of-00001.parquet"),
        &sst2_split(Split::Train),
        100,
    );
    write_sst2_parquet(
        &repo.path().join("data/validation-00000-of-00001.parquet"),
        &sst2_split(Split::Validation),
        100,
    );
    std::fs::write(repo.path().join("README.md"), "# sst2\n").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(HashMap::from([(
        "kiln-test/sst2".to_string(),
        repo.path().to_path_buf(),
    )]));

    let online = with_hub(hub_opts(cache.path(), Some(&hub.url), false));
    let l = load_sst2("kiln-test/sst2", Split::Train, &online).unwrap();
    assert_eq!(l.examples, sst2_split(Split::Train));
    // Python's huggingface_hub cache layout for datasets.
    let root = cache.path().join("datasets--kiln-test--sst2");
    assert!(root.join("refs/main").is_file());
    assert!(
        l.report.files[0].starts_with(root.join("snapshots")),
        "{:?}",
        l.report.files
    );
    assert!(l.report.files[0].ends_with("data/train-00000-of-00001.parquet"));
    // Only the requested split was downloaded.
    let got = hub.downloads.lock().unwrap().clone();
    assert!(
        !got.is_empty() && got.iter().all(|f| f == "data/train-00000-of-00001.parquet"),
        "{got:?}"
    );
    assert!(hub.requests.load(Ordering::SeqCst) > 0);
    drop(hub);

    // Offline: no server, the cache only.
    let offline = with_hub(hub_opts(cache.path(), Some("http://127.0.0.1:9"), true));
    let l2 = load_sst2("kiln-test/sst2", Split::Train, &offline).unwrap();
    assert_eq!(l2.examples, l.examples);
    assert_eq!(l2.report.files, l.report.files);
    // A split never downloaded is not in the cache.
    let e = load_sst2("kiln-test/sst2", Split::Validation, &offline).unwrap_err();
    assert!(matches!(e, Error::NoSplit { .. }), "{e}");
    // A repository never downloaded: a hub error that says offline.
    let e = load_sst2("kiln-test/absent", Split::Train, &offline).unwrap_err();
    assert!(
        e.to_string().contains("kiln-test/absent") && e.to_string().contains("offline"),
        "{e}"
    );
}

#[test]
fn glue_configs_and_cnndm_shards() {
    let repo = tempfile::tempdir().unwrap();
    let rows = sst2_split(Split::Validation);
    write_sst2_parquet(
        &repo.path().join("sst2/validation-00000-of-00001.parquet"),
        &rows,
        100,
    );
    write_sst2_parquet(
        &repo.path().join("cola/validation-00000-of-00001.parquet"),
        &rows[..5],
        100,
    );
    let cnn = tempfile::tempdir().unwrap();
    let train = load_cnndm(
        &sample("cnndm/train.jsonl"),
        Split::Train,
        &LoadOptions::default(),
    )
    .unwrap()
    .examples;
    for (i, c) in train.chunks(18).enumerate() {
        write_cnndm_parquet(
            &cnn.path()
                .join(format!("3.0.0/train-0000{i}-of-00002.parquet")),
            c,
            100,
        );
    }
    let cache = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(HashMap::from([
        ("kiln-test/glue".to_string(), repo.path().to_path_buf()),
        (
            "kiln-test/cnn_dailymail".to_string(),
            cnn.path().to_path_buf(),
        ),
    ]));
    let o = with_hub(hub_opts(cache.path(), Some(&hub.url), false));
    assert_eq!(
        load_sst2("kiln-test/glue", Split::Validation, &o)
            .unwrap()
            .examples,
        rows
    );
    let cola = LoadOptions {
        config: Some("cola".into()),
        ..o.clone()
    };
    assert_eq!(
        load_sst2("kiln-test/glue", Split::Validation, &cola)
            .unwrap()
            .examples,
        rows[..5]
    );
    let l = load_cnndm("kiln-test/cnn_dailymail", Split::Train, &o).unwrap();
    assert_eq!(l.examples, train);
    assert_eq!(l.report.files.len(), 2);

    let e = load_sst2("kiln-test/missing", Split::Train, &o).unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
}
