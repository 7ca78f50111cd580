//! Day 2: `pikube backup`, `pikube restore` and the snapshot `up` takes before a version change,
//! on lab hosts (real systemd, sshd, keepalived) with the k3s STAND-IN, whose `etcd-snapshot
//! save` and `server --cluster-reset --cluster-reset-restore-path` follow the real contract.
//! Objects are made and read with the real kubectl.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{real_kubectl, standin_artifacts, standin_release, stdout, text, Lab};

fn up_ok(lab: &Lab) -> String {
    let out = lab.pikube(&["up", "-f", lab.cluster_file().to_str().unwrap(), "--ready-timeout", "90"]);
    assert!(out.status.success(), "pikube up failed:\n{}", text(&out));
    format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr))
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn kubectl_ok(lab: &Lab, kubectl: &Path, args: &[&str]) -> String {
    lab.kubectl_ok(kubectl, args)
}

/// uid and resourceVersion of a ConfigMap, as the real kubectl reads them.
fn identity(lab: &Lab, kubectl: &Path, name: &str) -> String {
    kubectl_ok(lab, kubectl, &["get", "configmap", name, "-o", "jsonpath={.metadata.uid} {.metadata.resourceVersion}"])
}

/// The API answers that ConfigMap `name` does not exist (not merely that kubectl failed).
fn assert_gone(lab: &Lab, kubectl: &Path, name: &str) {
    let out = lab.kubectl(kubectl, &["get", "configmap", name]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains(&format!("configmaps \"{name}\" not found")),
        "configmap {name} must be gone:\n{}",
        text(&out)
    );
}

fn backups(lab: &Lab) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(lab.dir().join("backups/bk-main"))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// The main PID of each server's k3s: unchanged means the unit was not touched.
fn server_pids(lab: &Lab, servers: &[&str]) -> Vec<String> {
    servers.iter().map(|n| lab.sh(n, "systemctl show -p MainPID --value k3s")).collect()
}

fn pikube_ok(lab: &Lab, args: &[&str]) -> String {
    let out = lab.pikube(args);
    assert!(out.status.success(), "pikube {args:?}:\n{}", text(&out));
    stdout(&out)
}

fn refused(out: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{}", text(out));
    assert!(err.contains(what), "{what:?} missing:\n{}", text(out));
    err
}

