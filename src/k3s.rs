//! What pikube writes for k3s and how it asks k3s about the cluster: paths, config.yaml,
//! registries.yaml, systemd units equivalent to the official installer's, the join token,
//! and node status. The phases in `phases/k3s_*.rs` decide when; this module says what.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::ToSocketAddrs;
use std::path::PathBuf;

use serde_json::Value;

use crate::config::{ApiEndpoint, Cluster, Distribution, EndpointMode, HostSpec, Role};
use crate::facts::HostFacts;
use crate::fleet::Fleet;
use crate::remote::{quote, Cmd, Host, Mode, RemoteError};

pub mod etcd;

pub const BIN: &str = "/usr/local/bin/k3s";
/// The installer links these to k3s when they are not on PATH yet.
pub const LINKS: [&str; 3] = ["kubectl", "crictl", "ctr"];
pub const CONFIG: &str = "/etc/rancher/k3s/config.yaml";
pub const REGISTRIES: &str = "/etc/rancher/k3s/registries.yaml";
pub const REMOTE_KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";
/// Written by a k3s server; holds the cluster's join token.
pub const SERVER_TOKEN: &str = "/var/lib/rancher/k3s/server/token";
/// The cluster's server CA; servers of one cluster share it.
pub const SERVER_CA: &str = "/var/lib/rancher/k3s/server/tls/server-ca.crt";
/// The datastore of a server: `etcd/` (embedded etcd) or `state.db` (sqlite) in real k3s.
pub const SERVER_DB: &str = "/var/lib/rancher/k3s/server/db";
/// Where a server keeps etcd snapshots (`k3s etcd-snapshot`'s default `--dir`).
pub const SNAPSHOTS: &str = "/var/lib/rancher/k3s/server/db/snapshots";
/// The node's own password; the cluster keeps its hash in the `<node>.node-password.k3s`
/// secret of kube-system and refuses the node name with another password.
pub const NODE_PASSWORD: &str = "/etc/rancher/node/password";

/// The systemd unit a role runs: `k3s` for servers, `k3s-agent` for agents.
pub fn unit_name(role: Role) -> &'static str {
    if role == Role::Server {
        "k3s"
    } else {
        "k3s-agent"
    }
}

pub fn unit_path(role: Role) -> String {
    format!("/etc/systemd/system/{}.service", unit_name(role))
}

pub fn env_path(role: Role) -> String {
    format!("/etc/systemd/system/{}.service.env", unit_name(role))
}

/// The unit the official install script writes (same limits, restart policy and notify type).
pub fn unit(role: Role) -> String {
    let (description, command) = if role == Role::Server {
        ("Lightweight Kubernetes", "server")
    } else {
        ("Lightweight Kubernetes (agent)", "agent")
    };
    format!(
        "# Written by pikube; equivalent to the unit of the official k3s installer.\n\
         [Unit]\n\
         Description={description}\n\
         Documentation=https://k3s.io\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n\
         \n\
         [Service]\n\
         Type=notify\n\
         EnvironmentFile=-/etc/default/%N\n\
         EnvironmentFile=-/etc/sysconfig/%N\n\
         EnvironmentFile=-{env}\n\
         KillMode=process\n\
         Delegate=yes\n\
         User=root\n\
         LimitNOFILE=1048576\n\
         LimitNPROC=infinity\n\
         LimitCORE=infinity\n\
         TasksMax=infinity\n\
         TimeoutStartSec=0\n\
         Restart=always\n\
         RestartSec=5s\n\
         ExecStartPre=-/sbin/modprobe br_netfilter\n\
         ExecStartPre=-/sbin/modprobe overlay\n\
         ExecStart={BIN} {command}\n",
        env = env_path(role),
    )
}

