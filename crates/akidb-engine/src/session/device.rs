//! Which execution provider serves the model. `auto` does not assume CoreML wins: small BERTs with
//! dynamic sequence lengths are often as fast or faster on the CPU with the fused attention graph,
//! and CoreML partitions can fail at their first real prediction. So when CoreML is available,
//! both sessions run the same warm-up shapes, CoreML's vectors are checked against the CPU's, and
//! CoreML is kept only if it is correct and faster ([`decide`]). The decision is cached per model
//! content, ONNX Runtime version and machine ([`DecisionCache`]). A CoreML run that fails
//! later is retried on the CPU, which serves from then on if it succeeds there
//! ([`DeviceSession`]), unless CoreML was asked for explicitly.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::session::{
    cache::{self, Key},
    runtime::{self, Provider, RuntimeError},
};

/// CoreML's vectors must match the CPU's this closely (as the reference tests do).
pub const COREML_MIN_COSINE: f32 = 0.9999;
/// CoreML must take at most this share of the CPU's time to be worth a split graph.
pub const FASTER_RATIO: f64 = 0.95;
/// Why `auto` runs on the CPU where the linked library has no CoreML (Linux, the Linux wheel).
pub const NO_COREML: &str = "CoreML is not available in the linked ONNX Runtime";
/// Timed runs per warm-up shape (after one untimed run); the median counts.
pub const REPEATS: usize = 3;

/// One warm-up input: `batch` texts of about `tokens` tokens each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmupShape {
    pub batch: usize,
    pub tokens: usize,
}

/// The shapes the server will see: several lengths up to `max_seq_length`, each at one text, a
/// small batch and the largest batch the per-call budget allows.
pub fn warmup_shapes(max_seq_length: usize, max_batch_tokens: usize, max_batch_size: usize) -> Vec<WarmupShape> {
    let max_seq_length = max_seq_length.max(1);
    let mut lengths: Vec<usize> = [16, 64, 128].into_iter().filter(|&n| n < max_seq_length).collect();
    lengths.push(max_seq_length);
    let mut shapes = Vec::new();
    for tokens in lengths {
        let largest = (max_batch_tokens / tokens).clamp(1, max_batch_size.max(1));
        for batch in [1, 8.min(largest), largest] {
            let shape = WarmupShape { batch, tokens };
            if !shapes.contains(&shape) {
                shapes.push(shape);
            }
        }
    }
    shapes
}

