//! Decides whether the attention-fused graph (`graph`) is used: a fused graph is only trusted
//! after it gave the same hidden states as the exported one on a probe batch (mixed lengths, so
//! padding is exercised). The verdict is cached in akidb's cache, keyed by the original file's
//! content hash: a fused graph is kept as `<path>-<key>-<blocks>.onnx` (its metadata records the
//! source hash), a refusal as `<path>-<key>.rejected`; when the original changes, its key changes, the
//! new graph is verified again and the stale entries of that file are removed.

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, ArrayViewD, Axis};
use onnx_protobuf::StringStringEntryProto;

use crate::session::{
    cache::{self, Key},
    graph::{self, AttentionOp, Rewritten},
    runtime::{Inputs, Optimization, RuntimeError, Session, SessionOptions},
};

/// The tracing target of the line saying a graph is being prepared (a first run's only message).
pub const PREPARING: &str = "akidb::preparing";

/// Fused and original hidden states must agree at least this well, token by token.
pub const FUSED_MIN_COSINE: f64 = 0.99999;
/// How far a fused graph's logits may be from the exported graph's.
pub const LOGIT_TOLERANCE: f64 = 1e-4;

/// Texts of very different lengths: batched, the short ones are padded, so masking is exercised.
/// The loader tokenizes them into the probe batch that every check here runs.
pub const PROBE_TEXTS: [&str; 4] = [
    "a",
    "The quick brown fox jumps over the lazy dog.",
    "Attention masks matter: padded positions must not change what the real tokens see, however long the longest text in the batch happens to be.",
    "vector search, 42 embeddings; ÜNICODE ok?",
];

/// What became of the rewrite: a user whose model runs slower than a BERT's asks this first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// This many attention blocks fused, and the result verified on the probe batch.
    Fused(usize),
    /// The graph runs as exported, for this reason.
    AsExported(String),
}

impl Rewrite {
    /// How many attention blocks run fused (0: none).
    pub fn fused(&self) -> usize {
        match self {
            Self::Fused(n) => *n,
            Self::AsExported(_) => 0,
        }
    }

    /// One line for the log, `/info` and `akidb inspect`.
    pub fn describe(&self) -> String {
        match self {
            Self::Fused(n) => format!("{n} attention blocks fused and verified on a probe batch"),
            Self::AsExported(why) => format!("as exported, on ONNX Runtime's kernels: {why}"),
        }
    }
}

/// A loaded session and what became of its graph's rewrite.
pub struct Loaded {
    pub session: Session,
    pub rewrite: Rewrite,
}

impl Loaded {
    fn exported(session: Session, why: impl Into<String>) -> Self {
        Self { session, rewrite: Rewrite::AsExported(why.into()) }
    }
}

/// Where the verdict on one original file is kept.
pub struct CacheEntry {
    dir: PathBuf,
    /// `<hash of the file's path>-`: every entry ever made for that file starts with it.
    prefix: String,
    key: String,
    source: String,
}

impl CacheEntry {
    /// The entry for `onnx_path` in `dir`, keyed by the file's content, the head count, the
    /// attention kernel, the rewrite's and kernels' versions and the akidb and ONNX Runtime versions.
    pub fn new(dir: &Path, onnx_path: &Path, heads: usize, attention: AttentionOp) -> std::io::Result<Self> {
        let path_key = Key::new("graph-path").with("path", onnx_path.display()).short();
        let source = cache::content_hash(onnx_path, Some(dir))?;
        let key = Key::new("fused-graph")
            .with("source", &source)
            .with("heads", heads)
            .with("attention", format!("{attention:?}"))
            .with("rewrite", graph::REWRITE_VERSION)
            .with("kernels", akidb_kernels::VERSION)
            .with("akidb", env!("CARGO_PKG_VERSION"))
            .with("onnxruntime", crate::session::runtime::linked_version())
            .short();
        Ok(Self { dir: dir.to_path_buf(), prefix: format!("{path_key}-"), key, source })
    }

    /// The original file's content hash, as recorded in the fused graphs made from it.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A verified graph with `fused` blocks; the count is in the name so a cached graph need not
    /// be read to know it.
    pub fn fused_path(&self, fused: usize) -> PathBuf {
        self.dir.join(format!("{}{}-{fused}.onnx", self.prefix, self.key))
    }