/// Proxy environment for k3s and the containerd it embeds. Cluster-internal traffic must
/// bypass the proxy, so host addresses, the endpoint and the pod/service CIDRs are added.
pub fn env_file(cluster: &Cluster) -> String {
    let mut out = String::from("# Written by pikube (proxy settings of the cluster file).\n");
    let Some(p) = &cluster.spec.proxy else { return out };
    for (k, v) in [("HTTP_PROXY", &p.http), ("HTTPS_PROXY", &p.https)] {
        if let Some(v) = v {
            let _ = writeln!(out, "{k}={}", v.value);
        }
    }
    let mut no_proxy: Vec<String> =
        ["127.0.0.1", "localhost", "10.42.0.0/16", "10.43.0.0/16", ".svc", ".cluster.local"].map(String::from).to_vec();
    no_proxy.extend(cluster.hosts().map(|h| h.address().to_string()));
    no_proxy.push(cluster.endpoint().address);
    no_proxy.extend(p.no_proxy.iter().map(|n| n.value.clone()));
    no_proxy.dedup();
    let _ = writeln!(out, "NO_PROXY={}", no_proxy.join(","));
    out
}

/// registries.yaml for the cluster file's registry mirrors; None when there are none.
pub fn registries(cluster: &Cluster) -> Option<String> {
    let mirrors = &cluster.spec.registry_mirrors;
    if mirrors.is_empty() {
        return None;
    }
    let mut out = String::from("# Written by pikube (registry_mirrors of the cluster file).\nmirrors:\n");
    for (registry, endpoints) in mirrors {
        let _ = writeln!(out, "  {}:\n    endpoint:", yaml_str(registry));
        for e in &endpoints.value {
            let _ = writeln!(out, "      - {}", yaml_str(&e.value));
        }
    }
    Some(out)
}

/// JSON strings are valid YAML scalars and escape everything that needs it.
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// How this host takes part: the first server initialises, the others join through the
/// endpoint (never a server's own address, so the LB/VIP path is what joins use).
pub enum Join<'a> {
    Init { cluster_init: bool },
    Via(&'a ApiEndpoint),
}

/// /etc/rancher/k3s/config.yaml (mode 0600: it holds the token).
pub fn config_yaml(cluster: &Cluster, host: &HostSpec, node_ip: &str, token: &str, join: Join) -> String {
    let endpoint = cluster.endpoint();
    let mut out =
        String::from("# Written by pikube: `pikube up` overwrites changes. Holds the join token (mode 0600).\n");
    let _ = writeln!(out, "node-name: {}", yaml_str(&host.name.value));
    let _ = writeln!(out, "node-ip: {}", yaml_str(node_ip));
    let _ = writeln!(out, "token: {}", yaml_str(token));
    match join {
        Join::Init { cluster_init } => {
            if cluster_init {
                out.push_str("cluster-init: true\n");
            }
        }
        Join::Via(ep) => {
            let _ = writeln!(out, "server: {}", yaml_str(&ep.url()));
        }
    }
    if host.role.value == Role::Server {
        out.push_str("write-kubeconfig-mode: \"0600\"\n");
        out.push_str("tls-san:\n");
        let mut sans = vec![endpoint.address.clone()];
        if let Some(v) = &endpoint.vip {
            sans.push(v.clone());
        }
        sans.push(host.name.value.clone());
        sans.dedup();
        for s in sans {
            let _ = writeln!(out, "  - {}", yaml_str(&s));
        }
        // With a load balancer, HAProxy listens on the endpoint port and forwards to 6443;
        // otherwise clients reach the servers directly, so they must listen on that port.
        if endpoint.mode != EndpointMode::Loadbalancer && endpoint.port != 6443 {
            let _ = writeln!(out, "https-listen-port: {}", endpoint.port);
        }
    }
    if !host.labels.is_empty() {
        out.push_str("node-label:\n");
        for (k, v) in host.labels.iter() {
            let _ = writeln!(out, "  - {}", yaml_str(&format!("{k}={v}")));
        }
    }
    if !host.taints.is_empty() {
        out.push_str("node-taint:\n");
        for t in &host.taints {
            let _ = writeln!(out, "  - {}", yaml_str(&t.value));
        }
    }
    out
}

