//! What real k3s leaves on a node besides its files, so pikube's teardown is tested against
//! real leftovers: the process names it re-execs as, a containerd shim that outlives
//! `systemctl stop` (the unit has `KillMode=process`), the `cni0` bridge with a pod's veth, the
//! `flannel.1` VXLAN device, the KUBE-/CNI-/FLANNEL iptables chains and kube-proxy's ip6tables
//! chain, flannel's and the CNI plugins' state, a CNI network namespace, a container's rootfs
//! overlay mount and a tmpfs volume of a pod. k3s STAND-IN code, not the real k3s.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::log;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/rancher/k3s";
/// The shim the stand-in starts, named like containerd's runc shim.
const SHIM: &str = "containerd-shim-runc-v2";
/// The stand-in's pod: a fixed uid, as a kubelet dir holds `pods/<uid>/volumes/...`.
const POD_VOLUME: &str =
    "/var/lib/kubelet/pods/5b1e7a6c-standin-0000-0000-000000000001/volumes/kubernetes.io~empty-dir/cache";
/// The pod's container: its task directory, where containerd mounts its rootfs while it runs.
const TASK: &str = "/run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io/\
                    5b1e7a6c00000000000000000000000000000000000000000000000000000001";
/// containerd's overlayfs snapshots the rootfs is made of (a read-only layer and the container's own).
const SNAPSHOTS: &str = "/var/lib/rancher/k3s/agent/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots";
/// The pod's end of its veth is eth0 in the CNI namespace; the host's end is on cni0, named as
/// the bridge plugin names it (`veth` + 8 hex digits).
const NETNS: &str = "cni-5b1e7a6c-standin";
const VETH: &str = "veth5b1e7a6c";

/// The directory real k3s extracts its binaries to (`<data-dir>/data/<hash>/bin`).
fn bin_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("data/standin/bin")
}

/// Real k3s re-execs `server`/`agent` as `<data-dir>/data/<hash>/bin/k3s-server` (or
/// `k3s-agent`) with that argv[0], so the process is named `k3s-server`, not `k3s`. Returns
/// only when already re-exec'd or when the re-exec is impossible (logged).
pub fn reexec(sub: &str, data_dir: &Path) {
    let args: Vec<String> = std::env::args().collect();
    let name = format!("k3s-{sub}");
    if args.first().and_then(|a| Path::new(a).file_name()).is_some_and(|n| n == name.as_str()) {
        return;
    }
    let result = link_self(data_dir, &name).map(|link| Command::new(link).arg0(&name).args(&args[1..]).exec());
    let why = match result {
        Ok(e) | Err(e) => e,
    };
    log("warning", &format!("STAND-IN: could not re-exec as {name} ({why}); running as k3s"));
}

/// A symlink to this binary in the data dir's bin directory, as k3s extracts its multi-call binary.
fn link_self(data_dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    let dir = bin_dir(data_dir);
    std::fs::create_dir_all(&dir)?;
    let link = dir.join(name);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(std::env::current_exe()?, &link)?;
    Ok(link)
}

/// Whether argv[0] says this process is the stand-in's containerd shim.
pub fn is_shim(argv0: &str) -> bool {
    Path::new(argv0).file_name().is_some_and(|n| n == SHIM)
}

