//! Host preparation: hostname and /etc/hosts, swap off for good, cgroup flags in cmdline.txt
//! (Pis), kernel modules and sysctls for Kubernetes, apt mirror/proxy.
//! Each step compares the wanted state with the gathered facts and acts only on a difference.

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use crate::config::Cluster;
use crate::facts::{HostFacts, MODULES, SYSCTLS};
use crate::fleet::{Fleet, Node};
use crate::remote::{quote, Cmd, Host, RemoteError};

/// Flags Raspberry Pi kernels need for the cpuset and memory cgroups Kubernetes relies on.
pub const CGROUP_FLAGS: [&str; 3] = ["cgroup_enable=cpuset", "cgroup_enable=memory", "cgroup_memory=1"];

const MODULES_FILE: &str = "/etc/modules-load.d/pikube-k8s.conf";
const SYSCTL_FILE: &str = "/etc/sysctl.d/99-pikube-k8s.conf";
const MIRROR_FILE: &str = "/etc/apt/sources.list.d/pikube-mirror.list";
const APT_PROXY_FILE: &str = "/etc/apt/apt.conf.d/80pikube-proxy";
/// Hosts of distribution archives that a mirror replaces (third-party sources stay).
const DISTRO_ARCHIVES: [&str; 5] =
    ["deb.debian.org", "security.debian.org", "raspbian.raspberrypi.org", "archive.ubuntu.com", "ports.ubuntu.com"];

pub fn run<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    Box::pin(fleet.each(move |node: &'a Node, host: &'a Host| async move {
        let facts = node.facts().ok_or("no facts gathered")?;
        prepare(&fleet.cluster, node, host, &facts).await.map_err(|e| e.to_string())
    }))
}

async fn prepare(cluster: &Cluster, node: &Node, host: &Host, f: &HostFacts) -> Result<(), RemoteError> {
    let name = node.name();
    if f.hostname != name {
        let cmd = Cmd::change_script(format!("echo {n} > /etc/hostname && hostname {n}", n = quote(name)));
        host.apply(format!("set hostname {} → {name}", f.hostname), &cmd).await?;
    }
    let hosts = etc_hosts(&f.etc_hosts, &f.hostname, name, cluster);
    ensure_file(host, f, "/etc/hosts", hosts.as_bytes(), Some(0o644)).await?;

    disable_swap(host, f).await?;

    if let (true, Some(dir), Some(current)) = (f.is_pi(), &f.boot_dir, &f.cmdline_txt) {
        let wanted = with_cgroup_flags(current);
        if ensure_file(host, f, &format!("{dir}/cmdline.txt"), wanted.as_bytes(), None).await? {
            node.want_reboot();
        } else if !f.memory_cgroup {
            // The flags are there but not live: an earlier run stopped before its reboot.
            node.want_reboot();
        }
    }

    let modules: String = MODULES.iter().map(|m| format!("{m}\n")).collect();
    ensure_file(
        host,
        f,
        MODULES_FILE,
        format!("# Written by pikube: Kubernetes needs these at boot.\n{modules}").as_bytes(),
        Some(0o644),
    )
    .await?;
    for m in MODULES.iter().filter(|m| !f.modules_loaded.iter().any(|l| l == *m)) {
        host.apply(format!("load kernel module {m}"), &Cmd::change("modprobe", &[m])).await?;
    }

    let sysctls: String = SYSCTLS.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    ensure_file(
        host,
        f,
        SYSCTL_FILE,
        format!("# Written by pikube: Kubernetes networking.\n{sysctls}").as_bytes(),
        Some(0o644),
    )
    .await?;
    let stale: Vec<&str> =
        SYSCTLS.iter().filter(|(k, v)| f.sysctl.get(*k).map(String::as_str) != Some(*v)).map(|(k, _)| *k).collect();
    if !stale.is_empty() {
        host.apply(format!("apply sysctls {}", stale.join(", ")), &Cmd::change("sysctl", &["-q", "-p", SYSCTL_FILE]))
            .await?;
    }

    configure_apt(cluster, host, f).await
}

/// [`Host::ensure_file`] compared with the file's state from the facts (gathered moments ago
/// by this run), which saves a round trip per file on a host that needs nothing.
async fn ensure_file(
    host: &Host,
    f: &HostFacts,
    path: &str,
    content: &[u8],
    mode: Option<u32>,
) -> Result<bool, RemoteError> {
    let Some(have) = f.files.get(path) else { return host.ensure_file(path, content, mode).await };
    host.ensure_file_from(path, content, &hex::encode(Sha256::digest(content)), mode, have).await
}