/// The node IP from the cluster file: the host's address, resolved when it is a name, and
/// checked against the host's interfaces (not guessed from the first interface).
pub fn node_ip(host: &HostSpec, facts: &HostFacts) -> Result<String, String> {
    let address = host.address();
    let candidates: Vec<std::net::IpAddr> = match address.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => (address, 22)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {address} for the node IP: {e}"))?
            .map(|a| a.ip())
            .collect(),
    };
    let on_host: Vec<&str> = facts.ipv4.iter().map(|a| a.address.as_str()).collect();
    pick_node_ip(address, &candidates, &on_host).map_err(|e| {
        let ifaces = facts.ipv4.iter().map(|a| format!("{} {}", a.iface, a.address)).collect::<Vec<_>>().join(", ");
        if ifaces.is_empty() {
            e
        } else {
            format!("{e} (the host has {ifaces})")
        }
    })
}

/// k3s's cluster CIDR is IPv4 (10.42.0.0/16) and k3s refuses a node-ip of another family, so
/// only an IPv4 address of the host's own interfaces qualifies (a name may also have AAAA records).
fn pick_node_ip(address: &str, candidates: &[std::net::IpAddr], on_host: &[&str]) -> Result<String, String> {
    let v4: Vec<String> = candidates.iter().filter(|c| c.is_ipv4()).map(ToString::to_string).collect();
    if v4.is_empty() {
        let all = candidates.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        return Err(format!(
            "address {address} ({all}) has no IPv4 address, but the node IP must be IPv4 like the cluster's pod network (10.42.0.0/16)\n  hint: use the host's IPv4 address as `address:`"
        ));
    }
    if on_host.is_empty() {
        return Ok(v4[0].clone());
    }
    v4.iter().find(|c| on_host.contains(&c.as_str())).cloned().ok_or_else(|| {
        format!(
            "address {address} ({}) is not on any of the host's interfaces; use the host's own IP as `address:`",
            v4.join(", ")
        )
    })
}

/// The cluster's join token, kept in the local state directory (0600) and never printed.
/// Worked out once per run and shared by every phase that needs it.
pub async fn token(fleet: &Fleet) -> Result<String, String> {
    let servers: Vec<&Host> = fleet.healthy(Role::Server).map(|(_, h)| h).collect();
    fleet.token.get_or_try_init(|| load_or_make_token(&fleet.cluster, &servers, fleet.mode)).await.cloned()
}

