//! ONNX Runtime: binding the linked library to `ort`, picking the execution provider, and running
//! the transformer. build.rs links ONNX Runtime itself, so `ort` gets its API from here.

use std::{ffi::CStr, path::Path, sync::OnceLock};

use ndarray::{ArrayView, ArrayView2, Dimension};
use ort::{
    ep::{self, ExecutionProvider},
    memory::Allocator,
    session::{
        builder::{AutoDevicePolicy, GraphOptimizationLevel},
        Session as OrtSession, SessionInputValue,
    },
    value::{DynTensor, Tensor, TensorElementType, TensorRef, ValueType},
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::session::graph::AttentionOp;

/// The ONNX Runtime version pinned in Cargo.toml, which build.rs provided and linked.
pub const PINNED_VERSION: &str = env!("AKIDB_ORT_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the linked ONNX Runtime {found} does not provide API version {needed}; akidb needs ONNX Runtime {PINNED_VERSION} (rebuild with scripts/build-onnxruntime.sh, or point ORT_LIB_LOCATION at 1.{needed} or newer)")]
    TooOld { found: String, needed: u32 },
    #[error("ONNX Runtime: {0}")]
    Ort(String),
    #[error("could not load ONNX model {path}: {message}")]
    Load { path: String, message: String },
    #[error("the CoreML execution provider is not available in this build of ONNX Runtime (it is on macOS builds with --use_coreml); use --device auto or cpu")]
    CoreMlUnavailable,
    #[error("ONNX model {path} has no input named input_ids or attention_mask (inputs: {inputs})")]
    UnsupportedInputs { path: String, inputs: String },
    #[error("ONNX model {path} needs input '{name}', which akidb cannot fill: {why} (inputs: {inputs}; a model-specific input is declared with --model-input NAME=VALUE)")]
    UnfillableInput { path: String, name: String, why: String, inputs: String },
    #[error("ONNX model output has shape {0:?}; expected [batch, tokens, hidden] for an embedder, [batch, labels] for a classification head")]
    UnexpectedOutput(Vec<usize>),
    #[error(
        "CoreML failed at run time ({0}); with --device coreml there is no CPU fallback (use --device auto or cpu)"
    )]
    CoreMlFailed(String),
}

impl From<ort::Error> for RuntimeError {
    fn from(e: ort::Error) -> Self {
        RuntimeError::Ort(e.to_string())
    }
}

struct Runtime {
    version: String,
    env: ort::environment::Environment,
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// Hands the linked library's API to `ort` (once) and returns its version string.
pub fn init() -> Result<&'static str, RuntimeError> {
    runtime().map(|r| r.version.as_str())
}

/// The version of the ONNX Runtime actually linked, as the library reports it (the pin when it
/// cannot be bound, which then fails the load anyway): what caches of its output are keyed by.
pub fn linked_version() -> &'static str {
    init().unwrap_or(PINNED_VERSION)
}

fn runtime() -> Result<&'static Runtime, RuntimeError> {
    let runtime = RUNTIME.get_or_init(|| {
        // SAFETY: OrtGetApiBase is the library's C entry point; it returns a static struct whose
        // function pointers stay valid for the life of the process.
        let (version, api) = unsafe {
            let base = ort::sys::OrtGetApiBase();
            if base.is_null() {
                return Err("OrtGetApiBase returned null".to_string());
            }
            let version = CStr::from_ptr(((*base).GetVersionString)()).to_string_lossy().into_owned();
            let api = ((*base).GetApi)(ort::sys::ORT_API_VERSION);
            if api.is_null() {
                return Err(RuntimeError::TooOld { found: version, needed: ort::sys::ORT_API_VERSION }.to_string());
            }
            (version, (*api).clone())
        };
        ort::set_api(api);
        let env = ort::init().with_name("akidb").with_telemetry(false).build().map_err(|e| e.to_string())?;
        Ok(Runtime { version, env })
    });
    runtime.as_ref().map_err(|message| RuntimeError::Ort(message.clone()))
}

/// Where inference runs. `Auto` measures CoreML against the CPU where the linked library has
/// CoreML and keeps the faster correct one (see `device`), else runs on the CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Auto,
    Cpu,
    #[serde(rename = "coreml")]
    CoreMl,
}

