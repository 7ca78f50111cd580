//! Bring-up with kubeadm: the first server runs `kubeadm init` (unless a control plane already
//! exists: a wiped first server joins it instead, after its stale etcd member and Node are
//! removed), the other servers join as control-plane nodes one at a time, each awaited, then
//! the pod network, then the agents in parallel. Join tokens and the certificate key are made
//! fresh on a running server for each run that needs them (tokens live 1 h, uploaded
//! certificates 2 h), held in memory and handed to kubeadm on stdin through a 0600 file that
//! is removed at once — never printed.

use std::time::Duration;

use futures::future::BoxFuture;

use super::render::{self, JoinSecrets};
use super::{artifacts, etcd};
use super::{ADMIN_CONF, KUBECTL};
use crate::config::{Cni, Role};
use crate::fleet::{Fleet, Node};
use crate::phases::init_guard::InitCheck;
use crate::remote::{quote, Cmd, Host, Mode, RemoteError};

const KUBEADM: &str = "/usr/local/bin/kubeadm";
const INIT_CONFIG: &str = "/etc/pikube/kubeadm.yaml";
const FLANNEL: &str = "/etc/pikube/cni/kube-flannel.yml";
const INIT_LOG: &str = "/var/log/pikube-kubeadm-init.log";
/// The outer limit on one kubeadm init or join, well above each wait pikube gives kubeadm
/// itself (render::TIMEOUTS).
const KUBEADM_TIMEOUT: Duration = Duration::from_secs(1800);

/// What a node's disk says about its part in the cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct NodeState {
    /// kubelet has its credentials: the node joined (or initialised).
    joined: bool,
    /// It runs a control plane (static pod manifests and the admin kubeconfig).
    control_plane: bool,
}

async fn node_state(host: &Host) -> Result<NodeState, RemoteError> {
    let probe = format!(
        "test -f /etc/kubernetes/kubelet.conf && echo joined; test -f /etc/kubernetes/manifests/kube-apiserver.yaml && test -f {ADMIN_CONF} && echo control-plane; true"
    );
    let out = host.run_ok(&Cmd::read_script(probe)).await?;
    Ok(NodeState { joined: out.contains("joined"), control_plane: out.contains("control-plane") })
}

pub fn servers<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        let servers: Vec<&Node> = fleet.nodes.iter().filter(|n| n.role() == Role::Server).collect();
        let mut states = Vec::new();
        for node in &servers {
            let state = match node.host.as_ref().filter(|_| node.ok()) {
                Some(h) => node_state(h).await.map_err(|e| node.fail(e.to_string())).unwrap_or_default(),
                None => NodeState::default(),
            };
            states.push(state);
        }
        let guard = InitCheck::of(fleet, servers.first().map_or("", |n| n.name()));
        let holding: Vec<&Node> =
            servers.iter().zip(&states).filter(|(n, s)| s.control_plane && n.ok()).map(|(n, _)| *n).collect();
        super::teardown::refuse_removed(fleet, &holding).await;
        // The server whose API joins go through: one that already runs a control plane.
        let mut api: Option<&Host> =
            servers.iter().zip(&states).find(|(n, s)| s.control_plane && n.ok()).and_then(|(n, _)| n.host.as_ref());
        // The release kubeadm's configuration names: an upgrade's first server applies the pin.
        let mut release = match api {
            Some(h) => super::upgrade::cluster_version(h).await.map_err(|e| tracing::warn!("{e}")).ok(),
            None => None,
        };
        let mut blocked: Option<String> = None;
        for (i, (node, state)) in servers.iter().zip(&states).enumerate() {
            let Some(host) = node.host.as_ref().filter(|_| node.ok()) else {
                if i == 0 && api.is_none() {
                    blocked =
                        Some(format!("the first server {} is not available to initialise the cluster", node.name()));
                }
                continue;
            };
            if let Some(why) = &blocked {
                node.fail(crate::phases::upgrade::held_back(fleet, node, why));
                continue;
            }
            let result = match step(*state, api, &guard) {
                Step::Converge => match super::upgrade::server(fleet, node, host, &mut release).await {
                    Ok(true) => Ok(()),
                    Ok(false) => keep_running(fleet, node, host).await,
                    Err(e) => Err(e),
                },
                Step::Rejoin(api) => rejoin(fleet, node, host, api).await,
                Step::Init => init(fleet, node, host).await,
                Step::Refused(why) => Err(why),
            };
            match result {
                Ok(()) if api.is_none() => api = Some(host),
                Ok(()) => {}
                Err(e) => {
                    node.fail(e);
                    blocked = Some(format!("server {} failed before it", node.name()));
                }
            }
        }
        if let Some(why) = blocked {
            for agent in fleet.nodes.iter().filter(|n| n.role() == Role::Agent && n.ok()) {
                agent.fail(crate::phases::upgrade::held_back(fleet, agent, &why));
            }
        }
    })
}

