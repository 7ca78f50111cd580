//! Safe upgrades, for both distributions. A node whose running k3s (or kubelet) restarts onto
//! a new binary is cordoned and drained first, through a server's API (`kubectl drain`, never forced: a pod it cannot evict in time
//! stops the upgrade, named). Once Ready again its kubelet must report the pinned version; only
//! then is it made schedulable again. A node the user had cordoned stays cordoned: pikube
//! marks the nodes it cordons on the node itself, so a run cut short (a node that never got
//! Ready) is finished by the next one.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::config::Role;
use crate::distro::{self, NodeStatus};
use crate::fleet::{Fleet, Node};
use crate::k3s;
use crate::remote::{quote, Cmd, Host, Mode, RemoteError};

use super::k3s_servers::running;

/// On the node while pikube holds it cordoned for an upgrade.
pub const CORDONED_BY_PIKUBE: &str = "/var/lib/pikube/cordoned-for-upgrade";

/// Whether the node's running k3s is to restart onto a changed binary: pushed in this run, or
/// replaced on disk after it started (a restart held back in an earlier run is still owed).
pub async fn restarts_onto_new_binary(node: &Node, host: &Host) -> Result<bool, String> {
    if !running(node) {
        return Ok(false);
    }
    if node.k3s_binary_changed.load(Ordering::SeqCst) {
        return Ok(true);
    }
    let unit = k3s::unit_name(node.role());
    let probe = Cmd::read_script(format!("readlink /proc/$(systemctl show -p MainPID --value {unit})/exe || true"));
    Ok(host.run_ok(&probe).await.map_err(|e| e.to_string())?.trim().ends_with(" (deleted)"))
}

/// Why `node` is skipped after a server before it failed: one that already runs is left as
/// it is (not restarted, not upgraded); a new one does not join.
pub fn held_back(fleet: &Fleet, node: &Node, why: &str) -> String {
    if runs(fleet, node) {
        format!("left as it is: {why}")
    } else {
        format!("not joined: {why}")
    }
}

/// Whether the node's unit (k3s, kubelet) was active when its facts were gathered.
fn runs(fleet: &Fleet, node: &Node) -> bool {
    let unit = distro::unit_name(fleet.cluster.distribution(), node.role());
    node.facts().and_then(|f| f.services.get(unit).cloned()).is_some_and(|s| s.active)
}

/// The API to drain and uncordon `node` through: another server that ran before this run
/// (a server being drained is about to restart), else the node itself when it is a server
/// (new clusters: the others may not run yet), else the first server (started in this run).
fn api_for<'a>(fleet: &'a Fleet, node: &'a Node) -> Option<&'a Host> {
    let others: Vec<(&Node, &Host)> = fleet.healthy(Role::Server).filter(|(n, _)| n.name() != node.name()).collect();
    let own = node.host.as_ref().filter(|_| node.role() == Role::Server);
    others.iter().find(|(n, _)| runs(fleet, n)).map(|(_, h)| *h).or(own).or(others.first().map(|(_, h)| *h))
}

/// kubectl with admin credentials on a server, for the fleet's distribution.
fn kubectl(fleet: &Fleet) -> &'static str {
    distro::kubectl(fleet.cluster.distribution())
}

/// Cordons and drains `node` before its restart onto a new binary; `--no-drain` skips it.
/// A drain that fails (a PodDisruptionBudget that never allows the eviction, a pod without
/// a controller) leaves the node as it was and fails it, naming the pods still on it.
pub async fn drain(fleet: &Fleet, node: &Node, host: &Host) -> Result<(), String> {
    let name = node.name();
    fleet.upgrade_order.lock().unwrap_or_else(|p| p.into_inner()).push(name.to_string());
    let Some(timeout) = fleet.drain_timeout else { return Ok(()) };
    let api = api_for(fleet, node).ok_or("no server runs to drain the node through")?;
    let asked = distro::nodes(fleet.cluster.distribution(), api)
        .await
        .map_err(|e| format!("cannot drain {name} through {}: {e}", api.name))?;
    let Some(before) = asked.get(name) else {
        return Ok(()); // not registered: nothing can run on it
    };
    let ours = !before.unschedulable;
    let what = format!("drain {name}: cordon, evict its pods (up to {}s)", timeout.as_secs());
    if fleet.mode == Mode::DryRun {
        let after = if ours { "uncordon it once Ready on the new version" } else { "it stays cordoned, as it was" };
        host.record(format!("{what}; {after}"));
        return Ok(());
    }
    host.record(what);
    let e = |e: RemoteError| e.to_string();
    if ours {
        let mark = format!("mkdir -p $(dirname {m}) && touch {m}", m = quote(CORDONED_BY_PIKUBE));
        host.run_ok(&Cmd::change_script(mark)).await.map_err(e)?;
    }
    let script = format!(
        "{k} drain {n} --ignore-daemonsets --delete-emptydir-data --timeout={t}s",
        k = kubectl(fleet),
        n = quote(name),
        t = timeout.as_secs()
    );
    let out = api.run(&Cmd::change_script(script).timeout(timeout + Duration::from_secs(60))).await.map_err(e)?;
    let said = out.stdout_str();
    if out.success() {
        for pod in evicted_pods(&said) {
            host.record(format!("evicted pod {pod}"));
        }
        return Ok(());
    }
    let left = pods_on(kubectl(fleet), api, name).await.unwrap_or_else(|e| vec![format!("(cannot list them: {e})")]);
    let kept = if ours { uncordon(fleet, node, host).await.err() } else { None };
    Err(format!(
        "drain of {name} did not finish within {}s; pods still on it: {}\n  {name} was not restarted{}; nothing was forced\n  kubectl drain said:\n    {}\n  hint: free what blocks them (a PodDisruptionBudget, a pod without a controller), raise --drain-timeout, or upgrade without draining (--no-drain)",
        timeout.as_secs(),
        if left.is_empty() { "none".to_string() } else { left.join(", ") },
        match (ours, kept) {
            (true, None) => " and is schedulable again",
            (true, Some(_)) => " and could not be uncordoned",
            (false, _) => " and stays cordoned, as it was",
        },
        last_lines(&out.stderr_str(), 6)
    ))
}

