//! kubeadm behind the seam: upstream Kubernetes on containerd from the hosts' own packages.
//! pikube renders every file (containerd's config, kubelet's unit and kubeadm drop-in, the
//! kubeadm configuration) and drives `kubeadm init` / `kubeadm join`; kubeadm does the PKI,
//! etcd membership and static pods.

pub mod artifacts;
pub mod backup;
mod bringup;
pub mod certs;
pub mod etcd;
pub mod render;
mod runtime;
pub mod teardown;
pub mod upgrade;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;

use crate::artifacts::K3sBinary;
use crate::config::Role;
use crate::fleet::{Fleet, Node};
use crate::remote::{Cmd, Host, Mode};

pub use bringup::{agents, pod_network, servers};
pub use runtime::container_runtime;

pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";
pub const KUBECTL: &str = "/usr/local/bin/kubectl --kubeconfig /etc/kubernetes/admin.conf";
const KUBELET_UNIT_PATH: &str = "/etc/systemd/system/kubelet.service";
const KUBEADM_DROPIN_PATH: &str = "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf";

type Loaded = Result<Vec<(&'static str, K3sBinary, Arc<Vec<u8>>)>, String>;

/// kubeadm, kubelet and kubectl of the pinned release on every server and agent (pushed only
/// when the checksum differs), with kubelet's unit and kubeadm's drop-in. A node that runs
/// another release gets the new kubeadm only: its kubelet and kubectl come during its upgrade,
/// after `kubeadm upgrade` (the servers and agents phases), and a snapshot is taken first.
pub fn artifacts<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        let Some(version) = fleet.cluster.version() else { return };
        crate::backup::before_upgrade(fleet).await;
        let mut loaded: BTreeMap<String, Loaded> = BTreeMap::new();
        for node in members(fleet) {
            let Some(arch) = node.facts().map(|f| f.arch) else { continue };
            loaded
                .entry(arch.as_str().to_string())
                .or_insert_with(|| tokio::task::block_in_place(|| load(&fleet.cluster, version, &arch)));
        }
        let loaded = &loaded;
        fleet
            .each(move |node: &'a Node, host: &'a Host| async move {
                if node.role() == Role::Loadbalancer {
                    return Ok(());
                }
                let arch = node.facts().ok_or("no facts gathered")?.arch;
                let binaries = loaded.get(arch.as_str()).ok_or("no binaries for this architecture")?.clone()?;
                install(fleet, node, host, version, &binaries).await
            })
            .await;
    })
}

/// The release's binaries for `arch`, verified and read once per run: the artifacts phase and
/// each node's upgrade share them (hashing them again per node costs seconds on a Pi).
fn load(cluster: &crate::config::Cluster, version: &str, arch: &crate::facts::Arch) -> Loaded {
    static READ: std::sync::Mutex<BTreeMap<(String, String), Loaded>> = std::sync::Mutex::new(BTreeMap::new());
    let key = (version.to_string(), arch.as_str().to_string());
    let mut read = READ.lock().unwrap_or_else(|p| p.into_inner());
    read.entry(key).or_insert_with(|| read_binaries(cluster, version, arch)).clone()
}

fn read_binaries(cluster: &crate::config::Cluster, version: &str, arch: &crate::facts::Arch) -> Loaded {
    artifacts::BINARIES
        .iter()
        .map(|name| {
            let (bin, bytes) = artifacts::binary(cluster, version, arch, name)
                .map_err(|e| format!("{name} {version} for {}: {e}\n  hint: {}", arch.as_str(), e.hint()))?;
            Ok((*name, bin, Arc::new(bytes)))
        })
        .collect()
}

