//! `pikube down` for kubeadm, in the shared order: the pre-master-down hook first; with
//! `--limit` the named nodes are drained and deleted through another server, then reset; else
//! agents are reset in parallel, then servers one at a time, the first server last. A reset is
//! `kubeadm reset -f` (which also removes a server's etcd member while the cluster answers)
//! plus what kubeadm leaves by design: CNI config and interfaces, the KUBE-/CNI-/flannel
//! iptables rules, kubelet's state, pikube's files and the binaries. containerd, a host
//! package, stays (as HAProxy does) and is restarted to drop the network it had loaded. What is still there afterwards fails the node, named.

use std::time::Duration;

use super::KUBECTL;
use crate::config::Role;
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
rm -rf $PATHS
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
for p in $PATHS /etc/cni/net.d/*; do [ -e "$p" ] && echo "path $p"; done
exit 0
"#;

fn script(body: &str) -> String {
    format!(
        "IFACES={}\nPROCS={}\nPATHS={}\n{}{body}",
        quote(IFACES),
        quote(PROCS),
        quote(PATHS),
        crate::teardown::NETWORK_FUNCTIONS
    )
}

pub async fn run(fleet: &Fleet, limit: &[String]) -> Result<(), String> {
    let api = fleet.healthy(Role::Server).find(|(n, _)| !limit.iter().any(|l| l == n.name())).map(|(_, h)| h);
    if limit.is_empty() {
        if let Some(api) = fleet.healthy(Role::Server).next().map(|(_, h)| h) {
            crate::phases::pre_master_down(&fleet.cluster, api).await?;
        }
        fleet.each(|node: &Node, host: &Host| async move { reset_role(node, host, Role::Agent).await }).await;
        let servers: Vec<&Node> = fleet.nodes.iter().filter(|n| n.role() == Role::Server).collect();
        for node in servers.into_iter().rev() {
            if let Some(host) = node.host.as_ref().filter(|_| node.ok()) {
                if let Err(e) = reset(host).await {
                    node.fail(e);
                }
            }
        }
        if fleet.failures().is_empty() && std::fs::remove_file(fleet.cluster.kubeconfig_path()).is_ok() {
            crate::progress::note(&format!("removed {}", fleet.cluster.kubeconfig_path().display()));
        }
        return Ok(());
    }
    for name in limit {
        let node = fleet.nodes.iter().find(|n| n.name() == name).ok_or_else(|| format!("no host named {name:?}"))?;
        let Some(host) = node.host.as_ref().filter(|_| node.ok()) else { continue };
        let result = async {
            if let Some(api) = api {
                remove_from_api(api, name).await?;
            }
            reset(host).await
        }
        .await;
        if let Err(e) = result {
            node.fail(e);
        }
    }
    Ok(())
}

async fn reset_role(node: &Node, host: &Host, role: Role) -> Result<(), String> {
    if node.role() == role {
        reset(host).await
    } else {
        Ok(())
    }
}

/// Drains the node and deletes it from the API (a node already gone is not drained).
async fn remove_from_api(api: &Host, name: &str) -> Result<(), String> {
    let n = quote(name);
    let drain = Cmd::change_script(format!(
        "[ -z \"$({KUBECTL} get node {n} --ignore-not-found --no-headers)\" ] || \
         {KUBECTL} drain {n} --ignore-daemonsets --delete-emptydir-data --force --timeout=120s"
    ))
    .timeout(Duration::from_secs(150));
    api.apply(format!("drain {name}"), &drain).await.map_err(|e| e.to_string())?;
    let delete = Cmd::change_script(format!("{KUBECTL} delete node {n} --ignore-not-found"));
    api.apply(format!("delete node {name}"), &delete).await.map_err(|e| e.to_string())
}

/// Resets the node unless nothing of Kubernetes is on it; then lists what is left.
async fn reset(host: &Host) -> Result<(), String> {
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