/// Texts for `shape`: different words per row, `tokens - 2` one-token words (the special tokens
/// make up the rest for BERT-style tokenizers; the tokenizer truncates at the model's maximum).
pub fn warmup_texts(shape: WarmupShape) -> Vec<String> {
    const WORDS: [&str; 8] = ["the", "cat", "sat", "on", "a", "warm", "red", "mat"];
    (0..shape.batch)
        .map(|row| {
            (0..shape.tokens.saturating_sub(2).max(1))
                .map(|i| WORDS[(row + i) % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// What one session did over the warm-up: the summed per-shape median time and the vectors of the
/// last run of every shape, or the first error.
#[derive(Debug, Clone)]
pub enum Outcome {
    Measured { millis: f64, vectors: Vec<Vec<f32>> },
    Failed(String),
}

/// Runs every input once untimed (compilation, allocation) and `repeats` times timed with `run`.
pub fn measure<B, E: std::fmt::Display>(
    inputs: &[B],
    repeats: usize,
    mut run: impl FnMut(&B) -> Result<Vec<Vec<f32>>, E>,
) -> Outcome {
    let mut millis = 0.0;
    let mut vectors = Vec::new();
    for input in inputs {
        let mut times = Vec::with_capacity(repeats);
        let mut last = Vec::new();
        for i in 0..=repeats {
            let started = Instant::now();
            match run(input) {
                Ok(v) => last = v,
                Err(e) => return Outcome::Failed(e.to_string()),
            }
            if i > 0 {
                times.push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        millis += times.get(times.len() / 2).copied().unwrap_or(0.0);
        vectors.extend(last);
    }
    Outcome::Measured { millis, vectors }
}

/// Where the model runs and why, with the timings that decided it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub provider: Provider,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cpu_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub coreml_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub min_cosine: Option<f32>,
    /// Read from the decision cache rather than measured in this process.
    #[serde(default)]
    pub cached: bool,
}

impl Decision {
    /// A decision nothing was measured for (`--device cpu|coreml`, or no CoreML in the library).
    pub fn fixed(provider: Provider, reason: impl Into<String>) -> Self {
        Self { provider, reason: reason.into(), cpu_ms: None, coreml_ms: None, min_cosine: None, cached: false }
    }
}

/// The pure `auto` policy over measured candidates: the CPU (which must have run) against CoreML
/// (`None` when the linked library has no CoreML). CoreML only if it ran, matches the CPU's
/// vectors and takes at most [`FASTER_RATIO`] of its time.
pub fn decide(cpu: &Outcome, coreml: Option<&Outcome>) -> Decision {
    let Outcome::Measured { millis: cpu_ms, vectors: cpu_vectors } = cpu else {
        let reason = match cpu {
            Outcome::Failed(e) => format!("the CPU session failed its warm-up ({e})"),
            Outcome::Measured { .. } => unreachable!(),
        };
        return Decision::fixed(Provider::Cpu, reason);
    };
    let mut decision = Decision::fixed(Provider::Cpu, "");
    decision.cpu_ms = Some(*cpu_ms);
    let (coreml_ms, coreml_vectors) = match coreml {
        None => {
            decision.reason = NO_COREML.into();
            return decision;
        }
        Some(Outcome::Failed(e)) => {
            decision.reason = format!("CoreML failed during the warm-up: {e}");
            return decision;
        }
        Some(Outcome::Measured { millis, vectors }) => (*millis, vectors),
    };
    decision.coreml_ms = Some(coreml_ms);
    if coreml_vectors.len() != cpu_vectors.len() || coreml_vectors.is_empty() {
        decision.reason =
            format!("CoreML returned {} vectors where the CPU returned {}", coreml_vectors.len(), cpu_vectors.len());
        return decision;
    }
    // (f32::min would skip a NaN: a NaN vector must count as a mismatch.)
    let min_cosine = cpu_vectors.iter().zip(coreml_vectors).map(|(a, b)| cosine(a, b)).fold(f32::INFINITY, |low, c| {
        if low.is_nan() || c.is_nan() {
            f32::NAN
        } else {
            low.min(c)
        }
    });
    decision.min_cosine = Some(min_cosine);
    if min_cosine.is_nan() || min_cosine < COREML_MIN_COSINE {
        decision.reason =
            format!("CoreML's vectors differ from the CPU's (lowest cosine {min_cosine:.6} < {COREML_MIN_COSINE})");
    } else if coreml_ms > cpu_ms * FASTER_RATIO {
        decision.reason = format!("CoreML is correct but not faster ({coreml_ms:.1} ms vs {cpu_ms:.1} ms on the CPU)");
    } else {
        decision.provider = Provider::CoreMl;
        decision.reason = format!("CoreML is correct and faster ({coreml_ms:.1} ms vs {cpu_ms:.1} ms on the CPU)");
    }
    decision
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::NAN;
    }
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

/// Decisions on disk, one JSON file per key (model content + ONNX Runtime version + machine +
/// everything else that changes the timings), so later starts skip the measurement.
pub struct DecisionCache {
    file: PathBuf,
    key: String,
}

#[derive(Serialize, Deserialize)]
struct CachedDecision {
    key: String,
    decision: Decision,
}

impl DecisionCache {
    /// `key` is everything that changes the timings; the machine and the linked ONNX Runtime
    /// are added here.
    pub fn new(dir: &Path, key: Key) -> Self {
        let key = key.with("machine", cache::machine()).with("onnxruntime", runtime::linked_version());
        Self { file: dir.join(format!("{}.json", key.hex())), key: key.describe().to_string() }
    }

    pub fn load(&self) -> Option<Decision> {
        let text = std::fs::read_to_string(&self.file).ok()?;
        let cached: CachedDecision = serde_json::from_str(&text).ok()?;
        (cached.key == self.key).then_some(Decision { cached: true, ..cached.decision })
    }

    /// Best effort: a decision that cannot be saved is measured again next time.
    pub fn store(&self, decision: &Decision) {
        let cached = CachedDecision { key: self.key.clone(), decision: Decision { cached: false, ..decision.clone() } };
        let tmp = self.file.with_extension(cache::scratch_suffix());
        let saved = self.file.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| {
            std::fs::write(&tmp, serde_json::to_vec_pretty(&cached).unwrap_or_default())?;
            std::fs::rename(&tmp, &self.file)
        });
        if let Err(e) = saved {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!("could not cache the device decision in {}: {e}", self.file.display());
        }
    }

    pub fn path(&self) -> &Path {
        &self.file
    }
}

/// A session that knows its provider; implemented by [`crate::session::runtime::Session`] and test fakes.
pub trait ProviderSession {
    fn provider(&self) -> Provider;
}

impl ProviderSession for crate::session::runtime::Session {
    fn provider(&self) -> Provider {
        crate::session::runtime::Session::provider(self)
    }
}

type Rebuild<S> = Box<dyn Fn() -> Result<S, RuntimeError> + Send + Sync>;

/// The serving session plus, under `auto`, the way back to the CPU: ONNX Runtime's own CPU
/// fallback applies only when partitioning, so a CoreML run that fails (for example error -1 on a
/// shape its compiled partition rejects) would otherwise fail every request.
///
/// A failed CoreML run is tried again on the CPU. Only when the CPU succeeds was the failure
/// CoreML's, and the CPU serves from then on; when the CPU fails too the request was at fault
/// (a bad input), its error is returned, and CoreML keeps serving. The CPU session is built once,
/// under a lock of its own, so requests running meanwhile are never held up by the build.
pub struct DeviceSession<S> {
    current: RwLock<Arc<S>>,
    /// `None` when CoreML was asked for explicitly: its failures are errors.
    fallback: Option<Rebuild<S>>,
    /// The CPU session once built: kept after a request that failed on both, so bad inputs do
    /// not rebuild it again and again.
    cpu: Mutex<Option<Arc<S>>>,
    fell_back: Mutex<Option<String>>,
}

impl<S: ProviderSession> DeviceSession<S> {
    pub fn new(session: S, fallback: Option<Rebuild<S>>) -> Self {
        Self { current: RwLock::new(Arc::new(session)), fallback, cpu: Mutex::new(None), fell_back: Mutex::new(None) }
    }

    pub fn provider(&self) -> Provider {
        self.current.read().provider()
    }

    /// Why the session left CoreML for the CPU, once it has.
    pub fn fell_back(&self) -> Option<String> {
        self.fell_back.lock().clone()
    }

    /// Runs `f` on the session; a CoreML failure under `auto` runs `f` again on the CPU, which
    /// serves from then on if it succeeds there (once, with one warning).
    pub fn run<R>(&self, f: impl Fn(&S) -> Result<R, RuntimeError>) -> Result<R, RuntimeError> {
        let session = Arc::clone(&self.current.read());
        let error = match f(&session) {
            Ok(r) => return Ok(r),
            Err(e) if session.provider() == Provider::CoreMl => e,
            Err(e) => return Err(e),
        };
        let Some(rebuild) = &self.fallback else {
            return Err(RuntimeError::CoreMlFailed(error.to_string()));
        };
        let cpu = self.cpu_session(rebuild)?;
        match f(&cpu) {
            Ok(r) => {
                let mut current = self.current.write();
                if Arc::ptr_eq(&current, &session) {
                    tracing::warn!(
                        "CoreML failed at run time where the CPU did not ({error}); the CPU serves from now on"
                    );
                    *current = cpu;
                    *self.fell_back.lock() = Some(format!("CoreML failed at run time: {error}"));
                }
                Ok(r)
            }
            Err(e) => {
                tracing::debug!("failed on CoreML ({error}) and on the CPU: the request's fault; CoreML keeps serving");
                Err(e)
            }
        }
    }

    /// The CPU session, built by the first caller that needs it; `current`'s lock is not held.
    fn cpu_session(&self, rebuild: &Rebuild<S>) -> Result<Arc<S>, RuntimeError> {
        let mut cpu = self.cpu.lock();
        if let Some(session) = cpu.as_ref() {
            return Ok(Arc::clone(session));
        }
        tracing::info!("building a CPU session to retry a request CoreML failed");
        let session = Arc::new(rebuild()?);
        *cpu = Some(Arc::clone(&session));
        Ok(session)
    }
}

/// The device as `/info` and `embed --verbose` report it.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    /// The provider serving now (the CPU after a fallback).
    pub provider: Provider,
    pub decision: Decision,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fell_back: Option<String>,
}

impl std::fmt::Display for DeviceReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.decision;
        write!(f, "{} ({}", self.provider.as_str(), d.reason)?;
        if d.cached {
            write!(f, "; decision cached, --remeasure-device measures again")?;
        }
        if let Some(why) = &self.fell_back {
            write!(f, "; then {why}")?;
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn measured(millis: f64, vectors: &[[f32; 3]]) -> Outcome {
        Outcome::Measured { millis, vectors: vectors.iter().map(|v| v.to_vec()).collect() }
    }

    const CPU_VECTORS: [[f32; 3]; 2] = [[1.0, 0.0, 0.0], [0.0, 0.6, 0.8]];

    #[test]
    fn coreml_is_kept_when_correct_and_faster() {
        let cpu = measured(100.0, &CPU_VECTORS);
        let coreml = measured(60.0, &[[1.0, 0.00001, 0.0], [0.0, 0.6, 0.80001]]);
        let d = decide(&cpu, Some(&coreml));
        assert_eq!(d.provider, Provider::CoreMl, "{d:?}");
        assert_eq!((d.cpu_ms, d.coreml_ms), (Some(100.0), Some(60.0)));
        assert!(d.min_cosine.unwrap() >= COREML_MIN_COSINE && d.reason.contains("faster"), "{d:?}");
    }

    #[test]
    fn coreml_that_is_slower_or_level_loses() {
        let cpu = measured(100.0, &CPU_VECTORS);
        for millis in [100.0, 96.0, 250.0] {
            let d = decide(&cpu, Some(&measured(millis, &CPU_VECTORS)));
            assert_eq!(d.provider, Provider::Cpu, "{millis}: {d:?}");
            assert!(d.reason.contains("not faster"), "{d:?}");
        }
    }

    #[test]
    fn coreml_with_wrong_vectors_loses_however_fast() {
        let cpu = measured(100.0, &CPU_VECTORS);
        let d = decide(&cpu, Some(&measured(10.0, &[[1.0, 0.0, 0.0], [0.0, 0.8, 0.6]])));
        assert_eq!(d.provider, Provider::Cpu);
        assert!(d.reason.contains("differ") && d.min_cosine.unwrap() < COREML_MIN_COSINE, "{d:?}");
        let d = decide(&cpu, Some(&measured(10.0, &[[1.0, 0.0, 0.0]])));
        assert!(d.provider == Provider::Cpu && d.reason.contains("1 vectors"), "{d:?}");
        let d = decide(&cpu, Some(&measured(10.0, &[[f32::NAN, 0.0, 0.0], [0.0, 0.6, 0.8]])));
        assert_eq!(d.provider, Provider::Cpu, "NaN is not a match: {d:?}");
    }

    #[test]
    fn coreml_that_fails_at_warm_up_or_is_missing_loses() {
        let cpu = measured(100.0, &CPU_VECTORS);
        let d = decide(&cpu, Some(&Outcome::Failed("Error executing model: -1".into())));
        assert!(d.provider == Provider::Cpu && d.reason.contains("warm-up") && d.reason.contains("-1"), "{d:?}");
        let d = decide(&cpu, None);
        assert!(d.provider == Provider::Cpu && d.reason.contains("not available") && d.coreml_ms.is_none(), "{d:?}");
    }

    #[test]
    fn measure_takes_the_median_and_stops_at_the_first_failure() {
        let calls = AtomicUsize::new(0);
        // Per input: one untimed run, then REPEATS timed ones; the failing input stops everything.
        let out = measure(&[1usize, 2], REPEATS, |&n| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(2 * n as u64));
            Ok::<_, String>(vec![vec![n as f32; 2]])
        });
        let Outcome::Measured { millis, vectors } = out else { panic!("measured") };
        assert_eq!(calls.load(Ordering::SeqCst), 2 * (REPEATS + 1));
        assert!((6.0..60.0).contains(&millis), "about 2 + 4 ms: {millis}");
        assert_eq!(vectors, vec![vec![1.0, 1.0], vec![2.0, 2.0]]);
        let out = measure(&[1usize, 2, 3], REPEATS, |&n| if n == 2 { Err("boom") } else { Ok(vec![]) });
        assert!(matches!(out, Outcome::Failed(e) if e == "boom"));
    }

    #[test]
    fn warmup_covers_lengths_up_to_the_maximum_within_the_budget() {
        let shapes = warmup_shapes(256, 1024, 128);
        assert!(
            shapes.contains(&WarmupShape { batch: 1, tokens: 256 })
                && shapes.contains(&WarmupShape { batch: 4, tokens: 256 })
        );
        assert!(
            shapes.contains(&WarmupShape { batch: 64, tokens: 16 })
                && shapes.contains(&WarmupShape { batch: 8, tokens: 64 })
        );
        assert!(shapes.iter().all(|s| s.batch * s.tokens <= 1024 && s.tokens <= 256), "{shapes:?}");
        assert_eq!(warmup_shapes(8, 4, 2), vec![WarmupShape { batch: 1, tokens: 8 }]);
        let texts = warmup_texts(WarmupShape { batch: 3, tokens: 10 });
        assert_eq!(texts.len(), 3);
        assert!(texts.iter().all(|t| t.split(' ').count() == 8) && texts[0] != texts[1], "{texts:?}");
    }

    #[test]
    fn decisions_are_cached_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DecisionCache::new(dir.path(), Key::new("device").with("model", "a"));
        assert!(cache.load().is_none());
        let mut decision = decide(&measured(100.0, &CPU_VECTORS), Some(&measured(50.0, &CPU_VECTORS)));
        cache.store(&decision);
        decision.cached = true;
        assert_eq!(cache.load(), Some(decision));
        assert!(
            DecisionCache::new(dir.path(), Key::new("device").with("model", "b")).load().is_none(),
            "another model"
        );
        std::fs::write(cache.path(), "{not json").unwrap();
        assert!(cache.load().is_none(), "a broken file is a miss");
    }

    /// A session that fails its first `fail` runs when on CoreML.
    struct Fake {
        provider: Provider,
        fail: AtomicUsize,
    }

    impl ProviderSession for Fake {
        fn provider(&self) -> Provider {
            self.provider
        }
    }

    fn fake(provider: Provider, fail: usize) -> Fake {
        Fake { provider, fail: AtomicUsize::new(fail) }
    }

    fn run(s: &DeviceSession<Fake>) -> Result<Provider, RuntimeError> {
        s.run(|f| {
            if f.fail.load(Ordering::SeqCst) > 0 {
                f.fail.fetch_sub(1, Ordering::SeqCst);
                return Err(RuntimeError::Ort("Error executing model: Unable to compute the prediction (-1)".into()));
            }
            Ok(f.provider)
        })
    }

    /// A working CoreML session whose CPU rebuilds are counted.
    fn counted_coreml() -> (DeviceSession<Fake>, Arc<AtomicUsize>) {
        let rebuilds = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&rebuilds);
        let rebuild = move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(fake(Provider::Cpu, 0))
        };
        (DeviceSession::new(fake(Provider::CoreMl, 0), Some(Box::new(rebuild))), rebuilds)
    }

    /// A request no session can run (a bad input): it fails on every provider.
    fn bad_input(s: &DeviceSession<Fake>) -> Result<Provider, RuntimeError> {
        s.run(|_| -> Result<Provider, RuntimeError> {
            Err(RuntimeError::Ort("Got invalid dimensions for input".into()))
        })
    }

    #[test]
    fn a_bad_input_fails_on_both_and_coreml_keeps_serving() {
        let (session, rebuilds) = counted_coreml();
        for _ in 0..3 {
            assert!(bad_input(&session).unwrap_err().to_string().contains("invalid dimensions"));
        }
        assert_eq!(session.provider(), Provider::CoreMl, "a bad input is not CoreML's failure");
        assert!(session.fell_back().is_none());
        assert_eq!(rebuilds.load(Ordering::SeqCst), 1, "the CPU session is built once and kept");
        assert_eq!(run(&session).unwrap(), Provider::CoreMl);
    }

    /// The CPU session is built while other requests go on: a slow build holds up only the
    /// request that needs it.
    #[test]
    fn requests_run_while_the_cpu_session_is_built() {
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (finish_tx, finish_rx) = std::sync::mpsc::channel::<()>();
        let finish_rx = Mutex::new(finish_rx);
        let session = Arc::new(DeviceSession::new(
            fake(Provider::CoreMl, 1),
            Some(Box::new(move || {
                started_tx.send(()).unwrap();
                finish_rx.lock().recv().unwrap();
                Ok(fake(Provider::Cpu, 0))
            })),
        ));
        let failing = {
            let session = Arc::clone(&session);
            std::thread::spawn(move || run(&session))
        };
        started_rx.recv().unwrap(); // the build is under way
        assert_eq!(run(&session).unwrap(), Provider::CoreMl, "served meanwhile, not blocked by the build");
        finish_tx.send(()).unwrap();
        assert_eq!(failing.join().unwrap().unwrap(), Provider::Cpu);
        assert_eq!(session.provider(), Provider::Cpu);
    }

    #[test]
    fn coreml_failing_later_falls_back_to_the_cpu_once() {
        let (session, rebuilds) = counted_coreml();
        assert_eq!(run(&session).unwrap(), Provider::CoreMl);
        session.current.read().fail.store(usize::MAX, Ordering::SeqCst); // CoreML breaks for good
        assert_eq!(run(&session).unwrap(), Provider::Cpu, "the failing request is served on the CPU");
        assert_eq!(run(&session).unwrap(), Provider::Cpu);
        assert_eq!(session.provider(), Provider::Cpu);
        assert_eq!(rebuilds.load(Ordering::SeqCst), 1);
        assert!(session.fell_back().unwrap().contains("-1"));
    }

    #[test]
    fn explicit_coreml_failure_is_a_clear_error_and_cpu_errors_pass_through() {
        let session = DeviceSession::new(fake(Provider::CoreMl, 1), None);
        let err = run(&session).unwrap_err().to_string();
        assert!(err.contains("CoreML failed at run time") && err.contains("--device auto"), "{err}");
        assert_eq!(run(&session).unwrap(), Provider::CoreMl, "no rebuild happened");

        let session = DeviceSession::new(
            fake(Provider::Cpu, 1),
            Some(Box::new(|| -> Result<Fake, RuntimeError> { panic!("a CPU failure must not rebuild") })),
        );
        assert!(matches!(run(&session), Err(RuntimeError::Ort(_))));
        assert!(session.fell_back().is_none());
    }

    #[test]
    fn a_failed_rebuild_is_an_error_not_a_panic() {
        let session = DeviceSession::new(
            fake(Provider::CoreMl, 1),
            Some(Box::new(|| Err(RuntimeError::Ort("no memory".into())))),
        );
        assert!(run(&session).unwrap_err().to_string().contains("no memory"));
    }
}
