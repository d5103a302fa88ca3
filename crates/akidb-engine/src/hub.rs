//! Finds a model's files: a local directory, or a Hugging Face repo in the standard cache
//! (`HF_HOME`, `HF_HUB_OFFLINE`), so a model fetched by Python tools is reused as is and vice
//! versa. Fetching from the Hub (`HF_TOKEN`, `HF_ENDPOINT`) goes through `hf-hub` and is the
//! crate's `download` feature, which the `akidb` binary turns on: an engine user who ships models
//! reads the cache (or a directory) without an HTTP client or a progress bar in its build.

use std::path::{Path, PathBuf};

#[cfg(feature = "download")]
use hf_hub::{
    api::sync::{ApiBuilder, ApiRepo},
    Repo, RepoType,
};

/// A source error from the Hub client, boxed so the error type does not depend on the feature.
type HubSource = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("model '{0}' is neither a local directory nor a Hugging Face repo id (owner/name)")]
    InvalidModelId(String),
    #[error("{repo}@{revision} is not in the Hugging Face cache at {cache} and HF_HUB_OFFLINE is set; run once online or unset HF_HUB_OFFLINE")]
    RepoNotCached { repo: String, revision: String, cache: PathBuf },
    #[error("{file} of {repo}@{revision} is not in the Hugging Face cache at {cache} and HF_HUB_OFFLINE is set; run once online or unset HF_HUB_OFFLINE")]
    NotCached { repo: String, revision: String, file: String, cache: PathBuf },
    #[error("{repo}@{revision} has no {file}")]
    MissingFile { repo: String, revision: String, file: String },
    #[error("could not fetch {file} of {repo}@{revision} from the Hugging Face Hub: {source}")]
    Download {
        repo: String,
        revision: String,
        file: String,
        #[source]
        source: HubSource,
    },
    #[error("could not reach the Hugging Face Hub for {repo}@{revision} (unknown repo, private without HF_TOKEN, or no network): {source}")]
    RepoInfo {
        repo: String,
        revision: String,
        #[source]
        source: HubSource,
    },
    #[error("{repo}@{revision} is not in the Hugging Face cache at {cache}, and this build cannot download (akidb-engine's `download` feature is off)")]
    NoDownload { repo: String, revision: String, cache: PathBuf },
    #[error("local model directory {0} has no {1}")]
    MissingLocalFile(PathBuf, String),
}

/// Where a model's files come from; `file`/`optional_file` hide the difference.
pub struct ModelRepo {
    id: String,
    revision: Option<String>,
    source: Source,
}

enum Source {
    Local(PathBuf),
    Cached {
        cache: PathBuf,
        snapshot: PathBuf,
    },
    #[cfg(feature = "download")]
    Online {
        api: Box<ApiRepo>,
        files: Vec<String>,
    },
}

