//! `distribution: kubeadm` on lab hosts with real upstream Kubernetes — no stand-in anywhere:
//! kubeadm, kubelet, kubectl, the control plane images, CoreDNS, pause and flannel come from
//! the airgap directory `pikube lab kubernetes` builds from their Go modules (upstream's
//! release layout), containerd, runc and the CNI plugins from the lab's Debian mirror. pikube
//! renders every file and drives `kubeadm init` / `kubeadm join`; the real kubectl checks.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{kubeadm_leftovers, lab_kubernetes, section, status_row, stdout, text, wait_for, Lab, PROBE_POD};

const VERSION: &str = "v1.34.4";

/// The real kubectl of the release, from inside the lab network, with pikube's kubeconfig.
fn kubectl(lab: &Lab, dir: &Path, args: &[&str]) -> Output {
    lab.kubectl(&dir.join(VERSION).join("bin/linux/amd64/kubectl"), args)
}

fn kubectl_ok(lab: &Lab, dir: &Path, args: &[&str]) -> String {
    lab.kubectl_ok(&dir.join(VERSION).join("bin/linux/amd64/kubectl"), args)
}

/// When kubelet's current process started (changes on every restart).
fn kubelet_started(lab: &Lab, node: &str) -> String {
    lab.sh(node, "systemctl show -p ExecMainStartTimestampMonotonic --value kubelet")
}

