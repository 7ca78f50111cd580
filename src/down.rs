//! `pikube down`: the reverse of `up` for Kubernetes. The pre-master-down hook runs first;
//! with `--limit` the named nodes are drained, deleted from the API and reset one at a time;
//! without it agents are reset in parallel, then servers one at a time (last the first).
//! Host preparation (hostname, swap, cgroups) stays: it is harmless and slow to redo.

use crate::config::Role;
use crate::fleet::{Fleet, Node};
use crate::k3s::{self, BIN};
use crate::phases;
use crate::remote::{Cmd, Host};
use crate::teardown;

/// Resets the named nodes (all k3s nodes when `limit` is empty).
pub async fn run(fleet: &Fleet, limit: &[String]) -> Result<(), String> {
    if fleet.cluster.distribution() == crate::config::Distribution::Kubeadm {
        return crate::distro::kubeadm::teardown::run(fleet, limit).await;
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
        return Ok(());
    }
    for name in limit {
        let node = fleet.nodes.iter().find(|n| n.name() == name).ok_or_else(|| format!("no host named {name:?}"))?;
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
    Ok(())
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