/// From the local state; else adopted from the first server that has one (a replaced first
/// server has none) and kept; else a new one, kept once a server initialised the cluster with
/// it ([`keep_token`]): a token here says the cluster exists (see `phases::init_guard`).
async fn load_or_make_token(cluster: &Cluster, servers: &[&Host], mode: Mode) -> Result<String, String> {
    let path = token_path(cluster);
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let mut adopted = None;
    for h in servers {
        // K10<ca-hash>::server:<secret> — the secret part is what config.yaml carries.
        let full = server_token(h).await?;
        if !full.is_empty() {
            adopted = Some(full.rsplit_once("::server:").map_or(full.clone(), |(_, s)| s.to_string()));
            break;
        }
    }
    match adopted {
        Some(token) if mode == Mode::Apply => {
            crate::local::write_secret(&path, token.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(token)
        }
        Some(token) => Ok(token),
        None => {
            let mut b = [0u8; 24];
            getrandom::fill(&mut b).map_err(|e| format!("no randomness for the token: {e}"))?;
            Ok(hex::encode(b))
        }
    }
}

/// Keeps the token the first server just initialised the cluster with (0600), unless kept.
pub fn keep_token(fleet: &Fleet, token: &str) -> Result<(), String> {
    let path = token_path(&fleet.cluster);
    if std::fs::read_to_string(&path).is_ok_and(|t| t.trim() == token) {
        return Ok(());
    }
    crate::local::write_secret(&path, token.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}

/// The token joins use: the full `K10<ca-hash>::server:<secret>` from a server that already
/// runs the cluster, so a joining node checks it talks to this cluster's CA.
/// Found once per run and kept in `Fleet::join_token` (every joining server and the agents ask).
pub async fn join_token(fleet: &Fleet, secret: &str) -> Result<String, String> {
    if let Some(full) = fleet.join_token.get() {
        return Ok(full.clone());
    }
    let mut shown = Vec::new();
    for (_, host) in fleet.healthy(Role::Server) {
        shown.push(server_token(host).await?);
    }
    let full = pinned_token(secret, &shown, fleet.mode)?;
    if full != secret {
        let _ = fleet.join_token.set(full.clone());
    }
    Ok(full)
}

/// The full token among what the servers `shown` whose secret is `secret`. Only a dry run
/// before the first start (no server wrote one yet) makes do with the bare secret: a join
/// without the CA hash would trust whatever server answers at the endpoint.
fn pinned_token(secret: &str, shown: &[String], mode: Mode) -> Result<String, String> {
    let matching = shown
        .iter()
        .find(|full| full.starts_with("K10") && full.rsplit_once("::server:").is_some_and(|(_, s)| s == secret));
    match (matching, mode) {
        (Some(full), _) => Ok(full.clone()),
        (None, Mode::DryRun) => Ok(secret.to_string()),
        (None, Mode::Apply) => Err("no running server shows the full join token (K10<CA hash>::server:…) for \
             pikube's cluster token (.pikube/<cluster>/token); joining with the bare secret would trust any CA at \
             the endpoint\n  hint: start a server of this cluster first; if the cluster was made again, its token \
             differs from pikube's copy: restore that copy, or remove it to adopt the running cluster's"
            .to_string()),
    }
}

/// The token file a k3s server writes (empty when it has none).
pub async fn server_token(host: &Host) -> Result<String, String> {
    let out =
        host.run(&Cmd::read_script(format!("cat {SERVER_TOKEN} 2>/dev/null"))).await.map_err(|e| e.to_string())?;
    Ok(out.stdout_str().trim().to_string())
}

pub fn token_path(cluster: &Cluster) -> PathBuf {
    cluster.state_dir().join("token")
}

/// What the API says about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub ready: bool,
    pub internal_ip: String,
    pub labels: BTreeMap<String, String>,
    /// `key[=value]:Effect`, as the cluster file writes them.
    pub taints: Vec<String>,
    /// `status.nodeInfo.kubeletVersion`: the release its k3s runs.
    pub kubelet_version: String,
    /// Cordoned (`spec.unschedulable`).
    pub unschedulable: bool,
}

pub(crate) fn parse_nodes(json: &str) -> Result<BTreeMap<String, NodeStatus>, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("unexpected node list: {e}"))?;
    let mut out = BTreeMap::new();
    for item in v.get("items").and_then(Value::as_array).into_iter().flatten() {
        let Some(name) = item.pointer("/metadata/name").and_then(Value::as_str) else { continue };
        let conditions = item.pointer("/status/conditions").and_then(Value::as_array);
        let ready = conditions.into_iter().flatten().any(|c| {
            c.get("type").and_then(Value::as_str) == Some("Ready")
                && c.get("status").and_then(Value::as_str) == Some("True")
        });
        let internal_ip = item
            .pointer("/status/addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
            .and_then(|a| a.get("address").and_then(Value::as_str))
            .unwrap_or("")
            .to_string();
        let labels = item
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect())
            .unwrap_or_default();
        let taints = item
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|t| {
                let field = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("");
                match field("value") {
                    "" => format!("{}:{}", field("key"), field("effect")),
                    v => format!("{}={v}:{}", field("key"), field("effect")),
                }
            })
            .collect();
        let kubelet_version =
            item.pointer("/status/nodeInfo/kubeletVersion").and_then(Value::as_str).unwrap_or("").to_string();
        let unschedulable = item.pointer("/spec/unschedulable").and_then(Value::as_bool).unwrap_or(false);
        out.insert(name.to_string(), NodeStatus { ready, internal_ip, labels, taints, kubelet_version, unschedulable });
    }
    Ok(out)
}

