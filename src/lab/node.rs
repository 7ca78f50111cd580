//! Lab nodes: their disks (overlay on the base tree), identity (hostname, host key, network),
//! the launcher that boots them with systemd-nspawn, and power control.

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use miette::{miette, IntoDiagnostic, Result, WrapErr};

use super::state::{Arch, LabPaths, LabState, NodePaths, NodeState};
use super::util::{alive, children, is_mounted, read_pid, run, signal, wait_until, write_atomic};
use super::{base, disk, firmware, net};

/// nspawn's exit code when the container asked for a reboot.
const EXIT_REBOOT: i32 = 133;
/// How long a clean halt may take before the power is pulled.
const HALT_TIMEOUT: Duration = Duration::from_secs(30);

fn launcher_markers<'a>(lab: &'a str, node: &'a str) -> [&'a str; 3] {
    ["__boot", lab, node]
}

/// The launcher's pid if it is running.
pub fn launcher_pid(lab: &str, node: &str) -> Option<u32> {
    let pid = read_pid(&LabPaths::new(lab).node(node).launcher_pid())?;
    alive(pid, &launcher_markers(lab, node)).then_some(pid)
}

/// Mounts the node's disk (overlay: base tree below, the node's own changes above).
fn mount_disk(state: &LabState, paths: &NodePaths) -> Result<()> {
    let merged = paths.merged();
    if is_mounted(&merged) {
        return Ok(());
    }
    if let Some(mib) = state.disk_mib {
        mount_layer(paths, mib)?;
    }
    for dir in [paths.upper(), paths.work(), merged.clone()] {
        fs::create_dir_all(&dir).into_diagnostic().wrap_err_with(|| format!("creating {}", dir.display()))?;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        base::path(state.arch).display(),
        paths.upper().display(),
        paths.work().display()
    );
    run(Command::new("mount").args(["-t", "overlay", "pikube-lab", "-o", &options]).arg(&merged))
        .wrap_err_with(|| format!("mounting the disk of node at {}", merged.display()))
        .map(drop)
}

/// Gives the node's own layer a small file system of its own (`lab up --disk-size`), so the
/// node's root file system shows its size and fills up like a small SD card would.
fn mount_layer(paths: &NodePaths, mib: u64) -> Result<()> {
    let (layer, image) = (paths.layer(), paths.layer_image());
    if is_mounted(&layer) {
        return Ok(());
    }
    fs::create_dir_all(&layer).into_diagnostic().wrap_err_with(|| format!("creating {}", layer.display()))?;
    if !image.exists() {
        run(Command::new("truncate").arg(format!("--size={mib}M")).arg(&image))?;
        run(Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0"]).arg(&image))
            .wrap_err_with(|| format!("making a file system in {}", image.display()))?;
    }
    run(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&layer))
        .wrap_err_with(|| format!("mounting {}", image.display()))
        .map(drop)
}

pub fn unmount_disk(paths: &NodePaths) -> Result<()> {
    for dir in [paths.merged(), paths.layer()] {
        if is_mounted(&dir) {
            run(Command::new("umount").arg(&dir)).wrap_err_with(|| format!("unmounting {}", dir.display()))?;
        }
    }
    Ok(())
}

/// A new SD card: the node's own disk layer and its identity are thrown away, so the next
/// `provision` gives it a fresh one (new host key, the image's hostname). The node must be off.
pub fn wipe_disk(lab: &str, node: &str) -> Result<()> {
    let paths = LabPaths::new(lab).node(node);
    unmount_disk(&paths)?;
    for dir in [paths.upper(), paths.work(), paths.containerd_disk()] {
        if dir.exists() {
            fs::remove_dir_all(&dir).into_diagnostic().wrap_err_with(|| format!("removing {}", dir.display()))?;
        }
    }
    // A disk of its own (`--disk-size`) holds all of the above: a new card is a new file system.
    let _ = fs::remove_file(paths.layer_image());
    let _ = fs::remove_file(paths.provisioned());
    Ok(())
}

