//! The hub path end to end against a loopback server that serves the fixtures in the hub's URL layout
//! (`/{repo}/resolve/{revision}/{file}`, with the `etag`, `x-repo-commit` and `Content-Range` headers that
//! hf-hub reads), then offline from the cache it filled.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;

use kiln_models::hub::{HubOptions, Source};
use kiln_models::{gpt2, Error};

use crate::common::*;
use crate::fake_hub::FakeHub;

fn opts(cache: &Path, endpoint: Option<&str>, offline: bool) -> HubOptions {
    HubOptions {
        cache_dir: cache.to_path_buf(),
        endpoint: endpoint.map(str::to_string),
        offline,
        revision: "main".into(),
        progress: false,
    }
}

fn assert_logits_match(dir: &Path) {
    let (_, m, _) = gpt2::load::<B>(dir, &device()).unwrap();
    let r = reference("gpt2");
    let inp = &r["inputs"][0];
    let t = kiln_models::attention::ids_tensor::<B>(&[u32s(&inp["ids"])], &device());
    let got: Vec<f32> = m.forward(t, None).into_data().to_vec().unwrap();
    assert!(max_abs_diff(&got, &flat(&inp["logits"])) < 1e-4);
}

#[test]
fn download_into_cache_then_load_offline() {
    let cache = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(HashMap::from([(
        "kiln-test/tiny-gpt2".to_string(),
        fixtures().join("gpt2"),
    )]));
    let src = Source::resolve(
        "kiln-test/tiny-gpt2",
        opts(cache.path(), Some(&hub.url), false),
    )
    .unwrap();
    let dir = src.materialise().unwrap();
    // The layout Python's huggingface_hub uses.
    let repo = cache.path().join("models--kiln-test--tiny-gpt2");
    assert!(repo.join("refs/main").is_file());
    assert!(dir.starts_with(repo.join("snapshots")), "{}", dir.display());
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
    ] {
        assert!(dir.join(f).is_file(), "{f} not downloaded");
    }
    assert!(
        !dir.join("vocab.json").exists(),
        "absent optional files stay absent"
    );
    assert_logits_match(&dir);
    let served = hub.requests.load(Ordering::SeqCst);
    assert!(served > 0);
    let sent = hub.downloads.lock().unwrap().clone();
    assert!(
        sent.iter().any(|f| f == "model.safetensors"),
        "the weights came from the server: {sent:?}"
    );
    drop(hub);

    // Offline: no server at all, everything from the cache.
    let src = Source::resolve(
        "kiln-test/tiny-gpt2",
        opts(cache.path(), Some("http://127.0.0.1:9"), true),
    )
    .unwrap();
    let dir2 = src.materialise().unwrap();
    assert_eq!(dir, dir2);
    assert_logits_match(&dir2);

    // A repo that is not cached is a clear error naming it, offline.
    let src = Source::resolve("kiln-test/absent", opts(cache.path(), None, true)).unwrap();
    match src.materialise() {
        Err(Error::Hub { repo, file, msg }) => {
            assert_eq!(repo, "kiln-test/absent");
            assert_eq!(file, "config.json");
            assert!(msg.contains("offline"), "{msg}");
        }
        other => panic!("expected a hub error, got {other:?}"),
    }
}

#[test]
fn missing_repo_online_is_a_clear_error() {
    let cache = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(HashMap::new());
    let src = Source::resolve(
        "kiln-test/nothing",
        opts(cache.path(), Some(&hub.url), false),
    )
    .unwrap();
    let e = src.materialise().unwrap_err();
    assert!(
        matches!(&e, Error::Hub { file, .. } if file == "config.json"),
        "{e}"
    );
}

#[test]
fn env_settings_follow_python() {
    // HubOptions::from_env reads the same variables as huggingface_hub; exercised without mutating the
    // process environment of other tests: only the defaults are checked here.
    let o = HubOptions::from_env();
    assert_eq!(o.revision, "main");
    assert!(o.cache_dir.ends_with("hub"), "{}", o.cache_dir.display());
}

/// Hub ids and file names come from input data (command lines, dataset ids, an index's `weight_map`);
/// neither can lead a download out of the cache.
#[test]
fn hub_ids_and_file_names_cannot_leave_the_cache() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    for id in [
        "a/..",
        "../x",
        "a/../../b",
        "a//b",
        "a/.",
        "a\\..\\b",
        "a/b\n",
    ] {
        assert!(
            Source::resolve(id, opts(&cache, None, true)).is_err(),
            "model id {id:?}"
        );
        assert!(
            Source::resolve_dataset(id, opts(&cache, None, true)).is_err(),
            "dataset id {id:?}"
        );
    }
    // A repository whose index names a shard outside the snapshot folder.
    let repo = t.path().join("served");
    std::fs::create_dir(&repo).unwrap();
    std::fs::copy(
        fixtures().join("gpt2/config.json"),
        repo.join("config.json"),
    )
    .unwrap();
    std::fs::write(
        repo.join("model.safetensors.index.json"),
        r#"{"weight_map": {"transformer.wte.weight": "../../../../escaped.safetensors"}}"#,
    )
    .unwrap();
    let hub = FakeHub::start(HashMap::from([("kiln-test/evil".to_string(), repo)]));
    let src = Source::resolve("kiln-test/evil", opts(&cache, Some(&hub.url), false)).unwrap();
    match src.materialise() {
        Err(Error::Hub { file, msg, .. }) => {
            assert_eq!(file, "../../../../escaped.safetensors");
            assert!(msg.contains("unsafe file name"), "{msg}");
        }
        other => panic!("expected a hub error, got {other:?}"),
    }
    for f in ["/etc/passwd", "a/../../b", "", "./x"] {
        assert!(src.file(f).is_err(), "{f:?}");
    }
    let mut top: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["cache", "served"],
        "nothing written outside the cache"
    );
}