async fn disable_swap(host: &Host, f: &HostFacts) -> Result<(), RemoteError> {
    if !f.swap.active.is_empty() {
        host.apply(format!("swapoff {}", f.swap.active.join(" ")), &Cmd::change("swapoff", &["-a"])).await?;
    }
    if !f.swap.fstab.is_empty() {
        // Comment out swap entries so they stay visible for the owner.
        let cmd = Cmd::change_script(
            r"sed -i -E '/^[[:space:]]*#/!{/[[:space:]]swap[[:space:]]/s/^/#pikube: swap off for Kubernetes# /}' /etc/fstab",
        );
        host.apply(format!("comment out {} swap line(s) in /etc/fstab", f.swap.fstab.len()), &cmd).await?;
    }
    if f.swap.dphys_swapfile {
        let cmd = Cmd::change_script(
            "dphys-swapfile swapoff || true; dphys-swapfile uninstall || true; \
             systemctl disable --now dphys-swapfile.service",
        );
        host.apply("disable dphys-swapfile", &cmd).await?;
    }
    if f.swap.zram {
        let cmd = Cmd::change_script(
            "for u in zramswap zram-config nvzramconfig; do systemctl disable --now \"$u\" 2>/dev/null || true; done; \
             if [ -e /usr/lib/systemd/zram-generator.conf ] || [ -e /etc/systemd/zram-generator.conf ]; then \
               mkdir -p /etc/systemd && : > /etc/systemd/zram-generator.conf; swapoff -a || true; fi",
        );
        host.apply("disable zram swap", &cmd).await?;
    }
    Ok(())
}

async fn configure_apt(cluster: &Cluster, host: &Host, f: &HostFacts) -> Result<(), RemoteError> {
    let pk = &cluster.spec.packages;
    let proxy = pk
        .proxy
        .as_ref()
        .map(|p| p.value.clone())
        .or_else(|| cluster.spec.proxy.as_ref().and_then(|p| p.http.as_ref()).map(|p| p.value.clone()));
    match proxy {
        Some(p) => {
            let (content, mode) = apt_proxy_file(&p);
            ensure_file(host, f, APT_PROXY_FILE, content.as_bytes(), Some(mode)).await?;
        }
        // A proxy taken out of the cluster file leaves apt (and its password) too.
        None if f.files.get(APT_PROXY_FILE).is_some_and(|s| !s.sha256.is_empty()) => {
            host.remove_file(APT_PROXY_FILE, "no proxy in the cluster file").await?;
        }
        None => {}
    }
    let Some(mirror) = &pk.mirror else { return Ok(()) };
    let components: Vec<&str> = pk.components.iter().map(|c| c.value.as_str()).collect();
    let components = if components.is_empty() { "main".to_string() } else { components.join(" ") };
    let options = if pk.trusted { "[trusted=yes] " } else { "" };
    let list = format!(
        "# Written by pikube (packages.mirror). Replaced sources are kept as *.pikube-disabled.\n\
         deb {options}{} {} {components}\n",
        mirror.value, f.os_codename
    );
    let mut changed = ensure_file(host, f, MIRROR_FILE, list.as_bytes(), Some(0o644)).await?;
    for (path, body) in &f.apt_sources {
        if path != MIRROR_FILE && points_at_distro_archive(body) {
            let cmd = Cmd::change("mv", &[path, &format!("{path}.pikube-disabled")]);
            host.apply(format!("disable {path} (replaced by the mirror)"), &cmd).await?;
            changed = true;
        }
    }
    if changed {
        let cmd = Cmd::change_script("apt-get update -q -o APT::Update::Error-Mode=any")
            .timeout(std::time::Duration::from_secs(300));
        host.apply("apt-get update from the mirror", &cmd).await?;
    }
    Ok(())
}

/// apt.conf line for the proxy, and its mode: 0600 when the URL carries credentials
/// (`http://user:password@proxy:3128`), else 0644 so apt run by other users reads it
/// without a warning. Validation keeps quotes and newlines out of the URL.
fn apt_proxy_file(url: &str) -> (String, u32) {
    let mode = if crate::config::url::without_userinfo(url).is_some() { 0o600 } else { 0o644 };
    (format!("Acquire::http::Proxy \"{url}\";\n"), mode)
}

