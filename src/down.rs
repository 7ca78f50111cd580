//! `pikube down`: the reverse of `up` for Kubernetes. The pre-master-down hook runs first;
//! with `--limit` the named nodes are drained, deleted from the API and reset one at a time;
//! without it agents are reset in parallel, then servers one at a time (last the first).
//! Host preparation (hostname, swap, cgroups) stays: it is harmless and slow to redo.
//! A `--limit` node that does not answer SSH is removed from the cluster without being
//! reset (see `remove_dead`).

use std::time::Duration;

use crate::config::Role;
use crate::fleet::{Fleet, Node};
use crate::k3s::{self, BIN};
use crate::phases;
use crate::remote::{Cmd, Host};
use crate::teardown;

/// Resets the named nodes (all Kubernetes nodes when `limit` is empty). Returns notes for the
/// user (what was removed without being reset, and what to do about it).
pub async fn run(fleet: &mut Fleet, limit: &[String]) -> Result<Vec<String>, String> {
    if fleet.cluster.distribution() == crate::config::Distribution::Kubeadm {
        return crate::distro::kubeadm::teardown::run(fleet, limit).await.map(|()| Vec::new());
    }
    // Labels the changes (in the JSON report) and each host's live line.
    for h in fleet.nodes.iter().filter_map(|n| n.host.as_ref()) {
        h.set_phase("down");
    }
    let api = fleet
        .healthy(Role::Server)
        .find(|(n, _)| !limit.iter().any(|l| l == n.name()) && has_k3s(n))
        .or_else(|| fleet.healthy(Role::Server).find(|(n, _)| has_k3s(n)))
        .map(|(_, h)| h);
    let whole = limit.is_empty();
    if whole {
        if let Some(api) = api {
            phases::pre_master_down(&fleet.cluster, api).await?;
        }
        reset_all(fleet, Role::Agent).await;
        let servers: Vec<&Node> = fleet.nodes.iter().filter(|n| n.role() == Role::Server).collect();
        for node in servers.into_iter().rev() {
            if let Some(host) = node.host.as_ref().filter(|_| node.ok()) {
                if let Err(e) = reset(node, host).await {
                    node.fail(e);
                }
            }
        }
        if fleet.failures().is_empty() {
            for path in [k3s::token_path(&fleet.cluster), fleet.cluster.kubeconfig_path()] {
                if std::fs::remove_file(&path).is_ok() {
                    crate::progress::note(&format!("removed {}", path.display()));
                }
            }
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
        let result = async {
            if let Some(api) = api.filter(|a| a.name != node.name()) {
                remove_from_api(api, name).await?;
            }
            reset(node, host).await
        }
        .await;
        if let Err(e) = result {
            node.fail(e);
        }
    }
    if !dead.is_empty() {
        notes.push(endpoint_without(fleet, &dead).await);
    }
    Ok(notes)
}

/// Removes a node that does not answer SSH (powered off, dead SD card): deletes its Node
/// through a healthy server and, for a server, waits for k3s to remove its etcd member, but
/// only while etcd keeps a quorum without it. Nothing runs on the node itself.
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
    let member = match node.role() {
        Role::Server => dead_member(fleet, node, api).await?,
        _ => None,
    };
    let delete = Cmd::change_script(format!("{BIN} kubectl delete node {name} --ignore-not-found"));
    api.apply(format!("delete node {name} (it does not answer SSH)"), &delete).await.map_err(|e| e.to_string())?;
    if let Some(m) = &member {
        wait_member_gone(api, m).await?;
    }
    let what = match &member {
        Some(m) => format!("deleted from the API and etcd member {} removed", m.name),
        None => "deleted from the API".to_string(),
    };
    Ok(format!(
        "{name} does not answer SSH: {what}. The host itself was NOT reset (nothing ran on it): if it comes back, \
         wipe or reflash it before it rejoins (its old k3s data would start it as a stale {role})",
        role = node.role().as_str()
    ))
}

/// The etcd member of dead server `node`, or None when it has none (any more). Refuses when
/// the members that answer are not a quorum: etcd then accepts no change at all, and
/// removing the member is not the way back (bring a server back, or restore a backup).
async fn dead_member(fleet: &Fleet, node: &Node, api: &Host) -> Result<Option<k3s::etcd::Member>, String> {
    let members = k3s::etcd::members(api).await?;
    let ips = k3s::nodes(api).await.unwrap_or_default();
    // A member's host is its server's node IP; the cluster file's address usually is too.
    let owner = |m: &k3s::etcd::Member| {
        fleet
            .nodes
            .iter()
            .filter(|n| n.role() == Role::Server)
            .find(|n| n.spec.address() == m.host || ips.get(n.name()).is_some_and(|s| s.internal_ip == m.host))
    };
    // A member answers when its host does and runs k3s (a reachable host with k3s stopped does not vote).
    let answering: Vec<&str> =
        members.iter().filter_map(|m| owner(m).filter(|n| has_k3s_running(n))).map(|n| n.name()).collect();
    let need = k3s::etcd::quorum(members.len());
    if answering.len() < need {
        return Err(format!(
            "refusing to remove {name}: etcd has {total} members and only {n} answer ({who}); it needs {need} to \
             change its membership, so removing {name} would not help and could lose the cluster. Bring another \
             server back first, or restore from a backup",
            name = node.name(),
            total = members.len(),
            n = answering.len(),
            who = if answering.is_empty() { "none".to_string() } else { answering.join(", ") },
        ));
    }
    Ok(members.iter().find(|m| owner(m).is_some_and(|n| n.name() == node.name())).cloned())
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

fn has_k3s_running(n: &Node) -> bool {
    n.ok() && n.facts().is_some_and(|f| f.services.get(k3s::unit_name(n.role())).is_some_and(|s| s.active))
}

fn has_k3s(n: &Node) -> bool {
    n.facts().is_some_and(|f| f.services.get(k3s::unit_name(n.role())).is_some_and(|s| s.enabled || s.active))
}

async fn reset_all(fleet: &Fleet, role: Role) {
    fleet
        .each(|node: &Node, host: &Host| async move {
            if node.role() != role {
                return Ok(());
            }
            reset(node, host).await
        })
        .await;
}

/// Drains the node (evicting its pods) and deletes it from the API. A node already gone (a
/// second `down` after one that left something behind) is not drained.
async fn remove_from_api(api: &Host, name: &str) -> Result<(), String> {
    let drain = Cmd::change_script(format!(
        "[ -z \"$({BIN} kubectl get node {name} --ignore-not-found --no-headers)\" ] || \
         {BIN} kubectl drain {name} --ignore-daemonsets --delete-emptydir-data --force --timeout=120s"
    ))
    .timeout(std::time::Duration::from_secs(150));
    api.apply(format!("drain {name}"), &drain).await.map_err(|e| e.to_string())?;
    let delete = Cmd::change_script(format!("{BIN} kubectl delete node {name} --ignore-not-found"));
    api.apply(format!("delete node {name}"), &delete).await.map_err(|e| e.to_string())
}

/// Removes k3s as its own uninstall does (see `teardown`), then checks that nothing of it is
/// left; a leftover fails the node, naming it. A node without k3s is still checked, so a
/// second `down` finishes what an earlier one had to leave (a busy mount).
async fn reset(node: &Node, host: &Host) -> Result<(), String> {
    if node.role() == Role::Loadbalancer {
        return Ok(());
    }
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
