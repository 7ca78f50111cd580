//! k3s servers: the first one initialises the cluster (`cluster-init` when there will be
//! several) unless another server already holds it; the others join through the endpoint
//! **one at a time**, each waited for until Ready, so the etcd membership grows one member at
//! a time and a failure stops the line, agents included: they would otherwise (re)start on a
//! release no server could run.

use futures::future::BoxFuture;

use super::init_guard::InitCheck;
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
        let guard = InitCheck::of(fleet, servers.first().map_or("", |n| n.name()));
        let endpoint = fleet.cluster.endpoint();
        let several = servers.len() > 1;
        let mut blocked: Option<String> = None;
        for (i, node) in servers.iter().enumerate() {
            let Some(host) = node.host.as_ref().filter(|_| node.ok()) else {
                if i == 0 && holders.is_empty() && !cluster_exists(fleet) {
                    blocked =
                        Some(format!("the first server {} is not available to initialise the cluster", node.name()));
                }
                continue;
            };
            if let Some(why) = &blocked {
                node.fail(super::upgrade::held_back(fleet, node, why));
                continue;
            }
            let plan = plan(i, node.name(), node.spec.address(), &holders, &endpoint, &guard);
            let join = match &plan {
                Plan::Init => Join::Init { cluster_init: several },
                Plan::Endpoint => Join::Via(&endpoint),
                Plan::Direct(ep) => Join::Via(ep),
                Plan::Refused(why) => {
                    node.fail(why.clone());
                    blocked = Some(format!("the first server {} did not initialise the cluster", node.name()));
                    continue;
                }
            };
            let result = async {
                let target = if let Join::Via(ep) = &join { Some(*ep) } else { None };
                if let Some(ep) = target.filter(|_| fleet.mode == Mode::Apply && !running(node)) {
                    k3s::wait_for_endpoint(host, ep, fleet.ready_timeout.min(std::time::Duration::from_secs(120)))
                        .await?;
                }
                // Joins use the full token (it pins the cluster CA), read from a server holding it.
                let token = if plan == Plan::Init { token.clone() } else { k3s::join_token(fleet, &token).await? };
                let upgrade = super::upgrade::restarts_onto_new_binary(node, host).await?;
                let started = converge_node(fleet, node, host, &token, join, upgrade).await?;
                if plan == Plan::Init && fleet.mode == Mode::Apply {
                    k3s::keep_token(fleet, &token)?;
                }
                if started && fleet.mode == Mode::Apply {
                    let wait = format!("waiting until Ready (up to {}s)", fleet.ready_timeout.as_secs());
                    crate::progress::step(node.name(), &wait);
                    let since = std::time::Instant::now();
                    k3s::wait_ready(host, host, Role::Server, node.name(), fleet.ready_timeout).await?;
                    // On the pinned version before the next server goes: a rolling upgrade
                    // that does not take stops here, not at the end.
                    super::upgrade::settle_after_restart(fleet, node, host, since).await?;
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
                agent.fail(super::upgrade::held_back(fleet, agent, &why));
            }
        }
    })
}

/// A healthy server whose data dir holds the cluster (a replaced or wiped one does not).
struct Holder<'a> {
    name: &'a str,
    address: &'a str,
    data: k3s::ServerData,
}

async fn holders<'a>(servers: &[&'a Node]) -> Vec<Holder<'a>> {
    let mut out = Vec::new();
    for node in servers {
        let Some(host) = node.host.as_ref().filter(|_| node.ok()) else { continue };
        match k3s::server_data(host).await {
            Ok(data) if data.holds => out.push(Holder { name: node.name(), address: node.spec.address(), data }),
            Ok(_) => {}
            Err(e) => node.fail(format!("cannot tell whether it holds the cluster: {e}")),
        }
    }
    out
}

/// How a server takes part.
#[derive(Debug, PartialEq)]
enum Plan {
    Init,
    /// Join (or, holding data, keep joining) through the endpoint.
    Endpoint,
    /// Join a server holding the cluster directly: the endpoint could route back to itself.
    Direct(ApiEndpoint),
    /// It would have to initialise, but the cluster may exist (see `init_guard`): why not.
    Refused(String),
}

