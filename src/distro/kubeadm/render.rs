//! Every file pikube writes for a kubeadm node, rendered from the cluster file and the node's
//! facts alone (no I/O), so golden-file tests pin them.

use std::fmt::Write as _;

use crate::config::{Cluster, EndpointMode, HostSpec, Role};

/// Flannel's default network; kubeadm's podSubnet must match it.
pub const POD_SUBNET: &str = "10.244.0.0/16";
/// kubeadm's default service subnet.
pub const SERVICE_SUBNET: &str = "10.96.0.0/12";
pub const CRI_SOCKET: &str = "unix:///run/containerd/containerd.sock";

/// kubelet's unit as upstream's packages ship it (binary in /usr/local/bin): it restarts until
/// kubeadm has written its configuration.
pub const KUBELET_UNIT: &str = "[Unit]
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

/// kubeadm's drop-in as upstream's packages ship it: the flags kubeadm writes at init/join.
pub const KUBEADM_DROPIN: &str = "# Note: This dropin only works with kubeadm and kubelet v1.11+
[Service]
Environment=\"KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf\"
Environment=\"KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml\"
# This is a file that \"kubeadm init\" and \"kubeadm join\" generates at runtime, populating the KUBELET_KUBEADM_ARGS variable dynamically
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# This is a file that the user can use for overrides of the kubelet args as a last resort. Preferably, the user should use
# the .NodeRegistration.KubeletExtraArgs object in the configuration files instead. KUBELET_EXTRA_ARGS should be sourced from this file.
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/local/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
";

/// crictl talks to containerd (it would otherwise probe several sockets and warn).
pub const CRICTL_YAML: &str = "# Written by pikube.
runtime-endpoint: unix:///run/containerd/containerd.sock
image-endpoint: unix:///run/containerd/containerd.sock
timeout: 10
";

/// containerd's config (version 2, read by containerd 1.6 to 2.x): the systemd cgroup driver
/// kubelet uses, the release's pause image, registry mirrors from `certs.d`, and OOM scores
/// clamped when the host does not let root lower them (runc would fail every pod otherwise).
pub fn containerd_config(sandbox_image: &str, restrict_oom_score_adj: bool) -> String {
    format!(
        r#"# Written by pikube for kubeadm. containerd's defaults apply to everything not set here.
version = 2

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {sandbox}
  restrict_oom_score_adj = {restrict_oom_score_adj}

  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"

  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "/etc/containerd/certs.d"
"#,
        sandbox = quoted(sandbox_image),
    )
}

/// `/etc/containerd/certs.d/<registry>/hosts.toml` for each registry with mirrors: the
/// mirrors first, the registry itself last (containerd's fallback).
pub fn registry_hosts(cluster: &Cluster) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (registry, mirrors) in &cluster.spec.registry_mirrors {
        let (dir, server) = match registry.as_str() {
            "*" => ("_default".to_string(), None),
            "docker.io" => (registry.clone(), Some("https://registry-1.docker.io".to_string())),
            r => (r.to_string(), Some(format!("https://{r}"))),
        };
        let mut text = String::from("# Written by pikube (registry_mirrors of the cluster file).\n");
        if let Some(s) = server {
            let _ = writeln!(text, "server = {}", quoted(&s));
        }
        for m in &mirrors.value {
            let _ = write!(text, "\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n", quoted(&m.value));
        }
        out.push((format!("/etc/containerd/certs.d/{dir}/hosts.toml"), text));
    }
    out
}

/// containerd's proxy settings, read through [`CONTAINERD_PROXY_DROPIN`]: mode 0600, as a proxy
/// URL may carry a password (`Environment=` lines would be readable by every user, also through
/// `systemctl show`, and would take a `%` of a percent-encoded password as a specifier).
pub const CONTAINERD_PROXY_ENV: &str = "/etc/systemd/system/containerd.service.d/pikube-proxy.env";
pub const CONTAINERD_PROXY_DROPIN: &str = "# Written by pikube (proxy of the cluster file).
[Service]
EnvironmentFile=/etc/systemd/system/containerd.service.d/pikube-proxy.env
";

