//! Configuration: flags > `AKIDB_*` environment variables > `--config` TOML file > defaults.
//! clap resolves flags and environment; the file and the defaults fill what is still unset.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{
    embedder::{EmbedderOptions, DEFAULT_MODEL},
    runtime::{ComputeUnits, CoreMlFormat, CoreMlOptions, Device, SessionOptions},
};

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("could not read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// Model and inference options, shared by `embed` and `serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ModelArgs {
    /// Hugging Face repo id (owner/name) or a local model directory [default: sentence-transformers/all-MiniLM-L6-v2]
    #[arg(long, env = "AKIDB_EMBEDDING_MODEL")]
    pub model: Option<String>,
    /// Branch, tag or commit of the Hub repo [default: main]
    #[arg(long, env = "AKIDB_MODEL_REVISION")]
    pub revision: Option<String>,
    /// ONNX file inside the model, e.g. onnx/model_quint8_avx2.onnx [default: onnx/model.onnx, then model.onnx]
    #[arg(long, env = "AKIDB_ONNX_FILE")]
    pub onnx_file: Option<String>,
    /// Execution provider: auto (CoreML where the linked ONNX Runtime has it and it measures correct and faster, else CPU), cpu, coreml [default: auto]
    #[arg(long, env = "AKIDB_DEVICE", value_enum)]
    pub device: Option<Device>,
    /// Replace exported attention blocks with ONNX Runtime's fused MultiHeadAttention kernel [default: true]
    #[arg(long, env = "AKIDB_FUSE_ATTENTION", num_args = 0..=1, default_missing_value = "true")]
    pub fuse_attention: Option<bool>,
    /// Inference threads [default: one per physical core]
    #[arg(long, env = "AKIDB_THREADS")]
    pub threads: Option<usize>,
    /// Padded tokens (texts × longest text) per inference call [default: 1024]
    #[arg(long, env = "AKIDB_MAX_BATCH_TOKENS")]
    pub max_batch_tokens: Option<usize>,
    /// Texts per inference call [default: 128]
    #[arg(long, env = "AKIDB_MAX_BATCH_SIZE")]
    pub max_batch_size: Option<usize>,
    /// CoreML compute units [default: all]
    #[arg(long, env = "AKIDB_COREML_COMPUTE_UNITS", value_enum)]
    pub coreml_compute_units: Option<ComputeUnits>,
    /// CoreML model format [default: ml-program]
    #[arg(long, env = "AKIDB_COREML_MODEL_FORMAT", value_enum)]
    pub coreml_model_format: Option<CoreMlFormat>,
    /// Ask CoreML for static input shapes [default: false]
    #[arg(long, env = "AKIDB_COREML_STATIC_SHAPES", num_args = 0..=1, default_missing_value = "true")]
    pub coreml_static_shapes: Option<bool>,
    /// Where compiled CoreML models are cached [default: <user cache dir>/akidb/coreml]
    #[arg(long, env = "AKIDB_COREML_CACHE_DIR")]
    pub coreml_cache_dir: Option<PathBuf>,
    /// With --device auto, measure CoreML against the CPU again instead of using the cached decision [default: false]
    #[arg(long, env = "AKIDB_REMEASURE_DEVICE", num_args = 0..=1, default_missing_value = "true")]
    pub remeasure_device: Option<bool>,
}

/// The `--config` file. Unknown keys are errors, so a typo does not silently fall back.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub model: Option<String>,
    pub revision: Option<String>,
    pub onnx_file: Option<String>,
    pub device: Option<Device>,
    pub fuse_attention: Option<bool>,
    pub threads: Option<usize>,
    pub max_batch_tokens: Option<usize>,
    pub max_batch_size: Option<usize>,
    pub remeasure_device: Option<bool>,
    #[serde(default)]
    pub coreml: CoreMlFile,
    #[serde(default)]
    pub server: ServerFile,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreMlFile {
    pub compute_units: Option<ComputeUnits>,
    pub model_format: Option<CoreMlFormat>,
    pub static_input_shapes: Option<bool>,
    pub cache_dir: Option<PathBuf>,
}

/// `[server]` keys; the server module applies them under its flags.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub served_model_name: Option<String>,
    pub api_key: Option<String>,
    pub payload_limit: Option<usize>,
    pub max_inputs: Option<usize>,
    pub max_concurrent_requests: Option<usize>,
    pub max_batch_requests: Option<usize>,
    pub max_queued_tokens: Option<usize>,
    pub request_timeout: Option<u64>,
    pub shutdown_timeout: Option<u64>,
    pub max_connections: Option<usize>,
    pub header_read_timeout: Option<u64>,
    pub keep_alive_timeout: Option<u64>,
    pub body_read_timeout: Option<u64>,
}

