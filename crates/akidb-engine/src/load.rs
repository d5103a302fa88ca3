//! Loading a model, as one pipeline that runs one way, each step a function of the previous
//! step's output:
//!
//! 1. [`ModelFiles::resolve`] — the model's files (hf-hub's cache, or a directory);
//! 2. [`ModelConfig::load`] — what the model is (kind, pooling, maximum length, prompts);
//! 3. the tokenizer, and from it the [`Probe`] batch every check below runs;
//! 4. [`SessionPlan::new`] — the sessions to open: CPU and CoreML options, whether the graph is
//!    rewritten (and with which attention kernel), the keys of their caches;
//! 5. [`SessionPlan::cpu`] — the CPU session: the rewritten graph only once `fusion` verified it
//!    on the probe (or a verified graph from the cache), else the graph as exported;
//! 6. [`SessionPlan::choose_device`] — under `auto` with CoreML, both timed on the warm-up shapes
//!    and CoreML kept only if correct and faster (`device`); a way back to the CPU kept with it.
//!
//! [`crate::Model::load`] then warms the result up and checks its width. Of all this only
//! [`Probe`] is public: tests and tools check a rewritten graph on the same batch the loader does.

use std::path::{Path, PathBuf};

use crate::{
    batching::Budget,
    error::EngineError,
    forward::{forward, inputs, Readout},
    hub::{HubError, ModelRepo},
    model_config::ModelConfig,
    options::ModelOptions,
    session::{
        cache::{self, Key},
        device::{self, Decision, DecisionCache, DeviceSession, Outcome},
        fusion::{self, Loaded, Rewrite, PROBE_TEXTS},
        precision::{self, Chosen, Precision},
        runtime::{
            self, choose_provider, coreml_available, Device, Inputs, Provider, RuntimeError, Session, SessionOptions,
        },
    },
    tokenize::{Batch, TokenizeError, Tokenizer, Tokens},
};

/// Step 1: where the model's files are.
pub(crate) struct ModelFiles {
    pub repo: ModelRepo,
    /// The ONNX file's name inside the model, as `/info` shows it.
    pub onnx_file: String,
    pub onnx_path: PathBuf,
    /// Weights kept beside the graph (`<file>_data` / `<file>.data`): such a graph is loaded as it
    /// is, since its weights are found relative to its own path.
    pub external_data: bool,
}

impl ModelFiles {
    pub(crate) fn resolve(options: &ModelOptions) -> Result<Self, HubError> {
        let repo = ModelRepo::open(&options.model, options.revision.as_deref())?;
        let (onnx_file, onnx_path) = match &options.onnx_file {
            Some(name) => (name.clone(), repo.file(name)?),
            None => {
                let path = repo.first_file(&["onnx/model.onnx", "model.onnx"])?;
                let name = if path.ends_with("onnx/model.onnx") { "onnx/model.onnx" } else { "model.onnx" };
                (name.to_string(), path)
            }
        };
        // Large exports keep their weights beside the graph; fetch them into the same snapshot.
        let external_data = repo.optional_file(&format!("{onnx_file}_data"))?.is_some()
            | repo.optional_file(&format!("{onnx_file}.data"))?.is_some();
        Ok(Self { repo, onnx_file, onnx_path, external_data })
    }
}

/// Step 3's product: texts of very different lengths as one padded batch, so that checking a
/// rewritten graph (and ONNX Runtime's optimization of it) exercises masking.
pub struct Probe(Batch);

impl Probe {
    pub fn new(tokenizer: &Tokenizer) -> Result<Self, TokenizeError> {
        let tokens = tokenizer.encode(&PROBE_TEXTS)?;
        Ok(Self(tokenizer.batch(&tokens.iter().collect::<Vec<_>>())))
    }

    /// The batch as the session layer reads it.
    pub fn inputs(&self) -> Inputs<'_> {
        inputs(&self.0)
    }
}

/// Step 4: the sessions to open, decided before any is.
pub(crate) struct SessionPlan {
    onnx_path: PathBuf,
    /// Attention heads, when the graph is to be rewritten.
    heads: Option<usize>,
    /// Why `heads` is `None`.
    no_heads_reason: String,
    cpu: SessionOptions,
    coreml: SessionOptions,
    /// The device asked for, and whether the linked ONNX Runtime has CoreML.
    device: Device,
    coreml_available: bool,
    /// Where verified rewritten graphs (and refusals) are kept.
    graphs: Option<PathBuf>,
    /// What the `auto` decision depends on besides the machine and ONNX Runtime.
    decision_key: Key,
}