fn points_at_distro_archive(sources: &str) -> bool {
    sources
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .any(|l| DISTRO_ARCHIVES.iter().any(|a| l.contains(a)))
}

/// cmdline.txt must stay one line; missing flags go at its end.
pub fn with_cgroup_flags(cmdline: &str) -> String {
    let line = cmdline.lines().next().unwrap_or("").trim_end();
    let mut words: Vec<&str> = line.split_whitespace().collect();
    let mut out = line.to_string();
    for flag in CGROUP_FLAGS {
        if !words.contains(&flag) {
            out.push(' ');
            out.push_str(flag);
            words.push(flag);
        }
    }
    out.push('\n');
    out
}

/// /etc/hosts with `127.0.1.1 <name>` (Debian's convention) and a pikube block naming every
/// cluster host, so hosts resolve each other without DNS.
fn etc_hosts(current: &str, old_name: &str, name: &str, cluster: &Cluster) -> String {
    let mut out = String::new();
    let mut in_block = false;
    let mut has_self = false;
    for line in current.lines() {
        match line.trim() {
            "# BEGIN pikube" => in_block = true,
            "# END pikube" => in_block = false,
            _ if in_block => {}
            l => {
                let mut f = l.split_whitespace();
                if f.next() == Some("127.0.1.1") {
                    let rest: Vec<&str> = f.filter(|h| *h != old_name && *h != name).collect();
                    out.push_str(&format!(
                        "127.0.1.1\t{name}{}\n",
                        rest.iter().map(|h| format!(" {h}")).collect::<String>()
                    ));
                    has_self = true;
                } else {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
    }
    if !has_self {
        out.push_str(&format!("127.0.1.1\t{name}\n"));
    }
    out.push_str("# BEGIN pikube\n");
    for h in cluster.hosts() {
        out.push_str(&format!("{}\t{}\n", h.address(), h.name.value));
    }
    out.push_str("# END pikube\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::PREPARED_FILES;

    #[test]
    fn cgroup_flags_are_added_once_on_one_line() {
        let base = "console=serial0,115200 root=PARTUUID=abcd-02 rootwait\n";
        let once = with_cgroup_flags(base);
        assert_eq!(once, "console=serial0,115200 root=PARTUUID=abcd-02 rootwait cgroup_enable=cpuset cgroup_enable=memory cgroup_memory=1\n");
        assert_eq!(with_cgroup_flags(&once), once, "idempotent");
        let partial = "root=/dev/mmcblk0p2 cgroup_memory=1";
        assert_eq!(
            with_cgroup_flags(partial),
            "root=/dev/mmcblk0p2 cgroup_memory=1 cgroup_enable=cpuset cgroup_enable=memory\n"
        );
    }

    #[test]
    fn an_apt_proxy_with_credentials_is_written_0600() {
        let line = |u: &str| format!("Acquire::http::Proxy \"{u}\";\n");
        for url in ["http://user:secret@proxy.lan:3128", "http://token@proxy.lan:3128/", "https://u:p%40ss@proxy.lan"] {
            assert_eq!(apt_proxy_file(url), (line(url), 0o600), "{url}");
        }
        for url in ["http://proxy.lan:3128", "http://cache.lan:3142/path@x"] {
            assert_eq!(apt_proxy_file(url), (line(url), 0o644), "{url}");
        }
    }

    #[test]
    fn the_facts_carry_the_state_of_every_prepared_file() {
        for path in [MODULES_FILE, SYSCTL_FILE, MIRROR_FILE, APT_PROXY_FILE, "/etc/hosts"] {
            assert!(PREPARED_FILES.contains(&path), "{path} missing from facts::PREPARED_FILES");
        }
        for dir in ["/boot/firmware", "/boot"] {
            assert!(PREPARED_FILES.contains(&format!("{dir}/cmdline.txt").as_str()));
        }
    }

    #[test]
    fn distro_sources_are_recognised() {
        assert!(points_at_distro_archive("deb http://deb.debian.org/debian bookworm main\n"));
        assert!(!points_at_distro_archive("# deb http://deb.debian.org/debian bookworm main\n"));
        assert!(!points_at_distro_archive("deb http://archive.raspberrypi.com/debian/ bookworm main\n"));
    }
}
