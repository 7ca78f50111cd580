//! Real upstream Kubernetes on a lab node — no stand-in anywhere: kubeadm, kubelet, kubectl, the
//! control plane, etcd, CoreDNS, pause and flannel are built from their Go modules (and pause from
//! its C source) by `pikube lab kubernetes`, into the airgap layout users mirror from upstream. A
//! node gets Debian's containerd, runc and CNI plugins from the lab mirror, the binaries and image
//! archive from that directory, and a kubeadm configuration written by hand; then the real
//! `kubeadm init` runs and the real kubectl shows the cluster working.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{lab_kubernetes, stdout, text, wait_for, Lab, BIN, PROBE_POD};

const VERSION: &str = "v1.34.4";
const NODE_IP: &str = "10.77.57.11";

/// Writes `input` to `remote` on a node over SSH (atomically, with `mode`), as pikube pushes files.
fn put(lab: &Lab, node: &str, remote: &str, mode: &str, input: Stdio) {
    let out = Command::new(BIN)
        .args(["lab", "ssh", "--name", &lab.name, node, "--"])
        .arg(format!(
            "mkdir -p \"$(dirname {remote})\" && cat > {remote}.part && chmod {mode} {remote}.part && mv {remote}.part {remote}"
        ))
        .stdin(input)
        .output()
        .expect("run lab ssh");
    assert!(out.status.success(), "writing {node}:{remote} failed:\n{}", text(&out));
}

fn push(lab: &Lab, node: &str, local: &Path, remote: &str, mode: &str) {
    let file = std::fs::File::open(local).unwrap_or_else(|e| panic!("open {}: {e}", local.display()));
    put(lab, node, remote, mode, Stdio::from(file));
}

fn write(lab: &Lab, node: &str, remote: &str, contents: &str) {
    let tmp = lab.dir().join("upload.tmp");
    std::fs::write(&tmp, contents).unwrap();
    push(lab, node, &tmp, remote, "644");
}

/// The kubelet unit and kubeadm drop-in as upstream's packages ship them (kubelet in /usr/local/bin).
const KUBELET_UNIT: &str = "[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/local/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
";

const KUBEADM_DROPIN: &str = "[Service]
Environment=\"KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf\"
Environment=\"KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml\"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/local/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
";

/// Written by hand (pikube's kubeadm support renders its own): images only from the archive.
fn kubeadm_config() -> String {
    format!(
        "apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: {NODE_IP}
nodeRegistration:
  name: node1
  imagePullPolicy: Never
  criSocket: unix:///run/containerd/containerd.sock
  kubeletExtraArgs:
  - name: node-ip
    value: {NODE_IP}
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: {VERSION}
apiServer:
  certSANs: [{NODE_IP}]
networking:
  podSubnet: 10.244.0.0/16
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
conntrack:
  maxPerCore: 0
"
    )
}

/// containerd as kubeadm wants it: the systemd cgroup driver (as kubelet), the release's pause
/// image, Debian's CNI plugins next to the ones the CNI installs. The node's root cannot lower
/// OOM scores (the lab host withholds CAP_SYS_RESOURCE), so containerd clamps them.
const RUNTIME_SETUP: &str = r##"set -e
mkdir -p /etc/containerd /opt/cni/bin
containerd config default > /etc/containerd/config.toml
pause=$(kubeadm config images list --kubernetes-version VERSION | grep /pause:)
sed -i -e 's/SystemdCgroup = false/SystemdCgroup = true/' \
       -e 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' \
       -e "s#sandbox_image = .*#sandbox_image = \"$pause\"#" /etc/containerd/config.toml
