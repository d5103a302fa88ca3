//! Configuration: flags > `AKIDB_*` environment variables > `--config` TOML file > defaults.
//!
//! Each option is declared once, as a field of a section struct that is both the clap arguments
//! (flag, environment variable, help) and the serde shape of the file (its key), so the two cannot
//! drift apart. clap fills flags and environment; [`layered`] puts them over the file, whatever
//! the struct; `options()` / `config()` turn the result into runtime options, where the defaults
//! live ([`ModelOptions::default`], [`ServerConfig::default`]).

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::builder::{PossibleValuesParser, TypedValueParser};
use serde::{
    de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor},
    Deserialize, Deserializer, Serialize,
};

use akidb_engine::{
    session::{
        cache::default_coreml_cache_dir,
        graph::AttentionOp,
        precision::Precision,
        runtime::{ComputeUnits, CoreMlFormat, CoreMlOptions, Device, SessionOptions},
    },
    ModelOptions,
};
use akidb_server::{ModelAlias, ServerConfig, TokenIds};

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
    #[error("could not combine flags with the config file: {0}")]
    Layer(String),
    #[error("{0}")]
    Models(String),
}

/// Model and inference options, shared by `embed` and `serve`; top-level keys of the file.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelArgs {
    /// Hugging Face repo id (owner/name) or a local model directory; `serve` takes several (repeat the flag, or a list in the file) [default: sentence-transformers/all-MiniLM-L6-v2]
    #[arg(long, env = "AKIDB_EMBEDDING_MODEL", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "one_or_many")]
    pub model: Vec<String>,
    /// Branch, tag or commit of the Hub repo [default: main]
    #[arg(long, env = "AKIDB_MODEL_REVISION")]
    pub revision: Option<String>,
    /// ONNX file inside the model, e.g. onnx/model_quint8_avx2.onnx [default: onnx/model.onnx, then model.onnx]
    #[arg(long, env = "AKIDB_ONNX_FILE")]
    pub onnx_file: Option<String>,
    /// Execution provider: auto (CoreML where the linked ONNX Runtime has it, else CPU), cpu, coreml [default: auto]
    #[arg(long, env = "AKIDB_DEVICE", value_parser = choice::<Device>(&["auto", "cpu", "coreml"]))]
    pub device: Option<Device>,
    /// Rewrite the exported graph before loading it: Q/K/V packed into one product and a fused attention kernel (with akidb's kernels also the residual LayerNorms, bias + GELU, and the encoder on real tokens only), kept only when it gives the same hidden states on a probe batch [default: true]
    #[arg(long, env = "AKIDB_FUSE_ATTENTION", num_args = 0..=1, default_missing_value = "true")]
    pub fuse_attention: Option<bool>,
    /// The kernel fused attention runs on: akidb (akidb's own kernels), packed (ONNX Runtime's Attention), multihead (ONNX Runtime's MultiHeadAttention) [default: akidb on an AVX-512 CPU, else packed]
    #[arg(long, env = "AKIDB_ATTENTION", value_parser = choice::<AttentionOp>(&["akidb", "packed", "multihead"]))]
    pub attention: Option<AttentionOp>,
    /// Matrix products: fp32; bf16 (inputs rounded to bf16, fp32 sums, akidb's kernel; needs a CPU with AVX512-BF16); auto (bf16 where the CPU has it, else fp32). bf16 is kept only when it passes a quality gate against fp32 on a probe batch [default: fp32]
    #[arg(long, env = "AKIDB_PRECISION", value_parser = choice::<Precision>(&["fp32", "bf16", "auto"]))]
    pub precision: Option<Precision>,
    /// Inference threads [default: one per physical core]
    #[arg(long, env = "AKIDB_THREADS")]
    pub threads: Option<usize>,
    /// Padded tokens (texts × longest text) per inference call [default: 2048 with akidb's
    /// kernels (an AVX-512 CPU), else 1024]
    #[arg(long, env = "AKIDB_MAX_BATCH_TOKENS")]
    pub max_batch_tokens: Option<usize>,
    /// Texts per inference call [default: 128]
    #[arg(long, env = "AKIDB_MAX_BATCH_SIZE")]
    pub max_batch_size: Option<usize>,
    /// With --device auto, measure CoreML against the CPU again instead of using the cached decision [default: false]
    #[arg(long, env = "AKIDB_REMEASURE_DEVICE", num_args = 0..=1, default_missing_value = "true")]
    pub remeasure_device: Option<bool>,
    /// Write ONNX Runtime's profile of the serving session (Chrome trace JSON: every node's time per run) to this file on exit; see docs/performance.md
    #[arg(long, env = "AKIDB_PROFILE")]
    pub profile: Option<PathBuf>,
    /// A graph input only the model knows the meaning of, declared as NAME=INTEGER (e.g. jina-v3's task_id=3); repeatable. Without it such a model is refused at load, naming the input
    #[arg(long, env = "AKIDB_MODEL_INPUT", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub model_input: Vec<ModelInput>,
    #[command(flatten)]
    pub coreml: CoreMlArgs,
}

