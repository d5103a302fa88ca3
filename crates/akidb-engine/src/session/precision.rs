//! `--precision`: whether the encoder's matrix products run in bf16 (inputs rounded to bf16, fp32
//! sums, akidb's `MatMulBf16` kernel) or fp32. bf16 is only trusted after a quality gate at load,
//! like the fused graph: the bf16 graph runs the probe batch beside the fp32 one and is kept only
//! when every real token's hidden state has a cosine of at least [`MIN_COSINE`] to fp32 (a head:
//! every logit within [`LOGIT_TOLERANCE`], relative, and the same order). The verdict is cached
//! beside the verified fused graph it was made from: `<fused>.bf16.onnx`, or `<fused>.bf16-rejected`
//! holding why.

use std::path::{Path, PathBuf};

use crate::session::{
    cache,
    fusion::{self, Agreement, CacheEntry, Loaded, Rewrite},
    graph::{self, AttentionOp},
    runtime::{Inputs, RuntimeError, Session, SessionOptions},
};

/// Every real token's bf16 hidden state has at least this cosine to fp32's.
pub const MIN_COSINE: f64 = 0.9995;
/// How far (relative, above 1) a head's bf16 logits may be from fp32's.
pub const LOGIT_TOLERANCE: f64 = 1e-2;

/// Which arithmetic the matrix products use; declared with the session options it is one of.
pub use crate::session::runtime::Precision;

/// What runs, and why: for the log, `/info` and `akidb inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub bf16: bool,
    pub why: String,
}

impl Chosen {
    pub fn fp32(why: impl Into<String>) -> Self {
        Self { bf16: false, why: why.into() }
    }

    /// One line: `bf16 (…)` or `fp32 (…)`.
    pub fn describe(&self) -> String {
        format!("{} ({})", if self.bf16 { "bf16" } else { "fp32" }, self.why)
    }
}

impl Default for Chosen {
    fn default() -> Self {
        Self::fp32("--precision fp32, the default")
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "--precision bf16 needs a CPU with AVX512-BF16 (vdpbf16ps: Intel Cooper Lake or Sapphire Rapids and later, AMD Zen 4 and later); this one has none: use --precision fp32 or auto"
)]
pub struct NoBf16;

/// The serving session for `precision`: `fp32` as it is; otherwise the bf16 graph made from the
/// verified fused graph `fp32` runs (rewritten with `heads` attention heads), kept when the gate
/// passes (the fp32 session is then dropped, and its weights with it). `Err` only for `bf16` on a
/// CPU without AVX512-BF16.
pub fn apply(
    fp32: Loaded,
    precision: Precision,
    onnx_path: &Path,
    heads: Option<usize>,
    options: &SessionOptions,
    probe: Inputs<'_>,
    cache_dir: Option<&Path>,
) -> Result<(Loaded, Chosen), RuntimeError> {
    if precision == Precision::Fp32 {
        return Ok((fp32, Chosen::default()));
    }
    if !akidb_kernels::bf16::hardware_bf16() {
        return match precision {
            Precision::Bf16 => {
                Err(RuntimeError::Load { path: onnx_path.display().to_string(), message: NoBf16.to_string() })
            }
            _ => Ok((fp32, Chosen::fp32("--precision auto: this CPU has no AVX512-BF16"))),
        };
    }
    let (Rewrite::Fused(fused), Some(heads)) = (&fp32.rewrite, heads) else {
        return Ok((fp32, Chosen::fp32("bf16 runs on akidb's rewritten graph, and this one runs as exported")));
    };
    let fused = *fused;
    if options.attention() != AttentionOp::Akidb {
        return Ok((
            fp32,
            Chosen::fp32("bf16 runs on akidb's rewritten graph with its own kernels (--attention akidb)"),
        ));
    }
    let scratch = std::env::temp_dir();
    let entry = match CacheEntry::new(cache_dir.unwrap_or(&scratch), onnx_path, heads, options.attention()) {
        Ok(entry) => entry,
        Err(e) => return Ok((fp32, Chosen::fp32(format!("the graph could not be read ({e})")))),
    };
    let (kept, rejected) = (bf16_path(&entry.fused_path(fused)), rejected_path(&entry.fused_path(fused)));
    if cache_dir.is_some() {
        match remembered(&entry, fused, options, Some(probe)) {
            Some(Ok(loaded)) => return Ok(loaded),
            Some(Err(why)) => return Ok((fp32, Chosen::fp32(why))),
            None => {}
        }
    }
    let started = std::time::Instant::now();
    // The fused fp32 graph this session runs: cached, or (without a cache) rewritten again.
    let model = match entry.cached().filter(|_| cache_dir.is_some()) {
        Some((path, _)) => graph::read_model(&path).map_err(|e| e.to_string()),
        None => graph::read_model(onnx_path)
            .and_then(|m| graph::fuse_attention(m, heads, "attention_mask", options.attention()))
            .map_err(|e| e.to_string())
            .and_then(|r| r.map(|r| r.model).ok_or_else(|| "the rewrite no longer matches".to_string())),
    };
    let mut model = match model {
        Ok(model) => model,
        Err(e) => return Ok((fp32, Chosen::fp32(format!("the fused graph could not be read for bf16 ({e})")))),
    };
    let products = graph::to_bf16(&mut model);
    if products == 0 {
        return Ok((fp32, Chosen::fp32("no matrix product by a constant weight to run in bf16")));
    }
    let tmp = kept.with_extension(format!("onnx.{}", cache::scratch_suffix()));
    let candidate = graph::write_model(&model, &tmp)
        .map_err(|e| e.to_string())
        .and_then(|()| Session::load(&tmp, None, options).map_err(|e| e.to_string()));
    drop(model);
    let verdict = candidate.and_then(|session| gate(&fp32.session, &session, probe).map(|worst| (session, worst)));
    tracing::debug!(elapsed = ?started.elapsed(), "bf16 graph made and gated");
    let result = match verdict {
        Ok((session, worst)) => {
            tracing::info!(products, worst, "bf16 matrix products passed their quality gate");
            // Kept, it is also optimized once by ONNX Runtime and saved, so that this and every
            // later start map its weights rather than copy them.
            let session = match cache_dir.map(|_| std::fs::rename(&tmp, &kept)) {
                Some(Ok(())) => fusion::load_cached(&entry, &kept, fused, VARIANT, options, probe).unwrap_or(session),
                Some(Err(e)) => {
                    tracing::debug!("could not cache the bf16 graph: {e}");
                    session
                }
                None => session,
            };
            let why = format!("{products} matrix products, worst agreement {worst:.6} on the probe batch");
            (Loaded { session, rewrite: Rewrite::Fused(fused) }, Chosen { bf16: true, why })
        }
        Err(why) => {
            tracing::warn!("not running {} in bf16: {why}", onnx_path.display());
            if cache_dir.is_some() {
                let _ = std::fs::write(&rejected, format!("{why}\n"));
            }
            (fp32, Chosen::fp32(format!("bf16 failed its quality gate ({why})")))
        }
    };
    let _ = std::fs::remove_file(&tmp);
    Ok(result)
}

