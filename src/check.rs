//! Preflight findings: what would stop or weaken a cluster, each with a fix hint.

mod release;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::artifacts::ArtifactError;
use crate::config::{Cluster, Role};
use crate::facts::{Arch, HostFacts};
use crate::fleet::{Fleet, Node};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub host: String,
    pub severity: Severity,
    /// Stable identifier, e.g. `duplicate-machine-id`.
    pub code: &'static str,
    pub message: String,
    pub fix: String,
}

/// Clock difference that TLS certificates and etcd start to mind.
const MAX_CLOCK_SKEW_SECS: f64 = 2.0;
const MIN_RAM_KIB: u64 = 1024 * 1024;

/// One host as the checks see it: what connecting and gathering facts produced. Kept apart from
/// `Node` (which holds a live SSH session) so the checks can be tested on made-up facts.
struct Probe {
    name: String,
    role: Role,
    connected: bool,
    facts: Option<HostFacts>,
    /// Why connecting or gathering facts failed.
    failure: Option<String>,
}

impl Probe {
    fn of(node: &Node) -> Probe {
        Probe {
            name: node.name().to_string(),
            role: node.role(),
            connected: node.host.is_some(),
            facts: node.facts(),
            failure: node.failure(),
        }
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn role(&self) -> Role {
        self.role
    }
    fn facts(&self) -> Option<&HostFacts> {
        self.facts.as_ref()
    }
    fn failure(&self) -> Option<String> {
        self.failure.clone()
    }
}

pub fn findings(fleet: &Fleet) -> Vec<Finding> {
    let hosts: Vec<Probe> = fleet.nodes.iter().map(Probe::of).collect();
    assess(&fleet.cluster, &hosts)
}

/// [`findings`] and those of the hosts' data disks (`crate::storage`, a look at each disk), in
/// host order: what `check` reports and preflight stops on.
pub async fn with_storage(fleet: &Fleet) -> Vec<Finding> {
    let mut out = findings(fleet);
    out.extend(crate::storage::findings(fleet).await);
    let order = |host: &str| fleet.nodes.iter().position(|n| n.name() == host).unwrap_or(usize::MAX);
    out.sort_by_key(|f| (order(&f.host), f.severity));
    out
}

/// The findings for `hosts` (in the cluster file's order) of `cluster`.
fn assess(cluster: &Cluster, hosts: &[Probe]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |host: &str, severity, code, message: String, fix: &str| {
        out.push(Finding { host: host.to_string(), severity, code, message, fix: fix.to_string() });
    };

    let version = cluster.version();
    let airgap = cluster.spec.kubernetes.artifacts.is_some();
    let mut artifacts_checked: BTreeMap<String, Option<(String, String)>> = BTreeMap::new();
    let refused = version.and_then(|want| version_refusal(cluster, hosts, want));
    let etcd_refused = version.and_then(|want| etcd_refusal(cluster, hosts, want));
    for node in hosts {
        let name = node.name();
        if !node.connected {
            let why = node.failure().unwrap_or_default();
            let (code, fix) = connect_fix(&why);
            add(name, Severity::Error, code, why, fix);
            continue;
        }
        let Some(f) = node.facts() else {
            add(
                name,
                Severity::Error,
                "facts-failed",
                node.failure().unwrap_or_default(),
                "check the login user can run sh and sudo",
            );
            continue;
        };
        if !matches!(f.os_id.as_str(), "debian" | "ubuntu" | "raspbian") {
            add(
                name,
                Severity::Error,
                "unsupported-os",
                format!("{} is not Debian, Raspberry Pi OS or Ubuntu", f.os_pretty),
                "install Raspberry Pi OS Lite, Debian or Ubuntu Server",
            );
        }
        if f.arch == Arch::Armv6 {
            add(
                name,
                Severity::Error,
                "armv6",
                format!(
                    "{} is armv6 ({}): Kubernetes ships no armv6 builds",
                    name,
                    f.pi_model.as_deref().unwrap_or("ARM11")
                ),
                "use a Pi 2 v1.2, 3, 4, 5 or Zero 2 W; retire Pi 1 / Zero / Zero W from the cluster",
            );
        }
        if let Arch::Other(a) = &f.arch {
            add(
                name,
                Severity::Error,
                "unsupported-arch",
                format!("architecture {a} is not supported"),
                "use arm64, armv7 or x86_64 hosts",
            );
        }
        if f.mem_total_kib < MIN_RAM_KIB {
            add(
                name,
                Severity::Warning,
                "low-memory",
                format!("only {} MiB RAM (< 1 GiB)", f.mem_total_kib / 1024),
                "use it as an agent at most, or use a board with ≥ 1 GiB",
            );
        }
        if f.swap.any() {
            let mut what = f.swap.active.clone();
            what.extend(f.swap.fstab.iter().map(|l| format!("fstab: {l}")));
            if f.swap.dphys_swapfile {
                what.push("dphys-swapfile".into());
            }
            if f.swap.zram {
                what.push("zram".into());
            }
            add(
                name,
                Severity::Warning,
                "swap-on",
                format!("swap is on or comes back at boot: {}", what.join(", ")),
                "`pikube up` turns it off for good (swapoff, fstab, dphys-swapfile, zram)",
            );
        }
        if !f.memory_cgroup {
            let fix = if f.is_pi() && f.boot_dir.is_some() {
                "`pikube up` adds cgroup_enable=memory cgroup_memory=1 to cmdline.txt and reboots"
            } else {
                "add cgroup_enable=memory cgroup_memory=1 to the kernel command line (GRUB_CMDLINE_LINUX) and reboot"
            };
            add(
                name,
                Severity::Warning,
                "memory-cgroup-off",
                "the memory cgroup is disabled in the running kernel".into(),
                fix,
            );
        }
        for user in &f.default_password_users {
            let fix = format!(
                "run `sudo passwd {user}` (or `sudo passwd -l {user}` to lock it): anyone on the network can log in"
            );
            add(
                name,
                Severity::Warning,
                "default-password",
                format!("user {user} still has the image's default password"),
                &fix,
            );
        }
        if f.clock_offset_secs.abs() > MAX_CLOCK_SKEW_SECS {
            add(
                name,
                Severity::Warning,
                "clock-skew",
                format!("clock is {:+.1} s off this machine", f.clock_offset_secs),
                "Pis have no RTC: enable time sync (`timedatectl set-ntp true`, systemd-timesyncd or chrony)",
            );
        }
        for (rt, v) in &f.runtimes {
            add(name, Severity::Info, "runtime-present", format!("{rt} already installed: {v}"), "");
        }
        for (k, v) in &f.kubernetes {
            match version {
                // pikube's own install of the pinned release is not news.
                Some(want) if k == "k3s" && v.contains(want) => {}
                Some(want) if k == "k3s" => add(
                    name,
                    Severity::Info,
                    "kubernetes-present",
                    format!("k3s already installed: {v}"),
                    &format!("`pikube up` replaces it with the pinned {want}"),
                ),
                _ => add(name, Severity::Info, "kubernetes-present", format!("{k} already installed: {v}"), ""),
            }
        }
        // A release kubeadm cannot move the cluster to stops every host, before any changes.
        if let Some((message, fix)) = &refused {
            add(name, Severity::Error, "version-skew", message.clone(), fix);
        }
        if let Some((message, fix)) = &etcd_refused {
            add(name, Severity::Error, "etcd-upgrade-path", message.clone(), fix);
        }
        if node.role() != Role::Loadbalancer {
            for (severity, code, message, fix) in release::host_rules(cluster, version, name, f) {
                add(name, severity, code, message, &fix);
            }
        }
        // Airgap files are checked before anything changes, so a bad file stops `up` early.
        if let (Some(want), true, true) = (version, airgap, node.role() != Role::Loadbalancer) {
            let verdict = artifacts_checked.entry(f.arch.as_str().to_string()).or_insert_with(|| {
                match crate::distro::binaries(cluster, want, &f.arch, true) {
                    // An architecture without a release is a finding of its own.
                    Ok(_) | Err(ArtifactError::Unsupported(_) | ArtifactError::NoArm32) => None,
                    Err(e) => Some((e.to_string(), e.hint())),
                }
            });
            if let Some((message, fix)) = verdict.clone() {
                let code = match cluster.distribution() {
                    crate::config::Distribution::K3s => "k3s-artifact",
                    crate::config::Distribution::Kubeadm => "kubernetes-artifact",
                };
                add(name, Severity::Error, code, message, &fix);
            }
        }
    }

    cross_host(hosts, &mut out);
    out.sort_by_key(|f| (host_order(hosts, &f.host), f.severity));
    out
}

/// Why the pinned `want` is refused for the releases the hosts' kubelets run (kubeadm: no
/// minor release skipped, no downgrade), with the fix.
fn version_refusal(cluster: &Cluster, hosts: &[Probe], want: &str) -> Option<(String, String)> {
    if cluster.distribution() != crate::config::Distribution::Kubeadm {
        return None;
    }
    let installed: Vec<(String, String)> = hosts
        .iter()
        .filter(|h| h.role() != Role::Loadbalancer)
        .filter_map(|h| {
            Some((h.name().to_string(), crate::distro::installed_version(cluster.distribution(), h.facts()?)?))
        })
        .collect();
    crate::distro::kubeadm::upgrade::refusal(&installed, want)
}

/// Why kubeadm must not move the servers' etcd to the release `want` runs yet (see
/// `release::etcd_refusal`), from the etcd images the servers run.
fn etcd_refusal(cluster: &Cluster, hosts: &[Probe], want: &str) -> Option<(String, String)> {
    if cluster.distribution() != crate::config::Distribution::Kubeadm {
        return None;
    }
    let running: Vec<(&str, &str)> = hosts
        .iter()
        .filter(|h| h.role() == Role::Server)
        .filter_map(|h| Some((h.name(), h.facts()?.etcd_image.as_deref()?)))
        .collect();
    release::etcd_refusal(want, &running)
}

/// Findings that compare hosts with each other.
fn cross_host(hosts: &[Probe], out: &mut Vec<Finding>) {
    let mut add = |host: &str, severity, code, message: String, fix: &str| {
        out.push(Finding { host: host.to_string(), severity, code, message, fix: fix.to_string() });
    };
    let mut by_machine_id: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut by_hostname: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for node in hosts {
        if let Some(f) = node.facts() {
            if !f.machine_id.is_empty() {
                by_machine_id.entry(f.machine_id.clone()).or_default().push(node.name());
            }
            by_hostname.entry(f.hostname.clone()).or_default().push(node.name());
        }
    }
    for (id, hosts) in by_machine_id.iter().filter(|(_, h)| h.len() > 1) {
        for h in hosts {
            let others: Vec<_> = hosts.iter().filter(|o| *o != h).copied().collect();
            add(h, Severity::Error, "duplicate-machine-id", format!("machine-id {} is also on {} (cloned SD card)", short(id), others.join(", ")), "on each clone: `sudo rm /etc/machine-id /var/lib/dbus/machine-id && sudo systemd-machine-id-setup && sudo reboot`");
        }
    }
    for (hn, hosts) in by_hostname.iter().filter(|(_, h)| h.len() > 1) {
        for h in hosts {
            add(
                h,
                Severity::Warning,
                "duplicate-hostname",
                format!("hostname {hn:?} is shared by {}", hosts.join(", ")),
                "`pikube up` sets each host's name from the cluster file",
            );
        }
    }
}

/// Warnings about what the pinned release needs, which `plan` and `up` show as well.
pub fn release_warnings(findings: &[Finding]) -> impl Iterator<Item = &Finding> {
    findings.iter().filter(|f| f.severity == Severity::Warning && release::CODES.contains(&f.code))
}

/// Findings that stop `up` on a host.
pub fn blocking(findings: &[Finding]) -> impl Iterator<Item = &Finding> {
    findings.iter().filter(|f| f.severity == Severity::Error)
}

fn host_order(hosts: &[Probe], host: &str) -> usize {
    hosts.iter().position(|n| n.name() == host).unwrap_or(usize::MAX)
}

fn short(id: &str) -> &str {
    crate::term::truncate(id, 12)
}

fn connect_fix(why: &str) -> (&'static str, &'static str) {
    if why.contains("CHANGED") {
        ("host-key-changed", "if the host was reinstalled, remove its old line from known_hosts (`ssh-keygen -R ADDRESS`); otherwise suspect a man-in-the-middle")
    } else if why.contains("is not in") {
        ("host-key-unknown", "verify the fingerprint, then `ssh-keyscan ADDRESS >> ~/.ssh/known_hosts`, or set ssh.host_key_policy: accept-new")
    } else if why.contains("authentication") {
        ("auth-failed", "check ssh.user and ssh.key; copy the key with `ssh-copy-id USER@ADDRESS`")
    } else {
        (
            "unreachable",
            "check the host is powered, on the network and the address is right (`pikube discover` finds Pis)",
        )
    }
}

/// Renders findings as an aligned table.
pub fn table(findings: &[Finding]) -> String {
    let rows: Vec<[String; 4]> = findings
        .iter()
        .map(|f| [f.host.clone(), f.severity.as_str().to_string(), f.message.clone(), f.fix.clone()])
        .collect();
    render_table(&["HOST", "SEVERITY", "FINDING", "FIX"], &rows)
}

/// Every cell goes through [`crate::term::clean`]: tables show hostnames, models, OS names and
/// mDNS answers that the hosts themselves provide.
pub fn render_table<const N: usize>(head: &[&str; N], rows: &[[String; N]]) -> String {
    let clean = |c: String| crate::term::clean(&c).replace('\n', " ");
    let rows: Vec<[String; N]> = rows.iter().map(|r| r.clone().map(clean)).collect();
    let mut width = head.map(|h| h.chars().count());
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(head.to_vec());
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use sha2::{Digest, Sha256};

    use super::*;
    use crate::facts::{FactsError, ServiceState, SwapFacts};
    use crate::ssh::SshError;

    const PINNED: &str = "v1.31.4+k3s1";

    /// A cluster of hosts a (server), b and c (agents), with `kubernetes` lines.
    fn cluster(kubernetes: &str) -> Cluster {
        let text = format!(
            "name: t\nhosts:\n  - {{name: a, address: 10.0.0.1, role: server}}\n  - {{name: b, address: 10.0.0.2, role: agent}}\n  \
             - {{name: c, address: 10.0.0.3, role: agent}}\n{kubernetes}"
        );
        Cluster::parse(Path::new("/nonexistent/cluster.yaml"), &text).expect("test cluster file is valid")
    }

    /// A Raspberry Pi 4 on Bookworm as `pikube up` leaves it: nothing to report.
    fn healthy(name: &str) -> HostFacts {
        HostFacts {
            hostname: name.into(),
            os_id: "debian".into(),
            os_version_id: "12".into(),
            os_codename: "bookworm".into(),
            os_pretty: "Debian GNU/Linux 12 (bookworm)".into(),
            arch: Arch::Aarch64,
            kernel: "6.6.51+rpt-rpi-v8".into(),
            pi_model: Some("Raspberry Pi 4 Model B Rev 1.4".into()),
            boot_dir: Some("/boot/firmware".into()),
            cmdline_txt: Some(
                "console=tty1 root=PARTUUID=4e639091-02 rootwait cgroup_enable=memory cgroup_memory=1".into(),
            ),
            kernel_cmdline: "console=tty1 cgroup_enable=memory cgroup_memory=1".into(),
            memory_cgroup: true,
            cgroup_v2: true,
            vxlan: true,
            swap: SwapFacts::default(),
            machine_id: format!("{name:0>32}"),
            boot_id: "6f1c3c0e-5a4e-4f43-9d4b-1b8f0f5d2e11".into(),
            mem_total_kib: 4 * 1024 * 1024,
            clock_offset_secs: 0.3,
            iptables_mode: Some("nf_tables".into()),
            runtimes: BTreeMap::new(),
            kubernetes: BTreeMap::new(),
            etcd_image: None,
            containerd_candidate: None,
            default_password_users: vec![],
            modules_loaded: vec!["br_netfilter".into(), "overlay".into()],
            sysctl: BTreeMap::from([("net.ipv4.ip_forward".to_string(), "1".to_string())]),
            etc_hosts: "127.0.0.1 localhost\n".into(),
            apt_sources: BTreeMap::new(),
            ipv4: vec![],
            packages: vec![],
            can_lower_oom_score: true,
            can_set_conntrack_max: true,
            services: BTreeMap::from([("k3s".to_string(), ServiceState { enabled: true, active: true })]),
            files: BTreeMap::new(),
        }
    }

    fn reached(name: &str, role: Role, facts: HostFacts) -> Probe {
        Probe { name: name.into(), role, connected: true, facts: Some(facts), failure: None }
    }

    /// Every host healthy except `a`, which `spoil` changes.
    fn fleet_with(spoil: impl FnOnce(&mut HostFacts)) -> Vec<Probe> {
        let mut a = healthy("a");
        spoil(&mut a);
        vec![
            reached("a", Role::Server, a),
            reached("b", Role::Agent, healthy("b")),
            reached("c", Role::Agent, healthy("c")),
        ]
    }

    /// The one finding there is, checked for host, code, severity and fix text.
    fn single(found: &[Finding], host: &str, code: &str, severity: Severity, fix: &str) -> Finding {
        assert_eq!(found.len(), 1, "exactly one finding expected: {found:#?}");
        let f = found[0].clone();
        assert_eq!((f.host.as_str(), f.code, f.severity), (host, code, severity), "{f:#?}");
        assert!(f.fix.contains(fix), "fix of {code} should say {fix:?}: {f:#?}");
        f
    }

    #[test]
    fn a_healthy_fleet_has_no_findings() {
        assert!(assess(&cluster(""), &fleet_with(|_| {})).is_empty());
        // Also with a pinned version, pikube's own k3s of that version and a clock within bounds.
        let hosts = fleet_with(|f| {
            f.kubernetes.insert("k3s".into(), format!("k3s version {PINNED} (fa8a1bfd)"));
            f.clock_offset_secs = -MAX_CLOCK_SKEW_SECS;
            f.mem_total_kib = MIN_RAM_KIB;
        });
        let found = assess(&cluster(&format!("kubernetes:\n  version: {PINNED}\n")), &hosts);
        assert!(found.is_empty(), "{found:#?}");
    }

    #[test]
    fn connect_failures_name_their_cause() {
        let known_hosts = PathBuf::from("/home/op/.ssh/known_hosts");
        let cases = [
            (
                SshError::Unreachable {
                    host: "a".into(),
                    address: "10.0.0.1".into(),
                    port: 22,
                    reason: "connection refused".into(),
                },
                "unreachable",
                "check the host is powered",
            ),
            (
                SshError::AuthFailed { host: "a".into(), user: "pi".into(), tried: "agent".into() },
                "auth-failed",
                "ssh-copy-id",
            ),
            (
                SshError::HostKeyUnknown {
                    host: "a".into(),
                    fingerprint: "SHA256:x".into(),
                    known_hosts: known_hosts.clone(),
                },
                "host-key-unknown",
                "ssh-keyscan ADDRESS",
            ),
            (
                SshError::HostKeyChanged { host: "a".into(), fingerprint: "SHA256:x".into(), known_hosts, line: 3 },
                "host-key-changed",
                "ssh-keygen -R ADDRESS",
            ),
        ];
        for (error, code, fix) in cases {
            let why = error.to_string();
            let mut hosts = fleet_with(|_| {});
            hosts[0] = Probe {
                name: "a".into(),
                role: Role::Server,
                connected: false,
                facts: None,
                failure: Some(why.clone()),
            };
            let f = single(&assess(&cluster(""), &hosts), "a", code, Severity::Error, fix);
            assert_eq!(f.message, why);
        }
    }

    #[test]
    fn facts_that_cannot_be_gathered() {
        let why = FactsError::Parse { host: "a".into(), reason: "the facts script did not finish".into() }.to_string();
        let mut hosts = fleet_with(|_| {});
        hosts[0] =
            Probe { name: "a".into(), role: Role::Server, connected: true, facts: None, failure: Some(why.clone()) };
        let f = single(&assess(&cluster(""), &hosts), "a", "facts-failed", Severity::Error, "can run sh and sudo");
        assert_eq!(f.message, why);
    }

    #[test]
    fn host_findings_on_made_up_facts() {
        type Spoil = fn(&mut HostFacts);
        let cases: [(Spoil, &str, Severity, &str, &str); 10] = [
            (
                |f| f.os_id = "fedora".into(),
                "unsupported-os",
                Severity::Error,
                "install Raspberry Pi OS Lite",
                "is not Debian",
            ),
            (
                |f| (f.arch, f.pi_model) = (Arch::Armv6, Some("Raspberry Pi Zero W Rev 1.1".into())),
                "armv6",
                Severity::Error,
                "retire Pi 1 / Zero / Zero W",
                "a is armv6 (Raspberry Pi Zero W Rev 1.1)",
            ),
            (
                |f| f.arch = Arch::Other("riscv64".into()),
                "unsupported-arch",
                Severity::Error,
                "use arm64, armv7 or x86_64",
                "riscv64",
            ),
            (
                |f| f.mem_total_kib = MIN_RAM_KIB - 1,
                "low-memory",
                Severity::Warning,
                "use it as an agent at most",
                "only 1023 MiB RAM",
            ),
            (
                |f| {
                    f.swap =
                        SwapFacts { active: vec!["/var/swap".into()], fstab: vec![], dphys_swapfile: true, zram: false }
                },
                "swap-on",
                Severity::Warning,
                "turns it off for good",
                "/var/swap, dphys-swapfile",
            ),
            (
                |f| f.memory_cgroup = false,
                "memory-cgroup-off",
                Severity::Warning,
                "adds cgroup_enable=memory cgroup_memory=1 to cmdline.txt",
                "memory cgroup is disabled",
            ),
            (
                |f| (f.memory_cgroup, f.pi_model, f.boot_dir) = (false, None, None),
                "memory-cgroup-off",
                Severity::Warning,
                "(GRUB_CMDLINE_LINUX)",
                "memory cgroup is disabled",
            ),
            (
                |f| f.default_password_users = vec!["pi".into()],
                "default-password",
                Severity::Warning,
                "`sudo passwd pi`",
                "user pi still has",
            ),
            (
                |f| f.clock_offset_secs = -2.5,
                "clock-skew",
                Severity::Warning,
                "timedatectl set-ntp true",
                "clock is -2.5 s off",
            ),
            (
                |f| _ = f.runtimes.insert("docker".into(), "Docker version 20.10.24".into()),
                "runtime-present",
                Severity::Info,
                "",
                "docker already installed: Docker version 20.10.24",
            ),
        ];
        for (spoil, code, severity, fix, message) in cases {
            let f = single(&assess(&cluster(""), &fleet_with(spoil)), "a", code, severity, fix);
            assert!(f.message.contains(message), "message of {code} should say {message:?}: {f:#?}");
        }
    }

    #[test]
    fn kubernetes_already_present() {
        let pinned = cluster(&format!("kubernetes:\n  version: {PINNED}\n"));
        let other_k3s =
            fleet_with(|f| _ = f.kubernetes.insert("k3s".into(), "k3s version v1.29.1+k3s2 (57482a1c)".into()));
        let f = single(
            &assess(&pinned, &other_k3s),
            "a",
            "kubernetes-present",
            Severity::Info,
            &format!("replaces it with the pinned {PINNED}"),
        );
        assert_eq!(f.message, "k3s already installed: k3s version v1.29.1+k3s2 (57482a1c)");
        // Without a pinned version pikube leaves it alone, and says nothing to do.
        let f = single(&assess(&cluster(""), &other_k3s), "a", "kubernetes-present", Severity::Info, "");
        assert_eq!(f.fix, "");
        let kubeadm = fleet_with(|f| _ = f.kubernetes.insert("kubeadm".into(), "kubeadm version: v1.30.0".into()));
        let f = single(&assess(&pinned, &kubeadm), "a", "kubernetes-present", Severity::Info, "");
        assert_eq!((f.message.as_str(), f.fix.as_str()), ("kubeadm already installed: kubeadm version: v1.30.0", ""));
    }

    #[test]
    fn kubeadm_refuses_a_skipped_minor_release_or_a_downgrade_on_every_host() {
        let kubeadm = |v: &str| cluster(&format!("kubernetes:\n  distribution: kubeadm\n  version: {v}\n"));
        let on = |v: &str| {
            let mut all = fleet_with(|_| {});
            for p in &mut all {
                p.facts.as_mut().unwrap().kubernetes.insert("kubelet".into(), format!("Kubernetes {v}"));
            }
            all
        };
        let refused = |found: Vec<Finding>| -> Vec<(String, String)> {
            found.into_iter().filter(|f| f.code == "version-skew").map(|f| (f.host, f.message)).collect()
        };
        let skip = refused(assess(&kubeadm("v1.36.0"), &on("v1.34.4")));
        assert_eq!(skip.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(skip[0].1.contains("v1.36.0 skips a minor release: a, b, c run(s) v1.34.4"), "{skip:?}");
        let back = refused(assess(&kubeadm("v1.34.3"), &on("v1.34.4")));
        assert!(back.len() == 3 && back[0].1.contains("cannot downgrade"), "{back:?}");
        assert!(refused(assess(&kubeadm("v1.35.2"), &on("v1.34.4"))).is_empty());
        // k3s's releases are not judged by kubeadm's rule.
        assert!(refused(assess(&cluster("kubernetes:\n  version: v1.36.0+k3s1\n"), &on("v1.34.4"))).is_empty());
    }

    /// A kubeadm cluster pinned to `version`, with `more` under `kubernetes:`.
    fn kubeadm(version: &str, more: &str) -> Cluster {
        cluster(&format!("kubernetes:\n  distribution: kubeadm\n  version: {version}\n{more}"))
    }

    /// (host, code, severity) of each finding.
    fn codes(found: &[Finding]) -> Vec<(&str, &str, Severity)> {
        found.iter().map(|f| (f.host.as_str(), f.code, f.severity)).collect()
    }

    #[test]
    fn kubeadm_refuses_etcd_3_6_over_an_etcd_older_than_3_5_26_on_every_host() {
        let on = |tag: &str| fleet_with(|f| f.etcd_image = Some(format!("registry.k8s.io/etcd:{tag}")));
        let found = assess(&kubeadm("v1.34.4", ""), &on("3.5.21-0"));
        let every = [
            ("a", "etcd-upgrade-path", Severity::Error),
            ("b", "etcd-upgrade-path", Severity::Error),
            ("c", "etcd-upgrade-path", Severity::Error),
        ];
        assert_eq!(codes(&found), every, "{found:#?}");
        assert!(
            found[0].message.contains("kubeadm v1.34 moves etcd to 3.6.5-0, but a run(s) etcd 3.5.21"),
            "{found:#?}"
        );
        assert!(found[0].fix.contains("`etcd.local.imageTag: 3.5.26-0`") && found[0].fix.contains("pin v1.34.4"));
        // 3.5.26 and later may move on; so may a cluster already moving (a server on 3.6), a
        // release that stays on 3.5, and k3s (its etcd is its own).
        assert!(assess(&kubeadm("v1.34.4", ""), &on("3.5.26-0")).is_empty());
        let mut half = on("3.5.21-0");
        half.push(reached("d", Role::Server, {
            let mut d = healthy("d");
            d.etcd_image = Some("registry.k8s.io/etcd:3.6.5-0".into());
            d
        }));
        assert!(assess(&kubeadm("v1.34.4", ""), &half).is_empty(), "a server already runs 3.6");
        assert!(assess(&kubeadm("v1.33.7", ""), &on("3.5.21-0")).is_empty());
        assert!(assess(&cluster("kubernetes:\n  version: v1.34.4+k3s1\n"), &on("3.5.21-0")).is_empty());
    }

    #[test]
    fn containerd_is_judged_by_containerds_matrix_for_the_pinned_release() {
        let debian = "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1";
        let with = |v: &str| {
            let v = v.to_string();
            fleet_with(move |f| _ = f.runtimes.insert("containerd".into(), v))
        };
        // Without the `runtime-present` line an installed containerd always gets.
        let assess = |c: &Cluster, hosts: &[Probe]| -> Vec<Finding> {
            assess(c, hosts).into_iter().filter(|f| f.code != "runtime-present").collect()
        };
        let found = assess(&kubeadm("v1.34.4", ""), &with(debian));
        let f = single(&found, "a", "containerd-version", Severity::Warning, "containerd's RELEASES.md");
        assert!(
            f.message.contains("containerd 1.6.20 (installed) is not what containerd recommends for Kubernetes v1.34: 2.1.3+, 2.0.6+, 1.7.28+, 1.6.39+"),
            "{f:#?}"
        );
        // Not installed yet: the version apt would install is judged.
        let fresh = fleet_with(|f| f.containerd_candidate = Some("1.6.20~ds1-1+deb12u1".into()));
        let f = single(&assess(&kubeadm("v1.33.7", ""), &fresh), "a", "containerd-version", Severity::Warning, "");
        assert!(f.message.contains("(what apt would install)") && f.message.contains("v1.33: "), "{f:#?}");
        for fine in
            ["containerd containerd.io v1.7.28 0", "containerd x 2.0.6", "containerd x 2.2.0", "containerd x 2.4.1"]
        {
            assert!(assess(&kubeadm("v1.34.4", ""), &with(fine)).is_empty(), "{fine}");
        }
        // From v1.36 containerd 1.x is an error; 2.x newer than the matrix lists is fine.
        let f = single(
            &assess(&kubeadm("v1.36.1", ""), &with("containerd x 1.7.28")),
            "a",
            "containerd-version",
            Severity::Error,
            "containerd 2.2 or later",
        );
        assert!(f.message.contains("Kubernetes v1.36 supports containerd 2.x only"), "{f:#?}");
        assert!(assess(&kubeadm("v1.37.0", ""), &with("containerd x 2.3.0")).is_empty());
        // k3s brings its own containerd.
        assert!(assess(&cluster("kubernetes:\n  version: v1.34.4+k3s1\n"), &with(debian)).is_empty());
    }

    #[test]
    fn a_kubelet_that_refuses_cgroup_v1_is_refused_on_hosts_without_cgroup_v2() {
        let v1 = || fleet_with(|f| f.cgroup_v2 = false);
        let f = single(&assess(&kubeadm("v1.35.0", ""), &v1()), "a", "cgroup-v1", Severity::Error, "cgroup v2");
        assert!(f.message.contains("kubelet v1.35 does not start there (failCgroupV1"), "{f:#?}");
        let legacy = fleet_with(|f| {
            f.cgroup_v2 = false;
            f.kernel_cmdline.push_str(" systemd.unified_cgroup_hierarchy=0");
        });
        single(
            &assess(&kubeadm("v1.36.0", ""), &legacy),
            "a",
            "cgroup-v1",
            Severity::Error,
            "remove systemd.unified_cgroup_hierarchy=0",
        );
        assert!(assess(&kubeadm("v1.34.4", ""), &v1()).is_empty());
        assert!(assess(&cluster("kubernetes:\n  version: v1.35.0+k3s1\n"), &v1()).is_empty());
    }

    #[test]
    fn kubeadm_has_no_32_bit_arm_release() {
        let armv7 =
            || fleet_with(|f| (f.arch, f.pi_model) = (Arch::Armv7, Some("Raspberry Pi 3 Model B Rev 1.2".into())));
        let f = single(&assess(&kubeadm("v1.34.4", ""), &armv7()), "a", "arm32", Severity::Error, "64-bit (arm64) OS");
        assert!(f.message.contains("a runs 32-bit arm (Raspberry Pi 3 Model B Rev 1.2): Kubernetes publishes no kubeadm or kubelet for 32-bit arm since v1.27"), "{f:#?}");
        // Before a version is pinned too; never on a load balancer; k3s ships armhf.
        single(
            &assess(&cluster("kubernetes:\n  distribution: kubeadm\n"), &armv7()),
            "a",
            "arm32",
            Severity::Error,
            "",
        );
        let mut lb = armv7();
        lb[0].role = Role::Loadbalancer;
        assert!(assess(&kubeadm("v1.34.4", ""), &lb).is_empty());
        assert!(assess(&cluster("kubernetes:\n  version: v1.34.4+k3s1\n"), &armv7()).is_empty());
    }

    #[test]
    fn flannel_needs_the_vxlan_module() {
        let ubuntu = || {
            fleet_with(|f| {
                (f.os_id, f.kernel, f.vxlan) = ("ubuntu".into(), "6.8.0-1017-raspi".into(), false);
            })
        };
        let f = single(
            &assess(&kubeadm("v1.34.4", ""), &ubuntu()),
            "a",
            "vxlan-missing",
            Severity::Error,
            "`sudo apt install linux-modules-extra-raspi` and reboot",
        );
        assert!(f.message.contains("the kernel 6.8.0-1017-raspi has no vxlan module"), "{f:#?}");
        // k3s runs flannel too; another kernel gets the general fix; no flannel, no finding.
        single(&assess(&cluster(""), &ubuntu()), "a", "vxlan-missing", Severity::Error, "linux-modules-extra-raspi");
        let debian = fleet_with(|f| f.vxlan = false);
        single(&assess(&kubeadm("v1.34.4", ""), &debian), "a", "vxlan-missing", Severity::Error, "`cni: none`");
        assert!(assess(&kubeadm("v1.34.4", "  cni: none\n"), &ubuntu()).is_empty());
    }

    /// An airgap directory, removed on drop.
    struct Airgap(PathBuf);

    impl Airgap {
        fn new(name: &str) -> Airgap {
            let dir = std::env::temp_dir().join(format!("pikube-check-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create airgap dir");
            Airgap(dir)
        }
        fn cluster(&self) -> Cluster {
            cluster(&format!("kubernetes:\n  version: {PINNED}\n  artifacts: {}\n", self.0.display()))
        }
    }

    impl Drop for Airgap {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn airgap_files_are_checked_before_up() {
        let dir = Airgap::new("artifacts");
        // Missing: reported once per host that would run k3s, never for a load balancer (the
        // checks take each host's role as given, so the cluster file need not list it).
        let mut hosts = fleet_with(|_| {});
        hosts.push(reached("lb", Role::Loadbalancer, healthy("lb")));
        let found = assess(&dir.cluster(), &hosts);
        let hit: Vec<_> = found.iter().map(|f| (f.host.as_str(), f.code, f.severity)).collect();
        assert_eq!(
            hit,
            [
                ("a", "k3s-artifact", Severity::Error),
                ("b", "k3s-artifact", Severity::Error),
                ("c", "k3s-artifact", Severity::Error)
            ]
        );
        assert!(
            found[0].fix.contains("put the k3s v1.31.4+k3s1 release files `k3s-arm64` and `sha256sum-arm64.txt`"),
            "{found:#?}"
        );

        // A checksum that does not match the binary.
        std::fs::write(dir.0.join("k3s-arm64"), b"not k3s").unwrap();
        std::fs::write(dir.0.join("sha256sum-arm64.txt"), format!("{}  k3s-arm64\n", "0".repeat(64))).unwrap();
        let found = assess(&dir.cluster(), &fleet_with(|_| {}));
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(
            found.iter().all(|f| f.code == "k3s-artifact" && f.message.contains("checksum mismatch")),
            "{found:#?}"
        );
        assert!(found[0].fix.contains("fetch both files of the pinned version again"), "{found:#?}");

        // The right checksum: nothing to report.
        let sum = hex::encode(Sha256::digest(b"not k3s"));
        std::fs::write(dir.0.join("sha256sum-arm64.txt"), format!("{sum}  k3s-arm64\n")).unwrap();
        let found = assess(&dir.cluster(), &fleet_with(|_| {}));
        assert!(found.is_empty(), "{found:#?}");
    }

    #[test]
    fn cloned_cards_are_found_across_hosts() {
        let mut hosts = fleet_with(|f| (f.machine_id, f.hostname) = ("c".repeat(32), "raspberrypi".into()));
        hosts[2].facts.as_mut().unwrap().machine_id = "c".repeat(32);
        hosts[2].facts.as_mut().unwrap().hostname = "raspberrypi".into();
        let found = assess(&cluster(""), &hosts);
        let hit: Vec<_> = found.iter().map(|f| (f.host.as_str(), f.code, f.severity)).collect();
        assert_eq!(
            hit,
            [
                ("a", "duplicate-machine-id", Severity::Error),
                ("a", "duplicate-hostname", Severity::Warning),
                ("c", "duplicate-machine-id", Severity::Error),
                ("c", "duplicate-hostname", Severity::Warning),
            ]
        );
        assert_eq!(found[0].message, "machine-id cccccccccccc is also on c (cloned SD card)");
        assert!(found[0].fix.contains("systemd-machine-id-setup"), "{found:#?}");
        assert_eq!(found[1].message, "hostname \"raspberrypi\" is shared by a, c");
        assert!(found[1].fix.contains("sets each host's name from the cluster file"), "{found:#?}");
    }
}

#[cfg(test)]
mod terminal_tests {
    use super::*;

    #[test]
    fn machine_ids_are_shortened_on_character_boundaries() {
        // A multi-byte character across byte 12 used to panic `check` and `up`.
        assert_eq!(short("abcdefghijkéxyz"), "abcdefghijké");
        assert_eq!(short("abcdefghijkléxyz"), "abcdefghijkl");
        assert_eq!(short("0123"), "0123");
    }

    #[test]
    fn host_text_in_tables_is_printed_escaped() {
        let f = Finding {
            host: "rasp01".into(),
            severity: Severity::Warning,
            code: "duplicate-hostname",
            message: "hostname \"evil\x1b[2J\rx\" is shared".into(),
            fix: "fix\nit".into(),
        };
        let shown = table(&[f]);
        assert!(!shown.contains('\x1b') && !shown.contains('\r'), "{shown:?}");
        assert!(shown.contains("evil\\u{1b}[2J\\rx"), "{shown}");
        assert_eq!(shown.lines().count(), 2, "a cell must not start a new line: {shown}");
    }
}
