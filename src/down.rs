//! `pikube down`: the reverse of `up` for Kubernetes, in one order for every distribution.
//! The pre-master-down hook runs first; with `--limit` the named nodes are taken out of the
//! cluster one at a time (k3s: drained and deleted, then reset; kubeadm: drained, reset, then
//! deleted, see `distro::kubeadm::teardown::remove`); without it agents are reset in parallel,
//! then servers one at a time (last the first). Host preparation (hostname, swap, cgroups)
//! stays: it is harmless and slow to redo. A `--limit` node that does not answer SSH is
//! removed from the cluster without being reset (see `remove_dead`).

use std::time::Duration;

use crate::config::{Distribution, Role};
use crate::distro::{self, kubeadm};
use crate::fleet::{Fleet, Node};
use crate::k3s::{self, etcd::Member, BIN};
use crate::phases;
use crate::remote::{quote, Cmd, Host};
use crate::teardown;

/// Resets the named nodes (all Kubernetes nodes when `limit` is empty). Returns notes for the
/// user (what was removed without being reset, and what to do about it).
pub async fn run(fleet: &mut Fleet, limit: &[String]) -> Result<Vec<String>, String> {
    // Labels the changes (in the JSON report) and each host's live line.
    for h in fleet.nodes.iter().filter_map(|n| n.host.as_ref()) {
        h.set_phase("down");
    }
    let d = fleet.cluster.distribution();
    let api = fleet
        .healthy(Role::Server)
        .find(|(n, _)| !limit.iter().any(|l| l == n.name()) && installed(d, n))
        .or_else(|| fleet.healthy(Role::Server).find(|(n, _)| installed(d, n)))
        .map(|(_, h)| h);
    if limit.is_empty() {
        if let Some(api) = api {
            phases::pre_master_down(&fleet.cluster, api).await?;
        }
        reset_all(fleet, Role::Agent).await;
        let servers: Vec<&Node> = fleet.nodes.iter().filter(|n| n.role() == Role::Server).collect();
        for node in servers.into_iter().rev() {
            if let Some(host) = node.host.as_ref().filter(|_| node.ok()) {
                if let Err(e) = reset(d, node, host).await {
                    node.fail(e);
                }
            }
        }
        if fleet.failures().is_empty() {
            // The cluster is gone: its traces here would stop the next `up` from making one.
            for path in [k3s::token_path(&fleet.cluster), fleet.cluster.kubeconfig_path()] {
                if std::fs::remove_file(&path).is_ok() {
                    crate::progress::note(&format!("removed {}", path.display()));
                }
            }
            phases::init_guard::record_torn_down(&fleet.cluster)
                .map_err(|e| format!("{}: {e}", fleet.cluster.state_dir().display()))?;
        }
        return Ok(Vec::new());
    }
    let mut notes = Vec::new();
    let mut dead = Vec::new();
    for name in limit {
        let node = fleet.nodes.iter().find(|n| n.name() == name).ok_or_else(|| format!("no host named {name:?}"))?;
        if node.host.is_none() {
            match remove_dead(fleet, node, api).await {
                Ok(note) => {
                    node.clear_failure();
                    notes.push(note);
                    dead.push(name.clone());
                }
                Err(e) => {
                    node.clear_failure();
                    node.fail(e);
                }
            }
            continue;
        }
        let Some(host) = node.host.as_ref().filter(|_| node.ok()) else { continue };
        let api = api.filter(|a| a.name != node.name());
        let result = match d {
            Distribution::K3s => remove_k3s(node, host, api).await,
            Distribution::Kubeadm => kubeadm::teardown::remove(fleet, node, host, api).await,
        };
        if let Err(e) = result {
            node.fail(e);
        }
    }
    if !dead.is_empty() {
        notes.push(endpoint_without(fleet, &dead).await);
    }
    Ok(notes)
}

/// A k3s node that answers: drained and deleted through `api`, then reset (k3s removes a
/// deleted server's etcd member itself).
async fn remove_k3s(node: &Node, host: &Host, api: Option<&Host>) -> Result<(), String> {
    if let Some(api) = api {
        remove_from_api(api, host, node.name()).await?;
    }
    reset(Distribution::K3s, node, host).await
}

