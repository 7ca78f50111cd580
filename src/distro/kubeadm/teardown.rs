//! `pikube down` for kubeadm: how a node is reset and how one that answers is taken out of
//! the cluster (the order of `down` is shared, see `crate::down`). A reset is `kubeadm reset
//! -f` (which also removes a server's etcd member while the cluster answers) plus what kubeadm
//! leaves by design: CNI config and interfaces, the KUBE-/CNI-/flannel iptables rules,
//! kubelet's state, pikube's files and the binaries. containerd, a host package, stays (as
//! HAProxy does) and is restarted to drop the network it had loaded. What is still there
//! afterwards fails the node, named.

use std::time::Duration;

use super::KUBECTL;
use crate::config::{Distribution, Role};
use crate::fleet::{Fleet, Node};
use crate::remote::{quote, Cmd, Host};

const IFACES: &str = "cni0 flannel.1 flannel-v6.1 kube-ipvs0";
const PROCS: &str = "kubelet kube-apiserver kube-controller-manager kube-scheduler kube-proxy etcd flanneld coredns";
const PATHS: &str = "/etc/kubernetes /var/lib/kubelet /var/lib/etcd /var/lib/cni /run/flannel \
/etc/pikube /var/lib/pikube/hooks /var/lib/pikube/images /etc/systemd/system/kubelet.service \
/etc/systemd/system/kubelet.service.d /usr/local/bin/kubeadm /usr/local/bin/kubelet /usr/local/bin/kubectl \
/var/log/pikube-kubeadm-init.log /var/log/pikube-kubeadm-join.log";

const RESET: &str = r#"[ -x /usr/local/bin/kubeadm ] && /usr/local/bin/kubeadm reset -f --cri-socket unix:///run/containerd/containerd.sock >/dev/null 2>&1
systemctl stop kubelet 2>/dev/null; systemctl disable -q kubelet 2>/dev/null
# Pods kubeadm did not stop (kubelet gone first): their tasks and sandboxes in containerd.
ctr -n k8s.io tasks ls -q 2>/dev/null | xargs -r -n 1 ctr -n k8s.io tasks kill -s SIGKILL 2>/dev/null
sleep 1; ctr -n k8s.io containers ls -q 2>/dev/null | xargs -r ctr -n k8s.io containers rm 2>/dev/null
awk '$5 ~ "^/var/lib/kubelet/" || $5 ~ "^/run/netns/cni-" {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
clean_network
for p in $PATHS; do clear_dir "$p"; done
# The directory stays: containerd watches it, and would not see a new one's network config.
find /etc/cni/net.d -mindepth 1 -delete 2>/dev/null
systemctl daemon-reload; systemctl reset-failed kubelet 2>/dev/null
# containerd forgets the network it had loaded (the next CNI is picked up fresh).
systemctl restart containerd 2>/dev/null
exit 0
"#;

const LEFTOVERS: &str = r#"for n in $PROCS; do pgrep -x "$n" | sed "s/^/process $n, pid /"; done
ctr -n k8s.io tasks ls -q 2>/dev/null | sed 's/^/container /'
awk '$5 ~ "^/var/lib/kubelet/" {print "mount " $5}' /proc/self/mountinfo
network_leftovers
for p in $PATHS /etc/cni/net.d/*; do left_dir "$p" && echo "path $p"; done
exit 0
"#;

fn script(body: &str) -> String {
    format!(
        "IFACES={}\nPROCS={}\nPATHS={}\n{}{}{body}",
        quote(IFACES),
        quote(PROCS),
        quote(PATHS),
        crate::teardown::NETWORK_FUNCTIONS,
        crate::storage::TEARDOWN_FUNCTIONS,
    )
}

/// Takes a node that answers out of the cluster in kubeadm's documented order: drained
/// through `api` (another server), `kubeadm reset`, then its Node deleted (deleted first, the
/// kubelet still running would register it again). A server's etcd member must be gone
/// afterwards: kubeadm's reset removes it while the cluster answers, else pikube does, through
/// `api`. A server is only removed while etcd keeps a quorum without it. Without another
/// server to go through (the last one), the node is only reset.
pub async fn remove(fleet: &Fleet, node: &Node, host: &Host, api: Option<&Host>) -> Result<(), String> {
    let Some(api) = api else { return reset(host).await };
    let name = node.name();
    let member = match node.role() {
        Role::Server => crate::down::member_to_remove(fleet, node, api).await?,
        _ => None,
    };
    crate::down::drain(Distribution::Kubeadm, api, host, name).await?;
    reset(host).await?;
    if let Some(m) = member {
        if super::etcd::members(api).await?.iter().any(|left| left.id == m.id) {
            host.record(format!("kubeadm reset left etcd member {} behind; removing it through {}", m.name, api.name));
            super::etcd::remove_member(api, &m).await?;
        }
    }
    let delete = Cmd::change_script(format!("{KUBECTL} delete node {} --ignore-not-found", quote(name)));
    api.apply(format!("delete node {name}"), &delete).await.map_err(|e| e.to_string())
}

/// Fails each server of `control_planes` (servers whose disk holds a control plane) that etcd
/// no longer lists: one removed while it was off (`pikube down --limit` of a dead server). Its
/// old etcd data would only be refused by the others, so it must be reset before it joins
/// again. The list comes from the first of them whose etcd lists itself; when none answers
/// (servers still starting), nothing is refused.
pub async fn refuse_removed(fleet: &Fleet, control_planes: &[&Node]) {
    if control_planes.len() < 2 {
        return;
    }
    let mut members = None;
    for node in control_planes {
        let Some(host) = node.host.as_ref() else { continue };
        if let Ok(listed) = super::etcd::members(host).await {
            if listed.iter().any(|m| m.name == node.name()) {
                members = Some(listed);
                break;
            }
        }
    }
    let Some(members) = members else { return };
    for node in control_planes {
        let name = node.name();
        if !members.iter().any(|m| m.name == name || m.host == node.spec.address()) {
            node.fail(format!(
                "{name} still holds a control plane, but etcd no longer lists it as a member (it was removed, as \
                 `pikube down --limit {name}` does with a server that does not answer): it cannot run or join as it is\n  \
                 hint: reset it with `pikube down -f {} --limit {name} --yes` (it answers now), then run `pikube up` again",
                fleet.cluster.file.display()
            ));
        }
    }
}

/// Resets the node unless nothing of Kubernetes is on it; then lists what is left.
pub async fn reset(host: &Host) -> Result<(), String> {
    if leftovers(host).await?.is_empty() {
        return Ok(());
    }
    let cmd = Cmd::change_script(script(RESET)).timeout(Duration::from_secs(300));
    host.apply("kubeadm reset -f; remove CNI config and interfaces, iptables rules, kubelet state and binaries", &cmd)
        .await
        .map_err(|e| e.to_string())?;
    let left = leftovers(host).await?;
    if left.is_empty() {
        return Ok(());
    }
    Err(format!(
        "Kubernetes is not completely removed; left on the node:\n    {}\n  hint: run `pikube down` again; if it stays, remove these by hand",
        left.join("\n    ")
    ))
}

async fn leftovers(host: &Host) -> Result<Vec<String>, String> {
    let out = host.run_ok(&Cmd::read_script(script(LEFTOVERS))).await.map_err(|e| e.to_string())?;
    Ok(out.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
}
