//! Removing k3s from a node as completely as k3s's own k3s-killall.sh + k3s-uninstall.sh do,
//! in their order, and listing what is left afterwards. Unlike those scripts it never deletes
//! a directory with anything still mounted below it: a pod's NFS/iSCSI volume whose unmount
//! fails stays, with its data, and is reported instead.

use std::fmt;

use crate::config::Role;
use crate::k3s::{self, BIN, LINKS};
use crate::phases::{CORDONED_BY_PIKUBE, HOOKS_APPLIED_DIR};
use crate::remote::{Cmd, Host};
use crate::storage::TEARDOWN_FUNCTIONS;

/// Where k3s mounts (containerd's rootfs and shm, pod volumes, CSI plugins, its data, CNI
/// network namespaces); unmounted deepest first. A trailing `-` is a name prefix.
const MOUNT_ROOTS: [&str; 5] =
    ["/run/k3s", "/var/lib/kubelet/pods", "/var/lib/kubelet/plugins", "/var/lib/rancher/k3s", "/run/netns/cni-"];
/// The interfaces flannel, the CNI bridge and kube-proxy's IPVS mode create.
const INTERFACES: [&str; 6] = ["cni0", "flannel.1", "flannel-v6.1", "flannel-wg", "flannel-wg-v6", "kube-ipvs0"];
/// k3s and the names it re-execs as (`cmd/k3s/main.go`): `pkill -x k3s` alone finds none of them.
const PROCESSES: [&str; 4] = ["k3s", "k3s-server", "k3s-agent", "k3s-init"];
/// containerd's shims run from k3s's extracted binaries; with `KillMode=process` they and the
/// pods below them outlive `systemctl stop`.
const SHIMS: &str = "^/var/lib/rancher/k3s/data/[^/]*/bin/containerd-shim";
/// Directories removed once nothing is mounted below them.
const DIRS: [&str; 7] = [
    "/etc/rancher/k3s",
    "/run/k3s",
    "/run/flannel",
    "/var/lib/rancher/k3s",
    "/var/lib/kubelet",
    "/var/lib/cni",
    HOOKS_APPLIED_DIR,
];

/// Shell variables both scripts use, from the constants above.
fn vars() -> String {
    let roles = [Role::Server, Role::Agent];
    let files: Vec<String> = roles
        .iter()
        .flat_map(|r| [k3s::unit_path(*r), k3s::env_path(*r)])
        .chain([BIN, CORDONED_BY_PIKUBE].map(String::from))
        .collect();
    format!(
        "ROOTS='{}'; IFACES='{}'; PROCS='{}'; SHIMS='{SHIMS}'; DIRS='{}'; FILES='{}'; UNITS='{}'; LINKS='{}'; BIN={BIN}\n",
        MOUNT_ROOTS.join(" "),
        INTERFACES.join(" "),
        PROCESSES.join(" "),
        DIRS.join(" "),
        files.join(" "),
        roles.map(k3s::unit_name).join(" "),
        LINKS.join(" "),
    )
}

/// Prints the (mountinfo-escaped) mount points at or below $ROOTS, deepest first.
const MOUNTS_UNDER_ROOTS: &str = r#"mounts_under_roots() {
  awk -v roots="$ROOTS" 'BEGIN { n = split(roots, r, " ") }
    { for (i = 1; i <= n; i++) if ($5 == r[i] || index($5, (r[i] ~ /-$/) ? r[i] : (r[i] "/")) == 1) { print $5; next } }' /proc/self/mountinfo | sort -r
}
"#;

/// What any Kubernetes distribution leaves in the host's network: CNI namespaces, the pods'
/// veths on cni0, the interfaces named in $IFACES, and the KUBE-/CNI-/flannel iptables rules.
/// `clean_network` removes them, `network_leftovers` lists what is still there.
pub const NETWORK_FUNCTIONS: &str = r#"clean_network() {
ip netns list 2>/dev/null | grep -o '^cni-[^ ]*' | xargs -r -n 1 ip netns delete
ip -o link show master cni0 2>/dev/null | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }' | xargs -r -n 1 ip link delete
for i in $IFACES; do ip link show "$i" >/dev/null 2>&1 && ip link delete "$i"; done
for t in iptables ip6tables; do
  command -v $t-save >/dev/null && command -v $t-restore >/dev/null || continue
  $t-save | grep -v KUBE- | grep -v CNI- | grep -iv flannel | $t-restore
