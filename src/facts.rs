//! Host facts, gathered in one round trip per host: one script, one channel, typed result.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::remote::{Cmd, FileState, Host, RemoteError};

/// CPU architecture as Kubernetes distributions care about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Armv6,
    Armv7,
    Aarch64,
    X86_64,
    Other(String),
}

impl Arch {
    fn parse(uname_m: &str) -> Arch {
        match uname_m {
            "armv6l" => Arch::Armv6,
            "armv7l" | "armv8l" => Arch::Armv7,
            "aarch64" | "arm64" => Arch::Aarch64,
            "x86_64" | "amd64" => Arch::X86_64,
            other => Arch::Other(other.to_string()),
        }
    }
    pub fn as_str(&self) -> &str {
        match self {
            Arch::Armv6 => "armv6",
            Arch::Armv7 => "armv7",
            Arch::Aarch64 => "aarch64",
            Arch::X86_64 => "x86_64",
            Arch::Other(s) => s,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SwapFacts {
    /// Active swap devices/files (`/proc/swaps`).
    pub active: Vec<String>,
    /// Uncommented swap lines in /etc/fstab.
    pub fstab: Vec<String>,
    /// dphys-swapfile (Raspberry Pi OS) is enabled or active.
    pub dphys_swapfile: bool,
    /// A zram swap service or generator config is enabled.
    pub zram: bool,
}

impl SwapFacts {
    /// Swap is on now or will come back at boot.
    pub fn any(&self) -> bool {
        !self.active.is_empty() || !self.fstab.is_empty() || self.dphys_swapfile || self.zram
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HostFacts {
    pub hostname: String,
    pub os_id: String,
    pub os_version_id: String,
    pub os_codename: String,
    pub os_pretty: String,
    pub arch: Arch,
    pub kernel: String,
    /// Device-tree model string, e.g. "Raspberry Pi 4 Model B Rev 1.4".
    pub pi_model: Option<String>,
    /// Where cmdline.txt lives: `/boot/firmware` (Bookworm and later) or `/boot` (older).
    pub boot_dir: Option<String>,
    /// Contents of `<boot_dir>/cmdline.txt`.
    pub cmdline_txt: Option<String>,
    /// The running kernel's command line.
    pub kernel_cmdline: String,
    /// The memory cgroup controller is enabled in the running kernel.
    pub memory_cgroup: bool,
    /// /sys/fs/cgroup is the unified (cgroup v2) hierarchy, as kubelet itself tests it.
    pub cgroup_v2: bool,
    /// The kernel has VXLAN, which flannel needs: loaded, a module modprobe finds, or built in
    /// (the kernel's config says so; a container sees neither /sys/module nor the modules).
    pub vxlan: bool,
    pub swap: SwapFacts,
    pub machine_id: String,
    pub boot_id: String,
    pub mem_total_kib: u64,
    /// Seconds the host's clock is ahead (+) or behind (−) this machine.
    pub clock_offset_secs: f64,
    /// `nf_tables`, `legacy`, or None when iptables is not installed.
    pub iptables_mode: Option<String>,
    /// Container runtimes found, with versions.
    pub runtimes: BTreeMap<String, String>,
    /// Kubernetes binaries found (k3s, kubeadm, kubelet), with versions.
    pub kubernetes: BTreeMap<String, String>,
    /// The etcd image of kubeadm's static pod on a server, e.g. `registry.k8s.io/etcd:3.6.5-0`.
    pub etcd_image: Option<String>,
    /// The containerd version apt would install (`apt-cache policy`), read only while none is.
    pub containerd_candidate: Option<String>,
    /// Accounts that still have their image's default password (e.g. "pi").
    pub default_password_users: Vec<String>,
    /// Kernel features Kubernetes needs that are live (loaded as modules or built in).
    pub modules_loaded: Vec<String>,
    /// Current values of the Kubernetes sysctls (missing keys are absent).
    pub sysctl: BTreeMap<String, String>,
    /// Contents of /etc/hosts.
    pub etc_hosts: String,
    /// apt source files (path → contents) for the mirror phase; shown without URL credentials.
    #[serde(serialize_with = "without_credentials")]
    pub apt_sources: BTreeMap<String, String>,
    /// IPv4 addresses with their interface and prefix length.
    pub ipv4: Vec<Ipv4Addr>,
    /// Which of the packages pikube installs ([`PACKAGES`]) are installed.
    pub packages: Vec<String>,
    /// Root may lower OOM scores (CAP_SYS_RESOURCE). Some containers (a nested or restricted
    /// host) cannot, and runc then fails every pod whose oom_score_adj is negative.
    pub can_lower_oom_score: bool,
    /// Root may set the global `nf_conntrack_max` (kube-proxy does, unless told not to).
    pub can_set_conntrack_max: bool,
    /// State of the services pikube manages, by unit name.
    pub services: BTreeMap<String, ServiceState>,
    /// Checksum and mode of each of [`PREPARED_FILES`] (empty state: no such file).
    #[serde(skip)]
    pub files: BTreeMap<String, FileState>,
}

/// `check --json` prints the facts: a source line like `deb http://user:password@mirror/…`
/// shows as `deb http://***@mirror/…`.
fn without_credentials<S: serde::Serializer>(sources: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(sources.iter().map(|(path, text)| (path, crate::config::url::redact_userinfo(text))))
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ipv4Addr {
    pub iface: String,
    pub address: String,
    pub prefix: u8,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServiceState {
    pub enabled: bool,
    pub active: bool,
}

/// Units whose state the facts report.
pub const SERVICES: [&str; 6] = ["k3s", "k3s-agent", "haproxy", "keepalived", "kubelet", "containerd"];
/// Swap units that keep swap coming back (zram on Ubuntu, Jetson and Pi images; dphys on Raspberry Pi OS).
const ZRAM_UNITS: [&str; 3] = ["zramswap", "zram-config", "nvzramconfig"];
const DPHYS_UNIT: &str = "dphys-swapfile";
/// Every unit asked about, in the order of `systemctl show`'s blocks: one call for all of them,
/// as a call per unit costs a systemctl start each (most of the facts script's time).
const UNITS: [&str; 10] = [
    "k3s",
    "k3s-agent",
    "haproxy",
    "keepalived",
    "kubelet",
    "containerd",
    "zramswap",
    "zram-config",
    "nvzramconfig",
    DPHYS_UNIT,
];

impl HostFacts {
    pub fn is_pi(&self) -> bool {
        self.pi_model.as_deref().is_some_and(|m| m.starts_with("Raspberry Pi"))
    }
}

/// Packages pikube installs from the hosts' own repositories.
pub const PACKAGES: [&str; 5] = ["haproxy", "keepalived", "containerd", "containernetworking-plugins", "iptables"];

/// Modules Kubernetes networking needs.
pub const MODULES: [&str; 2] = ["overlay", "br_netfilter"];
/// Sysctls Kubernetes networking needs, with their wanted values.
pub const SYSCTLS: [(&str, &str); 3] = [
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
    ("net.ipv4.ip_forward", "1"),
];

/// Files host preparation writes. Their checksums and modes come with the facts, so a run that
/// finds them as wanted needs no further round trip to compare them.
pub const PREPARED_FILES: [&str; 7] = [
    "/etc/hosts",
    "/etc/modules-load.d/pikube-k8s.conf",
    "/etc/sysctl.d/99-pikube-k8s.conf",
    "/etc/apt/sources.list.d/pikube-mirror.list",
    "/etc/apt/apt.conf.d/80pikube-proxy",
    "/boot/firmware/cmdline.txt",
    "/boot/cmdline.txt",
];

/// Default passwords of common Pi images: (user, password).
const DEFAULT_PASSWORDS: [(&str, &str); 3] = [("pi", "raspberry"), ("pirate", "hypriot"), ("ubuntu", "ubuntu")];

/// Gathers all facts with one remote command (run as root: reading /etc/shadow needs it).
pub async fn gather(host: &Host) -> Result<HostFacts, FactsError> {
    let before = now();
    let out = host.run_ok(&Cmd::read_script(script()).timeout(Duration::from_secs(60))).await?;
    let after = now();
    parse(&out, (before + after) / 2.0).map_err(|reason| FactsError::Parse { host: host.name.clone(), reason })
}

#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("{host}: unexpected facts output: {reason}")]
    Parse { host: String, reason: String },
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The facts script. Sections are `@@name` lines followed by their raw value lines.
fn script() -> String {
    let s = String::from(
        r#"LC_ALL=C; export LC_ALL
sec() { echo "@@$1"; }
sec now; date +%s.%N
sec hostname; hostname 2>/dev/null || cat /etc/hostname
sec os_release; cat /etc/os-release 2>/dev/null
sec arch; uname -m
sec kernel; uname -r
sec model; for f in /sys/firmware/devicetree/base/model /proc/device-tree/model; do
  if [ -r "$f" ]; then tr -d '\000' < "$f"; echo; break; fi; done
sec boot_dir; for d in /boot/firmware /boot; do
  if [ -f "$d/cmdline.txt" ]; then echo "$d"; break; fi; done
sec cmdline_txt; for d in /boot/firmware /boot; do
  if [ -f "$d/cmdline.txt" ]; then cat "$d/cmdline.txt"; break; fi; done
sec kernel_cmdline; cat /proc/cmdline
sec cgroups; cat /proc/cgroups 2>/dev/null
sec cgroup2_controllers; cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null
sec cgroupfs; stat -fc %T /sys/fs/cgroup/ 2>/dev/null
sec vxlan; { [ -d /sys/module/vxlan ] || modprobe -n -q vxlan 2>/dev/null ||
  { zcat /proc/config.gz 2>/dev/null || cat "/boot/config-$(uname -r)" 2>/dev/null; } | grep -qx CONFIG_VXLAN=y; } && echo available
sec swaps; tail -n +2 /proc/swaps 2>/dev/null
sec fstab_swap; grep -Ev '^[[:space:]]*#' /etc/fstab 2>/dev/null | awk '$3 == "swap"'
sec dphys; if [ -x /sbin/dphys-swapfile ] || [ -x /usr/sbin/dphys-swapfile ]; then echo installed; fi
sec zram; if [ -f /etc/systemd/zram-generator.conf ] || [ -f /usr/lib/systemd/zram-generator.conf ]; then echo zram-generator; fi
sec units; systemctl show -p UnitFileState,ActiveState @UNITS@ 2>/dev/null
sec machine_id; cat /etc/machine-id 2>/dev/null
sec boot_id; cat /proc/sys/kernel/random/boot_id
sec meminfo; grep '^MemTotal:' /proc/meminfo
sec iptables; iptables --version 2>/dev/null
sec runtimes
for b in containerd docker crio; do
  if command -v "$b" >/dev/null 2>&1; then echo "$b $("$b" --version 2>/dev/null | head -n1)"; fi; done
sec kubernetes
for b in k3s kubeadm kubelet; do
  if command -v "$b" >/dev/null 2>&1; then echo "$b $("$b" --version 2>/dev/null | head -n1)"; fi; done
sec etcd_image; sed -n 's/^ *image: *//p' /etc/kubernetes/manifests/etcd.yaml 2>/dev/null | head -n 1
sec containerd_candidate; command -v containerd >/dev/null 2>&1 ||
  apt-cache policy containerd 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" {print $2}'
sec modules; grep -qw overlay /proc/filesystems && echo overlay
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] && echo br_netfilter
sec sysctl
for k in net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables net.ipv4.ip_forward; do
  f=/proc/sys/$(echo "$k" | tr . /); [ -r "$f" ] && echo "$k=$(cat "$f")"; done
sec etc_hosts; cat /etc/hosts 2>/dev/null
sec apt_sources; for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] && { echo "@@@file $f"; cat "$f"; }; done
sec ipv4; ip -o -4 addr show 2>/dev/null | awk '{print $2, $4}'
sec packages; dpkg-query -W -f='${Package} ${db:Status-Status}\n' @PACKAGES@ 2>/dev/null | awk '$2 == "installed" {print $1}'
sec files; set --; for f in @FILES@; do [ -f "$f" ] && set -- "$@" "$f"; done
  if [ $# -gt 0 ]; then sha256sum "$@"; echo "@@file_modes"; stat -c '%a %n' "$@"; fi
sec limits; (echo -1 > /proc/self/oom_score_adj) 2>/dev/null && echo lower_oom
  f=/proc/sys/net/netfilter/nf_conntrack_max; { [ ! -e $f ] || [ -w $f ]; } && echo conntrack_max
sec default_password
"#,
    );
    let mut s = s
        .replace("@UNITS@", &UNITS.join(" "))
        .replace("@FILES@", &PREPARED_FILES.join(" "))
        .replace("@PACKAGES@", &PACKAGES.join(" "));
    // The shadow hash is compared on the host (perl's crypt() uses libc, which knows yescrypt
    // and sha512-crypt) and passed through the environment, so it never leaves the host.
    for (user, pw) in DEFAULT_PASSWORDS {
        s.push_str(&format!(
            "h=$(getent shadow {user} 2>/dev/null | cut -d: -f2); \
             if [ -n \"$h\" ] && H=\"$h\" perl -e 'exit(crypt(\"{pw}\", $ENV{{H}}) eq $ENV{{H}} ? 0 : 1)' 2>/dev/null; \
             then echo {user}; fi\n"
        ));
    }
    s.push_str("sec end\n");
    s
}

/// A probe script's output split into its `@@name` sections (lines before the first are dropped;
/// `@@@…` lines belong to the section they are in).
pub(crate) fn sections(out: &str) -> BTreeMap<&str, Vec<&str>> {
    let mut sections: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut current: Option<&str> = None;
    for line in out.lines() {
        if let Some(name) = line.strip_prefix("@@").filter(|n| !n.starts_with('@')) {
            current = Some(name.trim());
            sections.entry(name.trim()).or_default();
        } else if let Some(c) = current {
            sections.entry(c).or_default().push(line);
        }
    }
    sections
}

fn parse(out: &str, local_mid: f64) -> Result<HostFacts, String> {
    let sections = sections(out);
    if !sections.contains_key("end") {
        return Err("the facts script did not finish (missing end marker)".into());
    }
    let text = |k: &str| sections.get(k).map(|v| v.join("\n")).unwrap_or_default();
    let first = |k: &str| sections.get(k).and_then(|v| v.first()).map(|s| s.trim().to_string()).unwrap_or_default();
    let opt = |k: &str| Some(first(k)).filter(|s| !s.is_empty());

    let os: BTreeMap<String, String> = sections
        .get("os_release")
        .into_iter()
        .flatten()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect();
    let os_field = |k: &str| os.get(k).cloned().unwrap_or_default();

    let remote_now: f64 = first("now").parse().map_err(|_| "no clock reading".to_string())?;
    let mem_total_kib = first("meminfo").split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    let units = unit_states(sections.get("units"));
    let unit = |u: &str| units.get(u).cloned().unwrap_or_default();
    let dphys = sections.get("dphys").is_some_and(|v| v.iter().any(|l| l.trim() == "installed"))
        && (unit(DPHYS_UNIT).0 == "enabled" || unit(DPHYS_UNIT).1 == "active");
    let versioned = |k: &str| -> BTreeMap<String, String> {
        sections
            .get(k)
            .into_iter()
            .flatten()
            .filter_map(|l| l.split_once(' '))
            .map(|(b, v)| (b.to_string(), v.trim().to_string()))
            .collect()
    };
    let mut modules: Vec<String> = sections
        .get("modules")
        .into_iter()
        .flatten()
        .map(|m| m.trim().to_string())
        .filter(|m| MODULES.contains(&m.as_str()))
        .collect();
    modules.sort();
    modules.dedup();

    let mut apt_sources = BTreeMap::new();
    let mut cur_file: Option<String> = None;
    for l in sections.get("apt_sources").into_iter().flatten() {
        if let Some(f) = l.strip_prefix("@@@file ") {
            cur_file = Some(f.to_string());
            apt_sources.insert(f.to_string(), String::new());
        } else if let Some(f) = &cur_file {
            let body = apt_sources.entry(f.clone()).or_default();
            body.push_str(l);
            body.push('\n');
        }
    }

    let files = prepared_files(sections.get("files"), sections.get("file_modes"));
    Ok(HostFacts {
        hostname: first("hostname"),
        os_id: os_field("ID"),
        os_version_id: os_field("VERSION_ID"),
        os_codename: os_field("VERSION_CODENAME"),
        os_pretty: os_field("PRETTY_NAME"),
        arch: Arch::parse(&first("arch")),
        kernel: first("kernel"),
        pi_model: opt("model"),
        boot_dir: opt("boot_dir"),
        cmdline_txt: sections.get("cmdline_txt").filter(|v| !v.is_empty()).map(|v| v.join("\n")),
        kernel_cmdline: first("kernel_cmdline"),
        memory_cgroup: memory_cgroup_live(&text("cgroups"), &text("cgroup2_controllers")),
        cgroup_v2: first("cgroupfs") == "cgroup2fs",
        vxlan: first("vxlan") == "available",
        swap: SwapFacts {
            active: sections
                .get("swaps")
                .into_iter()
                .flatten()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
                .collect(),
            fstab: sections
                .get("fstab_swap")
                .into_iter()
                .flatten()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_string())
                .collect(),
            dphys_swapfile: dphys,
            zram: sections.get("zram").is_some_and(|v| v.iter().any(|l| !l.trim().is_empty()))
                || ZRAM_UNITS.iter().any(|u| is_enabled(&unit(u).0)),
        },
        machine_id: first("machine_id"),
        boot_id: first("boot_id"),
        mem_total_kib,
        clock_offset_secs: remote_now - local_mid,
        iptables_mode: {
            let v = first("iptables");
            if v.contains("nf_tables") {
                Some("nf_tables".into())
            } else if v.is_empty() {
                None
            } else {
                Some("legacy".into())
            }
        },
        runtimes: versioned("runtimes"),
        kubernetes: versioned("kubernetes"),
        etcd_image: opt("etcd_image").map(|i| i.trim_matches('"').to_string()),
        containerd_candidate: opt("containerd_candidate"),
        default_password_users: sections
            .get("default_password")
            .into_iter()
            .flatten()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
        modules_loaded: modules,
        sysctl: sections
            .get("sysctl")
            .into_iter()
            .flatten()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect(),
        etc_hosts: text("etc_hosts"),
        apt_sources,
        ipv4: sections
            .get("ipv4")
            .into_iter()
            .flatten()
            .filter_map(|l| {
                let (iface, cidr) = l.trim().split_once(' ')?;
                let (address, prefix) = cidr.split_once('/')?;
                Some(Ipv4Addr { iface: iface.to_string(), address: address.to_string(), prefix: prefix.parse().ok()? })
            })
            .collect(),
        packages: sections
            .get("packages")
            .into_iter()
            .flatten()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
        can_lower_oom_score: sections.get("limits").is_some_and(|v| v.iter().any(|l| l.trim() == "lower_oom")),
        can_set_conntrack_max: sections.get("limits").is_some_and(|v| v.iter().any(|l| l.trim() == "conntrack_max")),
        services: SERVICES
            .iter()
            .map(|u| {
                let (file_state, active_state) = unit(u);
                (u.to_string(), ServiceState { enabled: file_state == "enabled", active: active_state == "active" })
            })
            .collect(),
        files,
    })
}

/// (UnitFileState, ActiveState) of each of [`UNITS`], from `systemctl show`'s blocks, which
/// come in the order asked, one per unit, separated by blank lines.
fn unit_states(lines: Option<&Vec<&str>>) -> BTreeMap<&'static str, (String, String)> {
    let blocks = lines.map(|l| l.join("\n")).unwrap_or_default();
    let blocks = blocks.split("\n\n").filter(|b| !b.trim().is_empty());
    UNITS
        .iter()
        .zip(blocks)
        .map(|(u, block)| {
            let prop = |k: &str| {
                block.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix('=')).unwrap_or("").trim().to_string()
            };
            (*u, (prop("UnitFileState"), prop("ActiveState")))
        })
        .collect()
}

/// `systemctl is-enabled` succeeds for these unit file states: the unit starts at boot.
fn is_enabled(unit_file_state: &str) -> bool {
    matches!(
        unit_file_state,
        "enabled" | "enabled-runtime" | "static" | "alias" | "indirect" | "generated" | "transient"
    )
}

/// Every prepared file's state from `sha256sum` lines (`<sum>  <path>`) and `stat` lines
/// (`<mode> <path>`); files that were not listed do not exist.
fn prepared_files(sums: Option<&Vec<&str>>, modes: Option<&Vec<&str>>) -> BTreeMap<String, FileState> {
    let mut files: BTreeMap<String, FileState> =
        PREPARED_FILES.iter().map(|p| (p.to_string(), FileState::default())).collect();
    let split = |l: &&str| l.split_once(' ').map(|(a, p)| (a.to_string(), p.trim_start().to_string()));
    for (sum, path) in sums.into_iter().flatten().filter_map(split) {
        files.entry(path).or_default().sha256 = sum;
    }
    for (mode, path) in modes.into_iter().flatten().filter_map(split) {
        files.entry(path).or_default().mode = mode;
    }
    files
}

/// cgroup v1 (`/proc/cgroups` "enabled" column) or v2 (`cgroup.controllers`) says memory is on.
fn memory_cgroup_live(proc_cgroups: &str, v2_controllers: &str) -> bool {
    if v2_controllers.split_whitespace().any(|c| c == "memory") {
        return true;
    }
    proc_cgroups.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 4 && f[0] == "memory" && f[3] == "1"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_cgroup_reading() {
        let off = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t1\t1\t1\nmemory\t0\t1\t0\n";
        let on = "memory\t4\t12\t1\n";
        assert!(!memory_cgroup_live(off, ""));
        assert!(memory_cgroup_live(on, ""));
        assert!(memory_cgroup_live(off, "cpuset cpu io memory pids"));
    }

    #[test]
    fn every_unit_is_asked_once_in_order() {
        let want: Vec<&str> = SERVICES.iter().chain(&ZRAM_UNITS).chain([&DPHYS_UNIT]).copied().collect();
        assert_eq!(UNITS.to_vec(), want);
    }

    #[test]
    fn parse_minimal_output() {
        let unit = |file: &str, active: &str| format!("ActiveState={active}\nUnitFileState={file}\n");
        let mut units =
            [unit("enabled", "active"), unit("", "inactive"), unit("disabled", "inactive"), unit("", "inactive")]
                .join("\n");
        for _ in ["kubelet", "containerd"] {
            units.push_str(&format!("\n{}", unit("", "inactive")));
        }
        for _ in ZRAM_UNITS {
            units.push_str(&format!("\n{}", unit("", "inactive")));
        }
        units.push_str(&format!("\n{}", unit("enabled", "active")));
        let out = format!(
            "@@now\n100.5\n@@hostname\nrasp01\n@@arch\narmv6l\n@@swaps\n/var/swap file 102396 0 -2\n@@dphys\ninstalled\n\
             @@units\n{units}@@files\n{sum}  /etc/hosts\n@@file_modes\n644 /etc/hosts\n@@limits\nconntrack_max\n@@default_password\npi\n@@end\n",
            sum = "a".repeat(64)
        );
        let f = parse(&out, 100.0).expect("parses");
        assert_eq!(f.services["k3s"], ServiceState { enabled: true, active: true });
        assert_eq!(f.services["haproxy"], ServiceState::default());
        assert!(!f.swap.zram);
        assert_eq!(f.files["/etc/hosts"], FileState { sha256: "a".repeat(64), mode: "644".into() });
        assert_eq!(f.files["/etc/sysctl.d/99-pikube-k8s.conf"], FileState::default(), "not listed: no such file");
        assert_eq!(f.hostname, "rasp01");
        assert_eq!(f.arch, Arch::Armv6);
        assert_eq!(f.swap.active, vec!["/var/swap"]);
        assert!(f.swap.dphys_swapfile && f.swap.any());
        assert_eq!(f.default_password_users, vec!["pi"]);
        assert!(!f.can_lower_oom_score && f.can_set_conntrack_max);
        assert!((f.clock_offset_secs - 0.5).abs() < 1e-9);
        assert!(!f.cgroup_v2 && !f.vxlan && f.etcd_image.is_none() && f.containerd_candidate.is_none());
        let kubeadm =
            "@@now\n1\n@@cgroupfs\ncgroup2fs\n@@vxlan\navailable\n@@etcd_image\n\"registry.k8s.io/etcd:3.5.21-0\"\n\
                       @@containerd_candidate\n1.6.20~ds1-1+deb12u1\n@@end\n";
        let f = parse(kubeadm, 1.0).expect("parses");
        assert!(f.cgroup_v2 && f.vxlan);
        assert_eq!(f.etcd_image.as_deref(), Some("registry.k8s.io/etcd:3.5.21-0"));
        assert_eq!(f.containerd_candidate.as_deref(), Some("1.6.20~ds1-1+deb12u1"));
        assert!(parse("@@now\n1\n", 0.0).is_err(), "a cut-off output is an error");
    }

    #[test]
    fn shown_facts_keep_apt_credentials_out() {
        let line = "deb http://apt:S3cret@mirror.lan/debian bookworm main";
        let out = format!(
            "@@now\n1\n@@hostname\nrasp01\n@@arch\naarch64\n@@apt_sources\n@@@file /etc/apt/sources.list\n{line}\n@@end\n"
        );
        let f = parse(&out, 1.0).expect("parses");
        assert_eq!(
            f.apt_sources["/etc/apt/sources.list"],
            format!("{line}\n"),
            "the mirror phase reads them as they are"
        );
        let shown = serde_json::to_string(&f).unwrap();
        assert!(!shown.contains("S3cret"), "{shown}");
        assert!(shown.contains("deb http://***@mirror.lan/debian bookworm main"), "{shown}");
    }
}