impl SessionPlan {
    pub(crate) fn new(
        files: &ModelFiles,
        config: &ModelConfig,
        options: &ModelOptions,
        budget: Budget,
    ) -> Result<Self, EngineError> {
        let coreml_available = coreml_available();
        // --device coreml without CoreML, --precision bf16 without AVX512-BF16: a clear error,
        // before anything is loaded.
        choose_provider(options.session.device, coreml_available)?;
        if options.session.precision == Precision::Bf16 && !akidb_kernels::bf16::hardware_bf16() {
            return Err(RuntimeError::Load {
                path: files.onnx_path.display().to_string(),
                message: precision::NoBf16.to_string(),
            }
            .into());
        }
        // Only CoreML's caches are keyed by the model's content: on the CPU nothing reads it.
        let content = if coreml_available {
            cache::content_hash(&files.onnx_path, cache::cache_dir().map(|d| d.join("hashes")).as_deref())
                .unwrap_or_else(|e| format!("unreadable: {e}"))
        } else {
            String::new()
        };
        let mut session = options.session.clone();
        if let Some(dir) = &session.coreml.cache_dir {
            session.coreml.cache_dir = Some(coreml_cache_dir(dir, files, &content, &session));
        }
        // CoreML has no kernel for the rewritten graph's operators: its graph stays whole.
        let heads = config.num_attention_heads.filter(|_| options.session.fuse_attention && !files.external_data);
        let no_heads_reason = if !options.session.fuse_attention {
            "off (--fuse-attention false)"
        } else if files.external_data {
            "the graph keeps its weights in an external data file, and is loaded as it is"
        } else {
            "config.json gives no num_attention_heads"
        }
        .to_string();
        let decision_key = Key::new("device")
            .with("content", &content)
            .with(
                "model",
                format!("{}@{}:{}", files.repo.id(), files.repo.revision().unwrap_or("local"), files.onnx_file),
            )
            .with("coreml", format!("{:?}", session.coreml))
            .with("rewrite", format!("{heads:?} {:?}", session.attention()))
            .with("threads", format!("{:?}", session.threads))
            .with("budget", format!("{budget:?}"))
            .with("max_seq_length", config.max_seq_length);
        Ok(Self {
            onnx_path: files.onnx_path.clone(),
            heads,
            no_heads_reason,
            cpu: SessionOptions { device: Device::Cpu, ..session.clone() },
            coreml: SessionOptions { device: Device::CoreMl, ..session },
            device: options.session.device,
            coreml_available,
            graphs: cache::graphs_dir(),
            decision_key,
        })
    }

    /// Whether the CPU will serve without a measurement.
    fn cpu_serves(&self) -> bool {
        matches!((self.device, self.coreml_available), (Device::Cpu, _) | (Device::Auto, false))
    }

    /// The serving session when its verdicts are cached, so that it needs no probe and loads
    /// while the tokenizer is parsed: the bf16 graph an earlier gate kept (its precision decided
    /// too), else the verified rewritten graph when ONNX Runtime's optimization of it is cached.
    pub(crate) fn preload(&self) -> Option<(Loaded, Option<Chosen>)> {
        let heads = self.heads.filter(|_| self.cpu_serves())?;
        let graphs = self.graphs.as_deref();
        if let Some((loaded, chosen)) = precision::preload(&self.onnx_path, heads, &self.cpu, graphs) {
            return Some((loaded, Some(chosen)));
        }
        fusion::preload(&self.onnx_path, heads, &self.cpu, graphs).map(|loaded| (loaded, None))
    }

    /// Step 5: the CPU session and what became of its graph's rewrite.
    pub(crate) fn cpu(&self, probe: &Probe) -> Result<Loaded, RuntimeError> {
        let Some(heads) = self.heads else {
            let session = Session::load(&self.onnx_path, None, &self.cpu)?;
            return Ok(Loaded { session, rewrite: Rewrite::AsExported(self.no_heads_reason.clone()) });
        };
        fusion::load(&self.onnx_path, heads, &self.cpu, probe.inputs(), self.graphs.as_deref())
    }

