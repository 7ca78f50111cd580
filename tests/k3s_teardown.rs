//! `pikube down` against what k3s really leaves on a node: the k3s STAND-IN (a labelled test
//! double installed through the airgap artifact directory) re-execs as `k3s-server`/
//! `k3s-agent`, starts a containerd shim that outlives its unit, and creates the `cni0`
//! bridge with a pod's veth, the `flannel.1` VXLAN device, KUBE-/CNI-/FLANNEL iptables chains
//! and an ip6tables chain, a CNI network namespace, a container's rootfs mount under /run/k3s
//! and a pod's tmpfs volume; pikube links kubectl/crictl/ctr to k3s. Everything else
//! (systemd, sshd, apt, mounts, iptables) is real, on lab hosts.

mod common;

use std::process::Output;

use common::{standin_artifacts, stdout, text, Lab};

/// A pod's volume directory on the agent, as the kubelet lays out an NFS volume.
const VOLUMES: &str = "/var/lib/kubelet/pods/0d5c1c9e-teardown-test/volumes/kubernetes.io~nfs";

fn up_ok(lab: &Lab) {
    let file = lab.cluster_file();
    let out = lab.pikube(&["up", "-f", file.to_str().unwrap(), "--ready-timeout", "90"]);
    assert!(out.status.success(), "pikube up failed:\n{}", text(&out));
}

fn down(lab: &Lab, extra: &[&str]) -> Output {
    let file = lab.cluster_file();
    let mut args = vec!["down", "-f", file.to_str().unwrap(), "--yes"];
    args.extend_from_slice(extra);
    lab.pikube(&args)
}

/// Everything of k3s on `node` that a teardown must remove, one line each; empty when clean.
/// The test's own list (upstream's killall/uninstall contract), not pikube's check.
fn k3s_traces(lab: &Lab, node: &str) -> String {
    lab.sh(
        node,
        r#"pgrep -a -x 'k3s|k3s-server|k3s-agent|k3s-init'
pgrep -a -f '^/var/lib/rancher/k3s/data/[^/]*/bin/containerd-shim'
for i in cni0 flannel.1 flannel-v6.1 flannel-wg flannel-wg-v6 kube-ipvs0; do ip link show "$i" >/dev/null 2>&1 && echo "interface $i"; done
ip -o link show type veth | grep -oE ' veth[0-9a-f]{8}' | sed 's/^ /interface /'
ip netns list | grep cni-
for t in iptables-save ip6tables-save; do command -v $t >/dev/null && $t | grep -E 'KUBE-|CNI-|FLANNEL'; done
awk '$5 ~ "^(/run/k3s|/var/lib/kubelet|/var/lib/rancher/k3s|/run/netns/cni-)" { print "mount " $5 }' /proc/self/mountinfo
ls -d /etc/rancher/k3s /var/lib/rancher/k3s /var/lib/kubelet /run/k3s /run/flannel /var/lib/cni /usr/local/bin/k3s /etc/systemd/system/k3s*.service* 2>/dev/null
for l in kubectl crictl ctr; do [ "$(readlink /usr/local/bin/$l)" = k3s ] && echo "link /usr/local/bin/$l -> k3s"; done
true"#,
    )
}

/// A directory of the node standing for an NFS export, with a canary file, bind-mounted as
/// the pod volume `name`.
fn mount_volume(lab: &Lab, node: &str, name: &str) {
    lab.sh(
        node,
        &format!(
            "mkdir -p /srv/export-{name} {VOLUMES}/{name} && echo precious > /srv/export-{name}/canary && \
             mount --bind /srv/export-{name} {VOLUMES}/{name} && test -f {VOLUMES}/{name}/canary"
        ),
    );
}

fn canary(lab: &Lab, node: &str, name: &str) -> String {
    lab.sh(node, &format!("cat /srv/export-{name}/canary"))
}