/// What a server does, from its disk and whether a control plane already runs elsewhere.
#[derive(Debug, PartialEq)]
enum Step<A> {
    /// It runs a control plane: upgrade or keep it running.
    Converge,
    /// Join the control plane `A` runs (a wiped server's old entries go first).
    Rejoin(A),
    /// `kubeadm init`: a new cluster.
    Init,
    /// It would have to initialise, but the cluster may exist (see `init_guard`): why not.
    Refused(String),
}

fn step<A>(state: NodeState, api: Option<A>, guard: &InitCheck) -> Step<A> {
    match (state.control_plane, api) {
        (true, _) => Step::Converge,
        (false, Some(api)) => Step::Rejoin(api),
        (false, None) => guard.refusal().map_or(Step::Init, Step::Refused),
    }
}

/// A node that already belongs to the cluster: kubelet must run (and start at boot). A
/// server's certificates are renewed when due (`certs`) before its API is awaited: with expired
/// ones the API never answers.
async fn keep_running(fleet: &Fleet, node: &Node, host: &Host) -> Result<(), String> {
    let state = node.facts().and_then(|f| f.services.get("kubelet").cloned()).unwrap_or_default();
    crate::phases::ensure_running(host, "kubelet", false, &state).await?;
    if node.role() == Role::Server {
        super::certs::renew_if_due(fleet, node, host).await?;
        if fleet.mode == Mode::Apply {
            wait_for_api(host, fleet.ready_timeout).await?;
        }
    }
    Ok(())
}

/// `kubeadm init` on the first server, from the configuration pikube rendered (validated by
/// kubeadm first).
async fn init(fleet: &Fleet, node: &Node, host: &Host) -> Result<(), String> {
    let version = fleet.cluster.version().ok_or("no version pinned")?;
    let facts = node.facts().ok_or("no facts gathered")?;
    let node_ip = crate::k3s::node_ip(&node.spec, &facts)?;
    // kube-proxy's configuration is the cluster's: one host that cannot set the global
    // conntrack limit makes kube-proxy leave it alone everywhere.
    let conntrack = fleet.nodes.iter().filter_map(Node::facts).all(|f| f.can_set_conntrack_max);
    let config = render::init_config(&fleet.cluster, &node.spec, &node_ip, version, conntrack);
    host.ensure_file(INIT_CONFIG, config.as_bytes(), Some(0o600)).await.map_err(|e| e.to_string())?;
    if fleet.mode == Mode::Apply {
        crate::progress::step(node.name(), "kubeadm init (a few minutes on a Pi) …");
    }
    // kubeadm init prints a join command with a token and the certificate key: its log is 0600.
    let script = format!(
        "set -e; umask 077; {KUBEADM} config validate --config {INIT_CONFIG} >/dev/null; systemctl enable -q kubelet; \
         rm -f {INIT_LOG}; {KUBEADM} init --config {INIT_CONFIG} --upload-certs >{INIT_LOG}"
    );
    let cmd = Cmd::change_script(script).timeout(KUBEADM_TIMEOUT);
    if let Err(e) = host.apply("kubeadm init --upload-certs", &cmd).await {
        let log = crate::distro::diagnostics(fleet.cluster.distribution(), host, Role::Server).await;
        return Err(format!("{e}\n    last lines of kubelet:{log}"));
    }
    if fleet.mode == Mode::Apply {
        wait_for_api(host, fleet.ready_timeout).await?;
    }
    Ok(())
}

