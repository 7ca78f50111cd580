//! Inventory → cluster: group conventions of the common playbooks give roles, Ansible's
//! connection vars give addresses and SSH settings, a few well-known vars give cluster settings.
//! Whatever has no place in a cluster file is listed in [`Imported::unmapped`] with its line.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{ImportError, Inventory, Unmapped, Var};
use crate::config::{is_address, is_ip, is_k3s_version, Role};

/// Control-plane groups: classic (`master`), k3s/k8s playbooks, kubespray, k3s-ansible.
pub const SERVER_GROUPS: &[&str] =
    &["master", "masters", "k3s_master", "k8s_master", "kube_control_plane", "kube-master", "server"];
const AGENT_GROUPS: &[&str] =
    &["nodes", "node", "workers", "k3s_worker", "k8s_worker", "kube_node", "kube-node", "agent"];
const LB_GROUPS: &[&str] = &["loadbalancer", "loadbalancers", "lb", "haproxy"];
/// Board/OS groups: pikube reads both from the host itself, so they become comments.
const OS_GROUPS: &[&str] = &["raspberry_pi", "raspbian", "ubuntu"];
/// Vars that set something for the whole cluster.
const CLUSTER_VARS: &[&str] = &[
    "proxy_url",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "docker_registry_mirror_url",
    "k3s_version",
    "k8s_version",
    "kube_version",
    "apiserver_endpoint",
];

/// A value and the inventory line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At {
    pub value: String,
    pub line: u64,
}

#[derive(Debug)]
pub struct ImportedHost {
    pub name: String,
    /// The inventory's name for the host and its line.
    pub from: At,
    pub role: Role,
    /// The group that gave the role.
    pub role_from: At,
    /// Where pikube connects: `ansible_host`, else the inventory name (as Ansible does).
    pub address: At,
    pub user: Option<At>,
    pub port: Option<At>,
    pub key: Option<At>,
    /// Comments for the host's entry: renames, board/OS groups, a role changed to validate.
    pub notes: Vec<String>,
}

/// `kubernetes.endpoint`: the mode and where it came from, and the VIP if there is one.
#[derive(Debug)]
pub struct EndpointDraft {
    /// HAProxy on the load balancer group's hosts; else a keepalived VIP on the servers.
    pub loadbalancer: bool,
    pub from: At,
    pub vip: Option<At>,
}

#[derive(Debug, Default)]
pub struct Imported {
    pub name: String,
    pub name_note: String,
    pub hosts: Vec<ImportedHost>,
    pub user: Option<At>,
    pub port: Option<At>,
    pub key: Option<At>,
    /// Cluster vars by key (first value in host order).
    pub vars: BTreeMap<String, At>,
    pub endpoint: Option<EndpointDraft>,
    pub unmapped: Vec<Unmapped>,
}

/// Groups, hosts and their transitive relations.
struct Tree<'a> {
    inv: &'a Inventory,
    /// Every host of each group, through `children`.
    members: HashMap<&'a str, BTreeSet<&'a str>>,
    /// Longest `children` chain from a top group: deeper groups' vars win, as in Ansible.
    depth: HashMap<&'a str, usize>,
}

impl<'a> Tree<'a> {
    fn new(inv: &'a Inventory) -> Tree<'a> {
        let mut tree = Tree { inv, members: HashMap::new(), depth: HashMap::new() };
        for g in &inv.groups {
            let mut seen = BTreeSet::new();
            let m = tree.collect(&g.name, &mut seen);
            tree.members.insert(&g.name, m);
        }
        for g in &inv.groups {
            tree.depth_of(&g.name, &mut BTreeSet::new());
        }
        tree
    }

    fn collect(&self, group: &str, seen: &mut BTreeSet<String>) -> BTreeSet<&'a str> {
        let mut out = BTreeSet::new();
        // A cycle in `children` would recurse forever; Ansible rejects it, here it just stops.
        if !seen.insert(group.to_string()) {
            return out;
        }
        if let Some(g) = self.inv.groups.iter().find(|g| g.name == group) {
            out.extend(g.hosts.iter().map(String::as_str));
            for c in &g.children {
                out.extend(self.collect(c, seen));
            }
        }
        out
    }