/// Removes a node that does not answer SSH (powered off, dead SD card): deletes its Node
/// through a healthy server and, for a server, its etcd member (k3s removes it when the Node
/// goes; kubeadm leaves that to whoever removes the server), but only while etcd keeps a
/// quorum without it. Nothing runs on the node itself.
async fn remove_dead(fleet: &Fleet, node: &Node, api: Option<&Host>) -> Result<String, String> {
    let name = node.name();
    if node.role() == Role::Loadbalancer {
        return Ok(format!("{name} does not answer SSH and was not reset; it is no longer an API load balancer"));
    }
    let api = api.filter(|a| a.name != name).ok_or_else(|| {
        format!(
            "{name} does not answer SSH and no other server answers either, so it cannot be removed from the cluster"
        )
    })?;
    let d = fleet.cluster.distribution();
    let member = match node.role() {
        Role::Server => member_to_remove(fleet, node, api).await?,
        _ => None,
    };
    let delete = Cmd::change_script(format!("{} delete node {} --ignore-not-found", distro::kubectl(d), quote(name)));
    let delete_what = format!("delete node {name} (it does not answer SSH)");
    match d {
        Distribution::K3s => {
            api.apply(delete_what, &delete).await.map_err(|e| e.to_string())?;
            if let Some(m) = &member {
                wait_member_gone(api, m).await?;
            }
        }
        Distribution::Kubeadm => {
            // The member first: it is the step etcd may refuse, and then nothing has changed.
            if let Some(m) = &member {
                kubeadm::etcd::remove_member(api, m).await?;
            }
            api.apply(delete_what, &delete).await.map_err(|e| e.to_string())?;
        }
    }
    let what = match &member {
        Some(m) => format!("deleted from the API and etcd member {} removed", m.name),
        None => "deleted from the API".to_string(),
    };
    let role = node.role().as_str();
    let back = match d {
        Distribution::K3s => {
            format!("wipe or reflash it before it rejoins (its old k3s data would start it as a stale {role})")
        }
        Distribution::Kubeadm => format!(
            "reset it with `pikube down --limit {name}` once it answers (or wipe or reflash it) before `pikube up` \
             brings it back (its old kubeadm state would start it as a stale {role})"
        ),
    };
    Ok(format!("{name} does not answer SSH: {what}. The host itself was NOT reset (nothing ran on it): if it comes back, {back}"))
}

/// The etcd member of server `node`, or None when it has none (any more); refuses when
/// removing it would leave etcd without a quorum (see `check_quorum`). Asked through `api`,
/// another server.
pub(crate) async fn member_to_remove(fleet: &Fleet, node: &Node, api: &Host) -> Result<Option<Member>, String> {
    let d = fleet.cluster.distribution();
    let members = match d {
        Distribution::K3s => k3s::etcd::members(api).await?,
        Distribution::Kubeadm => kubeadm::etcd::members(api).await?,
    };
    let ips = distro::nodes(d, api).await.unwrap_or_default();
    // A member's host is its server's node IP; the cluster file's address usually is too.
    // kubeadm names members after their nodes.
    let owner = |m: &Member| {
        fleet.nodes.iter().filter(|n| n.role() == Role::Server).find(|n| {
            n.spec.address() == m.host
                || m.name == n.name()
                || ips.get(n.name()).is_some_and(|s| s.internal_ip == m.host)
        })
    };
    // A member answers when its host does and runs Kubernetes (a reachable host with the unit
    // stopped does not vote).
    let answering: Vec<&str> =
        members.iter().filter_map(|m| owner(m).filter(|n| runs(d, n))).map(|n| n.name()).collect();
    check_quorum(node.name(), members.len(), &answering)?;
    Ok(members.iter().find(|m| owner(m).is_some_and(|n| n.name() == node.name())).cloned())
}