/// Only a server holding the cluster, or the first one when none does, initialises: a first
/// server with an empty disk joins, else it would start a second cluster. One that once
/// joined keeps its `server:` (k3s ignores it with data; no restart). A joining first server
/// goes straight to a holder when the endpoint could route back to itself (mode none pointing
/// at it, or a VIP); the others join through the endpoint, as always. A first server that
/// would start a new cluster does so only when `guard` allows it.
fn plan(i: usize, name: &str, address: &str, holders: &[Holder], endpoint: &ApiEndpoint, guard: &InitCheck) -> Plan {
    let initialised = holders.iter().any(|h| h.name == name && !h.data.joined);
    if i > 0 {
        return Plan::Endpoint;
    }
    if initialised {
        return Plan::Init;
    }
    if holders.is_empty() {
        return guard.refusal().map_or(Plan::Init, Plan::Refused);
    }
    let own = match endpoint.mode {
        EndpointMode::None => endpoint.address == address,
        EndpointMode::Vip => true,
        EndpointMode::Loadbalancer => false,
    };
    match holders.iter().find(|h| h.name != name).filter(|_| own) {
        // Servers listen on the endpoint port (`https-listen-port`) unless a load balancer
        // forwards to 6443, and no load balancer is in the way here.
        Some(h) => Plan::Direct(ApiEndpoint {
            mode: EndpointMode::None,
            address: h.address.to_string(),
            port: endpoint.port,
            vip: None,
        }),
        None => Plan::Endpoint,
    }
}

