//! Safe upgrades on lab hosts (k3s STAND-IN releases, real systemd/sshd/apt): each node is
//! cordoned and drained through the Eviction API before its restart onto the new release,
//! uncordoned once Ready on it (a node the user cordoned stays so), every node's kubelet
//! version is checked against the pin, a drain that cannot finish stops the upgrade naming
//! the pods, `--no-drain` skips draining and `plan` shows the order.

mod common;

use std::collections::BTreeMap;
use std::process::Output;

use common::{real_kubectl, section, standin_artifacts, standin_release, stdout, text, Lab};

const OLD: &str = "v1.31.4+k3s1";
const NEW: &str = "v1.31.5+k3s1";

/// A pod bound to `node`, owned by a ReplicaSet (drain evicts only pods with a controller)
/// and with an emptyDir volume (needs --delete-emptydir-data).
fn pod(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels: {{app: {name}}}\n  ownerReferences:\n  - {{apiVersion: apps/v1, kind: ReplicaSet, name: {name}-6d4b, uid: 5b1e7a6c-0000-0000-0000-000000000001, controller: true}}\nspec:\n  nodeName: {node}\n  containers: [{{name: app, image: registry.example/app:1}}]\n  volumes: [{{name: cache, emptyDir: {{}}}}]\n"
    )
}

fn apply(lab: &Lab, yaml: &str) {
    lab.sh("node1", &format!("k3s kubectl apply -f - <<'EOF'\n{yaml}EOF"));
}

/// Pins `to` (version, artifact directory) in the cluster file instead of `from`.
fn pin(lab: &Lab, from: (&str, &std::path::Path), to: (&str, &std::path::Path)) {
    let file = std::fs::read_to_string(lab.cluster_file()).unwrap();
    let pinned = file
        .replace(&format!("version: {}", from.0), &format!("version: {}", to.0))
        .replace(from.1.to_str().unwrap(), to.1.to_str().unwrap());
    assert!(pinned.contains(&format!("version: {}", to.0)) && pinned != file, "{pinned}");
    std::fs::write(lab.cluster_file(), pinned).unwrap();
}

fn pikube(lab: &Lab, args: &[&str]) -> Output {
    let file = lab.cluster_file();
    let mut all = args.to_vec();
    all.extend(["-f", file.to_str().unwrap()]);
    lab.pikube(&all)
}

/// stdout and stderr together: the report and the live log.
fn log(out: &Output) -> String {
    format!("{}{}", stdout(out), String::from_utf8_lossy(&out.stderr))
}

fn pos(log: &str, s: &str) -> usize {
    log.find(s).unwrap_or_else(|| panic!("{s:?} missing from:\n{log}"))
}

/// Node name → (kubelet version, cordoned) from the API.
fn nodes(lab: &Lab) -> BTreeMap<String, (String, bool)> {
    let json = lab.sh("node1", "k3s kubectl get nodes -o json");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let version = n["status"]["nodeInfo"]["kubeletVersion"].as_str().unwrap_or("").to_string();
            (n["metadata"]["name"].as_str().unwrap().to_string(), (version, n["spec"]["unschedulable"] == true))
        })
        .collect()
}

fn pods(lab: &Lab) -> String {
    lab.sh("node1", "k3s kubectl get pods -A -o name")
}