    fn load_coreml(&self) -> Result<Session, RuntimeError> {
        Session::load(&self.onnx_path, None, &self.coreml)
    }

    /// Step 6: the serving session, what became of its rewrite, its precision (on the CPU, bf16
    /// where `--precision` asks and the gate passes) and why that device serves.
    pub(crate) fn choose_device(
        self,
        preloaded: Option<(Loaded, Option<Chosen>)>,
        probe: Probe,
        measure: Measure<'_>,
    ) -> Result<(DeviceSession<Session>, Rewrite, Chosen, Decision), EngineError> {
        match (self.device, self.coreml_available) {
            (Device::Cpu, _) | (Device::Auto, false) => {
                let reason = if self.device == Device::Cpu { "--device cpu" } else { device::NO_COREML };
                let (loaded, decided) = match preloaded {
                    Some(preloaded) => preloaded,
                    None => (self.cpu(&probe)?, None),
                };
                let (Loaded { session, rewrite }, chosen) = match decided {
                    Some(chosen) => (loaded, chosen),
                    None => precision::apply(
                        loaded,
                        self.cpu.precision,
                        &self.onnx_path,
                        self.heads,
                        &self.cpu,
                        probe.inputs(),
                        self.graphs.as_deref(),
                    )?,
                };
                Ok((DeviceSession::new(session, None), rewrite, chosen, Decision::fixed(Provider::Cpu, reason)))
            }
            (Device::CoreMl, _) => {
                let session = self.load_coreml()?;
                let rewrite = Rewrite::AsExported(COREML_AS_EXPORTED.into());
                let decision = Decision::fixed(Provider::CoreMl, "--device coreml");
                Ok((DeviceSession::new(session, None), rewrite, Chosen::fp32("CoreML serves"), decision))
            }
            (Device::Auto, true) => {
                let cache = device_cache(&self.decision_key);
                let load_coreml = |plan: &SessionPlan| plan.load_coreml();
                let (session, rewrite, decision) =
                    choose_by_measurement(self, probe, &load_coreml, &measure, cache.as_ref())?;
                Ok((session, rewrite, Chosen::fp32("measured against CoreML in fp32"), decision))
            }
        }
    }
}

fn device_cache(key: &Key) -> Option<DecisionCache> {
    cache::device_dir().map(|dir| DecisionCache::new(&dir, key.clone()))
}

/// What the `auto` warm-up runs: the shapes the server will see, through the real pipeline.
pub(crate) struct Measure<'a> {
    pub tokenizer: &'a Tokenizer,
    /// With `dense`, what the rows are made of ([`Readout::rows`] of each session measured).
    pub config: &'a ModelConfig,
    pub dense: &'a crate::dense::Layers,
    pub max_seq_length: usize,
    pub budget: Budget,
}

impl Measure<'_> {
    fn batches(&self) -> Result<Vec<Batch>, EngineError> {
        device::warmup_shapes(self.max_seq_length, self.budget.max_tokens, self.budget.max_rows)
            .into_iter()
            .map(|shape| {
                let tokens = self.tokenizer.encode(&device::warmup_texts(shape))?;
                let refs: Vec<&Tokens> = tokens.iter().collect();
                Ok(self.tokenizer.batch(&refs))
            })
            .collect()
    }

    fn run(&self, session: &Session, batches: &[Batch]) -> Outcome {
        let readout = match Readout::rows(self.config, session.outputs(), self.dense) {
            Ok(readout) => readout,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        device::measure(batches, device::REPEATS, |batch| forward(session, batch, &readout))
    }
}

/// CoreML has no kernel for the rewritten graph's operators: its graph stays whole.
const COREML_AS_EXPORTED: &str = "CoreML runs the graph as exported";

