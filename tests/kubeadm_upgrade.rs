//! Upgrading a kubeadm cluster by editing `version`, on real upstream Kubernetes: two patch
//! releases built by `pikube lab kubernetes` (v1.34.3, v1.34.4) in one airgap directory, an
//! HA lab (3 servers behind HAProxy, 1 agent) made on the older one, then moved to the newer
//! one: `kubeadm upgrade apply` on the first server, `kubeadm upgrade node` on the others,
//! one node at a time, drained, new kubelet, Ready on the new version, uncordoned. A release
//! that skips a minor version, or goes back, is refused before any host changes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{lab_kubernetes, section, stdout, text, wait_for, Lab};

const OLD: &str = "v1.34.3";
const NEW: &str = "v1.34.4";
/// pikube's UpgradeConfiguration, which both upgrade commands read.
const UPGRADE_CONFIG: &str = "/etc/pikube/kubeadm-upgrade.yaml";

/// One airgap directory holding both releases in upstream's layout (`<dir>/<version>/…`),
/// made of links to the two cached builds.
fn both_releases() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/kadm-upg-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    for version in [OLD, NEW] {
        let built = lab_kubernetes(version).join(version);
        let link = dir.join(version);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&built, &link).unwrap();
    }
    dir
}

fn kubectl(lab: &Lab, dir: &Path, args: &[&str]) -> Output {
    lab.kubectl(&dir.join(NEW).join("bin/linux/amd64/kubectl"), args)
}

fn kubectl_ok(lab: &Lab, dir: &Path, args: &[&str]) -> String {
    lab.kubectl_ok(&dir.join(NEW).join("bin/linux/amd64/kubectl"), args)
}

/// `NAME STATUS VERSION` of every node (STATUS says SchedulingDisabled when cordoned).
fn nodes(lab: &Lab, dir: &Path) -> Vec<(String, String, String)> {
    kubectl_ok(lab, dir, &["get", "nodes", "--no-headers"])
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].to_string(), f[4].to_string())
        })
        .collect()
}

/// The images of kube-system's control-plane and kube-proxy pods, `pod image` per line.
fn component_images(lab: &Lab, dir: &Path) -> Vec<(String, String)> {
    let jsonpath = "jsonpath={range .items[*]}{.metadata.name} {.spec.containers[0].image}{\"\\n\"}{end}";
    kubectl_ok(lab, dir, &["-n", "kube-system", "get", "pods", "-o", jsonpath])
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(p, i)| (p.to_string(), i.to_string())))
        .filter(|(p, _)| {
            ["kube-apiserver-", "kube-controller-manager-", "kube-scheduler-", "kube-proxy-"]
                .iter()
                .any(|c| p.starts_with(c))
        })
        .collect()
}

/// A Deployment (drain evicts only pods a controller brings back) of the archive's probe
/// image; it can only run on the agent (kubeadm taints the servers).
const PROBE: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: probe
spec:
  replicas: 1
  selector:
    matchLabels: {app: probe}
  template:
    metadata:
      labels: {app: probe}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: probe
        image: pikube.local/probe:1
        imagePullPolicy: Never
        command: [sh, -c, 'echo probe started; exec sleep 3600']
";

fn apply(lab: &Lab, dir: &Path, manifest: &str) {
    lab.kubectl_apply(&dir.join(NEW).join("bin/linux/amd64/kubectl"), manifest)
}

/// What the nodes run, read on the nodes themselves: kubeadm's and kubelet's binaries.
fn binaries(lab: &Lab) -> Vec<String> {
    ["node1", "node2", "node3", "node5"]
        .iter()
        .map(|n| lab.sh(n, "sha256sum /usr/local/bin/kubeadm /usr/local/bin/kubelet /usr/local/bin/kubectl"))
        .collect()
}

