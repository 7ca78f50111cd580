//! The seam between the shared phases and the Kubernetes distributions. Host preparation,
//! the endpoint (HAProxy / keepalived), hooks, readiness, the kubeconfig and the order of
//! `down` are the same for every distribution; what differs is how the binaries arrive, how
//! containers run, and how servers and agents form the cluster. Each distribution answers
//! those here, behind [`Distribution`].

pub mod k3s;
pub mod kubeadm;

use std::collections::BTreeMap;

use futures::future::BoxFuture;

use crate::artifacts::{ArtifactError, K3sBinary};
use crate::config::{Cluster, Distribution, Role};
use crate::facts::{Arch, HostFacts};
use crate::fleet::Fleet;
use crate::remote::{quote, Cmd, Host, RemoteError};

pub use crate::k3s::NodeStatus;

/// Puts the release binaries on the nodes.
pub fn artifacts<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    match fleet.cluster.distribution() {
        Distribution::K3s => k3s::artifacts(fleet),
        Distribution::Kubeadm => kubeadm::artifacts(fleet),
    }
}

/// Installs and configures the container runtime (k3s embeds its own).
pub fn container_runtime<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    match fleet.cluster.distribution() {
        Distribution::K3s => Box::pin(async {}),
        Distribution::Kubeadm => kubeadm::container_runtime(fleet),
    }
}

/// Forms the control plane: the first server initialises, the others join one at a time.
pub fn servers<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    match fleet.cluster.distribution() {
        Distribution::K3s => k3s::servers(fleet),
        Distribution::Kubeadm => kubeadm::servers(fleet),
    }
}

/// Installs the pod network (k3s runs flannel built in).
pub fn pod_network<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    match fleet.cluster.distribution() {
        Distribution::K3s => Box::pin(async {}),
        Distribution::Kubeadm => kubeadm::pod_network(fleet),
    }
}

/// Joins the agents, in parallel.
pub fn agents<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    match fleet.cluster.distribution() {
        Distribution::K3s => k3s::agents(fleet),
        Distribution::Kubeadm => kubeadm::agents(fleet),
    }
}

/// Once every node is Ready and its kubelet on the pinned version: what else must run the
/// pinned release does (kubeadm: the control-plane and kube-proxy pods; k3s runs one binary).
pub async fn verify_release(fleet: &Fleet, api: &Host) {
    if fleet.cluster.distribution() == Distribution::Kubeadm {
        kubeadm::upgrade::verify_release(fleet, api).await;
    }
}

/// The release binaries for `arch`, verified (downloaded first unless `offline`).
pub fn binaries(cluster: &Cluster, version: &str, arch: &Arch, offline: bool) -> Result<Vec<K3sBinary>, ArtifactError> {
    match cluster.distribution() {
        Distribution::K3s => crate::artifacts::binary_for(cluster, version, arch, offline).map(|(b, _)| vec![b]),
        // An airgap directory is never downloaded into; the cache is filled when not offline.
        Distribution::Kubeadm if offline && cluster.spec.kubernetes.artifacts.is_none() => Ok(vec![]),
        Distribution::Kubeadm => kubeadm::artifacts::BINARIES
            .iter()
            .map(|name| kubeadm::artifacts::binary(cluster, version, arch, name).map(|(b, _)| b))
            .collect(),
    }
}

/// kubectl as root on a server, with the cluster's admin credentials.
pub fn kubectl(d: Distribution) -> &'static str {
    match d {
        Distribution::K3s => k3s::KUBECTL,
        Distribution::Kubeadm => kubeadm::KUBECTL,
    }
}

/// The admin kubeconfig a server holds (its `server:` is rewritten to the endpoint locally).
pub fn admin_kubeconfig(d: Distribution) -> &'static str {
    match d {
        Distribution::K3s => crate::k3s::REMOTE_KUBECONFIG,
        Distribution::Kubeadm => kubeadm::ADMIN_CONF,
    }
}

