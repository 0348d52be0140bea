//! What ARCHITECTURE.md says of the source, checked from the sources: its
//! table lists every file of `src/`; imports run one way, down that table
//! (each module imports only modules above it, `error/` none, and no chain
//! of imports leads back to where it started); every call to the policy's
//! matcher and every meaning given to a TLS alert is under `judge/`. Read
//! from the library code only (comments, and the test module at the end of
//! each file, left out).

use std::collections::{BTreeMap, BTreeSet};

/// A file's library code: without its test module (`#[cfg(...test...)]`
/// then `mod tests {`, at the end of the file) and without comment lines.
fn library_code(text: &str) -> String {
    let mut code = text;
    if let Some(at) = text.find("\nmod tests {") {
        let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let attribute = &text[line_start..at];
        if attribute.starts_with("#[cfg(") && attribute.contains("test") {
            code = &text[..line_start];
        }
    }
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Each module of `src/` (a file, or a directory read as one, each of its
/// files stripped of its own tests) and its library code.
fn sources() -> BTreeMap<String, String> {
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
                let file = file.unwrap().path();
                text += &library_code(&std::fs::read_to_string(file).unwrap());
                text.push('\n');
            }
            texts.insert(name, text);
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" {
            texts.insert(name, library_code(&std::fs::read_to_string(&path).unwrap()));
        }
    }
    texts
}

/// Each module of `src/` and the modules it names as `crate::<module>`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let texts = sources();
    let modules: BTreeSet<String> = texts.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (module, code) in &texts {
        let mut uses = BTreeSet::new();
        for line in code.lines() {
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

/// The modules ARCHITECTURE.md's table lists, in its order.
fn table() -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    doc.lines()
        .skip_while(|line| !line.starts_with("| file | holds |"))
        .take_while(|line| line.starts_with('|'))
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once("` |").map(|(name, _)| name))
        .filter_map(|name| {
            name.strip_suffix(".rs")
                .or_else(|| name.strip_suffix('/'))
                .map(str::to_owned)
        })
        .collect()
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
    let table = table();
    for module in imports().keys().map(String::as_str).chain(["lib"]) {
        assert!(
            table.iter().any(|m| m == module),
            "ARCHITECTURE.md's table does not list src/{module}"
        );
    }
    for listed in &table {
        assert!(
            listed == "lib" || imports().contains_key(listed),
            "ARCHITECTURE.md lists src/{listed}, which does not exist"
        );
    }
}

#[test]
fn imports_run_down_the_table() {
    let table = table();
    let graph = imports();
    for (module, uses) in &graph {
        let at = table.iter().position(|m| m == module).unwrap_or(usize::MAX);
        for used in uses {
            let used_at = table.iter().position(|m| m == used).unwrap_or(usize::MAX);
            assert!(
                used_at < at,
                "src/{module} imports {used}, which ARCHITECTURE.md's table lists below it"
            );
        }
    }
}

#[test]
fn every_decision_is_under_judge() {
    // The policy's matcher is called by the judgment only; an alert or a
    // certificate error gets its meaning in the table of reasons only.
    for (module, code) in sources() {
        if module == "judge" {
            continue;
        }
        let calls_matcher =
            code.contains("policy.check(") || code.contains(".admits(") && module != "policy";
        assert!(!calls_matcher, "src/{module} calls the policy's matcher");
        for meaning in ["AlertDescription::", "CertificateError::"] {
            assert!(
                !code.contains(meaning),
                "src/{module} gives {meaning}* a meaning outside judge/reasons.rs"
            );
        }
    }
    // And the judgment does call it (the check above is not vacuous).
    assert!(sources()["judge"].contains("policy.check("));
}
