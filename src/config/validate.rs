//! Rules a parsed cluster file must satisfy. Every rule points at the offending value.

use std::collections::HashMap;

use serde_saphyr::Spanned;

use super::{is_ip, ClusterFile, Distribution, EndpointMode, HostSpec, Lvm, Problem, Role};

pub(crate) fn check(spec: &ClusterFile, addresses_required: bool) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut problem = |at: serde_saphyr::Location, message: String, hint: &str| {
        out.push(Problem { at, message, hint: (!hint.is_empty()).then(|| hint.to_string()) });
    };

    let name = &spec.name;
    if !is_dns_label(&name.value) {
        problem(
            name.referenced,
            format!("cluster name {:?} is not a valid name", name.value),
            "use lowercase letters, digits and '-', at most 63 characters (it names files and the kubeconfig context)",
        );
    }

    let hosts = &spec.hosts.value;
    if hosts.is_empty() {
        problem(spec.hosts.referenced, "no hosts declared".into(), "add at least one host under `hosts:`");
    }

    let mut names: HashMap<&str, u64> = HashMap::new();
    let mut addresses: HashMap<String, u64> = HashMap::new();
    for h in hosts {
        if !is_dns_label(&h.name.value) {
            problem(
                h.name.referenced,
                format!("host name {:?} cannot be a hostname", h.name.value),
                "use lowercase letters, digits and '-' (e.g. rasp01), at most 63 characters",
            );
        }
        if let Some(first) = names.insert(&h.name.value, h.name.referenced.line()) {
            problem(
                h.name.referenced,
                format!("duplicate host name {:?} (first used on line {first})", h.name.value),
                "every host needs its own name",
            );
        }
        match &h.address {
            Some(a) => {
                check_address(a, &mut problem);
                if let Some(first) = addresses.insert(a.value.to_ascii_lowercase(), a.referenced.line()) {
                    problem(
                        a.referenced,
                        format!("duplicate address {:?} (first used on line {first})", a.value),
                        "two hosts cannot share an address; check for a copy-paste slip",
                    );
                }
            }
            None if addresses_required => problem(
                h.name.referenced,
                format!("host {:?} has no address", h.name.value),
                "add `address:`, or let `pikube discover --write` find it on the network",
            ),
            None => {}
        }
        if let Some(m) = &h.mac {
            if !is_mac(&m.value) {
                problem(
                    m.referenced,
                    format!("{:?} is not a MAC address", m.value),
                    "write six hex pairs separated by ':' like dc:a6:32:01:02:03",
                );
            }
        }
        check_labels_and_taints(h, &mut problem);
        check_storage(h, &mut problem);
    }

    let servers = hosts.iter().filter(|h| h.role.value == Role::Server).count();
    let balancers: Vec<_> = hosts.iter().filter(|h| h.role.value == Role::Loadbalancer).collect();
    if !hosts.is_empty() && servers == 0 {
        problem(
            spec.hosts.referenced,
            "no host has role `server`".into(),
            "give one host (or 3 for high availability) `role: server`",
        );
    }
    if servers > 1 && servers % 2 == 0 {
        problem(
            spec.hosts.referenced,
            format!("{servers} servers: high availability needs an odd number of servers"),
            "etcd needs a majority; with an even count one failure can stop the cluster. Use 3 (or 5) servers, or 1",
        );
    }

    let endpoint = spec.kubernetes.endpoint.as_ref();
    if endpoint.is_none() {
        if let Some(lb) = balancers.first() {
            problem(
                lb.role.referenced,
                "a `loadbalancer` host needs an API endpoint".into(),
                "add `kubernetes: {endpoint: {mode: loadbalancer}}` (optionally with `address:` for a DNS name)",
            );
        }
        if servers > 1 {
            problem(
                spec.hosts.referenced,
                format!("{servers} servers need a stable API endpoint"),
                "add `kubernetes.endpoint` with `mode: loadbalancer` (and a loadbalancer host) or `mode: vip` with a free `address:`",
            );
        }
    }
    if let Some(ep) = endpoint {
        match ep.mode.value {
            EndpointMode::Loadbalancer if balancers.is_empty() => problem(
                ep.mode.referenced,
                "endpoint mode `loadbalancer` but no host has `role: loadbalancer`".into(),
                "add one or two hosts with `role: loadbalancer`, or use `mode: vip`",
            ),
            EndpointMode::Vip => match &ep.address {
                None => problem(
                    ep.mode.referenced,
                    "endpoint mode `vip` needs `address:` (the virtual IP)".into(),
                    "add `address:` with a free IP in the servers' subnet",
                ),
                Some(a) if !is_ip(&a.value) => problem(
                    a.referenced,
                    format!("virtual IP {:?} is not an IP address", a.value),
                    "a VIP must be a free IP address in the servers' subnet",
                ),
                Some(a) if hosts.iter().any(|h| h.address() == a.value) => problem(
                    a.referenced,
                    format!("virtual IP {} is already a host's address", a.value),
                    "pick an unused address for the VIP",
                ),
                Some(_) => {}
            },
            EndpointMode::None if servers > 1 => problem(
                ep.mode.referenced,
                format!("endpoint mode `none` with {servers} servers has no failover"),
                "use `mode: loadbalancer` or `mode: vip` for several servers",
            ),
            _ => {}
        }
        if let Some(a) = &ep.address {
            check_address(a, &mut problem);
        }
    }

    if balancers.len() > 2 {
        problem(
            balancers[2].role.referenced,
            format!("{} loadbalancer hosts; pikube runs one or two", balancers.len()),
            "keep one load balancer, or two sharing a virtual IP (`kubernetes.endpoint.address`)",
        );
    }
    if let (2, Some(ep)) = (balancers.len(), endpoint) {
        if ep.mode.value == EndpointMode::Loadbalancer && ep.address.as_ref().is_none_or(|a| !is_ip(&a.value)) {
            problem(
                ep.mode.referenced,
                "two loadbalancer hosts need a virtual IP they share".into(),
                "add `address:` with a free IP in their subnet; keepalived moves it to the healthy load balancer",
            );
        }
    }

    let k8s = &spec.kubernetes;
    if let Some(v) = &k8s.version {
        match k8s.distribution {
            Distribution::Kubeadm if !is_kubernetes_version(&v.value) => problem(
                v.referenced,
                format!("{:?} is not a Kubernetes release version", v.value),
                "write the release tag kubeadm uses, e.g. v1.34.4 (see kubernetes.io/releases); k3s tags like v1.31.4+k3s1 need `distribution: k3s`",
            ),
            Distribution::Kubeadm => {}
            Distribution::K3s if !is_k3s_version(&v.value) => problem(
                v.referenced,
                format!("{:?} is not a k3s release version", v.value),
                "write the release tag, e.g. v1.31.4+k3s1 (see github.com/k3s-io/k3s/releases)",
            ),
            Distribution::K3s => {}
        }
    }

    if let Some(days) = &k8s.renew_certificates_days {
        check_renewal_days(k8s.distribution, days, &mut problem);
    }

    let known_phases = crate::phases::names();
    for hook in &spec.hooks.hosts {
        if !known_phases.contains(&hook.phase.value.as_str()) {
            problem(
                hook.phase.referenced,
                format!("unknown phase {:?}", hook.phase.value),
                &format!("use one of: {}", crate::phases::PHASES.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")),
            );
        }
        for on in &hook.on {
            let is_role = ["server", "agent", "loadbalancer"].contains(&on.value.as_str());
            if !is_role && !hosts.iter().any(|h| h.name.value == on.value) {
                problem(
                    on.referenced,
                    format!("{:?} is neither a host name nor a role", on.value),
                    "name hosts from `hosts:` or the roles server, agent, loadbalancer",
                );
            }
        }
    }

    for url in [&spec.packages.mirror, &spec.packages.proxy, &k8s.download_url]
        .into_iter()
        .chain(spec.proxy.iter().flat_map(|p| [&p.http, &p.https]))
        .flatten()
    {
        check_url(url, &mut problem);
    }
    if let Some(u) = &k8s.download_url {
        check_download_url(u, &mut problem);
    }
    check_host_file_strings(spec, &mut problem);
    out
}