#[test]
fn kubeadm_one_server_one_agent_up_noop_plan_down() {
    require_lab!();
    let dir = lab_kubernetes(VERSION);
    let lab = Lab::up("kadm-single", 58, &["--nodes", "2", "--kubeadm", dir.to_str().unwrap()]);
    let file = lab.cluster_file();
    let file_arg = file.to_str().unwrap();
    let cluster_file = std::fs::read_to_string(&file).unwrap();
    assert!(cluster_file.contains("  distribution: kubeadm\n") && cluster_file.contains("  version: v1.34.4\n"));

    // Cluster hooks: kubeadm runs its own file and then the generic one (the generic hook's
    // ConfigMap lives in the namespace kubeadm's hook makes, so the other order fails).
    let hooks = lab.dir().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let configmap =
        |name: &str| format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: hooked\n");
    let namespace = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: hooked\n---\n";
    std::fs::write(hooks.join("k8s-post-master-up.yml"), format!("{namespace}{}", configmap("from-k8s-hook"))).unwrap();
    std::fs::write(hooks.join("post-master-up.yml"), configmap("from-generic-hook")).unwrap();

    // plan names the kubeadm phases per host and changes nothing.
    let out = lab.pikube(&["plan", "-f", file_arg]);
    assert!(out.status.success(), "{}", text(&out));
    let plan = stdout(&out);
    for line in [
        "[artifacts] create /usr/local/bin/kubeadm",
        "[artifacts] create /etc/systemd/system/kubelet.service.d/10-kubeadm.conf",
        "[container runtime] install containerd containernetworking-plugins iptables",
        "[container runtime] import images from amd64.tar",
        "[servers] create /etc/pikube/kubeadm.yaml",
        "[servers] kubeadm init --upload-certs",
        "[pod network] apply the flannel pod network",
        "[post-master-up] apply post-master-up hook k8s-post-master-up.yml",
        "[post-master-up] apply post-master-up hook post-master-up.yml",
        "[agents] kubeadm join",
    ] {
        assert!(plan.contains(line), "plan lacks {line:?}:\n{plan}");
    }
    assert!(lab.absent("node1", "/usr/local/bin/kubeadm"), "plan must not install anything");

    let started = Instant::now();
    let out = lab.pikube(&["up", "-f", file_arg]);
    assert!(out.status.success(), "up failed:\n{}", text(&out));
    eprintln!("first up: {:.1?}", started.elapsed());
    let first = text(&out);

    // The real kubectl, through the kubeconfig pikube wrote, pointing at the endpoint.
    let kubeconfig = lab.dir().join("build/kadm-single-config.yml");
    let kc = std::fs::read_to_string(&kubeconfig).expect("pikube wrote the kubeconfig");
    assert!(kc.contains("server: https://10.77.58.11:6443"), "{kc}");
    let wide = kubectl_ok(&lab, &dir, &["get", "nodes", "-o", "wide", "--no-headers"]);
    eprintln!("{wide}");
    for node in ["node1", "node2"] {
        let row: Vec<&str> =
            wide.lines().find(|l| l.starts_with(node)).expect("node listed").split_whitespace().collect();
        assert_eq!((row[1], row[4]), ("Ready", VERSION), "{node}:\n{wide}");
        assert!(row.last().unwrap().starts_with("containerd://"), "{wide}");
    }

    let hooked = kubectl_ok(&lab, &dir, &["-n", "hooked", "get", "configmaps", "-o", "name"]);
    assert!(hooked.contains("configmap/from-k8s-hook") && hooked.contains("configmap/from-generic-hook"), "{hooked}");

    // The host facts chose containerd's and kube-proxy's settings: lab nodes' root may not
    // lower OOM scores nor set the global conntrack limit.
    let toml = lab.sh("node2", "cat /etc/containerd/config.toml");
    assert!(toml.contains("restrict_oom_score_adj = true") && toml.contains("SystemdCgroup = true"), "{toml}");
    let proxy = kubectl_ok(&lab, &dir, &["-n", "kube-system", "get", "configmap", "kube-proxy", "-o", "yaml"]);
    assert!(proxy.contains("maxPerCore: 0"), "{proxy}");

    // A pod from the archive's image lands on the agent (kubeadm taints the control plane).
    lab.kubectl_apply(&dir.join(VERSION).join("bin/linux/amd64/kubectl"), PROBE_POD);
    wait_for("the probe pod Running", Duration::from_secs(180), Duration::from_secs(3), || {
        // The reason says why not (an eviction under the host's disk pressure, say).
        let jsonpath = "jsonpath={.status.phase} {.spec.nodeName} {.status.reason} {.status.message}";
        let out = stdout(&kubectl(&lab, &dir, &["get", "pod", "probe", "-o", jsonpath]));
        (out.trim() == "Running node2").then_some(()).ok_or(out)
    });

    // Converged: a second up changes nothing on any host, restarts no kubelet, and makes no
    // join token (a token is made only when a node joins).
    let tokens =
        || lab.sh("node1", "kubeadm token list --kubeconfig /etc/kubernetes/admin.conf | awk 'NR > 1 {print $1}'");
    let before = (kubelet_started(&lab, "node1"), kubelet_started(&lab, "node2"), tokens());
    let out = lab.pikube(&["up", "-f", file_arg]);
    assert!(out.status.success(), "{}", text(&out));
    let again = stdout(&out);
    assert!(again.contains("Up: no changes; "), "{again}");
    assert_eq!(section(&again, "node1"), "node1 (10.77.58.11): no changes", "{again}");
    assert_eq!(section(&again, "node2"), "node2 (10.77.58.12): no changes", "{again}");
    assert_eq!((kubelet_started(&lab, "node1"), kubelet_started(&lab, "node2"), tokens()), before);

    // The join token never shows in pikube's output, and its file is gone after the join.
    let tokens = tokens();
    // kubeadm init's token, the one guarding the uploaded certificates, node2's join token.
    assert_eq!(tokens.lines().count(), 3, "{tokens}");
    for token in tokens.lines() {
        assert!(!first.contains(token) && !again.contains(token), "a join token was printed");
    }
    assert_eq!(lab.sh("node2", "ls -A /etc/pikube | grep -c '^.join' || true"), "0", "no join file left");
    // kubeadm init's own output names a token: its log is for root alone.
    assert_eq!(lab.sh("node1", "stat -c %a /var/log/pikube-kubeadm-init.log"), "600");

    // status shows kubelet and the nodes as the API sees them.
    let out = lab.pikube(&["status", "-f", file_arg]);
    assert!(out.status.success(), "{}", text(&out));
    let table = stdout(&out);
    let row = |host: &str| status_row(&table, host);
    assert_eq!(row("node1"), "node1 server 10.77.58.11 kubelet active Ready", "{table}");
    assert_eq!(row("node2"), "node2 agent 10.77.58.12 kubelet active Ready", "{table}");

    // plan on the converged cluster changes nothing either.
    let out = lab.pikube(&["plan", "-f", file_arg]);
    assert!(out.status.success(), "{}", text(&out));
    let plan = stdout(&out);
    assert!(!plan.contains("[servers]") && !plan.contains("[agents]") && !plan.contains("[artifacts]"), "{plan}");

    // A label and a taint added to the file later reach the node through the API (kubelet's
    // flags are only read at join time), without a restart.
    let labelled = cluster_file.replace(
        "    address: 10.77.58.12\n    role: agent\n",
        "    address: 10.77.58.12\n    role: agent\n    labels: {disk: ssd}\n    taints: [\"dedicated=edge:PreferNoSchedule\"]\n",
    );
    assert_ne!(labelled, cluster_file, "the lab's cluster file changed shape:\n{cluster_file}");
    std::fs::write(&file, &labelled).unwrap();
    let kubelet_before = kubelet_started(&lab, "node2");
    let out = lab.pikube(&["up", "-f", file_arg]);
    assert!(out.status.success(), "{}", text(&out));
    let jsonpath =
        "jsonpath={.metadata.labels.disk} {.spec.taints[0].key}={.spec.taints[0].value}:{.spec.taints[0].effect}";
    let node2 = kubectl_ok(&lab, &dir, &["get", "node", "node2", "-o", jsonpath]);
    assert_eq!(node2.trim(), "ssd dedicated=edge:PreferNoSchedule");
    assert_eq!(kubelet_started(&lab, "node2"), kubelet_before, "a label change restarted kubelet");
    std::fs::write(&file, &cluster_file).unwrap();

    // An image the archive brought that kubelet's garbage collection (or anyone) deleted is
    // imported again: an air-gapped node cannot pull it back.
    let gone = "registry.k8s.io/kube-apiserver:v1.34.4";
    lab.sh("node2", &format!("ctr -n k8s.io images rm {gone} >/dev/null"));
    let out = lab.pikube(&["up", "-f", file_arg]);
    assert!(out.status.success(), "{}", text(&out));
    let report = stdout(&out);
    assert!(
        section(&report, "node2")
            .contains(&format!("import images from amd64.tar again (gone from containerd: {gone})")),
        "{report}"
    );
    assert!(!section(&report, "node1").contains("import images"), "{report}");
    assert_eq!(lab.sh("node2", &format!("ctr -n k8s.io images ls -q name=={gone}")), gone);

    proxy_with_a_password_stays_root_only(&lab, &file, &cluster_file);

    // `kubeconfig --merge` adds the cluster's context to an existing ~/.kube/config, keeping the
    // others, and the real kubectl works with it.
    let home = lab.dir().join("home");
    std::fs::create_dir_all(home.join(".kube")).unwrap();
    std::fs::write(
        home.join(".kube/config"),
        "apiVersion: v1\nkind: Config\nclusters:\n- name: work\n  cluster:\n    server: https://work.example:6443\ncontexts:\n- name: work\n  context:\n    cluster: work\n    user: work\ncurrent-context: work\nusers:\n- name: work\n  user:\n    token: abc\n",
    )
    .unwrap();
    let out = lab.pikube_env(&["kubeconfig", "-f", file_arg, "--merge"], &[("HOME", home.to_str().unwrap())]);
    assert!(out.status.success(), "{}", text(&out));
    let merged_path = home.join(".kube/config");
    let merged = std::fs::read_to_string(&merged_path).unwrap();
    assert!(merged.contains("name: work") && merged.contains("current-context: kadm-single"), "{merged}");
    let kubectl_bin = dir.join(VERSION).join("bin/linux/amd64/kubectl");
    let via_merged = lab.exec(
        kubectl_bin.to_str().unwrap(),
        &["--kubeconfig", merged_path.to_str().unwrap(), "get", "nodes", "--no-headers"],
    );
    assert!(via_merged.status.success() && stdout(&via_merged).contains("node2"), "{}", text(&via_merged));

    // down: kubeadm reset plus what it leaves by design; checked on the nodes themselves.
    let out = lab.pikube(&["down", "-f", file_arg, "--yes"]);
    assert!(out.status.success(), "down failed:\n{}", text(&out));
    for node in ["node1", "node2"] {
        assert_eq!(kubeadm_leftovers(&lab, node), "", "{node}: left after down");
    }
    assert!(!kubeconfig.exists(), "down removes the kubeconfig it wrote");

    // The nodes are reusable: the next up makes the cluster again.
    let out = lab.pikube(&["up", "-f", file_arg]);
    assert!(out.status.success(), "up after down failed:\n{}", text(&out));
    let nodes = kubectl_ok(&lab, &dir, &["get", "nodes", "--no-headers"]);
    assert_eq!(nodes.lines().filter(|l| l.split_whitespace().nth(1) == Some("Ready")).count(), 2, "{nodes}");
}

