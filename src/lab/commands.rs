//! The `pikube lab` commands: build, inspect, control and tear down labs.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use miette::{miette, IntoDiagnostic, Result, WrapErr};

use super::state::{self, Arch, LabPaths, LabState, PiMode, Shape, MIRROR_PORT, STATE_DIR};
use super::util::{self, alive, have, is_root, read_pid, signal, wait_until};
use super::{base, disk, mirror, net, node, SshArgs, UpArgs};

/// Host tools the lab needs, with the Debian package that provides each.
const RUN_TOOLS: &[(&str, &str)] = &[
    ("systemd-nspawn", "systemd-container"),
    ("ip", "iproute2"),
    ("ssh-keygen", "openssh-client"),
    ("ssh", "openssh-client"),
    ("setsid", "util-linux"),
    ("mount", "mount"),
];
const BUILD_TOOLS: &[(&str, &str)] = &[
    ("debootstrap", "debootstrap"),
    ("dpkg-scanpackages", "dpkg-dev"),
    ("apt-ftparchive", "apt-utils"),
    ("apt-get", "apt"),
];

fn preflight(tools: &[(&str, &str)]) -> Result<()> {
    if !is_root() {
        return Err(miette!(
            "`pikube lab` creates network namespaces, mounts and containers: run it as root (e.g. with sudo)"
        ));
    }
    let missing: Vec<&(&str, &str)> = tools.iter().filter(|(p, _)| !have(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<&str> = missing.iter().map(|(_, pkg)| *pkg).collect();
    packages.dedup();
    Err(miette!(
        "missing {}; install with: apt-get install -y {}",
        missing.iter().map(|(p, _)| *p).collect::<Vec<_>>().join(", "),
        packages.join(" ")
    ))
}

/// Lab names become netns, machine and directory names: keep them short and plain, and unable
/// to collide with another lab's node namespaces (`pikube-<lab>-<node>`).
fn check_name(name: &str) -> Result<()> {
    let plain = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if name.is_empty()
        || name.len() > 20
        || !plain
        || !name.starts_with(|c: char| c.is_ascii_lowercase())
        || name.ends_with('-')
        || name.contains("-node")
    {
        return Err(miette!(
            "bad lab name {name:?}: use 1–20 lowercase letters, digits and '-', starting with a letter (and not containing \"-node\")"
        ));
    }
    Ok(())
}

/// `10.77.0.0/24` → `10.77.0`.
fn parse_subnet(subnet: &str) -> Result<String> {
    let bad = || miette!("bad --subnet {subnet:?}: expected an IPv4 /24 such as 10.77.0.0/24");
    let (addr, len) = net::parse_cidr(subnet).ok_or_else(bad)?;
    if len != 24 || addr & 0xff != 0 {
        return Err(bad());
    }
    let [a, b, c, _] = addr.to_be_bytes();
    Ok(format!("{a}.{b}.{c}"))
}

/// A kubeadm lab node's own disk (sparse: it takes only what the node writes).
const KUBEADM_DISK_MIB: u64 = 16384;

pub(super) fn up(args: UpArgs) -> Result<()> {
    let name = args.lab.name.as_str();
    check_name(name)?;
    preflight(RUN_TOOLS)?;
    let existing = LabState::load(name)?;
    // Tool checks come before a new lab is recorded, so a missing package leaves nothing behind.
    let arch = existing.as_ref().map(|lab| lab.arch).unwrap_or(args.arch.unwrap_or(Arch::Amd64));
    if !base::path(arch).is_dir() || !mirror::root(arch).join("debian").is_dir() {
        preflight(BUILD_TOOLS)?;
    }
    if arch == Arch::Arm64 {
        check_arm64_emulation()?;
    }
    let mut lab = match existing {
        Some(lab) => {
            check_same_shape(&lab, &args)?;
            println!("lab {name:?} exists; making sure it is up");
            lab
        }
        None => {
            let mut lab = new_lab(name, &args)?;
            // kubelet judges disk pressure by the disks under its own state and containerd's
            // (pods stop below 15% free). On the host's disk a kubeadm lab would stop whenever
            // the host filled up, so each node gets a disk of its own, like a Pi's SD card.
            if args.kubeadm.is_some() && args.disk_size.is_none() {
                lab.disk_mib = Some(KUBEADM_DISK_MIB);
            }
            lab.extra_disk_mib = args.extra_disk;
            lab
        }
    };
    // Kubernetes settings only shape the cluster file, so a re-run may change them.
    if let Some(dir) = &args.k3s_artifacts {
        let dir =
            fs::canonicalize(dir).into_diagnostic().wrap_err_with(|| format!("--k3s-artifacts {}", dir.display()))?;
        lab.kubernetes.artifacts = Some(dir.display().to_string());
        lab.kubernetes.version = Some(args.k3s_version.clone().unwrap_or_else(|| "v1.31.4+k3s1".into()));
    } else if let Some(dir) = &args.kubeadm {
        let dir = fs::canonicalize(dir).into_diagnostic().wrap_err_with(|| format!("--kubeadm {}", dir.display()))?;
        lab.kubernetes.artifacts = Some(dir.display().to_string());
        lab.kubernetes.version = Some(args.kubeadm_version.clone().unwrap_or_else(|| "v1.34.4".into()));
        lab.kubernetes.kubeadm = true;
    } else if let Some(v) = &args.k3s_version {
        lab.kubernetes.version = Some(v.clone());
    }
    if args.vip {
        lab.kubernetes.vip = true;
    }
    if args.disk_size.is_some() {
        lab.disk_mib = args.disk_size;
    }
    lab.save()?;
    let started = Instant::now();
    base::ensure(lab.arch)?;
    let mirror_root = mirror::ensure(lab.arch)?;
    let paths = LabPaths::new(name);

    net::ensure_lab(name, &lab.bridge_ip())?;
    for node in &lab.nodes {
        net::ensure_node(name, &node.name, lab.outside_address(node))?;
    }
    ensure_mirror_server(&lab, &mirror_root)?;
    let client_pub = ensure_client_key(&paths)?;

    let boot_started = Instant::now();
    for node in &lab.nodes {
        node::provision(&lab, node, &client_pub).wrap_err_with(|| format!("preparing node {}", node.name))?;
        let running = node::launcher_pid(name, &node.name).is_some();
        node::power_on(&lab, node)?;
        println!(
            "{}  {}  {}{}{}: {}",
            node.name,
            node.address,
            node.role,
            node.layout.map(|l| format!(", Pi ({})", l.name())).unwrap_or_default(),
            lab.extra_disk_mib
                .map(|mib| format!(", extra disk /dev/disk/by-id/{} ({mib} MiB)", disk::by_id(&node.name)))
                .unwrap_or_default(),
            if running { "running" } else { "booting" }
        );
    }
    let mut known_hosts = String::new();
    for node in &lab.nodes {
        known_hosts.push_str(&node::known_host(&lab, node)?);
    }
    util::write_atomic(&paths.known_hosts(), known_hosts.as_bytes(), 0o644)?;
    util::write_atomic(&paths.cluster_file(), cluster_file(&lab).as_bytes(), 0o644)?;

    let timeout = args.timeout.unwrap_or(ssh_timeout(lab.arch));
    wait_for_nodes(&lab, &lab.nodes.iter().collect::<Vec<_>>(), timeout)?;
    println!(
        "{} answer SSH ({:.1}s after boot, {:.1}s in total)",
        plural(lab.nodes.len(), "node"),
        boot_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    println!("cluster file: {}", paths.cluster_file().display());
    println!("known_hosts:  {}", paths.known_hosts().display());
    println!(
        "run pikube against it from inside the lab network:\n  {}\nlog into a node:\n  pikube lab ssh{} node1",
        pikube_hint(&lab),
        name_flag(name)
    );
    Ok(())
}

/// Re-running `lab up` must not silently build something other than what was asked for.
fn check_same_shape(lab: &LabState, args: &UpArgs) -> Result<()> {
    let mut diffs = Vec::new();
    if args.nodes.is_some_and(|n| n != lab.nodes.len()) {
        diffs.push(format!("{} nodes", lab.nodes.len()));
    }
    if args.servers.is_some_and(|s| s != lab.servers) {
        diffs.push(format!("{} servers", lab.servers));
    }
    if args.loadbalancers.is_some_and(|l| l != lab.loadbalancers) {
        diffs.push(format!("{} load balancers", lab.loadbalancers));
    }
    if args.pi.is_some_and(|p| p != lab.pi) {
        diffs.push(format!("--pi {:?}", lab.pi).to_lowercase());
    }
    if args.arch.is_some_and(|a| a != lab.arch) {
        diffs.push(format!("--arch {}", lab.arch.debian()));
    }
    if let Some(subnet) = &args.subnet {
        if parse_subnet(subnet)? != lab.prefix {
            diffs.push(format!("subnet {}.0/24", lab.prefix));
        }
    }
    if args.clone_machine_id != lab.clone_machine_id && args.clone_machine_id {
        diffs.push("distinct machine ids".to_string());
    }
    if args.extra_disk.is_some() && args.extra_disk != lab.extra_disk_mib {
        diffs.push(lab.extra_disk_mib.map_or("no extra disks".into(), |mib| format!("--extra-disk {mib}")));
    }
    if diffs.is_empty() {
        return Ok(());
    }
    Err(miette!(
        "lab {:?} already exists with {}; run `pikube lab down{}` first to rebuild it",
        lab.name,
        diffs.join(", "),
        name_flag(&lab.name)
    ))
}

fn new_lab(name: &str, args: &UpArgs) -> Result<LabState> {
    let nodes = args.nodes.unwrap_or(3);
    let servers = args.servers.unwrap_or(1);
    if !(1..=100).contains(&nodes) {
        return Err(miette!("--nodes must be between 1 and 100"));
    }
    if servers == 0 || servers > nodes {
        return Err(miette!("--servers must be between 1 and the number of nodes ({nodes})"));
    }
    let prefix = parse_subnet(args.subnet.as_deref().unwrap_or("10.77.0.0/24"))?;
    net::check_subnet_free(&prefix)?;
    if let Some(other) = lab_using(&prefix)? {
        return Err(miette!("subnet {prefix}.0/24 is used by lab {other:?}; choose another with --subnet"));
    }
    if args.extra_disk.is_some_and(|mib| !(1..=1 << 20).contains(&mib)) {
        return Err(miette!("--extra-disk is a size in MiB, between 1 and 1048576"));
    }
    let loadbalancers = args.loadbalancers.unwrap_or(0);
    if servers + loadbalancers > nodes {
        return Err(miette!("--servers plus --loadbalancers must not exceed --nodes ({nodes})"));
    }
    if loadbalancers > 0 && args.vip {
        return Err(miette!("choose --loadbalancers or --vip for the API endpoint, not both"));
    }
    let lab = LabState::new(
        name,
        &prefix,
        Shape {
            nodes,
            servers,
            loadbalancers,
            pi: args.pi.unwrap_or(PiMode::None),
            arch: args.arch.unwrap_or(Arch::Amd64),
            clone_machine_id: args.clone_machine_id,
        },
    );
    // Recorded before anything is built, so `lab down` can clean up whatever part exists.
    lab.save()?;
    println!(
        "creating lab {name:?}: {} ({servers} server{}) on {prefix}.0/24, {}",
        plural(nodes, "node"),
        if servers == 1 { "" } else { "s" },
        lab.arch.debian()
    );
    Ok(lab)
}

/// Another lab already on `prefix`, if any.
fn lab_using(prefix: &str) -> Result<Option<String>> {
    let Ok(entries) = fs::read_dir(STATE_DIR) else {
        return Ok(None);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Ok(Some(lab)) = LabState::load(&name) {
            if lab.prefix == prefix {
                return Ok(Some(name));
            }
        }
    }
    Ok(None)
}

/// arm64 nodes run under qemu-user through binfmt_misc; the `F` (fix binary) flag makes the
/// interpreter usable inside node trees that do not contain it.
fn check_arm64_emulation() -> Result<()> {
    if !have("qemu-aarch64-static") {
        return Err(miette!(
            "arm64 nodes need qemu-user emulation; install with: \
             apt-get install -y qemu-user-static binfmt-support"
        ));
    }
    let registration = fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64").unwrap_or_default();
    let fixed = registration.lines().find_map(|l| l.strip_prefix("flags: ")).is_some_and(|flags| flags.contains('F'));
    if !registration.starts_with("enabled") || !fixed {
        return Err(miette!(
            "qemu-aarch64 is not registered with binfmt_misc (with the F flag); run: \
             mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; update-binfmts --enable qemu-aarch64"
        ));
    }
    Ok(())
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn name_flag(name: &str) -> String {
    if name == "lab" {
        String::new()
    } else {
        format!(" --name {name}")
    }
}

fn pikube_hint(lab: &LabState) -> String {
    format!(
        "pikube lab exec{} -- pikube up -f {}",
        name_flag(&lab.name),
        LabPaths::new(&lab.name).cluster_file().display()
    )
}

fn kubernetes_section(lab: &LabState) -> String {
    let k = &lab.kubernetes;
    let Some(version) = &k.version else { return String::new() };
    let mut out = format!("kubernetes:\n  version: {version}\n");
    if k.kubeadm {
        out.push_str("  distribution: kubeadm\n");
    }
    if let Some(dir) = &k.artifacts {
        let _ = writeln!(out, "  artifacts: {dir}");
    }
    if lab.loadbalancers > 0 {
        out.push_str("  endpoint:\n    mode: loadbalancer\n");
        if lab.loadbalancers > 1 {
            let _ = writeln!(out, "    address: {}.10", lab.prefix);
        }
    } else if k.vip {
        let _ = writeln!(out, "  endpoint:\n    mode: vip\n    address: {}.10", lab.prefix);
    }
    out
}

/// The lab in pikube's cluster file format.
fn cluster_file(lab: &LabState) -> String {
    let paths = LabPaths::new(&lab.name);
    let mut out = format!(
        "# Written by `pikube lab up` for lab \"{}\" ({}). Run pikube against it from inside the\n\
         # lab network:  {}\n\
         name: {}\nssh:\n  user: root\n  key: {}\n  known_hosts: {}\npackages:\n  mirror: {}\n  trusted: true\n{}hosts:\n",
        lab.name,
        plural(lab.nodes.len(), "node"),
        pikube_hint(lab),
        lab.name,
        paths.client_key().display(),
        paths.known_hosts().display(),
        lab.mirror_url(),
        kubernetes_section(lab),
    );
    for node in &lab.nodes {
        let _ = write!(out, "  - name: {}\n    address: {}\n    role: {}\n", node.name, node.address, node.role);
    }
    out
}

fn ensure_client_key(paths: &LabPaths) -> Result<String> {
    let key = paths.client_key();
    let public = key.with_extension("pub");
    if !key.exists() || !public.exists() {
        let _ = fs::remove_file(&key);
        let _ = fs::remove_file(&public);
        util::run(
            Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "pikube-lab"]).arg("-f").arg(&key),
        )
        .wrap_err("generating the lab client key")?;
    }
    fs::read_to_string(&public).into_diagnostic().wrap_err_with(|| format!("reading {}", public.display()))
}

fn mirror_server_pid(lab: &str) -> Option<u32> {
    let pid = read_pid(&LabPaths::new(lab).mirror_pid())?;
    let pid_file = LabPaths::new(lab).mirror_pid();
    alive(pid, &["__serve", &pid_file.to_string_lossy()]).then_some(pid)
}

/// Starts the mirror server inside the lab netns (the only place the bridge address exists).
fn ensure_mirror_server(lab: &LabState, root: &Path) -> Result<()> {
    if mirror_server_pid(&lab.name).is_some() {
        return Ok(());
    }
    let paths = LabPaths::new(&lab.name);
    let _ = fs::remove_file(paths.mirror_pid());
    let exe = util::self_exe()?;
    let argv: Vec<String> = [
        "ip",
        "netns",
        "exec",
        &net::lab_netns(&lab.name),
        &exe,
        "lab",
        "__serve",
        &root.to_string_lossy(),
        &format!("{}:{MIRROR_PORT}", lab.bridge_ip()),
        &paths.mirror_pid().to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    util::spawn_detached(&argv, &paths.mirror_log())?;
    if !wait_until(Duration::from_secs(10), || mirror_server_pid(&lab.name).is_some()) {
        return Err(miette!("the lab mirror server did not start; see {}", paths.mirror_log().display()));
    }
    println!("package mirror: {}", lab.mirror_url());
    Ok(())
}

/// Waits (from inside the lab netns) until each node's sshd sends its banner.
fn wait_for_nodes(lab: &LabState, nodes: &[&state::NodeState], timeout: u64) -> Result<()> {
    let exe = util::self_exe()?;
    let out = Command::new("ip")
        .args(["netns", "exec", &net::lab_netns(&lab.name)])
        .arg(exe)
        .args(["lab", "__wait-ssh", "--timeout", &timeout.to_string()])
        .args(nodes.iter().map(|n| n.address.as_str()))
        .stdin(Stdio::null())
        .output()
        .into_diagnostic()
        .wrap_err("waiting for the nodes' SSH")?;
    if out.status.success() {
        return Ok(());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pending: Vec<&str> = stdout.lines().filter_map(|l| l.strip_prefix("pending ")).collect();
    let mut report = String::new();
    for node in nodes.iter().filter(|n| pending.contains(&n.address.as_str())) {
        let running = node::launcher_pid(&lab.name, &node.name).is_some();
        let _ = write!(
            report,
            "\n  {} ({}): {}; console: {}",
            node.name,
            node.address,
            if running { "running but sshd is not answering" } else { "not running" },
            LabPaths::new(&lab.name).node(&node.name).console_log().display()
        );
        // Tests tear the lab down on failure, so what the node says goes into the error.
        let console = fs::read_to_string(LabPaths::new(&lab.name).node(&node.name).console_log()).unwrap_or_default();
        let said = if running { node::boot_diagnosis(&lab.name, &node.name) } else { String::new() };
        let tail: Vec<&str> = console.lines().rev().take(6).collect();
        for line in said.lines().chain(tail.into_iter().rev()) {
            let _ = write!(report, "\n      {}", crate::term::clean(line));
        }
    }
    if report.is_empty() {
        return Err(miette!("waiting for the nodes' SSH failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Err(miette!("nodes did not answer SSH within {timeout}s:{report}"))
}

pub(super) fn down(name: &str) -> Result<()> {
    check_name(name)?;
    preflight(&[("ip", "iproute2"), ("mount", "mount")])?;
    let paths = LabPaths::new(name);
    let state = LabState::load(name)?;
    // Without a state file, assume native nodes: a halt that does not work ends in a power pull.
    let halt = node::PowerOff::Halt(state.as_ref().map_or(Arch::Amd64, |lab| lab.arch));
    let nodes: Vec<String> = match state {
        Some(lab) => lab.nodes.into_iter().map(|n| n.name).collect(),
        // No state file: whatever node directories a crash left behind.
        None => fs::read_dir(paths.dir.join("nodes"))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default(),
    };
    let lab_netns_exists = Path::new(&net::netns_path(&net::lab_netns(name))).exists();
    if !paths.dir.exists() && !lab_netns_exists {
        println!("lab {name:?} is not up; nothing to do");
        return Ok(());
    }
    // Halt nodes in parallel: each clean halt takes a few seconds.
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = nodes.iter().map(|node| scope.spawn(move || node::power_off(name, node, halt))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(miette!("halting a node panicked")))).collect()
    });
    for result in results {
        result?;
    }
    if let Some(pid) = mirror_server_pid(name) {
        signal(pid, "TERM");
        if !wait_until(Duration::from_secs(5), || mirror_server_pid(name).is_none()) {
            signal(pid, "KILL");
        }
    }
    for node in &nodes {
        node::unmount_disk(&paths.node(node))?;
        disk::detach(&paths.node(node))?;
        node::remove_cgroups(name, node);
    }
    net::delete(name, &nodes)?;
    if paths.dir.exists() {
        if util::has_mounts_below(&paths.dir) {
            return Err(miette!(
                "something is still mounted under {}; not deleting it (see /proc/self/mountinfo)",
                paths.dir.display()
            ));
        }
        fs::remove_dir_all(&paths.dir)
            .into_diagnostic()
            .wrap_err_with(|| format!("deleting {}", paths.dir.display()))?;
    }
    println!("lab {name:?} is down ({} removed)", plural(nodes.len(), "node"));
    Ok(())
}

pub(super) fn status(name: &str) -> Result<()> {
    let lab = LabState::require(name)?;
    let mirror = if mirror_server_pid(name).is_some() { "serving" } else { "stopped" };
    println!("lab {name:?} ({}, {}.0/24, mirror {} {mirror})", lab.arch.debian(), lab.prefix, lab.mirror_url());
    println!("{:<8} {:<15} {:<12} {:<8} {:<8} PI", "NODE", "ADDRESS", "ROLE", "STATE", "PID");
    for node in &lab.nodes {
        let pid = node::launcher_pid(name, &node.name);
        let state = match (pid, net::link_up(name, &node.name)) {
            (None, _) => "stopped",
            (Some(_), Some(false)) => "cut",
            (Some(_), _) => "running",
        };
        println!(
            "{:<8} {:<15} {:<12} {:<8} {:<8} {}",
            node.name,
            node.address,
            node.role,
            state,
            pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            node.layout.map(|l| l.name()).unwrap_or("-")
        );
    }
    Ok(())
}

/// Checks that the lab's network exists (commands that act inside it need it).
fn require_network(name: &str) -> Result<LabState> {
    let lab = LabState::require(name)?;
    if !Path::new(&net::netns_path(&net::lab_netns(name))).exists() {
        return Err(miette!("lab {name:?} has no network (host rebooted?); run `pikube lab up{}`", name_flag(name)));
    }
    Ok(lab)
}

pub(super) fn ssh(args: SshArgs) -> Result<()> {
    preflight(&[("ip", "iproute2"), ("ssh", "openssh-client")])?;
    let name = args.lab.name.as_str();
    let lab = require_network(name)?;
    let node = lab.node(&args.node)?;
    let paths = LabPaths::new(name);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net::lab_netns(name), "ssh", "-i"])
        .arg(paths.client_key())
        .args(["-o", "IdentitiesOnly=yes", "-o"])
        .arg(format!("UserKnownHostsFile={}", paths.known_hosts().display()))
        .args([
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
            "-l",
            &args.user,
            &node.address,
        ]);
    if !args.command.is_empty() {
        cmd.arg("--").args(&args.command);
    }
    pass_through(cmd)
}

pub(super) fn exec(name: &str, command: &[String]) -> Result<()> {
    preflight(&[("ip", "iproute2")])?;
    require_network(name)?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net::lab_netns(name)]).args(command);
    pass_through(cmd)
}