done
}
network_leftovers() {
ip netns list 2>/dev/null | grep -o '^cni-[^ ]*' | sed 's/^/netns /'
for i in $IFACES; do ip link show "$i" >/dev/null 2>&1 && echo "interface $i"; done
for t in iptables ip6tables; do
  command -v $t-save >/dev/null || continue
  $t-save 2>/dev/null | grep -v '^#' | grep -E 'KUBE-|CNI-|[Ff][Ll][Aa][Nn][Nn][Ee][Ll]' | sed "s/^/$t /"
done
}
"#;

/// k3s-killall.sh's steps, then k3s-uninstall.sh's, in their order; see the README.
const TEARDOWN: &str = r#"for d in /var/lib/rancher/k3s/data/*/bin; do [ -d "$d" ] && PATH="$PATH:$d:$d/aux"; done
for u in $UNITS; do systemctl stop "$u" 2>/dev/null; done
tree_of() { for p in "$@"; do echo "$p"; tree_of $(pgrep -P "$p"); done; }
shims=$(pgrep -f "$SHIMS")
[ -n "$shims" ] && kill -9 $(tree_of $shims) 2>/dev/null
for n in $PROCS; do pkill -x "$n"; done
for i in 1 2 3 4 5; do alive=; for n in $PROCS; do pgrep -x "$n" >/dev/null && alive=1; done; [ -z "$alive" ] && break; sleep 1; done
for n in $PROCS; do pkill -9 -x "$n"; done
mounts_under_roots | while IFS= read -r m; do
  m=$(printf '%b' "$m"); umount "$m" 2>/dev/null || umount -f "$m" || echo "could not unmount $m" >&2
done
clean_network
for u in $UNITS; do systemctl disable "$u" 2>/dev/null; done
rm -f $FILES
systemctl daemon-reload
for u in $UNITS; do systemctl reset-failed "$u" 2>/dev/null; done
for l in $LINKS; do [ "$(readlink /usr/local/bin/$l)" = k3s ] && rm -f /usr/local/bin/$l; done
for d in $DIRS; do
  if awk -v p="$d" 'index($5, p "/") == 1 { f = 1 } END { exit !f }' /proc/self/mountinfo; then
    echo "kept $d: something is still mounted below it" >&2
  elif awk -v p="$d" '$5 == p { f = 1 } END { exit !f }' /proc/self/mountinfo && ! on_data_disk "$d"; then
    echo "kept $d: it is a mount point" >&2
  else
    clear_dir "$d"
  fi
done
exit 0
"#;

/// Lists, one `kind what` per line, everything of k3s still on the node.
const LEFTOVERS: &str = r#"for d in /var/lib/rancher/k3s/data/*/bin; do [ -d "$d" ] && PATH="$PATH:$d:$d/aux"; done
for n in $PROCS; do pgrep -x "$n" | sed "s/^/process $n, pid /"; done
pgrep -f "$SHIMS" | sed 's/^/process containerd-shim, pid /'
mounts_under_roots | while IFS= read -r m; do echo "mount $(printf '%b' "$m")"; done
network_leftovers
for p in $DIRS $FILES; do left_dir "$p" && echo "path $p"; done
for l in $LINKS; do [ "$(readlink /usr/local/bin/$l)" = k3s ] && echo "path /usr/local/bin/$l"; done
exit 0
"#;