/// The execution provider a session actually uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Provider {
    #[serde(rename = "CPUExecutionProvider")]
    Cpu,
    #[serde(rename = "CoreMLExecutionProvider")]
    CoreMl,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Cpu => "CPUExecutionProvider",
            Provider::CoreMl => "CoreMLExecutionProvider",
        }
    }
}

/// The device policy, separate from ONNX Runtime so it is testable on every platform.
pub fn choose_provider(device: Device, coreml_available: bool) -> Result<Provider, RuntimeError> {
    match (device, coreml_available) {
        (Device::Cpu, _) | (Device::Auto, false) => Ok(Provider::Cpu),
        (Device::Auto | Device::CoreMl, true) => Ok(Provider::CoreMl),
        (Device::CoreMl, false) => Err(RuntimeError::CoreMlUnavailable),
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ComputeUnits {
    #[default]
    All,
    CpuAndGpu,
    CpuAndNeuralEngine,
    CpuOnly,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CoreMlFormat {
    #[default]
    MlProgram,
    NeuralNetwork,
}

#[derive(Debug, Clone, Default)]
pub struct CoreMlOptions {
    pub compute_units: ComputeUnits,
    pub model_format: CoreMlFormat,
    pub static_input_shapes: bool,
    /// Compiled CoreML models are kept here so restarts skip recompilation.
    pub cache_dir: Option<std::path::PathBuf>,
}

impl CoreMlOptions {
    pub fn to_ep(&self) -> ep::CoreML {
        let mut coreml = ep::CoreML::default()
            .with_compute_units(match self.compute_units {
                ComputeUnits::All => ep::coreml::ComputeUnits::All,
                ComputeUnits::CpuAndGpu => ep::coreml::ComputeUnits::CPUAndGPU,
                ComputeUnits::CpuAndNeuralEngine => ep::coreml::ComputeUnits::CPUAndNeuralEngine,
                ComputeUnits::CpuOnly => ep::coreml::ComputeUnits::CPUOnly,
            })
            .with_model_format(match self.model_format {
                CoreMlFormat::MlProgram => ep::coreml::ModelFormat::MLProgram,
                CoreMlFormat::NeuralNetwork => ep::coreml::ModelFormat::NeuralNetwork,
            })
            .with_static_input_shapes(self.static_input_shapes);
        if let Some(dir) = &self.cache_dir {
            coreml = coreml.with_model_cache_dir(dir.display());
        }
        coreml
    }
}

#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub device: Device,
    /// Rewrite the exported graph before loading it: packed Q/K/V and a fused attention kernel,
    /// and with akidb's kernels the residual LayerNorms, bias + GELU and unpadding (see `graph`);
    /// used only once verified on a probe batch (see `fusion`).
    pub fuse_attention: bool,
    /// The kernel fused attention runs on; `None`: akidb's where it was measured faster (an
    /// AVX-512 CPU), else ONNX Runtime's packed `Attention` ([`SessionOptions::attention`]).
    pub attention: Option<AttentionOp>,
    /// Intra-op threads; `None` lets ONNX Runtime use one per physical core.
    pub threads: Option<usize>,
    pub coreml: CoreMlOptions,
    /// Measure CoreML against the CPU again under `auto` instead of reading the cached decision.
    pub remeasure_device: bool,
    /// Write ONNX Runtime's profile (Chrome trace JSON) of the serving session to this file when
    /// the session ends (see [`finish_profiling`]).
    pub profile: Option<std::path::PathBuf>,
    /// Values for graph inputs only the model knows the meaning of (jina-v3's `task_id`),
    /// declared rather than guessed: each is an int64 filled into the input's shape ([`Feed`]).
    pub model_inputs: std::collections::BTreeMap<String, i64>,
    /// fp32, or bf16 matrix products behind a quality gate (see `precision`).
    pub precision: Precision,
}

/// Which arithmetic the matrix products use (`--precision`, `AKIDB_PRECISION`, `precision`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float32 throughout (ONNX Runtime's sgemm).
    #[default]
    Fp32,
    /// bf16 products with fp32 sums where the CPU has AVX512-BF16 and the gate passes, an error
    /// on a CPU without it.
    Bf16,
    /// bf16 where the CPU has AVX512-BF16 and the gate passes, else fp32.
    Auto,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            device: Device::Auto,
            fuse_attention: true,
            attention: None,
            threads: None,
            coreml: CoreMlOptions::default(),
            remeasure_device: false,
            profile: None,
            model_inputs: Default::default(),
            precision: Default::default(),
        }
    }
}