/// Whether the node's k3s unit was active when its facts were gathered.
pub(super) fn running(node: &Node) -> bool {
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

/// Writes a node's k3s files and starts or restarts its unit when needed; `upgrade`: its
/// running k3s restarts onto a new binary, so it is drained first.
/// Returns whether k3s was (re)started, i.e. whether readiness must be awaited.
pub async fn converge_node(
    fleet: &Fleet,
    node: &Node,
    host: &Host,
    token: &str,
    join: Join<'_>,
    upgrade: bool,
) -> Result<bool, String> {
    let facts = node.facts().ok_or("no facts gathered")?;
    let role = node.role();
    let node_ip = k3s::node_ip(&node.spec, &facts)?;
    let config = k3s::config_yaml(&fleet.cluster, &node.spec, &node_ip, token, join);
    let e = |e: crate::remote::RemoteError| e.to_string();
    let mut changed = host.ensure_file(k3s::CONFIG, config.as_bytes(), Some(0o600)).await.map_err(e)?;
    match k3s::registries(&fleet.cluster) {
        Some(r) => changed |= host.ensure_file(k3s::REGISTRIES, r.as_bytes(), Some(0o600)).await.map_err(e)?,
        // Mirrors removed from the cluster file: a registries.yaml left behind would keep them.
        None => {
            changed |= host.remove_file(k3s::REGISTRIES, "no registry mirrors in the cluster file").await.map_err(e)?
        }
    }
    changed |= host
        .ensure_file(&k3s::env_path(role), k3s::env_file(&fleet.cluster).as_bytes(), Some(0o600))
        .await
        .map_err(e)?;
    changed |= host.ensure_file(&k3s::unit_path(role), k3s::unit(role).as_bytes(), Some(0o644)).await.map_err(e)?;
    let state = facts.services.get(k3s::unit_name(role)).cloned().unwrap_or_default();
    if !state.active {
        forget_if_reflashed(fleet, node, host).await?;
        k3s::start(host, role, false, "not running").await.map_err(e)?;
        Ok(true)
    } else if changed || upgrade {
        // Only a new binary drains: k3s restarts for a configuration change keep the pods.
        if upgrade {
            super::upgrade::drain(fleet, node, host).await?;
        }
        k3s::start(host, role, true, "configuration or binary changed").await.map_err(e)?;
        Ok(true)
    } else if !state.enabled {
        let unit = k3s::unit_name(role);
        host.apply(format!("enable {unit} at boot"), &Cmd::change("systemctl", &["enable", "-q", unit]))
            .await
            .map_err(e)?;
        Ok(false)
    } else {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW: k3s::ServerData = k3s::ServerData { holds: true, joined: false };
    const JOINED: k3s::ServerData = k3s::ServerData { holds: true, joined: true };

    fn ep(mode: EndpointMode, address: &str) -> ApiEndpoint {
        ApiEndpoint { mode, address: address.into(), port: 6443, vip: None }
    }

    fn holder<'a>(name: &'a str, address: &'a str, data: k3s::ServerData) -> Holder<'a> {
        Holder { name, address, data }
    }

    #[test]
    fn only_a_holder_or_the_first_server_of_a_new_cluster_initialises() {
        let free = InitCheck::default();
        let lb = ep(EndpointMode::Loadbalancer, "10.0.0.4");
        // A new cluster: the first server initialises, the others join.
        assert_eq!(plan(0, "n1", "10.0.0.1", &[], &lb, &free), Plan::Init);
        assert_eq!(plan(1, "n2", "10.0.0.2", &[], &lb, &free), Plan::Endpoint);
        // The first server made the cluster and still holds it: unchanged.
        let all = [holder("n1", "10.0.0.1", NEW), holder("n2", "10.0.0.2", JOINED)];
        assert_eq!(plan(0, "n1", "10.0.0.1", &all, &lb, &free), Plan::Init);
        assert_eq!(plan(1, "n2", "10.0.0.2", &all, &lb, &free), Plan::Endpoint);
        // Replaced first server: the others hold the cluster, it joins through the LB ...
        let others = [holder("n2", "10.0.0.2", JOINED), holder("n3", "10.0.0.3", JOINED)];
        assert_eq!(plan(0, "n1", "10.0.0.1", &others, &lb, &free), Plan::Endpoint);
        // ... and once it holds data as a joiner, it stays one.
        let rejoined = [holder("n1", "10.0.0.1", JOINED), holder("n2", "10.0.0.2", JOINED)];
        assert_eq!(plan(0, "n1", "10.0.0.1", &rejoined, &lb, &free), Plan::Endpoint);
    }

    #[test]
    fn a_replaced_first_server_never_joins_through_itself() {
        let free = InitCheck::default();
        let others = [holder("n2", "10.0.0.2", JOINED), holder("n3", "10.0.0.3", JOINED)];
        let direct =
            |port| Plan::Direct(ApiEndpoint { mode: EndpointMode::None, address: "10.0.0.2".into(), port, vip: None });
        // mode none: the endpoint is the first server's own address.
        assert_eq!(plan(0, "n1", "10.0.0.1", &others, &ep(EndpointMode::None, "10.0.0.1"), &free), direct(6443));
        assert_eq!(plan(0, "n1", "10.0.0.1", &others, &ep(EndpointMode::None, "10.0.0.9"), &free), Plan::Endpoint);
        // vip on the servers: it may hold the address; servers listen on the endpoint port.
        let vip = ApiEndpoint {
            mode: EndpointMode::Vip,
            address: "10.0.0.10".into(),
            port: 7443,
            vip: Some("10.0.0.10".into()),
        };
        assert_eq!(plan(0, "n1", "10.0.0.1", &others, &vip, &free), direct(7443));
    }

    #[test]
    fn a_wiped_first_server_does_not_initialise_while_other_servers_are_unreachable() {
        let lb = ep(EndpointMode::Loadbalancer, "10.0.0.4");
        let guard = |new_cluster| InitCheck {
            first: "n1",
            unavailable: vec![("n2", "cannot reach n2".into()), ("n3", "cannot reach n3".into())],
            made_before: vec![],
            new_cluster,
        };
        // n2 and n3 did not answer: no holder is known, but they may hold the cluster.
        let Plan::Refused(why) = plan(0, "n1", "10.0.0.1", &[], &lb, &guard(false)) else { panic!("not refused") };
        assert!(why.contains("bring n2, n3 back"), "{why}");
        assert_eq!(plan(0, "n1", "10.0.0.1", &[], &lb, &guard(true)), Plan::Init, "--new-cluster");
        // A first server that initialised the cluster and holds it restarts on its data.
        let own = [holder("n1", "10.0.0.1", NEW)];
        assert_eq!(plan(0, "n1", "10.0.0.1", &own, &lb, &guard(false)), Plan::Init);
        // Traces of the cluster on this machine stop it just the same.
        let traced = InitCheck { first: "n1", made_before: vec!["build/lab-config.yml".into()], ..Default::default() };
        assert!(matches!(plan(0, "n1", "10.0.0.1", &[], &lb, &traced), Plan::Refused(_)));
    }
}
