//! `pikube lab kubernetes`: upstream Kubernetes built from source into the airgap layout, and
//! its image archive imported by a real containerd (started here, in a private root under /tmp).
//!
//! Cold (empty Go caches) the build takes long; warm it returns the cached directory at once.

mod skip;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_pikube");
const VERSION: &str = "v1.34.4";

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn missing_tool() -> Option<&'static str> {
    let on_path = |tool: &str| {
        std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
    };
    ["go", "gcc", "apt-get", "containerd", "ctr"].into_iter().find(|tool| !on_path(tool))
}

/// `pikube lab kubernetes`; returns the airgap directory (its last line) and how long it took.
fn build() -> (PathBuf, Duration) {
    let started = Instant::now();
    let out =
        Command::new(BIN).args(["lab", "kubernetes", "--version", VERSION]).stdin(Stdio::null()).output().unwrap();
    let took = started.elapsed();
    let shown = text(&out);
    assert!(out.status.success(), "lab kubernetes failed:\n{shown}");
    println!("{shown}");
    let last = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
    (PathBuf::from(last), took)
}

#[test]
fn kubernetes_builds_into_the_airgap_layout_and_containerd_imports_its_images() {
    if !fs::read_to_string("/proc/self/status").unwrap_or_default().lines().any(|l| l.starts_with("Uid:\t0\t")) {
        skip!(return "the build's checks (chroot) and containerd need root");
    }
    if let Some(tool) = missing_tool() {
        skip!(return "{tool} is not installed (scripts/test installs what this test needs)");
    }
    let (dir, _) = build();
    let release = dir.join(VERSION);
    for name in ["kubeadm", "kubelet", "kubectl"] {
        let binary = release.join("bin/linux/amd64").join(name);
        let digest = hex::encode(Sha256::digest(fs::read(&binary).unwrap()));
        let recorded = fs::read_to_string(binary.with_extension("sha256")).unwrap();
        assert_eq!(recorded, digest, "{name}.sha256 must hold the bare hex digest of {name}");
    }
    let kubeadm = release.join("bin/linux/amd64/kubeadm");
    assert_eq!(run(Command::new(&kubeadm).args(["version", "-o", "short"])).trim(), VERSION);
    let kubelet = run(Command::new(release.join("bin/linux/amd64/kubelet")).arg("--version"));
    assert_eq!(kubelet.trim(), format!("Kubernetes {VERSION}"));
    // Always with --kubernetes-version: without it kubeadm asks the internet for the latest.
    let listed = run(Command::new(&kubeadm).args(["config", "images", "list", "--kubernetes-version", VERSION]));
    let mut wanted: Vec<String> = listed.lines().map(str::to_string).collect();
    assert_eq!(wanted.len(), 7, "kubeadm's image list: {listed}");
    let flannel = fs::read_to_string(release.join("cni/kube-flannel.yml")).unwrap();
    wanted.extend(flannel.lines().filter_map(|l| l.trim().strip_prefix("image: ")).map(str::to_string));
    wanted.push("pikube.local/probe:1".into());
    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(release.join("BUILD.json")).unwrap()).unwrap();
    assert_eq!(record["version"], VERSION);
    assert_eq!(record["modules"]["go.etcd.io/etcd/server/v3"], "v3.6.5", "{record}");
    let archive = release.join("images/amd64.tar");
    assert_eq!(record["archive_bytes"], fs::metadata(&archive).unwrap().len());

    let imported = import(&archive);
    for name in &wanted {
        assert!(imported.iter().any(|i| i == name), "{name} is not in the archive; containerd imported {imported:?}");
    }

    // Warm: the cached directory, found without building.
    let (again, took) = build();
    assert_eq!(again, dir);
    assert!(took < Duration::from_secs(3), "a warm `lab kubernetes` took {took:?}");
}

/// A containerd of our own (private root, state and socket), killed on drop.
struct Containerd {
    child: Child,
    root: PathBuf,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Imports `archive` with `ctr -n k8s.io images import` into a fresh containerd and returns the
/// image names it then lists.
fn import(archive: &Path) -> Vec<String> {
    let root = PathBuf::from(format!("/tmp/pikube-containerd-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).unwrap();
    let socket = root.join("containerd.sock");
    // Only what an import needs: the CRI plugin would want CNI and a kubelet.
    let config = format!(
        "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
         [grpc]\n  address = \"{1}\"\n",
        root.display(),
        socket.display()
    );
    fs::write(root.join("config.toml"), config).unwrap();
    let log = fs::File::create(root.join("containerd.log")).unwrap();
    let child = Command::new("containerd")
        .arg("--config")
        .arg(root.join("config.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start containerd");
    let containerd = Containerd { child, root: root.clone() };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "containerd did not start:\n{}",
            fs::read_to_string(root.join("containerd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ctr = |args: &[&str]| run(Command::new("ctr").arg("--address").arg(&socket).args(["-n", "k8s.io"]).args(args));
    // The native snapshotter unpacks on any filesystem (/tmp may itself be an overlay).
    let out = ctr(&["images", "import", "--snapshotter", "native", &archive.to_string_lossy()]);
    println!("{out}");
    let listed = ctr(&["images", "ls", "-q"]);
    drop(containerd);
    listed.lines().map(str::to_string).collect()
}