/// A proxy whose URL holds a password (percent-encoded, as URLs need it): containerd gets it
/// from a 0600 environment file, so another user reads it neither there, nor in the unit's
/// drop-in, nor through `systemctl show`, and `%` is no systemd specifier on the way. Nothing
/// listens at that address in the lab, and nothing dials it: the images come from the archive.
fn proxy_with_a_password_stays_root_only(lab: &Lab, file: &Path, cluster_file: &str) {
    let url = "http://pikube:S3cr%40t@10.77.58.1:3128";
    let env = "/etc/systemd/system/containerd.service.d/pikube-proxy.env";
    let dropin = "/etc/systemd/system/containerd.service.d/pikube-proxy.conf";
    std::fs::write(file, format!("{cluster_file}proxy:\n  http: {url}\n  https: {url}\n")).unwrap();
    let out = lab.pikube(&["up", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("S3cr"), "the proxy password was printed:\n{}", text(&out));
    for node in ["node1", "node2"] {
        assert!(section(&stdout(&out), node).contains(&format!("[container runtime] create {env}")), "{}", text(&out));
        lab.sh(node, "id prober >/dev/null 2>&1 || useradd -M prober");
        let as_prober = |cmd: &str| lab.ssh(node, &format!("runuser -u prober -- {cmd}"));
        assert!(!as_prober(&format!("cat {env}")).0, "{node}: another user reads the proxy password");
        let (read, text) = as_prober(&format!("cat {dropin}"));
        assert!(read && text.contains(&format!("EnvironmentFile={env}")) && !text.contains("S3cr"), "{node}: {text}");
        let (asked, shown) = as_prober("systemctl show containerd -p Environment -p EnvironmentFiles");
        assert!(asked && shown.contains(env) && !shown.contains("S3cr"), "{node}: systemctl show: {shown}");
        assert_eq!(lab.sh(node, &format!("stat -c %a {env}")), "600");
        // containerd runs with the URL as written.
        let environ = lab.sh(
            node,
            "tr '\\0' '\\n' < /proc/$(systemctl show -p MainPID --value containerd)/environ | grep -E '^HTTPS?_PROXY='",
        );
        assert_eq!(environ, format!("HTTP_PROXY={url}\nHTTPS_PROXY={url}"), "{node}");
    }
    // Without the proxy, its files go again, apt's too.
    std::fs::write(file, cluster_file).unwrap();
    let out = lab.pikube(&["up", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    for node in ["node1", "node2"] {
        let report = section(&stdout(&out), node);
        assert!(report.contains(&format!("remove {env} (no proxy in the cluster file)")), "{report}");
        let (left, paths) = lab.ssh(node, &format!("ls {env} {dropin} /etc/apt/apt.conf.d/80pikube-proxy 2>/dev/null"));
        assert!(!left && paths.is_empty(), "{node}: left {paths}");
    }
}