/// Stops and removes k3s on `host`; see TEARDOWN.
pub async fn remove(host: &Host) -> Result<(), String> {
    let script = format!("{}{MOUNTS_UNDER_ROOTS}{NETWORK_FUNCTIONS}{TEARDOWN_FUNCTIONS}{TEARDOWN}", vars());
    let cmd = Cmd::change_script(script).timeout(std::time::Duration::from_secs(180));
    host.apply(
        "stop k3s, kill its shims, unmount, delete its interfaces, rules and files (k3s-killall.sh, k3s-uninstall.sh)",
        &cmd,
    )
    .await
    .map_err(|e| e.to_string())
}

/// What of k3s is still on `host`.
pub async fn leftovers(host: &Host) -> Result<Leftovers, String> {
    let script = format!("{}{MOUNTS_UNDER_ROOTS}{NETWORK_FUNCTIONS}{TEARDOWN_FUNCTIONS}{LEFTOVERS}", vars());
    let out = host.run_ok(&Cmd::read_script(script)).await.map_err(|e| e.to_string())?;
    Ok(Leftovers::parse(&out))
}

/// One line of the leftover listing: kind (`process`, `mount`, `netns`, `interface`,
/// `iptables`, `ip6tables`, `path`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub kind: String,
    pub what: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leftovers(pub Vec<Leftover>);

impl Leftovers {
    fn parse(out: &str) -> Leftovers {
        let items = out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(kind, what)| Leftover { kind: kind.to_string(), what: what.trim().to_string() })
            .collect();
        Leftovers(items)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn mounts(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter(|l| l.kind == "mount").map(|l| l.what.as_str())
    }
}

/// Names every leftover, and why a directory was kept (a mount below it), with what to do.
impl fmt::Display for Leftovers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "k3s is not completely removed; left on the node:")?;
        for kind in ["iptables", "ip6tables"] {
            let rules: Vec<&str> = self.0.iter().filter(|l| l.kind == kind).map(|l| l.what.as_str()).collect();
            if !rules.is_empty() {
                write!(f, "\n    {} {kind} rule(s)/chain(s), e.g. `{}`", rules.len(), rules[0])?;
            }
        }
        for l in self.0.iter().filter(|l| !l.kind.ends_with("iptables")) {
            match l.kind.as_str() {
                "mount" => write!(f, "\n    mount {} (could not be unmounted; it is busy)", l.what)?,
                "path" => match self.mounts().find(|m| m.starts_with(&format!("{}/", l.what)) || *m == l.what) {
                    Some(m) => write!(
                        f,
                        "\n    {} (not deleted: {m} is still mounted below it, and data on a mount is never deleted)",
                        l.what
                    )?,
                    None => write!(f, "\n    {}", l.what)?,
                },
                kind => write!(f, "\n    {kind} {}", l.what)?,
            }
        }
        if self.mounts().next().is_some() {
            write!(f, "\n  hint: find what holds a mount with `fuser -vm PATH`, stop it and unmount, then run `pikube down` again")?;
        } else {
            write!(f, "\n  hint: run `pikube down` again; if it stays, remove these by hand")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_directory_names_the_mount_below_it() {
        let out = "mount /var/lib/kubelet/pods/u/volumes/kubernetes.io~nfs/data\npath /var/lib/kubelet\n\
                   iptables :KUBE-FORWARD - [0:0]\niptables -A FORWARD -j KUBE-FORWARD\ninterface cni0\n";
        let text = Leftovers::parse(out).to_string();
        assert!(
            text.contains("mount /var/lib/kubelet/pods/u/volumes/kubernetes.io~nfs/data (could not be unmounted"),
            "{text}"
        );
        assert!(text.contains("/var/lib/kubelet (not deleted: /var/lib/kubelet/pods/u/volumes/kubernetes.io~nfs/data is still mounted"), "{text}");
        assert!(text.contains("2 iptables rule(s)/chain(s), e.g. `:KUBE-FORWARD - [0:0]`"), "{text}");
        assert!(text.contains("interface cni0"), "{text}");
        assert!(text.contains("fuser -vm"), "{text}");
    }

    #[test]
    fn nothing_left_is_empty() {
        assert!(Leftovers::parse("").is_empty());
    }
}
