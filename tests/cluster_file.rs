//! Cluster-file errors point at file:line:column with a fix hint: snapshot tests.
//!
//! Each `tests/cluster_files/NAME.yaml` has its expected error text in `NAME.err`.
//! `PIKUBE_UPDATE_SNAPSHOTS=1 cargo test --test cluster_file` rewrites the `.err` files; review
//! the diff before committing.

use std::path::Path;
use std::process::Command;

use pikube::config::{Cluster, EXAMPLE};

mod snapshot;

fn dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster_files"))
}

#[test]
fn every_bad_file_matches_its_snapshot() {
    let mut checked = 0;
    let mut mismatches = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir()).expect("snapshot dir").flatten().map(|e| e.path()).collect();
    entries.sort();
    for yaml in entries.iter().filter(|p| p.extension().is_some_and(|e| e == "yaml")) {
        let rel = Path::new("tests/cluster_files").join(yaml.file_name().expect("file name"));
        let text = std::fs::read_to_string(yaml).expect("read yaml");
        let got = match Cluster::parse(&rel, &text) {
            Ok(_) => "OK\n".to_string(),
            Err(e) => e.plain() + "\n",
        };
        if let Err(diff) = snapshot::compare(&yaml.with_extension("err"), &got) {
            mismatches.push(diff);
        }
        checked += 1;
    }
    assert!(checked >= 10, "expected the bad-file corpus, found {checked} files");
    assert!(mismatches.is_empty(), "snapshot mismatches:\n{}", mismatches.join("\n"));
}

/// Every `.err` has its `.yaml` and every `.yaml` its `.err`: a snapshot without its input
/// pins nothing, an input without its snapshot is compared with nothing.
#[test]
fn every_snapshot_has_its_cluster_file_and_back() {
    let names: Vec<String> = std::fs::read_dir(dir())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut unpaired: Vec<&String> = names
        .iter()
        .filter(|n| match n.rsplit_once('.') {
            Some((stem, "yaml")) => !names.contains(&format!("{stem}.err")),
            Some((stem, "err")) => !names.contains(&format!("{stem}.yaml")),
            _ => true,
        })
        .collect();
    unpaired.sort();
    assert!(unpaired.is_empty(), "tests/cluster_files: files without their pair (NAME.yaml + NAME.err): {unpaired:?}");
}

/// Snapshots are rewritten for `PIKUBE_UPDATE_SNAPSHOTS=1` only; any other value is refused, so
/// a `0` or an empty value never turns every comparison off.
#[test]
fn only_update_snapshots_1_blesses() {
    use std::ffi::OsStr;
    assert_eq!(snapshot::bless_mode(None), Ok(false));
    assert_eq!(snapshot::bless_mode(Some(OsStr::new("1"))), Ok(true));
    for value in ["0", "", "yes", "true", " 1"] {
        let refused = snapshot::bless_mode(Some(OsStr::new(value))).expect_err(value);
        assert!(refused.contains("set it to 1 to rewrite the snapshots, or unset it"), "{refused}");
    }
}

#[test]
fn every_error_names_file_line_column_and_a_hint() {
    for yaml in std::fs::read_dir(dir()).expect("dir").flatten().map(|e| e.path()) {
        if yaml.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&yaml).expect("read");
        let errs = Cluster::parse(&yaml, &text).expect_err("every corpus file is invalid");
        for e in &errs.errors {
            assert!(e.line >= 1 && e.column >= 1, "{}: no position in {e}", yaml.display());
            assert!(e.to_string().starts_with(&format!("{}:{}:{}: ", yaml.display(), e.line, e.column)));
            assert!(e.hint.is_some(), "{}: error without a fix hint: {e}", yaml.display());
        }
    }
}

#[test]
fn the_readme_error_example_is_the_snapshot() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let snapshot = std::fs::read_to_string(dir().join("duplicates.err")).expect("snapshot");
    assert!(readme.contains(&format!("```\n{snapshot}```\n")), "README must show duplicates.err as it is:\n{snapshot}");
}

#[test]
fn the_init_example_is_valid() {
    let c = Cluster::parse(Path::new("example.yaml"), EXAMPLE).expect("example parses");
    assert_eq!(c.name(), "pi-cluster");
    assert_eq!(c.hosts().count(), 3);
}

#[test]
fn init_then_schema_from_the_binary() {
    let tmp = std::env::temp_dir().join(format!("pikube-init-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let file = tmp.join("cluster.yaml");
    let bin = env!("CARGO_BIN_EXE_pikube");
    let ok = Command::new(bin).args(["init"]).arg(&file).status().expect("run init");
    assert!(ok.success());
    let again = Command::new(bin).args(["init"]).arg(&file).output().expect("run init twice");
    assert_eq!(again.status.code(), Some(2), "refuses to overwrite");
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let schema = Command::new(bin).arg("schema").output().expect("run schema");
    let v: serde_json::Value = serde_json::from_slice(&schema.stdout).expect("schema is JSON");
    let props = v["properties"].as_object().expect("properties");
    for key in ["name", "ssh", "hosts", "kubernetes", "packages", "proxy", "registry_mirrors"] {
        assert!(props.contains_key(key), "schema lacks {key}");
    }

    // A bad file through the CLI: exit 2 and the located message on stderr.
    let bad = dir().join("duplicates.yaml");
    let out = Command::new(bin).args(["plan", "-f"]).arg(&bad).output().expect("run plan");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("duplicates.yaml:9:11") && err.contains("duplicate host name"), "{err}");
    std::fs::remove_dir_all(&tmp).ok();
}