/// The bf16 session when an earlier gate kept it, loaded without any fp32 session: a restart with
/// a cached verdict never holds the fp32 weights. `None` when `precision` is fp32, the CPU has no
/// AVX512-BF16, or no verdict is cached (or it is a refusal: [`apply`] says why).
pub fn preload(
    onnx_path: &Path,
    heads: usize,
    options: &SessionOptions,
    cache_dir: Option<&Path>,
) -> Option<(Loaded, Chosen)> {
    if options.precision == Precision::Fp32
        || !akidb_kernels::bf16::hardware_bf16()
        || options.attention() != AttentionOp::Akidb
    {
        return None;
    }
    let entry = CacheEntry::new(cache_dir?, onnx_path, heads, options.attention()).ok()?;
    let (_, fused) = entry.cached()?;
    remembered(&entry, fused, options, None)?.ok()
}

/// The cached verdict on `entry`'s fused graph: `Ok` with the kept bf16 session, `Err` with why
/// it was refused, `None` when there is none (or the kept graph no longer loads: it is removed,
/// to be made again). The session is ONNX Runtime's saved optimization of the bf16 graph (its
/// weights mapped, not copied): without a `probe` only when it is saved already, with one made,
/// checked and saved when missing, as for the fused graph.
fn remembered(
    entry: &CacheEntry,
    fused: usize,
    options: &SessionOptions,
    probe: Option<Inputs<'_>>,
) -> Option<Result<(Loaded, Chosen), String>> {
    let (kept, rejected) = (bf16_path(&entry.fused_path(fused)), rejected_path(&entry.fused_path(fused)));
    if let Ok(note) = std::fs::read_to_string(&rejected) {
        return Some(Err(format!(
            "bf16 failed its quality gate ({}; remembered in {})",
            note.trim(),
            rejected.display()
        )));
    }
    if !kept.exists() {
        return None;
    }
    let session = match probe {
        Some(probe) => fusion::load_cached(entry, &kept, fused, VARIANT, options, probe),
        None => Ok(fusion::load_optimized(entry, &kept, fused, VARIANT, options)?),
    };
    match session {
        Ok(session) => {
            let chosen =
                Chosen { bf16: true, why: "passed its quality gate on the probe batch; verdict cached".into() };
            Some(Ok((Loaded { session, rewrite: Rewrite::Fused(fused) }, chosen)))
        }
        Err(e) => {
            tracing::warn!("the cached bf16 graph {} did not load ({e}); making it again", kept.display());
            let _ = std::fs::remove_file(&kept);
            None
        }
    }
}

/// How the bf16 graph's saved optimization is told apart from the fused graph's.
const VARIANT: &str = ".bf16";

/// `<fused>.bf16.onnx` beside the verified fused graph it is made from.
fn bf16_path(fused: &Path) -> PathBuf {
    fused.with_extension("bf16.onnx")
}

fn rejected_path(fused: &Path) -> PathBuf {
    fused.with_extension("bf16-rejected")
}

/// The bar bf16 must clear against fp32 (see the module's documentation).
pub const GATE: Agreement = Agreement { min_cosine: MIN_COSINE, logit_tolerance: LOGIT_TOLERANCE, same_ranking: true };

/// Runs both sessions on `probe`; `Ok(worst agreement)` when bf16 clears [`GATE`] against fp32,
/// else why not.
pub fn gate(fp32: &Session, bf16: &Session, probe: Inputs<'_>) -> Result<f64, String> {
    fusion::agree(fp32, bf16, probe, &GATE)
}