    /// 0 for a top group, else one more than its deepest parent; a `children` cycle counts as top.
    fn depth_of(&mut self, group: &'a str, path: &mut BTreeSet<&'a str>) -> usize {
        if let Some(&d) = self.depth.get(group) {
            return d;
        }
        if !path.insert(group) {
            return 0;
        }
        let inv = self.inv;
        let parents = inv.groups.iter().filter(|g| g.children.iter().any(|c| c == group));
        let d = parents.map(|p| self.depth_of(&p.name, path) + 1).max().unwrap_or(0);
        path.remove(group);
        self.depth.insert(group, d);
        d
    }

    /// In a group of the named cluster `name` (`<name>-master`, `<name>-nodes`, …).
    fn in_cluster(&self, host: &str, name: &str) -> bool {
        let prefix = format!("{name}-");
        self.members.iter().any(|(g, m)| g.starts_with(&prefix) && m.contains(host))
    }

    fn in_group(&self, host: &str, group: &str) -> bool {
        self.members.get(group).is_some_and(|m| m.contains(host))
    }

    /// The first of `groups` holding `host`, with its line.
    fn first_group(&self, host: &str, groups: &[String]) -> Option<At> {
        let g = groups.iter().find(|g| self.in_group(host, g))?;
        Some(At { value: g.clone(), line: self.inv.group(g).map_or(0, |g| g.line) })
    }

    /// A host's vars with Ansible's precedence: `all`, then groups by depth and name, then the host's own.
    fn vars_of(&self, host: &str) -> BTreeMap<&'a str, &'a Var> {
        let mut groups: Vec<_> =
            self.inv.groups.iter().filter(|g| g.name == "all" || self.in_group(host, &g.name)).collect();
        groups.sort_by_key(|g| (g.name != "all", self.depth.get(g.name.as_str()).copied().unwrap_or(0), &g.name));
        let mut out = BTreeMap::new();
        let own = self.inv.hosts.iter().filter(|h| h.name == host).flat_map(|h| &h.vars);
        for v in groups.iter().flat_map(|g| &g.vars).chain(own) {
            out.insert(v.key.as_str(), v);
        }
        out
    }
}

/// `default_name`: the cluster name to use without `<name>-master` groups or --cluster, and a comment saying why.
pub fn map(
    file: &str,
    inv: &Inventory,
    cluster: Option<&str>,
    default_name: (String, String),
) -> Result<Imported, ImportError> {
    let tree = Tree::new(inv);
    // `kube-master` is kubespray's old control-plane group, not a cluster named "kube".
    let named = |g: &&super::Group| !SERVER_GROUPS.contains(&g.name.as_str());
    let mut clusters: Vec<&str> = inv
        .groups
        .iter()
        .filter(named)
        .filter_map(|g| g.name.strip_suffix("-master"))
        .filter(|n| !n.is_empty())
        .collect();
    clusters.sort();
    let selected = match (clusters.len(), cluster) {
        (0, _) => None,
        (1, None) => Some(clusters[0]),
        (_, None) => {
            return Err(ImportError::SeveralClusters {
                file: file.into(),
                names: clusters.iter().map(|s| s.to_string()).collect(),
            })
        }
        (_, Some(c)) if clusters.contains(&c) => Some(c),
        (_, Some(c)) => {
            return Err(ImportError::UnknownCluster {
                file: file.into(),
                name: c.into(),
                names: clusters.iter().map(|s| s.to_string()).collect(),
            })
        }
    };
    let mut out = Imported::default();
    (out.name, out.name_note) = match (selected, cluster) {
        (Some(n), _) => {
            let line = inv.group(&format!("{n}-master")).map_or(0, |g| g.line);
            (dns_label(n), format!("from the group {n}-master, {file}:{line}"))
        }
        (None, Some(c)) => (dns_label(c), "from --cluster".into()),
        (None, None) => default_name,
    };
    let roles = role_groups(selected);
    for host in &inv.hosts {
        if let Some(h) = import_host(&tree, host, &roles, &mut out.unmapped) {
            out.hosts.push(h);
        } else if !clusters.iter().any(|c| tree.in_cluster(&host.name, c)) {
            let why = if tree.in_group(&host.name, "etcd") {
                "only in `etcd`: pikube runs etcd on the servers (k3s embedded etcd), so this host is left out"
            } else {
                "in no server, agent or load balancer group, so it is left out"
            };
            out.unmapped.push(Unmapped { line: host.line, what: format!("host {}", host.name), why: why.into() });
        }
    }
    if !out.hosts.iter().any(|h| h.role == Role::Server) {
        return Err(ImportError::NoServers { file: file.into() });
    }
    name_hosts(&mut out.hosts);
    check_addresses(file, &out.hosts)?;
    shared_ssh(&mut out);
    cluster_vars(&tree, &mut out);
    let others: Vec<String> = clusters.iter().filter(|c| Some(**c) != selected).map(|c| format!("{c}-")).collect();
    report_stray_group_vars(&tree, &others, &mut out);
    endpoint(&mut out);
    out.unmapped.sort();
    out.unmapped.dedup();
    Ok(out)
}

