//! akidb's cache (verified graphs, ONNX Runtime's optimized graphs, device decisions, compiled
//! CoreML models) and the one way its entries are keyed: [`Key`] hashes named parts with one
//! stable hash (xxh3-128; std's hasher may change between Rust releases, and a cache outlives
//! the binary that wrote it), [`content_hash`] identifies a model file by its bytes, and
//! [`machine`] identifies what a timing or a CPU-specific graph depends on.

use std::{
    fmt::Display,
    io::Read,
    path::{Path, PathBuf},
};

use xxhash_rust::xxh3::Xxh3;

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

/// Device decisions: `<cache_dir>/device`.
pub fn device_dir() -> Option<PathBuf> {
    cache_dir().map(|d| d.join("device"))
}

/// A name for work in progress (`<pid>-<n>.tmp`), unique across the process's threads and
/// processes: two loads of one model at once must never write, read or remove each other's files
/// (a shared name once turned one thread's vanished file into a cached refusal).
pub fn scratch_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}.tmp", std::process::id())
}

/// A cache key: everything an entry depends on, as named parts. Two keys are equal exactly when
/// their parts are (each part is hashed with its length, so parts cannot run into each other);
/// [`Key::describe`] keeps them readable for a cache file to record what it was made from.
#[derive(Clone)]
pub struct Key {
    hasher: Xxh3,
    text: String,
}

impl Key {
    /// A key for one kind of entry (`"fused-graph"`, `"device"`, …): kinds never share keys.
    pub fn new(kind: &str) -> Self {
        Self { hasher: Xxh3::new(), text: String::new() }.with("kind", kind)
    }

    pub fn with(mut self, name: &str, value: impl Display) -> Self {
        let part = format!("{name}={value}");
        self.hasher.update(&(part.len() as u64).to_le_bytes());
        self.hasher.update(part.as_bytes());
        if !self.text.is_empty() {
            self.text.push(' ');
        }
        self.text.push_str(&part);
        self
    }

    /// 32 hex digits.
    pub fn hex(&self) -> String {
        format!("{:032x}", self.hasher.digest128())
    }

    /// 16 hex digits, for file names that carry several keys.
    pub fn short(&self) -> String {
        format!("{:016x}", self.hasher.digest())
    }

    /// The parts, `name=value` separated by spaces.
    pub fn describe(&self) -> &str {
        &self.text
    }
}

/// The content hash of a model file, shared by every cache. A file in hf-hub's cache is a blob
/// named by its hash (sha256 for LFS files, the git object id otherwise): that name is taken as it
/// is. Other files are hashed (xxh3-128 of every byte); with `memo`, the hash is remembered in
/// that directory beside the file's size, modification and change times and inode, so a start
/// with an unchanged file does not read it (a rewrite changes the change time, even when the
/// size and the modification time are set back).
pub fn content_hash(path: &Path, memo: Option<&Path>) -> std::io::Result<String> {
    let real = std::fs::canonicalize(path)?;
    let in_blobs = real.parent().and_then(Path::file_name).is_some_and(|d| d == "blobs");
    if let Some(name) = real.file_name().and_then(|n| n.to_str()) {
        if in_blobs && matches!(name.len(), 40 | 64) && name.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(format!("hub-{name}"));
        }
    }
    let stamp = file_stamp(&real)?;
    let memo =
        memo.map(|dir| dir.join(format!("{}.hash", Key::new("content-memo").with("path", real.display()).hex())));
    if let Some(hash) = memo
        .as_deref()
        .and_then(|m| std::fs::read_to_string(m).ok())
        .and_then(|m| m.strip_prefix(&format!("{stamp} ")).map(str::to_string))
    {
        return Ok(hash);
    }
    let mut file = std::fs::File::open(&real)?;
    let mut hasher = Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let hash = format!("xxh3-{:032x}", hasher.digest128());
    if let Some(memo) = memo {
        let saved = memo.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| {
            let tmp = memo.with_extension(scratch_suffix());
            std::fs::write(&tmp, format!("{stamp} {hash}"))?;
            std::fs::rename(&tmp, &memo)
        });
        if let Err(e) = saved {
            tracing::debug!("could not remember the hash of {} in {}: {e}", path.display(), memo.display());
        }
    }
    Ok(hash)
}

