//! k3s agents join through the endpoint, all at once (bounded by --parallel). Readiness is
//! awaited by the `ready` phase for every node together.

use futures::future::BoxFuture;

use crate::config::Role;
use crate::fleet::{Fleet, Node};
use crate::k3s::{self, Join};
use crate::remote::{Host, Mode};

use super::k3s_servers::converge_node;

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
        fleet
            .each(move |node: &'a Node, host: &'a Host| async move {
                if node.role() != Role::Agent {
                    return Ok(());
                }
                if fleet.mode == Mode::Apply {
                    k3s::wait_for_endpoint(host, endpoint, std::time::Duration::from_secs(60)).await?;
                }
                converge_node(fleet, node, host, token, Join::Via(endpoint)).await.map(|_| ())
            })
            .await;
    })
}