/// Gives a new node its identity, once: a fresh-image hostname, its own ed25519 host key, the
/// static lab address, and the lab client key for root and pi. Later boots keep whatever the
/// node's disk holds by then.
pub fn provision(state: &LabState, node: &NodeState, client_pub: &str) -> Result<()> {
    let paths = LabPaths::new(&state.name).node(&node.name);
    mount_disk(state, &paths)?;
    if paths.provisioned().exists() {
        return Ok(());
    }
    let tree = paths.merged();
    let write = |rel: &str, contents: &str, mode: u32| -> Result<()> {
        let path = tree.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).into_diagnostic()?;
        }
        fs::write(&path, contents)
            .and_then(|_| fs::set_permissions(&path, fs::Permissions::from_mode(mode)))
            .into_diagnostic()
            .wrap_err_with(|| format!("writing {}", path.display()))
    };

    // Not the node name: like a freshly flashed card, so pikube's hostname step has work to do.
    let hostname = if node.layout.is_some() { "raspberrypi" } else { "debian" };
    write("etc/hostname", &format!("{hostname}\n"), 0o644)?;
    write("etc/hosts", &base::hosts(hostname), 0o644)?;
    // Like a home LAN, the lab's bridge is the nodes' router and name server (kubelet, kubeadm and
    // flannel find the node's address through the default route). Nothing answers DNS there and
    // the lab's namespace has no way out, so nothing leaves the lab. Carrier loss (`lab cut`)
    // must not drop the address.
    let router = format!("{}.1", state.prefix);
    write(
        "etc/systemd/network/10-lab.network",
        &format!(
            "[Match]\nName=eth0\n\n[Network]\nAddress={}/24\nGateway={router}\nLinkLocalAddressing=no\n\
             IPv6AcceptRA=no\nConfigureWithoutCarrier=yes\nIgnoreCarrierLoss=yes\n",
            node.address
        ),
        0o644,
    )?;
    write("etc/resolv.conf", &format!("nameserver {router}\n"), 0o644)?;

    let key = paths.host_key();
    let _ = fs::remove_file(&key);
    let _ = fs::remove_file(key.with_extension("pub"));
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C"])
        .arg(format!("root@{hostname}"))
        .arg("-f")
        .arg(&key))
    .wrap_err("generating the node's host key")?;
    let private = fs::read_to_string(&key).into_diagnostic()?;
    let public = fs::read_to_string(key.with_extension("pub")).into_diagnostic()?;
    write("etc/ssh/ssh_host_ed25519_key", &private, 0o600)?;
    write("etc/ssh/ssh_host_ed25519_key.pub", &public, 0o644)?;

    write("root/.ssh/authorized_keys", client_pub, 0o600)?;
    fs::set_permissions(tree.join("root/.ssh"), fs::Permissions::from_mode(0o700)).into_diagnostic()?;
    let (uid, gid) = user_ids(&tree, "pi")?;
    write("home/pi/.ssh/authorized_keys", client_pub, 0o600)?;
    let pi_ssh = tree.join("home/pi/.ssh");
    fs::set_permissions(&pi_ssh, fs::Permissions::from_mode(0o700)).into_diagnostic()?;
    for path in [pi_ssh.clone(), pi_ssh.join("authorized_keys")] {
        chown(&path, Some(uid), Some(gid)).into_diagnostic().wrap_err_with(|| format!("chown {}", path.display()))?;
    }

    if let Some(layout) = node.layout {
        firmware::write_boot_files(&tree, layout, &seed(state, node))?;
    }
    fs::write(paths.provisioned(), "").into_diagnostic()
}

/// The node's `<address> ssh-ed25519 …` known_hosts line.
pub fn known_host(state: &LabState, node: &NodeState) -> Result<String> {
    let path = LabPaths::new(&state.name).node(&node.name).host_key().with_extension("pub");
    let public = fs::read_to_string(&path).into_diagnostic().wrap_err_with(|| format!("reading {}", path.display()))?;
    let mut words = public.split_whitespace();
    match (words.next(), words.next()) {
        (Some(kind), Some(key)) => Ok(format!("{} {kind} {key}\n", node.address)),
        _ => Err(miette!("malformed host key {}", path.display())),
    }
}

