//! Where a model comes from: a local directory, or a hub id resolved through `hf-hub` with the same cache
//! layout as Python's `huggingface_hub` (`HF_HOME`, `HF_HUB_CACHE`, `HF_HUB_OFFLINE`, `HF_ENDPOINT`).

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::load::error::{Error, Result};

/// Settings for resolving hub ids. [`HubOptions::from_env`] reads the variables Python uses.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The hub cache directory (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// `$HF_ENDPOINT`, default `https://huggingface.co`.
    pub endpoint: Option<String>,
    /// `$HF_HUB_OFFLINE=1`: never touch the network; use only the cache.
    pub offline: bool,
    /// Branch, tag or commit to fetch (default `main`).
    pub revision: String,
    /// Show download progress bars.
    pub progress: bool,
}

impl HubOptions {
    /// Options from the environment, as `huggingface_hub` reads it (`HF_HUB_CACHE` / `HF_HOME`, `HF_ENDPOINT`,
    /// `HF_HUB_OFFLINE`); revision `main`, no progress bars.
    pub fn from_env() -> Self {
        let cache_dir = if let Some(c) =
            std::env::var_os("HF_HUB_CACHE").or_else(|| std::env::var_os("HUGGINGFACE_HUB_CACHE"))
        {
            PathBuf::from(c)
        } else if let Some(h) = std::env::var_os("HF_HOME") {
            PathBuf::from(h).join("hub")
        } else {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            home.join(".cache").join("huggingface").join("hub")
        };
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        Self {
            cache_dir,
            endpoint: std::env::var("HF_ENDPOINT").ok().filter(|s| !s.is_empty()),
            offline,
            revision: "main".into(),
            progress: false,
        }
    }
}

/// A model (or dataset) source: a directory on disk, or a hub repository fetched file by file on demand.
pub enum Source {
    /// A local directory holding the files.
    Dir(PathBuf),
    /// `repo_type` is [`RepoType::Model`] from [`Source::resolve`], [`RepoType::Dataset`] from
    /// [`Source::resolve_dataset`].
    Hub {
        /// The repository id (`owner/name` or `name`).
        id: String,
        /// The hub settings the source was resolved with.
        opts: HubOptions,
        /// The `hf-hub` client for the repository; `None` when offline (cache only).
        api: Option<ApiRepo>,
        /// Model or dataset repository.
        repo_type: RepoType,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Dir(d) => write!(f, "Dir({})", d.display()),
            Source::Hub { id, .. } => write!(f, "Hub({id})"),
        }
    }
}

impl Source {
    /// A local directory if `spec` names one that exists, else a hub id.
    pub fn resolve(spec: &str, opts: HubOptions) -> Result<Self> {
        Self::resolve_typed(spec, opts, RepoType::Model)
    }

    /// Like [`Source::resolve`], for a hub *dataset* repository (`/datasets/{id}/resolve/...` on the hub,
    /// `datasets--{owner}--{name}` in the cache).
    pub fn resolve_dataset(spec: &str, opts: HubOptions) -> Result<Self> {
        Self::resolve_typed(spec, opts, RepoType::Dataset)
    }

    fn resolve_typed(spec: &str, opts: HubOptions, repo_type: RepoType) -> Result<Self> {
        let p = Path::new(spec);
        if p.is_dir() {
            return Ok(Source::Dir(p.to_path_buf()));
        }
        // A hub id names a cache folder (`models--owner--name`) and URL segments: one or two plain
        // components, never `.`/`..`, a separator or a control character.
        if spec.starts_with('.')
            || spec.starts_with('/')
            || spec.split('/').count() > 2
            || spec.is_empty()
            || spec
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
            || spec.contains(|c: char| c == '\\' || c.is_control())
        {
            return Err(Error::MissingFile {
                path: p.to_path_buf(),
                hint: " (not a directory, nor a hub id)".into(),
            });
        }
        let api = if opts.offline {
            None
        } else {
            let mut b = ApiBuilder::new()
                .with_cache_dir(opts.cache_dir.clone())
                .with_progress(opts.progress);
            if let Some(e) = &opts.endpoint {
                b = b.with_endpoint(e.clone());
            }
            if let Ok(token) = std::env::var("HF_TOKEN") {
                b = b.with_token(Some(token));
            }
            let api = b.build().map_err(|e| Error::Hub {
                repo: spec.into(),
                file: String::new(),
                msg: e.to_string(),
            })?;
            Some(api.repo(Repo::with_revision(
                spec.to_string(),
                repo_type,
                opts.revision.clone(),
            )))
        };
        Ok(Source::Hub {
            id: spec.to_string(),
            opts,
            api,
            repo_type,
        })
    }

    /// The path of `file`, downloading it into the cache when needed. `Ok(None)` when the file does not
    /// exist (locally, or on the hub / in the offline cache).
    pub fn file(&self, file: &str) -> Result<Option<PathBuf>> {
        check_repo_path(self, file)?;
        match self {
            Source::Dir(d) => {
                let p = d.join(file);
                Ok(p.is_file().then_some(p))
            }
            Source::Hub {
                id,
                opts,
                api,
                repo_type,
            } => {
                let cache = Cache::new(opts.cache_dir.clone());
                let repo = Repo::with_revision(id.clone(), *repo_type, opts.revision.clone());
                if let Some(p) = cache.repo(repo).get(file) {
                    return Ok(Some(p));
                }
                let Some(api) = api else { return Ok(None) };
                match api.get(file) {
                    Ok(p) => Ok(Some(p)),
                    Err(hf_hub::api::sync::ApiError::RequestError(e))
                        if matches!(&*e, ureq::Error::Status(404, _)) =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(Error::Hub {
                        repo: id.clone(),
                        file: file.into(),
                        msg: e.to_string(),
                    }),
                }
            }
        }
    }

