//! `pikube down` for kubeadm on lab hosts with real upstream Kubernetes (no stand-in): 3
//! servers behind 1 HAProxy node and 1 agent. `down --limit` takes a live agent and a live
//! server out (drained through another server, never forced; `kubeadm reset`; the server's etcd
//! member gone; the Node deleted last) and `up` brings them back; a powered-off server is
//! removed from the API and from etcd without being reset, and when it returns `up` refuses it
//! until it is reset; a removal that would lose etcd's quorum is refused; the whole `down` runs
//! `pre-master-down.yml` before `k8s-pre-master-down.yml` and leaves nothing on any node.

mod common;

use std::time::Duration;

use common::{kubeadm_leftovers, lab_kubernetes, stdout, text, wait_for, Lab};

const VERSION: &str = "v1.34.4";
const KUBECTL: &str = "kubectl --kubeconfig /etc/kubernetes/admin.conf";

/// etcd's member names as node1's etcd reports them, asked through the API (not the way
/// pikube asks), sorted.
fn members(lab: &Lab) -> Result<Vec<String>, String> {
    let pki = "/etc/kubernetes/pki/etcd";
    let (ok, out) = lab.ssh(
        "node1",
        &format!(
            "{KUBECTL} -n kube-system exec etcd-node1 -c etcd -- etcdctl --endpoints=https://127.0.0.1:2379 \
             --cacert={pki}/ca.crt --cert={pki}/healthcheck-client.crt --key={pki}/healthcheck-client.key member list"
        ),
    );
    if !ok {
        return Err(format!("etcdctl member list failed: {out}"));
    }
    // ID, status, name, peer URLs, client URLs, learner
    let mut names: Vec<String> = out.lines().filter_map(|l| l.split(", ").nth(2)).map(String::from).collect();
    names.sort();
    Ok(names)
}

fn wait_members(lab: &Lab, want: &[&str]) {
    wait_for(&format!("etcd members {want:?}"), Duration::from_secs(300), Duration::from_secs(5), || {
        let have = members(lab)?;
        (have == want).then_some(()).ok_or(format!("{have:?}"))
    });
}

/// NAME STATUS of every Node, as node1's API reports them, sorted.
fn try_nodes(lab: &Lab) -> Result<Vec<String>, String> {
    let (ok, out) = lab.ssh("node1", &format!("{KUBECTL} get nodes --no-headers"));
    if !ok {
        return Err(format!("kubectl get nodes failed: {out}"));
    }
    let mut v: Vec<String> = out.lines().map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ")).collect();
    v.sort();
    Ok(v)
}

fn nodes(lab: &Lab) -> Vec<String> {
    try_nodes(lab).unwrap()
}

/// Waits for the Nodes; the API may not answer for a while (servers just powered on).
fn wait_nodes(lab: &Lab, want: &[&str]) {
    wait_for(&format!("Nodes {want:?}"), Duration::from_secs(600), Duration::from_secs(5), || {
        let have = try_nodes(lab)?;
        (have == want).then_some(()).ok_or(format!("{have:?}"))
    });
}

fn pikube(lab: &Lab, args: &[&str]) -> std::process::Output {
    let file = lab.cluster_file();
    let mut all = vec![args[0], "-f", file.to_str().unwrap()];
    all.extend_from_slice(&args[1..]);
    all.push("--plain");
    lab.pikube(&all)
}

fn up(lab: &Lab, why: &str) -> String {
    let out = pikube(lab, &["up", "--ready-timeout", "600"]);
    assert!(out.status.success(), "up ({why}) failed:\n{}", text(&out));
    stdout(&out)
}

fn down(lab: &Lab, node: &str) -> std::process::Output {
    pikube(lab, &["down", "--limit", node, "--yes"])
}

/// A pod without a controller on the agent: drain must not delete it unless forced. Critical,
/// so that kubelet admits and keeps it while the lab's host disk is low (DiskPressure).
const BARE_POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: bare
  namespace: default
