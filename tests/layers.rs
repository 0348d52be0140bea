//! Imports run one way (DESIGN.md): `error/` is the ground floor and
//! imports no other module, and no module reaches, through any chain of
//! imports, back to itself. Read from the sources, library code only (doc
//! comments and the `#[cfg(test)]` module at the end of a file left out).

use std::collections::{BTreeMap, BTreeSet};

/// Each module of `src/` (a file, or a directory with `mod.rs` read as one)
/// and the modules it names as `crate::<module>`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut texts: BTreeMap<String, String> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let Some(name) = path.file_stem().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        if path.is_dir() {
            let mut text = String::new();
            for file in std::fs::read_dir(&path).unwrap() {
                text += &std::fs::read_to_string(file.unwrap().path()).unwrap();
            }
            texts.insert(name, text);
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" {
            texts.insert(name, std::fs::read_to_string(&path).unwrap());
        }
    }
    let modules: BTreeSet<String> = texts.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (module, text) in &texts {
        let code: String = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or_default()
            .to_owned();
        let mut uses = BTreeSet::new();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let name: String = line[at + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if modules.contains(&name) && name != *module {
                    uses.insert(name);
                }
            }
            // `use crate::{a, b}` groups.
            if let Some(group) = line.trim_start().strip_prefix("use crate::{") {
                for name in group.split(|c: char| !c.is_ascii_alphanumeric() && c != '_') {
                    if modules.contains(name) && name != module {
                        uses.insert(name.to_owned());
                    }
                }
            }
        }
        graph.insert(module.clone(), uses);
    }
    graph
}

#[test]
fn error_is_the_ground_floor() {
    let graph = imports();
    assert!(
        graph["error"].is_empty(),
        "error/ imports {:?}",
        graph["error"]
    );
    assert!(
        graph["observe"].iter().all(|m| m == "error"),
        "the event sink calls nobody above error/: {:?}",
        graph["observe"]
    );
}

#[test]
fn no_module_imports_itself_through_others() {
    let graph = imports();
    // Depth-first search; a module met again on the current path closes a circle.
    fn visit<'a>(
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        module: &'a str,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if let Some(at) = path.iter().position(|m| *m == module) {
            panic!("import circle: {} -> {module}", path[at..].join(" -> "));
        }
        if !done.insert(module) {
            return;
        }
        path.push(module);
        for next in &graph[module] {
            visit(graph, next, path, done);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        visit(&graph, module, &mut Vec::new(), &mut done);
    }
    assert!(graph.len() > 10, "read only {} modules", graph.len());
}

#[test]
fn architecture_md_lists_every_file() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    for module in imports().keys().map(String::as_str).chain(["lib"]) {
        assert!(
            doc.contains(&format!("| `{module}.rs` |"))
                || doc.contains(&format!("| `{module}/` |")),
            "ARCHITECTURE.md does not list src/{module}.rs"
        );
    }
}