/// A server without a control plane joins the one the others run; first the cluster forgets
/// what it still holds of an earlier life of this server.
async fn rejoin(fleet: &Fleet, node: &Node, host: &Host, api: &Host) -> Result<(), String> {
    forget_stale_server(node, host, api).await?;
    join(fleet, node, host, api, true).await
}

/// A server whose disk was wiped (a reflashed Pi) is still listed by the cluster under its
/// name: its Node and its etcd member, whose peer URL the new member needs (etcd refuses a
/// second member with the same peer URL, so kubeadm's etcd join would fail). Both go, through
/// `api`, a running server, before it joins again. A server new to the cluster has no Node:
/// etcd is not asked then (right after `kubeadm init` its pod is not in the API yet).
async fn forget_stale_server(node: &Node, host: &Host, api: &Host) -> Result<(), String> {
    if !node_listed(api, node.name()).await? {
        return Ok(());
    }
    let facts = node.facts().ok_or("no facts gathered")?;
    let node_ip = crate::k3s::node_ip(&node.spec, &facts)?;
    let members = etcd::members(api).await?;
    let stale: Vec<_> = members.iter().filter(|m| m.name == node.name() || m.host == node_ip).collect();
    host.record(format!(
        "{} runs no control plane, but the cluster still lists it (a wiped disk?): \
         its old etcd member and Node go through {} before it joins again",
        node.name(),
        api.name
    ));
    for member in stale {
        etcd::remove_member(api, member).await?;
    }
    let cmd = Cmd::change_script(format!("{KUBECTL} delete node {}", quote(node.name())));
    api.apply(format!("delete the old Node {}", node.name()), &cmd).await.map_err(|e| e.to_string())
}

/// Whether the API has a Node named `name`.
async fn node_listed(api: &Host, name: &str) -> Result<bool, String> {
    let cmd = Cmd::read_script(format!("{KUBECTL} get node {} -o name --ignore-not-found", quote(name)));
    Ok(!api.run_ok(&cmd).await.map_err(|e| e.to_string())?.trim().is_empty())
}

/// `kubeadm join` through the endpoint, as a control-plane node when `control_plane`.
async fn join(fleet: &Fleet, node: &Node, host: &Host, api: &Host, control_plane: bool) -> Result<(), String> {
    let secrets = match fleet.mode {
        Mode::Apply => join_secrets(api, control_plane).await?,
        // Planning makes no token: the join is only recorded.
        _ => JoinSecrets {
            token: "(made at join time)".into(),
            ca_cert_hash: "(read at join time)".into(),
            certificate_key: control_plane.then(|| "(made at join time)".into()),
        },
    };
    join_with(fleet, node, host, &secrets).await
}

async fn join_with(fleet: &Fleet, node: &Node, host: &Host, secrets: &JoinSecrets) -> Result<(), String> {
    let facts = node.facts().ok_or("no facts gathered")?;
    let node_ip = crate::k3s::node_ip(&node.spec, &facts)?;
    let config = render::join_config(&fleet.cluster, &node.spec, &node_ip, secrets);
    let control_plane = secrets.certificate_key.is_some();
    if fleet.mode == Mode::Apply {
        let what = if control_plane { "as a control-plane node" } else { "as a worker" };
        crate::progress::step(node.name(), &format!("kubeadm join {what} …"));
    }
    // The configuration holds the token: a 0600 file that lives only as long as the join.
    let script = format!(
        "set -e; umask 077; mkdir -p /etc/pikube; f=$(mktemp /etc/pikube/.join.XXXXXX); trap 'rm -f \"$f\"' EXIT; \
         cat > \"$f\"; {KUBEADM} config validate --config \"$f\" >/dev/null; systemctl enable -q kubelet; \
         {KUBEADM} join --config \"$f\" >/var/log/pikube-kubeadm-join.log"
    );
    let cmd = Cmd::change_script(script).stdin(config.into_bytes()).timeout(KUBEADM_TIMEOUT);
    let what = if control_plane { "kubeadm join --control-plane" } else { "kubeadm join" };
    if let Err(e) = host.apply(what, &cmd).await {
        let log = crate::distro::diagnostics(fleet.cluster.distribution(), host, node.role()).await;
        return Err(format!("{e}\n    last lines of kubelet:{log}"));
    }
    if control_plane && fleet.mode == Mode::Apply {
        wait_for_api(host, fleet.ready_timeout).await?;
    }
    Ok(())
}