#[test]
fn backup_restore_keeps_object_identities_and_an_upgrade_takes_a_snapshot() {
    require_lab!();
    let Some(kubectl) = real_kubectl() else { return };
    let artifacts = standin_artifacts();
    let lab = Lab::up(
        "bk-main",
        45,
        &["--nodes", "4", "--servers", "3", "--vip", "--k3s-artifacts", artifacts.to_str().unwrap()],
    );
    let file = lab.cluster_file();
    let f = file.to_str().unwrap();
    up_ok(&lab);

    for cm in ["settings", "feature-flags"] {
        kubectl_ok(&lab, &kubectl, &["create", "configmap", cm, "--from-literal=owner=bk"]);
    }
    let ids = ["settings", "feature-flags"].map(|cm| identity(&lab, &kubectl, cm));

    // Backup: files, modes, checksums, the token a restore needs; the server's copy is gone.
    let report = pikube_ok(&lab, &["backup", "-f", f]);
    println!("--- pikube backup\n{report}");
    let [dir] = backups(&lab).try_into().unwrap_or_else(|d| panic!("one backup expected: {d:?}\n{report}"));
    assert!(report.contains(&format!("backup of bk-main written to {}", dir.display())), "{report}");
    assert!(report.contains("from server node1"), "{report}");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("backup.json")).unwrap()).unwrap();
    let snapshot = dir.join(manifest["snapshot"].as_str().unwrap());
    assert!(manifest["snapshot"].as_str().unwrap().starts_with("pikube-node1-"), "{manifest}");
    assert_eq!(manifest["reason"], "manual");
    assert_eq!(mode_of(&dir), 0o700);
    assert_eq!(mode_of(&snapshot), 0o600);
    assert_eq!(mode_of(&dir.join("token")), 0o600);
    let check = std::process::Command::new("sha256sum").arg("-c").arg("SHA256SUMS").current_dir(&dir).output().unwrap();
    assert!(check.status.success(), "{}", text(&check));
    let token = std::fs::read_to_string(dir.join("token")).unwrap();
    assert_eq!(token.trim(), lab.sh("node1", "cat /var/lib/rancher/k3s/server/token"));
    assert!(!report.contains(token.trim()), "the token must never be printed");
    assert_eq!(lab.sh("node1", "ls -A /var/lib/rancher/k3s/server/db/snapshots"), "");

    kubectl_ok(&lab, &kubectl, &["delete", "configmap", "settings", "feature-flags"]);
    let pids = server_pids(&lab, &["node1", "node2", "node3"]);

    // Without --yes: refused, saying what it would do; nothing changes.
    let out = lab.pikube(&["restore", dir.to_str().unwrap(), "-f", f]);
    let err = refused(&out, "refusing to restore cluster bk-main");
    for step in ["stop k3s on node1, node2, node3", "--cluster-reset", "add --yes"] {
        assert!(err.contains(step), "{step:?} missing:\n{err}");
    }
    assert_eq!(server_pids(&lab, &["node1", "node2", "node3"]), pids, "a refused restore touched a server");

    // A corrupt backup is refused by its checksum before any server is touched.
    let corrupt = lab.dir().join("corrupt-backup");
    std::fs::create_dir_all(&corrupt).unwrap();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        std::fs::copy(e.path(), corrupt.join(e.file_name())).unwrap();
    }
    let bad = corrupt.join(snapshot.file_name().unwrap());
    let mut bytes = std::fs::read(&bad).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&bad, bytes).unwrap();
    let out = lab.pikube(&["restore", corrupt.to_str().unwrap(), "-f", f, "--yes"]);
    refused(&out, "checksum mismatch");
    assert_eq!(server_pids(&lab, &["node1", "node2", "node3"]), pids, "a corrupt backup reached a server");
    assert_gone(&lab, &kubectl, "settings");

    // Restore: the ConfigMaps are back with the same UIDs and resourceVersions.
    let report = pikube_ok(&lab, &["restore", dir.to_str().unwrap(), "-f", f, "--yes", "--ready-timeout", "90"]);
    println!("--- pikube restore\n{report}");
    for line in [
        "1/6: copy snapshot pikube-node1-",
        "2/6: stop k3s on node1, node2, node3",
        "3/6: node1: k3s server --cluster-reset --cluster-reset-restore-path=",
        "4/6: remove the datastore (/var/lib/rancher/k3s/server/db) of node2, node3",
        "5/6: start k3s on node1, then on node2, node3 so they rejoin",
        "6/6: wait until every node is Ready",
        "Restore: bk-main is back at",
    ] {
        assert!(report.contains(line), "{line:?} missing:\n{report}");
    }
    assert_eq!(["settings", "feature-flags"].map(|cm| identity(&lab, &kubectl, cm)), ids);
    let nodes = kubectl_ok(&lab, &kubectl, &["get", "nodes", "--no-headers"]);
    assert_eq!(nodes.lines().filter(|l| l.split_whitespace().nth(1) == Some("Ready")).count(), 4, "{nodes}");
    assert!(lab.ssh("node1", "ls -d /var/lib/rancher/k3s/server/db/etcd-old-*").0, "k3s moves the old datastore aside");

    // Disaster recovery: the cluster is torn down and made anew (a new token and CA); the
    // restore brings the old one back, its token in pikube's state and on every node.
    let out = lab.pikube(&["down", "-f", f, "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    up_ok(&lab);
    assert_ne!(lab.sh("node1", "cat /var/lib/rancher/k3s/server/token"), token.trim(), "a new cluster, a new token");
    assert_gone(&lab, &kubectl, "settings");
    let report = pikube_ok(&lab, &["restore", dir.to_str().unwrap(), "-f", f, "--yes", "--ready-timeout", "90"]);
    println!("--- pikube restore into a cluster made anew\n{report}");
    assert!(report.contains("rewrote "), "the local kubeconfig holds the new cluster's CA:\n{report}");
    assert_eq!(["settings", "feature-flags"].map(|cm| identity(&lab, &kubectl, cm)), ids);
    for n in ["node1", "node2", "node3"] {
        assert_eq!(lab.sh(n, "cat /var/lib/rancher/k3s/server/token"), token.trim(), "{n}");
    }
    let secret = token.trim().rsplit_once("::server:").unwrap().1;
    assert_eq!(std::fs::read_to_string(lab.dir().join(".pikube/bk-main/token")).unwrap().trim(), secret);
    let nodes = kubectl_ok(&lab, &kubectl, &["get", "nodes", "--no-headers"]);
    assert_eq!(nodes.lines().filter(|l| l.split_whitespace().nth(1) == Some("Ready")).count(), 4, "{nodes}");
    assert!(report.contains("the cluster token is the backup's again"), "{report}");
    // Nothing else derives from the token (keepalived's VRRP settings do not): up has nothing to do.
    let report = up_ok(&lab);
    assert!(report.contains("Up: no changes"), "the restored cluster matches the cluster file:\n{report}");

    // --keep: the oldest backups beyond N go, and the report names them.
    pikube_ok(&lab, &["backup", "-f", f]);
    let report = pikube_ok(&lab, &["backup", "-f", f, "--keep", "2"]);
    assert!(report.contains(&format!("deleted old backup {} (--keep 2)", dir.display())), "{report}");
    assert_eq!(backups(&lab).len(), 2, "{report}");
    assert!(!dir.exists());

    // A version change: plan says a snapshot will be taken; up takes it before any restart.
    let v2 = standin_release("v1.31.5+k3s1");
    let text_before = std::fs::read_to_string(&file).unwrap();
    let upgraded = text_before
        .replace("version: v1.31.4+k3s1", "version: v1.31.5+k3s1")
        .replace(artifacts.to_str().unwrap(), v2.to_str().unwrap());
    std::fs::write(&file, upgraded).unwrap();
    let plan = pikube_ok(&lab, &["plan", "-f", f]);
    assert!(plan.contains("[artifacts] etcd snapshot before the upgrade to v1.31.5+k3s1"), "{plan}");
    // A snapshot that cannot be taken stops the upgrade before any node gets the new binary.
    let snapshots = "/var/lib/rancher/k3s/server/db/snapshots";
    lab.sh("node1", &format!("rm -rf {snapshots} && touch {snapshots}"));
    let out = lab.pikube(&["up", "-f", f, "--ready-timeout", "90"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = stdout(&out);
    for n in ["node1", "node2", "node3", "node4"] {
        assert!(report.contains(&format!("{n} (10.77.45.1")), "{report}");
    }
    assert_eq!(report.matches("error: not upgraded: the pre-upgrade snapshot failed: node1: ").count(), 4, "{report}");
    assert!(!report.contains("/usr/local/bin/k3s"), "no binary may be pushed:\n{report}");
    assert!(lab.sh("node4", "k3s --version").contains("v1.31.4+k3s1"));
    lab.sh("node1", &format!("rm {snapshots}"));

    let log = up_ok(&lab);
    let shown: Vec<&str> = log.lines().filter(|l| l.contains("snapshot") || l.starts_with("Up: ")).collect();
    println!("--- pikube up (version edited)\n{}", shown.join("\n"));
    let pre: Vec<PathBuf> =
        backups(&lab).into_iter().filter(|d| d.to_str().unwrap().ends_with("-pre-upgrade")).collect();
    let [pre] = pre.try_into().unwrap_or_else(|d| panic!("one pre-upgrade backup expected: {d:?}\n{log}"));
    assert!(log.contains(&format!("pre-upgrade snapshot: {}", pre.display())), "{log}");
    let pos = |s: &str| log.find(s).unwrap_or_else(|| panic!("{s:?} missing from:\n{log}"));
    assert!(pos("pre-upgrade snapshot:") < pos("node1: restart k3s"), "{log}");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(pre.join("backup.json")).unwrap()).unwrap();
    assert_eq!(manifest["reason"], "pre-upgrade");
    assert_eq!(manifest["version"], "v1.31.4+k3s1");

    // Every server must answer: with node3 cut off, a restore refuses before touching any.
    lab.lab("cut", "node3");
    let pids = server_pids(&lab, &["node1", "node2"]);
    let out = lab.pikube(&["restore", pre.to_str().unwrap(), "-f", f, "--yes"]);
    refused(&out, "server node3 does not answer");
    assert_eq!(server_pids(&lab, &["node1", "node2"]), pids, "a restore that could not reach every server touched one");
    lab.lab("heal", "node3");
}

#[test]
fn a_single_server_on_sqlite_is_refused_with_the_reason() {
    require_lab!();
    let artifacts = standin_artifacts();
    let lab = Lab::up("bk-sqlite", 46, &["--nodes", "1", "--k3s-artifacts", artifacts.to_str().unwrap()]);
    let f = lab.cluster_file();
    up_ok(&lab);
    let out = lab.pikube(&["backup", "-f", f.to_str().unwrap()]);
    let err = refused(&out, "node1 runs k3s on sqlite");
    assert!(err.contains("etcd snapshots need etcd"), "{err}");
    assert!(!lab.dir().join("backups").exists(), "a failed backup leaves nothing behind");
}