/// `renew_certificates_days` is kubeadm's, and lies between the day `status` starts warning
/// (30 days left) and the year kubeadm signs for (a renewal must leave more than it).
fn check_renewal_days(
    distribution: Distribution,
    days: &Spanned<u32>,
    problem: &mut impl FnMut(serde_saphyr::Location, String, &str),
) {
    if distribution != Distribution::Kubeadm {
        return problem(
            days.referenced,
            "renew_certificates_days is for `distribution: kubeadm`".into(),
            "remove it: k3s renews its own certificates when it starts and they expire within 90 days",
        );
    }
    if !(30..=300).contains(&days.value) {
        problem(
            days.referenced,
            format!("renew_certificates_days {} is outside 30..=300", days.value),
            "use at least 30 (`status` warns from 30 days left, `up` should renew before) and at most 300 (kubeadm signs for 365 days, so a larger value renews on every run); the default is 90",
        );
    }
}

/// Strings pikube writes into files on the hosts besides the URLs: apt components
/// (sources.list), `no_proxy` (the k3s env file) and registry mirrors (registries.yaml).
fn check_host_file_strings(spec: &ClusterFile, problem: &mut impl FnMut(serde_saphyr::Location, String, &str)) {
    for c in &spec.packages.components {
        if c.value.is_empty() || !c.value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._+/".contains(&b)) {
            problem(
                c.referenced,
                format!("{:?} is not an apt component", c.value),
                "list one component per item, like main, contrib or non-free-firmware (letters, digits, - . _ + /)",
            );
        }
    }
    for n in spec.proxy.iter().flat_map(|p| &p.no_proxy) {
        if let Some(flaw) = flaw(&n.value, |c| is_unsafe(c) || c == ',') {
            problem(
                n.referenced,
                format!("no_proxy entry {:?} {flaw}", n.value),
                "give one host, domain (.lan) or CIDR per list item, without spaces, commas, quotes or backslashes",
            );
        }
    }
    for (registry, mirrors) in &spec.registry_mirrors {
        // The name becomes a directory (containerd's certs.d/<registry>/): only host[:port].
        let flaw = flaw(registry, is_unsafe).or_else(|| (!is_registry(registry)).then(|| "is not host[:port]".into()));
        if let Some(flaw) = flaw {
            problem(
                mirrors.referenced,
                format!("registry name {registry:?} {flaw}"),
                "name the registry as images do, e.g. docker.io or registry.lan:5000 (or * for all)",
            );
        }
        if mirrors.value.is_empty() {
            problem(
                mirrors.referenced,
                format!("registry {registry:?} has no mirror"),
                "list at least one mirror URL, e.g. [https://mirror.lan:5000], or remove the entry",
            );
        }
        for m in &mirrors.value {
            check_url(m, problem);
        }
    }
}

