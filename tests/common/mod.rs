//! Test harness around `pikube lab`: real nodes, torn down when the test ends.
#![allow(dead_code)] // each test binary uses a different part of it

use std::path::PathBuf;
use std::process::{Command, Output};

#[path = "../skip/mod.rs"]
mod skip;

pub const BIN: &str = env!("CARGO_BIN_EXE_pikube");

/// Returns why lab tests cannot run here, or None when they can.
pub fn lab_unavailable() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
    });
    if uid.as_deref() != Some("0") {
        return Some("lab tests need root (network namespaces, systemd-nspawn)".into());
    }
    for tool in ["systemd-nspawn", "debootstrap", "ip"] {
        let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()));
        if !found {
            return Some(format!("{tool} is not installed (run .ci/run or scripts/test to install the lab packages)"));
        }
    }
    None
}

/// Skips the calling test with a visible reason when lab tests cannot run.
#[macro_export]
macro_rules! require_lab {
    () => {
        if let Some(why) = common::lab_unavailable() {
            $crate::skip!(return "{why}");
        }
    };
}

pub struct Lab {
    pub name: String,
}

impl Lab {
    /// `pikube lab up` with the given extra flags; panics with the lab's output on failure.
    pub fn up(name: &str, subnet_octet: u8, args: &[&str]) -> Lab {
        // Clear leftovers of an interrupted earlier run of the same test.
        let _ = Command::new(BIN).args(["lab", "down", "--name", name]).output();
        let lab = Lab { name: name.to_string() };
        let subnet = format!("10.77.{subnet_octet}.0/24");
        let out = Command::new(BIN)
            .args(["lab", "up", "--name", name, "--subnet", &subnet])
            .args(args)
            .output()
            .expect("run pikube lab up");
        assert!(out.status.success(), "lab up failed:\n{}", text(&out));
        lab
    }

    pub fn dir(&self) -> PathBuf {
        PathBuf::from("/var/lib/pikube/lab").join(&self.name)
    }

    pub fn cluster_file(&self) -> PathBuf {
        self.dir().join("cluster.yaml")
    }

    /// Runs pikube inside the lab network (as a user would with `pikube lab exec`).
    pub fn pikube(&self, args: &[&str]) -> Output {
        self.pikube_env(args, &[])
    }

    pub fn pikube_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(["lab", "exec", "--name", &self.name, "--", BIN]).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run pikube in the lab")
    }

    /// Runs a shell command on a node as root; returns (exit ok, stdout). `false` also means
    /// "SSH failed": never use it for a negative check (see [`Lab::status`], [`Lab::absent`]).
    pub fn ssh(&self, node: &str, script: &str) -> (bool, String) {
        let out = Command::new(BIN)
            .args(["lab", "ssh", "--name", &self.name, node, "--", script])
            .output()
            .expect("run lab ssh");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Like `ssh` but panics unless the command succeeds.
    pub fn sh(&self, node: &str, script: &str) -> String {
        let out = Command::new(BIN)
            .args(["lab", "ssh", "--name", &self.name, node, "--", script])
            .output()
            .expect("run lab ssh");
        assert!(out.status.success(), "on {node}: `{script}` failed:\n{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The exit status of `script` on `node` (its output discarded). The status travels on
    /// stdout of a command that itself succeeds, so an unreachable node (`lab ssh` exits 255)
    /// panics instead of passing for a command that failed.
    pub fn status(&self, node: &str, script: &str) -> i32 {
        let said = self.sh(node, &format!("( {script} ) >/dev/null 2>&1; echo \"exit=$?\""));
        said.lines()
            .last()
            .and_then(|l| l.strip_prefix("exit="))
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("on {node}: no exit status from `{script}`: {said:?}"))
    }

    /// Whether nothing (not even a dangling link) is at `path` on `node`, which must answer:
    /// "absent" is never concluded from a node that is down or unreachable.
    pub fn absent(&self, node: &str, path: &str) -> bool {
        let quoted = format!("'{}'", path.replace('\'', r"'\''"));
        match self.status(node, &format!("test -e {quoted} || test -L {quoted}")) {
            0 => false,
            1 => true,
            other => panic!("on {node}: `test -e {path}` exited {other}"),
        }
    }

    /// Which of `nodes` (all powered on: each must answer) hold `address` on an interface.
    pub fn holders_of<'a>(&self, nodes: &[&'a str], address: &str) -> Vec<&'a str> {
        nodes.iter().copied().filter(|n| self.sh(n, "ip -4 -o addr show").contains(&format!(" {address}/"))).collect()
    }

    /// Pins `version` in the lab's cluster file (its `  version:` line).
    pub fn pin_version(&self, version: &str) {
        let file = self.cluster_file();
        let text = std::fs::read_to_string(&file).unwrap();
        let line = text.lines().find(|l| l.starts_with("  version: ")).expect("a version line").to_string();
        std::fs::write(&file, text.replace(&line, &format!("  version: {version}"))).unwrap();
    }

    pub fn lab(&self, verb: &str, node: &str) {
        let out = Command::new(BIN).args(["lab", verb, "--name", &self.name, node]).output().expect("run lab verb");
        assert!(out.status.success(), "lab {verb} {node} failed:\n{}", text(&out));
    }

    /// After `lab wipe` (a new card, a new SSH host key): the user drops the old key from
    /// known_hosts and trusts the new one after checking it against the key the lab made (what
    /// `lab wipe` prints, as a user reads it off the new card).
    pub fn trust_new_host_key(&self, node: &str, address: &str) {
        let known_hosts = self.dir().join("known_hosts");
        let keygen = Command::new("ssh-keygen").args(["-R", address, "-f"]).arg(&known_hosts).output().unwrap();
        assert!(keygen.status.success(), "{}", text(&keygen));
        let mut scanned = String::new();
        let (timeout, every) = (std::time::Duration::from_secs(120), std::time::Duration::from_secs(2));
        wait_for("the wiped node's sshd", timeout, every, || {
            scanned = stdout(&self.exec("ssh-keyscan", &["-t", "ed25519", address]));
            (!scanned.trim().is_empty()).then_some(()).ok_or_else(String::new)
        });
        let made = std::fs::read_to_string(self.dir().join(format!("nodes/{node}/ssh_host_ed25519_key.pub"))).unwrap();
        let key = |l: &str, i: usize| l.split_whitespace().nth(i).map(String::from);
        assert_eq!(scanned.lines().find_map(|l| key(l, 2)), made.lines().find_map(|l| key(l, 1)), "{scanned}");
        let mut kh = std::fs::read_to_string(&known_hosts).unwrap();
        kh.push_str(&format!("{}\n", scanned.trim()));
        std::fs::write(&known_hosts, kh).unwrap();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::env::var_os("PIKUBE_KEEP_LAB").is_none() {
            let _ = Command::new(BIN).args(["lab", "down", "--name", &self.name]).output();
        }
    }
}

