//! The loopback hub of the integration tests (see [`FakeHub`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A loopback HTTP server serving repositories (`repo id → directory`) in the hub's URL layout: model files at
/// `/{repo}/resolve/{rev}/{file}`, dataset files at `/datasets/{repo}/resolve/{rev}/{file}` (with the `etag`,
/// `x-repo-commit` and `Content-Range` headers hf-hub reads), and file listings at
/// `/api/{models,datasets}/{repo}/revision/{rev}`. `downloads` records the files sent whole or in ranges of more
/// than one byte. Stops when dropped.
///
/// Shared by the kiln-models and kiln-data integration tests (kiln-data includes this file by path).
pub struct FakeHub {
    pub url: String,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    pub requests: Arc<AtomicUsize>,
    pub downloads: Arc<std::sync::Mutex<Vec<String>>>,
}

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

impl FakeHub {
    pub fn start(repos: HashMap<String, PathBuf>) -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let downloads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, n, d) = (server.clone(), requests.clone(), downloads.clone());
        let thread = std::thread::spawn(move || {
            for req in s.incoming_requests() {
                n.fetch_add(1, Ordering::SeqCst);
                let resp = Self::answer(&repos, &req, &d);
                let _ = req.respond(resp);
            }
        });
        Self {
            url,
            server,
            thread: Some(thread),
            requests,
            downloads,
        }
    }

    fn answer(
        repos: &HashMap<String, PathBuf>,
        req: &tiny_http::Request,
        downloads: &std::sync::Mutex<Vec<String>>,
    ) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
        let not_found =
            || tiny_http::Response::from_data(b"Entry not found".to_vec()).with_status_code(404);
        let h =
            |k: &str, v: &str| tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap();
        let url = req.url().trim_start_matches('/');
        let api = url.starts_with("api/");
        let path = url
            .strip_prefix("api/datasets/")
            .or_else(|| url.strip_prefix("api/models/"))
            .or_else(|| url.strip_prefix("datasets/"))
            .unwrap_or(url)
            .to_string();
        if api {
            let Some((repo, _rev)) = path.split_once("/revision/") else {
                return not_found();
            };
            let Some(dir) = repos.get(repo) else {
                return not_found();
            };
            let mut files = Vec::new();
            walk(dir, "", &mut files);
            let siblings: Vec<_> = files
                .iter()
                .map(|f| serde_json::json!({ "rfilename": f }))
                .collect();
            let body =
                serde_json::json!({ "id": repo, "sha": COMMIT, "siblings": siblings }).to_string();
            return tiny_http::Response::from_data(body.into_bytes())
                .with_header(h("Content-Type", "application/json"));
        }
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
        if end - start > 1 {
            downloads.lock().unwrap().push(file.to_string());
        }
        tiny_http::Response::from_data(body[start..end].to_vec())
            .with_status_code(if range.is_some() { 206 } else { 200 })
            .with_header(h("etag", &format!("\"{etag}\"")))
            .with_header(h("x-repo-commit", COMMIT))
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

fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if e.path().is_dir() {
            walk(&e.path(), &rel, out);
        } else {
            out.push(rel);
        }
    }
    out.sort();
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100000001b3)
    })
}