#[test]
fn kubeadm_upgrade_between_two_patch_releases() {
    require_lab!();
    let dir = both_releases();
    let lab = Lab::up(
        "kadm-upg",
        63,
        &[
            "--nodes",
            "5",
            "--servers",
            "3",
            "--loadbalancers",
            "1",
            "--kubeadm",
            dir.to_str().unwrap(),
            "--kubeadm-version",
            OLD,
        ],
    );
    let file = lab.cluster_file();
    let f = file.to_str().unwrap();
    let started = Instant::now();
    let out = lab.pikube(&["up", "-f", f, "--ready-timeout", "600"]);
    assert!(out.status.success(), "up on {OLD} failed:\n{}", text(&out));
    eprintln!("up on {OLD}: {:.1?}", started.elapsed());
    for (node, status, version) in nodes(&lab, &dir) {
        assert_eq!((status.as_str(), version.as_str()), ("Ready", OLD), "{node}");
    }
    apply(&lab, &dir, PROBE);
    wait_for("the probe pod Running on the agent", Duration::from_secs(300), Duration::from_secs(3), || {
        let out = stdout(&kubectl(
            &lab,
            &dir,
            &["get", "pods", "-l", "app=probe", "-o", "jsonpath={.items[*].status.phase} {.items[*].spec.nodeName}"],
        ));
        (out.trim() == "Running node5").then_some(()).ok_or(out)
    });

    // plan shows the order and changes nothing.
    lab.pin_version(NEW);
    let before = binaries(&lab);
    let out = lab.pikube(&["plan", "-f", f]);
    assert!(out.status.success(), "{}", text(&out));
    let plan = stdout(&out);
    eprintln!("{plan}");
    let order = "Upgrade order, one node at a time (kubeadm upgrade, drain, new kubelet, Ready on the new version, uncordon): node1 → node2 → node3 → node5";
    assert!(plan.contains(order), "{plan}");
    assert!(
        section(&plan, "node1")
            .contains(&format!("[servers] kubeadm upgrade apply --config {UPGRADE_CONFIG} (to {NEW})")),
        "{plan}"
    );
    for node in ["node2", "node3"] {
        assert!(
            section(&plan, node)
                .contains(&format!("[servers] kubeadm upgrade node --config {UPGRADE_CONFIG} (to {NEW})")),
            "{plan}"
        );
    }
    assert!(
        section(&plan, "node5")
            .contains(&format!("[agents] kubeadm upgrade node --config {UPGRADE_CONFIG} (to {NEW})")),
        "{plan}"
    );
    assert!(section(&plan, "node5").contains("[agents] drain node5"), "{plan}");
    assert!(plan.contains(&format!("etcd snapshot before the upgrade to {NEW}")), "{plan}");
    assert_eq!(binaries(&lab), before, "plan changed a binary");

    // up: in that order, the probe pod evicted from the agent, every node on the new release.
    let started = Instant::now();
    let out = lab.pikube(&["up", "-f", f, "--ready-timeout", "600"]);
    let report = stdout(&out);
    eprintln!("{}", text(&out));
    assert!(out.status.success(), "upgrade failed:\n{}", text(&out));
    eprintln!("upgrade {OLD} → {NEW}: {:.1?}", started.elapsed());
    assert!(report.contains(order), "{report}");
    assert!(
        section(&report, "node1")
            .contains(&format!("[servers] kubeadm upgrade apply --config {UPGRADE_CONFIG} (to {NEW})")),
        "{report}"
    );
    let agent = section(&report, "node5");
    assert!(agent.contains("[agents] evicted pod default/probe-"), "{report}");
    assert!(agent.contains(&format!("[agents] restart kubelet ({OLD} → {NEW})")), "{report}");
    // The kubelet came after kubeadm upgrade: the artifacts phase held it back.
    assert!(!section(&report, "node2").contains("[artifacts] update /usr/local/bin/kubelet"), "{report}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let at = |what: &str| stderr.find(what).unwrap_or_else(|| panic!("{what:?} not in the log:\n{stderr}"));
    // The snapshot came before any version changed, and is kept here.
    assert!(at("pre-upgrade snapshot: ") < at("node1: kubeadm upgrade apply"), "{stderr}");
    let backups: Vec<PathBuf> = std::fs::read_dir(lab.dir().join("backups/kadm-upg"))
        .expect("the backups directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("-pre-upgrade") && p.join("backup.json").is_file())
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert!(at("node1: kubeadm upgrade apply") < at("node2: kubeadm upgrade node"), "{stderr}");
    assert!(at("node3: kubeadm upgrade node") < at("node5: kubeadm upgrade node"), "{stderr}");

    // kubeadm took its waits from pikube's UpgradeConfiguration (its default is 5m0s), read it
    // without complaint, and the file holds no secret but is root's alone like the others.
    let applied = lab.sh("node1", "cat /var/log/pikube-kubeadm-upgrade.log");
    assert!(applied.contains(&format!("to version \"{NEW}\" (timeout: 10m0s)")), "{applied}");
    let node2 = lab.sh("node2", "cat /var/log/pikube-kubeadm-upgrade.log");
    assert!(node2.contains("[upgrade/staticpods] This can take up to 10m0s"), "{node2}");
    for log in [&applied, &node2] {
        assert!(!log.contains("unknown field") && !log.contains("strict decoding error"), "{log}");
    }
    assert_eq!(lab.sh("node5", &format!("stat -c %a {UPGRADE_CONFIG}")), "600");

    for (node, status, version) in nodes(&lab, &dir) {
        assert_eq!((status.as_str(), version.as_str()), ("Ready", NEW), "{node}: cordoned or not upgraded");
    }
    let images = component_images(&lab, &dir);
    assert_eq!(images.len(), 3 * 3 + 4, "{images:?}");
    for (pod, image) in &images {
        assert!(image.ends_with(&format!(":{NEW}")), "{pod} runs {image}");
    }
    assert_eq!(lab.sh("node1", "kubeadm version -o short"), NEW);
    wait_for("the probe pod Running again", Duration::from_secs(300), Duration::from_secs(3), || {
        let out = stdout(&kubectl(
            &lab,
            &dir,
            &["get", "pods", "-l", "app=probe", "-o", "jsonpath={.items[*].status.phase}"],
        ));
        (out.trim() == "Running").then_some(()).ok_or(out)
    });
    assert_eq!(lab.sh("node5", "ls /var/lib/pikube/cordoned-for-upgrade 2>/dev/null || true"), "");

    // Converged: a second up changes nothing.
    let out = lab.pikube(&["up", "-f", f, "--ready-timeout", "600"]);
    assert!(out.status.success(), "{}", text(&out));
    let again = stdout(&out);
    assert!(again.contains("Up: no changes; "), "{again}");
    assert!(!again.contains("Upgrade order"), "{again}");

    // Skipping a minor release, or going back, is refused on every host before any change.
    let converged = binaries(&lab);
    for (version, why) in [("v1.36.0", "skips a minor release"), (OLD, "cannot downgrade a cluster")] {
        lab.pin_version(version);
        for verb in ["plan", "up"] {
            let out = lab.pikube(&[verb, "-f", f]);
            let said = stdout(&out);
            assert!(!out.status.success(), "{verb} to {version} must fail:\n{said}");
            for node in ["node1", "node2", "node3", "node4", "node5"] {
                let s = section(&said, node);
                assert!(s.contains("error: preflight: version ") && s.contains(why), "{verb} {version}:\n{said}");
                assert_eq!(s.lines().filter(|l| l.starts_with("  [")).count(), 0, "{verb} changed {node}:\n{said}");
            }
        }
        assert_eq!(binaries(&lab), converged, "a refused version changed a node");
    }
    lab.pin_version(NEW);
}
