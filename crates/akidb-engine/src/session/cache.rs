//! Where akidb keeps what it derives from models (fused graphs, compiled CoreML models). A leaf
//! module: both `settings` (defaults) and `embedder` (the graph cache) read it.

use std::path::PathBuf;

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

/// Attention-fused graphs and their verdicts: `<cache_dir>/graphs`.
pub fn graphs_dir() -> Option<PathBuf> {
    cache_dir().map(|d| d.join("graphs"))
}