/// One batch as a session reads it, `[rows, tokens]` each: plain tensors, so the session layer
/// knows nothing of tokenizers (the pipeline and the loader's probes build them).
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub input_ids: ArrayView2<'a, i64>,
    pub attention_mask: ArrayView2<'a, i64>,
    /// Fed only to graphs that declare `token_type_ids`.
    pub token_type_ids: ArrayView2<'a, i64>,
}

impl SessionOptions {
    /// The attention kernel a rewritten graph uses: the one asked for, else the measured default.
    pub fn attention(&self) -> AttentionOp {
        self.attention.unwrap_or_else(AttentionOp::measured_default)
    }
}

/// How a session fills one of its graph's inputs from a batch: what an encoder-style forward
/// needs, read from the graph's declared inputs rather than assumed.
#[derive(Debug, Clone, PartialEq)]
pub enum Feed {
    InputIds,
    AttentionMask,
    TokenTypeIds,
    /// Positions counted over each row's real tokens (`cumsum(mask) - 1`), so left padding gives
    /// the positions no padding would; padding gets 1, as transformers does.
    PositionIds,
    /// An empty key/value cache, `[rows, heads, 0, head_dim]`, for decoder exports with past
    /// inputs (optimum's, onnx-community's): embedding runs one forward pass with no past.
    EmptyPast {
        ty: TensorElementType,
        heads: i64,
        head_dim: i64,
    },
    /// optimum's merged decoders choose their branch by this flag: `false`, no cache.
    UseCacheBranch,
    /// A value declared in [`SessionOptions::model_inputs`], int64, filled into the input's shape:
    /// fixed dimensions as declared, a dynamic first dimension as the rows, a dynamic second as
    /// the tokens.
    Declared {
        value: i64,
        shape: Vec<i64>,
    },
}

impl Feed {
    /// What it is fed, for `inspect` and `/info`.
    pub fn describe(&self) -> String {
        match self {
            Feed::InputIds => "token ids".into(),
            Feed::AttentionMask => "attention mask".into(),
            Feed::TokenTypeIds => "token type ids".into(),
            Feed::PositionIds => "positions over real tokens".into(),
            Feed::EmptyPast { ty, heads, head_dim } => format!("empty past [rows, {heads}, 0, {head_dim}] {ty:?}"),
            Feed::UseCacheBranch => "false (no cache)".into(),
            Feed::Declared { value, .. } => format!("{value} (declared)"),
        }
    }
}

/// One graph output: its name, rank and last dimension (when fixed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutputInfo {
    pub name: String,
    pub rank: usize,
    pub width: Option<usize>,
}

/// Decides each input's [`Feed`], or names the one that cannot be filled.
fn plan_feeds(
    path: &Path,
    inputs: &[(String, ValueType)],
    declared: &std::collections::BTreeMap<String, i64>,
) -> Result<Vec<(String, Feed)>, RuntimeError> {
    let names = || inputs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
    let unfillable = |name: &str, why: String| RuntimeError::UnfillableInput {
        path: path.display().to_string(),
        name: name.to_string(),
        why,
        inputs: names(),
    };
    if !inputs.iter().any(|(n, _)| n == "input_ids") || !inputs.iter().any(|(n, _)| n == "attention_mask") {
        return Err(RuntimeError::UnsupportedInputs { path: path.display().to_string(), inputs: names() });
    }
    inputs
        .iter()
        .map(|(name, ty)| {
            let (elem, shape) = match ty {
                ValueType::Tensor { ty, shape, .. } => (*ty, shape.iter().copied().collect::<Vec<i64>>()),
                other => return Err(unfillable(name, format!("it is a {other:?}, not a tensor"))),
            };
            let feed = if let Some(&value) = declared.get(name) {
                Feed::Declared { value, shape }
            } else {
                match name.as_str() {
                    "input_ids" => Feed::InputIds,
                    "attention_mask" => Feed::AttentionMask,
                    "token_type_ids" => Feed::TokenTypeIds,
                    "position_ids" => Feed::PositionIds,
                    "use_cache_branch" => Feed::UseCacheBranch,
                    past if past.starts_with("past_key_values.") || past.starts_with("past_key.") || past.starts_with("past_value.") => {
                        match shape.as_slice() {
                            [_, heads, _, head_dim] if *heads > 0 && *head_dim > 0 => {
                                Feed::EmptyPast { ty: elem, heads: *heads, head_dim: *head_dim }
                            }
                            _ => {
                                return Err(unfillable(
                                    name,
                                    format!("a key/value cache of shape {shape:?}; akidb needs [batch, heads, past, head_dim] with heads and head_dim fixed in the graph"),
                                ))
                            }
                        }
                    }
                    _ => return Err(unfillable(name, "its meaning is model-specific".into())),
                }
            };
            let int_inputs =
                matches!(feed, Feed::InputIds | Feed::AttentionMask | Feed::TokenTypeIds | Feed::PositionIds | Feed::Declared { .. });
            if int_inputs && elem != TensorElementType::Int64 {
                return Err(unfillable(name, format!("it takes {elem:?}; akidb feeds int64")));
            }
            if feed == Feed::UseCacheBranch && elem != TensorElementType::Bool {
                return Err(unfillable(name, format!("it takes {elem:?}; akidb feeds a bool")));
            }
            Ok((name.clone(), feed))
        })
        .collect()
}