fn user_ids(tree: &Path, user: &str) -> Result<(u32, u32)> {
    let passwd = fs::read_to_string(tree.join("etc/passwd")).into_diagnostic()?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&user) && f.len() > 3)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .ok_or_else(|| miette!("the base tree has no user {user}"))
}

/// Seed for a node's stable board identity (serial, PARTUUID).
fn seed(state: &LabState, node: &NodeState) -> String {
    format!("{}/{}/{}", state.name, node.name, node.machine_id)
}

/// Powers a node on: starts its launcher (detached) unless it already runs.
pub fn power_on(state: &LabState, node: &NodeState) -> Result<()> {
    raise_host_limits()?;
    let paths = LabPaths::new(&state.name).node(&node.name);
    let _ = fs::remove_file(paths.powered_off());
    if launcher_pid(&state.name, &node.name).is_some() {
        return Ok(());
    }
    let argv = [super::util::self_exe()?, "lab".into(), "__boot".into(), state.name.clone(), node.name.clone()];
    super::util::spawn_detached(&argv, &paths.console_log())?;
    // The launcher writes its own pid file; waiting for it makes `status` right away accurate.
    if !wait_until(Duration::from_secs(10), || launcher_pid(&state.name, &node.name).is_some()) {
        return Err(miette!("the launcher of node {} did not start; see {}", node.name, paths.console_log().display()));
    }
    Ok(())
}

/// The nspawn process of a running node and the container's PID 1 (the node's systemd).
/// Every node's systemd, journald, networkd, logind … take inotify instances from root's one
/// per-host budget (nodes share the host's user ids). Debian's default of 128 instances runs out
/// at about 20 nodes: units then fail with "Too many open files", sshd never starts, and nspawn
/// can exit at boot. Raised here (never lowered) the way kind documents for its nodes.
const INOTIFY_LIMITS: [(&str, u64); 2] =
    [("/proc/sys/fs/inotify/max_user_instances", 8192), ("/proc/sys/fs/inotify/max_user_watches", 524_288)];

/// kubelet insists on these kernel settings (and tries to set them itself, which a node cannot:
/// they are not per-namespace). On a Pi kubelet sets them; in the lab the host is the kernel, so
/// they are set here, as kind's nodes get them from their host. kubelet wants these exact values.
const KUBELET_KERNEL_SETTINGS: [(&str, u64); 3] =
    [("/proc/sys/vm/overcommit_memory", 1), ("/proc/sys/kernel/panic", 10), ("/proc/sys/kernel/panic_on_oops", 1)];

fn raise_host_limits() -> Result<()> {
    let limits = INOTIFY_LIMITS.map(|(path, want)| (path, want, false));
    for (path, want, exact) in limits.into_iter().chain(KUBELET_KERNEL_SETTINGS.map(|(p, w)| (p, w, true))) {
        let have: u64 = fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        if have < want || (exact && have != want) {
            fs::write(path, want.to_string())
                .into_diagnostic()
                .wrap_err_with(|| format!("setting {path} from {have} to {want} (lab nodes need it)"))?;
        }
    }
    Ok(())
}

/// What a booted node that does not answer SSH says about itself (its systemd state, failed
/// units, sshd and addresses), read from inside its namespaces; for the lab's error message.
pub(super) fn boot_diagnosis(lab: &str, node: &str) -> String {
    let Some((_, Some(init))) = launcher_pid(lab, node).map(container_pids) else {
        return "no init process".into();
    };
    let script = "systemctl is-system-running; systemctl --failed --no-legend --plain; \
                  systemctl status ssh --no-pager -n 5 2>&1 | tail -n 8; ip -br addr";
    let out = Command::new("timeout")
        .args(["10", "nsenter", "--target", &init.to_string()])
        .args(["--mount", "--uts", "--ipc", "--net", "--pid", "--", "sh", "-c", script])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Err(e) => format!("nsenter failed: {e}"),
    }
}