/// A bootstrap token (1 h) with the CA's pin, and for servers a fresh certificate key
/// (kubeadm re-uploads the control-plane certificates encrypted with it; they expire in 2 h).
async fn join_secrets(api: &Host, control_plane: bool) -> Result<JoinSecrets, String> {
    let e = |e: RemoteError| format!("cannot make a join token on {}: {e}", api.name);
    api.record("make a join token (valid 1 h)".into());
    let cmd =
        Cmd::change_script(format!("{KUBEADM} token create --ttl 1h --print-join-command --kubeconfig {ADMIN_CONF}"));
    let out = api.run(&cmd).await.map_err(e)?;
    if !out.success() {
        return Err(format!("cannot make a join token on {}: {}", api.name, out.stderr_str().trim()));
    }
    let (token, ca_cert_hash) = parse_join_command(&out.stdout_str())
        .ok_or_else(|| format!("`kubeadm token create` on {} printed no token and CA hash", api.name))?;
    let certificate_key = if control_plane {
        api.record("upload the control-plane certificates with a fresh key (valid 2 h)".into());
        let cmd = Cmd::change_script(format!(
            "{KUBEADM} init phase upload-certs --upload-certs --kubeconfig {ADMIN_CONF} 2>/dev/null | tail -n 1"
        ));
        let key = api.run(&cmd).await.map_err(e)?.stdout_str().trim().to_string();
        if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("`kubeadm init phase upload-certs` on {} printed no certificate key", api.name));
        }
        Some(key)
    } else {
        None
    };
    Ok(JoinSecrets { token, ca_cert_hash, certificate_key })
}

/// The token and CA hash of `kubeadm join <ep> --token T --discovery-token-ca-cert-hash H`.
fn parse_join_command(line: &str) -> Option<(String, String)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let after =
        |flag: &str| words.iter().position(|w| *w == flag).and_then(|i| words.get(i + 1)).map(|s| s.to_string());
    Some((after("--token")?, after("--discovery-token-ca-cert-hash")?))
}

/// Waits until the API answers through the endpoint with this server's admin credentials.
pub(super) async fn wait_for_api(host: &Host, timeout: Duration) -> Result<(), String> {
    let probe =
        Cmd::read_script(format!("{KUBECTL} get --raw /readyz --request-timeout=5s")).timeout(Duration::from_secs(20));
    let started = std::time::Instant::now();
    loop {
        let out = host.run(&probe).await.map_err(|e| e.to_string())?;
        if out.success() {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(format!("the API did not answer within {}s: {}", timeout.as_secs(), out.stderr_str().trim()));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The pod network, applied with kubectl on a server: flannel's manifest from the airgap
/// directory (or the pinned release), again only when it changed or flannel is missing.
pub fn pod_network<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        let (Some(version), Cni::Flannel) = (fleet.cluster.version(), fleet.cluster.spec.kubernetes.cni) else {
            return;
        };
        let Some((node, host)) = fleet.healthy(Role::Server).next() else { return };
        if let Err(e) = apply_flannel(fleet, host, version).await {
            node.fail(e);
        }
    })
}

async fn apply_flannel(fleet: &Fleet, host: &Host, version: &str) -> Result<(), String> {
    let manifest = tokio::task::block_in_place(|| artifacts::flannel_manifest(&fleet.cluster, version))
        .map_err(|e| format!("flannel: {e}\n  hint: {}", e.hint()))?;
    let changed = host.ensure_file(FLANNEL, &manifest, Some(0o644)).await.map_err(|e| e.to_string())?;
    if !changed {
        let probe = Cmd::read_script(format!("{KUBECTL} -n kube-flannel get daemonset kube-flannel-ds -o name"));
        if host.run(&probe).await.map_err(|e| e.to_string())?.success() {
            return Ok(());
        }
    }
    let cmd = Cmd::change_script(format!("{KUBECTL} apply -f {FLANNEL}")).timeout(Duration::from_secs(120));
    host.apply("apply the flannel pod network", &cmd).await.map_err(|e| e.to_string())
}

