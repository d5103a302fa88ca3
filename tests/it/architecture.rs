//! The architecture docs/architecture.md draws is the code's, and it runs one way:
//! - the crate graph (each crate's `akidb-*` dependencies in its Cargo.toml) is the documented
//!   one, and the compiler enforces it;
//! - inside each crate, every `crate::` path in a module's source names a module the document
//!   allows (the engine's `session` is drawn one level deeper), every allowed dependency is real,
//!   and no graph has a cycle;
//! - the engine pulls in none of the front ends' crates (HTTP, command line, OpenAPI, file
//!   formats, metrics, progress bars), as `cargo tree` resolves it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::PathBuf,
    process::Command,
};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The crates whose module graphs are drawn, with their source folders.
const CRATES: [(&str, &str); 5] = [
    ("akidb-kernels", "crates/akidb-kernels/src"),
    ("akidb-engine", "crates/akidb-engine/src"),
    ("akidb-server", "crates/akidb-server/src"),
    ("akidb-corpus", "crates/akidb-corpus/src"),
    ("akidb", "src"),
];

/// `name: dep dep …` lines between `<!-- {marker} -->` and `<!-- /{marker} -->`.
fn documented(marker: &str) -> Graph {
    let doc = fs::read_to_string(root().join("docs/architecture.md")).expect("read docs/architecture.md");
    let open = format!("<!-- {marker} -->");
    let start = doc.find(&open).unwrap_or_else(|| panic!("docs/architecture.md has no {open} block"));
    let end = start + doc[start..].find("<!-- /").expect("the block is closed");
    doc[start..end]
        .lines()
        .skip(1)
        // `name: deps`, where a name may hold `::` (`session::runtime: session::graph`).
        .filter_map(|l| l.trim_end().split_once(": ").or_else(|| l.trim_end().strip_suffix(':').map(|m| (m, ""))))
        .map(|(module, deps)| (module.trim().to_string(), deps.split_whitespace().map(str::to_string).collect()))
        .collect()
}

/// The crate graph as the manifests have it: each crate's `akidb-*` normal dependencies.
fn crate_graph() -> Graph {
    CRATES
        .iter()
        .map(|(name, src)| {
            let manifest = root().join(src).join("..").join("Cargo.toml");
            let text = fs::read_to_string(&manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
            let deps = text
                .split("\n[")
                .find(|section| section.starts_with("dependencies]"))
                .map(|section| {
                    section
                        .lines()
                        .filter_map(|l| l.trim().split(['.', ' ', '=']).next())
                        .filter(|d| d.starts_with("akidb-"))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            (name.to_string(), deps)
        })
        .collect()
}

/// The modules of the crate in `src` (`mod x;` in lib.rs; a module whose `mod.rs` declares
/// modules of its own, as the engine's `session`, is drawn as `parent::child`) and lib.rs's
/// re-exports (name → module).
fn modules(src: &str) -> (BTreeSet<String>, BTreeMap<String, String>) {
    // Test-only modules (`#[cfg(test)] mod x;`) are no part of the architecture: left out, and so
    // are the paths into them.
    let declared = |file: PathBuf| -> Vec<String> {
        let text = fs::read_to_string(file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .iter()
            .enumerate()
            .filter(|(i, l)| !(l.trim_start().starts_with("//") || *i > 0 && lines[i - 1].trim() == "#[cfg(test)]"))
            .map(|(_, l)| *l)
            .filter_map(|l| {
                let l = l.trim();
                l.strip_prefix("pub mod ")
                    .or_else(|| l.strip_prefix("pub(crate) mod "))
                    .or_else(|| l.strip_prefix("mod "))
                    .filter(|m| m.ends_with(';'))
            })
            .map(|m| m.trim_end_matches(';').to_string())
            .collect()
    };
    let lib = root().join(src).join("lib.rs");
    let mut mods = BTreeSet::new();
    for m in declared(lib.clone()) {
        let children = declared(root().join(src).join(&m).join("mod.rs"));
        if children.is_empty() || src != "crates/akidb-engine/src" {
            mods.insert(m);
        } else {
            mods.extend(children.into_iter().map(|c| format!("{m}::{c}")));
        }
    }
    let mut reexports = BTreeMap::new();
    let text = fs::read_to_string(lib).unwrap_or_default();
    for line in text.lines().filter_map(|l| l.trim().strip_prefix("pub use ")) {
        let Some((module, names)) = line.split_once("::") else { continue };
        for name in names.trim_end_matches(';').trim_matches(|c| c == '{' || c == '}').split(',') {
            reexports.insert(name.trim().to_string(), module.to_string());
        }
    }
    (mods, reexports)
}

fn source_files(src: &str, module: &str) -> Vec<PathBuf> {
    let rel = module.replace("::", "/");
    let file = root().join(src).join(format!("{rel}.rs"));
    let dir = root().join(src).join(&rel);
    let mut files = vec![];
    if file.exists() {
        files.push(file);
    }
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                files.push(p);
            }
        }
    }
    assert!(!files.is_empty(), "no source for module {module} in {src}");
    files
}

/// The first two segments of every path a `crate::` path names, use-tree braces expanded at any
/// depth (`crate::{a::B, d::{e, f}}` names `a::B`, `d::e` and `d::f`).
fn crate_paths(source: &str) -> Vec<String> {
    let code: String = source.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let mut out = vec![];
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        use_tree(after, String::new(), &mut out);
        rest = after;
    }
    out
}

