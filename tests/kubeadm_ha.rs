//! kubeadm high availability on lab hosts with real upstream Kubernetes (kubeadm, kubelet,
//! kubectl, etcd and the control-plane images from `pikube lab kubernetes`; containerd and
//! HAProxy/keepalived from the lab's Debian mirror — no stand-in anywhere): three servers
//! behind HAProxy and behind a keepalived VIP, a server powered off and back, and the first
//! server's disk wiped and joined back into the same cluster. The real kubectl checks through
//! the endpoint; etcd itself lists its members.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{lab_kubernetes, section, stdout, text, wait_for, Lab, PROBE_POD};

const VERSION: &str = "v1.34.4";
const SERVERS: [&str; 3] = ["node1", "node2", "node3"];
/// The Kubernetes nodes of the HAProxy lab (node4 is the load balancer).
const ALL: [&str; 5] = ["node1", "node2", "node3", "node5", "node6"];

fn kubectl_path(dir: &Path) -> std::path::PathBuf {
    dir.join(VERSION).join("bin/linux/amd64/kubectl")
}

/// The real kubectl of the release, from inside the lab network, with pikube's kubeconfig.
fn kubectl(lab: &Lab, dir: &Path, args: &[&str]) -> Output {
    lab.kubectl(&kubectl_path(dir), args)
}

fn kubectl_ok(lab: &Lab, dir: &Path, args: &[&str]) -> String {
    lab.kubectl_ok(&kubectl_path(dir), args)
}

/// `kubectl apply -f -` of `yaml` through the endpoint.
fn kubectl_apply(lab: &Lab, dir: &Path, yaml: &str) {
    lab.kubectl_apply(&kubectl_path(dir), yaml)
}

fn up(lab: &Lab) -> (Output, Duration) {
    let started = Instant::now();
    let out = lab.pikube(&["up", "-f", lab.cluster_file().to_str().unwrap(), "--ready-timeout", "600"]);
    (out, started.elapsed())
}

fn up_ok(lab: &Lab, what: &str) -> String {
    let (out, took) = up(lab);
    assert!(out.status.success(), "{what} failed:\n{}", text(&out));
    eprintln!("{what}: {took:.1?}");
    stdout(&out)
}

/// (NAME, STATUS, VERSION) of each row of `kubectl get nodes --no-headers`.
fn node_rows(table: &str) -> Vec<(String, String, String)> {
    table
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f.get(1).unwrap_or(&"").to_string(), f.get(4).unwrap_or(&"").to_string())
        })
        .collect()
}

/// Waits until exactly `names` are Nodes, all Ready on the pinned version.
fn wait_all_ready(lab: &Lab, dir: &Path, names: &[&str]) {
    wait_for("all nodes Ready", Duration::from_secs(300), Duration::from_secs(3), || {
        let out = kubectl(lab, dir, &["get", "nodes", "--no-headers"]);
        let rows = node_rows(&stdout(&out));
        let ok = rows.len() == names.len()
            && names.iter().all(|n| rows.iter().any(|(name, s, v)| name == n && s == "Ready" && v == VERSION));
        ok.then_some(()).ok_or_else(|| format!("{rows:?} {}", String::from_utf8_lossy(&out.stderr)))
    });
}

/// `kubectl get pods` in kube-system whose names start with `prefix` and are Running.
fn running(lab: &Lab, dir: &Path, prefix: &str) -> Vec<String> {
    let out = stdout(&kubectl(lab, dir, &["-n", "kube-system", "get", "pods", "--no-headers"]));
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[0].starts_with(prefix) && f[2] == "Running").then(|| f[0].to_string())
        })
        .collect()
}

/// etcd's own member list, asked with etcdctl in `node`'s etcd pod: (ID, name) of every
/// started voting member, sorted by name; Err with what etcd said otherwise.
fn etcd_members(lab: &Lab, node: &str) -> Result<Vec<(String, String)>, String> {
    let pki = "/etc/kubernetes/pki/etcd";
    let (ok, out) = lab.ssh(
        node,
        &format!(
            "kubectl --kubeconfig /etc/kubernetes/admin.conf --request-timeout=20s -n kube-system exec etcd-{node} -c etcd -- \
             etcdctl --endpoints=https://127.0.0.1:2379 --cacert={pki}/ca.crt --cert={pki}/healthcheck-client.crt \
             --key={pki}/healthcheck-client.key member list 2>&1"
        ),
    );
    if !ok {
        return Err(out);
    }
    // ID, status, name, peer URLs, client URLs, is learner
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split(", ").collect()).collect();
    if rows.iter().any(|f| f.len() < 6 || f[1] != "started" || f[5] != "false") {
        return Err(format!("not every member is a started voter:\n{out}"));
    }
    let mut members: Vec<(String, String)> = rows.iter().map(|f| (f[0].to_string(), f[2].to_string())).collect();
    members.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(members)
}