/// Group names per role, for one named cluster (`<name>-master`) or the common conventions.
fn role_groups(selected: Option<&str>) -> [(Role, Vec<String>); 3] {
    let owned = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match selected {
        Some(n) => [
            (Role::Server, vec![format!("{n}-master")]),
            (Role::Loadbalancer, vec![format!("{n}-lb"), format!("{n}-loadbalancer"), format!("{n}-haproxy")]),
            (Role::Agent, vec![format!("{n}-nodes")]),
        ],
        None => [
            (Role::Server, owned(SERVER_GROUPS)),
            (Role::Loadbalancer, owned(LB_GROUPS)),
            (Role::Agent, owned(AGENT_GROUPS)),
        ],
    }
}

/// The host's role and connection settings; None when no role group holds it.
fn import_host(
    tree: &Tree,
    host: &super::Host,
    roles: &[(Role, Vec<String>); 3],
    unmapped: &mut Vec<Unmapped>,
) -> Option<ImportedHost> {
    // A host in a server and an agent group (kubespray does this) is a server: k3s servers run pods too.
    let (role, role_from) =
        roles.iter().find_map(|(r, groups)| tree.first_group(&host.name, groups).map(|g| (*r, g)))?;
    let mut h = ImportedHost {
        name: String::new(),
        from: At { value: host.name.clone(), line: host.line },
        role,
        role_from,
        address: At { value: host.name.clone(), line: host.line },
        user: None,
        port: None,
        key: None,
        notes: Vec::new(),
    };
    for g in OS_GROUPS {
        if let Some(at) = tree.first_group(&host.name, &[g.to_string()]) {
            h.notes.push(format!(
                "in group {} (line {}): pikube reads the board and OS from the host itself",
                at.value, at.line
            ));
        }
    }
    for (key, v) in tree.vars_of(&host.name) {
        let at = At { value: v.value.clone(), line: v.line };
        match key {
            "ansible_host" | "ansible_ssh_host" => h.address = at,
            "ansible_user" | "ansible_ssh_user" => h.user = Some(at),
            "ansible_port" | "ansible_ssh_port" if at.value.parse::<u16>().is_ok() => h.port = Some(at),
            "ansible_ssh_private_key_file" | "ansible_private_key_file" => h.key = Some(at),
            k if CLUSTER_VARS.contains(&k) => {}
            _ => unmapped.push(Unmapped { line: v.line, what: format!("var {key}"), why: why_unmapped(key).into() }),
        }
    }
    Some(h)
}

fn why_unmapped(key: &str) -> &'static str {
    let k = key.to_ascii_lowercase();
    if k == "boot_directory" {
        "pikube finds the boot directory (/boot/firmware or /boot) on each host"
    } else if k.contains("token") {
        "pikube makes the join token itself (or adopts the first server's) and keeps it 0600 outside the cluster file"
    } else if ["pass", "secret"].iter().any(|s| k.contains(s)) {
        "secrets are never copied into a cluster file; for a sudo password use ssh.sudo_password: {env: VAR}"
    } else if k == "ansible_port" || k == "ansible_ssh_port" {
        "not a port number"
    } else if k.starts_with("ansible_") {
        "an Ansible setting pikube does not need"
    } else {
        "pikube has no setting for this var"
    }
}

