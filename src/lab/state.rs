//! What a lab is (its recorded shape) and where its files live.

use std::fs;
use std::path::{Path, PathBuf};

use miette::{miette, IntoDiagnostic, Result, WrapErr};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Cached base trees and package mirrors, shared by all labs and kept by `lab down`.
pub const CACHE_DIR: &str = "/var/cache/pikube/lab";
/// Per-lab state (node disks, keys, cluster file); `lab down` deletes a lab's directory.
pub const STATE_DIR: &str = "/var/lib/pikube/lab";
/// Port of the lab package mirror on the bridge address.
pub const MIRROR_PORT: u16 = 8080;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

/// Which Raspberry Pi boot layout nodes get (`mixed` alternates bookworm, legacy, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PiMode {
    None,
    Bookworm,
    Legacy,
    Mixed,
}

impl PiMode {
    fn layout(self, index: usize) -> Option<PiLayout> {
        match self {
            PiMode::None => None,
            PiMode::Bookworm => Some(PiLayout::Bookworm),
            PiMode::Legacy => Some(PiLayout::Legacy),
            PiMode::Mixed if index.is_multiple_of(2) => Some(PiLayout::Bookworm),
            PiMode::Mixed => Some(PiLayout::Legacy),
        }
    }
}

/// A Pi-like node's boot layout: Bookworm keeps firmware files in /boot/firmware, older
/// images in /boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PiLayout {
    Bookworm,
    Legacy,
}

impl PiLayout {
    pub fn boot_dir(self) -> &'static str {
        match self {
            PiLayout::Bookworm => "boot/firmware",
            PiLayout::Legacy => "boot",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PiLayout::Bookworm => "bookworm",
            PiLayout::Legacy => "legacy",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub address: String,
    pub role: String,
    pub layout: Option<PiLayout>,
    /// Machine id handed to nspawn (`--uuid`); equal across nodes with `--clone-machine-id`.
    pub machine_id: String,
}

/// The recorded shape of a lab (`lab.json`), written before anything is built so `lab down`
/// can clean up a half-built lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    /// First three octets of the /24, e.g. "10.77.0".
    pub prefix: String,
    pub arch: Arch,
    pub pi: PiMode,
    pub servers: usize,
    /// Nodes after the servers that are HAProxy load balancers.
    #[serde(default)]
    pub loadbalancers: usize,
    pub clone_machine_id: bool,
    pub nodes: Vec<NodeState>,
    /// Kubernetes settings written into the lab's cluster file.
    #[serde(default)]
    pub kubernetes: LabKubernetes,
    /// Size of each node's own disk layer (a file system of its own, like a small SD card);
    /// None: the layer lives on the host's disk.
    #[serde(default)]
    pub disk_mib: Option<u64>,
    /// Size of each node's second, empty disk (`lab up --extra-disk`); None: nodes have none.
    #[serde(default)]
    pub extra_disk_mib: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabKubernetes {
    /// k3s artifact directory (airgap), e.g. with the k3s stand-in for tests.
    pub artifacts: Option<String>,
    pub version: Option<String>,
    /// Keepalived VIP on the servers (`<prefix>.10`) instead of a load balancer node.
    #[serde(default)]
    pub vip: bool,
    /// `distribution: kubeadm` (the artifacts are the upstream airgap layout).
    #[serde(default)]
    pub kubeadm: bool,
}

/// What `lab up` was asked to build.
pub struct Shape {
    pub nodes: usize,
    pub servers: usize,
    pub loadbalancers: usize,
    pub pi: PiMode,
    pub arch: Arch,
    pub clone_machine_id: bool,
}

impl LabState {
    pub fn new(name: &str, prefix: &str, shape: Shape) -> LabState {
        let Shape { nodes, servers, loadbalancers, pi, arch, clone_machine_id } = shape;
        let shared_id = machine_id(name, "shared");
        let nodes = (0..nodes)
            .map(|i| {
                let node = format!("node{}", i + 1);
                NodeState {
                    address: format!("{prefix}.{}", 11 + i),
                    role: if i < servers {
                        "server"
                    } else if i < servers + loadbalancers {
                        "loadbalancer"
                    } else {
                        "agent"
                    }
                    .to_string(),
                    layout: pi.layout(i),
                    machine_id: if clone_machine_id { shared_id.clone() } else { machine_id(name, &node) },
                    name: node,
                }
            })
            .collect();
        LabState {
            name: name.to_string(),
            prefix: prefix.to_string(),
            arch,
            pi,
            servers,
            loadbalancers,
            clone_machine_id,
            nodes,
            kubernetes: LabKubernetes::default(),
            disk_mib: None,
            extra_disk_mib: None,
        }
    }

    pub fn load(name: &str) -> Result<Option<LabState>> {
        let path = LabPaths::new(name).state_file();
        match fs::read(&path) {
            Ok(raw) => serde_json::from_slice(&raw)
                .into_diagnostic()
                .wrap_err_with(|| format!("reading {}", path.display()))
                .map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(miette!("reading {}: {e}", path.display())),
        }
    }