spec:
  nodeName: node5
  priorityClassName: system-node-critical
  terminationGracePeriodSeconds: 1
  containers:
  - name: bare
    image: pikube.local/probe:1
    imagePullPolicy: Never
    command: [sh, -c, 'exec sleep 3600']
";

/// The generic hook makes a namespace the kubeadm one puts its ConfigMap into: applied the
/// other way round (or the generic one skipped) the second apply fails, and `down` with it.
const GENERIC_HOOK: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: pre-down
";
const K8S_HOOK: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: from-k8s-hook
  namespace: pre-down
";

#[test]
fn kubeadm_down_limit_live_and_dead_nodes_then_whole_down() {
    require_lab!();
    let dir = lab_kubernetes(VERSION);
    let lab = Lab::up(
        "kadm-down",
        62,
        &["--nodes", "5", "--servers", "3", "--loadbalancers", "1", "--kubeadm", dir.to_str().unwrap()],
    );
    let hooks = lab.dir().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    std::fs::write(hooks.join("pre-master-down.yml"), GENERIC_HOOK).unwrap();
    std::fs::write(hooks.join("k8s-pre-master-down.yml"), K8S_HOOK).unwrap();
    up(&lab, "first");
    let all = ["node1 Ready", "node2 Ready", "node3 Ready", "node5 Ready"];
    wait_nodes(&lab, &all);
    wait_members(&lab, &["node1", "node2", "node3"]);

    // A live agent holding a pod without a controller: the drain is not forced, the node is
    // neither reset nor left cordoned, and the pod is named.
    lab.sh("node1", &format!("{KUBECTL} apply -f - <<'EOF'\n{BARE_POD}EOF"));
    wait_for("the bare pod Running on node5", Duration::from_secs(180), Duration::from_secs(3), || {
        let phase = lab.sh("node1", &format!("{KUBECTL} get pod bare -o jsonpath='{{.status.phase}}'"));
        (phase == "Running").then_some(()).ok_or(phase)
    });
    let out = down(&lab, "node5");
    assert_eq!(out.status.code(), Some(1), "a drain that needs --force must fail:\n{}", text(&out));
    let said = stdout(&out);
    assert!(said.contains("could not drain node5 (nothing forced"), "{said}");
    assert!(said.contains("default/bare"), "{said}");
    assert!(said.contains("it was not reset and is schedulable again"), "{said}");
    let unschedulable = lab.sh("node1", &format!("{KUBECTL} get node node5 -o jsonpath='{{.spec.unschedulable}}'"));
    assert_eq!(unschedulable, "", "node5 must be schedulable again");
    assert_eq!(lab.sh("node5", "systemctl is-active kubelet"), "active", "node5 must not be reset");
    lab.sh("node1", &format!("{KUBECTL} delete pod bare --wait=true --timeout=120s"));

    // The live agent, drained: its Node is gone and nothing of Kubernetes is left on it.
    let out = down(&lab, "node5");
    assert!(out.status.success(), "down --limit node5 failed:\n{}", text(&out));
    let said = text(&out); // the changes go to stderr
    assert!(said.contains("node5: drain node5 through node1"), "{said}");
    assert_eq!(nodes(&lab), ["node1 Ready", "node2 Ready", "node3 Ready"]);
    assert_eq!(kubeadm_leftovers(&lab, "node5"), "", "node5: left after down --limit");
    up(&lab, "node5 back");
    wait_nodes(&lab, &all);

    // A live server: kubeadm reset removes its etcd member (pikube checks); the Node goes last.
    let out = down(&lab, "node3");
    assert!(out.status.success(), "down --limit node3 failed:\n{}", text(&out));
    assert_eq!(members(&lab).unwrap(), ["node1", "node2"]);
    assert_eq!(nodes(&lab), ["node1 Ready", "node2 Ready", "node5 Ready"]);
    assert_eq!(kubeadm_leftovers(&lab, "node3"), "", "node3: left after down --limit");
    let report = up(&lab, "node3 back");
    assert!(report.contains("kubeadm join --control-plane"), "node3 joins again:\n{report}");
    wait_nodes(&lab, &all);
    wait_members(&lab, &["node1", "node2", "node3"]);

    // A powered-off server: deleted from the API, its member removed, HAProxy forgets it, and
    // the output says the host was not reset.
    lab.lab("stop", "node3");
    let out = down(&lab, "node3");
    assert!(out.status.success(), "removing the dead server failed:\n{}", text(&out));
    let said = stdout(&out);
    assert!(said.contains("node3 does not answer SSH: deleted from the API and etcd member node3 removed"), "{said}");
    assert!(said.contains("The host itself was NOT reset"), "{said}");
    assert!(said.contains("take node3 out of"), "{said}");
    assert_eq!(members(&lab).unwrap(), ["node1", "node2"]);
    assert_eq!(nodes(&lab), ["node1 Ready", "node2 Ready", "node5 Ready"]);
    let haproxy = lab.sh("node4", "grep ' server ' /etc/haproxy/haproxy.cfg");
    assert!(haproxy.contains("node1") && haproxy.contains("node2") && !haproxy.contains("node3"), "{haproxy}");
    for _ in 0..4 {
        let ok = lab.sh("node1", "curl -sk --max-time 5 https://10.77.62.14:6443/livez");
        assert_eq!(ok, "ok", "the API through HAProxy");
    }

    // It comes back still listed in the cluster file: `up` refuses it (its etcd member is gone)
    // and says how to reset it; the rest converges. Reset as told, `up` joins it again.
    lab.lab("start", "node3");
    let out = pikube(&lab, &["up", "--ready-timeout", "600"]);
    assert_eq!(out.status.code(), Some(1), "up must refuse the removed server:\n{}", text(&out));
    let said = stdout(&out);
    assert!(said.contains("node3 (10.77.62.13): FAILED"), "{said}");
    assert!(said.contains("etcd no longer lists it as a member"), "{said}");
    assert!(said.contains("--limit node3 --yes` (it answers now), then run `pikube up` again"), "{said}");
    for node in ["node1 (10.77.62.11)", "node2 (10.77.62.12)", "node5 (10.77.62.15)"] {
        assert!(said.contains(&format!("{node}: ")) && !said.contains(&format!("{node}: FAILED")), "{said}");
    }
    let out = down(&lab, "node3");
    assert!(out.status.success(), "resetting the returned server failed:\n{}", text(&out));
    assert_eq!(kubeadm_leftovers(&lab, "node3"), "", "node3: left after its reset");
    up(&lab, "node3 reset and back");
    wait_nodes(&lab, &all);
    wait_members(&lab, &["node1", "node2", "node3"]);

    // Two of three servers off: etcd has no quorum, removing one is refused, nothing changes.
    lab.lab("stop", "node2");
    lab.lab("stop", "node3");
    let out = down(&lab, "node2");
    assert_eq!(out.status.code(), Some(1), "a quorum-losing removal must fail:\n{}", text(&out));
    let said = stdout(&out);
    assert!(said.contains("refusing to remove node2: etcd has 3 members and only 1 answer (node1)"), "{said}");
    lab.lab("start", "node2");
    lab.lab("start", "node3");
    wait_nodes(&lab, &all);
    wait_members(&lab, &["node1", "node2", "node3"]);

    // The whole cluster: both pre-master-down hooks, the generic one first, then every node
    // reset with nothing left.
    let out = pikube(&lab, &["down", "--yes"]);
    assert!(out.status.success(), "down failed:\n{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let at = |hook: &str| {
        let line = format!("node1: apply pre-master-down hook {hook}");
        err.find(&line).unwrap_or_else(|| panic!("{line:?} missing:\n{}", text(&out)))
    };
    let (generic, own) = (at("pre-master-down.yml"), at("k8s-pre-master-down.yml"));
    assert!(generic < own, "pre-master-down.yml must run before k8s-pre-master-down.yml:\n{err}");
    for node in ["node1", "node2", "node3", "node5"] {
        assert_eq!(kubeadm_leftovers(&lab, node), "", "{node}: left after down");
    }
    assert!(!lab.dir().join("build/kadm-down-config.yml").exists(), "down removes the kubeadm kubeconfig");
}
