//! The files of `engine/server/src` import each other without a cycle.
//!
//! Each top-level file is a node; `a.rs` has an edge to `b.rs` when it names `crate::b` (in a
//! path or in a grouped `use crate::{b, ...}`). `lib.rs` only wires and re-exports, so it is not a
//! node. A cycle means a shared item lives in the wrong file: give it a module of its own (as
//! `ctx.rs` and `clock.rs` were made) instead of letting two files lean on each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Reads every top-level module of `src` (file stem -> source without comments).
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("read src/") {
        let path = entry.expect("dir entry").path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.extension().is_some_and(|e| e == "rs") && stem != "lib" && stem != "main" {
            let text = std::fs::read_to_string(&path).expect("read module");
            out.insert(stem.to_string(), strip_line_comments(&text));
        }
    }
    out
}

fn strip_line_comments(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first path segments named after `crate::` anywhere in `text`, grouped uses included.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of a balanced `{ ... }` group: the first word after the opening
            // brace and after each comma at depth 1.
            let mut depth = 1usize;
            let mut word = String::new();
            let mut expect_name = true;
            for c in group.chars() {
                if depth == 1 && (c.is_alphanumeric() || c == '_') {
                    word.push(c);
                    continue;
                }
                if !word.is_empty() {
                    if expect_name {
                        refs.insert(std::mem::take(&mut word));
                    }
                    word.clear();
                    expect_name = false;
                }
                match c {
                    '{' => depth += 1,
                    '}' if depth == 1 => break,
                    '}' => depth -= 1,
                    ',' if depth == 1 => expect_name = true,
                    _ => {}
                }
            }
            if !word.is_empty() && expect_name {
                refs.insert(word);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            refs.insert(name);
        }
    }
    refs
}

/// A cycle in `edges`, if there is one (depth-first search with colours).
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = path.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = path[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, edges, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(node, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    mods.iter()
        .map(|(name, text)| {
            let deps = crate_refs(text)
                .into_iter()
                .filter(|d| d != name && mods.contains_key(d))
                .collect();
            (name.clone(), deps)
        })
        .collect()
}

#[test]
fn engine_server_files_import_each_other_without_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = graph(&src);
    assert!(edges.len() >= 10, "read the modules of {src:?}: {edges:?}");
    assert!(
        edges.values().any(|d| !d.is_empty()),
        "no edges found; the parser is broken: {edges:?}"
    );
    assert_eq!(find_cycle(&edges), None, "module graph: {edges:#?}");
}

#[test]
fn the_checker_sees_paths_groups_and_cycles() {
    let refs = crate_refs("use crate::{a::{X, Y}, b, c::Z};\nlet x = crate::d::f();");
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        ["a", "b", "c", "d"],
        "top-level names only"
    );
    let mut edges = BTreeMap::new();
    edges.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    edges.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    edges.insert("c".to_string(), BTreeSet::new());
    assert_eq!(find_cycle(&edges), None);
    edges.get_mut("c").expect("c").insert("a".to_string());
    assert_eq!(
        find_cycle(&edges),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