/// Agents join in parallel with one token made for this run; joined ones keep kubelet running.
/// Then joined agents on another release are upgraded, one at a time.
pub fn agents<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        let pending = super::upgrade::pending_agents(fleet).await;
        join_agents(fleet).await;
        super::upgrade::agents(fleet, pending).await;
    })
}

async fn join_agents<'a>(fleet: &'a Fleet) {
    {
        let mut waiting = Vec::new();
        for (node, host) in fleet.healthy(Role::Agent) {
            match node_state(host).await {
                Ok(s) if s.joined => {
                    if let Err(e) = keep_running(fleet, node, host).await {
                        node.fail(e);
                    }
                }
                Ok(_) => waiting.push(node.name().to_string()),
                Err(e) => node.fail(e.to_string()),
            }
        }
        if waiting.is_empty() {
            return;
        }
        let secrets = match fleet.healthy(Role::Server).next() {
            Some((_, api)) if fleet.mode == Mode::Apply => join_secrets(api, false).await,
            Some(_) => Ok(JoinSecrets {
                token: "(made at join time)".into(),
                ca_cert_hash: "(read at join time)".into(),
                certificate_key: None,
            }),
            None => Err("no healthy server to make a join token".into()),
        };
        let secrets = match secrets {
            Ok(s) => s,
            Err(e) => {
                return fleet
                    .nodes
                    .iter()
                    .filter(|n| waiting.contains(&n.name().to_string()))
                    .for_each(|n| n.fail(e.clone()))
            }
        };
        let (secrets, waiting) = (&secrets, &waiting);
        fleet
            .each(move |node: &'a Node, host: &'a Host| async move {
                if !waiting.iter().any(|w| w == node.name()) {
                    return Ok(());
                }
                join_with(fleet, node, host, secrets).await
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wiped_first_server_initialises_only_when_no_server_may_hold_the_cluster() {
        let (wiped, running) = (NodeState::default(), NodeState { joined: true, control_plane: true });
        let free = InitCheck { first: "n1", ..Default::default() };
        assert_eq!(step::<&str>(wiped, None, &free), Step::Init, "a new cluster");
        assert_eq!(step(wiped, Some("n2"), &free), Step::Rejoin("n2"), "the others run it: join");
        assert_eq!(step::<&str>(running, None, &free), Step::Converge);
        let unreachable = |new_cluster| InitCheck {
            first: "n1",
            unavailable: vec![("n2", "cannot reach n2".into()), ("n3", "cannot reach n3".into())],
            made_before: vec![],
            new_cluster,
        };
        let Step::Refused(why) = step::<&str>(wiped, None, &unreachable(false)) else { panic!("not refused") };
        assert!(why.contains("n2 did not answer") && why.contains("--new-cluster"), "{why}");
        assert_eq!(step::<&str>(wiped, None, &unreachable(true)), Step::Init, "--new-cluster");
        // A reachable server running the control plane still takes the wiped one back.
        assert_eq!(step(wiped, Some("n2"), &unreachable(false)), Step::Rejoin("n2"));
        let traced = InitCheck { first: "n1", made_before: vec!["build/lab-config.yml".into()], ..Default::default() };
        assert!(matches!(step::<&str>(wiped, None, &traced), Step::Refused(_)));
    }

    #[test]
    fn the_join_command_gives_token_and_ca_hash() {
        let line =
            "kubeadm join 10.0.0.4:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash sha256:1234 \n";
        assert_eq!(parse_join_command(line), Some(("abcdef.0123456789abcdef".to_string(), "sha256:1234".to_string())));
        assert_eq!(parse_join_command("kubeadm join 10.0.0.4:6443 --token"), None);
    }
}
