//! Manifests of every format minor this build knows, as earlier builds
//! wrote them (`tests/fixtures/manifest-1.N.json`), read back whole by
//! this build's reader: no field of an earlier minor may be dropped.

use refugio_store::manifest::{Manifest, FORMAT, FORMAT_MAJOR, FORMAT_MINOR};
use rstest::rstest;
use serde_json::Value;

fn fixture(minor: u32) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/manifest-{FORMAT_MAJOR}.{minor}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Read, written back, compared as JSON: every field survives with its
/// value (the format too: a manifest keeps the version it was written in).
#[rstest]
#[case::v1_0(0)]
#[case::v1_1(1)]
#[case::v1_2(2)]
#[case::v1_3(3)]
#[case::v1_4(4)]
#[case::v1_5(5)]
#[case::v1_6(6)]
#[case::v1_7(7)]
#[case::v1_8(8)]
fn every_field_of_a_known_minor_survives(#[case] minor: u32) {
    let bytes = fixture(minor);
    let key = format!("trips/x/manifest-1.{minor}.json");
    let manifest = Manifest::parse(&key, &bytes).expect("parse");
    assert_eq!(manifest.format, format!("1.{minor}"));
    let written: Value = serde_json::from_slice(&bytes).expect("fixture JSON");
    let read_back: Value = serde_json::from_slice(&manifest.to_json()).expect("JSON");
    let differ: Vec<&String> = written
        .as_object()
        .expect("an object")
        .iter()
        .filter(|(k, v)| read_back.get(k.as_str()) != Some(v))
        .map(|(k, _)| k)
        .collect();
    assert!(differ.is_empty(), "1.{minor}: lost or changed: {differ:?}");
    assert_eq!(read_back, written);
}

/// The fields each minor added are in its fixture and read into the
/// struct, so the comparison above covers them.
#[test]
fn fixtures_hold_the_fields_their_minor_added() {
    let v1_0 = Manifest::parse("k", &fixture(0)).expect("1.0");
    assert_eq!(v1_0.schema_fingerprint, None);
    assert_eq!(v1_0.object_lock, None);
    let v1_1 = Manifest::parse("k", &fixture(1)).expect("1.1");
    assert!(
        v1_1.schema_fingerprint.is_some(),
        "1.1 added schema_fingerprint"
    );
    assert_eq!(v1_1.object_lock, None);
    let v1_2 = Manifest::parse("k", &fixture(2)).expect("1.2");
    assert!(v1_2.schema_fingerprint.is_some());
    assert!(v1_2.object_lock.is_some(), "1.2 added object_lock");
    assert_eq!(v1_2.data_at, None);
    assert_eq!(v1_2.recovery_point(), v1_2.snapshot_at);
    let v1_3 = Manifest::parse("k", &fixture(3)).expect("1.3");
    assert!(v1_3.data_at.is_some(), "1.3 added data_at");
    assert_eq!(v1_3.recovery_point(), v1_3.data_at.expect("data_at"));
    assert_eq!(v1_3.encryption, None);
    let v1_4 = Manifest::parse("k", &fixture(4)).expect("1.4");
    let e = v1_4.encryption.as_ref().expect("1.4 added encryption");
    assert_eq!(e.scheme, "age");
    assert!(e.recipients[0].starts_with("age1"));
    assert!(v1_4
        .artifacts
        .iter()
        .all(|a| a.encryption == "age" && a.name.ends_with(".age")));
    assert!(v1_4.databases.is_empty() && !v1_4.is_server());
    let v1_5 = Manifest::parse("k", &fixture(5)).expect("1.5");
    assert!(v1_5.is_server(), "1.5 added databases");
    let units = v1_5.units().expect("every database's artifact is listed");
    assert_eq!(
        units.iter().map(|u| u.database).collect::<Vec<_>>(),
        vec!["app", "café trips ñ"]
    );
    assert_eq!(units[1].artifact.name, "db-002-caf__trips__.dump.zst");
    assert!(
        units[0]
            .tables
            .iter()
            .any(|t| t.data_excluded && t.rows == 0),
        "1.5 added data_excluded"
    );
    let v1_6 = Manifest::parse("k", &fixture(6)).expect("1.6");
    let dump = v1_6.units().expect("one database")[0].artifact;
    assert_eq!(
        dump.archive_compression.as_deref(),
        Some("zstd:3"),
        "1.6 added archive_compression"
    );
    assert_eq!(
        (dump.name.as_str(), dump.compression.as_str()),
        ("database.dump", "none")
    );
    assert!(v1_5
        .artifacts
        .iter()
        .all(|a| a.archive_compression.is_none()));
    assert!(!v1_6.is_physical());
    let v1_7 = Manifest::parse("k", &fixture(7)).expect("1.7");
    let p = v1_7.physical.as_ref().expect("1.7 added physical");
    assert_eq!((p.timeline, p.wal_segment_size), (1, 16 * 1024 * 1024));
    assert!(p
        .backup_label
        .contains(&format!("START WAL LOCATION: {}", p.start_lsn)));
    assert_eq!(v1_7.artifact("base").expect("base").format, "tar");
    assert!(v1_7.artifact("backup_manifest").is_some());
    let v1_8 = Manifest::parse("k", &fixture(8)).expect("1.8");
    for unit in v1_8.units().expect("every database's artifact is listed") {
        let v2 = unit
            .schema_fingerprint_v2
            .expect("1.8 added schema_fingerprint_v2");
        assert!(v2.starts_with("v2:"), "{v2}");
        assert!(
            unit.schema_fingerprint.is_some(),
            "the first algorithm's too"
        );
    }
}

/// A build that writes a new minor must add its fixture (and a case above).
#[test]
fn there_is_a_fixture_for_every_minor_up_to_the_written_one() {
    assert_eq!(FORMAT, format!("{FORMAT_MAJOR}.{FORMAT_MINOR}"));
    for minor in 0..=FORMAT_MINOR {
        let bytes = fixture(minor);
        let v: Value = serde_json::from_slice(&bytes).expect("JSON");
        assert_eq!(v["format"], format!("{FORMAT_MAJOR}.{minor}"));
    }
}