/// `NAME=INTEGER`: a value akidb feeds to the graph input NAME (see `--model-input`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModelInput {
    pub name: String,
    pub value: i64,
}

impl std::str::FromStr for ModelInput {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, value) = s.split_once('=').ok_or_else(|| format!("'{s}' is not NAME=INTEGER"))?;
        let value = value.trim().parse().map_err(|_| format!("'{s}': the value of {name} must be an integer"))?;
        if name.trim().is_empty() {
            return Err(format!("'{s}' has no input name"));
        }
        Ok(Self { name: name.trim().to_string(), value })
    }
}

impl TryFrom<String> for ModelInput {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ModelInput> for String {
    fn from(m: ModelInput) -> Self {
        format!("{}={}", m.name, m.value)
    }
}

/// CoreML options: flags `--coreml-*`, the file's `[coreml]` table.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoreMlArgs {
    /// CoreML compute units [default: all]
    #[arg(
        long = "coreml-compute-units",
        env = "AKIDB_COREML_COMPUTE_UNITS",
        value_parser = choice::<ComputeUnits>(&["all", "cpu-and-gpu", "cpu-and-neural-engine", "cpu-only"])
    )]
    pub compute_units: Option<ComputeUnits>,
    /// CoreML model format [default: ml-program]
    #[arg(
        long = "coreml-model-format",
        env = "AKIDB_COREML_MODEL_FORMAT",
        value_parser = choice::<CoreMlFormat>(&["ml-program", "neural-network"])
    )]
    pub model_format: Option<CoreMlFormat>,
    /// Ask CoreML for static input shapes [default: false]
    #[arg(
        long = "coreml-static-shapes",
        env = "AKIDB_COREML_STATIC_SHAPES",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub static_input_shapes: Option<bool>,
    /// Where compiled CoreML models are cached [default: <user cache dir>/akidb/coreml]
    #[arg(long = "coreml-cache-dir", env = "AKIDB_COREML_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// Server options: flags of `serve`, the file's `[server]` table.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerArgs {
    /// Address to bind [default: 127.0.0.1]
    #[arg(long, env = "AKIDB_HOST")]
    pub host: Option<String>,
    /// Port to bind; 0 picks a free one [default: 8080]
    #[arg(long, env = "AKIDB_PORT")]
    pub port: Option<u16>,
    /// Extra name accepted in requests' `model` field and returned in responses
    #[arg(long, env = "AKIDB_SERVED_MODEL_NAME")]
    pub served_model_name: Option<String>,
    /// Another name for any served model, ALIAS=MODEL (MODEL: its id, short name or served name), e.g. nomic-embed-text=all-MiniLM-L6-v2; repeatable
    #[arg(long, env = "AKIDB_MODEL_ALIAS", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub model_alias: Vec<ModelAlias>,
    /// Token ids in OpenAI's `input` (LangChain's OpenAIEmbeddings sends tiktoken ids): tiktoken decodes them with the request model's encoding (cl100k_base when tiktoken does not know the name) and embeds the text; reject answers 422 [default: tiktoken]
    #[arg(long, env = "AKIDB_OPENAI_TOKEN_IDS", value_name = "tiktoken|reject")]
    pub openai_token_ids: Option<TokenIds>,
    /// Require `Authorization: Bearer <key>` on every route but /health
    #[arg(long, env = "AKIDB_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Largest request body in bytes; larger gets 413 [default: 2000000]
    #[arg(long, env = "AKIDB_PAYLOAD_LIMIT")]
    pub payload_limit: Option<usize>,
    /// Most texts in one request; more gets 413 [default: 512]
    #[arg(long, env = "AKIDB_MAX_INPUTS")]
    pub max_inputs: Option<usize>,
    /// Requests in flight or queued at once; more gets 429 with Retry-After [default: 512]
    #[arg(long, env = "AKIDB_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,
    /// Requests merged into one batching round [default: 64]
    #[arg(long, env = "AKIDB_MAX_BATCH_REQUESTS")]
    pub max_batch_requests: Option<usize>,
    /// Tokens queued across all requests; beyond it new requests get 429 with Retry-After [default: 262144]
    #[arg(long, env = "AKIDB_MAX_QUEUED_TOKENS")]
    pub max_queued_tokens: Option<usize>,
    /// Seconds a request may take before it is answered 504 and its remaining texts dropped; 0 = no limit [default: 60]
    #[arg(long, env = "AKIDB_REQUEST_TIMEOUT")]
    pub request_timeout: Option<u64>,
    /// Seconds SIGTERM waits for in-flight requests before exiting anyway [default: 30]
    #[arg(long, env = "AKIDB_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<u64>,
    /// Open connections at most; more wait in the listen backlog until one closes [default: 2048]
    #[arg(long, env = "AKIDB_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds to receive a request's headers, from accept or its first byte [default: 10]
    #[arg(long, env = "AKIDB_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Option<u64>,
    /// Seconds a kept-alive connection may sit idle between requests [default: 30]
    #[arg(long, env = "AKIDB_KEEP_ALIVE_TIMEOUT")]
    pub keep_alive_timeout: Option<u64>,
    /// Seconds to receive a request's body once its headers are in; slower gets 408 [default: 30]
    #[arg(long, env = "AKIDB_BODY_READ_TIMEOUT")]
    pub body_read_timeout: Option<u64>,
}