impl FileSettings {
    pub fn load(path: Option<&Path>) -> Result<Self, SettingsError> {
        let Some(path) = path else { return Ok(Self::default()) };
        let text =
            std::fs::read_to_string(path).map_err(|source| SettingsError::Read { path: path.to_path_buf(), source })?;
        toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let message = match line {
                Some(line) => format!("line {line}: {}", e.message()),
                None => e.message().to_string(),
            };
            SettingsError::Parse { path: path.to_path_buf(), message }
        })
    }
}

/// akidb's own cache: `$AKIDB_CACHE_DIR`, else `~/Library/Caches/akidb` on macOS and
/// `$XDG_CACHE_HOME/akidb` (or `~/.cache/akidb`) elsewhere.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("AKIDB_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let base = if cfg!(target_os = "macos") {
        home.map(|h| h.join("Library").join("Caches"))
    } else {
        std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).or_else(|| home.map(|h| h.join(".cache")))
    };
    base.map(|b| b.join("akidb"))
}

/// Compiled CoreML models: `<cache_dir>/coreml`.
pub fn default_coreml_cache_dir() -> Option<PathBuf> {
    cache_dir().map(|d| d.join("coreml"))
}

impl ModelArgs {
    /// Flags and environment (already in `self`) over the file over the defaults.
    pub fn resolve(&self, file: &FileSettings) -> EmbedderOptions {
        let defaults = EmbedderOptions::default();
        EmbedderOptions {
            model: self.model.clone().or_else(|| file.model.clone()).unwrap_or_else(|| DEFAULT_MODEL.to_string()),
            revision: self.revision.clone().or_else(|| file.revision.clone()),
            onnx_file: self.onnx_file.clone().or_else(|| file.onnx_file.clone()),
            session: SessionOptions {
                device: self.device.or(file.device).unwrap_or_default(),
                fuse_attention: self.fuse_attention.or(file.fuse_attention).unwrap_or(true),
                threads: self.threads.or(file.threads).filter(|&n| n > 0),
                coreml: CoreMlOptions {
                    compute_units: self.coreml_compute_units.or(file.coreml.compute_units).unwrap_or_default(),
                    model_format: self.coreml_model_format.or(file.coreml.model_format).unwrap_or_default(),
                    static_input_shapes: self.coreml_static_shapes.or(file.coreml.static_input_shapes).unwrap_or(false),
                    cache_dir: self
                        .coreml_cache_dir
                        .clone()
                        .or_else(|| file.coreml.cache_dir.clone())
                        .or_else(default_coreml_cache_dir),
                },
                remeasure_device: self.remeasure_device.or(file.remeasure_device).unwrap_or(false),
            },
            max_batch_tokens: self.max_batch_tokens.or(file.max_batch_tokens).unwrap_or(defaults.max_batch_tokens),
            max_batch_size: self.max_batch_size.or(file.max_batch_size).unwrap_or(defaults.max_batch_size),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> FileSettings {
        toml::from_str(include_str!("../config.example.toml")).expect("config.example.toml parses")
    }

    #[test]
    fn example_config_parses_to_the_defaults() {
        let file = example();
        let options = ModelArgs::default().resolve(&file);
        let defaults = EmbedderOptions::default();
        assert_eq!(options.model, defaults.model);
        assert_eq!(options.max_batch_tokens, defaults.max_batch_tokens);
        assert_eq!(options.session.device, Device::Auto);
        assert_eq!(options.session.coreml.model_format, CoreMlFormat::MlProgram);
        assert_eq!(file.server.port, Some(8080));
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let file: FileSettings =
            toml::from_str("model = \"from/file\"\nthreads = 3\n[coreml]\ncompute_units = \"cpu-only\"").unwrap();
        let from_file = ModelArgs::default().resolve(&file);
        assert_eq!((from_file.model.as_str(), from_file.session.threads), ("from/file", Some(3)));
        assert_eq!(from_file.session.coreml.compute_units, ComputeUnits::CpuOnly);
        let flags = ModelArgs { model: Some("from/flag".into()), threads: Some(1), ..Default::default() };
        let resolved = flags.resolve(&file);
        assert_eq!((resolved.model.as_str(), resolved.session.threads), ("from/flag", Some(1)));
    }

    #[test]
    fn unknown_keys_are_errors_with_a_line_number() {
        let dir = std::env::temp_dir().join(format!("akidb-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "model = \"a/b\"\nmodle = \"x\"\n").unwrap();
        let err = FileSettings::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("modle"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
}