/// Refuses a removal etcd would refuse or that would stop it: changing the membership needs a
/// majority of today's `total` members answering, and afterwards the ones still answering
/// must be a majority of the members left (removing an answering member loses its vote too).
fn check_quorum(name: &str, total: usize, answering: &[&str]) -> Result<(), String> {
    let (n, need) = (answering.len(), k3s::etcd::quorum(total));
    let who = if answering.is_empty() { "none".to_string() } else { answering.join(", ") };
    if n < need {
        return Err(format!(
            "refusing to remove {name}: etcd has {total} members and only {n} answer ({who}); it needs {need} to \
             change its membership, so removing {name} would not help and could lose the cluster. Bring another \
             server back first, or restore from a backup"
        ));
    }
    let left = n - usize::from(answering.contains(&name));
    let need_after = k3s::etcd::quorum(total.saturating_sub(1));
    if left < need_after {
        return Err(format!(
            "refusing to remove {name}: etcd has {total} members and {n} answer ({who}); without {name} only {left} \
             of the {rest} left would answer, fewer than the {need_after} etcd needs, and the cluster would stop. \
             Bring the other servers back first",
            rest = total.saturating_sub(1)
        ));
    }
    Ok(())
}

/// Waits for k3s's etcd member controller to remove `member` after its Node was deleted.
async fn wait_member_gone(api: &Host, member: &k3s::etcd::Member) -> Result<(), String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let members = k3s::etcd::members(api).await?;
        if !members.iter().any(|m| m.name == member.name) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "the Node is deleted but etcd still lists member {} after 60s; k3s removes it when the Node goes, \
                 see `journalctl -u k3s` on {}",
                member.name, api.name
            ));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Renders the load balancer and VIP configuration again without the `removed` hosts, and
/// says to take them out of the cluster file (as k0sctl and KubeOne expect): while they are
/// listed, `up` tries to reach them and puts them back.
async fn endpoint_without(fleet: &mut Fleet, removed: &[String]) -> String {
    fleet.cluster.spec.hosts.value.retain(|h| !removed.contains(&h.name.value));
    phases::endpoint(fleet).await;
    format!(
        "take {} out of {} now (the API load balancer / VIP no longer use it; while it is listed, `pikube up` \
         tries to reach it and adds it back), or give it a new card and run `pikube up` to bring it back fresh",
        removed.join(", "),
        fleet.cluster.file.display()
    )
}

/// Whether the node's Kubernetes unit runs (k3s, or kubelet under kubeadm).
fn runs(d: Distribution, n: &Node) -> bool {
    n.ok() && n.facts().is_some_and(|f| f.services.get(distro::unit_name(d, n.role())).is_some_and(|s| s.active))
}

/// Whether the node has Kubernetes installed (its unit enabled or running).
fn installed(d: Distribution, n: &Node) -> bool {
    n.facts().is_some_and(|f| f.services.get(distro::unit_name(d, n.role())).is_some_and(|s| s.enabled || s.active))
}

async fn reset_all(fleet: &Fleet, role: Role) {
    let d = fleet.cluster.distribution();
    fleet
        .each(|node: &Node, host: &Host| async move {
            if node.role() != role {
                return Ok(());
            }
            reset(d, node, host).await
        })
        .await;
}

/// Drains the node and deletes it from the API (k3s then removes a server's etcd member).
async fn remove_from_api(api: &Host, host: &Host, name: &str) -> Result<(), String> {
    drain(Distribution::K3s, api, host, name).await?;
    let delete = Cmd::change_script(format!("{BIN} kubectl delete node {} --ignore-not-found", quote(name)));
    api.apply(format!("delete node {name}"), &delete).await.map_err(|e| e.to_string())
}