/// Runs an interactive child with our stdio and exits with its status, so `lab ssh`/`lab exec`
/// behave like the command they wrap.
fn pass_through(mut cmd: Command) -> Result<()> {
    let mut child = cmd.spawn().map_err(|e| miette!("could not run {:?}: {e}", cmd.get_program()))?;
    // Like system(3): Ctrl-C belongs to the child (it gets it from the terminal too); we wait
    // for it to finish cleanly and pass its status on instead of dying first.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    let status = child.wait().map_err(|e| miette!("waiting for {:?}: {e}", cmd.get_program()))?;
    if status.success() {
        return Ok(());
    }
    // A child killed by a signal exits like a shell reports it: 128 + signal number.
    std::process::exit(status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1))
}

pub(super) fn stop(name: &str, node_name: &str) -> Result<()> {
    preflight(&[])?;
    let lab = LabState::require(name)?;
    lab.node(node_name)?;
    if node::launcher_pid(name, node_name).is_none() {
        println!("{node_name} is already off");
        return Ok(());
    }
    node::power_off(name, node_name, node::PowerOff::Pull)?;
    println!("{node_name}: power pulled");
    Ok(())
}

pub(super) fn start(name: &str, node_name: &str) -> Result<()> {
    preflight(RUN_TOOLS)?;
    let lab = require_network(name)?;
    let node = lab.node(node_name)?;
    if node::launcher_pid(name, node_name).is_some() {
        println!("{node_name} is already running");
        return Ok(());
    }
    net::ensure_node(name, node_name, lab.outside_address(node))?;
    ensure_mirror_server(&lab, &mirror::root(lab.arch))?;
    node::power_on(&lab, node)?;
    let timeout = ssh_timeout(lab.arch);
    wait_for_nodes(&lab, &[node], timeout)?;
    println!("{node_name}: up ({})", node.address);
    Ok(())
}

