//! Waits, with a bound, until every server and agent is Ready in the API and registered with
//! the node IP from the cluster file. A node that is not gets its own k3s log lines in the
//! error instead of a silent hang. Then every node's kubelet must report the pinned version
//! (an upgrade that "succeeded" on a node still running the old one is an error), and nodes
//! pikube cordoned for an upgrade, in this run or one cut short, are uncordoned.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::config::{Distribution, Role};
use crate::distro;
use crate::fleet::{Fleet, Node};
use crate::k3s;
use crate::remote::{quote, Cmd};

pub fn run<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        let members: Vec<&Node> = fleet.nodes.iter().filter(|n| n.role() != Role::Loadbalancer && n.ok()).collect();
        if members.is_empty() {
            return;
        }
        let Some((api_node, api)) = fleet.healthy(Role::Server).next() else {
            members.iter().for_each(|n| n.fail("no healthy server to ask whether this node is Ready".into()));
            return;
        };
        let started = Instant::now();
        let d = fleet.cluster.distribution();
        loop {
            match distro::nodes(d, api).await {
                Ok(status) => {
                    // Ready in the API is not enough right after a restart: the old heartbeat is
                    // still fresh. The unit must also be active (k3s notifies once registered).
                    let inactive = inactive_units(d, &members).await;
                    let pending: Vec<&&Node> = members
                        .iter()
                        .filter(|n| !status.get(n.name()).is_some_and(|s| s.ready) || inactive.contains(&n.name()))
                        .collect();
                    if pending.is_empty() {
                        check_node_ips(&members, &status);
                        reconcile_labels_and_taints(d, api, &members, &status).await;
                        for n in &members {
                            let (Some(host), Some(s)) = (&n.host, status.get(n.name())) else { continue };
                            if let Err(e) = super::upgrade::settle(fleet, n, host, s).await {
                                n.fail(e);
                            }
                        }
                        distro::verify_release(fleet, api).await;
                        let all =
                            format!("all {} nodes Ready ({:.1}s)", members.len(), started.elapsed().as_secs_f64());
                        crate::progress::note(&all);
                        return;
                    }
                    if started.elapsed() > fleet.ready_timeout {
                        for n in pending {
                            let state = if inactive.contains(&n.name()) {
                                "service not active"
                            } else if status.contains_key(n.name()) {
                                "NotReady"
                            } else {
                                "not registered"
                            };
                            let log = match &n.host {
                                Some(h) => distro::diagnostics(d, h, n.role()).await,
                                None => String::new(),
                            };
                            n.fail(format!(
                                "{state} after {}s; last lines of {}:{log}",
                                fleet.ready_timeout.as_secs(),
                                distro::unit_name(d, n.role())
                            ));
                        }
                        return;
                    }
                }
                Err(last_error) => {
                    if started.elapsed() > fleet.ready_timeout {
                        let log = distro::diagnostics(d, api, Role::Server).await;
                        for n in &members {
                            n.fail(format!("the API on {} did not answer: {last_error}{log}", api_node.name()));
                        }
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    })
}

/// k3s applies `node-label`/`node-taint` only when a node registers, so a label or taint
/// added to the cluster file later is set through the API, as are `api_labels` (labels
/// kubelet may not set itself, like node-role.kubernetes.io/*). Ones removed from the file stay
/// (pikube cannot tell them from labels set by others).
async fn reconcile_labels_and_taints(
    d: Distribution,
    api: &crate::remote::Host,
    members: &[&Node],
    status: &BTreeMap<String, k3s::NodeStatus>,
) {
    for n in members {
        let Some(s) = status.get(n.name()) else { continue };
        let labels: Vec<String> = n
            .spec
            .labels
            .iter()
            .chain(n.spec.api_labels.iter())
            .filter(|(k, v)| s.labels.get(*k).map(String::as_str) != Some(*v))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let taints: Vec<String> =
            n.spec.taints.iter().map(|t| t.value.clone()).filter(|t| !s.taints.contains(t)).collect();
        for (verb, changes) in [("label", labels), ("taint", taints)] {
            if changes.is_empty() {
                continue;
            }
            let args: Vec<String> = changes.iter().map(|c| quote(c)).collect();
            let cmd = Cmd::change_script(format!(
                "{} {verb} node {} {} --overwrite",
                distro::kubectl(d),
                quote(n.name()),
                args.join(" ")
            ));
            if let Err(e) = api.apply(format!("{verb} node {}: {}", n.name(), changes.join(" ")), &cmd).await {
                n.fail(format!("cannot {verb} the node: {e}"));
            }
        }
    }
}

/// Members whose node unit (k3s, kubelet) is not active (failed, or still starting).
async fn inactive_units<'a>(d: Distribution, members: &[&'a Node]) -> Vec<&'a str> {
    let checks = members.iter().map(|n| async move {
        let host = n.host.as_ref()?;
        matches!(distro::unit_active(d, host, n.role()).await, Ok(false)).then(|| n.name())
    });
    futures::future::join_all(checks).await.into_iter().flatten().collect()
}

/// A node registered under another IP than its cluster-file address is a misconfiguration
/// that breaks the overlay network later; say so now.
fn check_node_ips(members: &[&Node], status: &BTreeMap<String, k3s::NodeStatus>) {
    for n in members {
        let Some(facts) = n.facts() else { continue };
        let Ok(want) = k3s::node_ip(&n.spec, &facts) else { continue };
        if let Some(s) = status.get(n.name()) {
            if !s.internal_ip.is_empty() && s.internal_ip != want {
                n.fail(format!(
                    "registered with InternalIP {} but its address is {want}; re-run `pikube up` to restart it with node-ip {want}",
                    s.internal_ip
                ));
            }
        }
    }
}
