//! Day 2 for `distribution: kubeadm` on real upstream Kubernetes (no stand-in): `pikube backup`
//! (etcdctl in a server's etcd pod, the shared PKI with it), `pikube restore` (etcd's
//! multi-member restore with etcdutl on every server) and the etcd membership `status` reads
//! on each server, on 3 servers behind HAProxy. Objects are made and read with the real kubectl.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{lab_kubernetes, stdout, text, wait_for, Lab};

const VERSION: &str = "v1.34.4";
const SERVERS: [&str; 3] = ["node1", "node2", "node3"];

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn kubectl_ok(lab: &Lab, dir: &Path, args: &[&str]) -> String {
    lab.kubectl_ok(&dir.join(VERSION).join("bin/linux/amd64/kubectl"), args)
}

fn pikube_ok(lab: &Lab, args: &[&str]) -> (String, String) {
    let out = lab.pikube(args);
    assert!(out.status.success(), "pikube {args:?}:\n{}", text(&out));
    (stdout(&out), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn refused(out: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{}", text(out));
    assert!(err.contains(what), "{what:?} missing:\n{}", text(out));
    err
}

/// uid and resourceVersion of a ConfigMap.
fn identity(lab: &Lab, dir: &Path, name: &str) -> String {
    kubectl_ok(lab, dir, &["get", "configmap", name, "-o", "jsonpath={.metadata.uid} {.metadata.resourceVersion}"])
}

fn backups(lab: &Lab) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(lab.dir().join("backups/kadm-bk"))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// When each server's etcd process started: unchanged means no restore touched it.
fn etcd_starts(lab: &Lab) -> Vec<String> {
    SERVERS.iter().map(|n| lab.sh(n, "ps -o lstart= -p $(pgrep -x etcd)")).collect()
}

/// `etcdctl ARGS` in node1's etcd pod, as an operator would run it.
fn etcdctl(lab: &Lab, args: &str) -> String {
    lab.sh(
        "node1",
        &format!(
            "kubectl --kubeconfig /etc/kubernetes/admin.conf -n kube-system exec etcd-node1 -c etcd -- etcdctl \
             --endpoints=https://127.0.0.1:2379 --cacert=/etc/kubernetes/pki/etcd/ca.crt \
             --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt --key=/etc/kubernetes/pki/etcd/healthcheck-client.key {args}"
        ),
    )
}

/// `status --json`: exit code and document.
fn status_json(lab: &Lab) -> (Option<i32>, serde_json::Value) {
    let out = lab.pikube(&["status", "-f", lab.cluster_file().to_str().unwrap(), "--json"]);
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status --json: {e}\n{}", text(&out)));
    (out.status.code(), doc)
}

fn host<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    doc["hosts"].as_array().unwrap().iter().find(|h| h["name"] == name).unwrap()
}

#[test]
fn kubeadm_backup_restore_and_etcd_in_status() {
    require_lab!();
    let dir = lab_kubernetes(VERSION);
    let lab = Lab::up(
        "kadm-bk",
        67,
        &["--nodes", "4", "--servers", "3", "--loadbalancers", "1", "--kubeadm", dir.to_str().unwrap()],
    );
    let file = lab.cluster_file();
    let f = file.to_str().unwrap();
    pikube_ok(&lab, &["up", "-f", f, "--ready-timeout", "600"]);

    // status: every server lists the 3 etcd members, itself among them.
    let (code, doc) = status_json(&lab);
    for n in SERVERS {
        let members = host(&doc, n)["health"]["etcd_members"].as_array().cloned().unwrap_or_default();
        let names: Vec<&str> = members.iter().filter_map(|m| m["name"].as_str()).collect();
        assert_eq!(names.len(), 3, "{n}: {doc:#}");
        assert!(names.contains(&n), "{n} is a member: {doc:#}");
        let reasons = host(&doc, n)["reasons"].to_string();
        assert!(!reasons.contains("etcd"), "{n}: {reasons}");
    }
    // Exit 0 when no host has a reason; the lab shares this machine's disk, whose free space
    // is what it is (then `/ nearly full` is the reason, and the exit 1).
    let reasons: Vec<String> = doc["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|h| h["reasons"].as_array().unwrap().clone())
        .map(|r| r.to_string())
        .collect();
    assert_eq!(code == Some(0), reasons.is_empty(), "{doc:#}");
    if !reasons.is_empty() {
        eprintln!("note: status degraded by this machine, not the cluster: {reasons:?}");
        assert!(reasons.iter().all(|r| r.contains("/ nearly full")), "{reasons:?}");
    }

    println!("--- pikube status\n{}", stdout(&lab.pikube(&["status", "-f", f])));

    for cm in ["settings", "feature-flags"] {
        kubectl_ok(&lab, &dir, &["create", "configmap", cm, "--from-literal=owner=kadm-bk"]);
    }
    let ids = ["settings", "feature-flags"].map(|cm| identity(&lab, &dir, cm));

    // Backup: the snapshot and the PKI, 0600 in a 0700 directory; no key in the output.
    let (report, log) = pikube_ok(&lab, &["backup", "-f", f]);
    println!("--- pikube backup\n{report}");
    let [backup] = backups(&lab).try_into().unwrap_or_else(|d| panic!("one backup expected: {d:?}\n{report}"));
    assert!(report.contains(&format!("backup of kadm-bk written to {}", backup.display())), "{report}");
    assert!(report.contains("from server node1"), "{report}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backup.join("backup.json")).unwrap()).unwrap();
    assert_eq!((&manifest["distribution"], &manifest["version"]), (&"kubeadm".into(), &VERSION.into()));
    let snapshot = manifest["snapshot"].as_str().unwrap();
    assert!(snapshot.starts_with("pikube-node1-"), "{manifest}");
    assert_eq!((mode_of(&backup), mode_of(&backup.join(snapshot))), (0o700, 0o600));
    for key in ["ca.key", "sa.key", "front-proxy-ca.key", "etcd/ca.key", "ca.crt", "sa.pub"] {
        let local = std::fs::read_to_string(backup.join("pki").join(key)).unwrap();
        assert_eq!(mode_of(&backup.join("pki").join(key)), 0o600, "{key}");
        assert_eq!(local.trim(), lab.sh("node1", &format!("cat /etc/kubernetes/pki/{key}")), "{key}");
        if key.ends_with(".key") {
            let body: String = local.lines().filter(|l| !l.starts_with("-----")).collect();
            assert!(!report.contains(&body[..40]) && !log.contains(&body[..40]), "{key} was printed");
        }
    }
    let check =
        std::process::Command::new("sha256sum").arg("-c").arg("SHA256SUMS").current_dir(&backup).output().unwrap();
    assert!(check.status.success(), "{}", text(&check));
    assert_eq!(stdout(&check).lines().count(), 9, "the snapshot and 8 PKI files: {}", stdout(&check));
    assert_eq!(lab.sh("node1", "ls /var/lib/etcd"), "member", "the server's copy is removed");

    kubectl_ok(&lab, &dir, &["delete", "configmap", "settings", "feature-flags"]);
    let starts = etcd_starts(&lab);

    // Without --yes: refused, saying what it would do; no etcd restarted.
    let b = backup.to_str().unwrap();
    let err = refused(&lab.pikube(&["restore", b, "-f", f]), "refusing to restore cluster kadm-bk");
    for step in ["etcdutl snapshot restore on each of node1, node2, node3", "add --yes"] {
        assert!(err.contains(step), "{step:?} missing:\n{err}");
    }
    // A corrupt snapshot, or a backup of another CA, is refused before any server is touched.
    let corrupt = lab.dir().join("corrupt-backup");
    let copy = |to: &Path| {
        let out = std::process::Command::new("cp").arg("-a").arg(&backup).arg(to).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    };
    copy(&corrupt);
    let mut bytes = std::fs::read(corrupt.join(snapshot)).unwrap();
    bytes[100] ^= 1;
    std::fs::write(corrupt.join(snapshot), bytes).unwrap();
    refused(&lab.pikube(&["restore", corrupt.to_str().unwrap(), "-f", f, "--yes"]), "checksum mismatch");
    let other = lab.dir().join("other-ca-backup");
    copy(&other);
    let ca = other.join("pki/ca.crt");
    let forged = std::fs::read_to_string(&ca).unwrap().replacen("MII", "MIJ", 1);
    std::fs::write(&ca, &forged).unwrap();
    let sums = std::fs::read_to_string(other.join("SHA256SUMS")).unwrap();
    let out = std::process::Command::new("sha256sum").arg(&ca).output().unwrap();
    let sum = stdout(&out).split_whitespace().next().unwrap().to_string();
    let sums: String = sums
        .lines()
        .map(|l| if l.ends_with("  pki/ca.crt") { format!("{sum}  pki/ca.crt\n") } else { format!("{l}\n") })
        .collect();
    std::fs::write(other.join("SHA256SUMS"), sums).unwrap();
    refused(
        &lab.pikube(&["restore", other.to_str().unwrap(), "-f", f, "--yes"]),
        "node1's cluster CA is not the backup's",
    );
    assert_eq!(etcd_starts(&lab), starts, "a refused restore touched etcd");
    assert!(!lab
        .kubectl(&dir.join(VERSION).join("bin/linux/amd64/kubectl"), &["get", "configmap", "settings"])
        .status
        .success());

    // Restore: the ConfigMaps are back with the same UIDs and resourceVersions.
    let (report, _) = pikube_ok(&lab, &["restore", b, "-f", f, "--yes", "--ready-timeout", "600"]);
    println!("--- pikube restore\n{report}");
    for line in [
        "1/6: copy snapshot pikube-node1-",
        "2/6: stop the control plane on node1, node2, node3",
        "3/6: etcdutl snapshot restore on each of node1, node2, node3",
        "4/6: on each server keep the old etcd data dir",
        "5/6: start kubelet on node1, node2, node3",
        "6/6: wait until every node is Ready",
        "node3: old etcd data kept in /var/lib/etcd-old-",
        "Restore: kadm-bk is back at",
    ] {
        assert!(report.contains(line), "{line:?} missing:\n{report}");
    }
    assert_eq!(["settings", "feature-flags"].map(|cm| identity(&lab, &dir, cm)), ids);
    let health = etcdctl(&lab, "endpoint health --cluster");
    assert_eq!(health.lines().filter(|l| l.contains(" is healthy")).count(), 3, "{health}");
    let nodes = kubectl_ok(&lab, &dir, &["get", "nodes", "--no-headers"]);
    assert_eq!(nodes.lines().filter(|l| l.split_whitespace().nth(1) == Some("Ready")).count(), 3, "{nodes}");
    for n in SERVERS {
        assert!(lab.ssh(n, "ls -d /var/lib/etcd-old-*/member").0, "{n}: the old data dir is kept");
        assert!(lab.absent(n, "/var/lib/pikube-restore"), "{n}: the snapshot copy is removed");
    }

    // --keep 1: the older backups go.
    let (report, _) = pikube_ok(&lab, &["backup", "-f", f, "--keep", "1"]);
    assert!(report.contains(&format!("deleted old backup {} (--keep 1)", backup.display())), "{report}");
    assert_eq!(backups(&lab).len(), 1, "{report}");

    // A server whose etcd is stopped (its static pod manifest moved away) is degraded.
    lab.sh("node3", "mv /etc/kubernetes/manifests/etcd.yaml /root/");
    wait_for("node3 degraded for its etcd", Duration::from_secs(180), Duration::from_secs(5), || {
        let (code, doc) = status_json(&lab);
        let reasons = host(&doc, "node3")["reasons"].to_string();
        (code == Some(1) && host(&doc, "node3")["verdict"] == "degraded" && reasons.contains("etcd member list failed"))
            .then_some(())
            .ok_or(reasons)
    });
    // The others read their etcd through their own API server, not node3's.
    let (_, doc) = status_json(&lab);
    for n in ["node1", "node2"] {
        let reasons = host(&doc, n)["reasons"].to_string();
        assert!(!reasons.contains("etcd"), "{n}: {reasons}");
    }
    let out = lab.pikube(&["status", "-f", f]);
    println!("--- pikube status (node3's etcd stopped)\n{}", stdout(&out));
}
