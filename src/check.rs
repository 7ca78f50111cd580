//! Preflight findings: what would stop or weaken a cluster, each with a fix hint.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::artifacts::{self, ArtifactError};
use crate::config::Role;
use crate::facts::Arch;
use crate::fleet::Fleet;

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

pub fn findings(fleet: &Fleet) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |host: &str, severity, code, message: String, fix: &str| {
        out.push(Finding { host: host.to_string(), severity, code, message, fix: fix.to_string() });
    };

    let version = fleet.cluster.version();
    let airgap = fleet.cluster.spec.kubernetes.artifacts.is_some();
    let mut artifacts_checked: BTreeMap<String, Option<(String, String)>> = BTreeMap::new();
    for node in &fleet.nodes {
        let name = node.name();
        if node.host.is_none() {
            let why = node.failure().unwrap_or_default();
            let (code, fix) = connect_fix(&why);
            add(name, Severity::Error, code, why, fix);
            continue;
        }
        let Some(f) = node.facts() else {
            add(name, Severity::Error, "facts-failed", node.failure().unwrap_or_default(), "check the login user can run sh and sudo");
            continue;
        };
        if !matches!(f.os_id.as_str(), "debian" | "ubuntu" | "raspbian") {
            add(name, Severity::Error, "unsupported-os", format!("{} is not Debian, Raspberry Pi OS or Ubuntu", f.os_pretty), "install Raspberry Pi OS Lite, Debian or Ubuntu Server");
        }
        if f.arch == Arch::Armv6 {
            add(name, Severity::Error, "armv6", format!("{} is armv6 ({}): Kubernetes ships no armv6 builds", name, f.pi_model.as_deref().unwrap_or("ARM11")), "use a Pi 2 v1.2, 3, 4, 5 or Zero 2 W; retire Pi 1 / Zero / Zero W from the cluster");
        }
        if let Arch::Other(a) = &f.arch {
            add(name, Severity::Error, "unsupported-arch", format!("architecture {a} is not supported"), "use arm64, armv7 or x86_64 hosts");
        }
        if f.mem_total_kib < MIN_RAM_KIB {
            add(name, Severity::Warning, "low-memory", format!("only {} MiB RAM (< 1 GiB)", f.mem_total_kib / 1024), "use it as an agent at most, or use a board with ≥ 1 GiB");
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
            add(name, Severity::Warning, "swap-on", format!("swap is on or comes back at boot: {}", what.join(", ")), "`pikube up` turns it off for good (swapoff, fstab, dphys-swapfile, zram)");
        }
        if !f.memory_cgroup {
            let fix = if f.is_pi() && f.boot_dir.is_some() {
                "`pikube up` adds cgroup_enable=memory cgroup_memory=1 to cmdline.txt and reboots"
            } else {
                "add cgroup_enable=memory cgroup_memory=1 to the kernel command line (GRUB_CMDLINE_LINUX) and reboot"
            };
            add(name, Severity::Warning, "memory-cgroup-off", "the memory cgroup is disabled in the running kernel".into(), fix);
        }
        for user in &f.default_password_users {
            let fix = format!("run `sudo passwd {user}` (or `sudo passwd -l {user}` to lock it): anyone on the network can log in");
            add(name, Severity::Warning, "default-password", format!("user {user} still has the image's default password"), &fix);
        }
        if f.clock_offset_secs.abs() > MAX_CLOCK_SKEW_SECS {
            add(name, Severity::Warning, "clock-skew", format!("clock is {:+.1} s off this machine", f.clock_offset_secs), "Pis have no RTC: enable time sync (`timedatectl set-ntp true`, systemd-timesyncd or chrony)");
        }
        for (rt, v) in &f.runtimes {
            add(name, Severity::Info, "runtime-present", format!("{rt} already installed: {v}"), "");
        }
        for (k, v) in &f.kubernetes {
            match version {
                // pikube's own install of the pinned release is not news.
                Some(want) if k == "k3s" && v.contains(want) => {}
                Some(want) if k == "k3s" => add(name, Severity::Info, "kubernetes-present", format!("k3s already installed: {v}"), &format!("`pikube up` replaces it with the pinned {want}")),
                _ => add(name, Severity::Info, "kubernetes-present", format!("{k} already installed: {v}"), ""),
            }
        }
        // Airgap files are checked before anything changes, so a bad file stops `up` early.
        if let (Some(want), true, true) = (version, airgap, node.role() != Role::Loadbalancer) {
            let verdict = artifacts_checked.entry(f.arch.as_str().to_string()).or_insert_with(|| {
                match artifacts::binary_for(&fleet.cluster, want, &f.arch, true) {
                    Ok(_) | Err(ArtifactError::Unsupported(_)) => None,
                    Err(e) => Some((e.to_string(), e.hint())),
                }
            });
            if let Some((message, fix)) = verdict.clone() {
                add(name, Severity::Error, "k3s-artifact", message, &fix);
            }
        }
    }

    // Cross-host checks.
    let mut by_machine_id: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut by_hostname: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for node in &fleet.nodes {
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
            add(h, Severity::Warning, "duplicate-hostname", format!("hostname {hn:?} is shared by {}", hosts.join(", ")), "`pikube up` sets each host's name from the cluster file");
        }
    }
    out.sort_by_key(|f| (host_order(fleet, &f.host), f.severity));
    out
}

/// Findings that stop `up` on a host.
pub fn blocking(findings: &[Finding]) -> impl Iterator<Item = &Finding> {
    findings.iter().filter(|f| f.severity == Severity::Error)
}

fn host_order(fleet: &Fleet, host: &str) -> usize {
    fleet.nodes.iter().position(|n| n.name() == host).unwrap_or(usize::MAX)
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
        ("unreachable", "check the host is powered, on the network and the address is right (`pikube discover` finds Pis)")
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