/// `hosts[].storage`: a whole disk by a path pikube can quote and systemd can name, and LVM
/// names and a size that lvcreate takes. Whether the disk is empty is checked on the host.
fn check_storage(h: &HostSpec, problem: &mut impl FnMut(serde_saphyr::Location, String, &str)) {
    let Some(storage) = &h.storage else { return };
    let device = &storage.device;
    if h.role.value == Role::Loadbalancer {
        problem(
            device.referenced,
            format!(
                "host {:?} is a load balancer: it runs no container runtime or kubelet to give a disk",
                h.name.value
            ),
            "remove `storage:` from this host, or give it `role: agent`",
        );
    }
    if let Some(flaw) = device_flaw(&device.value) {
        problem(
            device.referenced,
            format!("storage device {:?} {flaw}", device.value),
            "name the whole disk by its stable path, e.g. /dev/disk/by-id/usb-Samsung_Portable_SSD_T7_S5SXNG0R123456-0:0 (see `ls -l /dev/disk/by-id` on the host)",
        );
    } else if let Some(what) = names_a_filesystem_or_partition(&device.value) {
        problem(
            device.referenced,
            format!("storage device {:?} names {what}, not a whole disk", device.value),
            "pikube formats a whole, empty disk: name the disk itself, e.g. /dev/disk/by-id/usb-…-0:0 without -partN",
        );
    }
    if let Some(lvm) = &storage.lvm {
        check_lvm(lvm, problem);
    }
}

/// What makes `path` no device path pikube writes into unit files and commands.
fn device_flaw(path: &str) -> Option<String> {
    let Some(rest) = path.strip_prefix("/dev/") else { return Some("is not a path under /dev/".into()) };
    if let Some(c) = path.chars().find(|c| !c.is_ascii_alphanumeric() && !"/-_.:@+,=".contains(*c)) {
        return Some(format!("contains {c:?}"));
    }
    if rest.is_empty()
        || rest.ends_with('/')
        || rest.split('/').any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Some("is not a plain device path".into());
    }
    None
}