/// Waits until etcd (asked on `node`) has the three servers as started voting members.
fn wait_three_members(lab: &Lab, node: &str) -> Vec<(String, String)> {
    let mut members = Vec::new();
    wait_for("3 etcd members, as etcd lists them", Duration::from_secs(300), Duration::from_secs(5), || {
        members = etcd_members(lab, node)?;
        let names: Vec<&str> = members.iter().map(|(_, n)| n.as_str()).collect();
        (names == SERVERS).then_some(()).ok_or(format!("{members:?}"))
    });
    members
}

/// `n` API calls through the endpoint one after the other; each must answer within kubectl's
/// 5 s request timeout.
fn calls_in_a_row_succeed(lab: &Lab, dir: &Path, n: usize) {
    for i in 0..n {
        let started = Instant::now();
        let out = kubectl(lab, dir, &["get", "--raw", "/readyz"]);
        assert!(out.status.success(), "call {} of {n} through the endpoint failed:\n{}", i + 1, text(&out));
        eprintln!("  call {}: {:.1?}", i + 1, started.elapsed());
    }
}

/// Whether HAProxy on `lb` took `server` out of the API backend (its health checks failed)
/// since `since` (seconds since the epoch, on the lab's clock).
fn haproxy_marked_down(lab: &Lab, lb: &str, server: &str, since: &str) -> Result<(), String> {
    let log = lab
        .sh(lb, &format!("journalctl -u haproxy --since @{since} --no-pager -o cat | grep -E ' is (UP|DOWN)' || true"));
    let last = log.lines().rfind(|l| l.contains(&format!("/{server} is "))).unwrap_or("");
    last.contains(" is DOWN").then_some(()).ok_or(log)
}

#[test]
fn kubeadm_ha_behind_haproxy_fails_over_and_replaces_the_first_server() {
    require_lab!();
    let dir = lab_kubernetes(VERSION);
    let lab = Lab::up(
        "kadm-ha",
        59,
        &["--nodes", "6", "--servers", "3", "--loadbalancers", "1", "--kubeadm", dir.to_str().unwrap()],
    );

    // HA: node1 inits, node2 and node3 join one after the other through HAProxy on node4.
    let report = up_ok(&lab, "HA up (3 servers, 1 load balancer, 2 agents)");
    for node in ["node2", "node3"] {
        assert!(section(&report, node).contains("[servers] kubeadm join --control-plane"), "{report}");
    }
    let kc = std::fs::read_to_string(lab.dir().join("build/kadm-ha-config.yml")).unwrap();
    assert!(kc.contains("server: https://10.77.59.14:6443"), "{kc}");
    let cfg = lab.sh("node4", "cat /etc/haproxy/haproxy.cfg");
    assert!(cfg.contains("http-check send meth GET uri /readyz"), "HAProxy checks the API server's readiness:\n{cfg}");
    wait_all_ready(&lab, &dir, &ALL);
    let members = wait_three_members(&lab, "node2");
    wait_for("3 etcd and 3 API server pods Running", Duration::from_secs(300), Duration::from_secs(3), || {
        let (etcd, api) = (running(&lab, &dir, "etcd-"), running(&lab, &dir, "kube-apiserver-"));
        (etcd.len() == 3 && api.len() == 3).then_some(()).ok_or(format!("{etcd:?} {api:?}"))
    });
    kubectl_apply(&lab, &dir, PROBE_POD);
    wait_for("the probe pod Running on an agent", Duration::from_secs(180), Duration::from_secs(3), || {
        let jsonpath = "jsonpath={.status.phase} {.spec.nodeName} {.status.reason} {.status.message}";
        let out = stdout(&kubectl(&lab, &dir, &["get", "pod", "probe", "-o", jsonpath]));
        matches!(out.trim(), "Running node5" | "Running node6").then_some(()).ok_or(out)
    });
    // What the replaced server must come back to: this very cluster.
    kubectl_ok(&lab, &dir, &["create", "configmap", "before-the-wipe", "--from-literal=made=before"]);
    let uid = |args: &[&str]| kubectl_ok(&lab, &dir, &[args, &["-o", "jsonpath={.metadata.uid}"]].concat());
    let (system_uid, marker_uid) =
        (uid(&["get", "namespace", "kube-system"]), uid(&["get", "configmap", "before-the-wipe"]));

    // Failover: pull node1's plug. HAProxy's health checks take it out of the backend; from
    // then on every call through the load balancer answers.
    let since = lab.sh("node4", "date +%s");
    lab.lab("stop", "node1");
    let stopped = Instant::now();
    wait_for("HAProxy to mark node1 DOWN", Duration::from_secs(120), Duration::from_secs(2), || {
        haproxy_marked_down(&lab, "node4", "node1", &since)
    });
    eprintln!("failover: HAProxy took node1 out {:.1?} after its power went", stopped.elapsed());
    calls_in_a_row_succeed(&lab, &dir, 5);

    // up while node1 is off fails that host alone, with the reason, and converges the rest.
    let (out, took) = up(&lab);
    eprintln!("up with node1 off: {took:.1?}");
    assert!(!out.status.success(), "up must fail while a host is off:\n{}", text(&out));
    let report = text(&out);
    let node1 = section(&report, "node1");
    assert!(node1.starts_with("node1 (10.77.59.11): FAILED"), "{report}");
    assert!(node1.contains("cannot reach node1 at 10.77.59.11:22"), "{report}");
    for node in ["node2", "node3", "node4", "node5", "node6"] {
        assert!(!section(&report, node).contains("FAILED"), "only node1 fails:\n{report}");
    }
    assert!(report.contains("5 of 6 host(s) converged and verified"), "{report}");
    assert!(report.contains("1 host(s) failed: node1."), "{report}");

    // node1 comes back: up converges, and a second up has nothing to do.
    lab.lab("start", "node1");
    up_ok(&lab, "up after node1 returned");
    wait_all_ready(&lab, &dir, &ALL);
    assert_eq!(wait_three_members(&lab, "node1"), members, "the same three etcd members");
    let again = up_ok(&lab, "second up");
    assert!(again.contains("Up: no changes"), "{again}");

    // Replacement: node1's disk is wiped. up must join it to the cluster the others hold
    // (never `kubeadm init` a second one), after removing its stale etcd member and Node.
    let old_id = members.iter().find(|(_, n)| n == "node1").map(|(id, _)| id.clone()).unwrap();
    lab.lab("wipe", "node1");
    lab.trust_new_host_key("node1", "10.77.59.11");
    let report = up_ok(&lab, "up after node1 was wiped");
    let node1 = section(&report, "node1");
    assert!(node1.contains("[servers] kubeadm join --control-plane"), "{report}");
    assert!(!report.contains("kubeadm init"), "a second cluster was initialised:\n{report}");
    assert!(node1.contains("runs no control plane, but the cluster still lists it"), "{report}");
    let node2 = section(&report, "node2");
    assert!(node2.contains("[servers] remove etcd member node1 (10.77.59.11)"), "{report}");
    assert!(node2.contains("[servers] delete the old Node node1"), "{report}");
    wait_all_ready(&lab, &dir, &ALL);
    let after = wait_three_members(&lab, "node2");
    let new_id = after.iter().find(|(_, n)| n == "node1").map(|(id, _)| id.clone()).unwrap();
    assert_ne!(new_id, old_id, "node1 is a new etcd member: {after:?}");
    assert_eq!(uid(&["get", "namespace", "kube-system"]), system_uid, "the same cluster");
    assert_eq!(uid(&["get", "configmap", "before-the-wipe"]), marker_uid, "objects made before the wipe remain");
    let again = up_ok(&lab, "second up after the replacement");
    assert!(again.contains("Up: no changes"), "{again}");
}

