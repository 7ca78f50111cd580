//! Upgrades of a kubeadm cluster by editing `version`, in kubeadm's documented order: the
//! artifacts phase puts the new kubeadm on every node (kubelet and kubectl wait: a kubelet
//! must never be newer than the API servers) and the container runtime phase imports the new
//! release's images; then the first server runs `kubeadm upgrade apply`, the other servers and
//! then the agents `kubeadm upgrade node`, one node at a time, each drained (shared code in
//! `phases::upgrade`), given the new kubelet and kubectl, waited for until Ready on the new
//! version, and uncordoned. Skipping a minor version or going back is refused before any host
//! changes (a preflight finding); at the end every control-plane and kube-proxy pod must run
//! the pinned release's image.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::render::{self, UPGRADE_CONFIG};
use super::KUBECTL;
use crate::config::Role;
use crate::fleet::{Fleet, Node};
use crate::phases::upgrade as rolling;
use crate::remote::{Cmd, Host, Mode, RemoteError};

const KUBEADM: &str = "/usr/local/bin/kubeadm";
const UPGRADE_LOG: &str = "/var/log/pikube-kubeadm-upgrade.log";
/// pikube's bound on one `kubeadm upgrade`: kubeadm replaces etcd and three control-plane
/// static pods one after another and waits up to `render::UPGRADE_MANIFESTS` for each.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(3600);
/// The pods whose image must be the pinned release's once `up` is done.
const COMPONENTS: [&str; 4] = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"];