/// What the stand-in leaves while running, checked before a teardown so that it is tested
/// against real leftovers.
fn assert_k3s_traces(lab: &Lab, node: &str, process: &str) {
    let traces = k3s_traces(lab, node);
    for want in [
        process,
        "containerd-shim",
        "interface cni0",
        "interface veth",
        "interface flannel.1",
        ":KUBE-FORWARD",
        ":CNI-FORWARD",
        ":FLANNEL-FWD",
        "mount /run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io/",
        "mount /var/lib/kubelet/pods/",
        "/run/flannel",
        "link /usr/local/bin/kubectl -> k3s",
        "link /usr/local/bin/crictl -> k3s",
        "link /usr/local/bin/ctr -> k3s",
    ] {
        assert!(traces.contains(want), "{node} lacks {want:?} while k3s runs:\n{traces}");
    }
    let ip6 = lab.sh(node, "ip6tables-save");
    assert!(ip6.contains(":KUBE-FORWARD"), "{node} lacks kube-proxy's ip6tables chain while k3s runs:\n{ip6}");
    assert_eq!(lab.status(node, "pgrep -x k3s"), 1, "real k3s runs as {process}, never as `k3s`:\n{traces}");
}

#[test]
fn down_removes_what_k3s_leaves_and_never_deletes_through_a_mount() {
    require_lab!();
    let artifacts = standin_artifacts();
    let lab = Lab::up("k3s-down-a", 90, &["--nodes", "2", "--k3s-artifacts", artifacts.to_str().unwrap()]);
    // Real k3s brings its own iptables; the stand-in uses the node's.
    let mut file = std::fs::read_to_string(lab.cluster_file()).unwrap();
    file.push_str(
        "hooks:\n  hosts:\n    - phase: k3s artifacts\n      when: before\n      \
         run: command -v iptables-save >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q iptables\n",
    );
    std::fs::write(lab.cluster_file(), file).unwrap();
    up_ok(&lab);
    assert_k3s_traces(&lab, "node1", "k3s-server");
    assert_k3s_traces(&lab, "node2", "k3s-agent");

    // One idle volume and one a process holds open (it cannot be unmounted).
    mount_volume(&lab, "node2", "data");
    mount_volume(&lab, "node2", "busy");
    lab.sh(
        "node2",
        &format!("systemd-run --unit hold-volume sh -c 'cd {VOLUMES}/busy && exec sleep infinity' && sleep 1"),
    );
    let out = down(&lab, &["--limit", "node2"]);
    assert_eq!(
        canary(&lab, "node2", "data"),
        "precious",
        "down deleted a volume's data through its mount:\n{}",
        text(&out)
    );
    assert_eq!(canary(&lab, "node2", "busy"), "precious", "down deleted a busy volume's data:\n{}", text(&out));
    assert_eq!(out.status.code(), Some(1), "a volume left mounted is a leftover:\n{}", text(&out));
    let report = stdout(&out);
    for want in [
        "node2: FAILED",
        &format!("mount {VOLUMES}/busy (could not be unmounted"),
        "/var/lib/kubelet (not deleted:",
        "fuser -vm",
    ] {
        assert!(report.contains(want), "the run does not say {want:?}:\n{}", text(&out));
    }
    let traces = k3s_traces(&lab, "node2");
    let unexpected: Vec<&str> = traces
        .lines()
        .filter(|l| !l.starts_with(&format!("mount {VOLUMES}/busy")) && *l != "/var/lib/kubelet")
        .collect();
    assert!(unexpected.is_empty(), "only the busy volume (and the directory above it) may stay:\n{traces}");
    assert!(!lab.sh("node1", "k3s kubectl get nodes --no-headers").contains("node2"), "node2 is still in the API");

    // Once the volume is free, `down` again finishes the job.
    lab.sh("node2", "systemctl stop hold-volume");
    let out = down(&lab, &["--limit", "node2"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(k3s_traces(&lab, "node2"), "", "left on node2 after down");
    assert_eq!(canary(&lab, "node2", "busy"), "precious");
    assert_k3s_traces(&lab, "node1", "k3s-server");

    // The agent rejoins; then the whole cluster goes.
    up_ok(&lab);
    assert_k3s_traces(&lab, "node2", "k3s-agent");
    mount_volume(&lab, "node2", "again");
    let out = down(&lab, &[]);
    assert_eq!(canary(&lab, "node2", "again"), "precious", "down deleted a volume's data:\n{}", text(&out));
    assert!(out.status.success(), "{}", text(&out));
    for node in ["node1", "node2"] {
        assert_eq!(k3s_traces(&lab, node), "", "left on {node} after down");
    }

    // A later `up` converges on the cleaned nodes.
    up_ok(&lab);
    let nodes = lab.sh("node1", "k3s kubectl get nodes --no-headers");
    assert_eq!(nodes.lines().filter(|l| l.split_whitespace().nth(1) == Some("Ready")).count(), 2, "{nodes}");
}
