//! k3s agents join through the endpoint, all at once (bounded by --parallel). Readiness is
//! awaited by the `ready` phase for every node together. Agents restarting onto a new binary
//! go afterwards one at a time (drained, restarted, Ready on the new version, uncordoned),
//! so their pods always have somewhere to go; one that fails stops the line.

use futures::future::BoxFuture;

use crate::config::Role;
use crate::fleet::{Fleet, Node};
use crate::k3s::{self, Join};
use crate::remote::{Host, Mode};

use super::k3s_servers::converge_node;
use super::upgrade;

pub fn run<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        if !fleet.nodes.iter().any(|n| n.role() == Role::Agent && n.ok()) {
            return;
        }
        // Joins use the full token: it pins the cluster CA.
        let token = match k3s::token(fleet).await.map_err(|e| format!("cannot get the cluster token: {e}")) {
            Ok(secret) => {
                k3s::join_token(fleet, &secret).await.map_err(|e| format!("cannot read the full join token: {e}"))
            }
            Err(e) => Err(e),
        };
        let token = match token {
            Ok(t) => t,
            Err(e) => {
                fleet.nodes.iter().filter(|n| n.role() == Role::Agent).for_each(|n| n.fail(e.clone()));
                return;
            }
        };
        let (token, endpoint) = (&token, &fleet.cluster.endpoint());
        let mut upgrading = Vec::new();
        for (node, host) in fleet.healthy(Role::Agent) {
            match upgrade::restarts_onto_new_binary(node, host).await {
                Ok(true) => upgrading.push(node.name()),
                Ok(false) => {}
                Err(e) => node.fail(e),
            }
        }
        let rolling = &upgrading;
        fleet
            .each(move |node: &'a Node, host: &'a Host| async move {
                if node.role() != Role::Agent || rolling.contains(&node.name()) {
                    return Ok(());
                }
                if fleet.mode == Mode::Apply {
                    k3s::wait_for_endpoint(host, endpoint, std::time::Duration::from_secs(60)).await?;
                }
                converge_node(fleet, node, host, token, Join::Via(endpoint), false).await.map(|_| ())
            })
            .await;
        let mut blocked: Option<String> = None;
        for (node, host) in fleet.healthy(Role::Agent).filter(|(n, _)| upgrading.contains(&n.name())) {
            if let Some(why) = &blocked {
                node.fail(format!("not upgraded: {why}"));
                continue;
            }
            if let Err(e) = upgrade_one(fleet, node, host, token, endpoint).await {
                node.fail(e);
                blocked = Some(format!("agent {} failed before it", node.name()));
            }
        }
    })
}

/// One agent of the rolling upgrade: drained and restarted (`converge_node`), waited for
/// until Ready, checked and uncordoned.
async fn upgrade_one(
    fleet: &Fleet,
    node: &Node,
    host: &Host,
    token: &str,
    endpoint: &crate::config::ApiEndpoint,
) -> Result<(), String> {
    let started = converge_node(fleet, node, host, token, Join::Via(endpoint), true).await?;
    if !started || fleet.mode != Mode::Apply {
        return Ok(());
    }
    let (_, api) = fleet.healthy(Role::Server).next().ok_or("no healthy server to ask whether it is Ready")?;
    crate::progress::step(node.name(), &format!("waiting until Ready (up to {}s)", fleet.ready_timeout.as_secs()));
    let since = std::time::Instant::now();
    k3s::wait_ready(api, host, Role::Agent, node.name(), fleet.ready_timeout).await?;
    upgrade::settle_after_restart(fleet, node, host, since).await
}