fn container_pids(launcher: u32) -> (Option<u32>, Option<u32>) {
    let nspawn = children(launcher).into_iter().find(|(_, comm)| comm == "systemd-nspawn").map(|(pid, _)| pid);
    let init = nspawn.and_then(|n| children(n).into_iter().next().map(|(pid, _)| pid));
    (nspawn, init)
}

/// How to stop a node.
#[derive(Debug, Clone, Copy)]
pub enum PowerOff {
    /// Ask systemd in the node to shut down, pulling the power if that takes too long.
    Halt(Arch),
    /// Pull the plug: SIGKILL to the node's PID 1.
    Pull,
}

/// Stops a node; the launcher sees the powered-off marker and does not boot it again.
pub fn power_off(lab: &str, node: &str, how: PowerOff) -> Result<()> {
    let paths = LabPaths::new(lab).node(node);
    if paths.dir.is_dir() {
        fs::write(paths.powered_off(), "").into_diagnostic()?;
    }
    let Some(launcher) = launcher_pid(lab, node) else {
        return Ok(());
    };
    let gone = || launcher_pid(lab, node).is_none();
    if let PowerOff::Halt(arch) = how {
        match (arch, container_pids(launcher)) {
            // nspawn turns SIGTERM into systemd's halt signal (SIGRTMIN+3).
            (Arch::Amd64, (Some(nspawn), _)) => signal(nspawn, "TERM"),
            // qemu-user shifts real-time signals (the node would get SIGRTMIN+2, emergency
            // mode), so ask the node's systemctl from inside its namespaces instead.
            (Arch::Arm64, (_, Some(init))) => {
                let _ = Command::new("nsenter")
                    .args(["--target", &init.to_string()])
                    .args(["--mount", "--uts", "--ipc", "--net", "--pid", "--"])
                    .args(["systemctl", "poweroff", "--no-block"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            _ => {}
        }
        if wait_until(HALT_TIMEOUT, gone) {
            return Ok(());
        }
        eprintln!("node {node} did not halt within {HALT_TIMEOUT:?}; pulling the power");
    }
    match container_pids(launcher) {
        (_, Some(init)) => signal(init, "KILL"),
        (Some(nspawn), None) => signal(nspawn, "KILL"),
        (None, None) => signal(launcher, "KILL"),
    }
    if wait_until(Duration::from_secs(15), gone) {
        return Ok(());
    }
    // Last resort: take the launcher and nspawn down too (the node may be wedged in setup).
    if let (Some(nspawn), _) = container_pids(launcher) {
        signal(nspawn, "KILL");
    }
    signal(launcher, "KILL");
    if wait_until(Duration::from_secs(5), gone) {
        Ok(())
    } else {
        Err(miette!("could not stop node {node} (launcher pid {launcher})"))
    }
}

/// The node's own cgroup in every hierarchy the host mounts under /sys/fs/cgroup: the named
/// `systemd` one and (on hybrid hosts) the unified one, so nodes do not trample each other's units,
/// and each v1 controller (memory, cpu, pids, …), so the node's systemd, containerd and kubelet
/// can make cgroups for containers inside it (see `controller_binds`).
fn cgroup_dirs(lab: &str, node: &str) -> Vec<CgroupDir> {
    let Ok(entries) = fs::read_dir("/sys/fs/cgroup") else { return Vec::new() };
    let mut dirs: Vec<CgroupDir> = entries
        .flatten()
        // Co-mounted controllers appear once as a directory (`cpu,cpuacct`) and again as symlinks.
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()) && e.path().join("cgroup.procs").exists())
        .map(|e| {
            let hierarchy = e.file_name().to_string_lossy().into_owned();
            let path = e.path().join("pikube-lab").join(format!("{lab}-{node}"));
            CgroupDir { controller: !matches!(hierarchy.as_str(), "systemd" | "unified"), hierarchy, path }
        })
        .collect();
    dirs.sort_by(|a, b| a.hierarchy.cmp(&b.hierarchy));
    dirs
}

struct CgroupDir {
    hierarchy: String,
    path: std::path::PathBuf,
    /// A v1 resource controller (nspawn mounts these read-only in the node unless bound).
    controller: bool,
}

/// Creates the node's cgroup in one hierarchy and moves the launcher into it.
fn enter_cgroup(dir: &CgroupDir) -> std::io::Result<()> {
    fs::create_dir_all(&dir.path)?;
    if dir.hierarchy.contains("cpuset") {
        // A new cpuset has no CPUs or memory nodes until given its parent's.
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let parent = dir.path.parent().expect("cgroup dir has a parent");
            for level in [parent, dir.path.as_path()] {
                let from = level.parent().expect("cgroup dir has a parent").join(file);
                if fs::read_to_string(level.join(file)).is_ok_and(|v| v.trim().is_empty()) {
                    fs::write(level.join(file), fs::read_to_string(from)?.trim())?;
                }
            }
        }
    }
    fs::write(dir.path.join("cgroup.procs"), std::process::id().to_string())
}

