//! The hub path end to end against a loopback server that serves the fixtures in the hub's URL layout
//! (`/{repo}/resolve/{revision}/{file}`, with the `etag`, `x-repo-commit` and `Content-Range` headers that
//! hf-hub reads), then offline from the cache it filled.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use kiln_models::hub::{HubOptions, Source};
use kiln_models::{gpt2, Error};

use crate::common::*;

/// A loopback HTTP server serving `repos` (`repo id → directory`). Stops when dropped.
pub struct FakeHub {
    pub url: String,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    pub requests: Arc<AtomicUsize>,
}

impl FakeHub {
    pub fn start(repos: HashMap<String, PathBuf>) -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let (s, n) = (server.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            for req in s.incoming_requests() {
                n.fetch_add(1, Ordering::SeqCst);
                let resp = Self::answer(&repos, &req);
                let _ = req.respond(resp);
            }
        });
        Self {
            url,
            server,
            thread: Some(thread),
            requests,
        }
    }

    fn answer(
        repos: &HashMap<String, PathBuf>,
        req: &tiny_http::Request,
    ) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
        let not_found =
            || tiny_http::Response::from_data(b"Entry not found".to_vec()).with_status_code(404);
        let path = req.url().trim_start_matches('/');
        let Some((repo, rest)) = path.split_once("/resolve/") else {
            return not_found();
        };
        let Some((_rev, file)) = rest.split_once('/') else {
            return not_found();
        };
        let Some(dir) = repos.get(repo) else {
            return not_found();
        };
        if file.contains("..") {
            return not_found();
        }
        let Ok(body) = std::fs::read(dir.join(file)) else {
            return not_found();
        };
        let size = body.len();
        // A content hash as the etag (the hub uses the sha256 of LFS files); any stable id works for hf-hub.
        let etag = format!("{:016x}{:016x}", fnv(&body), size);
        let range = req
            .headers()
            .iter()
            .find(|h| h.field.equiv("Range"))
            .map(|h| h.value.as_str().to_string());
        let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
            Some(r) => {
                let (a, b) = r.split_once('-').unwrap();
                let a: usize = a.parse().unwrap();
                let b: usize = if b.is_empty() {
                    size.saturating_sub(1)
                } else {
                    b.parse().unwrap()
                };
                (a.min(size), (b + 1).min(size))
            }
            None => (0, size),
        };
        let h =
            |k: &str, v: &str| tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap();
        tiny_http::Response::from_data(body[start..end].to_vec())
            .with_status_code(if range.is_some() { 206 } else { 200 })
            .with_header(h("etag", &format!("\"{etag}\"")))
            .with_header(h(
                "x-repo-commit",
                "0123456789abcdef0123456789abcdef01234567",
            ))
            .with_header(h(
                "Content-Range",
                &format!("bytes {start}-{}/{size}", end.saturating_sub(1)),
            ))
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100000001b3)
    })
}

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