    /// Loads a lab that must exist, with a hint when it does not.
    pub fn require(name: &str) -> Result<LabState> {
        LabState::load(name)?
            .ok_or_else(|| miette!("no lab named {name:?}; create it with `pikube lab up --name {name}`"))
    }

    pub fn save(&self) -> Result<()> {
        let paths = LabPaths::new(&self.name);
        fs::create_dir_all(&paths.dir)
            .into_diagnostic()
            .wrap_err_with(|| format!("creating {}", paths.dir.display()))?;
        let json = serde_json::to_vec_pretty(self).into_diagnostic()?;
        super::util::write_atomic(&paths.state_file(), &json, 0o644)
    }

    pub fn node(&self, node: &str) -> Result<&NodeState> {
        self.nodes.iter().find(|n| n.name == node).ok_or_else(|| {
            let known: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            miette!("lab {:?} has no node {node:?} (nodes: {})", self.name, known.join(", "))
        })
    }

    /// The address the lab sets on a node's eth0 from outside, for arches whose networkd cannot
    /// run in the node (see `base`); `None` when the node's networkd does it.
    pub fn outside_address<'a>(&self, node: &'a NodeState) -> Option<&'a str> {
        (self.arch == Arch::Arm64).then_some(node.address.as_str())
    }

    pub fn bridge_ip(&self) -> String {
        format!("{}.1", self.prefix)
    }

    pub fn mirror_url(&self) -> String {
        format!("http://{}:{MIRROR_PORT}/debian", self.bridge_ip())
    }
}

/// A fresh 128-bit id, unique per lab/node/creation time (nspawn wants 32 hex digits).
fn machine_id(lab: &str, node: &str) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let digest = Sha256::new()
        .chain_update(lab)
        .chain_update([0])
        .chain_update(node)
        .chain_update(nanos.to_le_bytes())
        .chain_update(std::process::id().to_le_bytes())
        .finalize();
    hex::encode(&digest[..16])
}

/// Where one lab's files live.
pub struct LabPaths {
    pub dir: PathBuf,
}

impl LabPaths {
    pub fn new(lab: &str) -> LabPaths {
        LabPaths { dir: Path::new(STATE_DIR).join(lab) }
    }
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("lab.json")
    }
    pub fn cluster_file(&self) -> PathBuf {
        self.dir.join("cluster.yaml")
    }
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }
    pub fn mirror_pid(&self) -> PathBuf {
        self.dir.join("mirror.pid")
    }
    pub fn mirror_log(&self) -> PathBuf {
        self.dir.join("mirror.log")
    }
    pub fn node(&self, node: &str) -> NodePaths {
        NodePaths { dir: self.dir.join("nodes").join(node) }
    }
}

/// Where one node's files live: its overlay layers, console log and launcher bookkeeping.
pub struct NodePaths {
    pub dir: PathBuf,
}

impl NodePaths {
    /// Holds the overlay's upper and work dirs; a mounted file system with `--disk-size`.
    pub fn layer(&self) -> PathBuf {
        self.dir.join("layer")
    }
    /// The image file of `layer` with `--disk-size`.
    pub fn layer_image(&self) -> PathBuf {
        self.dir.join("layer.img")
    }
    pub fn upper(&self) -> PathBuf {
        self.layer().join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.layer().join("work")
    }
    pub fn merged(&self) -> PathBuf {
        self.dir.join("merged")
    }
    /// The node's /var/lib/containerd: a plain directory (overlayfs snapshots cannot stack on
    /// the node's overlay root) on the node's own disk layer, wiped with it.
    pub fn containerd_disk(&self) -> PathBuf {
        self.layer().join("containerd")
    }
    /// The sparse image behind the node's extra disk (`lab up --extra-disk`).
    pub fn extra_disk(&self) -> PathBuf {
        self.dir.join("extra-disk.img")
    }
    /// The node's /dev/disk (the extra disk's by-id and by-uuid links), kept by the launcher.
    pub fn dev_disk(&self) -> PathBuf {
        self.dir.join("dev-disk")
    }
    /// Per-boot firmware emulation output (model, cmdline, cgroups) bound into Pi-like nodes.
    pub fn firmware(&self) -> PathBuf {
        self.dir.join("firmware")
    }
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    pub fn launcher_pid(&self) -> PathBuf {
        self.dir.join("launcher.pid")
    }
    /// Present while the node is meant to be off: the launcher must not boot it again.
    pub fn powered_off(&self) -> PathBuf {
        self.dir.join("powered-off")
    }
    /// Present once the node's disk got its identity (keys, hostname, network).
    pub fn provisioned(&self) -> PathBuf {
        self.dir.join("provisioned")
    }
    pub fn host_key(&self) -> PathBuf {
        self.dir.join("ssh_host_ed25519_key")
    }
}
