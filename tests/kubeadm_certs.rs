//! kubeadm over time, on real upstream Kubernetes (kubeadm, kubelet, etcd and the control plane
//! from `pikube lab kubernetes`; no stand-in): three servers on a keepalived VIP. First a
//! release whose kubelet refuses cgroup v1 (the lab host is cgroup v1) is refused by preflight
//! on every node before anything changes. Then, on v1.34.4, certificates made short-lived by
//! hand with kubeadm's own `certificateValidityPeriod` (v1beta4): `status` and `pikube certs`
//! name them, `up` renews them one server at a time (`kubeadm certs renew all`, the control
//! plane restarted, its API server and etcd member healthy before the next server), the
//! servers serve the renewed certificate, and the local kubeconfig is written again.

mod common;

use std::path::Path;
use std::process::Output;

use common::{lab_kubernetes, section, stdout, text, Lab};

const VERSION: &str = "v1.34.4";
const SERVERS: [&str; 3] = ["node1", "node2", "node3"];
/// 300 days: a certificate kubeadm just renewed has a year left, a shortened one a day.
const MOST_OF_A_YEAR: u64 = 300 * 86_400;

fn kubectl(lab: &Lab, dir: &Path, args: &[&str]) -> Output {
    lab.kubectl(&dir.join(VERSION).join("bin/linux/amd64/kubectl"), args)
}

/// Seconds `cert` has left on `node`, as kubeadm reports it.
fn left(lab: &Lab, node: &str, cert: &str) -> i64 {
    let json = lab.sh(node, "kubeadm certs check-expiration -o json");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let found = v["certificates"].as_array().and_then(|a| a.iter().find(|c| c["name"] == cert)).cloned();
    found.and_then(|c| c["residualTime"].as_i64()).unwrap_or_else(|| panic!("{cert} not in {json}"))
}

/// Whether the API server on `node` serves a certificate valid for most of a year.
fn serves_a_renewed_certificate(lab: &Lab, node: &str, address: &str) -> bool {
    let script = format!(
        "echo | openssl s_client -connect {address}:6443 2>/dev/null | openssl x509 -noout -checkend {MOST_OF_A_YEAR}"
    );
    lab.ssh(node, &script).0
}

/// Makes `certs` on `node` expire in 24 h: kubeadm renews them with a v1beta4
/// `certificateValidityPeriod` of 24h, as a cluster that chose short-lived certificates would.
fn shorten(lab: &Lab, node: &str, address: &str, certs: &[&str]) {
    let config = format!(
        "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nlocalAPIEndpoint:\n  advertiseAddress: {address}\n---\n\
         apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nkubernetesVersion: {VERSION}\ncertificateValidityPeriod: 24h0m0s\n"
    );
    lab.sh(node, &format!("cat > /root/short-lived.yaml <<'EOF'\n{config}EOF"));
    for cert in certs {
        lab.sh(node, &format!("kubeadm certs renew {cert} --config /root/short-lived.yaml >/dev/null"));
        assert!(left(lab, node, cert) <= 86_400, "{node}: {cert} was not shortened");
    }
}

fn status_json(lab: &Lab) -> (Option<i32>, serde_json::Value) {
    let out = lab.pikube(&["status", "--json", "-f", lab.cluster_file().to_str().unwrap()]);
    (out.status.code(), serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}:\n{}", text(&out))))
}