/// `pikube status`'s HOST … NODE columns of one host's row (VERSION and the health columns follow).
pub fn status_row(table: &str, host: &str) -> String {
    let cut = table.lines().next().and_then(|header| header.find(" VERSION")).unwrap_or(usize::MAX);
    let line = table.lines().find(|l| l.split_whitespace().next() == Some(host)).unwrap_or_default();
    line[..cut.min(line.len())].split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The report's `HOST (ADDRESS): …` section for one host.
pub fn section(report: &str, host: &str) -> String {
    let mut lines = report.lines().skip_while(|l| !l.starts_with(&format!("{host} (")));
    let head = lines.next().unwrap_or_else(|| panic!("{host} missing from the report:\n{report}"));
    std::iter::once(head).chain(lines.take_while(|l| l.starts_with("  "))).collect::<Vec<_>>().join("\n")
}

/// A command's exit, progress (stderr) and report (stdout), the report last: CI keeps the end
/// of a long failure, and the report says which node failed and why.
pub fn text(out: &Output) -> String {
    format!(
        "exit: {:?}\n--- stderr\n{}--- stdout\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An airgap artifact directory holding the k3s STAND-IN (standin/k3s, a labelled test double:
/// real k3s cannot be downloaded here) exactly as a user would lay out real release files.
pub fn standin_artifacts() -> PathBuf {
    standin_release("v1.31.4+k3s1")
}

/// The stand-in built as release `version` (set at build time, as k3s's own version is), in
/// its own artifact directory; for upgrade tests.
pub fn standin_release(version: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, dir)) = built.iter().find(|(v, _)| v == version) {
        return dir.clone();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/standin-artifacts").join(version);
    std::fs::create_dir_all(&dir).unwrap();
    // Test binaries run in parallel (scripts/test): one build-and-copy at a time across
    // processes, in a target dir of its own so the stand-in's own tests keep their binary.
    let lock = std::fs::File::create(root.join("target/standin-artifacts/.lock")).unwrap();
    // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) }, 0);
    let build_dir = root.join("target/standin-build");
    let out = Command::new(env!("CARGO"))
        .args(["build", "--locked", "--quiet", "--manifest-path"])
        .arg(root.join("standin/k3s/Cargo.toml"))
        .arg("--target-dir")
        .arg(&build_dir)
        .env("STANDIN_K3S_VERSION", version)
        .output()
        .expect("run cargo build for the k3s stand-in");
    assert!(out.status.success(), "building the k3s stand-in failed:\n{}", text(&out));
    std::fs::copy(build_dir.join("debug/k3s"), dir.join("k3s")).unwrap();
    let sum = Command::new("sha256sum").arg("k3s").current_dir(&dir).output().expect("sha256sum");
    std::fs::write(dir.join("sha256sum-amd64.txt"), &sum.stdout).unwrap();
    built.push((version.to_string(), dir.clone()));
    dir
}

/// `kubectl` on PATH (the real client), or None with a visible SKIP line.
pub fn real_kubectl() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("kubectl")).find(|k| k.exists()));
    if found.is_none() {
        crate::skip!("the real kubectl client is not installed (scripts/test installs kubernetes-client)");
    }
    found
}