/// The binaries, kubelet's unit and kubeadm's drop-in on one node; a running kubelet restarts
/// when its binary or unit changed (it keeps the old ones until then).
async fn install(
    fleet: &Fleet,
    node: &Node,
    host: &Host,
    version: &str,
    binaries: &[(&'static str, K3sBinary, Arc<Vec<u8>>)],
) -> Result<(), String> {
    let upgrading = upgrade::holds_back(host, version).await?;
    if upgrading {
        host.record(format!(
            "kubelet and kubectl {version}: installed during the node's upgrade, after `kubeadm upgrade`"
        ));
    }
    let mut kubelet_changed = false;
    for (name, bin, bytes) in binaries.iter().filter(|(name, _, _)| !upgrading || *name == "kubeadm") {
        kubelet_changed |= push(fleet, node, host, name, bin, bytes).await? && *name == "kubelet";
    }
    let e = |e: crate::remote::RemoteError| e.to_string();
    let mut units =
        host.ensure_file(KUBELET_UNIT_PATH, render::KUBELET_UNIT.as_bytes(), Some(0o644)).await.map_err(e)?;
    units |= host.ensure_file(KUBEADM_DROPIN_PATH, render::KUBEADM_DROPIN.as_bytes(), Some(0o644)).await.map_err(e)?;
    if units {
        host.apply("systemctl daemon-reload", &Cmd::change("systemctl", &["daemon-reload"])).await.map_err(e)?;
    }
    let running = node.facts().and_then(|f| f.services.get("kubelet").cloned()).is_some_and(|s| s.active);
    if running && (kubelet_changed || units) {
        let cmd = Cmd::change("systemctl", &["restart", "kubelet"]);
        host.apply("restart kubelet (binary or unit changed)", &cmd).await.map_err(e)?;
    }
    if fleet.mode == Mode::Apply {
        check_version(host, version).await?;
    }
    Ok(())
}

/// Servers and agents: the nodes that run kubelet.
fn members(fleet: &Fleet) -> impl Iterator<Item = &Node> {
    fleet.nodes.iter().filter(|n| n.ok() && n.role() != Role::Loadbalancer)
}

/// Pushes one binary unless the node has it already; returns whether it pushed.
async fn push(
    fleet: &Fleet,
    node: &Node,
    host: &Host,
    name: &str,
    bin: &K3sBinary,
    bytes: &[u8],
) -> Result<bool, String> {
    let path = format!("/usr/local/bin/{name}");
    let have = host.file_state(&path).await.map_err(|e| e.to_string())?;
    let (started, mib) = (Instant::now(), bin.size as f64 / 1048576.0);
    let pushing = have.sha256 != bin.sha256;
    if pushing && fleet.mode == Mode::Apply {
        crate::progress::step(node.name(), &format!("pushing {name} ({mib:.1} MiB) …"));
    }
    host.ensure_file_from(&path, bytes, &bin.sha256, Some(0o755), &have).await.map_err(|e| e.to_string())?;
    if pushing && fleet.mode == Mode::Apply {
        let secs = started.elapsed().as_secs_f64();
        crate::progress::step(node.name(), &format!("pushed in {secs:.1}s ({:.1} MiB/s)", mib / secs.max(0.001)));
    }
    Ok(pushing)
}

/// The binaries must be the pinned release: files from another one would make a mixed cluster.
async fn check_version(host: &Host, version: &str) -> Result<(), String> {
    let out =
        host.run_ok(&Cmd::read_script("/usr/local/bin/kubeadm version -o short")).await.map_err(|e| e.to_string())?;
    if out.trim() != version {
        return Err(format!(
            "kubeadm reports {:?}, but the cluster file pins {version}\n  hint: the artifact files are from another release; use the files of {version}",
            out.trim()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    use std::time::Duration;

    use sha2::{Digest, Sha256};

    /// What is pushed must be what was verified: the binary is read once, and its checksum is
    /// of those bytes. Here kubeadm is a FIFO that gives its bytes to one reader only: a second
    /// read (one that could see a file swapped after the check) would wait forever.
    #[test]
    fn the_binary_is_read_once_so_the_pushed_bytes_are_the_verified_ones() {
        let root = std::env::temp_dir().join(format!("pikube-kadm-once-{}", std::process::id()));
        let bin = root.join("v1.34.4/bin/linux/amd64");
        std::fs::create_dir_all(&bin).unwrap();
        let genuine = b"genuine kubeadm".to_vec();
        for name in ["kubeadm", "kubelet", "kubectl"] {
            std::fs::write(bin.join(format!("{name}.sha256")), hex::encode(Sha256::digest(&genuine))).unwrap();
            if name != "kubeadm" {
                std::fs::write(bin.join(name), &genuine).unwrap();
            }
        }
        let fifo = std::ffi::CString::new(bin.join("kubeadm").as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let (path, bytes) = (bin.join("kubeadm"), genuine.clone());
        std::thread::spawn(move || std::fs::OpenOptions::new().write(true).open(&path)?.write_all(&bytes));
        let yaml = format!(
            "name: t\nkubernetes: {{distribution: kubeadm, version: v1.34.4, artifacts: {}}}\n\
             hosts:\n  - {{name: n1, address: 10.0.0.1, role: server}}\n",
            root.display()
        );
        let cluster = crate::config::Cluster::parse(&root.join("cluster.yaml"), &yaml).unwrap();
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(super::read_binaries(&cluster, "v1.34.4", &crate::facts::Arch::X86_64));
        });
        let loaded = result.recv_timeout(Duration::from_secs(20)).expect("kubeadm was read again after its check");
        std::fs::remove_dir_all(&root).unwrap();
        let binaries = loaded.unwrap();
        let (_, checked, pushed) = binaries.iter().find(|(n, _, _)| *n == "kubeadm").unwrap();
        assert_eq!(**pushed, genuine);
        assert_eq!(hex::encode(Sha256::digest(pushed.as_slice())), checked.sha256);
    }
}