/// The shim: it only waits, as a shim with a sleeping pod would, until it is killed.
pub fn run_shim() -> ! {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Leaves on the node what a real k3s node has while pods run. Only with the default data dir
/// and as root: the stand-in's own loopback tests run several nodes on one host with their own
/// `--data-dir` and must not touch its network or mounts. Each trace is best-effort: a node
/// without iptables gets no rules, and the log says so.
pub fn leave_traces(data_dir: &Path) {
    // SAFETY: geteuid has no preconditions.
    if data_dir != Path::new(DEFAULT_DATA_DIR) || unsafe { libc::geteuid() } != 0 {
        return;
    }
    if let Err(e) = start_shim(data_dir) {
        log("warning", &format!("STAND-IN: no containerd shim started: {e}"));
    }
    let files: [(&str, &str); 2] = [
        (
            "/run/flannel/subnet.env",
            "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        ),
        ("/var/lib/cni/networks/cbr0/last_reserved_ip.0", "10.42.0.2"),
    ];
    for (path, body) in files {
        let written =
            Path::new(path).parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|_| std::fs::write(path, body));
        if let Err(e) = written {
            log("warning", &format!("STAND-IN: could not write {path}: {e}"));
        }
    }
    let scripts = [
        ("the cni0 bridge", "ip link show cni0 >/dev/null 2>&1 || { ip link add cni0 type bridge && ip link set cni0 up; }".to_string()),
        ("a CNI network namespace", format!("test -e /run/netns/{NETNS} || ip netns add {NETNS}")),
        ("the pod's veth on cni0", format!("ip link show {VETH} >/dev/null 2>&1 || {{ ip link add {VETH} type veth peer name eth0 netns {NETNS} && ip link set {VETH} master cni0 up; }}")),
        // flannel's VXLAN device, on flannel's port and VNI
        ("flannel.1", "ip link show flannel.1 >/dev/null 2>&1 || { ip link add flannel.1 type vxlan id 1 dstport 8472 nolearning && ip link set flannel.1 up; }".to_string()),
        ("the container's rootfs mount", ROOTFS_MOUNT.replace("$TASK", TASK).replace("$SNAPSHOTS", SNAPSHOTS)),
        ("the pod's tmpfs volume", format!("mkdir -p {POD_VOLUME} && {{ mountpoint -q {POD_VOLUME} || mount -t tmpfs -o size=1m tmpfs {POD_VOLUME}; }}")),
        ("the KUBE-/CNI-/FLANNEL iptables chains", IPTABLES.to_string()),
        ("kube-proxy's ip6tables chain", IP6TABLES.to_string()),
    ];
    for (what, script) in scripts {
        match Command::new("sh").arg("-c").arg(&script).output() {
            Ok(o) if o.status.success() => {
                let said = String::from_utf8_lossy(&o.stderr);
                if !said.trim().is_empty() {
                    log("warning", &format!("STAND-IN: {what}: {}", said.trim()));
                }
            }
            Ok(o) => log(
                "warning",
                &format!("STAND-IN: could not create {what}: {}", String::from_utf8_lossy(&o.stderr).trim()),
            ),
            Err(e) => log("warning", &format!("STAND-IN: could not create {what}: {e}")),
        }
    }
}

/// Chains named as kube-proxy, the CNI portmap plugin and flannel name theirs, hooked into the
/// built-in chains as they are; created once (a restart finds them).
const IPTABLES: &str = "command -v iptables >/dev/null || { echo 'iptables is not installed' >&2; exit 1; }; \
    for c in KUBE-FORWARD CNI-FORWARD FLANNEL-FWD; do \
      iptables -w -n -L $c >/dev/null 2>&1 && continue; \
      iptables -w -N $c && iptables -w -A FORWARD -j $c || exit 1; \
    done; \
    iptables -w -t nat -n -L FLANNEL-POSTRTG >/dev/null 2>&1 || \
      { iptables -w -t nat -N FLANNEL-POSTRTG && iptables -w -t nat -A POSTROUTING -j FLANNEL-POSTRTG; }";

/// kube-proxy sets up both families; flannel (IPv4 only here) none for IPv6.
const IP6TABLES: &str = "command -v ip6tables >/dev/null || { echo 'ip6tables is not installed' >&2; exit 1; }; \
    ip6tables -w -n -L KUBE-FORWARD >/dev/null 2>&1 || \
      { ip6tables -w -N KUBE-FORWARD && ip6tables -w -A FORWARD -j KUBE-FORWARD; }";

/// containerd mounts a running container's rootfs as an overlay: the image's layer from its
/// snapshotter, the container's writable layer on top. The writable layer is kept in the task
/// directory, as the kernel refuses an upper layer on a lab node's own overlay root; where even
/// that is refused, a tmpfs stands in, still a mount a teardown must undo before it deletes
/// anything below /run/k3s.
const ROOTFS_MOUNT: &str = "mountpoint -q $TASK/rootfs && exit 0; \
    mkdir -p $TASK/rootfs $TASK/layer/fs $TASK/layer/work $SNAPSHOTS/1/fs && echo standin > $SNAPSHOTS/1/fs/etc-os-release; \
    mount -t overlay overlay -o lowerdir=$SNAPSHOTS/1/fs,upperdir=$TASK/layer/fs,workdir=$TASK/layer/work $TASK/rootfs 2>/dev/null || \
      { echo 'overlay refused here: a tmpfs stands in' >&2; mount -t tmpfs -o size=1m tmpfs $TASK/rootfs; }";

/// Starts the shim detached (own session), so stopping the unit leaves it running, as
/// containerd's shims are; one per node, reused after a restart like containerd reattaches.
fn start_shim(data_dir: &Path) -> std::io::Result<()> {
    let pid_file = Path::new("/run/k3s/containerd/standin-shim.pid");
    if let Ok(pid) = std::fs::read_to_string(pid_file) {
        if Path::new("/proc").join(pid.trim()).join("exe").exists() {
            return Ok(());
        }
    }
    let link = link_self(data_dir, SHIM)?;
    // Full path as argv[0], as containerd starts its shims (what upstream's killall looks for).
    let mut cmd = Command::new(link);
    cmd.args(["-namespace", "k8s.io", "-address", "/run/k3s/containerd/containerd.sock"]);
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    std::fs::create_dir_all("/run/k3s/containerd")?;
    std::fs::write(pid_file, child.id().to_string())
}