/// Paths udev gives file systems and partitions: formatting one of them is never what was meant.
fn names_a_filesystem_or_partition(path: &str) -> Option<&'static str> {
    let rest = path.strip_prefix("/dev/disk/").unwrap_or_default();
    if ["by-uuid/", "by-label/", "by-partuuid/", "by-partlabel/"].iter().any(|p| rest.starts_with(p)) {
        return Some("a file system or a partition");
    }
    let partition =
        path.rsplit_once("-part").is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    partition.then_some("a partition")
}

fn check_lvm(lvm: &Lvm, problem: &mut impl FnMut(serde_saphyr::Location, String, &str)) {
    for (what, name) in [("volume group", &lvm.vg), ("thin pool", &lvm.thinpool)] {
        if let Some(flaw) = lvm_name_flaw(&name.value) {
            problem(
                name.referenced,
                format!("LVM {what} name {:?} {flaw}", name.value),
                "use letters, digits and + _ . - (not starting with -), e.g. pikube or pool",
            );
        }
    }
    if crate::storage::render::lvm_bytes(&lvm.size.value).is_none() {
        problem(
            lvm.size.referenced,
            format!("LVM size {:?} is not a size lvcreate takes", lvm.size.value),
            "write a whole number with a unit M, G or T, e.g. 200G; leave room on the disk for the pool's metadata",
        );
    }
}

/// lvm(8) VALID NAMES, plus the suffixes LVM reserves for its own hidden volumes.
fn lvm_name_flaw(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 63 {
        return Some("must be 1 to 63 characters".into());
    }
    if name.starts_with('-') {
        return Some("starts with '-'".into());
    }
    if name == "." || name == ".." {
        return Some("is not allowed".into());
    }
    if let Some(c) = name.chars().find(|c| !c.is_ascii_alphanumeric() && !"+_.-".contains(*c)) {
        return Some(format!("contains {c:?}"));
    }
    const RESERVED: [&str; 6] = ["_cdata", "_cmeta", "_mlog", "_pmspare", "_tdata", "_tmeta"];
    RESERVED.iter().find(|r| name.contains(*r)).map(|r| format!("contains {r:?}, which LVM keeps for itself"))
}

/// What is wrong with `v`: "is empty" or "contains '<the first bad character>'".
fn flaw(v: &str, bad: impl Fn(char) -> bool) -> Option<String> {
    if v.is_empty() {
        return Some("is empty".into());
    }
    v.chars().find(|&c| bad(c)).map(|c| format!("contains {c:?}"))
}

/// Characters that let a value escape the line or the quotes it is written into on a host
/// (apt.conf, sources.list, the k3s env file): whitespace and control characters (a newline
/// starts a new setting), quotes, and backslashes (a trailing one joins the next env line).
fn is_unsafe(c: char) -> bool {
    c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '`' | '\\')
}

fn check_address(a: &Spanned<String>, problem: &mut impl FnMut(serde_saphyr::Location, String, &str)) {
    let v = a.value.as_str();
    if !is_address(v) {
        problem(
            a.referenced,
            format!("{v:?} is not a valid IP address or hostname"),
            "write an IPv4/IPv6 address like 192.168.1.101 or a DNS name like rasp01.local",
        );
    }
}

/// An IP address, or a DNS name that does not look like a mistyped IPv4 address.
pub(crate) fn is_address(v: &str) -> bool {
    let looks_numeric = v.chars().all(|c| c.is_ascii_digit() || c == '.');
    if looks_numeric {
        is_ip(v)
    } else {
        is_ip(v) || is_hostname(v)
    }
}

fn check_url(u: &Spanned<String>, problem: &mut impl FnMut(serde_saphyr::Location, String, &str)) {
    let v = u.value.as_str();
    if let Some(flaw) = flaw(v, is_unsafe).filter(|_| !v.is_empty()) {
        return problem(
            u.referenced,
            format!("URL {v:?} {flaw}"),
            "remove spaces, quotes, backslashes and control characters; percent-encode them if the URL needs them (%20, %22)",
        );
    }
    let rest = v.strip_prefix("http://").or_else(|| v.strip_prefix("https://"));
    if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
        problem(
            u.referenced,
            format!("{v:?} is not an http(s) URL"),
            "write it like http://mirror.lan/debian or http://proxy.lan:3128",
        );
    }
}

