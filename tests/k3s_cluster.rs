//! Kubernetes bring-up on lab hosts: one server, HA behind a HAProxy node, HA on a keepalived
//! VIP, failover, hooks, kubeconfig and teardown. Everything is real (systemd, sshd, apt,
//! haproxy, keepalived, the lab network) except the k3s binary: a labelled STAND-IN installed
//! through the same airgap artifact directory a user fills with real release files.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{real_kubectl, section, standin_artifacts, standin_release, status_row, stdout, text, Lab, BIN};

fn up(lab: &Lab) -> Output {
    let file = lab.cluster_file();
    lab.pikube(&["up", "-f", file.to_str().unwrap(), "--ready-timeout", "90"])
}

fn up_ok(lab: &Lab) -> String {
    let out = up(lab);
    assert!(out.status.success(), "pikube up failed:\n{}", text(&out));
    format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr))
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
    started.elapsed()
}

/// NAME → STATUS as the real kubectl shows them through the cluster's endpoint;
/// None when the endpoint does not answer.
fn nodes_via_endpoint(lab: &Lab, kubectl: &Path) -> Option<BTreeMap<String, String>> {
    let out = lab.kubectl(kubectl, &["get", "nodes", "--no-headers"]);
    out.status.success().then(|| node_table(&stdout(&out)))
}

/// `get nodes --no-headers` output → NAME → STATUS.
fn node_table(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect()
}

/// Node statuses from a server's own API (used when kubectl is not installed); the server
/// must answer, so "not in the list" never stands for "could not ask".
fn nodes_on(lab: &Lab, server: &str) -> BTreeMap<String, String> {
    node_table(&lab.sh(server, "k3s kubectl get nodes --no-headers"))
}

/// Does the endpoint answer? With kubectl: a full authenticated `get nodes`; else k3s's /ping.
fn endpoint_answers(lab: &Lab, kubectl: Option<&Path>, url: &str) -> bool {
    match kubectl {
        Some(k) => nodes_via_endpoint(lab, k).is_some(),
        None => stdout(&lab.exec("curl", &["-sk", "--max-time", "3", &format!("{url}/ping")])) == "pong",
    }
}

fn all_ready(nodes: &BTreeMap<String, String>, names: &[&str]) -> bool {
    names.iter().all(|n| nodes.get(*n).map(String::as_str) == Some("Ready"))
}

fn append_to_cluster_file(lab: &Lab, yaml: &str) {
    let mut text = std::fs::read_to_string(lab.cluster_file()).unwrap();
    text.push_str(yaml);
    std::fs::write(lab.cluster_file(), text).unwrap();
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The report's `HOST (ADDRESS): STATUS` word for one host.
fn status_of(report: &str, host: &str) -> String {
    let s = section(report, host);
    s.lines().next().and_then(|l| l.split_once("): ")).map(|(_, st)| st.to_string()).unwrap_or_default()
}

/// A `status` table row for one host, its columns joined by single spaces.
/// A unit's main PID and when that process started: both change exactly when it (re)starts.
fn unit_run(lab: &Lab, node: &str, unit: &str) -> String {
    let run = lab.sh(node, &format!("systemctl show -p MainPID -p ExecMainStartTimestampMonotonic {unit}"));
    assert!(!run.contains("MainPID=0"), "{unit} on {node} is not running: {run}");
    run
}

/// A field of a Kubernetes object, read from the server's API as JSON.
fn api_field(lab: &Lab, server: &str, get: &str, pointer: &str) -> serde_json::Value {
    let json = lab.sh(server, &format!("k3s kubectl get {get} -o json"));
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    doc.pointer(pointer).cloned().unwrap_or(serde_json::Value::Null)
}

/// Node name → the kubelet version the API reports for it.
fn versions_on(lab: &Lab, server: &str) -> BTreeMap<String, String> {
    lab.sh(server, "k3s kubectl get nodes --no-headers")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.first()?.to_string(), f.get(4)?.to_string()))
        })
        .collect()
}