/// The pods `kubectl drain` evicted, once each: it says `evicting pod NS/NAME` on every
/// attempt (a PodDisruptionBudget makes it retry).
pub fn evicted_pods(said: &str) -> std::collections::BTreeSet<&str> {
    said.lines().filter_map(|l| l.trim().strip_prefix("evicting pod ")).map(str::trim).collect()
}

/// The last `n` non-blank lines of a command's output, indented under an error.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n    ")
}

/// `namespace/name` of the pods the API places on `node`, except DaemonSet and mirror pods
/// (drain leaves those).
async fn pods_on(kubectl: &str, api: &Host, node: &str) -> Result<Vec<String>, String> {
    let out = api
        .run_ok(&Cmd::read_script(format!("{kubectl} get pods -A -o json")).timeout(Duration::from_secs(30)))
        .await
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("unexpected pod list: {e}"))?;
    let items = v.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
    Ok(items
        .iter()
        .filter(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node))
        .filter(|p| p.pointer("/metadata/annotations/kubernetes.io~1config.mirror").is_none())
        .filter(|p| {
            let owners = p.pointer("/metadata/ownerReferences").and_then(Value::as_array);
            !owners.into_iter().flatten().any(|o| o["controller"] == true && o["kind"] == "DaemonSet")
        })
        .map(|p| {
            let f = |k: &str| p.pointer(&format!("/metadata/{k}")).and_then(Value::as_str).unwrap_or("default");
            format!("{}/{}", f("namespace"), f("name"))
        })
        .collect())
}

/// Lifts pikube's own cordon (the node carries the mark); a node cordoned by someone else
/// stays as it is.
async fn uncordon(fleet: &Fleet, node: &Node, host: &Host) -> Result<(), String> {
    let e = |e: RemoteError| e.to_string();
    if host.file_state(CORDONED_BY_PIKUBE).await.map_err(e)?.sha256.is_empty() {
        return Ok(());
    }
    let api = api_for(fleet, node).ok_or("no server runs to uncordon the node through")?;
    let name = node.name();
    host.record(format!("uncordon {name}"));
    if host.mode() == Mode::DryRun {
        return Ok(());
    }
    api.run_ok(&Cmd::change_script(format!("{} uncordon {}", kubectl(fleet), quote(name)))).await.map_err(e)?;
    host.run_ok(&Cmd::change("rm", &["-f", CORDONED_BY_PIKUBE])).await.map_err(e)?;
    Ok(())
}

/// Once `node` is Ready: its kubelet must report the pinned version, else it fails (and stays
/// cordoned if pikube cordoned it); then pikube's cordon is lifted.
pub async fn settle(fleet: &Fleet, node: &Node, host: &Host, status: &NodeStatus) -> Result<(), String> {
    if let Some(pin) = fleet.cluster.version() {
        if status.kubelet_version != pin {
            return Err(format!(
                "{} is Ready but its kubelet reports {}, not the pinned {pin}: it did not move to the pinned release{}\n  hint: something starts another binary than the pinned release's; look at `systemctl cat {}` on it",
                node.name(),
                status.kubelet_version,
                if status.unschedulable { " (left cordoned)" } else { "" },
                crate::distro::unit_name(fleet.cluster.distribution(), node.role())
            ));
        }
    }
    // Only a cordoned node can carry pikube's mark: a no-op run asks the nodes nothing more.
    if !status.unschedulable {
        return Ok(());
    }
    uncordon(fleet, node, host).await
}

/// After `node` restarted onto the pinned release: the API keeps the old kubelet's last status
/// (Ready, on the old version) until the new kubelet posts its own, so this waits, until the
/// ready timeout counted from `since`, for the node to be Ready on the pin; then [`settle`]
/// (a kubelet still on another version at the deadline fails the node, naming both).
pub async fn settle_after_restart(fleet: &Fleet, node: &Node, host: &Host, since: Instant) -> Result<(), String> {
    let api = api_for(fleet, node).ok_or("no server runs to ask for the node's version")?;
    let (d, pin) = (fleet.cluster.distribution(), fleet.cluster.version());
    loop {
        let late = since.elapsed() > fleet.ready_timeout;
        let last = match distro::nodes(d, api).await {
            Ok(mut all) => match all.remove(node.name()) {
                Some(s) if s.ready && (late || pin.is_none_or(|p| s.kubelet_version == p)) => {
                    return settle(fleet, node, host, &s).await
                }
                Some(s) => format!("{} on {}", if s.ready { "Ready" } else { "NotReady" }, s.kubelet_version),
                None => "not registered".into(),
            },
            Err(e) => e,
        };
        if late {
            let log = distro::diagnostics(d, host, node.role()).await;
            return Err(format!(
                "{} not Ready{} after {}s ({last}); last lines of {}:{log}",
                node.name(),
                pin.map(|p| format!(" on {p}")).unwrap_or_default(),
                fleet.ready_timeout.as_secs(),
                distro::unit_name(d, node.role())
            ));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