/// Replaces a node's SD card: power pulled, its disk reset to the base image with a fresh
/// identity (new SSH host key, the image's hostname), powered on. The lab's known_hosts keeps
/// the old key, as a user's does; the new key's fingerprint is printed to check it against.
pub(super) fn wipe(name: &str, node_name: &str) -> Result<()> {
    preflight(RUN_TOOLS)?;
    let lab = require_network(name)?;
    let node = lab.node(node_name)?;
    if node::launcher_pid(name, node_name).is_some() {
        node::power_off(name, node_name, node::PowerOff::Pull)?;
    }
    node::wipe_disk(name, node_name)?;
    let paths = LabPaths::new(name);
    node::provision(&lab, node, &ensure_client_key(&paths)?)?;
    net::ensure_node(name, node_name, lab.outside_address(node))?;
    ensure_mirror_server(&lab, &mirror::root(lab.arch))?;
    node::power_on(&lab, node)?;
    let timeout = ssh_timeout(lab.arch);
    wait_for_nodes(&lab, &[node], timeout)?;
    let fingerprint =
        Command::new("ssh-keygen").arg("-lf").arg(paths.node(node_name).host_key().with_extension("pub")).output();
    let fingerprint = fingerprint.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    println!("{node_name}: new card, up ({}); new host key {fingerprint}", node.address);
    println!(
        "  the old key is still in {}: ssh-keygen -R {} -f {}",
        paths.known_hosts().display(),
        node.address,
        paths.known_hosts().display()
    );
    Ok(())
}