fn reasons(status: &serde_json::Value, node: &str) -> String {
    let host = status["hosts"].as_array().unwrap().iter().find(|h| h["name"] == node).expect("host in status");
    host["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect::<Vec<_>>().join("; ")
}

#[test]
fn kubeadm_refuses_cgroup_v1_for_v1_35_and_renews_expiring_certificates_one_server_at_a_time() {
    require_lab!();
    let dir = lab_kubernetes(VERSION);
    let lab =
        Lab::up("kadma-certs", 120, &["--nodes", "3", "--servers", "3", "--vip", "--kubeadm", dir.to_str().unwrap()]);
    let file = lab.cluster_file();
    let f = file.to_str().unwrap();
    let address = |node: &str| format!("10.77.120.1{}", &node[4..]);

    // v1.35's kubelet does not start on cgroup v1: refused on every node, nothing changed.
    lab.pin_version("v1.35.0");
    let out = lab.pikube(&["plan", "-f", f]);
    let plan = stdout(&out);
    eprintln!("{}", text(&out));
    assert!(!out.status.success(), "{plan}");
    for node in SERVERS {
        let s = section(&plan, node);
        assert!(s.contains("error: preflight: cgroup v1 (/sys/fs/cgroup is not the unified hierarchy): kubelet v1.35 does not start there"), "{plan}");
        // Every blocking finding is named, not only the first: the airgap directory has no v1.35.0.
        assert!(
            s.contains("\n  preflight: ") && s.contains("v1.35.0/bin/linux/amd64/kubeadm.sha256 is missing"),
            "{plan}"
        );
        assert_eq!(s.lines().filter(|l| l.starts_with("  [")).count(), 0, "plan changed {node}:\n{plan}");
    }
    let out = lab.pikube(&["check", "-f", f]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        stdout(&out).matches("cgroup v1 (/sys/fs/cgroup is not the unified hierarchy)").count(),
        3,
        "{}",
        text(&out)
    );
    assert!(!lab.ssh("node1", "test -e /usr/local/bin/kubeadm").0, "a refused release installed something");
    lab.pin_version(VERSION);

    let out = lab.pikube(&["up", "-f", f, "--ready-timeout", "600"]);
    assert!(out.status.success(), "up failed:\n{}", text(&out));
    let (code, healthy) = status_json(&lab);
    assert_eq!(code, Some(0), "{healthy:#}");
    let apiserver = &healthy["hosts"][0]["health"]["certificates"]["certificates"];
    assert!(apiserver.as_array().is_some_and(|c| c.len() >= 10), "{healthy:#}");

    // node1's API server certificate and admin credentials, node2's API server certificate
    // expire in a day; node3's keep their year.
    shorten(&lab, "node1", &address("node1"), &["apiserver", "admin.conf"]);
    shorten(&lab, "node2", &address("node2"), &["apiserver"]);

    let (code, status) = status_json(&lab);
    assert_eq!(code, Some(1), "{status:#}");
    let node1 = reasons(&status, "node1");
    assert!(node1.starts_with("certificates expire within 30 days: "), "{node1}");
    for said in ["admin.conf expires in 2", "apiserver expires in 2", "`pikube up` renews them"] {
        assert!(node1.contains(said), "{said:?} not in {node1}");
    }
    assert!(
        reasons(&status, "node2").starts_with("certificates expire within 30 days: apiserver expires in 2"),
        "{status:#}"
    );
    assert_eq!(reasons(&status, "node3"), "", "{status:#}");
    let table = stdout(&lab.pikube(&["status", "-f", f]));
    eprintln!("{table}");

    let out = lab.pikube(&["certs", "-f", f]);
    let certs = stdout(&out);
    eprintln!("{certs}");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let row = |node: &str, cert: &str| {
        certs
            .lines()
            .find(|l| l.starts_with(&format!("{node}  {cert} ")))
            .unwrap_or_else(|| panic!("{certs}"))
            .to_string()
    };
    assert!(row("node1", "apiserver").contains(" 23 h ") || row("node1", "apiserver").contains(" 22 h "), "{certs}");
    assert!(row("node3", "apiserver").contains(" 364 days "), "{certs}");
    assert!(row("node1", "ca (CA)").contains(" 3649 days "), "{certs}");
    let said = |node: &str| certs.lines().find(|l| l.starts_with(&format!("{node}: "))).unwrap_or_default().to_string();
    assert!(
        said("node1").contains("within renew_certificates_days (90): `pikube up` renews its certificates ("),
        "{certs}"
    );
    assert!(said("node1").contains("admin.conf") && said("node1").contains("apiserver"), "{certs}");
    assert!(said("node2").starts_with("node2: apiserver expires in ") && said("node3").is_empty(), "{certs}");
    let out = lab.pikube(&["certs", "--json", "-f", f]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("certs --json");
    let mut due: Vec<Vec<&str>> = doc["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["due"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect())
        .collect();
    due.iter_mut().for_each(|d| d.sort());
    assert_eq!(due, [vec!["admin.conf", "apiserver"], vec!["apiserver"], vec![]], "{doc:#}");

    // plan shows the renewal on node1 and node2 and changes nothing.
    let out = lab.pikube(&["plan", "-f", f]);
    let plan = stdout(&out);
    assert!(out.status.success(), "{}", text(&out));
    for node in ["node1", "node2"] {
        let s = section(&plan, node);
        assert!(
            s.contains("[servers] renew the certificates with `kubeadm certs renew all` (apiserver expires in "),
            "{plan}"
        );
        assert!(s.contains("then restart the control plane (etcd, kube-apiserver"), "{plan}");
    }
    assert_eq!(section(&plan, "node3"), "node3 (10.77.120.13): no changes", "{plan}");
    assert!(left(&lab, "node2", "apiserver") <= 86_400, "plan renewed a certificate");

    // up renews them, one server at a time, each back before the next.
    let kubeconfig = lab.dir().join("build/kadma-certs-config.yml");
    let old_kubeconfig = std::fs::read_to_string(&kubeconfig).unwrap();
    let started = std::time::Instant::now();
    let out = lab.pikube(&["up", "-f", f, "--ready-timeout", "600"]);
    eprintln!("{}", text(&out));
    assert!(out.status.success(), "up failed:\n{}", text(&out));
    eprintln!("renewal up: {:.1?}", started.elapsed());
    let log = String::from_utf8_lossy(&out.stderr);
    let at = |what: &str| log.find(what).unwrap_or_else(|| panic!("{what:?} not in the log:\n{log}"));
    assert!(at("node1: renew the certificates") < at("node1: waiting until its control plane is back"), "{log}");
    assert!(at("node1: waiting until its control plane is back") < at("node2: renew the certificates"), "{log}");
    assert!(!log.contains("node3: renew"), "{log}");
    let report = stdout(&out);
    assert!(section(&report, "node3").ends_with("no changes"), "{report}");
    for (node, certs) in [("node1", &["apiserver", "admin.conf"][..]), ("node2", &["apiserver"])] {
        for cert in certs {
            let secs = left(&lab, node, cert);
            assert!(secs > MOST_OF_A_YEAR as i64, "{node}: {cert} has {secs}s left after up");
        }
        assert!(serves_a_renewed_certificate(&lab, node, &address(node)), "{node} serves the old certificate");
    }
    let new_kubeconfig = std::fs::read_to_string(&kubeconfig).unwrap();
    assert_ne!(new_kubeconfig, old_kubeconfig, "the local kubeconfig still holds the old admin.conf");
    let nodes = kubectl(&lab, &dir, &["get", "nodes", "--no-headers"]);
    assert!(nodes.status.success() && stdout(&nodes).matches(" Ready ").count() == 3, "{}", text(&nodes));

    let (code, status) = status_json(&lab);
    assert_eq!(code, Some(0), "{status:#}");
    assert_eq!(lab.pikube(&["certs", "-f", f]).status.code(), Some(0));
    let out = lab.pikube(&["up", "-f", f]);
    assert!(stdout(&out).contains("Up: no changes; "), "{}", text(&out));
}