/// `major.minor.patch` of `v1.34.3` (a pre-release or build suffix is ignored).
pub(crate) fn parse(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.trim().trim_start_matches('v').split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// Why moving the nodes (`name`, installed release) to `want` is refused, with a hint: kubeadm
/// upgrades one minor release at a time and never downgrades. None when every step is allowed.
pub fn refusal(installed: &[(String, String)], want: &str) -> Option<(String, String)> {
    let to = parse(want)?;
    let on = |v: &str| -> Vec<&str> {
        installed.iter().filter(|(_, have)| have == v).map(|(n, _)| n.as_str()).collect::<Vec<_>>()
    };
    let mut versions: Vec<(u64, u64, u64, &str)> =
        installed.iter().filter_map(|(_, v)| parse(v).map(|(a, b, c)| (a, b, c, v.as_str()))).collect();
    versions.sort();
    versions.dedup();
    if let Some(newest) = versions.last().filter(|(a, b, c, _)| (*a, *b, *c) > to).map(|v| v.3) {
        return Some((
            format!(
                "version {want} is older than {newest}, which {} run(s): kubeadm cannot downgrade a cluster",
                on(newest).join(", ")
            ),
            format!("pin {newest} (or newer) again; to go back, restore a backup taken before the upgrade"),
        ));
    }
    let oldest = versions.iter().find(|(a, b, _, _)| *a != to.0 || b + 1 < to.1)?;
    let next = format!("v{}.{}", oldest.0, oldest.1 + 1);
    Some((
        format!(
            "version {want} skips a minor release: {} run(s) {} (kubeadm upgrades one minor release at a time)",
            on(oldest.3).join(", "),
            oldest.3
        ),
        format!("pin the newest {next}.x first and run `pikube up`, then each next minor release up to {want}"),
    ))
}

/// What a joined node runs: the kubelet on its disk and, on a server, the API server's image.
struct Running {
    kubelet: String,
    control_plane: Option<String>,
}

/// None when the node never joined a cluster (nothing to upgrade: it joins on the pinned release).
async fn running(host: &Host) -> Result<Option<Running>, String> {
    let probe = Cmd::read_script(
        "test -f /etc/kubernetes/kubelet.conf || exit 0; echo joined; /usr/local/bin/kubelet --version 2>/dev/null; \
         sed -n 's/^ *image: .*kube-apiserver:\\(.*\\)$/apiserver \\1/p' /etc/kubernetes/manifests/kube-apiserver.yaml 2>/dev/null; true",
    );
    let out = host.run_ok(&probe).await.map_err(|e| e.to_string())?;
    if !out.lines().any(|l| l == "joined") {
        return Ok(None);
    }
    let word = |prefix: &str| out.lines().find_map(|l| l.strip_prefix(prefix)).map(|v| v.trim().to_string());
    Ok(Some(Running { kubelet: word("Kubernetes ").unwrap_or_default(), control_plane: word("apiserver ") }))
}

/// Whether the artifacts phase must leave kubelet and kubectl alone on this node: it runs
/// another release, and its new kubelet comes only after `kubeadm upgrade` (see [`server`]).
pub async fn holds_back(host: &Host, version: &str) -> Result<bool, String> {
    Ok(running(host).await?.is_some_and(|r| !r.kubelet.is_empty() && r.kubelet != version))
}

/// The release the cluster's kubeadm configuration names (`kubeadm upgrade apply` sets it).
pub async fn cluster_version(api: &Host) -> Result<String, String> {
    let cmd = Cmd::read_script(format!(
        "{KUBECTL} -n kube-system get configmap kubeadm-config -o jsonpath='{{.data.ClusterConfiguration}}'"
    ))
    .timeout(Duration::from_secs(30));
    let out = api.run_ok(&cmd).await.map_err(|e| format!("cannot read the cluster's kubeadm configuration: {e}"))?;
    out.lines()
        .find_map(|l| l.trim().strip_prefix("kubernetesVersion:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .ok_or_else(|| "the kubeadm-config ConfigMap names no kubernetesVersion".into())
}

/// A server that belongs to the cluster. Off the pinned release it is upgraded: `kubeadm
/// upgrade apply` when the cluster itself is not on it yet (`cluster` becomes the pin), else
/// `kubeadm upgrade node`; then its kubelet. Returns false when there was nothing to do.
pub async fn server(fleet: &Fleet, node: &Node, host: &Host, cluster: &mut Option<String>) -> Result<bool, String> {
    let version = fleet.cluster.version().ok_or("no version pinned")?;
    let Some(run) = running(host).await? else { return Ok(false) };
    if run.kubelet == version && run.control_plane.as_deref() == Some(version) {
        return Ok(false);
    }
    if cluster.as_deref() != Some(version) {
        kubeadm(fleet, node, host, Step::Apply).await?;
        *cluster = Some(version.to_string());
    } else {
        kubeadm(fleet, node, host, Step::Node).await?;
    }
    if fleet.mode == Mode::Apply {
        super::bringup::wait_for_api(host, fleet.ready_timeout).await?;
    }
    new_kubelet(fleet, node, host, &run.kubelet, version).await
}

/// Joined agents off the pinned release, to be upgraded one at a time after the others joined.
pub async fn pending_agents(fleet: &Fleet) -> Vec<(&Node, &Host)> {
    let Some(version) = fleet.cluster.version() else { return vec![] };
    let mut out = Vec::new();
    for (node, host) in fleet.healthy(Role::Agent) {
        match running(host).await {
            Ok(Some(r)) if r.kubelet != version => out.push((node, host)),
            Ok(_) => {}
            Err(e) => node.fail(e),
        }
    }
    out
}

/// The `pending` agents, one at a time, so their pods always have somewhere to go; one that
/// fails stops the line.
pub async fn agents(fleet: &Fleet, pending: Vec<(&Node, &Host)>) {
    let mut blocked: Option<String> = None;
    for (node, host) in pending.into_iter().filter(|(n, _)| n.ok()) {
        let result = match (&blocked, fleet.healthy(Role::Server).next()) {
            (Some(why), _) => Err(format!("not upgraded: {why}")),
            (None, None) => Err("not upgraded: no healthy server".into()),
            (None, Some(_)) => agent(fleet, node, host).await,
        };
        if let Err(e) = result {
            node.fail(e);
            blocked.get_or_insert(format!("agent {} failed before it", node.name()));
        }
    }
}

/// One agent: `kubeadm upgrade node` (its kubelet configuration), then its kubelet.
async fn agent(fleet: &Fleet, node: &Node, host: &Host) -> Result<(), String> {
    let version = fleet.cluster.version().ok_or("no version pinned")?;
    let run = running(host).await?.ok_or("not joined")?;
    kubeadm(fleet, node, host, Step::Node).await?;
    new_kubelet(fleet, node, host, &run.kubelet, version).await.map(|_| ())
}

/// The two upgrade commands: `apply` on the first server, `node` on every other node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Apply,
    Node,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Apply => "kubeadm upgrade apply",
            Step::Node => "kubeadm upgrade node",
        }
    }

    /// The command line: the release, waits and ignored preflight errors come from the
    /// UpgradeConfiguration (kubeadm accepts only a few flags next to `--config`; `-y` is one).
    fn command(self) -> String {
        match self {
            Step::Apply => format!("{KUBEADM} upgrade apply -y --config {UPGRADE_CONFIG}"),
            Step::Node => format!("{KUBEADM} upgrade node --config {UPGRADE_CONFIG}"),
        }
    }
}