    /// The verified graph kept for this content, and its fused-block count.
    pub fn cached(&self) -> Option<(PathBuf, usize)> {
        let stem = format!("{}{}-", self.prefix, self.key);
        std::fs::read_dir(&self.dir).ok()?.flatten().find_map(|e| {
            let name = e.file_name();
            let fused = name.to_str()?.strip_prefix(&stem)?.strip_suffix(".onnx")?.parse().ok()?;
            Some((e.path(), fused))
        })
    }

    /// ONNX Runtime's own optimization of the verified graph `fused_graph` (with `fused` blocks),
    /// saved so later starts load it with optimizations off and map its weights instead of
    /// copying them. Keyed beyond the entry's key (content, akidb and ONNX Runtime versions) by
    /// this CPU (the saved graph may hold kernels chosen for it) and the fused file's size and
    /// modification time, so a fused graph that is replaced invalidates it. `variant` tells the
    /// graphs made from the fused one apart (`""` for it, `".bf16"` for its bf16 products).
    pub fn optimized_dir(&self, fused_graph: &Path, fused: usize, variant: &str) -> std::io::Result<PathBuf> {
        let meta = std::fs::metadata(fused_graph)?;
        let modified = meta.modified()?.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let key = Key::new("optimized-graph")
            .with("format", OPTIMIZED_FORMAT)
            .with("machine", cache::machine())
            .with("size", meta.len())
            .with("modified", modified)
            .short();
        Ok(self.dir.join(format!("{}{}-{fused}{variant}.opt-{key}", self.prefix, self.key)))
    }

    pub fn rejected_path(&self) -> PathBuf {
        self.dir.join(format!("{}{}.rejected", self.prefix, self.key))
    }

    /// Removes this file's entries made from other contents or versions.
    fn prune_stale(&self) {
        let current = format!("{}{}", self.prefix, self.key);
        self.prune(|n| n.starts_with(&self.prefix) && !n.starts_with(&current));
    }

    /// Removes entries (files or directories) whose name `stale` picks; work in progress
    /// (`.tmp`) is left alone.
    fn prune(&self, stale: impl Fn(&str) -> bool) {
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_name().to_str().is_some_and(|n| stale(n) && !n.ends_with(".tmp")) {
                tracing::debug!("removing the stale fused graph entry {}", path.display());
                let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            }
        }
    }
}

/// Bumped when what is saved beside an optimized graph changes (2: prepacked weights too).
const OPTIMIZED_FORMAT: u32 = 2;