    /// Every file in the source, as `/`-separated paths relative to its root, sorted. A directory is walked
    /// (hidden entries skipped); a hub repository is listed through the hub's API, or offline from the
    /// cache snapshot of the revision (only the files downloaded before).
    pub fn list_files(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        match self {
            Source::Dir(d) => walk(d, "", &mut out)?,
            Source::Hub {
                id, api: Some(api), ..
            } => {
                let info = api.info().map_err(|e| {
                    let msg = match &e {
                        hf_hub::api::sync::ApiError::RequestError(r)
                            if matches!(&**r, ureq::Error::Status(404, _)) =>
                        {
                            "repository not found".to_string()
                        }
                        _ => e.to_string(),
                    };
                    Error::Hub {
                        repo: id.clone(),
                        file: String::new(),
                        msg,
                    }
                })?;
                out.extend(info.siblings.into_iter().map(|s| s.rfilename));
            }
            Source::Hub {
                id,
                opts,
                api: None,
                repo_type,
            } => {
                let repo = Repo::with_revision(id.clone(), *repo_type, opts.revision.clone());
                let root = opts.cache_dir.join(repo.folder_name());
                let commit = std::fs::read_to_string(root.join("refs").join(&opts.revision))
                    .map_err(|_| Error::Hub {
                        repo: id.clone(),
                        file: String::new(),
                        msg: "not in the offline cache (HF_HUB_OFFLINE is set)".into(),
                    })?;
                walk(&root.join("snapshots").join(commit.trim()), "", &mut out)?;
            }
        }
        out.sort();
        Ok(out)
    }

    /// Like [`Source::file`], but a missing file is an error.
    pub fn require(&self, file: &str) -> Result<PathBuf> {
        self.file(file)?.ok_or_else(|| match self {
            Source::Dir(d) => Error::MissingFile {
                path: d.join(file),
                hint: String::new(),
            },
            Source::Hub { id, opts, .. } => Error::Hub {
                repo: id.clone(),
                file: file.into(),
                msg: if opts.offline {
                    "not in the offline cache (HF_HUB_OFFLINE is set)".into()
                } else {
                    "not found".into()
                },
            },
        })
    }

    /// A local directory holding the checkpoint's files: the directory itself, or the cache snapshot
    /// after fetching config, weights (all shards) and tokenizer files.
    pub fn materialise(&self) -> Result<PathBuf> {
        match self {
            Source::Dir(d) => Ok(d.clone()),
            Source::Hub { .. } => {
                let config = self.require("config.json")?;
                if self.file("model.safetensors")?.is_none() {
                    if let Some(index) = self.file("model.safetensors.index.json")? {
                        let text =
                            std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
                        let v: serde_json::Value =
                            serde_json::from_str(&text).map_err(|source| Error::Json {
                                path: index.clone(),
                                source,
                            })?;
                        let mut shards: Vec<String> = v
                            .get("weight_map")
                            .and_then(|m| m.as_object())
                            .map(|m| {
                                m.values()
                                    .filter_map(|s| s.as_str().map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default();
                        shards.sort();
                        shards.dedup();
                        for s in shards {
                            self.require(&s)?;
                        }
                    } else {
                        self.require("model.safetensors")?;
                    }
                }
                for f in [
                    "tokenizer.json",
                    "generation_config.json",
                    "vocab.json",
                    "merges.txt",
                    "vocab.txt",
                    "tokenizer_config.json",
                ] {
                    self.file(f)?;
                }
                Ok(config.parent().expect("snapshot dir").to_path_buf())
            }
        }
    }
}

/// A file name inside a repository comes from input data (an index's `weight_map`, a hub listing): it must
/// stay inside the repository (and the hub cache's snapshot folder), so it is a relative `/`-separated
/// path without `.`/`..`/empty components, backslashes or control characters.
fn check_repo_path(src: &Source, file: &str) -> Result<()> {
    let bad = file.is_empty()
        || file.starts_with('/')
        || file.contains(|c: char| c == '\\' || c.is_control())
        || file
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if !bad {
        return Ok(());
    }
    let msg = format!(
        "unsafe file name `{}` (it would leave the repository)",
        file.escape_debug()
    );
    Err(match src {
        Source::Dir(d) => Error::MissingFile {
            path: d.clone(),
            hint: format!(": {msg}"),
        },
        Source::Hub { id, .. } => Error::Hub {
            repo: id.clone(),
            file: file.into(),
            msg,
        },
    })
}

/// Collect the files under `dir` (following symlinks, as the hub cache's snapshots are links into `blobs/`).
fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if path.is_dir() {
            walk(&path, &rel, out)?;
        } else if path.is_file() {
            out.push(rel);
        }
    }
    Ok(())
}