/// `cumsum(mask) - 1` per row over real tokens, 1 at padding.
fn position_ids(mask: ArrayView2<'_, i64>) -> ndarray::Array2<i64> {
    let mut out = ndarray::Array2::<i64>::ones(mask.raw_dim());
    for (mut row, m) in out.outer_iter_mut().zip(mask.outer_iter()) {
        let mut next = 0;
        for (o, &m) in row.iter_mut().zip(m.iter()) {
            if m != 0 {
                *o = next;
                next += 1;
            }
        }
    }
    out
}

/// A transformer session: token ids in, hidden states out.
pub struct Session {
    inner: std::sync::Arc<Mutex<OrtSession>>,
    feeds: Vec<(String, Feed)>,
    outputs: Vec<OutputInfo>,
    output: String,
    provider: Provider,
    /// Where this session's profile goes when it ends, if profiling.
    profile: Option<std::path::PathBuf>,
}

/// Sessions that profile, so [`finish_profiling`] can end them where no drop runs (a server
/// that exits with its inference thread still holding the session).
static PROFILING: Mutex<Vec<(std::sync::Weak<Mutex<OrtSession>>, std::path::PathBuf)>> = Mutex::new(Vec::new());

/// Ends profiling of `session` and moves ONNX Runtime's file (named by its prefix and the start
/// time) to `target`. Every profiled session writes there as it ends, so the one ended last —
/// the one that served — is what the file holds.
fn end_profiling(session: &mut OrtSession, target: &Path) {
    match session.end_profiling() {
        Ok(written) if !written.is_empty() => match std::fs::rename(&written, target) {
            Ok(()) => tracing::info!("wrote ONNX Runtime's profile to {}", target.display()),
            Err(e) => tracing::warn!("could not move the profile {written} to {}: {e}", target.display()),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!("could not end ONNX Runtime profiling: {e}"),
    }
}

/// Ends profiling of every live profiled session, writing their profiles (for `akidb serve`,
/// whose inference thread may still own its session when the process exits).
pub fn finish_profiling() {
    // The registry stays locked throughout: a session being dropped on another thread meanwhile
    // waits in its `Drop` (still alive, so `upgrade` finds it) and then sees it was ended here.
    let mut registry = PROFILING.lock();
    for (session, target) in registry.drain(..) {
        if let Some(session) = session.upgrade() {
            end_profiling(&mut session.lock(), &target);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let Some(target) = &self.profile else { return };
        let mut registry = PROFILING.lock();
        let Some(at) = registry.iter().position(|(s, _)| std::ptr::eq(s.as_ptr(), std::sync::Arc::as_ptr(&self.inner)))
        else {
            return; // finish_profiling ended it already
        };
        registry.swap_remove(at);
        drop(registry);
        end_profiling(&mut self.inner.lock(), target);
    }
}

/// What ONNX Runtime does with its own graph optimizations when a session is made.
#[derive(Debug, Clone, Default)]
pub enum Optimization {
    /// All of them, at every start.
    #[default]
    Full,
    /// All of them, and the optimized graph is saved to this file with its weights beside it in
    /// [`OPTIMIZED_WEIGHTS`] (page-aligned, so a later load maps them instead of copying).
    SaveTo(std::path::PathBuf),
    /// None: the file is a graph ONNX Runtime optimized before (see `fusion`).
    Done,
}

/// The weights file beside a saved optimized graph.
pub const OPTIMIZED_WEIGHTS: &str = "model.weights";

pub fn coreml_available() -> bool {
    init().is_ok() && ep::CoreML::is_available().unwrap_or(false)
}

impl Session {
    /// Loads `path`, or `model` (its rewritten bytes) when given; `path` still names it in errors.
    pub fn load(path: &Path, model: Option<&[u8]>, options: &SessionOptions) -> Result<Self, RuntimeError> {
        Self::load_with(path, model, options, &Optimization::Full)
    }

    /// [`Session::load`], with ONNX Runtime's graph optimizations as `optimization` says.
    pub fn load_with(
        path: &Path,
        model: Option<&[u8]>,
        options: &SessionOptions,
        optimization: &Optimization,
    ) -> Result<Self, RuntimeError> {
        let runtime = runtime()?;
        let provider = choose_provider(options.device, coreml_available())?;
        if options.device == Device::Auto && provider == Provider::Cpu {
            tracing::debug!("CoreML is not available in the linked ONNX Runtime; running on the CPU");
        }
        let load_err = |e: ort::Error| RuntimeError::Load { path: path.display().to_string(), message: e.to_string() };
        let level = match optimization {
            Optimization::Done => GraphOptimizationLevel::Disable,
            _ => GraphOptimizationLevel::All,
        };
        let mut builder = OrtSession::builder(&runtime.env)
            .map_err(load_err)?
            .with_optimization_level(level)
            .map_err(|e| load_err(e.into()))?
            // Without this, ONNX Runtime's automatic device policy may pick an EP on its own.
            .with_auto_device(AutoDevicePolicy::PreferCPU)
            .map_err(|e| load_err(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| load_err(e.into()))?
            // A rewritten graph may run akidb's own kernels (`graph`, `kernel`).
            .with_operators(akidb_kernels::operators().map_err(load_err)?)
            .map_err(|e| load_err(e.into()))?;
        if let Some(threads) = options.threads {
            builder = builder.with_intra_threads(threads).map_err(|e| load_err(e.into()))?;
        }
        if let Optimization::SaveTo(file) = optimization {
            builder = builder
                // Saving warns that the graph is specific to this machine, which its cache key
                // already says (`fusion`): not a user's concern.
                .with_log_level(ort::logging::LogLevel::Error)
                .map_err(|e| load_err(e.into()))?
                .with_optimized_model_path(file)
                .map_err(|e| load_err(e.into()))?
                .with_config_entry("session.optimized_model_external_initializers_file_name", OPTIMIZED_WEIGHTS)
                .map_err(|e| load_err(e.into()))?
                .with_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
                .map_err(|e| load_err(e.into()))?
                // The MatMul weights as the CPU kernels repack them: a later load maps them too
                // instead of packing ~40 MB again (the saved form is specific to this CPU).
                .with_config_entry("session.save_external_prepacked_constant_initializers", "1")
                .map_err(|e| load_err(e.into()))?;
        }
        if let Some(target) = &options.profile {
            // ONNX Runtime appends the start time to this prefix; a per-session prefix keeps
            // sessions started in the same second apart.
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let prefix = format!("{}.{}-{n}", target.display(), std::process::id());
            builder = builder.with_profiling(prefix).map_err(|e| load_err(e.into()))?;
        }
        if provider == Provider::CoreMl {
            // ONNX Runtime reports CoreML's partitioning (nodes on CoreML vs the CPU) at info level
            // (shown with RUST_LOG=info,ort=info) and warns by itself when the graph is split.
            builder = builder
                .with_log_level(ort::logging::LogLevel::Info)
                .map_err(|e| load_err(e.into()))?
                .with_execution_providers([options.coreml.to_ep().build().error_on_failure()])
                .map_err(|e| load_err(e.into()))?;
            tracing::info!(
                compute_units = ?options.coreml.compute_units,
                model_format = ?options.coreml.model_format,
                static_input_shapes = options.coreml.static_input_shapes,
                cache_dir = ?options.coreml.cache_dir,
                "registering the CoreML execution provider"
            );
        }
        // The first session to register akidb's operator domain adds it to a process-wide table
        // of ONNX's, unguarded: two sessions created at once (the fused and the exported graph are
        // loaded side by side) can both try, and the second fails. Until one has succeeded,
        // creations take turns.
        static REGISTERED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        static FIRST: parking_lot::Mutex<()> = parking_lot::Mutex::new(());
        let turn = (!REGISTERED.load(std::sync::atomic::Ordering::Acquire)).then(|| FIRST.lock());
        let session = match model {
            Some(bytes) => builder.commit_from_memory(bytes),
            None => builder.commit_from_file(path),
        };
        if session.is_ok() {
            REGISTERED.store(true, std::sync::atomic::Ordering::Release);
        }
        drop(turn);
        let session = session.map_err(load_err)?;

        let inputs: Vec<(String, ValueType)> =
            session.inputs().iter().map(|i| (i.name().to_string(), i.dtype().clone())).collect();
        let feeds = plan_feeds(path, &inputs, &options.model_inputs)?;
        let outputs: Vec<OutputInfo> = session
            .outputs()
            .iter()
            .map(|o| {
                let (rank, width) = match o.dtype() {
                    ValueType::Tensor { shape, .. } => {
                        (shape.len(), shape.last().and_then(|&d| usize::try_from(d).ok()).filter(|&d| d > 0))
                    }
                    _ => (0, None),
                };
                OutputInfo { name: o.name().to_string(), rank, width }
            })
            .collect();
        // The token vectors where the graph has them (the fused-graph check compares them token by
        // token), else its first output (a head's logits).
        let output = ["last_hidden_state", "token_embeddings"]
            .into_iter()
            .find(|name| outputs.iter().any(|o| o.name == *name))
            .map(str::to_string)
            .or_else(|| outputs.iter().find(|o| o.rank == 3).map(|o| o.name.clone()))
            .or_else(|| outputs.first().map(|o| o.name.clone()))
            .ok_or_else(|| RuntimeError::Load {
                path: path.display().to_string(),
                message: "model has no outputs".into(),
            })?;
        tracing::debug!(?feeds, %output, provider = provider.as_str(), "ONNX session ready");
        let inner = std::sync::Arc::new(Mutex::new(session));
        if let Some(target) = &options.profile {
            PROFILING.lock().push((std::sync::Arc::downgrade(&inner), target.clone()));
        }
        Ok(Self { inner, feeds, outputs, output, provider, profile: options.profile.clone() })
    }

    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Every graph input and how it is fed.
    pub fn feeds(&self) -> &[(String, Feed)] {
        &self.feeds
    }

    /// The graph's outputs.
    pub fn outputs(&self) -> &[OutputInfo] {
        &self.outputs
    }

    /// The output [`Session::run`] reads: the token vectors, or a head's logits.
    pub fn default_output(&self) -> &str {
        &self.output
    }

    /// Runs the batch and hands the default output to `f` without copying: hidden states
    /// `[batch, tokens, hidden]` (`Ix3`) for an embedder, logits `[batch, labels]` (`Ix2`) for a
    /// classification head. An output of another rank is an error.
    pub fn run<D: Dimension, R>(
        &self,
        batch: Inputs<'_>,
        f: impl FnOnce(ArrayView<'_, f32, D>) -> R,
    ) -> Result<R, RuntimeError> {
        self.run_output(batch, &self.output, f)
    }

    /// [`Session::run`], reading the output `name` (e.g. `sentence_embedding`).
    pub fn run_output<D: Dimension, R>(
        &self,
        batch: Inputs<'_>,
        name: &str,
        f: impl FnOnce(ArrayView<'_, f32, D>) -> R,
    ) -> Result<R, RuntimeError> {
        let (rows, tokens) = batch.input_ids.dim();
        let positions =
            self.feeds.iter().any(|(_, f)| *f == Feed::PositionIds).then(|| position_ids(batch.attention_mask));
        let mut inputs: Vec<(&str, SessionInputValue<'_>)> = Vec::with_capacity(self.feeds.len());
        for (input, feed) in &self.feeds {
            let value: SessionInputValue<'_> = match feed {
                Feed::InputIds => TensorRef::from_array_view(batch.input_ids)?.into(),
                Feed::AttentionMask => TensorRef::from_array_view(batch.attention_mask)?.into(),
                Feed::TokenTypeIds => TensorRef::from_array_view(batch.token_type_ids)?.into(),
                Feed::PositionIds => match &positions {
                    Some(p) => TensorRef::from_array_view(p.view())?.into(),
                    None => return Err(RuntimeError::Ort("position ids were not computed".into())),
                },
                Feed::EmptyPast { ty, heads, head_dim } => {
                    let shape = [rows as i64, *heads, 0, *head_dim];
                    DynTensor::new(&Allocator::default(), *ty, shape)?.into()
                }
                Feed::UseCacheBranch => Tensor::from_array(([1usize], vec![false]))?.into(),
                Feed::Declared { value, shape } => {
                    let dims: Vec<usize> = shape
                        .iter()
                        .enumerate()
                        .map(|(i, &d)| match (i, usize::try_from(d)) {
                            (_, Ok(d)) if d > 0 => d,
                            (0, _) => rows,
                            (1, _) => tokens,
                            _ => 1,
                        })
                        .collect();
                    let count = dims.iter().product();
                    Tensor::from_array((dims, vec![*value; count]))?.into()
                }
            };
            inputs.push((input.as_str(), value));
        }
        let mut session = self.inner.lock();
        let outputs = session.run(inputs)?;
        let value = outputs
            .get(name)
            .ok_or_else(|| RuntimeError::Ort(format!("output {name} missing from the run's results")))?;
        let output = value.try_extract_array::<f32>()?;
        let shape = output.shape().to_vec();
        let output = output.into_dimensionality::<D>().map_err(|_| RuntimeError::UnexpectedOutput(shape))?;
        Ok(f(output))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_policy() {
        assert_eq!(choose_provider(Device::Auto, false).unwrap(), Provider::Cpu);
        assert_eq!(choose_provider(Device::Auto, true).unwrap(), Provider::CoreMl);
        assert_eq!(choose_provider(Device::Cpu, true).unwrap(), Provider::Cpu);
        assert_eq!(choose_provider(Device::CoreMl, true).unwrap(), Provider::CoreMl);
        let err = choose_provider(Device::CoreMl, false).unwrap_err().to_string();
        assert!(err.contains("CoreML execution provider is not available"), "{err}");
    }

    #[test]
    fn auto_is_cpu_where_the_linked_runtime_has_no_coreml() {
        if cfg!(target_os = "macos") {
            return; // the macOS builds carry CoreML
        }
        assert!(!coreml_available());
        assert_eq!(choose_provider(Device::Auto, coreml_available()).unwrap(), Provider::Cpu);
    }

    #[test]
    fn coreml_options_map_onto_ort_keys() {
        let options = CoreMlOptions {
            compute_units: ComputeUnits::CpuAndNeuralEngine,
            model_format: CoreMlFormat::MlProgram,
            static_input_shapes: true,
            cache_dir: Some("/tmp/akidb-coreml".into()),
        };
        let ep = format!("{:?}", options.to_ep());
        for needle in [
            "MLComputeUnits",
            "CPUAndNeuralEngine",
            "ModelFormat",
            "MLProgram",
            "RequireStaticInputShapes",
            "ModelCacheDirectory",
            "/tmp/akidb-coreml",
        ] {
            assert!(ep.contains(needle), "{needle} not in {ep}");
        }
        let ep = format!("{:?}", CoreMlOptions { compute_units: ComputeUnits::CpuOnly, ..Default::default() }.to_ep());
        assert!(ep.contains("CPUOnly") && !ep.contains("ModelCacheDirectory"), "{ep}");
    }

    #[test]
    fn positions_count_real_tokens_whichever_side_the_padding_is() {
        let mask = ndarray::array![[0i64, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]];
        let got = position_ids(mask.view());
        assert_eq!(got, ndarray::array![[1i64, 1, 0, 1, 2], [0, 1, 2, 1, 1], [0, 1, 2, 3, 4]]);
    }

    #[test]
    fn the_linked_runtime_is_the_pinned_version() {
        assert_eq!(init().unwrap(), PINNED_VERSION);
    }
}