/// Names hosts as hostnames: IPs become `node-10-0-0-11`, `rasp01.lan` becomes `rasp01`.
fn name_hosts(hosts: &mut [ImportedHost]) {
    let mut used = BTreeSet::new();
    for h in hosts.iter_mut() {
        let raw = &h.from.value;
        let base = if is_ip(raw) {
            format!("node-{}", dns_label(raw))
        } else {
            dns_label(raw.split('.').next().unwrap_or(raw))
        };
        let base = if base.is_empty() { "node".to_string() } else { base };
        let mut name = base.clone();
        for n in 2.. {
            if used.insert(name.clone()) {
                break;
            }
            name = format!("{base}-{n}");
        }
        if is_ip(raw) {
            h.notes.push(format!("name generated from the address {raw}"));
        } else if name != *raw {
            h.notes.push(format!("{raw:?} made a hostname"));
        }
        h.name = name;
    }
}

/// Addresses are checked here, where the error can name the inventory line (the cluster file
/// would point at the generated file instead).
fn check_addresses(file: &str, hosts: &[ImportedHost]) -> Result<(), ImportError> {
    let mut seen: HashMap<String, &ImportedHost> = HashMap::new();
    for h in hosts {
        let at = &h.address;
        let err = |message: String, hint: &str| ImportError::Syntax {
            file: file.into(),
            line: at.line,
            message,
            hint: hint.into(),
        };
        if !is_address(&at.value) {
            let hint = "set ansible_host to an IP address or DNS name (Ansible does not expand ranges in vars either)";
            return Err(err(
                format!("address {:?} of host {:?} is not an IP address or hostname", at.value, h.from.value),
                hint,
            ));
        }
        if let Some(first) = seen.insert(at.value.to_ascii_lowercase(), h) {
            let message = format!(
                "hosts {} (line {}) and {} have the same address {}",
                first.from.value, first.from.line, h.from.value, at.value
            );
            return Err(err(message, "every host needs its own address; check for a copy-paste slip"));
        }
    }
    Ok(())
}

/// When every host has a value, the most common one moves to the cluster-wide `ssh:` and the
/// others stay as host overrides. A host without one keeps OpenSSH's default, so then all stay per host.
fn shared_ssh(out: &mut Imported) {
    let fields: [fn(&mut ImportedHost) -> &mut Option<At>; 3] = [|h| &mut h.user, |h| &mut h.port, |h| &mut h.key];
    for (i, field) in fields.iter().enumerate() {
        let values: Vec<At> = out.hosts.iter_mut().filter_map(|h| field(h).clone()).collect();
        if values.len() < out.hosts.len() {
            continue;
        }
        let count = |v: &At| values.iter().filter(|o| o.value == v.value).count();
        // max_by_key keeps the last of equals; rev() makes the first host's value win a tie.
        let Some(common) = values.iter().rev().max_by_key(|v| count(v)).cloned() else { continue };
        for h in out.hosts.iter_mut() {
            if field(h).as_ref().is_some_and(|v| v.value == common.value) {
                *field(h) = None;
            }
        }
        let first = values.into_iter().find(|v| v.value == common.value);
        *[&mut out.user, &mut out.port, &mut out.key][i] = first;
    }
}

fn cluster_vars(tree: &Tree, out: &mut Imported) {
    for h in &out.hosts {
        for (key, v) in tree.vars_of(&h.from.value) {
            if !CLUSTER_VARS.contains(&key) {
                continue;
            }
            match out.vars.get(key) {
                None => {
                    out.vars.insert(key.to_string(), At { value: v.value.clone(), line: v.line });
                }
                Some(first) if first.value != v.value => out.unmapped.push(Unmapped {
                    line: v.line,
                    what: format!("var {key} of host {}", h.from.value),
                    why: format!("a cluster-wide setting; the value from line {} is used", first.line),
                }),
                Some(_) => {}
            }
        }
    }
    version(out);
    strip_credentials(out);
}