/// The k3s binary and its checksum come from the same place, so plain HTTP would let anyone
/// on the way swap both; only this machine itself is exempt (tests and local mirrors).
fn check_download_url(u: &Spanned<String>, problem: &mut impl FnMut(serde_saphyr::Location, String, &str)) {
    let Some(rest) = u.value.strip_prefix("http://") else { return };
    if !is_loopback_host(rest) {
        problem(
            u.referenced,
            format!("download_url {:?} is plain HTTP: anyone on the way could swap the k3s binary and its checksum", u.value),
            "use an https:// URL, or download the release files yourself and set kubernetes.artifacts (http:// is accepted only for 127.0.0.1, ::1 and localhost)",
        );
    }
}

/// True when the host of `authority_and_path` (a URL without its scheme) is this machine.
fn is_loopback_host(authority_and_path: &str) -> bool {
    let authority = authority_and_path.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(h, _)| h),
        None => host_port.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `v1.34.4`: an upstream Kubernetes release (no pre-release or build suffix).
pub(crate) fn is_kubernetes_version(v: &str) -> bool {
    let parts: Vec<&str> = v.strip_prefix('v').map(|r| r.split('.').collect()).unwrap_or_default();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `v1.31.4+k3s1`
pub(crate) fn is_k3s_version(v: &str) -> bool {
    let Some((semver, build)) = v.strip_prefix('v').and_then(|r| r.split_once("+k3s")) else { return false };
    let parts: Vec<&str> = semver.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && !build.is_empty()
        && build.bytes().all(|b| b.is_ascii_digit())
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_hostname(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A registry as image references name it: `*`, or a host name or IP with an optional port
/// (`registry.lan:5000`, `[fd00::1]:5000`).
fn is_registry(s: &str) -> bool {
    if s == "*" {
        return true;
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, Some(p)),
        _ => (s, None),
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => is_address(host),
    };
    host_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0))
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Labels and taints as kubelet checks them at start: k3s exits when kubelet refuses one, so
/// the node would never start. `api_labels` go through the API, where only the syntax counts.
fn check_labels_and_taints(h: &HostSpec, problem: &mut impl FnMut(serde_saphyr::Location, String, &str)) {
    for (api, labels) in [(false, &h.labels), (true, &h.api_labels)] {
        for (k, v) in &labels.0 {
            if let Some(flaw) = qualified_name_flaw(&k.value) {
                problem(
                    k.referenced,
                    format!("label key {:?} {flaw}", k.value),
                    "write `[prefix/]name`: prefix a DNS subdomain (at most 253 characters), name at most 63 of A-Z a-z 0-9 - _ . starting and ending with a letter or digit",
                );
            } else if !api && !is_kubelet_label(&k.value) {
                problem(
                    k.referenced,
                    format!("kubelet refuses to set label {:?} itself (namespace kubernetes.io/k8s.io), so k3s would exit", k.value),
                    "move it under `api_labels:` on this host: pikube sets those through the API after the node joins (kubelet may only set kubernetes.io/hostname, arch, os, instance-type, topology zone/region and labels under node.kubernetes.io/ or kubelet.kubernetes.io/)",
                );
            }
            if let Some(flaw) = label_value_flaw(&v.value) {
                problem(
                    v.referenced,
                    format!("label value {:?} {flaw}", v.value),
                    "a label value is empty or at most 63 of A-Z a-z 0-9 - _ . starting and ending with a letter or digit",
                );
            }
        }
    }
    for t in &h.taints {
        if let Some(flaw) = taint_flaw(&t.value) {
            problem(
                t.referenced,
                format!("taint {:?} {flaw}", t.value),
                "write e.g. `dedicated=edge:NoSchedule`; Effect is NoSchedule, PreferNoSchedule or NoExecute",
            );
        }
    }
}

/// `key[=value]:Effect`, key and value checked like label keys and values (as kubelet's
/// `--register-with-taints` parser does).
fn taint_flaw(s: &str) -> Option<String> {
    let Some((kv, effect)) = s.rsplit_once(':') else { return Some("is not `key[=value]:Effect`".into()) };
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Some(format!("has effect {effect:?}, not NoSchedule, PreferNoSchedule or NoExecute"));
    }
    let (key, value) = kv.split_once('=').map_or((kv, ""), |(k, v)| (k, v));
    qualified_name_flaw(key)
        .map(|f| format!("key {key:?} {f}"))
        .or_else(|| label_value_flaw(value).map(|f| format!("value {value:?} {f}")))
}

