//! Every refusal reason the code can return is documented, and every documented one exists.
//!
//! The code's side is the `REASONS`/`CODES` lists kept next to the reason enums and the API's
//! own reasons (`tessera::api::status::REASONS`). So that a list cannot fall behind its enum,
//! the sources are scanned too: every reason-shaped string literal where reasons are made
//! (SCREAMING_SNAKE_CASE literals in `src/api`, `src/lifecycle`, `src/enroll`, `src/server`; the
//! kebab-case literals in the bodies of `fn code` in `crates/tessera-attest/src` and the `code: "…"` fields of
//! `src/cli/attest.rs`) must be in a list. The docs' side is the reason columns of the tables
//! in docs/api.md (gRPC `ErrorInfo.reason`) and docs/attestation.md ("Reason codes").
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tessera::attest::{AttestError, DenyReason};
use tessera::enroll::{EnrollError, EnrollmentRefusal};
use tessera::lifecycle::LifecycleError;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The gRPC reasons, as the code lists them.
fn api_reasons_in_code() -> BTreeSet<&'static str> {
    [
        tessera::api::status::REASONS,
        LifecycleError::REASONS,
        EnrollError::REASONS,
        EnrollmentRefusal::REASONS,
        tessera::lifecycle::SelfServiceRefusal::REASONS,
    ]
    .into_iter()
    .flatten()
    .copied()
    .collect()
}

/// The attestation codes, as the code lists them.
fn attestation_codes_in_code() -> BTreeSet<&'static str> {
    [
        AttestError::CODES,
        DenyReason::CODES,
        tessera::cli::attest::CLI_CODES,
    ]
    .into_iter()
    .flatten()
    .copied()
    .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The contents of every `"…"` literal in `text` (no escapes are needed for reason strings).
fn string_literals(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('"') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('"') else { break };
        out.push(&after[..end]);
        rest = &after[end + 1..];
    }
    out
}

fn is_screaming_reason(s: &str) -> bool {
    s.contains('_')
        && s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// In the docs' reason columns `INTERNAL` has no underscore; any upper-case word counts there.
fn is_upper_case_word(s: &str) -> bool {
    !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn is_kebab_code(s: &str) -> bool {
    s.contains('-')
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The body of each `fn NAME(` in `text`, from its first `{` to the matching `}`.
fn function_bodies<'t>(text: &'t str, name: &str) -> Vec<&'t str> {
    let needle = format!("fn {name}(");
    let mut bodies = Vec::new();
    for (at, _) in text.match_indices(&needle) {
        let open = at + text[at..].find('{').unwrap();
        let mut depth = 0usize;
        for (i, c) in text[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        bodies.push(&text[open..=open + i]);
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    bodies
}

/// Environment variables and gRPC code names are SCREAMING_SNAKE_CASE too but are no reasons.
fn is_not_a_reason(s: &str) -> bool {
    s.starts_with("TESSERA_") || s.starts_with("CARGO_") || s == "RUST_LOG"
}

fn api_reasons_in_sources() -> BTreeSet<String> {
    let mut files = Vec::new();
    for dir in ["src/api", "src/lifecycle", "src/enroll", "src/server"] {
        rust_files(&root().join(dir), &mut files);
    }
    let mut found = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for literal in string_literals(&text) {
            if is_screaming_reason(literal) && !is_not_a_reason(literal) {
                found.insert(literal.to_string());
            }
        }
    }
    found
}

fn attestation_codes_in_sources() -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(&root().join("crates/tessera-attest/src"), &mut files);
    let mut found = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for body in function_bodies(&text, "code") {
            for literal in string_literals(body) {
                if is_kebab_code(literal) {
                    found.insert(literal.to_string());
                }
            }
        }
    }
    let cli = std::fs::read_to_string(root().join("src/cli/attest.rs")).unwrap();
    for (at, _) in cli.match_indices("code: \"") {
        let literal = string_literals(&cli[at..])[0];
        assert!(
            is_kebab_code(literal),
            "src/cli/attest.rs: code {literal:?}"
        );
        found.insert(literal.to_string());
    }
    found
}

/// The backticked words in the `column` column of every Markdown table in `text` whose
/// header has that column, keeping those `keep` accepts.
fn documented(text: &str, column: &str, keep: fn(&str) -> bool) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut index = None;
    for line in text.lines() {
        let line = line.trim();
        if !line.starts_with('|') {
            index = None;
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        match index {
            None => index = cells.iter().position(|c| *c == column),
            Some(i) => {
                let Some(cell) = cells.get(i) else { continue };
                for (n, word) in cell.split('`').enumerate() {
                    if n % 2 == 1 && keep(word) {
                        found.insert(word.to_string());
                    }
                }
            }
        }
    }
    found
}

fn doc(name: &str) -> String {
    std::fs::read_to_string(root().join("docs").join(name)).unwrap()
}

/// Both ways: `code` and `docs` hold the same reasons; the message names the ones that differ.
fn assert_same(what: &str, code: &BTreeSet<String>, docs: &BTreeSet<String>, doc_name: &str) {
    let undocumented: Vec<_> = code.difference(docs).collect();
    let missing: Vec<_> = docs.difference(code).collect();
    assert!(
        undocumented.is_empty() && missing.is_empty(),
        "{what}: returned by the code but not documented in docs/{doc_name}: {undocumented:?}; \
         documented in docs/{doc_name} but never returned: {missing:?}"
    );
}

fn owned(set: BTreeSet<&'static str>) -> BTreeSet<String> {
    set.into_iter().map(str::to_string).collect()
}

#[test]
fn reason_lists_hold_every_reason_in_the_sources() {
    let listed = owned(api_reasons_in_code());
    let scanned = api_reasons_in_sources();
    let unlisted: Vec<_> = scanned.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "reasons in src/ that no REASONS list holds (add them to the list next to the enum or \
         to tessera::api::status::REASONS): {unlisted:?}"
    );
    let listed = owned(attestation_codes_in_code());
    let scanned = attestation_codes_in_sources();
    let unlisted: Vec<_> = scanned.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "attestation codes in src/ that no CODES list holds: {unlisted:?}"
    );
}

#[test]
fn every_api_reason_is_documented_and_every_documented_one_exists() {
    let docs = documented(&doc("api.md"), "reason", is_upper_case_word);
    assert!(docs.len() > 40, "docs/api.md reason tables not found");
    assert_same(
        "gRPC reasons",
        &owned(api_reasons_in_code()),
        &docs,
        "api.md",
    );
}

#[test]
fn every_attestation_code_is_documented_and_every_documented_one_exists() {
    let docs = documented(&doc("attestation.md"), "code", is_kebab_code);
    assert!(
        docs.len() > 30,
        "docs/attestation.md reason table not found"
    );
    assert_same(
        "attestation codes",
        &owned(attestation_codes_in_code()),
        &docs,
        "attestation.md",
    );
}