/// The endpoint on a keepalived VIP held by the servers: the holder's power goes, another
/// server takes the address and the API answers through it; the holder comes back and `up`
/// converges. kubeadm's certificates name the VIP (kubectl verifies them through it).
#[test]
fn kubeadm_ha_on_a_keepalived_vip_fails_over() {
    require_lab!();
    let dir = lab_kubernetes(VERSION);
    let lab = Lab::up("kadm-vip", 61, &["--nodes", "3", "--servers", "3", "--vip", "--kubeadm", dir.to_str().unwrap()]);
    let vip = "10.77.61.10";
    up_ok(&lab, "HA up on a VIP (3 servers)");
    let kc = std::fs::read_to_string(lab.dir().join("build/kadm-vip-config.yml")).unwrap();
    assert!(kc.contains(&format!("server: https://{vip}:6443")), "{kc}");
    let config = lab.sh("node1", "cat /etc/pikube/kubeadm.yaml");
    assert!(config.contains(&format!("controlPlaneEndpoint: \"{vip}:6443\"")), "{config}");
    assert!(config.contains(&format!("  - \"{vip}\"\n")), "the VIP is a certSAN:\n{config}");
    wait_all_ready(&lab, &dir, &SERVERS);
    let members = wait_three_members(&lab, "node2");

    let before = lab.holders_of(&SERVERS, vip);
    let [holder] = before[..] else { panic!("exactly one server holds the VIP: {before:?}") };
    lab.lab("stop", holder);
    let stopped = Instant::now();
    let powered: Vec<&str> = SERVERS.into_iter().filter(|n| *n != holder).collect();
    wait_for("the VIP on another server", Duration::from_secs(60), Duration::from_secs(1), || {
        let now = lab.holders_of(&powered, vip);
        matches!(now[..], [_]).then_some(()).ok_or(format!("{now:?}"))
    });
    wait_for("the API through the VIP", Duration::from_secs(60), Duration::from_secs(1), || {
        let out = kubectl(&lab, &dir, &["get", "--raw", "/readyz"]);
        out.status.success().then_some(()).ok_or_else(|| text(&out))
    });
    eprintln!("failover: the API answered through the VIP {:.1?} after {holder} lost power", stopped.elapsed());
    calls_in_a_row_succeed(&lab, &dir, 5);

    lab.lab("start", holder);
    up_ok(&lab, "up after the VIP holder returned");
    wait_all_ready(&lab, &dir, &SERVERS);
    assert_eq!(wait_three_members(&lab, "node2"), members, "the same three etcd members");
    let again = up_ok(&lab, "second up");
    assert!(again.contains("Up: no changes"), "{again}");
}