/// The session for the verified fused graph `cached`: ONNX Runtime's saved optimization of it
/// when there is one (no graph optimizations, weights mapped from the file: the cold start's
/// largest costs), else the graph loaded with full optimizations, whose optimized form is saved,
/// checked against it on the probe batch and kept for the next start. `Err` only when `cached`
/// itself does not load. `variant` as for [`CacheEntry::optimized_dir`].
pub(crate) fn load_cached(
    entry: &CacheEntry,
    cached: &Path,
    fused: usize,
    variant: &str,
    options: &SessionOptions,
    probe: Inputs<'_>,
) -> Result<Session, RuntimeError> {
    let Ok(dir) = entry.optimized_dir(cached, fused, variant) else { return Session::load(cached, None, options) };
    let graph = dir.join("model.onnx");
    if graph.exists() {
        match Session::load_with(&graph, None, options, &Optimization::Done) {
            Ok(session) => return Ok(session),
            Err(e) => {
                tracing::warn!("the optimized graph {} did not load ({e}); making it again", graph.display());
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    let started = std::time::Instant::now();
    let Some(name) = dir.file_name().and_then(|n| n.to_str()) else { return Session::load(cached, None, options) };
    let tmp = dir.with_file_name(format!("{name}.{}", cache::scratch_suffix()));
    if std::fs::create_dir_all(&tmp).is_err() {
        return Session::load(cached, None, options);
    }
    let session = match Session::load_with(cached, None, options, &Optimization::SaveTo(tmp.join("model.onnx"))) {
        Ok(session) => session,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let checked = Session::load_with(&tmp.join("model.onnx"), None, options, &Optimization::Done)
        .map_err(|e| format!("it did not load: {e}"))
        .and_then(|optimized| verify(&session, &optimized, probe).map(|_| optimized));
    let result = match checked {
        Ok(optimized) => {
            // Older optimizations of this entry (another fused file, another CPU) go first.
            let stem = format!("{}{}-{fused}{variant}.opt-", entry.prefix, entry.key);
            entry.prune(|n| n.starts_with(&stem));
            match std::fs::rename(&tmp, &dir) {
                Ok(()) => tracing::debug!(elapsed = ?started.elapsed(), "saved and checked the optimized graph"),
                Err(e) => tracing::debug!("could not keep the optimized graph in {}: {e}", dir.display()),
            }
            // Its weights stay mapped from the renamed files: same inodes.
            optimized
        }
        Err(why) => {
            tracing::warn!("not keeping ONNX Runtime's optimized graph of {}: {why}", cached.display());
            session
        }
    };
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(result)
}

/// The session of the verified fused graph of `onnx_path` when ONNX Runtime's optimization of it
/// is cached and loads (the common warm start), needing no tokenizer, so it can be loaded while
/// the tokenizer is parsed; `None` sends the caller to [`load`].
pub fn preload(onnx_path: &Path, heads: usize, options: &SessionOptions, cache_dir: Option<&Path>) -> Option<Loaded> {
    let entry = CacheEntry::new(cache_dir?, onnx_path, heads, options.attention()).ok()?;
    let (cached, fused) = entry.cached()?;
    let session = load_optimized(&entry, &cached, fused, "", options)?;
    Some(Loaded { session, rewrite: Rewrite::Fused(fused) })
}

/// ONNX Runtime's saved optimization of `graph` (made from the fused graph with `fused` blocks;
/// `variant` as for [`CacheEntry::optimized_dir`]) when there is one and it loads.
pub(crate) fn load_optimized(
    entry: &CacheEntry,
    graph: &Path,
    fused: usize,
    variant: &str,
    options: &SessionOptions,
) -> Option<Session> {
    let optimized = entry.optimized_dir(graph, fused, variant).ok()?.join("model.onnx");
    if !optimized.exists() {
        return None;
    }
    Session::load_with(&optimized, None, options, &Optimization::Done).ok()
}

/// Loads `onnx_path` with its attention blocks fused when a verified fused graph is cached or
/// can be made and verified now; otherwise (no match, a failed check, any problem making it) the
/// graph as exported. `cache_dir` `None` verifies every time and keeps nothing.
pub fn load(
    onnx_path: &Path,
    heads: usize,
    options: &SessionOptions,
    probe: Inputs<'_>,
    cache_dir: Option<&Path>,
) -> Result<Loaded, RuntimeError> {
    let original = |why: String| {
        tracing::info!("{} runs as exported: {why}", onnx_path.display());
        Session::load(onnx_path, None, options).map(|session| Loaded::exported(session, why))
    };
    let scratch = std::env::temp_dir();
    let entry = match CacheEntry::new(cache_dir.unwrap_or(&scratch), onnx_path, heads, options.attention()) {
        Ok(entry) => entry,
        Err(e) => return original(format!("the graph could not be read for rewriting ({e})")),
    };
    if cache_dir.is_some() {
        if let Ok(note) = std::fs::read_to_string(entry.rejected_path()) {
            return original(format!(
                "the rewritten graph failed its verification on the probe batch ({}; remembered in {})",
                note.trim(),
                entry.rejected_path().display()
            ));
        }
        if let Some((cached, fused)) = entry.cached() {
            match load_cached(&entry, &cached, fused, "", options, probe) {
                Ok(session) => return Ok(Loaded { session, rewrite: Rewrite::Fused(fused) }),
                Err(e) => {
                    tracing::warn!("the cached fused graph {} did not load ({e}); making it again", cached.display());
                    let _ = std::fs::remove_file(&cached);
                }
            }
        }
    }
    let started = std::time::Instant::now();
    // The one thing a first run says (at info, under a target the binary shows on a terminal):
    // why it takes a moment longer than the next.
    tracing::info!(
        target: PREPARING,
        "preparing {} for this CPU (rewriting and verifying its graph; later runs reuse it)",
        onnx_path.display()
    );
    let model = match graph::read_model(onnx_path) {
        Ok(model) => model,
        Err(e) => return original(format!("the graph could not be read for rewriting ({e})")),
    };
    // Read before the rewrite consumes the model: said only when nothing matches.
    let unmatched = graph::why_unmatched(&model, "attention_mask");
    let model = match graph::fuse_attention(model, heads, "attention_mask", options.attention()) {
        Ok(Some(rewritten)) => rewritten,
        Ok(None) => return original(unmatched),
        Err(e) => return original(format!("the rewrite failed ({e})")),
    };
    tracing::debug!(elapsed = ?started.elapsed(), "read and rewrote {}", onnx_path.display());
    adopt(onnx_path, model, options, probe, &entry, cache_dir.is_some())
}

/// Verifies `rewritten` against the original on the probe batch and keeps whichever is right:
/// the fused session when every token matches, else the original. With `keep`, the verdict is
/// written to `entry` (the fused graph itself, or a `.rejected` note saying why).
pub fn adopt(
    onnx_path: &Path,
    mut rewritten: Rewritten,
    options: &SessionOptions,
    probe: Inputs<'_>,
    entry: &CacheEntry,
    keep: bool,
) -> Result<Loaded, RuntimeError> {
    let stamp = |key: &str, value: String| {
        let mut e = StringStringEntryProto::new();
        e.key = key.to_string();
        e.value = value;
        e
    };
    rewritten.model.metadata_props.retain(|p| !p.key.starts_with("akidb."));
    rewritten.model.metadata_props.push(stamp("akidb.source_hash", entry.source.clone()));
    rewritten.model.metadata_props.push(stamp("akidb.fused_attention", rewritten.fused.to_string()));
    let fused = rewritten.fused;

    // The candidate goes to a file next to its final place: ONNX Runtime reads it from there and
    // a kept one is renamed into place, so the weights are never copied in memory again.
    if let Err(e) = std::fs::create_dir_all(&entry.dir) {
        let why = format!("the rewritten graph has nowhere to go ({}: {e})", entry.dir.display());
        tracing::info!("{} runs as exported: {why}", onnx_path.display());
        return Session::load(onnx_path, None, options).map(|session| Loaded::exported(session, why));
    }
    let started = std::time::Instant::now();
    let tmp = entry.dir.join(format!("{}{}.{}", entry.prefix, entry.key, cache::scratch_suffix()));
    // The original session loads on a second thread while the candidate is written and loaded.
    let (original, candidate) = std::thread::scope(|scope| {
        let original = scope.spawn(|| Session::load(onnx_path, None, options));
        let written = graph::write_model(&rewritten.model, &tmp);
        drop(rewritten);
        let candidate = match written {
            Ok(()) => Session::load(&tmp, None, options).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let original = original.join().unwrap_or_else(|_| {
            Err(RuntimeError::Load { path: onnx_path.display().to_string(), message: "loader thread panicked".into() })
        });
        (original, candidate)
    });
    let original = match original {
        Ok(session) => session,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    tracing::debug!(elapsed = ?started.elapsed(), "wrote the fused graph and loaded both sessions");
    let verdict = candidate.and_then(|session| verify(&original, &session, probe).map(|worst| (session, worst)));
    tracing::debug!(elapsed = ?started.elapsed(), "verified");
    let result = match verdict {
        Ok((session, worst)) => {
            tracing::info!(fused, worst_cosine = worst, "fused attention verified against the exported graph");
            if keep {
                match std::fs::rename(&tmp, entry.fused_path(fused)) {
                    Ok(()) => entry.prune_stale(),
                    Err(e) => tracing::debug!("could not cache the fused graph in {}: {e}", entry.dir.display()),
                }
            }
            Loaded { session, rewrite: Rewrite::Fused(fused) }
        }
        Err(why) => {
            tracing::warn!("not using the fused attention graph of {}: {why}", onnx_path.display());
            if keep {
                let note = format!("{why}\n");
                if std::fs::write(entry.rejected_path(), note).is_ok() {
                    entry.prune_stale();
                }
            }
            Loaded::exported(
                original,
                format!("the rewritten graph failed its verification on the probe batch ({why})"),
            )
        }
    };
    let _ = std::fs::remove_file(&tmp);
    Ok(result)
}

/// How closely a candidate session's outputs on the probe batch must follow the reference's.
#[derive(Debug, Clone, Copy)]
pub struct Agreement {
    /// Hidden states: every real (unpadded) token's vector has at least this cosine.
    pub min_cosine: f64,
    /// A head's logits: every one within this, relative above 1.
    pub logit_tolerance: f64,
    /// A head's logits: the probe texts ranked the same by the first logit, too.
    pub same_ranking: bool,
}

/// What the fused graph must keep of the exported one: everything, to float rounding.
pub const FUSED: Agreement =
    Agreement { min_cosine: FUSED_MIN_COSINE, logit_tolerance: LOGIT_TOLERANCE, same_ranking: false };

/// Runs both sessions on `probe`; `Ok(worst agreement)` when the fused graph agrees with the
/// original ([`FUSED`]), else why not.
pub fn verify(original: &Session, fused: &Session, probe: Inputs<'_>) -> Result<f64, String> {
    agree(original, fused, probe, &FUSED)
}

/// Runs both sessions on `probe`; `Ok(worst agreement)` when `candidate` follows `reference` as
/// `bar` asks, else why not. Hidden states ([batch, tokens, dim]) by the cosine of every real
/// token; 2-D outputs are a head's logits, reported as 1 − the largest relative difference.
pub fn agree(reference: &Session, candidate: &Session, probe: Inputs<'_>, bar: &Agreement) -> Result<f64, String> {
    let run = |s: &Session| {
        s.run(probe, |h: ArrayViewD<'_, f32>| h.to_owned()).map_err(|e| format!("the probe run failed: {e}"))
    };
    let (a, b): (ArrayD<f32>, ArrayD<f32>) = (run(reference)?, run(candidate)?);
    if a.shape() != b.shape() {
        return Err(format!("outputs of shape {:?} instead of {:?}", b.shape(), a.shape()));
    }
    if a.ndim() == 2 {
        let mut largest = 0f64;
        for ((index, &x), &y) in a.indexed_iter().zip(b.iter()) {
            let (row, label) = (index[0], index[1]);
            let diff = f64::from((x - y).abs()) / f64::from(x.abs()).max(1.0);
            if diff.is_nan() || diff > bar.logit_tolerance {
                return Err(format!("probe text {row}, logit {label}: {y} instead of {x}"));
            }
            largest = largest.max(diff);
        }
        if bar.same_ranking {
            let order = |m: &ArrayD<f32>| {
                let mut rows: Vec<usize> = (0..m.shape()[0]).collect();
                rows.sort_by(|&i, &j| m[[j, 0]].total_cmp(&m[[i, 0]]));
                rows
            };
            if order(&a) != order(&b) {
                return Err(format!("the probe texts rank {:?} instead of {:?}", order(&b), order(&a)));
            }
        }
        return Ok(1.0 - largest);
    }
    let mut worst = 1.0f64;
    for (row, (x, y)) in a.axis_iter(Axis(0)).zip(b.axis_iter(Axis(0))).enumerate() {
        for (t, (u, v)) in x.axis_iter(Axis(0)).zip(y.axis_iter(Axis(0))).enumerate() {
            if probe.attention_mask.get([row, t]).is_some_and(|&m| m == 0) {
                continue;
            }
            let dot: f64 = u.iter().zip(v.iter()).map(|(p, q)| f64::from(*p) * f64::from(*q)).sum();
            let norms = u.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt()
                * v.iter().map(|q| f64::from(*q).powi(2)).sum::<f64>().sqrt();
            let cosine = if norms > 0.0 { dot / norms } else { f64::from(u == v) };
            if cosine.is_nan() || cosine < bar.min_cosine {
                return Err(format!("probe text {row}, token {t}: cosine {cosine:.7} < {}", bar.min_cosine));
            }
            worst = worst.min(cosine);
        }
    }
    Ok(worst)
}
