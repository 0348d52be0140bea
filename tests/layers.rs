//! Imports run one way (DESIGN.md): `error.rs` is the ground floor and
//! imports no other module, and no module reaches, through any chain of
//! imports, back to itself. Read from the sources, library code only (doc
//! comments and the `#[cfg(test)]` module at the end of a file left out).

use std::collections::{BTreeMap, BTreeSet};

/// Each module of `src/` and the modules it names as `crate::<module>`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    let modules: BTreeSet<String> = std::fs::read_dir(&src)
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            (path.extension()? == "rs").then(|| path.file_stem()?.to_str().map(str::to_owned))?
        })
        .filter(|m| m != "lib")
        .collect();
    for module in &modules {
        let text = std::fs::read_to_string(src.join(format!("{module}.rs"))).unwrap();
        let code = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or_default();
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
        "error.rs imports {:?}",
        graph["error"]
    );
    assert!(
        graph["observe"].iter().all(|m| m == "error"),
        "the event sink calls nobody above error.rs: {:?}",
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
            doc.contains(&format!("| `{module}.rs` |")),
            "ARCHITECTURE.md does not list src/{module}.rs"
        );
    }
}