/// Reads one use tree at the start of `text` (a path, maybe ending in a `{…}` group), pushing the
/// first two segments of each path under `prefix`; returns how much of `text` it read.
fn use_tree(text: &str, prefix: String, out: &mut Vec<String>) -> usize {
    let is_path = |c: char| c.is_alphanumeric() || c == '_' || c == ':';
    let len = text.find(|c: char| !is_path(c)).unwrap_or(text.len());
    let path = format!("{prefix}{}", &text[..len]);
    if let Some(group) = text[len..].strip_prefix('{').filter(|_| path.is_empty() || path.ends_with("::")) {
        let mut read = 0;
        loop {
            let item = group[read..].trim_start();
            read = group.len() - item.len();
            if item.starts_with('}') || item.is_empty() {
                return len + 1 + read + 1;
            }
            let used = use_tree(item, path.clone(), out);
            // Something no path starts with (`*`, `self as x`'s tail): step over it.
            read += if used == 0 { item.chars().next().map_or(1, char::len_utf8) } else { used };
            let next = group[read..].trim_start();
            read = group.len() - next.len();
            if let Some(after_comma) = next.strip_prefix(',') {
                read = group.len() - after_comma.len();
            }
        }
    }
    let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).take(2).collect();
    if !segments.is_empty() {
        out.push(segments.join("::"));
    }
    len
}

/// `source` (the file `file` of the crate in `src`) with its `super::` paths written from the
/// crate root, so a sibling named through `super::` counts as one named through `crate::`.
/// `use super::*` is left out: it sits in inline test modules, where it names the file itself.
fn absolute(src: &str, file: &std::path::Path, source: &str) -> String {
    let rel = file.strip_prefix(root().join(src)).expect("a file of the crate").with_extension("");
    let mut module: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    if module.last().is_some_and(|m| m == "mod" || m == "lib") {
        module.pop();
    }
    module.pop(); // the parent, which `super::` names
    let parent = module.iter().map(|m| format!("{m}::")).collect::<String>();
    source.replace("super::*", "").replace("super::", &format!("crate::{parent}"))
}