/// What changes when a file is written: size and modification time, and on Unix the inode and the
/// change time, which no user can set back.
fn file_stamp(path: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    let modified = meta.modified()?.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    #[cfg(unix)]
    let changed = {
        use std::os::unix::fs::MetadataExt;
        format!("{}:{}.{}", meta.ino(), meta.ctime(), meta.ctime_nsec())
    };
    #[cfg(not(unix))]
    let changed = "-";
    Ok(format!("{}:{modified}:{changed}", meta.len()))
}

/// This machine, as far as a timing or a CPU-specific graph is concerned: OS and its version,
/// architecture, core count, the CPU's model and feature flags (Linux: `/proc/cpuinfo`) or the
/// Mac's model and chip (`sysctl hw.model machdep.cpu.brand_string kern.osproductversion`). No
/// host name: macOS leaves `HOSTNAME` unset, and a renamed host is the same machine.
pub fn machine() -> String {
    static MACHINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MACHINE
        .get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(0, usize::from);
            let cpu = if cfg!(target_os = "macos") {
                std::process::Command::new("sysctl")
                    .args(["-n", "hw.model", "machdep.cpu.brand_string", "kern.osproductversion"])
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().collect::<Vec<_>>().join(" "))
                    .unwrap_or_else(|| "unknown-mac".into())
            } else {
                let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
                let field = |name: &str| {
                    cpuinfo
                        .lines()
                        .find(|l| l.starts_with(name))
                        .and_then(|l| l.split_once(':'))
                        .map_or("", |(_, v)| v.trim())
                };
                format!("{} flags:{}", field("model name"), Key::new("cpu-flags").with("flags", field("flags")).short())
            };
            format!("{}-{} {cores} cores, {cpu}", std::env::consts::OS, std::env::consts::ARCH)
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_every_part_and_its_boundaries() {
        let a = Key::new("x").with("a", "bc").with("d", 1);
        assert_eq!(a.hex(), Key::new("x").with("a", "bc").with("d", 1).hex(), "stable");
        assert_ne!(a.hex(), Key::new("x").with("a", "b").with("cd", 1).hex(), "boundaries count");
        assert_ne!(a.hex(), Key::new("y").with("a", "bc").with("d", 1).hex(), "kinds never share keys");
        assert_eq!(a.describe(), "kind=x a=bc d=1");
        assert_eq!(a.hex().len(), 32);
        assert_eq!(a.short().len(), 16);
        // The hash itself is stable across builds: a cache written by one binary is read by the next.
        assert_eq!(Key::new("x").hex(), Key::new("x").hex());
    }

    #[test]
    fn content_hash_changes_with_content_of_the_same_size_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let memo = dir.path().join("memo");
        for size in [1000usize, 3 << 20] {
            let path = dir.path().join(format!("model-{size}.onnx"));
            let mut bytes = vec![7u8; size];
            std::fs::write(&path, &bytes).unwrap();
            let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
            let before = content_hash(&path, Some(&memo)).unwrap();
            assert_eq!(before, content_hash(&path, Some(&memo)).unwrap(), "stable (memo)");
            assert_eq!(before, content_hash(&path, None).unwrap(), "stable (read again)");
            // A re-export: same path, same size, same mtime (set back), different weights in the middle.
            bytes[size / 2] = 8;
            std::fs::write(&path, &bytes).unwrap();
            std::fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
            assert_ne!(before, content_hash(&path, Some(&memo)).unwrap(), "size {size}");
        }
    }

    #[test]
    fn hub_blobs_are_named_by_their_hash() {
        let dir = tempfile::tempdir().unwrap();
        let sha = "ab".repeat(32);
        let blobs = dir.path().join("blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::write(blobs.join(&sha), b"weights").unwrap();
        assert_eq!(content_hash(&blobs.join(&sha), None).unwrap(), format!("hub-{sha}"));
    }

    #[test]
    fn the_machine_is_named_without_the_host() {
        let m = machine();
        assert!(m.starts_with(std::env::consts::OS) && m.contains("cores"), "{m}");
        if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
            let host = host.trim();
            assert!(host.len() < 4 || !m.contains(host), "{m} names the host {host}");
        }
    }
}
