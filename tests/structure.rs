//! The layout's rules, checked on the source: no module imports, through any chain, a module
//! that imports it back, and the vocabulary (`model`) and the signature primitives import
//! nothing from the crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module of `src/` and the top-level modules its non-test code names as
/// `crate::x` (including `use crate::{x, …}` groups). `crate::App` is the `app` module, which
/// the crate root re-exports.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let path_re = regex::Regex::new(r"crate::([a-z_]+)").unwrap();
    let group_re = regex::Regex::new(r"use crate::\{([^}]*)\}").unwrap();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix(&src).unwrap();
        let first = relative.iter().next().unwrap().to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let names = graph.entry(module.clone()).or_default();
        for c in path_re.captures_iter(&code) {
            names.insert(c[1].to_string());
        }
        for c in group_re.captures_iter(&code) {
            for part in c[1].split(',') {
                let name = part.trim().split("::").next().unwrap_or("").to_string();
                if name.starts_with(|ch: char| ch.is_ascii_lowercase()) {
                    names.insert(name);
                }
            }
        }
        if code.contains("crate::App")
            || group_re.captures_iter(&code).any(|c| c[1].contains("App"))
        {
            names.insert("app".into());
        }
        names.remove(&module);
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for names in graph.values_mut() {
        names.retain(|n| modules.contains(n));
    }
    graph
}

/// The modules reachable from `start`.
fn reachable(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![start.to_string()];
    while let Some(m) = todo.pop() {
        for next in &graph[&m] {
            if seen.insert(next.clone()) {
                todo.push(next.clone());
            }
        }
    }
    seen
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let graph = imports();
    assert!(graph.len() > 20, "modules found: {:?}", graph.keys());
    let mut cycles = Vec::new();
    for module in graph.keys() {
        if reachable(&graph, module).contains(module) {
            cycles.push(module.clone());
        }
    }
    assert!(
        cycles.is_empty(),
        "modules on an import cycle: {cycles:?}\n{graph:#?}"
    );
}

#[test]
fn the_vocabulary_and_the_signatures_import_nothing_from_the_crate() {
    let graph = imports();
    for module in ["model", "signature", "secrets", "metrics"] {
        assert_eq!(
            graph[module],
            BTreeSet::new(),
            "{module} imports {:?}",
            graph[module]
        );
    }
}