/// The hub cache, as huggingface_hub and hf-hub find it: `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`.
fn hub_cache() -> PathBuf {
    match std::env::var_os("HF_HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join("hub"),
        None => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(".cache")
            .join("huggingface")
            .join("hub"),
    }
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

fn is_commit_hash(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

impl ModelRepo {
    /// Opens `model` (a directory, or `owner/name` on the Hub) at `revision` (default `main`).
    pub fn open(model: &str, revision: Option<&str>) -> Result<Self, HubError> {
        let path = Path::new(model);
        if path.is_dir() {
            return Ok(Self { id: model.to_string(), revision: None, source: Source::Local(path.to_path_buf()) });
        }
        let valid_id = {
            let mut parts = model.split('/');
            let ok_part =
                |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => ok_part(a) && ok_part(b),
                (Some(a), None, None) => ok_part(a) && !a.starts_with('.'),
                _ => false,
            }
        };
        if !valid_id {
            return Err(HubError::InvalidModelId(model.to_string()));
        }
        let revision = revision.unwrap_or("main").to_string();
        let cache = hub_cache();
        if offline() {
            return Self::cached(cache, model, revision);
        }
        Self::online(cache, model, revision)
    }

    #[cfg(not(feature = "download"))]
    fn online(cache: PathBuf, model: &str, revision: String) -> Result<Self, HubError> {
        Self::cached(cache.clone(), model, revision.clone()).map_err(|_| HubError::NoDownload {
            repo: model.to_string(),
            revision,
            cache,
        })
    }

    #[cfg(feature = "download")]
    fn online(cache: PathBuf, model: &str, revision: String) -> Result<Self, HubError> {
        let cache = hf_hub::Cache::new(cache);
        let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()).or_else(|| cache.token());
        let api = ApiBuilder::from_env()
            .with_token(token)
            .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .build()
            .map_err(|e| HubError::RepoInfo {
                repo: model.to_string(),
                revision: revision.clone(),
                source: e.into(),
            })?;
        let api = api.repo(Repo::with_revision(model.to_string(), RepoType::Model, revision.clone()));
        let info = api.info().map_err(|e| HubError::RepoInfo {
            repo: model.to_string(),
            revision: revision.clone(),
            source: e.into(),
        })?;
        let files = info.siblings.into_iter().map(|s| s.rfilename).collect();
        Ok(Self {
            id: model.to_string(),
            revision: Some(info.sha),
            source: Source::Online { api: Box::new(api), files },
        })
    }

    /// Opens `model` from the hub cache at `hub` (`$HF_HOME/hub`) without the network and without
    /// reading the environment: the tests' way in, and a library user's who keeps models elsewhere.
    pub fn open_cached(hub: &Path, model: &str, revision: Option<&str>) -> Result<Self, HubError> {
        Self::cached(hub.to_path_buf(), model, revision.unwrap_or("main").to_string())
    }

    /// The snapshot of `model` at `revision` (a commit, or a ref resolved through `refs/`).
    fn cached(cache: PathBuf, model: &str, revision: String) -> Result<Self, HubError> {
        // hf-hub's and huggingface_hub's folder name for a model repo.
        let folder = cache.join(format!("models--{}", model.replace('/', "--")));
        let snapshot = if is_commit_hash(&revision) {
            Some(folder.join("snapshots").join(&revision))
        } else {
            std::fs::read_to_string(folder.join("refs").join(&revision))
                .ok()
                .map(|sha| folder.join("snapshots").join(sha.trim()))
        };
        let Some(snapshot) = snapshot.filter(|s| s.is_dir()) else {
            return Err(HubError::RepoNotCached { repo: model.to_string(), revision, cache });
        };
        let commit = snapshot.file_name().map(|s| s.to_string_lossy().into_owned());
        Ok(Self { id: model.to_string(), revision: commit, source: Source::Cached { cache, snapshot } })
    }

    /// The repo id or directory the user named.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The resolved commit for Hub models; `None` for local directories.
    pub fn revision(&self) -> Option<&str> {
        self.revision.as_deref()
    }

    /// A file the model cannot work without.
    pub fn file(&self, name: &str) -> Result<PathBuf, HubError> {
        match self.optional_file(name)? {
            Some(path) => Ok(path),
            None => Err(match &self.source {
                Source::Local(dir) => HubError::MissingLocalFile(dir.clone(), name.to_string()),
                Source::Cached { cache, .. } => HubError::NotCached {
                    repo: self.id.clone(),
                    revision: self.revision.clone().unwrap_or_default(),
                    file: name.to_string(),
                    cache: cache.clone(),
                },
                #[cfg(feature = "download")]
                Source::Online { .. } => HubError::MissingFile {
                    repo: self.id.clone(),
                    revision: self.revision.clone().unwrap_or_default(),
                    file: name.to_string(),
                },
            }),
        }
    }

    /// A file that changes behaviour when present (pooling, max length); `Ok(None)` when the model
    /// has none. Offline, a file missing from a cached snapshot is taken as absent.
    pub fn optional_file(&self, name: &str) -> Result<Option<PathBuf>, HubError> {
        match &self.source {
            Source::Local(dir) => Ok(Some(dir.join(name)).filter(|p| p.is_file())),
            Source::Cached { snapshot, .. } => Ok(Some(snapshot.join(name)).filter(|p| p.is_file())),
            #[cfg(feature = "download")]
            Source::Online { api, files } => {
                if !files.iter().any(|f| f == name) {
                    return Ok(None);
                }
                api.get(name).map(Some).map_err(|e| HubError::Download {
                    repo: self.id.clone(),
                    revision: self.revision.clone().unwrap_or_default(),
                    file: name.to_string(),
                    source: e.into(),
                })
            }
        }
    }

    /// Like `file`, trying each name in order.
    pub fn first_file(&self, names: &[&str]) -> Result<PathBuf, HubError> {
        for name in names {
            if let Some(path) = self.optional_file(name)? {
                return Ok(path);
            }
        }
        self.file(names.first().copied().unwrap_or_default())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The one model the library's tests use (the default model; see `test_model`).
    pub(crate) const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";

    /// A model of the shared test cache (`../shared/hf` beside the checkout, or `$HF_HOME`), opened
    /// without touching the process environment, which the library's tests share across threads.
    /// The library's tests use MiniLM only: the release workflow runs them with an `HF_HOME` that
    /// holds nothing else (scripts/release-test.sh, reproduced by the test command).
    pub(crate) fn test_model(model: &str) -> ModelRepo {
        let hf = std::env::var_os("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..").join("..").join("shared").join("hf")
        });
        ModelRepo::open_cached(&hf.join("hub"), model, None)
            .unwrap_or_else(|e| panic!("{model} must be in the test cache {}: {e}", hf.display()))
    }

    #[test]
    fn the_cache_is_read_without_the_environment() {
        let repo = test_model(MINILM);
        assert_eq!(repo.revision().map(str::len), Some(40), "a commit, resolved through refs/main");
        assert!(repo.file("tokenizer.json").unwrap().is_file());
        let missing = ModelRepo::open_cached(Path::new("/nonexistent"), "a/b", None).err().map(|e| e.to_string());
        assert!(missing.is_some_and(|e| e.contains("not in the Hugging Face cache")));
    }
}