/// A clap parser for a runtime enum from its names, through the enum's serde names, so the
/// runtime layer needs no clap.
fn choice<T>(names: &'static [&'static str]) -> impl TypedValueParser<Value = T>
where
    T: DeserializeOwned + Clone + Send + Sync + 'static,
{
    PossibleValuesParser::new(names).try_map(|name: String| parse_name::<T>(&name))
}

fn parse_name<T: DeserializeOwned>(name: &str) -> Result<T, de::value::Error> {
    T::deserialize(name.into_deserializer())
}

/// `over` with its unset (`None`) options taken from `under`, for any section struct: both are
/// seen as JSON objects and merged key by key, tables recursively.
pub fn layered<T: Serialize + DeserializeOwned>(over: &T, under: &T) -> Result<T, SettingsError> {
    fn merge(under: &mut serde_json::Value, over: serde_json::Value) {
        match (under, over) {
            (serde_json::Value::Object(u), serde_json::Value::Object(o)) => {
                for (key, value) in o {
                    merge(u.entry(key).or_insert(serde_json::Value::Null), value);
                }
            }
            (_, serde_json::Value::Null) => {}
            (u, o) => *u = o,
        }
    }
    let err = |e: serde_json::Error| SettingsError::Layer(e.to_string());
    let mut value = serde_json::to_value(under).map_err(err)?;
    merge(&mut value, serde_json::to_value(over).map_err(err)?);
    serde_json::from_value(value).map_err(err)
}

/// The `--config` file: [`ModelArgs`] keys at the top, `[coreml]`, and `[server]`. Unknown keys
/// are errors, so a typo does not silently fall back to a default.
#[derive(Debug, Clone, Default)]
pub struct ConfigFile {
    pub model: ModelArgs,
    pub server: ServerArgs,
}

impl ConfigFile {
    pub fn load(path: Option<&Path>) -> Result<Self, SettingsError> {
        let Some(path) = path else { return Ok(Self::default()) };
        let text =
            std::fs::read_to_string(path).map_err(|source| SettingsError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text).map_err(|message| SettingsError::Parse { path: path.to_path_buf(), message })
    }

    /// Parses the file's text; the error names the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            match line {
                Some(line) => format!("line {line}: {}", e.message()),
                None => e.message().to_string(),
            }
        })
    }
}