/// What a server's disk says about its part in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerData {
    /// It holds cluster state (a datastore in the data dir): k3s starts from it and ignores
    /// `cluster-init`/`server:`; a server without it must join or initialise.
    pub holds: bool,
    /// Its config.yaml has `server:`, i.e. it joined rather than initialised.
    pub joined: bool,
}

pub async fn server_data(host: &Host) -> Result<ServerData, String> {
    let probe = format!(
        "test -s {SERVER_TOKEN} && [ -n \"$(ls -A {SERVER_DB} 2>/dev/null)\" ] && echo holds; grep -q '^server:' {CONFIG} 2>/dev/null && echo joined; true"
    );
    let out = host.run(&Cmd::read_script(probe)).await.map_err(|e| e.to_string())?;
    let text = out.stdout_str();
    Ok(ServerData { holds: text.lines().any(|l| l == "holds"), joined: text.lines().any(|l| l == "joined") })
}

/// sha256 of the server's cluster CA, or None when it has none: servers of one cluster agree.
pub async fn ca_hash(host: &Host) -> Result<Option<String>, String> {
    let cmd = Cmd::read_script(format!("sha256sum {SERVER_CA} 2>/dev/null | cut -d' ' -f1"));
    let out = host.run(&cmd).await.map_err(|e| e.to_string())?;
    let hash = out.stdout_str().trim().to_string();
    Ok((!hash.is_empty()).then_some(hash))
}

/// What each running server says the cluster is: its CA hash and the nodes its API lists.
/// Servers of one cluster agree; a second cluster behind the same endpoint (split brain) does
/// not. Node lists are read twice before they count, as replication may lag a second.
pub async fn disagreement(servers: &[(&str, &Host)]) -> Option<String> {
    let mut views = Vec::new();
    for (name, host) in servers {
        let ca = ca_hash(host).await.ok().flatten().unwrap_or_default();
        let nodes = crate::distro::nodes(Distribution::K3s, host)
            .await
            .map(|n| n.into_keys().collect::<Vec<_>>())
            .unwrap_or_default();
        views.push((*name, ca, nodes));
    }
    let cas: std::collections::BTreeSet<&str> = views.iter().map(|(_, ca, _)| ca.as_str()).collect();
    let lists: std::collections::BTreeSet<&Vec<String>> = views.iter().map(|(_, _, n)| n).collect();
    if cas.len() <= 1 && lists.len() <= 1 {
        return None;
    }
    if cas.len() <= 1 {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let mut again = std::collections::BTreeSet::new();
        for (_, host) in servers {
            again.insert(
                crate::distro::nodes(Distribution::K3s, host)
                    .await
                    .map(|n| n.into_keys().collect::<Vec<_>>())
                    .unwrap_or_default(),
            );
        }
        if again.len() <= 1 {
            return None;
        }
    }
    let rows: Vec<String> = views
        .iter()
        .map(|(n, ca, nodes)| {
            format!("  {n}: CA sha256 {}, nodes {}", ca.get(..12).unwrap_or("(none)"), nodes.join(","))
        })
        .collect();
    Some(format!("servers disagree about the cluster (split brain?):\n{}", rows.join("\n")))
}

/// Whether the node's own password file exists (a wiped or reflashed node has none).
pub async fn has_node_password(host: &Host) -> Result<bool, String> {
    let out = host
        .run(&Cmd::read_script(format!("test -s {NODE_PASSWORD} && echo yes || true")))
        .await
        .map_err(|e| e.to_string())?;
    Ok(out.stdout_str().trim() == "yes")
}