/// Where the node's own controller subtrees are bound before its systemd starts.
const CGROUP_STAGING: &str = "/run/pikube-lab-cgroup";

/// nspawn mounts the v1 controller hierarchies read-only inside a node (after any --bind of
/// ours), so runc under containerd and kubelet could not make cgroups and no container could
/// start. The node's own subtree of each controller is bound to a staging place instead, and
/// `init_script` moves it over the read-only mount before systemd runs; it is consistent with the
/// node's cgroup namespace, which is rooted at that same subtree (the launcher moved into it).
fn controller_binds(lab: &str, node: &str) -> Vec<String> {
    cgroup_dirs(lab, node)
        .into_iter()
        .filter(|d| d.controller)
        .map(|d| format!("--bind={}:{CGROUP_STAGING}/{}", d.path.display(), d.hierarchy))
        .collect()
}

/// The node's first PID 1: writable controllers in place, then the node's own init.
fn init_script(lab: &str, node: &str) -> String {
    let hierarchies: Vec<String> =
        cgroup_dirs(lab, node).into_iter().filter(|d| d.controller).map(|d| d.hierarchy).collect();
    format!(
        "set -e; for c in {}; do mount --bind {CGROUP_STAGING}/$c /sys/fs/cgroup/$c; \
         umount {CGROUP_STAGING}/$c; rmdir {CGROUP_STAGING}/$c; done; \
         rmdir {CGROUP_STAGING} 2>/dev/null || true; exec /sbin/init",
        hierarchies.join(" ")
    )
}

/// Removes a stopped node's cgroups (children first; cgroup dirs only allow rmdir).
pub fn remove_cgroups(lab: &str, node: &str) {
    fn rmdir_tree(dir: &Path) {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    rmdir_tree(&entry.path());
                }
            }
        }
        let _ = fs::remove_dir(dir);
    }
    for dir in cgroup_dirs(lab, node) {
        rmdir_tree(&dir.path);
    }
}

/// The launcher (`pikube lab __boot LAB NODE`): runs in its own session and cgroup and boots the
/// node until it powers off; a reboot inside the node (nspawn exit 133) boots it again, with
/// the Pi firmware emulated afresh from the node's current cmdline.txt.
pub fn boot(lab: &str, node_name: &str) -> Result<()> {
    let state = LabState::require(lab)?;
    let node = state.node(node_name)?.clone();
    let paths = LabPaths::new(lab).node(node_name);
    for dir in cgroup_dirs(lab, node_name) {
        enter_cgroup(&dir)
            .into_diagnostic()
            .wrap_err_with(|| format!("moving the launcher into cgroup {}", dir.path.display()))?;
    }
    write_atomic(&paths.launcher_pid(), format!("{}\n", std::process::id()).as_bytes(), 0o644)?;
    let result = boot_loop(&state, &node, &paths);
    let _ = fs::remove_file(paths.launcher_pid());
    if let Err(e) = &result {
        eprintln!("pikube-lab: node {node_name}: {e:?}");
    }
    result
}