impl Lab {
    /// Runs a program inside the lab network (like `pikube lab exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(["lab", "exec", "--name", &self.name, "--", program])
            .args(args)
            .output()
            .expect("run lab exec")
    }

    /// The real kubectl against the cluster's kubeconfig, from inside the lab network.
    pub fn kubectl(&self, kubectl: &std::path::Path, args: &[&str]) -> Output {
        let kubeconfig = self.dir().join(format!("build/{}-config.yml", self.name));
        let mut all = vec!["--kubeconfig", kubeconfig.to_str().unwrap(), "--request-timeout=5s"];
        all.extend_from_slice(args);
        self.exec(kubectl.to_str().unwrap(), &all)
    }

    /// [`Lab::kubectl`] that must succeed; its stdout.
    pub fn kubectl_ok(&self, kubectl: &std::path::Path, args: &[&str]) -> String {
        let out = self.kubectl(kubectl, args);
        assert!(out.status.success(), "kubectl {args:?} failed:\n{}", text(&out));
        stdout(&out)
    }

    /// `kubectl apply -f -` of `yaml` with pikube's kubeconfig, from inside the lab network;
    /// it must succeed.
    pub fn kubectl_apply(&self, kubectl: &std::path::Path, yaml: &str) {
        use std::process::Stdio;
        let kubeconfig = self.dir().join(format!("build/{}-config.yml", self.name));
        let mut apply = Command::new(BIN)
            .args(["lab", "exec", "--name", &self.name, "--"])
            .arg(kubectl)
            .args(["--kubeconfig", kubeconfig.to_str().unwrap(), "apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl apply");
        std::io::Write::write_all(&mut apply.stdin.take().unwrap(), yaml.as_bytes()).unwrap();
        let out = apply.wait_with_output().unwrap();
        assert!(out.status.success(), "kubectl apply:\n{}", text(&out));
    }
}

/// The airgap directory `pikube lab kubernetes` builds for `version` (upstream's release layout,
/// the root holding `<version>/`): built on the first call on this machine, cached after.
pub fn lab_kubernetes(version: &str) -> PathBuf {
    let started = std::time::Instant::now();
    let out = Command::new(BIN).args(["lab", "kubernetes", "--version", version]).output().expect("run lab kubernetes");
    assert!(out.status.success(), "pikube lab kubernetes failed:\n{}", text(&out));
    let dir = stdout(&out).lines().last().map(PathBuf::from).expect("the output directory on the last line");
    eprintln!("lab kubernetes: {} in {:.1?}", dir.display(), started.elapsed());
    dir
}

/// Polls `check` every `every` until it holds (printing how long that took), or panics after
/// `timeout` with what it said last.
pub fn wait_for(
    what: &str,
    timeout: std::time::Duration,
    every: std::time::Duration,
    mut check: impl FnMut() -> Result<(), String>,
) {
    let started = std::time::Instant::now();
    loop {
        match check() {
            Ok(()) => return eprintln!("{what}: after {:.1?}", started.elapsed()),
            Err(last) if started.elapsed() > timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(every),
        }
    }
}

/// What of kubeadm's Kubernetes is still on a lab node (empty when nothing): its files and
/// binaries, CNI config and interfaces, its processes, KUBE-/CNI-/flannel rules, pod tasks.
pub fn kubeadm_leftovers(lab: &Lab, node: &str) -> String {
    lab.sh(
        node,
        "ls -d /etc/kubernetes /var/lib/kubelet /var/lib/etcd /etc/cni/net.d/* /var/lib/cni /usr/local/bin/kube* 2>/dev/null; \
         ip -o link show | grep -oE 'cni0|flannel[^:]*' ; pgrep -lx 'kubelet|etcd|kube-apiserver|kube-proxy|flanneld'; \
         iptables-save | grep -cE 'KUBE-|CNI-|FLANNEL' | grep -v '^0$'; ctr -n k8s.io tasks ls -q; true",
    )
}

/// A pod from the lab's image archive (`pikube lab kubernetes` puts the busybox probe in it).
pub const PROBE_POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: probe
spec:
  containers:
  - name: probe
    image: pikube.local/probe:1
    imagePullPolicy: Never
    command: [sh, -c, 'echo probe started; exec sleep 3600']
";
