//! Data flows down: every module of `src/` sits in a layer (docs/ARCHITECTURE.md, "Layers"), and
//! a module may name (`crate::<module>`) only modules of lower layers. This test reads the
//! sources and fails naming the file and the import that climbs, or a module missing from the
//! table (a new module must be placed in a layer on purpose).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bottom to top. A module may use the modules of the layers before its own, never its own
/// layer's siblings nor anything after it.
const LAYERS: &[&[&str]] = &[
    // `attest` is the package crates/tessera-attest (re-exported as `crate::attest`): cargo
    // already keeps it from naming anything of ours; it stays here so the layers read whole.
    &["hsm", "attest", "piv"],
    &["ca", "store", "protocol", "metrics"],
    &["audit"],
    &["lifecycle"],
    &["enroll"],
    &["api", "web", "station", "notify"],
    &["server", "renew"],
    &["bench"],
    &["cli"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`src/ca/issue.rs` → `ca`), or `None` for
/// the crate roots.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let first = file.strip_prefix(src).unwrap().components().next()?;
    let name = first.as_os_str().to_str()?.trim_end_matches(".rs");
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// Every module a file names through `crate::`: `crate::ca::…`, and each name inside
/// `crate::{ca, store::Store}`.
fn imports(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push(name);
            }
        }
    }
    found
}

#[test]
fn no_module_imports_one_above_it_or_beside_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut climbs = Vec::new();
    let mut unplaced = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let Some(own) = layer_of(&module) else {
            unplaced.insert(module, file.clone());
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for used in imports(&text) {
            if used == module {
                continue;
            }
            match layer_of(&used) {
                Some(theirs) if theirs < own => {}
                Some(_) => climbs.push(format!(
                    "{}: `{module}` uses `crate::{used}`, which is not below it",
                    file.strip_prefix(&src).unwrap().display()
                )),
                None => {
                    unplaced.insert(used, file.clone());
                }
            }
        }
    }
    assert!(
        unplaced.is_empty(),
        "modules in no layer of tests/it/layers.rs (place each in LAYERS and in \
         docs/ARCHITECTURE.md): {unplaced:?}"
    );
    assert!(
        climbs.is_empty(),
        "imports that climb:\n{}",
        climbs.join("\n")
    );
}

#[test]
fn the_import_reader_sees_paths_and_groups() {
    let text =
        "use crate::ca::IssuingCa;\nuse crate::{store::Store, audit};\nlet x = crate::hsm::open();";
    assert_eq!(imports(text), ["ca", "store", "audit", "hsm"]);
}

#[test]
fn a_climbing_import_would_be_named() {
    // The table itself: `store` sits below `lifecycle`, so the reverse edge climbs.
    assert!(layer_of("store").unwrap() < layer_of("lifecycle").unwrap());
    assert!(layer_of("api").unwrap() == layer_of("web").unwrap());
}