/// Removes what the cluster remembers of a node that comes back without its password (a
/// reflashed card under the old name): its Node object (k3s also drops its etcd member then)
/// and its node-password secret, which would make k3s refuse the node. Done through the API
/// of `api`; says what it removed.
pub async fn forget_node(api: &Host, name: &str) -> Result<(), String> {
    let secret = format!("{}.node-password.k3s", name.to_ascii_lowercase());
    let find = format!(
        "{BIN} kubectl get node {n} --ignore-not-found -o name; {BIN} kubectl -n kube-system get secret {s} --ignore-not-found -o name",
        n = quote(name),
        s = quote(&secret)
    );
    let out = api
        .run(&Cmd::read_script(find).timeout(std::time::Duration::from_secs(30)))
        .await
        .map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!("cannot ask the API whether it still knows {name}: {}", out.stderr_str().trim()));
    }
    let found = out.stdout_str();
    if found.trim().is_empty() {
        return Ok(());
    }
    let delete = format!(
        "{BIN} kubectl delete node {n} --ignore-not-found && {BIN} kubectl -n kube-system delete secret {s} --ignore-not-found",
        n = quote(name),
        s = quote(&secret)
    );
    let what = format!(
        "{name} has no {NODE_PASSWORD} (a new disk) but the cluster knows it ({}): delete them so it can rejoin",
        found.split_whitespace().collect::<Vec<_>>().join(", ")
    );
    api.apply(what, &Cmd::change_script(delete)).await.map_err(|e| e.to_string())
}

/// Starts (or restarts) a k3s unit without waiting for it: readiness is polled with a bound.
pub async fn start(host: &Host, role: Role, restart: bool, reason: &str) -> Result<(), RemoteError> {
    let unit = unit_name(role);
    let verb = if restart { "restart" } else { "start" };
    let cmd = Cmd::change_script(format!(
        "systemctl daemon-reload && systemctl enable -q {unit} && systemctl {verb} --no-block {unit}"
    ));
    host.apply(format!("{verb} {unit} ({reason})"), &cmd).await
}

