//! The phases of `pikube up`, in order. `plan` runs the same list in dry-run mode, so what it
//! prints is exactly what `up` would do: every mutation goes through `remote::Host::apply`
//! (or `ensure_file`), which only records it when planning.

mod cluster_hooks;
#[cfg(test)]
mod golden;
pub(crate) mod init_guard;
pub(crate) mod k3s_agents;
pub(crate) mod k3s_artifacts;
pub(crate) mod k3s_servers;
mod kubeconfig;
mod load_balancer;
mod preflight;
mod prepare_host;
mod readiness;
mod reboot;
mod storage;
pub(crate) mod upgrade;
mod verify;
mod virtual_ip;

use futures::future::BoxFuture;

use crate::config::HookWhen;
use crate::distro;
use crate::fleet::{Fleet, Node};
use crate::remote::{Cmd, Host, Mode};

pub struct Phase {
    pub name: &'static str,
    /// Whether the phase also runs in plan mode (waiting and verifying need the changes made).
    pub in_plan: bool,
    /// Part of the Kubernetes install: skipped when the cluster file pins no version.
    pub kubernetes: bool,
    pub run: for<'a> fn(&'a Fleet) -> BoxFuture<'a, ()>,
}

const fn phase(
    name: &'static str,
    in_plan: bool,
    kubernetes: bool,
    run: for<'a> fn(&'a Fleet) -> BoxFuture<'a, ()>,
) -> Phase {
    Phase { name, in_plan, kubernetes, run }
}

/// Every phase, in execution order. The one place that lists them.
pub const PHASES: &[Phase] = &[
    phase("preflight", true, false, preflight::run),
    phase("prepare hosts", true, false, prepare_host::run),
    // Before anything of Kubernetes writes its data, and before the reboot.
    phase("storage", true, false, storage::run),
    phase("reboot", true, false, reboot::run),
    phase("verify", false, false, verify::run),
    phase("artifacts", true, true, distro::artifacts),
    phase("container runtime", true, true, distro::container_runtime),
    phase("load balancer", true, true, load_balancer::run),
    phase("virtual ip", true, true, virtual_ip::run),
    phase("servers", true, true, distro::servers),
    phase("pod network", true, true, distro::pod_network),
    phase("post-master-up", true, true, cluster_hooks::post_master_up),
    phase("agents", true, true, distro::agents),
    phase("ready", false, true, readiness::run),
    phase("kubeconfig", false, true, kubeconfig::run),
];

/// Names phases had when k3s was the only distribution: host hooks written with them still
/// run, at the phase that took over.
const ALIASES: [(&str, &str); 3] =
    [("k3s artifacts", "artifacts"), ("k3s servers", "servers"), ("k3s agents", "agents")];

/// Phase names (and the old aliases), for validating host hooks.
pub fn names() -> Vec<&'static str> {
    PHASES.iter().map(|p| p.name).chain(ALIASES.iter().map(|(old, _)| *old)).collect()
}

/// The phase a hook's `phase:` names: an old alias resolves to today's name.
fn canonical(name: &str) -> &str {
    ALIASES.iter().find(|(old, _)| *old == name).map_or(name, |(_, new)| new)
}

pub use cluster_hooks::{pre_master_down, APPLIED_DIR as HOOKS_APPLIED_DIR};
pub use kubeconfig::write_local as write_kubeconfig;
pub use upgrade::CORDONED_BY_PIKUBE;

/// Renders the API endpoint again (HAProxy backends, keepalived peers) from the fleet's
/// cluster, e.g. after `down` removed a dead server from it.
pub async fn endpoint(fleet: &Fleet) {
    load_balancer::run(fleet).await;
    virtual_ip::run(fleet).await;
}

pub(crate) use load_balancer::{ensure_running, install_package};

/// Runs all phases over the fleet. Hosts that fail drop out; the others go on.
pub async fn run_all(fleet: &Fleet) {
    let kubernetes = fleet.cluster.version().is_some();
    for phase in PHASES {
        if (fleet.mode == Mode::DryRun && !phase.in_plan) || (phase.kubernetes && !kubernetes) {
            continue;
        }
        if fleet.mode == Mode::Apply {
            crate::progress::phase(phase.name);
        }
        for n in fleet.nodes.iter().filter(|n| n.ok()) {
            if let Some(h) = &n.host {
                h.set_phase(phase.name);
            }
        }
        host_hooks(fleet, phase.name, HookWhen::Before).await;
        (phase.run)(fleet).await;
        host_hooks(fleet, phase.name, HookWhen::After).await;
    }
    if !kubernetes && fleet.mode == Mode::Apply {
        crate::progress::headline("Kubernetes not installed: the cluster file pins no kubernetes.version");
    }
}

/// The cluster file's shell commands for this phase, on the hosts they name.
async fn host_hooks(fleet: &Fleet, phase: &str, when: HookWhen) {
    let hooks: Vec<_> = fleet
        .cluster
        .spec
        .hooks
        .hosts
        .iter()
        .filter(|h| canonical(&h.phase.value) == phase && h.when == when)
        .collect();
    if hooks.is_empty() {
        return;
    }
    let label = if when == HookWhen::Before { "before" } else { "after" };
    fleet
        .each(|node: &Node, host: &Host| {
            let hooks = hooks.clone();
            async move {
                for hook in hooks.iter().filter(|h| h.applies_to(&node.spec)) {
                    let cmd = Cmd::change_script(hook.run.clone()).timeout(std::time::Duration::from_secs(600));
                    host.apply(format!("hook {label} {phase}: {}", hook.run), &cmd).await.map_err(|e| e.to_string())?;
                }
                Ok(())
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_k3s_phase_names_still_name_their_phases() {
        let phases: Vec<&str> = PHASES.iter().map(|p| p.name).collect();
        for (old, new) in ALIASES {
            assert!(phases.contains(&new), "{old:?} points at a phase that exists");
            assert!(!phases.contains(&old), "{old:?} is no phase of its own any more");
            assert!(names().contains(&old), "{old:?} is accepted in host hooks");
            assert_eq!(canonical(old), new);
        }
        assert_eq!(canonical("servers"), "servers");
        assert_eq!(canonical("prepare hosts"), "prepare hosts");
    }
}