/// Labels kubelet may set on its own Node (k8s.io/kubernetes pkg/kubelet/apis, `IsKubeletLabel`).
const KUBELET_LABELS: [&str; 11] = [
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
];

/// False for keys in the kubernetes.io/k8s.io namespaces (and subdomains) that kubelet refuses.
fn is_kubelet_label(key: &str) -> bool {
    let Some((ns, _)) = key.split_once('/') else { return true };
    let within = |ns: &str, domain: &str| ns == domain || ns.ends_with(&format!(".{domain}"));
    let reserved = within(ns, "kubernetes.io") || within(ns, "k8s.io");
    !reserved
        || KUBELET_LABELS.contains(&key)
        || within(ns, "kubelet.kubernetes.io")
        || within(ns, "node.kubernetes.io")
}

/// What makes `key` no qualified name (apimachinery `IsQualifiedName`): `[prefix/]name`.
fn qualified_name_flaw(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let label_ok = |l: &str| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if p.is_empty() || p.len() > 253 || !p.split('.').all(label_ok) {
            return Some(format!("has prefix {p:?}, which is no lowercase DNS subdomain of at most 253 characters"));
        }
    }
    if name.is_empty() {
        return Some("has an empty name".into());
    }
    label_value_flaw(name).map(|f| f.replace("value", "name"))
}

/// What makes `v` no label value (apimachinery `IsValidLabelValue`); empty is allowed.
fn label_value_flaw(v: &str) -> Option<String> {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if v.len() > 63 {
        Some(format!("is {} characters long; at most 63 are allowed", v.len()))
    } else if let Some(c) = v.chars().find(|c| !c.is_ascii_alphanumeric() && !matches!(c, '-' | '_' | '.')) {
        Some(format!("contains {c:?}"))
    } else if !v.is_empty() && (!alnum(v.chars().next()) || !alnum(v.chars().last())) {
        Some("must start and end with a letter or digit".into())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_kubelet_and_apimachinery() {
        for ok in [
            "disk",
            "example.com/disk",
            "node.kubernetes.io/pool",
            "x.node.kubernetes.io/a",
            "kubernetes.io/arch",
            "topology.kubernetes.io/zone",
            "kubelet.kubernetes.io/x",
        ] {
            assert!(qualified_name_flaw(ok).is_none() && is_kubelet_label(ok), "{ok}");
        }
        for refused in [
            "node-role.kubernetes.io/worker",
            "kubernetes.io/role",
            "k8s.io/x",
            "a.k8s.io/x",
            "node-restriction.kubernetes.io/x",
        ] {
            assert!(qualified_name_flaw(refused).is_none() && !is_kubelet_label(refused), "{refused}");
        }
        for bad in
            ["", "/x", "Example.com/x", "a/b/c", "-x", "x_", "a b", &"n".repeat(64), &format!("{}/x", "p".repeat(254))]
        {
            assert!(qualified_name_flaw(bad).is_some(), "{bad}");
        }
        assert!(label_value_flaw("").is_none() && label_value_flaw("v1.2_x-y").is_none());
        for bad in ["-a", "a.", "a/b", "ä", &"v".repeat(64)] {
            assert!(label_value_flaw(bad).is_some(), "{bad}");
        }
        assert!(taint_flaw("dedicated=edge:NoSchedule").is_none() && taint_flaw("a.io/k:NoExecute").is_none());
        for bad in ["dedicated=edge", "k=v:Sometimes", ":NoSchedule", "k=v v:NoSchedule", "=v:NoSchedule"] {
            assert!(taint_flaw(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn registry_names_are_host_and_port() {
        for ok in ["*", "docker.io", "registry.lan:5000", "10.0.0.5:5000", "[fd00::1]:5000", "[fd00::1]", "ghcr.io"] {
            assert!(is_registry(ok), "{ok}");
        }
        for bad in ["../../x", "..", "registry.lan/team", "registry.lan:0", "registry.lan:99999", "fd00::1", "a:b", ""]
        {
            assert!(!is_registry(bad), "{bad}");
        }
    }

    #[test]
    fn plain_http_downloads_are_only_for_this_machine() {
        for ok in ["127.0.0.1:8080", "127.0.0.53/k3s", "localhost", "LOCALHOST:80/x", "[::1]:8080/", "u:p@127.0.0.1:9"]
        {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "github.com",
            "10.0.0.1:8080",
            "[::2]:80",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "127.0.0.1@evil.example",
            "[::1",
            "",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}