/// `auto` where CoreML is available: the cached decision, or both sessions timed over the warm-up
/// and compared ([`device::decide`]). CoreML keeps a way back to the CPU for run-time failures.
fn choose_by_measurement(
    plan: SessionPlan,
    probe: Probe,
    load_coreml: &dyn Fn(&SessionPlan) -> Result<Session, RuntimeError>,
    measure: &Measure<'_>,
    cache: Option<&DecisionCache>,
) -> Result<(DeviceSession<Session>, Rewrite, Decision), EngineError> {
    let cached = cache.filter(|_| !plan.cpu.remeasure_device).and_then(DecisionCache::load);
    let (decision, mut cpu_session, mut coreml_session) = match cached {
        Some(decision) => (decision, None, None),
        None => {
            let batches = measure.batches()?;
            let loaded = plan.cpu(&probe)?;
            let cpu_outcome = measure.run(&loaded.session, &batches);
            if let Outcome::Failed(e) = &cpu_outcome {
                return Err(RuntimeError::Ort(format!("the CPU session failed its warm-up: {e}")).into());
            }
            let (coreml_outcome, coreml_session) = match load_coreml(&plan) {
                Ok(session) => (measure.run(&session, &batches), Some(session)),
                Err(e) => (Outcome::Failed(e.to_string()), None),
            };
            let decision = device::decide(&cpu_outcome, Some(&coreml_outcome));
            tracing::info!(
                provider = decision.provider.as_str(),
                cpu_ms = decision.cpu_ms,
                coreml_ms = decision.coreml_ms,
                min_cosine = decision.min_cosine,
                shapes = batches.len(),
                "device decision: {}",
                decision.reason
            );
            if let Some(cache) = cache {
                cache.store(&decision);
            }
            (decision, Some(loaded), coreml_session)
        }
    };
    let mut decision = decision;
    if decision.provider == Provider::CoreMl {
        let session = match coreml_session.take() {
            Some(session) => Ok(session),
            None => load_coreml(&plan), // a cached decision
        };
        match session {
            Ok(session) => {
                drop(cpu_session.take());
                let rebuild = Box::new(move || plan.cpu(&probe).map(|loaded| loaded.session));
                let rewrite = Rewrite::AsExported(COREML_AS_EXPORTED.into());
                return Ok((DeviceSession::new(session, Some(rebuild)), rewrite, decision));
            }
            Err(e) => {
                tracing::warn!("the cached decision was CoreML, but its session did not load ({e}); using the CPU");
                decision =
                    Decision { provider: Provider::Cpu, reason: format!("CoreML did not load: {e}"), ..decision };
            }
        }
    }
    drop(coreml_session);
    let Loaded { session, rewrite } = match cpu_session {
        Some(loaded) => loaded,
        None => plan.cpu(&probe)?,
    };
    Ok((DeviceSession::new(session, None), rewrite, decision))
}