/// The top-level keys are [`ModelArgs`]' own, deserialized straight from the file's map (so the
/// parser still reports the line of a bad key), with the `server` key split off on the way.
impl<'de> Deserialize<'de> for ConfigFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FileVisitor;
        impl<'de> Visitor<'de> for FileVisitor {
            type Value = ConfigFile;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of akidb settings")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ConfigFile, A::Error> {
                let mut server = None;
                let model = ModelArgs::deserialize(de::value::MapAccessDeserializer::new(SplitServer {
                    map,
                    server: &mut server,
                }))?;
                Ok(ConfigFile { model, server: server.unwrap_or_default() })
            }
        }
        deserializer.deserialize_map(FileVisitor)
    }
}

/// A map that hides its `server` entry from the reader, parsing it into `server` instead.
struct SplitServer<'a, A> {
    map: A,
    server: &'a mut Option<ServerArgs>,
}

/// A key seed that gives the inner seed back (`Err`) when the key is `server`.
struct KeyOrServer<K>(K);

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for KeyOrServer<K> {
    type Value = Result<K::Value, K>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        let key = String::deserialize(deserializer)?;
        if key == "server" {
            return Ok(Err(self.0));
        }
        self.0.deserialize(IntoDeserializer::<D::Error>::into_deserializer(key)).map(Ok)
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for SplitServer<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        let mut seed = seed;
        loop {
            match self.map.next_key_seed(KeyOrServer(seed))? {
                None => return Ok(None),
                Some(Ok(key)) => return Ok(Some(key)),
                Some(Err(returned)) => {
                    if self.server.is_some() {
                        return Err(de::Error::duplicate_field("server"));
                    }
                    *self.server = Some(self.map.next_value()?);
                    seed = returned;
                }
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// `model = "a/b"` or `model = ["a/b", "c/d"]`.
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(deserializer) {
        Ok(OneOrMany::One(model)) => Ok(vec![model]),
        Ok(OneOrMany::Many(models)) => Ok(models),
        Err(_) => Err(de::Error::custom("model must be a model id or a list of them")),
    }
}

impl ModelArgs {
    /// These options (flags and environment) over the file's, for a command that runs one model.
    pub fn resolve(&self, file: &ConfigFile) -> Result<ModelOptions, SettingsError> {
        let layered = layered(self, &file.model)?;
        if layered.model.len() > 1 {
            return Err(SettingsError::Models(format!(
                "this command runs one model, but {} were given ({}); only `akidb serve` takes several",
                layered.model.len(),
                layered.model.join(", ")
            )));
        }
        Ok(layered.options())
    }

    /// Like [`ModelArgs::resolve`], one set of options per model (`serve`).
    pub fn resolve_all(&self, file: &ConfigFile) -> Result<Vec<ModelOptions>, SettingsError> {
        layered(self, &file.model)?.options_all()
    }

    /// One set of options per model, in the order given; the default model when none is. The
    /// revision and ONNX file name one model's files, so with several models they are refused.
    pub fn options_all(&self) -> Result<Vec<ModelOptions>, SettingsError> {
        if self.model.len() > 1 && (self.revision.is_some() || self.onnx_file.is_some()) {
            return Err(SettingsError::Models(
                "--revision and --onnx-file name one model's files; with several models leave them unset".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = self.model.iter().find(|m| !seen.insert(m.as_str())) {
            return Err(SettingsError::Models(format!("model {twice} is given twice")));
        }
        let first = self.options();
        if self.model.len() <= 1 {
            return Ok(vec![first]);
        }
        Ok(self.model.iter().map(|model| ModelOptions { model: model.clone(), ..first.clone() }).collect())
    }

    /// Runtime options for the first model, with the defaults for what is unset.
    pub fn options(&self) -> ModelOptions {
        let d = ModelOptions::default();
        let c = &self.coreml;
        ModelOptions {
            model: self.model.first().cloned().unwrap_or(d.model),
            revision: self.revision.clone().or(d.revision),
            onnx_file: self.onnx_file.clone().or(d.onnx_file),
            session: SessionOptions {
                device: self.device.unwrap_or(d.session.device),
                fuse_attention: self.fuse_attention.unwrap_or(d.session.fuse_attention),
                attention: self.attention.or(d.session.attention),
                threads: self.threads.filter(|&n| n > 0).or(d.session.threads),
                coreml: CoreMlOptions {
                    compute_units: c.compute_units.unwrap_or(d.session.coreml.compute_units),
                    model_format: c.model_format.unwrap_or(d.session.coreml.model_format),
                    static_input_shapes: c.static_input_shapes.unwrap_or(d.session.coreml.static_input_shapes),
                    cache_dir: c.cache_dir.clone().or_else(default_coreml_cache_dir),
                },
                remeasure_device: self.remeasure_device.unwrap_or(d.session.remeasure_device),
                profile: self.profile.clone().or(d.session.profile),
                model_inputs: self.model_input.iter().map(|m| (m.name.clone(), m.value)).collect(),
                precision: self.precision.unwrap_or(d.session.precision),
            },
            max_batch_tokens: self.max_batch_tokens.or(d.max_batch_tokens),
            max_batch_size: self.max_batch_size.unwrap_or(d.max_batch_size),
        }
    }
}

impl ServerArgs {
    /// These options (flags and environment) over the file's `[server]` table.
    pub fn resolve(&self, file: &ConfigFile) -> Result<ServerConfig, SettingsError> {
        Ok(layered(self, &file.server)?.config())
    }

    /// The server's configuration, with the defaults for what is unset. Limits are at least one;
    /// only the request timeout can be switched off (0).
    pub fn config(&self) -> ServerConfig {
        let d = ServerConfig::default();
        let secs = |value: Option<u64>, default: Duration| value.map_or(default, |s| Duration::from_secs(s.max(1)));
        ServerConfig {
            host: self.host.clone().unwrap_or(d.host),
            port: self.port.unwrap_or(d.port),
            served_model_name: self.served_model_name.clone().or(d.served_model_name),
            aliases: self.model_alias.clone(),
            openai_token_ids: self.openai_token_ids.unwrap_or(d.openai_token_ids),
            api_key: self.api_key.clone().filter(|k| !k.is_empty()).or(d.api_key),
            payload_limit: self.payload_limit.unwrap_or(d.payload_limit).max(1),
            max_inputs: self.max_inputs.unwrap_or(d.max_inputs).max(1),
            max_concurrent_requests: self.max_concurrent_requests.unwrap_or(d.max_concurrent_requests).max(1),
            max_batch_requests: self.max_batch_requests.unwrap_or(d.max_batch_requests).max(1),
            max_queued_tokens: self.max_queued_tokens.unwrap_or(d.max_queued_tokens).max(1),
            request_timeout: match self.request_timeout {
                Some(0) => None,
                Some(s) => Some(Duration::from_secs(s)),
                None => d.request_timeout,
            },
            shutdown_timeout: self.shutdown_timeout.map_or(d.shutdown_timeout, Duration::from_secs),
            max_connections: self.max_connections.unwrap_or(d.max_connections).max(1),
            header_read_timeout: secs(self.header_read_timeout, d.header_read_timeout),
            keep_alive_timeout: secs(self.keep_alive_timeout, d.keep_alive_timeout),
            body_read_timeout: secs(self.body_read_timeout, d.body_read_timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{Args, Command};

    use super::*;

    const EXAMPLE: &str = include_str!("../config.example.toml");

    #[test]
    fn example_config_parses_to_the_defaults() {
        let file = ConfigFile::parse(EXAMPLE).expect("config.example.toml parses");
        let options = ModelArgs::default().resolve(&file).unwrap();
        assert_eq!(format!("{options:?}"), format!("{:?}", ModelArgs::default().options()));
        let server = ServerArgs::default().resolve(&file).unwrap();
        assert_eq!(format!("{server:?}"), format!("{:?}", ServerConfig::default()));
    }

    /// Each value the example sets (they are the defaults, see above) is the `[default: …]` its
    /// option's help shows.
    #[test]
    fn help_shows_the_defaults_the_example_sets() {
        let commands = [
            ("", ModelArgs::augment_args(Command::new("model"))),
            ("coreml", CoreMlArgs::augment_args(Command::new("coreml"))),
            ("server", ServerArgs::augment_args(Command::new("server"))),
        ];
        let mut table = "";
        let mut checked = 0;
        for line in EXAMPLE.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                table = name;
                continue;
            }
            let Some((key, value)) = line.split_once(" = ").filter(|_| is_assignment(line)) else { continue };
            let command = &commands.iter().find(|(t, _)| *t == table).expect("a known table").1;
            let arg = command.get_arguments().find(|a| a.get_id() == key).expect("an option");
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let shown = format!("[default: {}]", value.trim_matches('"'));
            assert!(
                help.contains(&shown),
                "[{table}] {key} = {value}, but --{} says: {help}",
                arg.get_long().unwrap_or("?")
            );
            checked += 1;
        }
        assert!(checked >= 20, "only {checked} values checked");
    }

    /// The example with every commented-out `# key = value` line switched on.
    fn example_uncommented() -> String {
        EXAMPLE
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if is_assignment(rest) => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn is_assignment(line: &str) -> bool {
        line.split_once(" = ")
            .is_some_and(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
    }

    /// `(table, key)` of every assignment in the example, commented out or not.
    fn documented_keys() -> Vec<(String, String)> {
        let mut table = String::new();
        let mut keys = Vec::new();
        for line in example_uncommented().lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                table = name.to_string();
            } else if is_assignment(line) {
                keys.push((table.clone(), line.split_once(" = ").map(|(k, _)| k.to_string()).unwrap_or_default()));
            }
        }
        keys
    }

    #[test]
    fn every_documented_key_parses() {
        let text = example_uncommented();
        let file = ConfigFile::parse(&text).unwrap_or_else(|e| panic!("uncommented example: {e}\n{text}"));
        // The commented-out examples really reached the structs.
        assert_eq!(file.model.threads, Some(2));
        assert_eq!(file.model.coreml.cache_dir.as_deref(), Some(Path::new("/var/cache/akidb/coreml")));
        assert_eq!(file.server.api_key.as_deref(), Some("change-me"));
    }

    #[test]
    fn every_option_has_help_and_a_documented_key() {
        let documented = documented_keys();
        let sections: [(&str, Command); 3] = [
            ("", ModelArgs::augment_args(Command::new("model"))),
            ("coreml", CoreMlArgs::augment_args(Command::new("coreml"))),
            ("server", ServerArgs::augment_args(Command::new("server"))),
        ];
        let coreml_ids: Vec<String> = sections[1].1.get_arguments().map(|a| a.get_id().to_string()).collect();
        let mut checked = 0;
        for (table, command) in &sections {
            for arg in command.get_arguments() {
                let key = arg.get_id().to_string();
                if table.is_empty() && coreml_ids.contains(&key) {
                    continue; // flattened into ModelArgs; checked under [coreml]
                }
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(!help.trim().is_empty(), "--{} has no help text", arg.get_long().unwrap_or("?"));
                assert!(arg.get_env().is_some(), "--{} has no AKIDB_* variable", arg.get_long().unwrap_or("?"));
                assert!(
                    documented.iter().any(|(t, k)| t == table && *k == key),
                    "option {key} has no key in config.example.toml [{table}]"
                );
                checked += 1;
            }
        }
        assert!(checked >= 25, "only {checked} options found");
        assert_eq!(checked, documented.len(), "config.example.toml documents keys that are no options: {documented:?}");
    }

    #[test]
    fn serve_takes_a_list_of_models_from_flags_or_the_file() {
        let file = ConfigFile::parse("model = [\"a/embedder\", \"b/reranker\"]\nthreads = 2").unwrap();
        let all = ModelArgs::default().resolve_all(&file).unwrap();
        let names: Vec<&str> = all.iter().map(|o| o.model.as_str()).collect();
        assert_eq!(names, ["a/embedder", "b/reranker"]);
        assert!(all.iter().all(|o| o.session.threads == Some(2)), "shared options apply to each model");
        // Flags replace the file's list; a one-model command refuses several.
        let flags = ModelArgs { model: vec!["c/only".into()], ..Default::default() };
        assert_eq!(flags.resolve_all(&file).unwrap().len(), 1);
        let err = ModelArgs::default().resolve(&file).unwrap_err().to_string();
        assert!(err.contains("only `akidb serve` takes several"), "{err}");
        // One model's files cannot be named for several; a model twice is a mistake.
        let twice = ModelArgs {
            model: vec!["a/b".into(), "c/d".into()],
            onnx_file: Some("x.onnx".into()),
            ..Default::default()
        };
        assert!(twice.options_all().unwrap_err().to_string().contains("--onnx-file"));
        let dup = ModelArgs { model: vec!["a/b".into(), "a/b".into()], ..Default::default() };
        assert!(dup.options_all().unwrap_err().to_string().contains("given twice"));
        assert!(ConfigFile::parse("model = 3").unwrap_err().contains("model id or a list"));
        // The default when nothing names a model.
        assert_eq!(ModelArgs::default().options_all().unwrap()[0].model, akidb_engine::DEFAULT_MODEL);
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let file =
            ConfigFile::parse("model = \"from/file\"\nthreads = 3\n[coreml]\ncompute_units = \"cpu-only\"\n[server]\nport = 9\nrequest_timeout = 0")
                .unwrap();
        let from_file = ModelArgs::default().resolve(&file).unwrap();
        assert_eq!((from_file.model.as_str(), from_file.session.threads), ("from/file", Some(3)));
        assert_eq!(from_file.session.coreml.compute_units, ComputeUnits::CpuOnly);
        let flags = ModelArgs {
            model: vec!["from/flag".into()],
            threads: Some(1),
            coreml: CoreMlArgs { model_format: Some(CoreMlFormat::NeuralNetwork), ..Default::default() },
            ..Default::default()
        };
        let resolved = flags.resolve(&file).unwrap();
        assert_eq!((resolved.model.as_str(), resolved.session.threads), ("from/flag", Some(1)));
        // A flag in a table leaves the table's other keys from the file.
        assert_eq!(resolved.session.coreml.compute_units, ComputeUnits::CpuOnly);
        assert_eq!(resolved.session.coreml.model_format, CoreMlFormat::NeuralNetwork);

        let server = ServerArgs::default().resolve(&file).unwrap();
        assert_eq!((server.port, server.request_timeout), (9, None));
        let server = ServerArgs { port: Some(10), ..Default::default() }.resolve(&file).unwrap();
        assert_eq!(server.port, 10);
    }

    #[test]
    fn flags_and_environment_parse_enum_names() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            model: ModelArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "akidb",
            "--device",
            "coreml",
            "--coreml-compute-units",
            "cpu-and-neural-engine",
            "--coreml-static-shapes",
            "--fuse-attention",
            "false",
        ])
        .unwrap();
        assert_eq!(cli.model.device, Some(Device::CoreMl));
        assert_eq!(cli.model.coreml.compute_units, Some(ComputeUnits::CpuAndNeuralEngine));
        assert_eq!((cli.model.coreml.static_input_shapes, cli.model.fuse_attention), (Some(true), Some(false)));
        let err = <Cli as clap::Parser>::try_parse_from(["akidb", "--device", "gpu"]).err().expect("gpu is refused");
        assert!(err.to_string().contains("possible values: auto, cpu, coreml"), "{err}");
    }

    #[test]
    fn every_listed_enum_name_parses() {
        let command = ModelArgs::augment_args(Command::new("akidb"));
        let mut parsed = 0;
        for arg in command.get_arguments().filter(|a| a.get_long().is_some_and(|l| l != "fuse-attention")) {
            let boolean = ["static_input_shapes", "remeasure_device"].contains(&arg.get_id().as_str());
            for value in arg.get_possible_values().iter().filter(|_| !boolean) {
                let flag = format!("--{}", arg.get_long().unwrap_or_default());
                let name = value.get_name();
                command
                    .clone()
                    .try_get_matches_from(["akidb", flag.as_str(), name])
                    .unwrap_or_else(|e| panic!("{flag} {name}: {e}"));
                parsed += 1;
            }
        }
        assert_eq!(
            parsed,
            3 + 3 + 3 + 4 + 2,
            "device, attention kernel, precision, compute units and model format names"
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_a_line_number() {
        for (text, line, needle) in [
            ("model = \"a/b\"\nmodle = \"x\"\n", 2, "modle"),
            ("model = \"a/b\"\n[server]\nport = 1\nprot = 2\n", 4, "prot"),
            ("[coreml]\ncompute_units = \"all\"\nfoo = 1\n", 3, "foo"),
            ("threads = \"many\"\n", 1, "usize"),
        ] {
            let err = ConfigFile::parse(text).unwrap_err();
            assert!(err.contains(&format!("line {line}")) && err.contains(needle), "{text:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "server = 3\n").unwrap();
        let err = ConfigFile::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains("line 1"), "{err}");
    }
}