/// Sets a Pi-like node's emulated firmware readings; the node sees them at once.
pub(super) fn pi(args: super::PiArgs) -> Result<()> {
    let lab = LabState::require(&args.lab.name)?;
    let node = lab.node(&args.node)?;
    if node.layout.is_none() {
        return Err(miette!("{} is not Pi-like; create the lab with `--pi bookworm` (or legacy, mixed)", node.name));
    }
    let dir = LabPaths::new(&lab.name).node(&node.name).firmware();
    super::firmware::set_readings(&dir, args.throttled, args.temp)?;
    let (throttled, temp) = super::firmware::readings(&dir);
    println!("{}: get_throttled 0x{throttled:x}, SoC {temp:.1} °C", node.name);
    Ok(())
}

pub(super) fn set_link(name: &str, node_name: &str, up: bool) -> Result<()> {
    preflight(&[("ip", "iproute2")])?;
    let lab = require_network(name)?;
    lab.node(node_name)?;
    net::set_link(name, node_name, up)?;
    println!("{node_name}: network {}", if up { "restored" } else { "cut" });
    Ok(())
}

/// Seconds to wait for booting nodes to answer SSH. A node answers in a few seconds when the
/// machine is idle; the bound is wide because CI boots several labs at once on 2 cores.
fn ssh_timeout(arch: Arch) -> u64 {
    match arch {
        Arch::Amd64 => 300,
        Arch::Arm64 => 900,
    }
}