/// containerd's overlayfs snapshotter cannot stack on the node's overlay root; a real disk (as
/// on a Pi) underneath /var/lib/containerd lets it work as on any host. A node with an extra
/// disk keeps /var/lib/containerd a plain directory instead, for `hosts[].storage` to put on
/// that disk (systemd mounts nothing over a mount point).
fn containerd_dir(paths: &NodePaths) -> Result<Vec<String>> {
    fs::create_dir_all(paths.containerd_disk()).into_diagnostic()?;
    Ok(vec![format!("--bind={}:/var/lib/containerd", paths.containerd_disk().display())])
}

fn boot_loop(state: &LabState, node: &NodeState, paths: &NodePaths) -> Result<()> {
    let netns = net::netns_path(&net::node_netns(&state.name, &node.name));
    loop {
        if paths.powered_off().exists() {
            return Ok(());
        }
        mount_disk(state, paths)?;
        let firmware_args = match node.layout {
            Some(layout) => firmware::prepare_boot(&paths.merged(), layout, &seed(state, node), &paths.firmware())?,
            None => Vec::new(),
        };
        let extra_disk = state.extra_disk_mib.map(|mib| disk::attach(paths, mib)).transpose()?;
        let disk_args = match &extra_disk {
            Some(dev) => disk::nspawn_args(paths, &node.name, dev)?,
            None => containerd_dir(paths)?,
        };
        eprintln!("pikube-lab: booting {}", node.name);
        let mut child = Command::new("systemd-nspawn")
            .args([
                // Not --boot: PID 1 is first a shell that makes the cgroup controllers writable
                // (see `controller_binds`) and then becomes the node's systemd. Stopping the node
                // still halts systemd cleanly, as --boot would.
                "--kill-signal=SIGRTMIN+3",
                "--register=no",
                "--keep-unit",
                "--quiet",
                "--console=read-only",
                "--link-journal=no",
                "--resolv-conf=off",
                "--timezone=off",
                // The node owns its network namespace; networkd (and keepalived) need this to
                // configure it, and nspawn only grants it by itself for networks it creates.
                "--capability=CAP_NET_ADMIN",
                // runc gives each container its own session keyring; nspawn's filter denies keyctl.
                "--system-call-filter=@keyring",
                // kubelet's OOM watcher reads the kernel log (reading it needs CAP_SYSLOG).
                "--bind-ro=/dev/kmsg",
                "--capability=CAP_SYSLOG",
            ])
            .args(controller_binds(&state.name, &node.name))
            .arg(format!("--uuid={}", node.machine_id))
            .arg(format!("--network-namespace-path={netns}"))
            .arg(format!("--directory={}", paths.merged().display()))
            .arg(format!("--machine={}-{}", state.name, node.name))
            .args(&firmware_args)
            .args(&disk_args)
            // Like a real host, the node may set its own network sysctls (ip_forward,
            // bridge-nf-call-*): nspawn keeps /proc/sys/net read-only for a netns it did not make.
            .env("SYSTEMD_NSPAWN_API_VFS_WRITABLE", "network")
            .args(["/bin/sh", "-c", &init_script(&state.name, &node.name)])
            .stdin(Stdio::null())
            .spawn()
            .into_diagnostic()
            .wrap_err("running systemd-nspawn")?;
        if node.layout.is_some() {
            let nspawn = child.id();
            std::thread::spawn(move || firmware::bind_sysfs(nspawn));
        }
        let running = Arc::new(AtomicBool::new(true));
        if let Some(dev) = extra_disk {
            let (dir, running) = (paths.dev_disk(), running.clone());
            std::thread::spawn(move || disk::follow(dir, dev, running));
        }
        let status = child.wait().into_diagnostic().wrap_err("waiting for systemd-nspawn");
        running.store(false, Ordering::SeqCst);
        let status = status?;
        match status.code() {
            Some(EXIT_REBOOT) if !paths.powered_off().exists() => {
                eprintln!("pikube-lab: {} rebooting", node.name);
            }
            _ => {
                eprintln!("pikube-lab: {} stopped ({status})", node.name);
                return Ok(());
            }
        }
    }
}