/// The unit that runs the node: its state says whether the node runs, its log why not.
pub fn unit_name(d: Distribution, role: Role) -> &'static str {
    match d {
        Distribution::K3s => crate::k3s::unit_name(role),
        Distribution::Kubeadm => "kubelet",
    }
}

/// The release a node runs, from its facts: `k3s --version` says "k3s version v1.31.4+k3s1
/// (fa8a1bfd)", `kubelet --version` "Kubernetes v1.34.4".
pub fn installed_version(d: Distribution, facts: &HostFacts) -> Option<String> {
    let line = facts.kubernetes.get(match d {
        Distribution::K3s => "k3s",
        Distribution::Kubeadm => "kubelet",
    })?;
    line.split_whitespace()
        .find(|w| w.starts_with('v') && w[1..].starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_string)
}

/// How `status` reads the etcd member list on a server: k3s serves it at /db/info (none on
/// sqlite); kubeadm's etcdctl runs in the server's own etcd container (every server has one),
/// so a server's answer is its own member's, whatever the other servers' state.
pub fn etcd_probe(d: Distribution) -> crate::health::EtcdProbe {
    match d {
        Distribution::K3s => crate::health::EtcdProbe::Optional(crate::k3s::etcd::MEMBERS_SCRIPT.to_string()),
        Distribution::Kubeadm => crate::health::EtcdProbe::Required(kubeadm::etcd::etcdctl("member list -w json")),
    }
}

/// How `status` reads a server's certificate expiry: kubeadm's check-expiration (k3s renews
/// its own certificates when it starts).
pub fn certificates_probe(d: Distribution) -> Option<&'static str> {
    match d {
        Distribution::K3s => None,
        Distribution::Kubeadm => Some(kubeadm::certs::CHECK_EXPIRATION),
    }
}

/// The prefix of a distribution's own cluster hook files (`k3s-post-master-up.yml`,
/// `k8s-post-master-up.yml`), which win over the generic ones.
pub fn hook_prefix(d: Distribution) -> &'static str {
    match d {
        Distribution::K3s => "k3s",
        Distribution::Kubeadm => "k8s",
    }
}

/// Nodes as the API of `server` sees them.
pub async fn nodes(d: Distribution, server: &Host) -> Result<BTreeMap<String, NodeStatus>, String> {
    let cmd = Cmd::read_script(format!("{} get nodes -o json", kubectl(d))).timeout(std::time::Duration::from_secs(20));
    let out = server.run(&cmd).await.map_err(|e| e.to_string())?;
    if !out.success() {
        let shown = match d {
            Distribution::K3s => "k3s kubectl",
            Distribution::Kubeadm => "kubectl",
        };
        return Err(format!("`{shown} get nodes` failed: {}", out.stderr_str().trim()));
    }
    crate::k3s::parse_nodes(&out.stdout_str())
}

/// Whether the node's unit is active (not failed, not still starting).
pub async fn unit_active(d: Distribution, host: &Host, role: Role) -> Result<bool, RemoteError> {
    let out = host.run(&Cmd::read_script(format!("systemctl is-active {}", unit_name(d, role)))).await?;
    Ok(out.stdout_str().trim() == "active")
}

/// The last lines the node's unit logged, for error messages instead of a silent hang.
pub async fn diagnostics(d: Distribution, host: &Host, role: Role) -> String {
    let unit = unit_name(d, role);
    let cmd = Cmd::read_script(format!(
        "systemctl status {u} --no-pager -n 0 2>&1 | head -n 3; journalctl -u {u} --no-pager -n 12 -o cat 2>&1",
        u = quote(unit)
    ));
    match host.run(&cmd).await {
        Ok(out) => {
            out.stdout_str().lines().filter(|l| !l.trim().is_empty()).map(|l| format!("\n      | {l}")).collect()
        }
        Err(e) => format!("\n      | (could not read the {unit} log: {e})"),
    }
}
