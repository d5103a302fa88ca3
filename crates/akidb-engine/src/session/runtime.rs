//! ONNX Runtime: binding the linked library to `ort`, picking the execution provider, and running
//! the transformer. build.rs links ONNX Runtime itself, so `ort` gets its API from here.

use std::{ffi::CStr, path::Path, sync::OnceLock};

use ndarray::{ArrayView, ArrayView2, Dimension};
use ort::{
    ep::{self, ExecutionProvider},
    session::{
        builder::{AutoDevicePolicy, GraphOptimizationLevel},
        Session as OrtSession, SessionInputValue,
    },
    value::TensorRef,
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

/// A transformer session: token ids in, hidden states out.
pub struct Session {
    inner: std::sync::Arc<Mutex<OrtSession>>,
    token_type_ids: bool,
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

        let inputs: Vec<String> = session.inputs().iter().map(|i| i.name().to_string()).collect();
        if !inputs.iter().any(|n| n == "input_ids") || !inputs.iter().any(|n| n == "attention_mask") {
            return Err(RuntimeError::UnsupportedInputs {
                path: path.display().to_string(),
                inputs: inputs.join(", "),
            });
        }
        let outputs: Vec<String> = session.outputs().iter().map(|o| o.name().to_string()).collect();
        let output = ["last_hidden_state", "token_embeddings"]
            .into_iter()
            .find(|name| outputs.iter().any(|o| o == name))
            .map(str::to_string)
            .or_else(|| outputs.first().cloned())
            .ok_or_else(|| RuntimeError::Load {
                path: path.display().to_string(),
                message: "model has no outputs".into(),
            })?;
        tracing::debug!(?inputs, %output, provider = provider.as_str(), "ONNX session ready");
        let inner = std::sync::Arc::new(Mutex::new(session));
        if let Some(target) = &options.profile {
            PROFILING.lock().push((std::sync::Arc::downgrade(&inner), target.clone()));
        }
        Ok(Self {
            inner,
            token_type_ids: inputs.iter().any(|n| n == "token_type_ids"),
            output,
            provider,
            profile: options.profile.clone(),
        })
    }

    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Runs the batch and hands the output to `f` without copying: hidden states
    /// `[batch, tokens, hidden]` (`Ix3`) for an embedder, logits `[batch, labels]` (`Ix2`) for a
    /// classification head. An output of another rank is an error.
    pub fn run<D: Dimension, R>(
        &self,
        batch: Inputs<'_>,
        f: impl FnOnce(ArrayView<'_, f32, D>) -> R,
    ) -> Result<R, RuntimeError> {
        let mut inputs: Vec<(&str, SessionInputValue<'_>)> = vec![
            ("input_ids", TensorRef::from_array_view(batch.input_ids)?.into()),
            ("attention_mask", TensorRef::from_array_view(batch.attention_mask)?.into()),
        ];
        if self.token_type_ids {
            inputs.push(("token_type_ids", TensorRef::from_array_view(batch.token_type_ids)?.into()));
        }
        let mut session = self.inner.lock();
        let outputs = session.run(inputs)?;
        let value = outputs
            .get(&self.output)
            .ok_or_else(|| RuntimeError::Ort(format!("output {} missing from the run's results", self.output)))?;
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
    fn the_linked_runtime_is_the_pinned_version() {
        assert_eq!(init().unwrap(), PINNED_VERSION);
    }
}