/// Proxy and mirror URLs lose their `user:password@`: a cluster file is meant to be committed
/// (and an invalid one is printed). The var is listed, so the user knows to add them back.
fn strip_credentials(out: &mut Imported) {
    for key in ["proxy_url", "http_proxy", "https_proxy", "docker_registry_mirror_url"] {
        let Some(v) = out.vars.get_mut(key) else { continue };
        let Some(bare) = crate::config::url::without_userinfo(&v.value) else { continue };
        v.value = bare;
        let why = "its user:password@ was left out of the cluster file, which is meant to be shared; add them \
                   to the URL in the cluster file yourself if the server needs them, and keep that file private";
        out.unmapped.push(Unmapped { line: v.line, what: format!("credentials in var {key}"), why: why.into() });
    }
}

/// `k3s_version` pins k3s; `k8s_version`/`kube_version` ask for kubeadm, which pikube does not install yet.
fn version(out: &mut Imported) {
    if let Some(v) = out.vars.get("k3s_version").filter(|v| !is_k3s_version(&v.value)).cloned() {
        out.vars.remove("k3s_version");
        let why = "not a k3s release tag like v1.31.4+k3s1; without a version `up` prepares the hosts only";
        out.unmapped.push(Unmapped { line: v.line, what: "var k3s_version".into(), why: why.into() });
    }
    for key in ["k8s_version", "kube_version"] {
        if let Some(v) = out.vars.remove(key) {
            let why = if out.vars.contains_key("k3s_version") {
                "k3s_version is used instead"
            } else {
                "a kubeadm version; pikube installs k3s (kubeadm is not implemented yet), so no version is set and `up` prepares the hosts only"
            };
            out.unmapped.push(Unmapped { line: v.line, what: format!("var {key}"), why: why.into() });
        }
    }
}

/// Vars of groups that hold none of the imported hosts reach nothing (the other clusters' groups,
/// `others` prefixes, are simply not this import's business).
fn report_stray_group_vars(tree: &Tree, others: &[String], out: &mut Imported) {
    for g in tree.inv.groups.iter().filter(|g| !others.iter().any(|p| g.name.starts_with(p.as_str()))) {
        let reaches = g.name == "all" || out.hosts.iter().any(|h| tree.in_group(&h.from.value, &g.name));
        if !reaches {
            for v in &g.vars {
                let why = format!("group {} holds none of the imported hosts", g.name);
                out.unmapped.push(Unmapped { line: v.line, what: format!("var {}", v.key), why });
            }
        }
    }
}

/// Several servers need an endpoint: the load balancer group, else `apiserver_endpoint` as a VIP;
/// otherwise, and for an even count, servers become agents so that the file validates, and it says so.
fn endpoint(out: &mut Imported) {
    let vip = free_vip(out);
    // pikube runs one load balancer, or two sharing a VIP; the others are left out.
    let keep_lbs = if vip.is_some() { 2 } else { 1 };
    let mut lbs = 0;
    let (kept, dropped): (Vec<_>, Vec<_>) = std::mem::take(&mut out.hosts).into_iter().partition(|h| {
        lbs += usize::from(h.role == Role::Loadbalancer);
        h.role != Role::Loadbalancer || lbs <= keep_lbs
    });
    out.hosts = kept;
    for h in dropped {
        let why = "pikube runs one load balancer, or two sharing a virtual IP (apiserver_endpoint); left out";
        out.unmapped.push(Unmapped {
            line: h.from.line,
            what: format!("load balancer {}", h.from.value),
            why: why.into(),
        });
    }
    let first_lb = out.hosts.iter().find(|h| h.role == Role::Loadbalancer).map(|h| h.role_from.clone());
    out.endpoint = match (first_lb, vip) {
        (Some(lb), vip) => Some(EndpointDraft { loadbalancer: true, from: lb, vip }),
        (None, Some(v)) => Some(EndpointDraft { loadbalancer: false, from: v.clone(), vip: Some(v) }),
        (None, None) => None,
    };
    let servers = out.hosts.iter().filter(|h| h.role == Role::Server).count();
    let keep = if out.endpoint.is_some() { odd(servers) } else { 1 };
    let why = if out.endpoint.is_some() {
        "high availability needs an odd number of servers; made an agent"
    } else {
        "several servers need an API endpoint and the inventory names none (no load balancer group, no apiserver_endpoint); made an agent so one server runs the control plane"
    };
    let mut seen = 0;
    for h in out.hosts.iter_mut().filter(|h| h.role == Role::Server) {
        seen += 1;
        if seen > keep {
            h.role = Role::Agent;
            h.notes.push(format!("was a server ({}, line {}): {why}", h.role_from.value, h.role_from.line));
            out.unmapped.push(Unmapped {
                line: h.from.line,
                what: format!("server role of {}", h.from.value),
                why: why.into(),
            });
        }
    }
}

