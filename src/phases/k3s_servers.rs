//! k3s servers: the first one initialises the cluster (`cluster-init` when there will be
//! several) unless another server already holds it, the others join through the endpoint
//! **one at a time**, each waited for until Ready, so the etcd membership grows one member at
//! a time and a failure stops the line.

use futures::future::BoxFuture;

use crate::config::{ApiEndpoint, EndpointMode, Role};
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
        let holders = holders(&servers).await;
        let endpoint = fleet.cluster.endpoint();
        let several = servers.len() > 1;
        let mut blocked: Option<String> = None;
        for (i, node) in servers.iter().enumerate() {
            let Some(host) = node.host.as_ref().filter(|_| node.ok()) else {
                if i == 0 && holders.is_empty() && !cluster_exists(fleet) {
                    blocked = Some(format!("the first server {} is not available to initialise the cluster", node.name()));
                }
                continue;
            };
            if let Some(why) = &blocked {
                node.fail(format!("not joined: {why}"));
                continue;
            }
            // Only a server holding the cluster, or the first one when none does, initialises:
            // a first server with an empty disk joins, else it would start a second cluster.
            // One that once joined keeps its `server:` (k3s ignores it with data; no restart).
            let direct = join_target(fleet, node, &holders);
            let initialised = holders.iter().any(|(n, d)| *n == node.name() && !d.joined);
            let join = match (&direct, i) {
                (_, 0) if holders.is_empty() || initialised => Join::Init { cluster_init: several },
                (Some(ep), 0) => Join::Via(ep),
                _ => Join::Via(&endpoint),
            };
            let result = async {
                let target = if let Join::Via(ep) = &join { Some(*ep) } else { None };
                if let Some(ep) = target.filter(|_| fleet.mode == Mode::Apply && !running(node)) {
                    k3s::wait_for_endpoint(host, ep, fleet.ready_timeout.min(std::time::Duration::from_secs(120))).await?;
                }
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
                blocked = Some(format!("server {} before it failed", node.name()));
            }
        }
    })
}

/// The servers whose data dir holds the cluster (a replaced or wiped server does not).
async fn holders<'a>(servers: &[&'a Node]) -> Vec<(&'a str, k3s::ServerData)> {
    let mut out = Vec::new();
    for node in servers {
        let Some(host) = node.host.as_ref().filter(|_| node.ok()) else { continue };
        match k3s::server_data(host).await {
            Ok(d) if d.holds => out.push((node.name(), d)),
            Ok(_) => {}
            Err(e) => node.fail(format!("cannot tell whether it holds the cluster: {e}")),
        }
    }
    out
}

/// Where a first server that does not initialise joins: a server holding the cluster,
/// directly, when the endpoint could route back to itself (mode none pointing at it, or a
/// VIP); None: through the endpoint.
fn join_target(fleet: &Fleet, node: &Node, holders: &[(&str, k3s::ServerData)]) -> Option<ApiEndpoint> {
    let endpoint = fleet.cluster.endpoint();
    let own = match endpoint.mode {
        EndpointMode::None => endpoint.address == node.spec.address(),
        EndpointMode::Vip => true,
        EndpointMode::Loadbalancer => false,
    };
    if !own {
        return None;
    }
    let holder = fleet.nodes.iter().find(|n| n.name() != node.name() && n.ok() && holders.iter().any(|(h, _)| *h == n.name()))?;
    // Servers listen on the endpoint port only in vip mode (`https-listen-port`).
    let port = if endpoint.mode == EndpointMode::Vip { endpoint.port } else { 6443 };
    Some(ApiEndpoint { mode: EndpointMode::None, address: holder.spec.address().to_string(), port, vip: None })
}

fn running(node: &Node) -> bool {
    node.facts().and_then(|f| f.services.get(k3s::unit_name(node.role())).cloned()).is_some_and(|s| s.active)
}

/// Some server already runs k3s: the cluster exists and can take joins without the first one.
fn cluster_exists(fleet: &Fleet) -> bool {
    fleet.nodes.iter().any(|n| n.role() == Role::Server && running(n))
}

/// A node that lost its password file (new disk) but whose name the cluster still knows would
/// be refused by k3s ("Node password rejected"): its old Node and secret go first, through a
/// server already running.
async fn forget_if_reflashed(fleet: &Fleet, node: &Node, host: &Host) -> Result<(), String> {
    if k3s::has_node_password(host).await? {
        return Ok(());
    }
    let api = fleet.healthy(Role::Server).find(|(n, _)| n.name() != node.name() && running(n));
    match api {
        Some((_, api)) => k3s::forget_node(api, node.name()).await,
        None => Ok(()),
    }
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
    if let Some(r) = k3s::registries(&fleet.cluster) {
        changed |= host.ensure_file(k3s::REGISTRIES, r.as_bytes(), Some(0o600)).await.map_err(e)?;
    }
    changed |= host.ensure_file(&k3s::env_path(role), k3s::env_file(&fleet.cluster).as_bytes(), Some(0o600)).await.map_err(e)?;
    changed |= host.ensure_file(&k3s::unit_path(role), k3s::unit(role).as_bytes(), Some(0o644)).await.map_err(e)?;
    changed |= node.k3s_binary_changed.load(std::sync::atomic::Ordering::SeqCst);
    let state = facts.services.get(k3s::unit_name(role)).cloned().unwrap_or_default();
    if !state.active {
        forget_if_reflashed(fleet, node, host).await?;
        k3s::start(host, role, false, "not running").await.map_err(e)?;
        Ok(true)
    } else if changed {
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