/// Writes the UpgradeConfiguration and runs `step` with it on the node (the configuration
/// validated by kubeadm first); kubeadm's output goes to a 0600 log whose last lines an error
/// shows.
async fn kubeadm(fleet: &Fleet, node: &Node, host: &Host, step: Step) -> Result<(), String> {
    let target = fleet.cluster.version().ok_or("no version pinned")?;
    let config = render::upgrade_config(target);
    host.ensure_file(UPGRADE_CONFIG, config.as_bytes(), Some(0o600)).await.map_err(|e| e.to_string())?;
    let what = step.name();
    if fleet.mode == Mode::Apply {
        crate::progress::step(node.name(), &format!("{what} (minutes on a Pi) …"));
    }
    // kubeadm's default credentials: admin.conf on servers; `upgrade node` on a worker, which
    // has none, uses kubelet's.
    let script = format!(
        "set -e; umask 077; {KUBEADM} config validate --config {UPGRADE_CONFIG} >/dev/null; {} >{UPGRADE_LOG} 2>&1",
        step.command()
    );
    let cmd = Cmd::change_script(script).timeout(UPGRADE_TIMEOUT);
    if let Err(e) = host.apply(format!("{what} --config {UPGRADE_CONFIG} (to {target})"), &cmd).await {
        let log = host
            .run(&Cmd::read_script(format!("tail -n 12 {UPGRADE_LOG}")))
            .await
            .map(|o| o.stdout_str().lines().map(|l| format!("\n      | {l}")).collect::<String>())
            .unwrap_or_default();
        return Err(format!("{e}\n    last lines of {UPGRADE_LOG}:{log}"));
    }
    Ok(())
}

/// Drains the node (shared code: `--no-drain`, `--drain-timeout`, a user's cordon kept), puts
/// the new kubelet and kubectl on it, restarts kubelet, waits until the API sees it Ready on the
/// pinned version and lifts pikube's cordon. Returns whether kubelet restarted.
async fn new_kubelet(fleet: &Fleet, node: &Node, host: &Host, from: &str, version: &str) -> Result<bool, String> {
    if from == version {
        return Ok(false);
    }
    rolling::drain(fleet, node, host).await?;
    let arch = node.facts().ok_or("no facts gathered")?.arch;
    let binaries = tokio::task::block_in_place(|| super::load(&fleet.cluster, version, &arch))?;
    for (name, bin, bytes) in binaries.iter().filter(|(n, _, _)| *n != "kubeadm") {
        super::push(fleet, node, host, name, bin, bytes).await?;
    }
    let restart = Cmd::change("systemctl", &["restart", "kubelet"]);
    host.apply(format!("restart kubelet ({from} → {version})"), &restart).await.map_err(|e| e.to_string())?;
    if fleet.mode == Mode::Apply {
        let wait = format!("waiting until Ready on {version} (up to {}s)", fleet.ready_timeout.as_secs());
        crate::progress::step(node.name(), &wait);
        rolling::settle_after_restart(fleet, node, host, Instant::now()).await?;
    }
    Ok(true)
}

