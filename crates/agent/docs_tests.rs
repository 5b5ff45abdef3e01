//! The docs name what the code reads: every `REFUGIO_*` environment
//! variable the production crates read is in docs/configuration.md's
//! table, and nothing else is; scripts/check-deploy allows each on a
//! service or in an image. (Exit codes: `exit.rs`; metrics: `metrics`.)

use std::collections::BTreeSet;
use std::path::Path;

/// `REFUGIO_*` string literals in the `.rs` files under `dir`.
fn literals(dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            literals(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("source");
            for piece in text.split("\"REFUGIO_").skip(1) {
                let name: String = piece
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || *c == '_' || c.is_ascii_digit())
                    .collect();
                if !name.is_empty() && piece[name.len()..].starts_with('"') {
                    out.insert(format!("REFUGIO_{name}"));
                }
            }
        }
    }
}

#[test]
fn every_environment_variable_is_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut read = BTreeSet::new();
    // The production crates; testkit and the tests have their own.
    for dir in ["agent", "core", "store", "dump", "print", "schedule"] {
        literals(&root.join("crates").join(dir), &mut read);
    }
    assert!(read.contains("REFUGIO_CONFIG"), "{read:?}");
    let docs = include_str!("../../docs/configuration.md");
    let table = docs
        .split_once("## Environment variables")
        .and_then(|(_, rest)| rest.split_once("\n## "))
        .map(|(table, _)| table)
        .expect("docs/configuration.md has an Environment variables section");
    let documented: BTreeSet<String> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|v| v.starts_with("REFUGIO_"))
        .map(str::to_string)
        .collect();
    assert_eq!(documented, read, "docs/configuration.md against the code");
    let script = include_str!("../../scripts/check-deploy");
    let allowed: BTreeSet<&str> = script
        .split_once("ENV_ALLOWED=\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(block, _)| block.split_whitespace().collect())
        .expect("scripts/check-deploy has ENV_ALLOWED");
    for v in &read {
        assert!(
            allowed.contains(v.as_str()),
            "scripts/check-deploy's ENV_ALLOWED lacks {v}"
        );
    }
}

/// The configs shipped beside the code load as refugio reads them.
#[test]
fn the_shipped_configs_load() {
    for (path, text) in [
        (
            "docker/refugio.toml",
            include_str!("../../docker/refugio.toml"),
        ),
        (
            "systemd/refugio.toml.example",
            include_str!("../../systemd/refugio.toml.example"),
        ),
        (
            "refugio.example.toml",
            include_str!("../../refugio.example.toml"),
        ),
    ] {
        let cfg = crate::config::Config::parse(text, None)
            .unwrap_or_else(|e| panic!("{path}: {}", crate::output::error_chain(&e)));
        assert!(!cfg.jobs.is_empty(), "{path}");
    }
}
