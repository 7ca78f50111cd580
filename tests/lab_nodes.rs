//! `pikube lab` against real nodes (systemd-nspawn containers in network namespaces).
//!
//! These need root and systemd-nspawn; without them each test prints `SKIP:` and passes. Every
//! test owns its lab name and subnet (tests run in parallel) and tears the lab down on drop.

mod skip;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const PIKUBE: &str = env!("CARGO_BIN_EXE_pikube");

/// Whether this machine can run lab nodes; prints a counted SKIP line when not.
fn can_run_labs() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|ids| ids.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    let nspawn = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("systemd-nspawn").is_file()));
    match (root, nspawn) {
        (true, true) => return true,
        (false, _) => skip!("lab nodes need root"),
        (_, false) => skip!("systemd-nspawn is missing (apt-get install systemd-container)"),
    }
    false
}

fn pikube(args: &[&str]) -> Output {
    Command::new(PIKUBE).args(args).output().expect("running the pikube binary")
}

fn text(out: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A lab that exists for one test and is torn down however the test ends.
struct Lab {
    name: &'static str,
}

impl Lab {
    fn up(name: &'static str, extra: &[&str]) -> Lab {
        let lab = Lab { name };
        let mut args = vec!["lab", "up", "--name", name];
        args.extend_from_slice(extra);
        let out = pikube(&args);
        assert!(out.status.success(), "lab up failed:\n{}", text(&out));
        lab
    }

    fn run(&self, args: &[&str]) -> Output {
        let (verb, rest) = args.split_first().expect("a lab subcommand");
        let mut all = vec!["lab", verb, "--name", self.name];
        all.extend_from_slice(rest);
        pikube(&all)
    }

    /// Runs `cmd` on `node` over `lab ssh` and returns its stdout; panics on failure.
    fn ssh(&self, node: &str, cmd: &str) -> String {
        let out = self.run(&["ssh", node, "--", cmd]);
        assert!(out.status.success(), "ssh {node} `{cmd}` failed:\n{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ssh_ok(&self, node: &str, cmd: &str) -> bool {
        self.run(&["ssh", node, "--", cmd]).status.success()
    }

    fn dir(&self) -> String {
        format!("/var/lib/pikube/lab/{}", self.name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = pikube(&["lab", "down", "--name", self.name]);
        if !out.status.success() {
            eprintln!("tearing down lab {} failed:\n{}", self.name, text(&out));
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn memory_enabled(cgroups: &str) -> &str {
    cgroups
        .lines()
        .find(|l| l.starts_with("memory\t"))
        .and_then(|l| l.split('\t').nth(3))
        .expect("a memory line in /proc/cgroups")
}

fn netns_of(lab: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| *ns == format!("pikube-{lab}") || ns.starts_with(&format!("pikube-{lab}-node")))
        .map(str::to_string)
        .collect()
}

#[test]
fn pi_nodes_boot_reboot_power_cycle_and_lose_network() {
    if !can_run_labs() {
        return;
    }
    let lab = Lab::up("t-pi", &["--nodes", "2", "--pi", "mixed", "--subnet", "10.77.10.0/24"]);

    // Both nodes answer over `lab ssh` and over plain ssh inside the lab network.
    let dir = lab.dir();
    for (node, address) in [("node1", "10.77.10.11"), ("node2", "10.77.10.12")] {
        assert_eq!(lab.ssh(node, "hostname").trim(), "raspberrypi");
        let out = lab.run(&[
            "exec",
            "--",
            "ssh",
            "-i",
            &format!("{dir}/id_ed25519"),
            "-o",
            &format!("UserKnownHostsFile={dir}/known_hosts"),
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            &format!("root@{address}"),
            "echo via-exec",
        ]);
        assert!(out.status.success(), "ssh via lab exec:\n{}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "via-exec");
    }
    let ids: Vec<String> =
        ["node1", "node2"].iter().map(|n| lab.ssh(n, "cat /etc/machine-id").trim().to_string()).collect();
    assert_eq!(ids[0].len(), 32, "machine id {:?}", ids[0]);
    assert_ne!(ids[0], ids[1], "machine ids must differ");

    // Emulated firmware: model, and a memory cgroup that is off without the cmdline flag.
    assert_eq!(lab.ssh("node1", "cat /sys/firmware/devicetree/base/model"), "Raspberry Pi 4 Model B Rev 1.4\0");
    assert_eq!(lab.ssh("node2", "cat /sys/firmware/devicetree/base/model"), "Raspberry Pi 3 Model B Plus Rev 1.3\0");
    lab.ssh("node1", "test -f /boot/firmware/cmdline.txt && test -f /boot/firmware/config.txt");
    lab.ssh("node2", "test -f /boot/cmdline.txt && test -f /boot/config.txt");
    for node in ["node1", "node2"] {
        assert_eq!(memory_enabled(&lab.ssh(node, "cat /proc/cgroups")), "0");
        assert!(!lab.ssh(node, "cat /proc/cmdline").contains("cgroup_enable=memory"));
    }
    let pi = lab.ssh("node1", "sudo -n true 2>&1; echo rc=$?");
    assert!(pi.contains("rc=0"), "root sudo: {pi}");
    let out = lab.run(&["ssh", "--user", "pi", "node1", "--", "sudo -n true"]);
    assert!(!out.status.success(), "pi's sudo must require the password");

    // pikube's cgroup fix: append the flags to cmdline.txt and reboot; the node comes back with
    // its disk and the memory controller on.
    lab.ssh(
        "node1",
        "sed -i '1 s/$/ cgroup_enable=memory cgroup_memory=1/' /boot/firmware/cmdline.txt \
         && touch /root/survives /run/gone-after-reboot",
    );
    let _ = lab.run(&["ssh", "node1", "--", "systemctl reboot"]);
    wait_for("node1 to come back from reboot", Duration::from_secs(120), || {
        lab.ssh_ok("node1", "test ! -e /run/gone-after-reboot")
    });
    lab.ssh("node1", "test -e /root/survives");
    assert_eq!(memory_enabled(&lab.ssh("node1", "cat /proc/cgroups")), "1");
    assert!(lab.ssh("node1", "cat /proc/cmdline").contains("cgroup_enable=memory cgroup_memory=1"));
    assert_eq!(lab.ssh("node1", "cat /etc/machine-id").trim(), ids[0]);

    // Power pull and power on: the disk state survives, the node does not reboot by itself.
    lab.ssh("node2", "echo kept > /root/disk-state");
    let out = lab.run(&["stop", "node2"]);
    assert!(out.status.success(), "lab stop:\n{}", text(&out));
    let status = String::from_utf8_lossy(&lab.run(&["status"]).stdout).into_owned();
    assert!(status.lines().any(|l| l.starts_with("node2") && l.contains("stopped")), "{status}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!lab.ssh_ok("node2", "true"), "a stopped node must stay off");
    let out = lab.run(&["start", "node2"]);
    assert!(out.status.success(), "lab start:\n{}", text(&out));
    assert_eq!(lab.ssh("node2", "cat /root/disk-state").trim(), "kept");

    // Cut and heal the network without stopping the node.
    let out = lab.run(&["cut", "node2"]);
    assert!(out.status.success(), "lab cut:\n{}", text(&out));
    assert!(!lab.ssh_ok("node2", "true"), "ssh must fail while cut");
    let status = String::from_utf8_lossy(&lab.run(&["status"]).stdout).into_owned();
    assert!(status.lines().any(|l| l.starts_with("node2") && l.contains("cut")), "{status}");
    let out = lab.run(&["heal", "node2"]);
    assert!(out.status.success(), "lab heal:\n{}", text(&out));
    wait_for("node2 to answer after heal", Duration::from_secs(30), || lab.ssh_ok("node2", "true"));
    assert_eq!(lab.ssh("node2", "cat /root/disk-state").trim(), "kept");

    // Down leaves nothing behind and is safe to repeat.
    for _ in 0..2 {
        let out = lab.run(&["down"]);
        assert!(out.status.success(), "lab down:\n{}", text(&out));
    }
    assert_eq!(netns_of("t-pi"), Vec::<String>::new());
    assert!(!Path::new(&dir).exists(), "{dir} must be gone");
}

#[test]
fn nodes_install_packages_from_the_lab_mirror() {
    if !can_run_labs() {
        return;
    }
    let lab = Lab::up("t-mirror", &["--nodes", "2", "--subnet", "10.77.11.0/24"]);
    let cluster = std::fs::read_to_string(format!("{}/cluster.yaml", lab.dir())).expect("cluster file");
    assert_eq!(
        cluster,
        "# Written by `pikube lab up` for lab \"t-mirror\" (2 nodes). Run pikube against it from inside the\n\
         # lab network:  pikube lab exec --name t-mirror -- pikube up -f /var/lib/pikube/lab/t-mirror/cluster.yaml\n\
         name: t-mirror\n\
         ssh:\n  user: root\n  key: /var/lib/pikube/lab/t-mirror/id_ed25519\n  known_hosts: /var/lib/pikube/lab/t-mirror/known_hosts\n\
         packages:\n  mirror: http://10.77.11.1:8080/debian\n  trusted: true\n\
         hosts:\n  - name: node1\n    address: 10.77.11.11\n    role: server\n  - name: node2\n    address: 10.77.11.12\n    role: agent\n"
    );
    // Non-Pi nodes: a fresh Debian hostname and real (host) kernel facts.
    assert_eq!(lab.ssh("node2", "hostname").trim(), "debian");
    assert_eq!(lab.ssh("node2", "test -e /sys/firmware/devicetree/base/model; echo $?").trim(), "1");

    // In the product, pikube's `packages.mirror` setting writes the sources; here by hand.
    let installed = lab.ssh(
        "node1",
        "echo 'deb [trusted=yes] http://10.77.11.1:8080/debian bookworm main' > /etc/apt/sources.list \
         && apt-get update -q >/dev/null \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            haproxy keepalived containerd etcd-server etcd-client dphys-swapfile >/dev/null \
         && dpkg-query -W -f '${Package} ${Status}\\n' haproxy keepalived containerd etcd-server",
    );
    assert_eq!(installed.lines().filter(|l| l.ends_with("install ok installed")).count(), 4, "{installed}");
}

#[test]
fn cloned_machine_id_is_shared_on_purpose() {
    if !can_run_labs() {
        return;
    }
    let lab = Lab::up("t-clone", &["--nodes", "2", "--subnet", "10.77.12.0/24", "--clone-machine-id"]);
    assert_eq!(lab.ssh("node1", "cat /etc/machine-id"), lab.ssh("node2", "cat /etc/machine-id"));
    // Re-running up on a running lab only re-reports; a different shape is refused.
    let again = lab.run(&["up"]);
    assert!(again.status.success(), "re-running lab up:\n{}", text(&again));
    let other = lab.run(&["up", "--nodes", "3"]);
    assert!(!other.status.success());
    // Names the lab, what differs (it has 2 nodes, not 3) and the command that rebuilds it.
    assert!(
        stderr(&other)
            .contains("lab \"t-clone\" already exists with 2 nodes; run `pikube lab down --name t-clone` first"),
        "{}",
        text(&other)
    );
}

#[test]
fn bad_requests_fail_with_a_clear_message() {
    if !can_run_labs() {
        return;
    }
    let out = pikube(&["lab", "ssh", "--name", "t-nosuchlab", "node1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no lab named \"t-nosuchlab\"; create it with `pikube lab up --name t-nosuchlab`"),
        "{}",
        text(&out)
    );
    let out = pikube(&["lab", "up", "--name", "t-badnet", "--subnet", "10.77.13.0/16"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bad --subnet \"10.77.13.0/16\": expected an IPv4 /24"), "{}", text(&out));
    let out = pikube(&["lab", "up", "--name", "Bad_Name"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bad lab name \"Bad_Name\": use 1–20 lowercase letters"), "{}", text(&out));
    let out = pikube(&["lab", "down", "--name", "t-nosuchlab"]);
    assert!(out.status.success(), "down of a missing lab:\n{}", text(&out));
}
