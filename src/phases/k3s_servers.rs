//! k3s servers: the first one initialises the cluster (`cluster-init` when there will be
//! several), the others join through the endpoint **one at a time**, each waited for until
//! Ready, so the etcd membership grows one member at a time and a failure stops the line,
//! agents included: they would otherwise (re)start on a release no server could run.

use futures::future::BoxFuture;

use crate::config::Role;
use crate::fleet::{Fleet, Node};
use crate::k3s::{self, Join};
use crate::remote::{Cmd, Host, Mode};

pub fn run<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        let servers: Vec<&Node> = fleet.nodes.iter().filter(|n| n.role() == Role::Server).collect();
        let token = match k3s::token(fleet).await {
            Ok(t) => t,
            Err(e) => {
                servers.iter().for_each(|n| n.fail(format!("cannot get the cluster token: {e}")));
                return;
            }
        };
        let endpoint = fleet.cluster.endpoint();
        let several = servers.len() > 1;
        let mut blocked: Option<String> = None;
        for (i, node) in servers.iter().enumerate() {
            let Some(host) = node.host.as_ref().filter(|_| node.ok()) else {
                if i == 0 && !cluster_exists(fleet) {
                    blocked = Some(format!("the first server {} is not available to initialise the cluster", node.name()));
                }
                continue;
            };
            if let Some(why) = &blocked {
                node.fail(format!("not joined: {why}"));
                continue;
            }
            let join = if i == 0 { Join::Init { cluster_init: several } } else { Join::Via(&endpoint) };
            let result = async {
                if i > 0 && fleet.mode == Mode::Apply && !running(node) {
                    k3s::wait_for_endpoint(host, &endpoint, fleet.ready_timeout.min(std::time::Duration::from_secs(120))).await?;
                }
                // Joins use the full token (it pins the cluster CA), read once the first server runs.
                let token = if i == 0 { token.clone() } else { k3s::join_token(fleet, &token).await? };
                let started = converge_node(fleet, node, host, &token, join).await?;
                if started && fleet.mode == Mode::Apply {
                    eprintln!("    {}: waiting until Ready (up to {}s)", node.name(), fleet.ready_timeout.as_secs());
                    k3s::wait_ready(host, host, Role::Server, node.name(), fleet.ready_timeout).await?;
                }
                Ok::<(), String>(())
            }
            .await;
            if let Err(e) = result {
                node.fail(e);
                blocked = Some(format!("server {} failed before it", node.name()));
            }
        }
        if let Some(why) = blocked {
            for agent in fleet.nodes.iter().filter(|n| n.role() == Role::Agent && n.ok()) {
                agent.fail(format!("not joined: {why}"));
            }
        }
    })
}

/// Removes `path` when it exists; returns whether it did.
async fn remove_file(host: &Host, path: &str) -> Result<bool, crate::remote::RemoteError> {
    let probe = Cmd::read_script(format!("[ -e {p} ] && echo present || true", p = crate::remote::quote(path)));
    if host.run_ok(&probe).await?.trim() != "present" {
        return Ok(false);
    }
    host.apply(format!("remove {path} (no registry mirrors in the cluster file)"), &Cmd::change("rm", &["-f", path])).await?;
    Ok(true)
}

fn running(node: &Node) -> bool {
    node.facts().and_then(|f| f.services.get(k3s::unit_name(node.role())).cloned()).is_some_and(|s| s.active)
}

/// Some server already runs k3s: the cluster exists and can take joins without the first one.
fn cluster_exists(fleet: &Fleet) -> bool {
    fleet.nodes.iter().any(|n| n.role() == Role::Server && running(n))
}

/// Writes a node's k3s files and starts or restarts its unit when needed.
/// Returns whether k3s was (re)started, i.e. whether readiness must be awaited.
pub async fn converge_node(fleet: &Fleet, node: &Node, host: &Host, token: &str, join: Join<'_>) -> Result<bool, String> {
    let facts = node.facts().ok_or("no facts gathered")?;
    let role = node.role();
    let node_ip = k3s::node_ip(&node.spec, &facts)?;
    let config = k3s::config_yaml(&fleet.cluster, &node.spec, &node_ip, token, join);
    let e = |e: crate::remote::RemoteError| e.to_string();
    let mut changed = host.ensure_file(k3s::CONFIG, config.as_bytes(), Some(0o600)).await.map_err(e)?;
    match k3s::registries(&fleet.cluster) {
        Some(r) => changed |= host.ensure_file(k3s::REGISTRIES, r.as_bytes(), Some(0o600)).await.map_err(e)?,
        // Mirrors removed from the cluster file: a registries.yaml left behind would keep them.
        None => changed |= remove_file(host, k3s::REGISTRIES).await.map_err(e)?,
    }
    changed |= host.ensure_file(&k3s::env_path(role), k3s::env_file(&fleet.cluster).as_bytes(), Some(0o600)).await.map_err(e)?;
    changed |= host.ensure_file(&k3s::unit_path(role), k3s::unit(role).as_bytes(), Some(0o644)).await.map_err(e)?;
    changed |= node.k3s_binary_changed.load(std::sync::atomic::Ordering::SeqCst);
    let state = facts.services.get(k3s::unit_name(role)).cloned().unwrap_or_default();
    if !state.active {
        k3s::start(host, role, false, "not running").await.map_err(e)?;
        Ok(true)
    } else if changed || runs_replaced_binary(host, role).await.map_err(e)? {
        k3s::start(host, role, true, "configuration or binary changed").await.map_err(e)?;
        Ok(true)
    } else if !state.enabled {
        let unit = k3s::unit_name(role);
        host.apply(format!("enable {unit} at boot"), &Cmd::change("systemctl", &["enable", "-q", unit])).await.map_err(e)?;
        Ok(false)
    } else {
        Ok(false)
    }
}

/// Whether the unit's process runs a binary that was replaced on disk after it started: a
/// restart held back in an earlier run (a server failed first) is still owed.
async fn runs_replaced_binary(host: &Host, role: Role) -> Result<bool, crate::remote::RemoteError> {
    let unit = k3s::unit_name(role);
    let probe = Cmd::read_script(format!("readlink /proc/$(systemctl show -p MainPID --value {unit})/exe || true"));
    Ok(host.run_ok(&probe).await?.trim().ends_with(" (deleted)"))
}