/// How long the pods of a node taken out of the cluster may take to leave it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Drains `name` through `api`: its pods are evicted, DaemonSet pods stay. Never forced: a
/// pod without a controller, or one a PodDisruptionBudget holds, stops the removal, named in
/// kubectl's words, and the node is schedulable again as it was. A node the API does not list
/// (a second `down` after one that failed later) is not drained.
pub async fn drain(d: Distribution, api: &Host, host: &Host, name: &str) -> Result<(), String> {
    let kubectl = distro::kubectl(d);
    let e = |e: crate::remote::RemoteError| e.to_string();
    let n = quote(name);
    let probe = format!("{kubectl} get node {n} --ignore-not-found -o json");
    let listed = api.run_ok(&Cmd::read_script(probe).timeout(Duration::from_secs(30))).await.map_err(e)?;
    if listed.trim().is_empty() {
        return Ok(());
    }
    let node: serde_json::Value =
        serde_json::from_str(&listed).map_err(|err| format!("unexpected answer for Node {name}: {err}"))?;
    let was_cordoned = node.pointer("/spec/unschedulable") == Some(&serde_json::Value::Bool(true));
    let secs = DRAIN_TIMEOUT.as_secs();
    host.record(format!("drain {name} through {}: evict its pods (up to {secs}s, nothing forced)", api.name));
    let script = format!("{kubectl} drain {n} --ignore-daemonsets --delete-emptydir-data --timeout={secs}s");
    let out = api.run(&Cmd::change_script(script).timeout(DRAIN_TIMEOUT + Duration::from_secs(60))).await.map_err(e)?;
    let said = format!("{}\n{}", out.stdout_str(), out.stderr_str());
    if out.success() {
        for pod in phases::upgrade::evicted_pods(&said) {
            host.record(format!("evicted pod {pod}"));
        }
        return Ok(());
    }
    if !was_cordoned {
        api.run(&Cmd::change_script(format!("{kubectl} uncordon {n}"))).await.map_err(e)?;
    }
    Err(format!(
        "could not drain {name} (nothing forced, up to {secs}s): it was not reset and {}\n  kubectl drain said:\n    {}\n  \
         hint: move or delete what keeps its pods there (a pod without a controller, a PodDisruptionBudget), then run \
         `pikube down --limit {name}` again",
        if was_cordoned { "stays cordoned, as it was" } else { "is schedulable again" },
        phases::upgrade::last_lines(&out.stderr_str(), 6)
    ))
}

/// Resets a server or agent the distribution's way; a load balancer keeps HAProxy.
async fn reset(d: Distribution, node: &Node, host: &Host) -> Result<(), String> {
    match (node.role(), d) {
        (Role::Loadbalancer, _) => Ok(()),
        (_, Distribution::K3s) => reset_k3s(node, host).await,
        (_, Distribution::Kubeadm) => kubeadm::teardown::reset(host).await,
    }
}

/// Removes k3s as its own uninstall does (see `teardown`), then checks that nothing of it is
/// left; a leftover fails the node, naming it. A node without k3s is still checked, so a
/// second `down` finishes what an earlier one had to leave (a busy mount).
async fn reset_k3s(node: &Node, host: &Host) -> Result<(), String> {
    let facts = node.facts().ok_or("no facts gathered")?;
    let installed = facts.kubernetes.contains_key("k3s")
        || [Role::Server, Role::Agent]
            .iter()
            .any(|r| facts.services.get(k3s::unit_name(*r)).is_some_and(|s| s.enabled || s.active));
    if !installed && teardown::leftovers(host).await?.is_empty() {
        return Ok(());
    }
    teardown::remove(host).await?;
    let left = teardown::leftovers(host).await?;
    if left.is_empty() {
        Ok(())
    } else {
        Err(left.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::check_quorum;

    #[test]
    fn a_removal_must_leave_etcd_a_quorum() {
        // A dead one of three: two answer, two stay.
        assert!(check_quorum("node3", 3, &["node1", "node2"]).is_ok());
        // A live one of three: afterwards two of two answer.
        assert!(check_quorum("node3", 3, &["node1", "node2", "node3"]).is_ok());
        // Two of three dead: etcd takes no change at all.
        let e = check_quorum("node2", 3, &["node1"]).unwrap_err();
        assert!(
            e.starts_with("refusing to remove node2: etcd has 3 members and only 1 answer (node1); it needs 2"),
            "{e}"
        );
        // A live one while another is dead: one of two would be left to answer.
        let e = check_quorum("node3", 3, &["node1", "node3"]).unwrap_err();
        assert!(e.contains("without node3 only 1 of the 2 left would answer, fewer than the 2 etcd needs"), "{e}");
        // The last two: one may go while both answer.
        assert!(check_quorum("node2", 2, &["node1", "node2"]).is_ok());
    }
}