/// The environment file giving containerd the cluster file's proxy; None without one. Cluster
/// traffic (hosts, endpoint, pod and service networks) bypasses it.
pub fn containerd_proxy_env(cluster: &Cluster) -> Option<String> {
    let p = cluster.spec.proxy.as_ref()?;
    let mut out = String::from("# Written by pikube (proxy of the cluster file).\n");
    for (k, v) in [("HTTP_PROXY", &p.http), ("HTTPS_PROXY", &p.https)] {
        if let Some(v) = v {
            let _ = writeln!(out, "{k}={}", v.value);
        }
    }
    let mut no_proxy: Vec<String> =
        ["127.0.0.1", "localhost", POD_SUBNET, SERVICE_SUBNET, ".svc", ".cluster.local"].map(String::from).to_vec();
    no_proxy.extend(cluster.hosts().map(|h| h.address().to_string()));
    no_proxy.push(cluster.endpoint().address);
    no_proxy.extend(p.no_proxy.iter().map(|n| n.value.clone()));
    let mut seen = std::collections::BTreeSet::new();
    no_proxy.retain(|n| seen.insert(n.clone()));
    let _ = writeln!(out, "NO_PROXY={}", no_proxy.join(","));
    Some(out)
}

/// The port the API servers listen on: the endpoint's own port when clients reach a server
/// directly (its address or a VIP it holds), else 6443 behind the load balancer.
pub fn bind_port(cluster: &Cluster) -> u16 {
    let ep = cluster.endpoint();
    match ep.mode {
        EndpointMode::Loadbalancer => 6443,
        EndpointMode::Vip | EndpointMode::None => ep.port,
    }
}

/// `address:port` of the endpoint, as kubeadm writes it (IPv6 in brackets).
pub fn endpoint(cluster: &Cluster) -> String {
    cluster.endpoint().url().trim_start_matches("https://").to_string()
}

/// What the first server's `kubeadm init` reads: InitConfiguration, ClusterConfiguration,
/// KubeletConfiguration and KubeProxyConfiguration (v1beta4, Kubernetes 1.31 and later).
/// Holds no secret: kubeadm makes the bootstrap token itself.
pub fn init_config(cluster: &Cluster, host: &HostSpec, node_ip: &str, version: &str, conntrack_max: bool) -> String {
    let ep = cluster.endpoint();
    let mut sans: Vec<String> = vec![ep.address.clone()];
    sans.extend(ep.vip.clone());
    for s in cluster.with_role(Role::Server) {
        sans.push(s.name.value.clone());
        sans.push(s.address().to_string());
    }
    let mut seen = std::collections::BTreeSet::new();
    sans.retain(|s| !s.is_empty() && seen.insert(s.clone()));
    let mut out = format!(
        "# Written by pikube for `kubeadm init`: `pikube up` overwrites changes.\n\
         apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nlocalAPIEndpoint:\n  advertiseAddress: {node_ip}\n  bindPort: {port}\n{reg}{TIMEOUTS}---\n\
         apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nclusterName: {name}\nkubernetesVersion: {version}\n\
         controlPlaneEndpoint: {endpoint}\napiServer:\n  certSANs:\n{sans}networking:\n  podSubnet: {POD_SUBNET}\n  serviceSubnet: {SERVICE_SUBNET}\n---\n\
         apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupDriver: systemd\n---\n\
         apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n",
        port = bind_port(cluster),
        reg = node_registration(host, node_ip),
        name = cluster.name(),
        endpoint = quoted(&endpoint(cluster)),
        sans = sans.iter().map(|s| format!("  - {}\n", quoted(s))).collect::<String>(),
    );
    if !conntrack_max {
        // kube-proxy would fail setting the global nf_conntrack_max on such hosts; 0 leaves it.
        out.push_str("conntrack:\n  maxPerCore: 0\n");
    }
    out
}

/// kubeadm's waits (v1beta4 `timeouts`), longer than its defaults (4 min for the control
/// plane and kubelet, 2 min for etcd calls): a Pi on an SD card, or one busy pulling its
/// images, can take longer to start a control plane or have a new etcd member catch up, and a
/// control-plane join that times out half way leaves the node to be reset. pikube's own bound on
/// the whole command stays above them (`KUBEADM_TIMEOUT`).
const TIMEOUTS: &str = "timeouts:
  controlPlaneComponentHealthCheck: 10m0s
  kubeletHealthCheck: 10m0s
  kubernetesAPICall: 3m0s
  etcdAPICall: 5m0s
  tlsBootstrap: 10m0s
  discovery: 10m0s