/// The end of `up`: every control-plane pod (on each server) and kube-proxy pod (on every
/// node) must run the pinned release's image; waited for while kubeadm and the kube-proxy
/// DaemonSet roll them, then a pod still on another image fails its node.
pub async fn verify_release(fleet: &Fleet, api: &Host) {
    let Some(version) = fleet.cluster.version() else { return };
    let members: Vec<&Node> = fleet.nodes.iter().filter(|n| n.ok() && n.role() != Role::Loadbalancer).collect();
    let started = Instant::now();
    loop {
        let wrong = match stale_pods(api, &members, version).await {
            Ok(w) if w.is_empty() => return,
            Ok(w) => w,
            Err(e) => BTreeMap::from([(String::new(), vec![e])]),
        };
        if started.elapsed() > fleet.ready_timeout {
            for n in &members {
                let mut why = wrong.get(n.name()).cloned().unwrap_or_default();
                why.extend(wrong.get("").cloned().unwrap_or_default());
                if !why.is_empty() {
                    n.fail(format!(
                        "not on the pinned {version} after {}s: {}\n  hint: look at `kubectl -n kube-system get pods -o wide` and the node's kubelet log",
                        fleet.ready_timeout.as_secs(),
                        why.join("; ")
                    ));
                }
            }
            return;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// Per node, what is not on `version`: a component pod missing, or running another image.
async fn stale_pods(api: &Host, members: &[&Node], version: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let cmd = Cmd::read_script(format!("{KUBECTL} -n kube-system get pods -o json")).timeout(Duration::from_secs(30));
    let out = api.run_ok(&cmd).await.map_err(|e: RemoteError| format!("cannot list kube-system's pods: {e}"))?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("unexpected pod list: {e}"))?;
    let members: Vec<(&str, Role)> = members.iter().map(|n| (n.name(), n.role())).collect();
    Ok(stale(&v, &members, version))
}

/// [`stale_pods`] on the API's pod list.
fn stale(v: &Value, members: &[(&str, Role)], version: &str) -> BTreeMap<String, Vec<String>> {
    let mut found: BTreeMap<(String, &str), Vec<String>> = BTreeMap::new();
    for pod in v.get("items").and_then(Value::as_array).into_iter().flatten() {
        let labels = |k: &str| pod.pointer(&format!("/metadata/labels/{k}")).and_then(Value::as_str);
        let Some(component) =
            COMPONENTS.iter().find(|c| labels("component") == Some(c) || labels("k8s-app") == Some(c))
        else {
            continue;
        };
        let node = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("").to_string();
        let images = ["/spec/containers", "/status/containerStatuses"]
            .iter()
            .flat_map(|p| pod.pointer(p).and_then(Value::as_array).cloned().unwrap_or_default())
            .filter_map(|c| c.get("image").and_then(Value::as_str).map(str::to_string));
        found.entry((node, component)).or_default().extend(images);
    }
    let mut wrong: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, role) in members {
        let wanted = COMPONENTS.iter().filter(|c| *role == Role::Server || **c == "kube-proxy");
        for component in wanted {
            let images = found.get(&(name.to_string(), component)).cloned().unwrap_or_default();
            let off: Vec<&String> = images.iter().filter(|i| !i.ends_with(&format!(":{version}"))).collect();
            let why = match (images.is_empty(), off.first()) {
                (true, _) => format!("no {component} pod"),
                (false, Some(image)) => format!("{component} runs {image}"),
                (false, None) => continue,
            };
            wrong.entry(name.to_string()).or_default().push(why);
        }
    }
    wrong
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn patch_and_next_minor_releases_are_allowed() {
        let nodes = on(&[("n1", "v1.34.3"), ("n2", "v1.34.3")]);
        assert_eq!(refusal(&nodes, "v1.34.4"), None);
        assert_eq!(refusal(&nodes, "v1.34.3"), None);
        assert_eq!(refusal(&nodes, "v1.35.0"), None);
        // Half-way through an upgrade: some nodes on the pin already.
        assert_eq!(refusal(&on(&[("n1", "v1.34.4"), ("n2", "v1.34.3")]), "v1.34.4"), None);
        assert_eq!(refusal(&[], "v1.36.0"), None);
    }

    #[test]
    fn skipping_a_minor_release_is_refused_with_the_next_step() {
        let nodes = on(&[("n1", "v1.33.7"), ("n2", "v1.34.2")]);
        let (why, hint) = refusal(&nodes, "v1.35.0").unwrap();
        assert!(why.contains("v1.35.0 skips a minor release: n1 run(s) v1.33.7"), "{why}");
        assert!(hint.contains("pin the newest v1.34.x first"), "{hint}");
        assert!(refusal(&on(&[("n1", "v1.34.4")]), "v2.0.0").is_some());
    }

    #[test]
    fn downgrades_are_refused() {
        let nodes = on(&[("n1", "v1.34.4"), ("n2", "v1.34.4"), ("n3", "v1.34.3")]);
        let (why, hint) = refusal(&nodes, "v1.34.3").unwrap();
        assert!(why.contains("v1.34.3 is older than v1.34.4, which n1, n2 run(s)"), "{why}");
        assert!(hint.contains("pin v1.34.4"), "{hint}");
        assert!(refusal(&on(&[("n1", "v1.35.1")]), "v1.34.9").is_some());
    }

    #[test]
    fn a_component_pod_on_another_image_or_missing_is_named() {
        let pod = |name: &str, label: &str, node: &str, image: &str| {
            serde_json::json!({"metadata": {"name": name, "labels": {label.split('=').next().unwrap(): label.split('=').nth(1).unwrap()}},
                "spec": {"nodeName": node, "containers": [{"image": image}]},
                "status": {"containerStatuses": [{"image": image}]}})
        };
        let new = |c: &str| format!("registry.k8s.io/{c}:v1.34.4");
        let mut items = vec![];
        for c in ["kube-apiserver", "kube-controller-manager", "kube-scheduler"] {
            items.push(pod(&format!("{c}-n1"), &format!("component={c}"), "n1", &new(c)));
        }
        items.push(pod("kube-proxy-a", "k8s-app=kube-proxy", "n1", &new("kube-proxy")));
        items.push(pod("kube-proxy-b", "k8s-app=kube-proxy", "n2", "registry.k8s.io/kube-proxy:v1.34.3"));
        let members = [("n1", Role::Server), ("n2", Role::Agent), ("n3", Role::Agent)];
        let wrong = stale(&serde_json::json!({ "items": items }), &members, "v1.34.4");
        assert_eq!(wrong.get("n1"), None, "{wrong:?}");
        assert_eq!(wrong["n2"], ["kube-proxy runs registry.k8s.io/kube-proxy:v1.34.3"]);
        assert_eq!(wrong["n3"], ["no kube-proxy pod"]);
        assert!(stale(&serde_json::json!({ "items": items }), &members[..1], "v1.34.3")["n1"].len() == 4);
    }

    #[test]
    fn both_upgrade_commands_read_the_upgrade_configuration() {
        assert_eq!(
            Step::Apply.command(),
            "/usr/local/bin/kubeadm upgrade apply -y --config /etc/pikube/kubeadm-upgrade.yaml"
        );
        assert_eq!(
            Step::Node.command(),
            "/usr/local/bin/kubeadm upgrade node --config /etc/pikube/kubeadm-upgrade.yaml"
        );
        // The release and the ignored preflight error are the file's: kubeadm refuses most
        // flags next to --config.
        let config = render::upgrade_config("v1.34.4");
        assert!(config.contains("kind: UpgradeConfiguration\napply:\n  kubernetesVersion: v1.34.4\n"), "{config}");
        assert!(config.contains("  upgradeManifests: 10m0s\n"), "{config}");
    }

    #[test]
    fn versions_parse_with_suffixes() {
        assert_eq!(parse("v1.34.3"), Some((1, 34, 3)));
        assert_eq!(parse("v1.35.0-rc.1"), Some((1, 35, 0)));
        assert_eq!(parse("1.30.2+k3s1"), Some((1, 30, 2)));
        assert_eq!(parse("latest"), None);
    }
}