#[test]
fn upgrades_drain_each_node_and_check_every_kubelet_version() {
    require_lab!();
    let (old, new) = (standin_artifacts(), standin_release(NEW));
    let lab = Lab::up("upg-roll", 48, &["--nodes", "3", "--k3s-artifacts", old.to_str().unwrap()]);
    let out = pikube(&lab, &["up", "--ready-timeout", "90"]);
    assert!(out.status.success(), "{}", text(&out));

    // The user took node2 out of service with the real kubectl (its pod evicted through the
    // stand-in's Eviction API); node3 carries a pod.
    apply(&lab, &pod("batch", "node2"));
    apply(&lab, &pod("web", "node3"));
    if let Some(k) = real_kubectl() {
        let out =
            lab.kubectl(&k, &["drain", "node2", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=30s"]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(stdout(&out).contains("pod/batch evicted"), "{}", text(&out));
    } else {
        lab.sh("node1", "k3s kubectl drain node2 --ignore-daemonsets --delete-emptydir-data --timeout=30s");
    }
    assert_eq!(pods(&lab), "pod/web");

    // plan shows the order: the server, then the agents, one at a time, each drained.
    pin(&lab, (OLD, &old), (NEW, &new));
    let out = pikube(&lab, &["plan"]);
    assert!(out.status.success(), "{}", text(&out));
    let plan = stdout(&out);
    eprintln!("$ pikube plan\n{plan}"); // the README's example comes from here
    assert!(
        plan.contains("Upgrade order, one node at a time (drain, restart, Ready on the new version, uncordon): node1 → node2 → node3"),
        "{plan}"
    );
    let node3 = section(&plan, "node3");
    assert!(
        pos(&node3, "drain node3: cordon, evict its pods (up to 300s)") < pos(&node3, "restart k3s-agent"),
        "{plan}"
    );
    assert!(
        node3.contains("drain node3: cordon, evict its pods (up to 300s); uncordon it once Ready on the new version"),
        "{plan}"
    );
    let node2 = section(&plan, "node2");
    assert!(node2.contains("drain node2: cordon, evict its pods (up to 300s); it stays cordoned, as it was"), "{plan}");
    assert!(nodes(&lab).values().all(|(v, _)| v == OLD), "plan changed nothing");

    // up: node3's pod is evicted before node3 restarts; every node ends on the new release,
    // uncordoned, except node2, which the user had cordoned.
    let out = pikube(&lab, &["up", "--ready-timeout", "90"]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("$ pikube up\n{}", stdout(&out));
    let log = log(&out);
    assert!(pos(&log, "node1: drain node1") < pos(&log, "node1: restart k3s"));
    assert!(pos(&log, "node1: waiting until Ready") < pos(&log, "node2: drain node2"));
    assert!(pos(&log, "node3: drain node3") < pos(&log, "node3: evicted pod default/web"));
    assert!(pos(&log, "node3: evicted pod default/web") < pos(&log, "node3: restart k3s-agent"));
    assert!(pos(&log, "node3: restart k3s-agent") < pos(&log, "node3: uncordon node3"));
    assert!(!log.contains("uncordon node2"), "{log}");
    assert_eq!(pods(&lab), "", "web was evicted");
    let evicted = lab.sh("node1", "journalctl -u k3s --no-pager -o cat | grep 'evicted pod'");
    assert!(evicted.contains("evicted pod default/web from node node3 (Eviction API)"), "{evicted}");
    let want: BTreeMap<String, (String, bool)> = [("node1", false), ("node2", true), ("node3", false)]
        .map(|(n, c)| (n.to_string(), (NEW.to_string(), c)))
        .into();
    assert_eq!(nodes(&lab), want);
    lab.sh("node1", "k3s kubectl uncordon node2");

    // A drain that cannot finish: a PodDisruptionBudget keeps node3's only `api` pod. The real
    // kubectl is refused (HTTP 429) as pikube's drain is; the upgrade stops at node3, named
    // with the pod, not forced, and node3 is not restarted and schedulable again.
    apply(&lab, &pod("api", "node3"));
    apply(&lab, "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: api, namespace: default}\nspec:\n  minAvailable: 1\n  selector: {matchLabels: {app: api}}\n");
    if let Some(k) = real_kubectl() {
        let out = lab.kubectl(&k, &["drain", "node3", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=3s"]);
        assert!(!out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("disruption budget"), "{}", text(&out));
        lab.kubectl(&k, &["uncordon", "node3"]);
    }
    pin(&lab, (NEW, &new), (OLD, &old));
    let out = pikube(&lab, &["up", "--ready-timeout", "90", "--drain-timeout", "4"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let node3 = section(&stdout(&out), "node3");
    let all = text(&out);
    assert!(node3.starts_with("node3 (10.77.48.13): FAILED"), "{all}");
    assert!(node3.contains("error: drain of node3 did not finish within 4s; pods still on it: default/api"), "{all}");
    assert!(node3.contains("node3 was not restarted and is schedulable again; nothing was forced"), "{all}");
    assert!(!node3.contains("restart k3s-agent"), "{all}");
    let now = nodes(&lab);
    assert_eq!(now["node3"], (NEW.to_string(), false), "{now:?}");
    assert_eq!(now["node2"], (OLD.to_string(), false), "{now:?}");
    assert_eq!(pods(&lab), "pod/api");

    // --no-drain: node3 restarts onto the pinned release with its pod left alone.
    let out = pikube(&lab, &["up", "--ready-timeout", "90", "--no-drain"]);
    assert!(out.status.success(), "{}", text(&out));
    let log = self::log(&out);
    assert!(log.contains("node3: restart k3s-agent") && !log.contains("drain node3"), "{log}");
    assert!(
        log.contains(
            "Upgrade order, one node at a time (restart, Ready on the new version; not drained (--no-drain)): node3\n"
        ),
        "{log}"
    );
    assert_eq!(pods(&lab), "pod/api");
    assert!(nodes(&lab).values().all(|(v, c)| v == OLD && !c), "{:?}", nodes(&lab));

    // A node that keeps the old release: a drop-in on node3 starts a copy of the old binary.
    // The run fails naming node3 and both versions; node3 stays cordoned.
    lab.sh(
        "node3",
        "cp /usr/local/bin/k3s /opt/k3s-kept && mkdir -p /etc/systemd/system/k3s-agent.service.d && printf '[Service]\\nExecStart=\\nExecStart=/opt/k3s-kept agent\\n' > /etc/systemd/system/k3s-agent.service.d/kept.conf",
    );
    // The budget allows the eviction now.
    apply(&lab, "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: api, namespace: default}\nspec:\n  minAvailable: 0\n  selector: {matchLabels: {app: api}}\n");
    // node3 comes back Ready on the old release: pikube waits out the ready timeout for its
    // kubelet to report the new one (right after a restart the API still shows the old
    // kubelet's status), then fails it.
    pin(&lab, (OLD, &old), (NEW, &new));
    let out = pikube(&lab, &["up", "--ready-timeout", "45", "--drain-timeout", "4"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let node3 = section(&stdout(&out), "node3");
    assert!(
        node3.contains(&format!(
            "error: node3 is Ready but its kubelet reports {OLD}, not the pinned {NEW}: it did not move to the pinned release (left cordoned)"
        )),
        "{}",
        text(&out)
    );
    let now = nodes(&lab);
    assert_eq!(now["node3"], (OLD.to_string(), true), "{now:?}");
    assert_eq!(now["node1"], (NEW.to_string(), false), "{now:?}");
}
