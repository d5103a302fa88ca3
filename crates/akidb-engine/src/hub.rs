//! Finds a model's files: a local directory, or a Hugging Face repo through `hf-hub` and the
//! standard cache (`HF_HOME`, `HF_HUB_OFFLINE`, `HF_TOKEN`, `HF_ENDPOINT`), so a model fetched by
//! Python tools is reused as is and vice versa.

use std::path::{Path, PathBuf};

use hf_hub::{
    api::sync::{ApiBuilder, ApiRepo},
    Cache, Repo, RepoType,
};

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
        source: Box<hf_hub::api::sync::ApiError>,
    },
    #[error("could not reach the Hugging Face Hub for {repo}@{revision} (unknown repo, private without HF_TOKEN, or no network): {source}")]
    RepoInfo {
        repo: String,
        revision: String,
        #[source]
        source: Box<hf_hub::api::sync::ApiError>,
    },
    #[error("local model directory {0} has no {1}")]
    MissingLocalFile(PathBuf, String),
}

/// Where a model's files come from; `file`/`optional_file` hide the difference.
pub struct ModelRepo {
    id: String,
    revision: Option<String>,
    kind: Kind,
}

enum Kind {
    Local(PathBuf),
    Cached { cache: Cache, snapshot: PathBuf },
    Online { api: Box<ApiRepo>, files: Vec<String> },
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
            return Ok(Self { id: model.to_string(), revision: None, kind: Kind::Local(path.to_path_buf()) });
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
        let cache = Cache::from_env();
        if offline() {
            let folder = cache.path().join(Repo::model(model.to_string()).folder_name());
            let snapshot = if is_commit_hash(&revision) {
                Some(folder.join("snapshots").join(&revision))
            } else {
                std::fs::read_to_string(folder.join("refs").join(&revision))
                    .ok()
                    .map(|sha| folder.join("snapshots").join(sha.trim()))
            };
            let Some(snapshot) = snapshot.filter(|s| s.is_dir()) else {
                return Err(HubError::RepoNotCached { repo: model.to_string(), revision, cache: cache.path().clone() });
            };
            let commit = snapshot.file_name().map(|s| s.to_string_lossy().into_owned());
            return Ok(Self { id: model.to_string(), revision: commit, kind: Kind::Cached { cache, snapshot } });
        }
        let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()).or_else(|| cache.token());
        let api = ApiBuilder::from_env()
            .with_token(token)
            .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .build()
            .map_err(|e| HubError::RepoInfo {
                repo: model.to_string(),
                revision: revision.clone(),
                source: Box::new(e),
            })?;
        let api = api.repo(Repo::with_revision(model.to_string(), RepoType::Model, revision.clone()));
        let info = api.info().map_err(|e| HubError::RepoInfo {
            repo: model.to_string(),
            revision: revision.clone(),
            source: Box::new(e),
        })?;
        let files = info.siblings.into_iter().map(|s| s.rfilename).collect();
        Ok(Self { id: model.to_string(), revision: Some(info.sha), kind: Kind::Online { api: Box::new(api), files } })
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
            None => Err(match &self.kind {
                Kind::Local(dir) => HubError::MissingLocalFile(dir.clone(), name.to_string()),
                Kind::Cached { cache, .. } => HubError::NotCached {
                    repo: self.id.clone(),
                    revision: self.revision.clone().unwrap_or_default(),
                    file: name.to_string(),
                    cache: cache.path().clone(),
                },
                _ => self.missing(name),
            }),
        }
    }

    fn missing(&self, name: &str) -> HubError {
        HubError::MissingFile {
            repo: self.id.clone(),
            revision: self.revision.clone().unwrap_or_default(),
            file: name.to_string(),
        }
    }

    /// A file that changes behaviour when present (pooling, max length); `Ok(None)` when the model
    /// has none. Offline, a file missing from a cached snapshot is taken as absent.
    pub fn optional_file(&self, name: &str) -> Result<Option<PathBuf>, HubError> {
        match &self.kind {
            Kind::Local(dir) => Ok(Some(dir.join(name)).filter(|p| p.is_file())),
            Kind::Cached { snapshot, .. } => Ok(Some(snapshot.join(name)).filter(|p| p.is_file())),
            Kind::Online { api, files } => {
                if !files.iter().any(|f| f == name) {
                    return Ok(None);
                }
                api.get(name).map(Some).map_err(|e| HubError::Download {
                    repo: self.id.clone(),
                    revision: self.revision.clone().unwrap_or_default(),
                    file: name.to_string(),
                    source: Box::new(e),
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