/// The module graph of the crate in `src`, from its sources.
fn actual(src: &str) -> Graph {
    let (mods, reexports) = modules(src);
    let test_only: BTreeSet<String> = ["tests", "speed", "scheduling_tests"].map(String::from).into();
    mods.iter()
        .map(|module| {
            let deps = source_files(src, module)
                .iter()
                .flat_map(|f| {
                    let source = fs::read_to_string(f).expect("read source");
                    // `super::` paths that name no module are items of an inline module's parent
                    // (`mod x86 { use super::Kernel; }`): only the modules among them count.
                    let siblings = crate_paths(&absolute(src, f, &source.replace("crate::", "")))
                        .into_iter()
                        .filter(|p| mods.contains(p) || mods.contains(p.split("::").next().unwrap_or_default()));
                    crate_paths(&source).into_iter().chain(siblings).collect::<Vec<_>>()
                })
                .map(|path| {
                    // `session::runtime::X` names the drawn module `session::runtime`.
                    let two: String = path.splitn(3, "::").take(2).collect::<Vec<_>>().join("::");
                    let first = path.split("::").next().unwrap_or_default().to_string();
                    if mods.contains(&two) {
                        two
                    } else {
                        reexports.get(&first).cloned().unwrap_or(first)
                    }
                })
                .filter(|dep| dep != module && !module.starts_with(&format!("{dep}::")))
                .filter(|dep| !test_only.contains(dep))
                .inspect(|dep| assert!(mods.contains(dep), "{src}: {module} uses crate::{dep}, which is no module"))
                .collect();
            (module.clone(), deps)
        })
        .collect()
}

fn show(g: &Graph) -> String {
    g.iter()
        .map(|(m, d)| format!("{m}: {}", d.iter().cloned().collect::<Vec<_>>().join(" ")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Kahn's algorithm: a node is placed once everything it uses is.
fn assert_acyclic(graph: &Graph, what: &str) {
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    while placed.len() < graph.len() {
        let ready: Vec<&str> = graph
            .iter()
            .filter(|(m, deps)| !placed.contains(m.as_str()) && deps.iter().all(|d| placed.contains(d.as_str())))
            .map(|(m, _)| m.as_str())
            .collect();
        assert!(
            !ready.is_empty(),
            "{what}: a cycle among {:?}",
            graph.keys().filter(|m| !placed.contains(m.as_str())).collect::<Vec<_>>()
        );
        placed.extend(ready);
    }
}

#[test]
fn the_crate_graph_is_the_documented_one_and_runs_one_way() {
    let (doc, code) = (documented("crate-graph"), crate_graph());
    assert_eq!(doc, code, "docs/architecture.md documents\n{}\nbut the manifests have\n{}", show(&doc), show(&code));
    assert_acyclic(&doc, "crates");
}

#[test]
fn every_module_graph_is_the_documented_one_and_runs_one_way() {
    for (name, src) in CRATES {
        let (doc, code) = (documented(&format!("module-graph {name}")), actual(src));
        assert_eq!(
            doc,
            code,
            "{name}: docs/architecture.md documents\n{}\nbut the code has\n{}",
            show(&doc),
            show(&code)
        );
        assert_acyclic(&doc, name);
    }
}

/// What an engine user builds: `cargo tree` over the engine's normal dependencies with its
/// default features, none of which is a front end's.
#[test]
fn the_engine_pulls_in_no_front_end_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "--offline", "--locked", "-p", "akidb-engine", "-e", "normal", "--prefix", "none"])
        .current_dir(root())
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: BTreeSet<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(names.contains("ort") && names.contains("tokenizers"), "the tree is read: {names:?}");
    let front_ends = [
        "axum",
        "hyper",
        "clap",
        "utoipa",
        "parquet",
        "arrow-array",
        "arrow-schema",
        "prometheus-client",
        "indicatif",
        "tower",
    ];
    let found: Vec<&str> = front_ends.into_iter().filter(|c| names.contains(c)).collect();
    assert!(found.is_empty(), "akidb-engine depends on {found:?}");
}

#[test]
fn the_path_parser_sees_grouped_and_inline_uses() {
    let src =
        "use crate::{a::B, c, d::{e, f::{G, h}}, x::*};\nfn x() { crate::g::h(); } // crate::comment\nuse crate::i;";
    assert_eq!(crate_paths(src), ["a::B", "c", "d::e", "d::f", "d::f", "x", "g::h", "i"]);
}
