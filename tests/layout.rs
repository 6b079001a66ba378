//! The map in `src/lib.rs` stays true: every floor imports only the floors below it
//! (`ALLOWED`), nothing imports `cli`, `lib.rs` declares and describes every floor, and no
//! two files of one floor import each other (shared types go to a file of their own).
//!
//! It reads the sources as text: `crate::X` in code (comment lines skipped, and a file's
//! test module — from a top-level `#[cfg(test)]` on — as well as test-only files), and
//! `super::X` / `use super::{X, ..}` naming a sibling file. A new floor, or a new arrow,
//! is added to `ALLOWED` on purpose, with the map in `lib.rs` and DESIGN.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each floor and the floors it may import, lowest first.
const ALLOWED: &[(&str, &[&str])] = &[
    ("smtp", &[]),
    ("net", &[]),
    ("platform", &[]),
    ("policy", &["smtp"]),
    ("config", &["smtp", "policy"]),
    ("store", &["smtp", "policy", "platform"]),
    ("server", &["smtp", "net", "policy", "config"]),
    ("upstream", &["smtp", "net", "policy", "config"]),
    ("queue", &["smtp", "net", "platform", "policy", "config"]),
    (
        "relay",
        &[
            "smtp", "net", "platform", "policy", "config", "store", "server", "upstream", "queue",
        ],
    ),
    (
        "http",
        &[
            "smtp", "net", "platform", "policy", "config", "store", "server", "upstream", "queue",
            "relay",
        ],
    ),
    ("demo", &["smtp", "policy", "config", "server", "relay"]),
    (
        "cli",
        &[
            "smtp", "net", "platform", "policy", "config", "store", "server", "upstream", "queue",
            "relay", "http", "demo",
        ],
    ),
];

/// Sibling files that still import each other, with who removes the cycle. Keep short.
const KNOWN_SIBLING_CYCLES: &[(&str, &str, &str)] = &[(
    "queue/spool",
    "queue/writer",
    "the writer shares the spool's state; the Spool::open split (issue 9, split-crates) moves it to a file of its own",
)];

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The file's module path below `src`, e.g. `["queue", "deliver", "round"]`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

fn test_only(module: &[String]) -> bool {
    module.iter().any(|p| p == "tests" || p.ends_with("_tests"))
}

/// The code of a file: comment lines dropped, its test module (from a top-level
/// `#[cfg(test)]` on) cut off.
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("#[cfg(test)]") || line.starts_with("#[cfg(all(test") {
            break;
        }
        if line.trim_start().starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Identifiers that follow `prefix` (e.g. `crate::` → `queue`), and those listed in a
/// `use prefix{a, b::c}` group.
fn names_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let n = ident(item.trim());
                if !n.is_empty() {
                    out.insert(n);
                }
            }
        } else {
            let n = ident(rest);
            if !n.is_empty() {
                out.insert(n);
            }
        }
    }
    out
}

struct Source {
    module: Vec<String>,
    code: String,
}

fn sources() -> Vec<Source> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files
        .iter()
        .map(|f| Source {
            module: module_of(f),
            code: code(f),
        })
        .filter(|s| !s.module.is_empty() && !test_only(&s.module))
        .filter(|s| !matches!(s.module[0].as_str(), "lib" | "main"))
        .collect()
}

#[test]
fn every_floor_imports_only_the_floors_below_it() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    for s in sources() {
        let floor = s.module[0].as_str();
        let Some(may) = allowed.get(floor) else {
            wrong.push(format!(
                "src/{floor}: a floor the map does not know; add it to ALLOWED and lib.rs"
            ));
            continue;
        };
        for used in names_after(&s.code, "crate::") {
            if used == floor || may.contains(&used.as_str()) {
                continue;
            }
            wrong.push(format!("{} imports crate::{used}", s.module.join("/")));
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the map:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn nothing_outside_cli_imports_cli() {
    for (floor, may) in ALLOWED {
        assert!(
            *floor == "cli" || !may.contains(&"cli"),
            "{floor} may import cli"
        );
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["tests", "benches", "fuzz/fuzz_targets"] {
        if root.join(dir).is_dir() {
            rust_files(&root.join(dir), &mut files);
        }
    }
    // Built here so this file does not match itself.
    let (path, module) = (
        ["mailvalve", "::cli::"].concat(),
        ["mailvalve", "::cli;"].concat(),
    );
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let found = text.lines().any(|l| {
            !l.trim_start().starts_with("//") && (l.contains(&path) || l.contains(&module))
        });
        assert!(!found, "{} imports mailvalve::cli", f.display());
    }
}

#[test]
fn lib_rs_declares_and_describes_every_floor() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let declared: BTreeSet<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    let mapped: BTreeSet<&str> = ALLOWED.iter().map(|(f, _)| *f).collect();
    assert_eq!(declared, mapped, "lib.rs's modules against ALLOWED");
    for floor in mapped {
        assert!(
            lib.contains(&format!("[`{floor}`]")),
            "lib.rs's map does not describe `{floor}`"
        );
    }
}

#[test]
fn no_two_files_of_a_floor_import_each_other() {
    let sources = sources();
    let modules: BTreeSet<Vec<String>> = sources.iter().map(|s| s.module.clone()).collect();
    // file → the sibling files it imports
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for s in &sources {
        let parent = &s.module[..s.module.len() - 1];
        let sibling = |name: &str| {
            let mut m = parent.to_vec();
            m.push(name.to_string());
            m
        };
        let mut deps = BTreeSet::new();
        // `super::x` from a file that is not a mod.rs names a sibling (or an item of the
        // parent, which is not a file and is ignored).
        let is_mod_rs = modules
            .iter()
            .any(|m| m.len() > s.module.len() && m.starts_with(&s.module));
        if !is_mod_rs {
            for n in names_after(&s.code, "super::") {
                deps.insert(sibling(&n));
            }
        }
        let mut own = String::from("crate::");
        for p in parent {
            own.push_str(p);
            own.push_str("::");
        }
        if !parent.is_empty() {
            for n in names_after(&s.code, &own) {
                deps.insert(sibling(&n));
            }
        }
        deps.retain(|d| modules.contains(d) && *d != s.module);
        edges.insert(s.module.clone(), deps);
    }
    let known: BTreeSet<(String, String)> = KNOWN_SIBLING_CYCLES
        .iter()
        .map(|(a, b, _)| (a.to_string(), b.to_string()))
        .collect();
    let mut cycles = Vec::new();
    for (a, deps) in &edges {
        for b in deps {
            if a < b && edges.get(b).is_some_and(|d| d.contains(a)) {
                let pair = (a.join("/"), b.join("/"));
                if !known.contains(&pair) {
                    cycles.push(format!("{} <-> {}", pair.0, pair.1));
                }
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "files that import each other (move what they share to a file of its own):\n{}",
        cycles.join("\n")
    );
}