#[test]
fn single_server_cluster_with_hooks_kubeconfig_and_teardown() {
    require_lab!();
    let artifacts = standin_artifacts();
    let lab = Lab::up("k3s-single", 41, &["--nodes", "2", "--k3s-artifacts", artifacts.to_str().unwrap()]);
    let file = lab.cluster_file();
    let file_arg = file.to_str().unwrap();

    // A corrupt artifact is refused before anything reaches a node.
    let bad = lab.dir().join("bad-artifacts");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(artifacts.join("k3s"), bad.join("k3s")).unwrap();
    std::fs::write(bad.join("sha256sum-amd64.txt"), format!("{}  k3s\n", "0".repeat(64))).unwrap();
    let good_file = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, good_file.replace(artifacts.to_str().unwrap(), bad.to_str().unwrap())).unwrap();
    let out = up(&lab);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stdout(&out).contains("checksum mismatch"), "{}", text(&out));
    assert!(stdout(&out).contains("fix: the file is corrupt or from another release"), "{}", text(&out));
    assert!(!stdout(&out).contains("[prepare hosts]"), "preflight stops the hosts before any change:\n{}", text(&out));
    assert!(lab.absent("node1", "/usr/local/bin/k3s"), "nothing may be pushed from a bad artifact dir");
    std::fs::write(&file, &good_file).unwrap();

    // Hooks: a cluster manifest after the servers are up, a shell command before agents join.
    let hooks = lab.dir().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    std::fs::write(
        hooks.join("k3s-post-master-up.yml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-hook\n  namespace: kube-system\ndata:\n  who: pikube\n",
    )
    .unwrap();
    std::fs::write(hooks.join("post-master-up.yml"), "this generic file must lose to the k3s-specific one: [").unwrap();
    std::fs::write(
        hooks.join("pre-master-down.yml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: goodbye\ndata:\n  bye: \"1\"\n",
    )
    .unwrap();
    // Labels and taints from the cluster file.
    let with_labels = std::fs::read_to_string(&file).unwrap().replace(
        "    address: 10.77.41.12\n    role: agent\n",
        "    address: 10.77.41.12\n    role: agent\n    labels:\n      disk: ssd\n    taints: [\"dedicated=edge:NoSchedule\"]\n",
    );
    assert!(with_labels.contains("disk: ssd"), "the lab's cluster file changed shape:\n{with_labels}");
    std::fs::write(&file, with_labels).unwrap();
    append_to_cluster_file(
        &lab,
        "registry_mirrors:\n  docker.io: [\"https://registry.lab:5000\"]\nhooks:\n  hosts:\n    - phase: k3s agents\n      when: before\n      on: [agent]\n      run: date +%s.%N > /root/before-agents\n",
    );

    // plan names the k3s phases per host and changes nothing.
    let out = lab.pikube(&["plan", "-f", file_arg]);
    assert!(out.status.success(), "{}", text(&out));
    let plan = stdout(&out);
    for line in [
        "[artifacts] create /usr/local/bin/k3s",
        "[servers] create /etc/rancher/k3s/config.yaml",
        "[servers] start k3s (not running)",
        "[post-master-up] apply post-master-up hook k3s-post-master-up.yml",
        "[agents] hook before agents: date +%s.%N > /root/before-agents",
        "[agents] start k3s-agent (not running)",
    ] {
        assert!(plan.contains(line), "plan lacks {line:?}:\n{plan}");
    }
    assert!(lab.absent("node1", "/usr/local/bin/k3s"), "plan must not install anything");

    // A node that never becomes Ready is named, with its service's own log lines, within the
    // bound instead of a hang. (A drop-in makes the agent fail the way a bad flag does.)
    lab.sh(
        "node2",
        "mkdir -p /etc/systemd/system/k3s-agent.service.d && printf '[Service]\\nExecStart=\\nExecStart=/usr/local/bin/k3s agent --not-a-k3s-flag\\n' > /etc/systemd/system/k3s-agent.service.d/broken.conf",
    );
    let started = Instant::now();
    let out = lab.pikube(&["up", "-f", file_arg, "--ready-timeout", "15"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(90), "the readiness wait must be bounded");
    let report = stdout(&out);
    let node2 = section(&report, "node2");
    assert!(node2.starts_with("node2 (10.77.41.12): FAILED\n"), "{report}");
    assert!(node2.contains("service not active after 15s; last lines of k3s-agent:"), "{report}");
    assert!(node2.contains("flag provided but not defined: -not-a-k3s-flag"), "node2's own log:\n{report}");
    assert_eq!(status_of(&report, "node1"), "changed", "the healthy server still converges:\n{report}");
    lab.sh("node2", "rm -r /etc/systemd/system/k3s-agent.service.d");

    let log = up_ok(&lab);
    let token = std::fs::read_to_string(lab.dir().join(".pikube/k3s-single/token")).unwrap();
    assert_eq!(mode_of(&lab.dir().join(".pikube/k3s-single/token")), 0o600);
    assert!(!log.contains(token.trim()), "the join token must never be printed");

    // The node's files: pikube's own config, 0600 because it holds the token; node-ip from the file.
    let config = lab.sh("node1", "cat /etc/rancher/k3s/config.yaml");
    assert!(config.contains("node-ip: \"10.77.41.11\""), "{config}");
    assert!(config.contains("tls-san:\n  - \"10.77.41.11\""), "{config}");
    assert!(!config.contains("cluster-init"), "a single server keeps the default datastore:\n{config}");
    assert_eq!(lab.sh("node1", "stat -c %a /etc/rancher/k3s/config.yaml"), "600");
    assert_eq!(lab.sh("node1", "systemctl is-enabled k3s"), "enabled");
    assert!(lab.sh("node2", "cat /etc/rancher/k3s/config.yaml").contains("server: \"https://10.77.41.11:6443\""));
    let registries = lab.sh("node2", "cat /etc/rancher/k3s/registries.yaml");
    assert!(
        registries.contains("\"docker.io\":\n    endpoint:\n      - \"https://registry.lab:5000\""),
        "{registries}"
    );
    assert!(lab.sh("node2", "journalctl -u k3s-agent -o cat").contains("Using private registry config file"));
    let version = lab.sh("node1", "k3s --version");
    assert!(version.starts_with("k3s version v1.31.4+k3s1") && version.contains("STAND-IN"), "{version}");

    assert_eq!(api_field(&lab, "node1", "node node2", "/metadata/labels/disk"), "ssd");
    assert_eq!(
        api_field(&lab, "node1", "node node2", "/spec/taints"),
        serde_json::json!([{"key": "dedicated", "value": "edge", "effect": "NoSchedule"}])
    );

    // Hooks ran: the k3s-specific manifest (the broken generic one would have failed) and the
    // host hook, before the agent's k3s was started.
    assert!(lab.ssh("node1", "k3s kubectl get configmap from-hook -n kube-system").0, "{log}");
    // Both clocks in microseconds, no slack: the hook ran before the agent's process started.
    let hook_ran: f64 = lab.sh("node2", "cat /root/before-agents").parse().unwrap();
    let agent_started: f64 = lab
        .sh(
            "node2",
            "date -d \"$(systemctl show -p ExecMainStartTimestamp --value --timestamp=us+utc k3s-agent)\" +%s.%N",
        )
        .parse()
        .unwrap();
    assert!(hook_ran < agent_started, "host hook ran at {hook_ran}, after the agent started at {agent_started}");

    // The kubeconfig: 0600, endpoint = the single server, named after the cluster.
    let kubeconfig = lab.dir().join("build/k3s-single-config.yml");
    assert_eq!(mode_of(&kubeconfig), 0o600);
    let kc = std::fs::read_to_string(&kubeconfig).unwrap();
    assert!(kc.contains("server: https://10.77.41.11:6443") && kc.contains("current-context: k3s-single"), "{kc}");
    if let Some(kubectl) = real_kubectl() {
        let nodes = nodes_via_endpoint(&lab, &kubectl).expect("kubectl reaches the endpoint");
        assert!(all_ready(&nodes, &["node1", "node2"]), "{nodes:?}");
    } else {
        assert!(all_ready(&nodes_on(&lab, "node1"), &["node1", "node2"]));
    }

    // `kubeconfig --merge` adds a context to an existing ~/.kube/config, keeping the others.
    let home = lab.dir().join("home");
    std::fs::create_dir_all(home.join(".kube")).unwrap();
    std::fs::write(
        home.join(".kube/config"),
        "apiVersion: v1\nkind: Config\nclusters:\n- name: work\n  cluster:\n    server: https://work.example:6443\ncontexts:\n- name: work\n  context:\n    cluster: work\n    user: work\ncurrent-context: work\nusers:\n- name: work\n  user:\n    token: abc\n",
    )
    .unwrap();
    let out = lab.pikube_env(&["kubeconfig", "-f", file_arg, "--merge"], &[("HOME", home.to_str().unwrap())]);
    assert!(out.status.success(), "{}", text(&out));
    let merged = std::fs::read_to_string(home.join(".kube/config")).unwrap();
    assert!(merged.contains("name: work") && merged.contains("current-context: k3s-single"), "{merged}");
    assert_eq!(mode_of(&home.join(".kube/config")), 0o600);

    // Converged: a second up changes nothing and restarts nothing (host hooks still run, as
    // k0sctl's do, so node2 reports its hook as a change).
    let runs = || (unit_run(&lab, "node1", "k3s"), unit_run(&lab, "node2", "k3s-agent"));
    let before = runs();
    let out = up(&lab);
    assert!(out.status.success(), "{}", text(&out));
    let again = stdout(&out);
    assert_eq!(section(&again, "node1"), "node1 (10.77.41.11): no changes", "{again}");
    assert_eq!(
        section(&again, "node2"),
        "node2 (10.77.41.12): changed\n  [agents] hook before agents: date +%s.%N > /root/before-agents",
        "{again}"
    );
    assert_eq!(runs(), before, "a no-op up restarted k3s");

    // status shows both nodes Ready.
    let out = lab.pikube(&["status", "-f", file_arg]);
    assert!(out.status.success(), "{}", text(&out));
    let table = stdout(&out);
    assert_eq!(status_row(&table, "node1"), "node1 server 10.77.41.11 k3s active Ready", "{table}");
    assert_eq!(status_row(&table, "node2"), "node2 agent 10.77.41.12 k3s-agent active Ready", "{table}");

    // Labels and taints changed in the file later reach the existing node through the API
    // (k3s itself applies them only when a node registers).
    let changed = std::fs::read_to_string(&file)
        .unwrap()
        .replace("      disk: ssd\n", "      disk: hdd\n")
        .replace("[\"dedicated=edge:NoSchedule\"]", "[\"dedicated=edge:NoSchedule\", \"zone=b:PreferNoSchedule\"]");
    assert!(changed.contains("disk: hdd") && changed.contains("zone=b"));
    std::fs::write(&file, changed).unwrap();
    // A changed post-master-up manifest is applied again, in the same run.
    let hook = hooks.join("k3s-post-master-up.yml");
    let manifest = std::fs::read_to_string(&hook).unwrap();
    std::fs::write(&hook, format!("{manifest}  rev: \"2\"\n")).unwrap();
    let before = runs();
    let out = up(&lab);
    assert!(out.status.success(), "{}", text(&out));
    let report = stdout(&out);
    // The API calls run on the server, so its section lists them.
    let node1_report = section(&report, "node1");
    assert!(node1_report.contains("\n  [ready] label node node2: disk=hdd"), "{report}");
    assert!(node1_report.contains("\n  [ready] taint node node2: zone=b:PreferNoSchedule"), "{report}");
    assert_eq!(api_field(&lab, "node1", "node node2", "/metadata/labels/disk"), "hdd");
    let taints = api_field(&lab, "node1", "node node2", "/spec/taints");
    assert!(
        taints.as_array().unwrap().iter().any(|t| t["key"] == "zone" && t["effect"] == "PreferNoSchedule"),
        "{taints}"
    );
    assert!(node1_report.contains("\n  [post-master-up] apply post-master-up hook k3s-post-master-up.yml"), "{report}");
    assert_eq!(api_field(&lab, "node1", "configmap from-hook -n kube-system", "/data/rev"), "2");
    // Only node2's config changed (its node-label/node-taint): only node2's k3s restarted.
    let after = runs();
    assert_eq!(after.0, before.0, "node1's config did not change, yet k3s restarted:\n{report}");
    assert_ne!(after.1, before.1, "node2's config changed, yet k3s-agent did not restart:\n{report}");
    let node2_report = section(&report, "node2");
    assert!(node2_report.contains("\n  [agents] restart k3s-agent (configuration or binary changed)"), "{report}");
    // Unchanged: no hook applied again, no label set, nothing restarted.
    let out = up(&lab);
    assert_eq!(section(&stdout(&out), "node1"), "node1 (10.77.41.11): no changes", "{}", text(&out));
    assert!(!stdout(&out).contains("label node"), "{}", text(&out));
    assert_eq!(runs(), after, "an unchanged cluster file restarted k3s:\n{}", text(&out));

    // The pinned-version check: a k3s of another release put on a node by hand is replaced by
    // the pinned one and that node's k3s restarted onto it; the server is left alone.
    let other = standin_release("v1.31.5+k3s1");
    // Copied in through the node's root file system as the lab mounts it (nodes/<node>/merged).
    std::fs::copy(other.join("k3s"), lab.dir().join("nodes/node2/merged/root/k3s-other")).unwrap();
    let by_hand =
        lab.sh("node2", "install -m 755 /root/k3s-other /usr/local/bin/k3s && rm /root/k3s-other && k3s --version");
    assert!(by_hand.starts_with("k3s version v1.31.5+k3s1"), "{by_hand}");
    let before = runs();
    let out = up(&lab);
    assert!(out.status.success(), "{}", text(&out));
    let report = stdout(&out);
    let node2_report = section(&report, "node2");
    assert!(node2_report.contains("\n  [artifacts] update /usr/local/bin/k3s"), "{report}");
    assert!(node2_report.contains("\n  [agents] restart k3s-agent (configuration or binary changed)"), "{report}");
    assert!(lab.sh("node2", "k3s --version").starts_with("k3s version v1.31.4+k3s1"));
    assert_eq!(versions_on(&lab, "node1").get("node2").map(String::as_str), Some("v1.31.4+k3s1"), "{report}");
    let after = runs();
    assert_eq!(after.0, before.0, "only node2's binary changed, yet node1 restarted:\n{report}");
    assert_ne!(after.1, before.1, "node2 still runs the other release:\n{report}");

    // A pod without a controller on the agent: drain is never forced (the pod would be gone
    // for good), so down --limit stops, names it, and leaves node2 schedulable and not reset.
    let bare = "apiVersion: v1\nkind: Pod\nmetadata: {name: bare, namespace: default}\nspec:\n  nodeName: node2\n  containers: [{name: app, image: registry.example/app:1}]\n";
    lab.sh("node1", &format!("k3s kubectl apply -f - <<'EOF'\n{bare}EOF"));
    let out = lab.pikube(&["down", "-f", file_arg, "--limit", "node2", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "a bare pod must stop the removal:\n{}", text(&out));
    let said = stdout(&out);
    assert!(
        said.contains("could not drain node2 (nothing forced, up to 120s): it was not reset and is schedulable again"),
        "{}",
        text(&out)
    );
    assert!(said.contains("cannot delete Pods that declare no controller"), "{}", text(&out));
    assert!(said.contains("default/bare"), "{}", text(&out));
    assert!(nodes_on(&lab, "node1").contains_key("node2"), "node2 deleted from the API");
    assert_ne!(api_field(&lab, "node1", "node node2", "/spec/unschedulable"), true, "node2 left cordoned");
    assert!(!lab.absent("node2", "/usr/local/bin/k3s"), "node2 was reset");

    // Once a controller owns the pod, down --limit drains (evicts it) and deletes the agent
    // from the API, then resets it; up brings it back.
    let owned = bare.replace(
        "namespace: default}",
        "namespace: default, ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-6d4b, uid: 5b1e7a6c-0000-0000-0000-000000000002, controller: true}]}",
    );
    lab.sh("node1", &format!("k3s kubectl apply -f - <<'EOF'\n{owned}EOF"));
    let out = lab.pikube(&["down", "-f", file_arg, "--limit", "node2", "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("node2: drain node2 through node1: evict its pods (up to 120s, nothing forced)")
            && text(&out).contains("node2: evicted pod default/bare"),
        "{}",
        text(&out)
    );
    assert!(!nodes_on(&lab, "node1").contains_key("node2"), "node2 still registered");
    assert!(lab.absent("node2", "/usr/local/bin/k3s") && lab.absent("node2", "/etc/rancher/k3s"), "node2 not reset");
    up_ok(&lab);
    assert!(all_ready(&nodes_on(&lab, "node1"), &["node1", "node2"]));

    // Whole teardown: the pre-master-down hook first, then every node reset.
    let out = lab.pikube(&["down", "-f", file_arg]);
    assert_eq!(out.status.code(), Some(2), "down without --yes (and no terminal) must refuse:\n{}", text(&out));
    let out = lab.pikube(&["down", "-f", file_arg, "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node1: apply pre-master-down hook pre-master-down.yml"), "{}", text(&out));
    for node in ["node1", "node2"] {
        // is-active exits 3 when none of the units is active (also when they are gone).
        assert_eq!(lab.status(node, "systemctl is-active k3s k3s-agent"), 3, "{node} still runs k3s");
        assert!(lab.absent(node, "/var/lib/rancher/k3s"), "{node} keeps k3s data");
    }
    assert!(!kubeconfig.exists() && !lab.dir().join(".pikube/k3s-single/token").exists());
}

#[test]
fn ha_cluster_behind_a_load_balancer_survives_losing_a_server() {
    require_lab!();
    let artifacts = standin_artifacts();
    let lab = Lab::up(
        "k3s-lb",
        42,
        &["--nodes", "6", "--servers", "3", "--loadbalancers", "1", "--k3s-artifacts", artifacts.to_str().unwrap()],
    );
    let file_arg = lab.cluster_file().to_str().unwrap().to_string();

    // A failed server stops the ones after it: node2 cannot start (a bad flag in a drop-in),
    // so node3 and the agents are not touched in that run, and the report names node2.
    lab.sh(
        "node2",
        "mkdir -p /etc/systemd/system/k3s.service.d && printf '[Service]\\nExecStart=\\nExecStart=/usr/local/bin/k3s server --not-a-k3s-flag\\n' > /etc/systemd/system/k3s.service.d/broken.conf",
    );
    let out = lab.pikube(&["up", "-f", &file_arg, "--ready-timeout", "15"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = stdout(&out);
    assert_eq!(status_of(&report, "node1"), "changed", "{report}");
    assert_eq!(status_of(&report, "node2"), "FAILED", "{report}");
    assert!(section(&report, "node2").contains("flag provided but not defined: -not-a-k3s-flag"), "{report}");
    for n in ["node3", "node5", "node6"] {
        assert!(section(&report, n).ends_with("\n  error: not joined: server node2 failed before it"), "{report}");
        let touched = [
            "/etc/rancher/k3s/config.yaml",
            "/etc/systemd/system/k3s.service",
            "/etc/systemd/system/k3s-agent.service",
        ];
        assert!(touched.iter().all(|f| lab.absent(n, f)), "{n} was touched after node2 failed:\n{report}");
    }
    let log = format!("{report}{}", String::from_utf8_lossy(&out.stderr));
    let pos = |s: &str| log.find(s).unwrap_or_else(|| panic!("{s:?} missing from:\n{log}"));
    assert!(pos("node1: waiting until Ready") < pos("node2: start k3s"));
    lab.sh("node2", "rm -r /etc/systemd/system/k3s.service.d");

    // Fixed, the line goes on: servers joined one at a time, each waited for before the next.
    let log = up_ok(&lab);
    let pos = |s: &str| log.find(s).unwrap_or_else(|| panic!("{s:?} missing from:\n{log}"));
    assert!(pos("node2: start k3s") < pos("node2: waiting until Ready"));
    assert!(pos("node2: waiting until Ready") < pos("node3: start k3s"));
    assert!(pos("node3: waiting until Ready") < pos("node5: start k3s-agent"));

    // The seed's HAProxy semantics, validated and live on the load balancer.
    let cfg = lab.sh("node4", "cat /etc/haproxy/haproxy.cfg");
    assert!(cfg.contains("option tcp-check") && cfg.contains("balance roundrobin"), "{cfg}");
    assert!(
        cfg.contains("inter 10s downinter 5s rise 2 fall 2 slowstart 60s maxconn 250 maxqueue 256 weight 100"),
        "{cfg}"
    );
    for s in ["node1 10.77.42.11:6443", "node2 10.77.42.12:6443", "node3 10.77.42.13:6443"] {
        assert!(cfg.contains(s), "{cfg}");
    }
    assert_eq!(lab.sh("node4", "systemctl is-active haproxy"), "active");

    // `haproxy -c` refuses a config: node3's address becomes a name only this machine resolves
    // (like a `.local` name on a load balancer without mDNS). up fails on the load balancer with
    // HAProxy's own error, and the running config and process stay as they were.
    let running = unit_run(&lab, "node4", "haproxy");
    let resolves_here = NetnsHosts::add(&lab, "10.77.42.13 node3.lab");
    let known_hosts = lab.dir().join("known_hosts");
    let keys = std::fs::read_to_string(&known_hosts).unwrap();
    let node3_key =
        keys.lines().find(|l| l.starts_with("10.77.42.13 ")).unwrap().replacen("10.77.42.13", "node3.lab", 1);
    std::fs::write(&known_hosts, format!("{keys}{node3_key}\n")).unwrap();
    let good_file = std::fs::read_to_string(lab.cluster_file()).unwrap();
    assert_eq!(good_file.matches("address: 10.77.42.13\n").count(), 1, "{good_file}");
    std::fs::write(lab.cluster_file(), good_file.replace("address: 10.77.42.13\n", "address: node3.lab\n")).unwrap();
    let out = up(&lab);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let lb = section(&stdout(&out), "node4");
    assert!(lb.starts_with("node4 (10.77.42.14): FAILED\n"), "{lb}");
    assert!(lb.contains("\n  error: haproxy -c rejected the generated config, nothing was installed:\n    "), "{lb}");
    let alert =
        lb.lines().find(|l| l.starts_with("    [ALERT]") && l.contains("could not resolve address 'node3.lab'"));
    assert!(alert.is_some(), "HAProxy's own words:\n{lb}");
    assert_eq!(lab.sh("node4", "cat /etc/haproxy/haproxy.cfg"), cfg);
    assert_eq!(unit_run(&lab, "node4", "haproxy"), running, "haproxy was restarted");
    std::fs::write(lab.cluster_file(), good_file).unwrap();
    drop(resolves_here);

    assert!(lab.sh("node1", "cat /etc/rancher/k3s/config.yaml").contains("cluster-init: true"));
    for n in ["node2", "node3", "node5", "node6"] {
        assert!(
            lab.sh(n, "cat /etc/rancher/k3s/config.yaml").contains("server: \"https://10.77.42.14:6443\""),
            "{n} must join through the load balancer"
        );
    }
    let kc_path = lab.dir().join("build/k3s-lb-config.yml");
    let kc = std::fs::read_to_string(&kc_path).unwrap();
    assert!(kc.contains("server: https://10.77.42.14:6443"), "{kc}");
    // `pikube kubeconfig` (re)writes the same file: it talks to servers only, and still
    // points the kubeconfig at the load balancer.
    std::fs::remove_file(&kc_path).unwrap();
    let out = lab.pikube(&["kubeconfig", "-f", lab.cluster_file().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&kc_path).unwrap(), kc);

    let kubectl = real_kubectl();
    let all = ["node1", "node2", "node3", "node5", "node6"];
    let url = "https://10.77.42.14:6443";
    if let Some(k) = &kubectl {
        let nodes = nodes_via_endpoint(&lab, k).expect("kubectl reaches the load balancer");
        assert!(all_ready(&nodes, &all), "{nodes:?}");
        assert!(!nodes.contains_key("node4"), "the load balancer is not a Kubernetes node");
    }

    // Failover: pull the power of the first server. The endpoint keeps answering, and the
    // agents, whose heartbeats go through the load balancer, stay Ready.
    lab.lab("stop", "node1");
    let took = wait_until("the endpoint to answer without node1", Duration::from_secs(20), || {
        endpoint_answers(&lab, kubectl.as_deref(), url)
    });
    eprintln!("endpoint answered {took:?} after node1 went down");
    // k3s marks a silent node NotReady after the 40 s node-monitor grace period.
    wait_until("node1 NotReady with the agents still Ready", Duration::from_secs(90), || {
        let nodes = match &kubectl {
            Some(k) => nodes_via_endpoint(&lab, k).unwrap_or_default(),
            None => nodes_on(&lab, "node2"),
        };
        nodes.get("node1").map(String::as_str) == Some("NotReady")
            && all_ready(&nodes, &["node2", "node3", "node5", "node6"])
    });
    // status exits 1 while a server is not Ready, and says which one and why.
    let out = lab.pikube(&["status", "-f", &file_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let table = stdout(&out);
    assert_eq!(status_row(&table, "node1"), "node1 server 10.77.42.11 unreachable NotReady", "{table}");
    assert_eq!(status_row(&table, "node2"), "node2 server 10.77.42.12 k3s active Ready", "{table}");

    // With node1 back, up converges and a further up is a no-op.
    lab.lab("start", "node1");
    up_ok(&lab);
    let nodes = match &kubectl {
        Some(k) => nodes_via_endpoint(&lab, k).unwrap(),
        None => nodes_on(&lab, "node1"),
    };
    assert!(all_ready(&nodes, &all), "{nodes:?}");
    let out = up(&lab);
    assert!(stdout(&out).lines().any(|l| l.starts_with("Up: no changes; ")), "{}", text(&out));

    // Rolling upgrade: pin a new release. First node1, the first server restarted, never gets
    // Ready on it (a host fault: a drop-in whose ExecStartPre fails). The run fails naming
    // node1, and no other node is restarted, though the new binary was pushed to all of them.
    let v2 = standin_release("v1.31.5+k3s1");
    let file = std::fs::read_to_string(lab.cluster_file()).unwrap();
    let upgraded = file
        .replace("version: v1.31.4+k3s1", "version: v1.31.5+k3s1")
        .replace(artifacts.to_str().unwrap(), v2.to_str().unwrap());
    assert_ne!(file, upgraded);
    std::fs::write(lab.cluster_file(), upgraded).unwrap();
    lab.sh(
        "node1",
        "mkdir -p /etc/systemd/system/k3s.service.d && printf '[Service]\\nExecStartPre=/bin/sh -c \"echo held back by the test >&2; exit 1\"\\n' > /etc/systemd/system/k3s.service.d/held.conf",
    );
    let others = [("node2", "k3s"), ("node3", "k3s"), ("node5", "k3s-agent"), ("node6", "k3s-agent")];
    let runs = || others.map(|(n, u)| unit_run(&lab, n, u));
    let before = runs();
    let out = lab.pikube(&["up", "-f", &file_arg, "--ready-timeout", "8"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = stdout(&out);
    assert_first_server_failed_alone(&report, "held back by the test", &others);
    for (n, _) in others {
        assert!(section(&report, n).contains("\n  [artifacts] update /usr/local/bin/k3s"), "{report}");
    }
    assert_eq!(runs(), before, "a node was restarted after the first server failed:\n{report}");
    let versions = versions_on(&lab, "node2");
    for n in ["node2", "node3", "node5", "node6"] {
        assert_eq!(versions.get(n).map(String::as_str), Some("v1.31.4+k3s1"), "{versions:?}");
    }

    // Fixed, the next up finishes the upgrade: the other nodes' binaries are current on disk
    // already, yet their k3s still runs the replaced one, so they restart one at a time.
    lab.sh("node1", "rm -r /etc/systemd/system/k3s.service.d");
    let log = up_ok(&lab);
    let pos = |s: &str| log.find(s).unwrap_or_else(|| panic!("{s:?} missing from:\n{log}"));
    assert!(pos("node1: start k3s") < pos("node1: waiting until Ready"));
    assert!(pos("node1: waiting until Ready") < pos("node2: restart k3s"));
    assert!(pos("node2: waiting until Ready") < pos("node3: restart k3s"));
    assert!(pos("node3: waiting until Ready") < pos("node5: restart k3s-agent"));
    // Each running node was drained before its restart; node1, drained in the failed run,
    // is uncordoned once Ready on the new release, and so is every other.
    assert!(pos("node2: drain node2") < pos("node2: restart k3s"));
    assert!(pos("node5: drain node5") < pos("node5: restart k3s-agent"));
    assert!(pos("node1: waiting until Ready") < pos("node1: uncordon node1"));
    assert!(!lab.sh("node2", "k3s kubectl get nodes --no-headers").contains("SchedulingDisabled"));
    let versions = versions_on(&lab, "node2");
    assert!(all_ready(&nodes_on(&lab, "node2"), &all));
    for n in all {
        assert_eq!(versions.get(n).map(String::as_str), Some("v1.31.5+k3s1"), "{versions:?}");
    }

    // A failed upgrade: the newly pinned release's binary cannot run k3s. Draining node1, the
    // first to go, already runs it (`k3s kubectl` on node2): node1 fails, named with the
    // binary's own words, and no node is restarted onto it, node1 included.
    let broken = lab.dir().join("broken-release");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("k3s"),
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'k3s version v1.31.6+k3s1 (broken build)'; exit 0; fi\necho 'fatal: this build cannot start' >&2\nexit 1\n",
    )
    .unwrap();
    let sum = Command::new("sha256sum").arg("k3s").current_dir(&broken).output().unwrap();
    std::fs::write(broken.join("sha256sum-amd64.txt"), &sum.stdout).unwrap();
    let file = std::fs::read_to_string(lab.cluster_file()).unwrap();
    let pinned = file
        .replace("version: v1.31.5+k3s1", "version: v1.31.6+k3s1")
        .replace(v2.to_str().unwrap(), broken.to_str().unwrap());
    assert_ne!(file, pinned);
    std::fs::write(lab.cluster_file(), pinned).unwrap();
    let before = (unit_run(&lab, "node1", "k3s"), runs());
    let out = lab.pikube(&["up", "-f", &file_arg, "--ready-timeout", "8"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = stdout(&out);
    let node1 = section(&report, "node1");
    assert!(node1.starts_with("node1 (10.77.42.11): FAILED\n"), "{report}");
    assert!(
        node1.contains(
            "error: cannot drain node1 through node2: `k3s kubectl get nodes` failed: fatal: this build cannot start"
        ),
        "{report}"
    );
    for (n, _) in others {
        assert!(section(&report, n).ends_with("\n  error: left as it is: server node1 failed before it"), "{report}");
    }
    assert_eq!(
        (unit_run(&lab, "node1", "k3s"), runs()),
        before,
        "a node was restarted onto the broken release:\n{report}"
    );
}

/// The upgrade report when node1, restarted first, never got Ready (its own log says
/// `own_log`): node1 failed, and every other node was left as it is after it.
fn assert_first_server_failed_alone(report: &str, own_log: &str, others: &[(&str, &str)]) {
    let node1 = section(report, "node1");
    assert!(node1.starts_with("node1 (10.77.42.11): FAILED\n"), "{report}");
    assert!(node1.contains("\n  [servers] restart k3s (configuration or binary changed)\n"), "{report}");
    assert!(node1.contains("  error: node1 not Ready after 8s"), "{report}");
    assert!(node1.contains(own_log), "node1's own log:\n{report}");
    for (n, _) in others {
        assert!(section(report, n).ends_with("\n  error: left as it is: server node1 failed before it"), "{report}");
    }
}

/// A line for this machine's resolver inside the lab network: `ip netns exec` (which `lab
/// exec` uses) reads `/etc/netns/<netns>/hosts` in place of /etc/hosts. Removed on drop.
struct NetnsHosts(std::path::PathBuf);

impl NetnsHosts {
    fn add(lab: &Lab, line: &str) -> NetnsHosts {
        // The netns is this test's own lab's: a leftover is from an interrupted run of it.
        let dir = Path::new("/etc/netns").join(format!("pikube-{}", lab.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts"), format!("127.0.0.1 localhost\n{line}\n")).unwrap();
        NetnsHosts(dir)
    }
}

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn ha_cluster_on_a_keepalived_vip_fails_over() {
    require_lab!();
    let artifacts = standin_artifacts();
    let lab = Lab::up(
        "k3s-vip",
        43,
        &["--nodes", "5", "--servers", "3", "--vip", "--k3s-artifacts", artifacts.to_str().unwrap()],
    );
    up_ok(&lab);
    let vip = "10.77.43.10";
    let servers = ["node1", "node2", "node3"];
    let holders = || lab.holders_of(&servers, vip);
    let before = holders();
    assert_eq!(before.len(), 1, "exactly one server holds the VIP: {before:?}");
    assert_eq!(lab.sh("node1", "stat -c %a /etc/keepalived/keepalived.conf"), "600");
    for n in ["node4", "node5"] {
        assert!(lab.sh(n, "cat /etc/rancher/k3s/config.yaml").contains(&format!("server: \"https://{vip}:6443\"")));
    }
    assert!(lab.sh("node2", "cat /etc/rancher/k3s/config.yaml").contains(&format!("  - \"{vip}\"")), "VIP in tls-san");
    let kubectl = real_kubectl();
    let url = format!("https://{vip}:6443");
    if let Some(k) = &kubectl {
        let nodes = nodes_via_endpoint(&lab, k).expect("kubectl reaches the VIP");
        assert!(all_ready(&nodes, &["node1", "node2", "node3", "node4", "node5"]), "{nodes:?}");
    }

    // The API dies but the host stays up: keepalived's check fails there and another server
    // takes the address within seconds; the endpoint answers through it.
    let holder = before[0];
    lab.sh(holder, "systemctl stop k3s");
    let took = wait_until(
        "the VIP to leave the server whose API stopped",
        Duration::from_secs(20),
        || matches!(holders()[..], [h] if h != holder),
    );
    wait_until("the VIP endpoint to answer from another server", Duration::from_secs(20), || {
        endpoint_answers(&lab, kubectl.as_deref(), &url)
    });
    eprintln!("VIP moved {took:?} after k3s stopped on {holder}");
    assert_eq!(lab.sh(holder, "systemctl is-active keepalived"), "active", "the host stays up");
    // With its API back, the highest-priority server takes the VIP back (keepalived preempts).
    lab.sh(holder, "systemctl start k3s");
    wait_until("the VIP back on its first holder", Duration::from_secs(20), || holders() == [holder]);

    // Pull the power of the VIP holder: another server takes the address within seconds.
    lab.lab("stop", holder);
    let took = wait_until("the VIP endpoint to answer again", Duration::from_secs(20), || {
        endpoint_answers(&lab, kubectl.as_deref(), &url)
    });
    eprintln!("VIP endpoint answered {took:?} after {holder} went down");
    let powered: Vec<&str> = servers.into_iter().filter(|n| *n != holder).collect();
    let after = lab.holders_of(&powered, vip);
    assert!(matches!(after[..], [_]), "VIP moved from {holder} to {after:?}");

    lab.lab("start", holder);
    up_ok(&lab);
    let out = up(&lab);
    assert!(stdout(&out).contains("Up: no changes"), "{}", text(&out));
}

/// Download path (no airgap dir): files come from `download_url` once into the cache and are
/// verified. Served on loopback only.
#[test]
fn artifacts_are_downloaded_once_and_verified() {
    let artifacts = standin_artifacts();
    // The URL escapes the tag's `+` as %2B; the server decodes it, as GitHub does.
    let tag_dir = tempdir("serve").join("v1.31.4+k3s1");
    std::fs::create_dir_all(&tag_dir).unwrap();
    for f in ["k3s", "sha256sum-amd64.txt"] {
        std::fs::copy(artifacts.join(f), tag_dir.join(f)).unwrap();
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut server = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string()])
        .current_dir(tag_dir.parent().unwrap())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 http.server");
    let dir = tempdir("download");
    let cluster = dir.join("cluster.yaml");
    std::fs::write(
        &cluster,
        format!(
            "name: dl\nhosts:\n  - name: a\n    address: 127.0.0.1\n    role: server\nkubernetes:\n  version: v1.31.4+k3s1\n  download_url: http://127.0.0.1:{port}\n"
        ),
    )
    .unwrap();
    let cache = dir.join("cache");
    let fetch = || {
        Command::new(BIN)
            .args(["artifacts", "-f", cluster.to_str().unwrap(), "--arch", "amd64"])
            .env("XDG_CACHE_HOME", &cache)
            .output()
            .unwrap()
    };
    wait_until("the loopback HTTP server", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let out = fetch();
    let cached = cache.join("pikube/k3s/v1.31.4+k3s1/k3s");
    assert!(out.status.success() && cached.exists(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("downloading"), "{}", text(&out));
    assert!(stdout(&out).contains("verified"), "{}", text(&out));

    // Second run: from the cache, no download.
    let _ = server.kill();
    let out = fetch();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("downloading"), "{}", text(&out));

    // A corrupted cached binary is caught.
    std::fs::write(&cached, b"truncated").unwrap();
    let out = fetch();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum mismatch"), "{}", text(&out));
    let _ = server.wait();
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("pikube-k3s-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Two load balancers share a keepalived VIP, so the load balancer is no single point of failure.
#[test]
fn two_load_balancers_share_a_vip() {
    require_lab!();
    let artifacts = standin_artifacts();
    let lab = Lab::up(
        "k3s-2lb",
        44,
        &["--nodes", "4", "--servers", "1", "--loadbalancers", "2", "--k3s-artifacts", artifacts.to_str().unwrap()],
    );
    up_ok(&lab);
    let vip = "10.77.44.10";
    let before = lab.holders_of(&["node2", "node3"], vip);
    assert_eq!(before.len(), 1, "exactly one load balancer holds the VIP: {before:?}");
    for lb in ["node2", "node3"] {
        assert_eq!(lab.sh(lb, "systemctl is-active haproxy keepalived"), "active\nactive");
    }
    assert!(lab.sh("node4", "cat /etc/rancher/k3s/config.yaml").contains(&format!("server: \"https://{vip}:6443\"")));
    let kubectl = real_kubectl();
    let url = format!("https://{vip}:6443");
    assert!(endpoint_answers(&lab, kubectl.as_deref(), &url));

    lab.lab("stop", before[0]);
    let took = wait_until("the VIP to move to the other load balancer", Duration::from_secs(20), || {
        endpoint_answers(&lab, kubectl.as_deref(), &url)
    });
    eprintln!("endpoint answered {took:?} after {} went down", before[0]);
    let other = if before[0] == "node2" { "node3" } else { "node2" };
    let after = lab.holders_of(&[other], vip);
    assert_eq!(after, [other], "VIP moved from {} to {after:?}", before[0]);
    lab.lab("start", before[0]);
    up_ok(&lab);
}