for p in /usr/lib/cni/*; do ln -sf "$p" /opt/cni/bin/; done
systemctl restart containerd
ctr -n k8s.io images import /root/images.tar >/dev/null
modprobe br_netfilter 2>/dev/null || true
sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
grep -q ' node1$' /etc/hosts || echo "NODE_IP node1" >> /etc/hosts
hostname node1
systemctl daemon-reload
systemctl enable kubelet
"##;

struct Cluster<'a> {
    lab: &'a Lab,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
}

impl Cluster<'_> {
    /// The real kubectl from the control machine, inside the lab network.
    fn kubectl(&self, args: &[&str]) -> Output {
        let mut all = vec!["--kubeconfig", self.kubeconfig.to_str().unwrap(), "--request-timeout=10s"];
        all.extend_from_slice(args);
        self.lab.exec(self.kubectl.to_str().unwrap(), &all)
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(out.status.success(), "kubectl {args:?} failed:\n{}", text(&out));
        stdout(&out)
    }

    fn kubectl_stdin(&self, args: &[&str], input: &str) -> String {
        let mut child = Command::new(BIN)
            .args(["lab", "exec", "--name", &self.lab.name, "--"])
            .arg(&self.kubectl)
            .args(["--kubeconfig", self.kubeconfig.to_str().unwrap()])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "kubectl {args:?} failed:\n{}", text(&out));
        stdout(&out)
    }

    /// `kubectl get pods` in `namespace` as NAME → STATUS.
    fn pod_phases(&self, namespace: &str) -> Vec<(String, String)> {
        let out = self.kubectl(&["-n", namespace, "get", "pods", "--no-headers"]);
        stdout(&out)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() > 2).then(|| (f[0].to_string(), f[2].to_string()))
            })
            .collect()
    }
}

fn install(lab: &Lab, dir: &Path) {
    let bin = dir.join("bin/linux/amd64");
    for tool in ["kubeadm", "kubelet", "kubectl"] {
        let sum = std::fs::read_to_string(bin.join(format!("{tool}.sha256"))).expect("the .sha256 file");
        push(lab, "node1", &bin.join(tool), &format!("/usr/local/bin/{tool}"), "755");
        let on_node = lab.sh("node1", &format!("sha256sum /usr/local/bin/{tool} | cut -d' ' -f1"));
        assert_eq!(on_node, sum.trim(), "{tool} arrived intact");
    }
    push(lab, "node1", &dir.join("images/amd64.tar"), "/root/images.tar", "644");
    write(lab, "node1", "/etc/systemd/system/kubelet.service", KUBELET_UNIT);
    write(lab, "node1", "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf", KUBEADM_DROPIN);
    // Debian's containerd, runc and CNI plugins, from the lab's package mirror.
    let mirror = std::fs::read_to_string(lab.cluster_file()).unwrap();
    let mirror =
        mirror.lines().find_map(|l| l.trim().strip_prefix("mirror: ")).expect("the lab mirror in the cluster file");
    lab.sh(
        "node1",
        &format!(
            "echo 'deb [trusted=yes] {mirror} bookworm main' > /etc/apt/sources.list && apt-get update -qq && \
             DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containerd iptables containernetworking-plugins >/dev/null"
        ),
    );
    lab.sh("node1", &RUNTIME_SETUP.replace("VERSION", VERSION).replace("NODE_IP", NODE_IP));
}

#[test]
fn kubeadm_init_runs_real_kubernetes_on_a_lab_node() {
    require_lab!();
    let dir = lab_kubernetes(VERSION).join(VERSION);
    let lab = Lab::up("k8s-real", 57, &["--nodes", "1"]);
    install(&lab, &dir);

    let images = lab.sh("node1", "ctr -n k8s.io images ls -q | grep -v ^sha256 | sort");
    let wanted = lab.sh("node1", &format!("kubeadm config images list --kubernetes-version {VERSION} | sort"));
    for image in wanted.lines() {
        assert!(images.lines().any(|l| l == image), "{image} is not in the imported archive:\n{images}");
    }

    write(&lab, "node1", "/root/kubeadm.yaml", &kubeadm_config());
    let validated = lab.ssh("node1", "kubeadm config validate --config /root/kubeadm.yaml");
    assert!(validated.0, "kubeadm config validate refused the configuration:\n{}", validated.1);
    let started = Instant::now();
    let init = lab.ssh("node1", "kubeadm init --config /root/kubeadm.yaml 2>&1");
    assert!(init.0, "kubeadm init failed:\n{}", init.1);
    eprintln!("kubeadm init: {:.1?}", started.elapsed());

    let kubeconfig = lab.dir().join("admin.conf");
    std::fs::write(&kubeconfig, lab.sh("node1", "cat /etc/kubernetes/admin.conf")).unwrap();
    std::fs::set_permissions(&kubeconfig, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let cluster = Cluster { lab: &lab, kubectl: dir.join("bin/linux/amd64/kubectl"), kubeconfig };

    let flannel = std::fs::read_to_string(dir.join("cni/kube-flannel.yml")).expect("the flannel manifest");
    cluster.kubectl_stdin(&["apply", "-f", "-"], &flannel);

    wait_for("node1 Ready", Duration::from_secs(240), Duration::from_secs(2), || {
        let out = stdout(&cluster.kubectl(&["get", "node", "node1", "--no-headers"]));
        out.split_whitespace().nth(1).filter(|s| *s == "Ready").map(drop).ok_or(out)
    });
    let wide = cluster.kubectl_ok(&["get", "nodes", "-o", "wide"]);
    eprintln!("{wide}");
    let row: Vec<&str> = wide.lines().nth(1).expect("a node row").split_whitespace().collect();
    assert_eq!(row[4], VERSION, "the real kubelet's version:\n{wide}");
    assert!(row.last().unwrap().starts_with("containerd://"), "containerd is the runtime:\n{wide}");

    let static_pods = ["etcd-node1", "kube-apiserver-node1", "kube-controller-manager-node1", "kube-scheduler-node1"];
    wait_for("kube-system Running", Duration::from_secs(240), Duration::from_secs(2), || {
        let phases = cluster.pod_phases("kube-system");
        let running = |prefix: &str| phases.iter().any(|(n, s)| n.starts_with(prefix) && s == "Running");
        let all = static_pods.iter().chain(&["kube-proxy-", "coredns-"]).all(|p| running(p));
        all.then_some(()).ok_or(format!("{phases:?}"))
    });
    wait_for("flannel Running", Duration::from_secs(120), Duration::from_secs(2), || {
        let phases = cluster.pod_phases("kube-flannel");
        (!phases.is_empty() && phases.iter().all(|(_, s)| s == "Running")).then_some(()).ok_or(format!("{phases:?}"))
    });
    eprintln!("{}", cluster.kubectl_ok(&["get", "pods", "-A", "-o", "wide"]));

    // A pod from a locally built image, on the pod network: logs and exec work.
    cluster.kubectl_ok(&["taint", "nodes", "node1", "node-role.kubernetes.io/control-plane-"]);
    cluster.kubectl_stdin(&["apply", "-f", "-"], PROBE_POD);
    wait_for("the probe pod Running", Duration::from_secs(120), Duration::from_secs(2), || {
        let phases = cluster.pod_phases("default");
        phases.iter().any(|(n, s)| n == "probe" && s == "Running").then_some(()).ok_or(format!("{phases:?}"))
    });
    let ip = cluster.kubectl_ok(&["get", "pod", "probe", "-o", "jsonpath={.status.podIP}"]);
    assert!(ip.starts_with("10.244."), "the probe pod has a flannel address, got {ip:?}");
    wait_for("the probe's log", Duration::from_secs(30), Duration::from_secs(2), || {
        let logs = stdout(&cluster.kubectl(&["logs", "probe"]));
        logs.contains("probe started").then_some(()).ok_or(logs)
    });
    let exec = cluster.kubectl_ok(&["exec", "probe", "--", "sh", "-c", "hostname; cat /proc/1/cmdline | tr '\\0' ' '"]);
    assert!(exec.starts_with("probe\n"), "exec runs inside the pod:\n{exec}");

    // kubeadm reset leaves the node reusable: a second init works on it.
    let reset = lab.ssh("node1", "kubeadm reset -f 2>&1 && rm -rf /etc/cni/net.d/*");
    assert!(reset.0, "kubeadm reset failed:\n{}", reset.1);
    let leftovers = lab.sh("node1", "find /etc/kubernetes/manifests /var/lib/etcd -mindepth 1 2>/dev/null | wc -l");
    assert_eq!(leftovers, "0", "reset removed the static pods and etcd's data");
    let again = lab.ssh("node1", "kubeadm init --config /root/kubeadm.yaml 2>&1");
    assert!(again.0, "kubeadm init after reset failed:\n{}", again.1);
    std::fs::write(&cluster.kubeconfig, lab.sh("node1", "cat /etc/kubernetes/admin.conf")).unwrap();
    wait_for("the second control plane answering", Duration::from_secs(120), Duration::from_secs(2), || {
        let out = cluster.kubectl(&["get", "--raw", "/readyz"]);
        out.status.success().then_some(()).ok_or(text(&out))
    });
    lab.sh("node1", "kubeadm reset -f >/dev/null 2>&1");
}