/// Compiled CoreML models are valid for one model's content, one ONNX Runtime (cached models
/// have broken across versions; ONNX Runtime recompiles only when metadata or graph structure
/// change, not weights) and one set of CoreML options, so the directory is keyed by all of them:
/// the content hash every cache shares, the version the linked library reports, and the options.
fn coreml_cache_dir(base: &Path, files: &ModelFiles, content: &str, session: &SessionOptions) -> PathBuf {
    let clean = |s: &str| s.replace(['/', '\\', ':'], "--");
    let c = &session.coreml;
    let key = Key::new("coreml-model")
        .with("content", content)
        .with("onnxruntime", runtime::linked_version())
        .with("format", format!("{:?}", c.model_format))
        .with("static_shapes", c.static_input_shapes)
        .with("compute_units", format!("{:?}", c.compute_units));
    base.join(clean(files.repo.id())).join(format!(
        "{}-{}-{}",
        files.repo.revision().unwrap_or("local"),
        clean(&files.onnx_file),
        key.short()
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{dense::Dense, hub::tests::test_model};

    /// The `auto` measurement with real ONNX Runtime sessions on the tiny test model. No CoreML
    /// here, so the unfused graph on the CPU stands in for it: the real warm-up, timing, vector
    /// comparison, decision cache and session hand-over run; only the provider differs on a Mac.
    #[test]
    fn auto_measures_real_sessions_caches_the_decision_and_remeasures_on_request() {
        let repo = test_model(crate::hub::tests::MINILM);
        let config = ModelConfig::load(&repo).unwrap();
        let tokenizer = Tokenizer::from_file(&repo.file("tokenizer.json").unwrap(), config.max_seq_length).unwrap();
        let path = repo.first_file(&["onnx/model.onnx", "model.onnx"]).unwrap();
        let cpu_options = SessionOptions { device: Device::Cpu, threads: Some(1), ..Default::default() };
        let dir = tempfile::tempdir().unwrap();
        let plan = |remeasure: bool| SessionPlan {
            onnx_path: path.clone(),
            heads: config.num_attention_heads,
            no_heads_reason: String::new(),
            cpu: SessionOptions { remeasure_device: remeasure, ..cpu_options.clone() },
            coreml: cpu_options.clone(),
            device: Device::Auto,
            coreml_available: true,
            graphs: Some(dir.path().join("graphs")),
            decision_key: Key::new("device").with("model", "tiny"),
        };
        let probe = || Probe::new(&tokenizer).unwrap();
        let dense: crate::dense::Layers = Ok(Vec::<Dense>::new().into());
        let readout = |s: &Session| Readout::rows(&config, s.outputs(), &dense).unwrap();
        let measure = Measure {
            tokenizer: &tokenizer,
            config: &config,
            dense: &dense,
            max_seq_length: config.max_seq_length,
            budget: Budget::new(256, 16),
        };
        let cache = DecisionCache::new(dir.path(), Key::new("device").with("model", "tiny"));
        let loads = AtomicUsize::new(0);
        let stand_in = |plan: &SessionPlan| {
            loads.fetch_add(1, Ordering::SeqCst);
            Session::load(&plan.onnx_path, None, &plan.coreml)
        };

        let (session, _, decision) =
            choose_by_measurement(plan(false), probe(), &stand_in, &measure, Some(&cache)).unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert!(!decision.cached);
        assert!(decision.cpu_ms.unwrap() > 0.0 && decision.coreml_ms.unwrap() > 0.0, "{decision:?}");
        assert!(decision.min_cosine.unwrap() >= device::COREML_MIN_COSINE, "same model, same vectors: {decision:?}");
        assert!(decision.reason.contains("faster"), "{decision:?}");
        let batch = measure.batches().unwrap().remove(0);
        let vectors = session.run(|s| forward(s, &batch, &readout(s))).unwrap();
        assert_eq!(vectors[0].len(), config.dimension);

        // A second start reads the decision: nothing measured, the stand-in only loaded if chosen.
        let (_, _, again) = choose_by_measurement(plan(false), probe(), &stand_in, &measure, Some(&cache)).unwrap();
        // (serde_json's default float parser is not bit-exact: compare the timing closely, not exactly)
        let same_timing = (again.cpu_ms.unwrap() - decision.cpu_ms.unwrap()).abs() < 1e-9;
        assert!(again.cached && again.provider == decision.provider && same_timing, "{again:?} vs {decision:?}");
        let expected = if decision.provider == Provider::CoreMl { 2 } else { 1 };
        assert_eq!(loads.load(Ordering::SeqCst), expected);

        // --remeasure-device measures again.
        let (_, _, fresh) = choose_by_measurement(plan(true), probe(), &stand_in, &measure, Some(&cache)).unwrap();
        assert!(!fresh.cached && loads.load(Ordering::SeqCst) == expected + 1, "{fresh:?}");

        // A candidate that cannot even load leaves the CPU serving.
        let broken = |_: &SessionPlan| -> Result<Session, RuntimeError> { Err(RuntimeError::CoreMlUnavailable) };
        let (session, _, d) = choose_by_measurement(plan(true), probe(), &broken, &measure, None).unwrap();
        assert!(d.provider == Provider::Cpu && d.reason.contains("failed during the warm-up"), "{d:?}");
        assert_eq!(session.provider(), Provider::Cpu);

        // A cached CoreML decision whose session no longer loads: the CPU serves, start-up goes on.
        let stale = DecisionCache::new(dir.path(), Key::new("device").with("model", "stale"));
        stale.store(&Decision::fixed(Provider::CoreMl, "measured faster earlier"));
        let (session, _, d) = choose_by_measurement(plan(false), probe(), &broken, &measure, Some(&stale)).unwrap();
        assert!(d.provider == Provider::Cpu && d.reason.contains("CoreML did not load"), "{d:?}");
        assert!(session.run(|s| forward(s, &batch, &readout(s))).is_ok());
    }
}
