//! The crate's files form a one-way stack: no file names (`crate::...`) an item of a file that
//! depends on it in turn. A reader can start at `backend::sys` and climb to `Allocator`
//! without meeting a file that needs one above it. This test reads `src/` and fails on the
//! first cycle, naming the files in it.
//!
//! What it sees: paths written `crate::a::b` outside comments and outside the `#[cfg(test)]`
//! tail of a file, resolved to the deepest file that exists (`crate::observe::side::X` is
//! `observe/side.rs`). Items re-exported by a `mod.rs` count as that `mod.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`observe/side`) → file contents, for every file under `src/`.
fn files(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("directory entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            files(&path, &format!("{prefix}{name}/"), out);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            let module = if stem == "mod" {
                prefix.trim_end_matches('/').to_owned()
            } else {
                format!("{prefix}{stem}")
            };
            let text = std::fs::read_to_string(&path).expect("source is readable");
            out.insert(module, text);
        }
    }
}

/// The `crate::` and `super::` paths a file's non-test code names, as paths from the crate
/// root (`module` is the file's own module path, for `super::`).
fn crate_paths(module: &str, text: &str) -> Vec<Vec<String>> {
    let parent: Vec<String> = match module.rsplit_once('/') {
        Some((p, _)) => p.split('/').map(str::to_owned).collect(),
        None => Vec::new(),
    };
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
    let mut paths = Vec::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let line = line.split(" //").next().unwrap_or("");
        for (prefix, root) in [("crate::", Vec::new()), ("super::", parent.clone())] {
            paths.extend(paths_after(line, prefix, &root));
        }
    }
    paths
}

/// The paths written after each `prefix` in `line`, each put under `root`.
fn paths_after(line: &str, prefix: &str, root: &[String]) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find(prefix) {
        let tail = &rest[at + prefix.len()..];
        // A `use super::{a, b::C}` list: each name, plus the first segment of each path.
        let names: Vec<String> = if let Some(list) = tail.strip_prefix('{') {
            list.split('}')
                .next()
                .unwrap_or("")
                .split(',')
                .map(|n| n.trim().split("::").next().unwrap_or("").to_owned())
                .collect()
        } else {
            vec![String::new()]
        };
        for name in names {
            let tail = if name.is_empty() { tail } else { name.as_str() };
            let path: Vec<String> = tail
                .split("::")
                .map(|seg| {
                    seg.chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect::<String>()
                })
                .take_while(|seg| !seg.is_empty())
                .collect();
            paths.push(root.iter().cloned().chain(path).collect());
        }
        rest = tail;
    }
    paths
}

/// The deepest file that `path` names, if any.
fn resolve(path: &[String], modules: &BTreeMap<String, String>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|k| path[..k].join("/"))
        .find(|m| modules.contains_key(m))
}

#[test]
fn no_file_imports_from_a_file_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeMap::new();
    files(&src, "", &mut modules);
    assert!(modules.len() > 20, "found only {} files", modules.len());
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &modules {
        let set = deps.entry(module.clone()).or_default();
        for path in crate_paths(module, text) {
            if let Some(target) = resolve(&path, &modules) {
                if target != *module {
                    set.insert(target);
                }
            }
        }
    }
    // Kahn's algorithm: peel files that depend on nothing left; what remains has a cycle.
    let mut left = deps.clone();
    let mut order = Vec::new();
    loop {
        let ready: Vec<String> = left
            .iter()
            .filter(|(_, d)| d.iter().all(|t| !left.contains_key(t)))
            .map(|(m, _)| m.clone())
            .collect();
        if ready.is_empty() {
            break;
        }
        for m in ready {
            left.remove(&m);
            order.push(m);
        }
    }
    let stuck: Vec<String> = left
        .iter()
        .map(|(m, d)| {
            let inside: Vec<&String> = d.iter().filter(|t| left.contains_key(*t)).collect();
            format!("{m} -> {inside:?}")
        })
        .collect();
    assert!(
        stuck.is_empty(),
        "files in an import cycle (each names the ones after its arrow):\n  {}\n\
         files in order, bottom first: {order:?}",
        stuck.join("\n  ")
    );
    // The stack the crate docs describe, bottom to top: each file here stands on the one
    // before it (names it, directly or through others).
    let stands_on = |upper: &str, lower: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![upper.to_owned()];
        while let Some(m) = todo.pop() {
            for d in &deps[&m] {
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        seen.contains(lower)
    };
    for [lower, upper] in [
        ["backend/sys", "backend/procmem"],
        ["backend/sys", "backend/dualmap"],
        ["backend", "pack"],
        ["bitmap", "pack"],
        ["pack", "run"],
        ["run", "shared"],
        ["shared", "span"],
        ["span", "program"],
        ["program", "draft"],
        ["program", "batch"],
    ] {
        assert!(
            stands_on(upper, lower),
            "{upper} no longer stands on {lower}: update this list and the crate docs"
        );
    }
}

/// The scanner itself: a path in a comment or a test module is not an import; a path in code
/// is, resolved to the deepest file.
#[test]
fn the_scanner_sees_code_only() {
    let text = "use crate::pack::Pack; // crate::span\n//! crate::draft\nfn f() { crate::observe::side::x(); }\nuse super::{side::Seen, names};\n#[cfg(test)]\nmod tests { use crate::batch; }\n";
    let paths = crate_paths("observe/lookup", text);
    let mut modules = BTreeMap::new();
    for m in [
        "pack",
        "observe",
        "observe/side",
        "observe/names",
        "span",
        "draft",
        "batch",
    ] {
        modules.insert(m.to_owned(), String::new());
    }
    let found: Vec<String> = paths.iter().filter_map(|p| resolve(p, &modules)).collect();
    assert_eq!(
        found,
        ["pack", "observe/side", "observe/side", "observe/names"]
    );
}