";

/// Where `kubeadm upgrade apply` and `kubeadm upgrade node` read pikube's configuration.
pub const UPGRADE_CONFIG: &str = "/etc/pikube/kubeadm-upgrade.yaml";

/// What `kubeadm upgrade apply` and `kubeadm upgrade node` read (`--config`, v1beta4
/// `UpgradeConfiguration`): the target release, the same Pi-sized waits as init and join plus
/// kubeadm's wait for each upgraded static pod (`upgradeManifests`, 5 min by default; on timeout
/// kubeadm rolls that component back and the node is left half-upgraded), and certificate
/// renewal (kubeadm's default, written out: an upgrade is when a server's certificates are
/// renewed unless `up` renews them itself). CreateJob runs a Job that must finish within 15 s,
/// which a busy Pi misses; pikube checks the nodes' readiness and every component's version
/// itself. Holds no secret.
pub fn upgrade_config(version: &str) -> String {
    format!(
        "# Written by pikube for `kubeadm upgrade apply/node --config`: `pikube up` overwrites changes.\n\
         apiVersion: kubeadm.k8s.io/v1beta4\nkind: UpgradeConfiguration\napply:\n  kubernetesVersion: {version}\n  \
         certificateRenewal: true\n  ignorePreflightErrors:\n  - CreateJob\nnode:\n  certificateRenewal: true\n\
         {TIMEOUTS}  upgradeManifests: {UPGRADE_MANIFESTS}\n"
    )
}

/// kubeadm's wait for each static pod an upgrade replaces (etcd's data migration and the image
/// unpacking on an SD card take minutes); pikube's bound on the whole command is above four of
/// them in a row (`upgrade::UPGRADE_TIMEOUT`).
pub const UPGRADE_MANIFESTS: &str = "10m0s";

/// The secrets a join needs, made fresh on a running server for each run.
pub struct JoinSecrets {
    pub token: String,
    pub ca_cert_hash: String,
    /// Only for servers: decrypts the control-plane certificates kubeadm uploaded.
    pub certificate_key: Option<String>,
}

/// What `kubeadm join` reads (mode 0600 and short-lived: it holds the token).
pub fn join_config(cluster: &Cluster, host: &HostSpec, node_ip: &str, secrets: &JoinSecrets) -> String {
    let mut out = format!(
        "apiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\ndiscovery:\n  bootstrapToken:\n    apiServerEndpoint: {ep}\n    token: {token}\n    caCertHashes:\n    - {hash}\n{reg}{TIMEOUTS}",
        ep = quoted(&endpoint(cluster)),
        token = quoted(&secrets.token),
        hash = quoted(&secrets.ca_cert_hash),
        reg = node_registration(host, node_ip),
    );
    if let Some(key) = &secrets.certificate_key {
        let _ = write!(
            out,
            "controlPlane:\n  localAPIEndpoint:\n    advertiseAddress: {node_ip}\n    bindPort: {}\n  certificateKey: {}\n",
            bind_port(cluster),
            quoted(key)
        );
    }
    out
}

/// nodeRegistration: name, containerd, node IP, labels and taints. Without taints in the
/// cluster file kubeadm's defaults stand (servers get the control-plane taint).
fn node_registration(host: &HostSpec, node_ip: &str) -> String {
    let mut out = format!(
        "nodeRegistration:\n  name: {}\n  criSocket: {CRI_SOCKET}\n  kubeletExtraArgs:\n  - name: node-ip\n    value: {}\n",
        quoted(&host.name.value),
        quoted(node_ip)
    );
    if !host.labels.is_empty() {
        let labels: Vec<String> = host.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = write!(out, "  - name: node-labels\n    value: {}\n", quoted(&labels.join(",")));
    }
    if !host.taints.is_empty() {
        out.push_str("  taints:\n");
        for t in &host.taints {
            let (kv, effect) = t.value.rsplit_once(':').unwrap_or((&t.value, "NoSchedule"));
            let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
            let _ = writeln!(out, "  - key: {}\n    value: {}\n    effect: {effect}", quoted(key), quoted(value));
        }
    }
    out
}

/// JSON strings are valid YAML scalars and TOML basic strings, and escape what needs it.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}