/// `apiserver_endpoint` (k3s-ansible's VIP) when it is an IP no host has.
fn free_vip(out: &mut Imported) -> Option<At> {
    let v = out.vars.remove("apiserver_endpoint")?;
    if is_ip(&v.value) && !out.hosts.iter().any(|h| h.address.value == v.value) {
        return Some(v);
    }
    let why = "not a free IP address, so it cannot be the API's virtual IP";
    out.unmapped.push(Unmapped { line: v.line, what: "var apiserver_endpoint".into(), why: why.into() });
    None
}

/// The largest odd count not above `n` (etcd needs a majority).
fn odd(n: usize) -> usize {
    if n.is_multiple_of(2) {
        n.saturating_sub(1).max(1)
    } else {
        n
    }
}

/// Lowercase letters, digits and '-' only (hostname and cluster name rules).
pub fn dns_label(s: &str) -> String {
    let mapped: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' })
        .collect();
    let mut out = String::new();
    for c in mapped.chars() {
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    out.trim_matches('-').chars().take(63).collect::<String>().trim_end_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn import(ini: &str) -> Imported {
        let inv = super::super::ini::parse("t.ini", ini).expect("parses");
        map("t.ini", &inv, None, ("t".into(), String::new())).expect("maps")
    }

    #[test]
    fn host_vars_beat_child_groups_which_beat_parents_and_all() {
        let c = import(
            "[master]\npi1\n[nodes]\npi2\npi3 ansible_user=own\npi4\n[pis:children]\nmaster\nnodes\n\
             [all:vars]\nansible_user=all\nansible_port=1\n[pis:vars]\nansible_user=parent\n[nodes:vars]\nansible_user=child\n",
        );
        let users: Vec<_> = c.hosts.iter().map(|h| h.user.as_ref().map(|u| u.value.as_str())).collect();
        // "child" is the most common value, so it moved to the cluster-wide ssh.user.
        assert_eq!(c.user.as_ref().map(|u| u.value.as_str()), Some("child"));
        assert_eq!(users, [Some("parent"), None, Some("own"), None]);
        assert_eq!(c.port.as_ref().map(|p| (p.value.as_str(), p.line)), Some(("1", 12)));
    }

    #[test]
    fn an_even_server_count_behind_a_load_balancer_keeps_an_odd_number() {
        let c = import("[master]\na\nb\n[nodes]\nc\n[lb]\nd\n");
        let roles: Vec<_> = c.hosts.iter().map(|h| (h.name.as_str(), h.role)).collect();
        assert_eq!(roles, [("a", Role::Server), ("b", Role::Agent), ("c", Role::Agent), ("d", Role::Loadbalancer)]);
        assert!(c.unmapped.iter().any(|u| u.line == 3 && u.why.contains("odd number")), "{:?}", c.unmapped);
        assert!(c.endpoint.as_ref().is_some_and(|e| e.loadbalancer));
    }

    #[test]
    fn kubesprays_old_kube_master_group_is_not_a_cluster_named_kube() {
        let c = import("[kube-master]\na\n[kube-node]\nb\n");
        let roles: Vec<_> = c.hosts.iter().map(|h| (h.name.as_str(), h.role)).collect();
        assert_eq!(roles, [("a", Role::Server), ("b", Role::Agent)]);
        assert_eq!(c.name, "t");
    }

    #[test]
    fn names_become_hostnames() {
        assert_eq!(dns_label("Master_01"), "master-01");
        assert_eq!(dns_label("--a..b--"), "a-b");
        let c = import("[master]\n10.0.0.1\n[nodes]\nPi.lan\npi\n");
        let names: Vec<_> = c.hosts.iter().map(|h| (h.name.as_str(), h.address.value.as_str())).collect();
        assert_eq!(names, [("node-10-0-0-1", "10.0.0.1"), ("pi", "Pi.lan"), ("pi-2", "pi")]);
    }
}
