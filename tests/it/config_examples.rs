//! The configuration examples in the docs parse with the real configuration types.
//!
//! Every ```` ```toml ```` block of docs/operations.md is a whole `tessera serve` configuration
//! and must parse as [`ServerConfig`] (unknown keys are refused). A fragment that is not a
//! whole server configuration is marked by the info string ```` ```toml fragment ````; it must
//! still be valid TOML. The shipped HSM configuration (`hsm-config/*.toml`) and profiles
//! (`profiles/`) are parsed by the unit tests of `hsm::config`, `ca::profile` and
//! `enroll::plan`.
use std::path::Path;
use tessera::server::ServerConfig;

/// The ```` ```toml ```` blocks of `text`: (info string after "toml", first line number, body).
fn toml_blocks(text: &str) -> Vec<(String, usize, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match open.take() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```toml") {
                    open = Some((info.trim().to_string(), n + 2, String::new()));
                }
            }
            Some((info, first, mut body)) => {
                if trimmed.starts_with("```") {
                    blocks.push((info, first, body));
                } else {
                    body.push_str(line);
                    body.push('\n');
                    open = Some((info, first, body));
                }
            }
        }
    }
    assert!(open.is_none(), "a ```toml block is not closed");
    blocks
}

#[test]
fn server_configuration_examples_in_operations_md_parse() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let blocks = toml_blocks(&text);
    assert!(!blocks.is_empty(), "no ```toml block in docs/operations.md");
    let mut whole = 0;
    for (info, line, body) in blocks {
        match info.as_str() {
            "" => {
                if let Err(e) = toml::from_str::<ServerConfig>(&body) {
                    panic!(
                        "docs/operations.md:{line}: the ```toml block is not a valid server \
                         configuration: {e}"
                    );
                }
                whole += 1;
            }
            "fragment" => {
                if let Err(e) = body.parse::<toml::Table>() {
                    panic!("docs/operations.md:{line}: the ```toml fragment is not TOML: {e}");
                }
            }
            other => panic!("docs/operations.md:{line}: unknown info string ```toml {other}"),
        }
    }
    assert!(
        whole > 0,
        "no whole server configuration in docs/operations.md"
    );
}

#[test]
fn a_wrong_key_in_an_example_would_be_caught() {
    let text = "[grpc]\nlisten = \"127.0.0.1:0\"\n[tls]\ncertificate = \"s.pem\"\n\
                private_key = \"s.key\"\nclient_ca = \"ca.pem\"\n[database]\nurl = \"sqlite:t.db\"\n";
    toml::from_str::<ServerConfig>(text).unwrap();
    let typo = text.replace("client_ca", "client_cas");
    assert!(toml::from_str::<ServerConfig>(&typo).is_err());
}