/// Waits until `host` can open a TCP connection to the endpoint (the path agents and joining
/// servers take), so a join starts only once it can succeed.
pub async fn wait_for_endpoint(host: &Host, ep: &ApiEndpoint, timeout: std::time::Duration) -> Result<(), String> {
    let probe =
        Cmd::read_script(format!("timeout 3 bash -c {} 2>&1", quote(&format!("</dev/tcp/{}/{}", ep.address, ep.port))));
    let started = std::time::Instant::now();
    loop {
        let out = host.run(&probe).await.map_err(|e| e.to_string())?;
        if out.success() {
            return Ok(());
        }
        if started.elapsed() > timeout {
            let why = out.stdout_str();
            let why = why.trim();
            return Err(format!(
                "the API endpoint {}:{} does not answer from here after {}s{}\n  hint: check the load balancer / VIP hosts and that a server is up (`pikube status`)",
                ep.address,
                ep.port,
                timeout.as_secs(),
                if why.is_empty() { String::new() } else { format!(" ({why})") }
            ));
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Whether the role's k3s unit is active on `host` (not failed, not still starting).
pub async fn unit_active(host: &Host, role: Role) -> Result<bool, RemoteError> {
    let out = host.run(&Cmd::read_script(format!("systemctl is-active {}", unit_name(role)))).await?;
    Ok(out.stdout_str().trim() == "active")
}

/// Polls `api` until `name` is Ready, for at most `timeout`; on timeout the error carries the
/// node's own k3s log lines.
pub async fn wait_ready(
    api: &Host,
    node_host: &Host,
    role: Role,
    name: &str,
    timeout: std::time::Duration,
) -> Result<(), String> {
    let started = std::time::Instant::now();
    let unit = unit_name(role);
    loop {
        // After a restart the API still shows the old heartbeat as Ready; the unit turns
        // active only once the new process has registered (k3s notifies systemd).
        let unit_active = unit_active(node_host, role).await.unwrap_or(false);
        let last = match crate::distro::nodes(Distribution::K3s, api).await {
            Ok(_) if !unit_active => format!("{unit} not active yet"),
            Ok(n) => match n.get(name) {
                Some(s) if s.ready => return Ok(()),
                Some(_) => "registered but NotReady".to_string(),
                None => "not registered".to_string(),
            },
            Err(e) => e,
        };
        if started.elapsed() > timeout {
            return Err(format!(
                "{name} not Ready after {}s ({last}); last lines of {unit}:{}",
                timeout.as_secs(),
                crate::distro::diagnostics(crate::config::Distribution::K3s, node_host, role).await
            ));
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// The port servers listen on: the endpoint's, unless a load balancer forwards to 6443.
pub fn listen_port(cluster: &Cluster) -> u16 {
    let endpoint = cluster.endpoint();
    if endpoint.mode != EndpointMode::Loadbalancer {
        endpoint.port
    } else {
        6443
    }
}

/// Whether the server runs embedded etcd (`server/db/etcd`), which snapshots need; a single
/// server without `cluster-init` runs on sqlite.
pub async fn runs_etcd(host: &Host) -> Result<bool, String> {
    let out = host
        .run(&Cmd::read_script(format!("test -d {SERVER_DB}/etcd && echo etcd || true")))
        .await
        .map_err(|e| e.to_string())?;
    Ok(out.stdout_str().trim() == "etcd")
}

/// `k3s etcd-snapshot save --name NAME` on a running server; returns the snapshot's path.
/// The snapshot goes through the server's own API on this host (`--etcd-server`).
pub async fn etcd_snapshot_save(host: &Host, cluster: &Cluster, name: &str) -> Result<String, String> {
    let server = format!("https://127.0.0.1:{}", listen_port(cluster));
    let cmd = Cmd::change_script(format!(
        "{BIN} etcd-snapshot save --name {} --etcd-server {} 2>&1",
        quote(name),
        quote(&server)
    ))
    .timeout(std::time::Duration::from_secs(300));
    let out = host.run(&cmd).await.map_err(|e| e.to_string())?;
    let text = out.stdout_str();
    // k3s logs `Snapshot <name>-<node>-<unix time> saved.`
    let saved = text.lines().find_map(|l| l.split("Snapshot ").nth(1)?.split_once(" saved.").map(|(n, _)| n));
    match saved {
        Some(file) if out.success() => Ok(format!("{SNAPSHOTS}/{}", file.trim())),
        _ => Err(format!("`k3s etcd-snapshot save` failed: {}", last_lines(&text, 4))),
    }
}

/// k3s's documented restore on a stopped server: `k3s server --cluster-reset
/// --cluster-reset-restore-path=FILE` with the token of the cluster that took the snapshot
/// (read from `token_file`, so it never shows on a command line). k3s exits when done.
pub async fn cluster_reset_restore(host: &Host, snapshot: &str, token_file: &str) -> Result<(), String> {
    let cmd = Cmd::change_script(format!(
        "{BIN} server --cluster-reset --cluster-reset-restore-path={} --token-file={} 2>&1",
        quote(snapshot),
        quote(token_file)
    ))
    .timeout(std::time::Duration::from_secs(600));
    let out = host.run(&cmd).await.map_err(|e| e.to_string())?;
    if out.success() {
        return Ok(());
    }
    Err(format!("`k3s server --cluster-reset` failed: {}", last_lines(&out.stdout_str(), 6)))
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n  | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_always_pin_the_cluster_ca() {
        let full = "K10abc::server:secret".to_string();
        let other = "K10def::server:another".to_string();
        let shown = [String::new(), other.clone(), full.clone()];
        assert_eq!(pinned_token("secret", &shown, Mode::Apply), Ok(full));
        // No server shows this secret's full token: a dry run plans with the secret ...
        assert_eq!(pinned_token("secret", std::slice::from_ref(&other), Mode::DryRun), Ok("secret".into()));
        // ... a real join refuses to go without the CA pin.
        let err = pinned_token("secret", &[other, String::new()], Mode::Apply).unwrap_err();
        assert!(err.contains("joining with the bare secret would trust any CA") && err.contains("hint:"), "{err}");
    }

    #[test]
    fn node_ip_is_ipv4_like_the_cluster_cidr() {
        let ips = |v: &[&str]| v.iter().map(|a| a.parse().unwrap()).collect::<Vec<std::net::IpAddr>>();
        let e = pick_node_ip("fd00::5", &ips(&["fd00::5"]), &["10.0.0.5"]).unwrap_err();
        assert!(e.contains("has no IPv4 address") && e.contains("hint:"), "{e}");
        assert_eq!(pick_node_ip("pi.lan", &ips(&["fd00::5", "10.0.0.5"]), &["10.0.0.5"]).unwrap(), "10.0.0.5");
        assert_eq!(pick_node_ip("pi.lan", &ips(&["fd00::5", "10.0.0.5"]), &[]).unwrap(), "10.0.0.5");
        assert!(pick_node_ip("pi.lan", &ips(&["10.0.0.6"]), &["10.0.0.5"]).unwrap_err().contains("not on any"));
    }

    #[test]
    fn servers_listen_on_the_endpoint_port_unless_a_load_balancer_forwards() {
        for (mode, listens) in [("none", true), ("vip", true), ("loadbalancer", false)] {
            let (vip, lb) = match mode {
                "vip" => (", address: 10.0.0.100", ""),
                "loadbalancer" => ("", "  - {name: lb, address: 10.0.0.9, role: loadbalancer}\n"),
                _ => ("", ""),
            };
            let text = format!(
                "name: c\nkubernetes: {{endpoint: {{mode: {mode}, port: 7443{vip}}}}}\nhosts:\n  - {{name: s1, address: 10.0.0.1, role: server}}\n{lb}"
            );
            let c = Cluster::parse(std::path::Path::new("c.yaml"), &text).unwrap_or_else(|e| panic!("{}", e.plain()));
            let host = c.hosts().next().unwrap();
            let yaml = config_yaml(&c, host, "10.0.0.1", "t", Join::Init { cluster_init: false });
            assert_eq!(yaml.contains("https-listen-port: 7443\n"), listens, "{mode}:\n{yaml}");
        }
    }

    #[test]
    fn node_list_parsing() {
        let j = r#"{"items":[{"metadata":{"name":"n1","labels":{"a":"b"}},"spec":{"unschedulable":true,"taints":[{"key":"d","value":"e","effect":"NoSchedule"},{"key":"x","effect":"NoExecute"}]},"status":{"conditions":[{"type":"Ready","status":"True"}],"addresses":[{"type":"InternalIP","address":"10.0.0.1"}],"nodeInfo":{"kubeletVersion":"v1.31.5+k3s1"}}},
                   {"metadata":{"name":"n2"},"status":{"conditions":[{"type":"Ready","status":"Unknown"}]}}]}"#;
        let n = parse_nodes(j).unwrap();
        assert!(n["n1"].ready);
        assert_eq!(n["n1"].internal_ip, "10.0.0.1");
        assert_eq!(n["n1"].labels["a"], "b");
        assert_eq!(n["n1"].taints, ["d=e:NoSchedule", "x:NoExecute"]);
        assert!(!n["n2"].ready);
        assert_eq!((n["n1"].unschedulable, n["n1"].kubelet_version.as_str()), (true, "v1.31.5+k3s1"));
        assert!(!n["n2"].unschedulable && n["n2"].kubelet_version.is_empty());
    }
}
