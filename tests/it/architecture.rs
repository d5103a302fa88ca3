//! The module graph is the one docs/architecture.md documents, and it runs one way: every
//! `crate::` path in a module's source names a module the document allows, every allowed
//! dependency is real, and the documented graph has no cycle.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::PathBuf,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `module: dep dep …` lines between the `<!-- module-graph -->` markers.
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let doc = fs::read_to_string(root().join("docs/architecture.md")).expect("read docs/architecture.md");
    let start = doc.find("<!-- module-graph -->").expect("docs/architecture.md has a <!-- module-graph --> block");
    let end = doc.find("<!-- /module-graph -->").expect("the block is closed");
    doc[start..end]
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(module, deps)| (module.trim().to_string(), deps.split_whitespace().map(str::to_string).collect()))
        .collect()
}

/// The crate's top-level modules (`pub mod x;` in lib.rs) and lib.rs's re-exports (name → module).
fn modules() -> (BTreeSet<String>, BTreeMap<String, String>) {
    let lib = fs::read_to_string(root().join("src/lib.rs")).expect("read src/lib.rs");
    let mods = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod ").or_else(|| l.trim().strip_prefix("mod ")))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect();
    let mut reexports = BTreeMap::new();
    for line in lib.lines().filter_map(|l| l.trim().strip_prefix("pub use ")) {
        let (module, names) = line.split_once("::").expect("pub use module::…");
        for name in names.trim_end_matches(';').trim_matches(|c| c == '{' || c == '}').split(',') {
            reexports.insert(name.trim().to_string(), module.to_string());
        }
    }
    (mods, reexports)
}

fn source_files(module: &str) -> Vec<PathBuf> {
    let file = root().join("src").join(format!("{module}.rs"));
    let dir = root().join("src").join(module);
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
    assert!(!files.is_empty(), "no source for module {module}");
    files
}

/// The first path segment of every item a `crate::` path names, braces expanded one level.
fn crate_paths(source: &str) -> Vec<String> {
    let code: String = source.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let mut out = vec![];
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // Top-level items of the group: the identifier after `{` or a comma at depth 0.
            let mut depth = 0;
            let mut item_start = true;
            let mut ident = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        if !ident.is_empty() {
                            out.push(std::mem::take(&mut ident));
                        }
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        if !ident.is_empty() {
                            out.push(std::mem::take(&mut ident));
                        }
                        item_start = true;
                    }
                    c if item_start && (c.is_alphanumeric() || c == '_') => ident.push(c),
                    _ if item_start && !ident.is_empty() => {
                        out.push(std::mem::take(&mut ident));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
        }
        rest = after;
    }
    out
}

fn actual() -> BTreeMap<String, BTreeSet<String>> {
    let (mods, reexports) = modules();
    mods.iter()
        .map(|module| {
            let deps = source_files(module)
                .iter()
                .flat_map(|f| crate_paths(&fs::read_to_string(f).expect("read source")))
                .map(|name| reexports.get(&name).cloned().unwrap_or(name))
                .filter(|dep| dep != module)
                .inspect(|dep| assert!(mods.contains(dep), "{module} uses crate::{dep}, which is no module"))
                .collect();
            (module.clone(), deps)
        })
        .collect()
}

#[test]
fn the_module_graph_is_the_documented_one() {
    let (doc, code) = (documented(), actual());
    let show = |g: &BTreeMap<String, BTreeSet<String>>| {
        g.iter()
            .map(|(m, d)| format!("{m}: {}", d.iter().cloned().collect::<Vec<_>>().join(" ")))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(doc, code, "docs/architecture.md documents\n{}\nbut the code has\n{}", show(&doc), show(&code));
}

#[test]
fn the_module_graph_runs_one_way() {
    let graph = documented();
    // Kahn's algorithm: a module is placed once everything it uses is.
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    while placed.len() < graph.len() {
        let ready: Vec<&str> = graph
            .iter()
            .filter(|(m, deps)| !placed.contains(m.as_str()) && deps.iter().all(|d| placed.contains(d.as_str())))
            .map(|(m, _)| m.as_str())
            .collect();
        assert!(
            !ready.is_empty(),
            "a cycle among {:?}",
            graph.keys().filter(|m| !placed.contains(m.as_str())).collect::<Vec<_>>()
        );
        placed.extend(ready);
    }
}

#[test]
fn the_path_parser_sees_grouped_and_inline_uses() {
    let src = "use crate::{a::B, c, d::{e, f}};\nfn x() { crate::g::h(); } // crate::comment\nuse crate::i;";
    assert_eq!(crate_paths(src), ["a", "c", "d", "g", "i"]);
}
