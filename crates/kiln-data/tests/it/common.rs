use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use kiln_models::hub::HubOptions;
use kiln_models::tokenizer::Tokenizer;
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn samples() -> PathBuf {
    fixtures().join("samples")
}

pub fn sample(rel: &str) -> String {
    samples().join(rel).to_str().unwrap().to_string()
}

pub fn bert_tokenizer() -> Tokenizer {
    Tokenizer::from_file(&fixtures().join("bert/tokenizer.json")).unwrap()
}

pub fn t5_tokenizer() -> Tokenizer {
    Tokenizer::from_file(&fixtures().join("t5/tokenizer.json")).unwrap()
}

/// A parquet column for the test writer (all columns written as `optional`, as `datasets` writes them).
pub enum Col {
    I32(Vec<Option<i32>>),
    I64(Vec<Option<i64>>),
    /// UTF8-annotated byte arrays (bytes, so invalid UTF-8 can be written).
    Str(Vec<Option<Vec<u8>>>),
}

impl Col {
    pub fn strs<S: AsRef<str>>(v: &[S]) -> Col {
        Col::Str(
            v.iter()
                .map(|s| Some(s.as_ref().as_bytes().to_vec()))
                .collect(),
        )
    }
    fn len(&self) -> usize {
        match self {
            Col::I32(v) => v.len(),
            Col::I64(v) => v.len(),
            Col::Str(v) => v.len(),
        }
    }
}

fn split_opt<T: Clone>(v: &[Option<T>]) -> (Vec<T>, Vec<i16>) {
    (
        v.iter().flatten().cloned().collect(),
        v.iter().map(|x| x.is_some() as i16).collect(),
    )
}

/// Write a snappy-compressed parquet file with `row_group_size` rows per row group.
pub fn write_parquet(path: &Path, cols: &[(&str, Col)], row_group_size: usize) {
    let fields: Vec<String> = cols
        .iter()
        .map(|(n, c)| match c {
            Col::I32(_) => format!("optional int32 {n};"),
            Col::I64(_) => format!("optional int64 {n};"),
            Col::Str(_) => format!("optional binary {n} (UTF8);"),
        })
        .collect();
    let schema = Arc::new(
        parse_message_type(&format!("message schema {{ {} }}", fields.join(" "))).unwrap(),
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(file, schema, props).unwrap();
    let n = cols[0].1.len();
    let mut start = 0;
    while start < n || (n == 0 && start == 0) {
        let end = (start + row_group_size).min(n);
        let mut rg = w.next_row_group().unwrap();
        for (_, c) in cols {
            let mut cw = rg.next_column().unwrap().unwrap();
            match c {
                Col::I32(v) => {
                    let (vals, defs) = split_opt(&v[start..end]);
                    cw.typed::<Int32Type>()
                        .write_batch(&vals, Some(&defs), None)
                        .unwrap();
                }
                Col::I64(v) => {
                    let (vals, defs) = split_opt(&v[start..end]);
                    cw.typed::<Int64Type>()
                        .write_batch(&vals, Some(&defs), None)
                        .unwrap();
                }
                Col::Str(v) => {
                    let (vals, defs) = split_opt(&v[start..end]);
                    let vals: Vec<ByteArray> = vals.into_iter().map(ByteArray::from).collect();
                    cw.typed::<ByteArrayType>()
                        .write_batch(&vals, Some(&defs), None)
                        .unwrap();
                }
            }
            cw.close().unwrap();
        }
        rg.close().unwrap();
        if n == 0 {
            break;
        }
        start = end;
    }
    w.close().unwrap();
}

/// An SST-2 split as the hub's `stanfordnlp/sst2` parquet (idx int32, sentence, label int64).
pub fn write_sst2_parquet(
    path: &Path,
    rows: &[kiln_data::SentimentExample],
    row_group_size: usize,
) {
    write_parquet(
        path,
        &[
            (
                "idx",
                Col::I32(rows.iter().map(|r| Some(r.idx as i32)).collect()),
            ),
            (
                "sentence",
                Col::strs(&rows.iter().map(|r| r.sentence.as_str()).collect::<Vec<_>>()),
            ),
            (
                "label",
                Col::I64(rows.iter().map(|r| Some(r.label)).collect()),
            ),
        ],
        row_group_size,
    );
}

/// A CNN/DailyMail split as the hub's `abisee/cnn_dailymail` parquet (article, highlights, id).
pub fn write_cnndm_parquet(path: &Path, rows: &[kiln_data::SummaryExample], row_group_size: usize) {
    let col = |f: fn(&kiln_data::SummaryExample) -> &str| {
        Col::strs(&rows.iter().map(f).collect::<Vec<_>>())
    };
    write_parquet(
        path,
        &[
            ("article", col(|r| &r.article)),
            ("highlights", col(|r| &r.highlights)),
            ("id", col(|r| &r.id)),
        ],
        row_group_size,
    );
}

pub fn hub_opts(cache: &Path, endpoint: Option<&str>, offline: bool) -> HubOptions {
    HubOptions {
        cache_dir: cache.to_path_buf(),
        endpoint: endpoint.map(str::to_string),
        offline,
        revision: "main".into(),
        progress: false,
    }
}

/// A loopback HTTP server serving dataset repositories (`repo id → directory`) in the hub's layout:
/// files at `/datasets/{repo}/resolve/{rev}/{file}` (with the `etag`, `x-repo-commit` and `Content-Range`
/// headers hf-hub reads) and the file listing at `/api/datasets/{repo}/revision/{rev}`. Stops when dropped.
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
        let path = req.url().trim_start_matches('/');
        let Some(path) = path
            .strip_prefix("api/datasets/")
            .map(|p| p.to_string())
            .or_else(|| path.strip_prefix("datasets/").map(|p| p.to_string()))
        else {
            return not_found();
        };
        if req.url().starts_with("/api/") {
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
