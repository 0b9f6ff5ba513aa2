//! Where a model comes from: a local directory, or a hub id resolved through `hf-hub` with the same cache
//! layout as Python's `huggingface_hub` (`HF_HOME`, `HF_HUB_CACHE`, `HF_HUB_OFFLINE`, `HF_ENDPOINT`).

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Error, Result};

/// Settings for resolving hub ids. [`HubOptions::from_env`] reads the variables Python uses.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The hub cache directory (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// `$HF_ENDPOINT`, default `https://huggingface.co`.
    pub endpoint: Option<String>,
    /// `$HF_HUB_OFFLINE=1`: never touch the network; use only the cache.
    pub offline: bool,
    pub revision: String,
    /// Show download progress bars.
    pub progress: bool,
}

impl HubOptions {
    pub fn from_env() -> Self {
        let cache_dir = if let Some(c) = std::env::var_os("HF_HUB_CACHE").or_else(|| std::env::var_os("HUGGINGFACE_HUB_CACHE")) {
            PathBuf::from(c)
        } else if let Some(h) = std::env::var_os("HF_HOME") {
            PathBuf::from(h).join("hub")
        } else {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
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

/// A model source: a directory on disk, or a hub repository fetched file by file on demand.
pub enum Source {
    Dir(PathBuf),
    Hub { id: String, opts: HubOptions, api: Option<ApiRepo> },
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
        let p = Path::new(spec);
        if p.is_dir() {
            return Ok(Source::Dir(p.to_path_buf()));
        }
        if spec.starts_with('.') || spec.starts_with('/') || spec.split('/').count() > 2 || spec.is_empty() {
            return Err(Error::MissingFile { path: p.to_path_buf(), hint: " (not a directory, nor a hub id)".into() });
        }
        let api = if opts.offline {
            None
        } else {
            let mut b = ApiBuilder::new().with_cache_dir(opts.cache_dir.clone()).with_progress(opts.progress);
            if let Some(e) = &opts.endpoint {
                b = b.with_endpoint(e.clone());
            }
            if let Ok(token) = std::env::var("HF_TOKEN") {
                b = b.with_token(Some(token));
            }
            let api = b.build().map_err(|e| Error::Hub { repo: spec.into(), file: String::new(), msg: e.to_string() })?;
            Some(api.repo(Repo::with_revision(spec.to_string(), RepoType::Model, opts.revision.clone())))
        };
        Ok(Source::Hub { id: spec.to_string(), opts, api })
    }

    /// The path of `file`, downloading it into the cache when needed. `Ok(None)` when the file does not
    /// exist (locally, or on the hub / in the offline cache).
    pub fn file(&self, file: &str) -> Result<Option<PathBuf>> {
        match self {
            Source::Dir(d) => {
                let p = d.join(file);
                Ok(p.is_file().then_some(p))
            }
            Source::Hub { id, opts, api } => {
                let cache = Cache::new(opts.cache_dir.clone());
                let repo = Repo::with_revision(id.clone(), RepoType::Model, opts.revision.clone());
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
                    Err(e) => Err(Error::Hub { repo: id.clone(), file: file.into(), msg: e.to_string() }),
                }
            }
        }
    }

    /// Like [`Source::file`], but a missing file is an error.
    pub fn require(&self, file: &str) -> Result<PathBuf> {
        self.file(file)?.ok_or_else(|| match self {
            Source::Dir(d) => Error::MissingFile { path: d.join(file), hint: String::new() },
            Source::Hub { id, opts, .. } => Error::Hub {
                repo: id.clone(),
                file: file.into(),
                msg: if opts.offline { "not in the offline cache (HF_HUB_OFFLINE is set)".into() } else { "not found".into() },
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
                        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
                        let v: serde_json::Value = serde_json::from_str(&text)
                            .map_err(|source| Error::Json { path: index.clone(), source })?;
                        let mut shards: Vec<String> = v
                            .get("weight_map")
                            .and_then(|m| m.as_object())
                            .map(|m| m.values().filter_map(|s| s.as_str().map(str::to_string)).collect())
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
                for f in ["tokenizer.json", "generation_config.json", "vocab.json", "merges.txt", "vocab.txt", "tokenizer_config.json"] {
                    self.file(f)?;
                }
                Ok(config.parent().expect("snapshot dir").to_path_buf())
            }
        }
    }
}
