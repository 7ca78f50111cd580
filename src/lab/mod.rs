//! `pikube lab`: local test nodes (systemd-nspawn containers in network namespaces).
//!
//! A lab is a set of nodes with real systemd, sshd and apt, each in its own network namespace,
//! joined by a bridge that lives in the lab's own namespace — users without Pis (and pikube's
//! tests) get real hosts to run pikube against. Nothing of the lab touches the host's network:
//! whatever talks to nodes runs inside the lab namespace (`pikube lab exec`, `pikube lab ssh`).
//!
//! Modules: `commands` (the subcommands), `base` (cached Debian tree), `mirror` (package mirror
//! for nodes) and `serve` (its HTTP server), `kube` (upstream Kubernetes built from source), `net` (namespaces, SSH probe), `node` (disks,
//! launcher, power), `disk` (a node's extra disk), `firmware` (Pi emulation), `state` (lab shape and paths).

mod base;
mod commands;
mod disk;
mod firmware;
mod kube;
mod mirror;
mod net;
mod node;
mod serve;
mod state;
mod util;

use std::path::PathBuf;
use std::time::Duration;

use miette::{miette, IntoDiagnostic, Result};

use state::{Arch, PiMode};

#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Build a lab and boot its nodes (re-running reports on the running lab).
    Up(UpArgs),
    /// Stop the nodes and the mirror, delete the lab's network and node state.
    Down(LabName),
    /// Show the lab's nodes: address, state (running, stopped, cut), pid, Pi layout.
    Status(LabName),
    /// SSH into a node from inside the lab network (lab key, strict host-key checking).
    Ssh(SshArgs),
    /// Pull a node's power plug (its disk survives; `lab start` powers it on).
    Stop(NodeArgs),
    /// Power a node on again.
    Start(NodeArgs),
    /// Replace a node's SD card: its disk back to the base image, with a new SSH host key.
    Wipe(NodeArgs),
    /// Set a Pi-like node's emulated firmware and thermal readings (what `status` checks).
    Pi(PiArgs),
    /// Cut a node's network link without stopping the node.
    Cut(NodeArgs),
    /// Restore a node's network link after `lab cut`.
    Heal(NodeArgs),
    /// Run a command inside the lab network, e.g. `pikube lab exec -- pikube up -f <cluster file>`.
    Exec(ExecArgs),
    /// Build upstream Kubernetes from source (Go module proxy) into a cached airgap directory:
    /// kubeadm/kubelet/kubectl, every image kubeadm and flannel use, in one image archive.
    Kubernetes(kube::KubeArgs),
    /// Node launcher: boots one node until it powers off (started detached by `lab up`/`start`).
    #[command(name = "__boot", hide = true)]
    Boot { lab: String, node: String },
    /// Lab mirror server (started detached inside the lab network by `lab up`).
    #[command(name = "__serve", hide = true)]
    Serve { root: PathBuf, listen: String, pid_file: PathBuf },
    /// Waits until sshd answers on each address (run inside the lab network).
    #[command(name = "__wait-ssh", hide = true)]
    WaitSsh {
        #[arg(long)]
        timeout: u64,
        addresses: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct LabName {
    /// Name of the lab.
    #[arg(long, default_value = "lab")]
    pub name: String,
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub lab: LabName,
    /// Number of nodes [default: 3].
    #[arg(long)]
    pub nodes: Option<usize>,
    /// How many of the first nodes are servers; the rest are agents [default: 1].
    #[arg(long)]
    pub servers: Option<usize>,
    /// How many nodes after the servers are API load balancers (HAProxy) [default: 0].
    #[arg(long)]
    pub loadbalancers: Option<usize>,
    /// Put the API endpoint on a keepalived virtual IP (<subnet>.10) held by the servers.
    #[arg(long)]
    pub vip: bool,
    /// Install k3s from this artifact directory (airgap layout: `k3s`, `sha256sum-amd64.txt`).
    #[arg(long, value_name = "DIR")]
    pub k3s_artifacts: Option<PathBuf>,
    /// k3s version the lab's cluster file pins [default: v1.31.4+k3s1 when --k3s-artifacts is given].
    #[arg(long)]
    pub k3s_version: Option<String>,
    /// Install upstream Kubernetes with kubeadm from this airgap directory (the layout
    /// `pikube lab kubernetes` builds: `<version>/bin/linux/<arch>/…`, `<version>/images/…`).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["k3s_artifacts", "k3s_version"])]
    pub kubeadm: Option<PathBuf>,
    /// Kubernetes version the kubeadm lab pins [default: v1.34.4].
    #[arg(long, requires = "kubeadm")]
    pub kubeadm_version: Option<String>,
    /// Make nodes look like Raspberry Pis: boot files, model, firmware command line [default: none].
    #[arg(long, value_enum)]
    pub pi: Option<PiMode>,
    /// Node userland architecture (arm64 runs under qemu-user) [default: amd64].
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
    /// The lab's /24; the bridge takes .1, nodes .11, .12, … [default: 10.77.0.0/24].
    #[arg(long)]
    pub subnet: Option<String>,
    /// Give every node the same machine id (the cloned-SD-card fault, on purpose).
    #[arg(long)]
    pub clone_machine_id: bool,
    /// Give each node's own disk layer a file system of this many MiB (a small SD card: the
    /// node's root file system shows this size and can fill up) [default: the host's disk;
    /// 16384 (sparse) for --kubeadm labs, whose kubelets judge disk pressure by it].
    #[arg(long, value_name = "MIB")]
    pub disk_size: Option<u64>,
    /// Give each node a second, empty disk of this many MiB (a sparse file on a loop device),
    /// seen in the node as /dev/disk/by-id/usb-pikube_lab_disk_<node>-0:0, like a USB SSD. Its
    /// /var/lib/containerd is then a plain directory, for `hosts[].storage` to put on the disk.
    #[arg(long, value_name = "MIB")]
    pub extra_disk: Option<u64>,
    /// Seconds to wait for all nodes to answer SSH [default: 300, 900 for arm64].
    #[arg(long)]
    pub timeout: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub lab: LabName,
    /// Node name (node1, node2, …).
    pub node: String,
}

#[derive(Debug, clap::Args)]
pub struct PiArgs {
    #[command(flatten)]
    pub lab: LabName,
    /// Node name (node1, node2, …).
    pub node: String,
    /// The firmware's get_throttled bits, e.g. 0x50005 (under-voltage and throttled now).
    #[arg(long, value_parser = firmware::parse_throttled)]
    pub throttled: Option<u32>,
    /// SoC temperature in °C.
    #[arg(long)]
    pub temp: Option<f64>,
}

#[derive(Debug, clap::Args)]
pub struct SshArgs {
    #[command(flatten)]
    pub lab: LabName,
    /// Log in as this user (root or pi).
    #[arg(long, default_value = "root")]
    pub user: String,
    /// Node name (node1, node2, …).
    pub node: String,
    /// Command to run instead of a login shell.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub lab: LabName,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub async fn run(cmd: LabCommand) -> miette::Result<()> {
    match cmd {
        LabCommand::Serve { root, listen, pid_file } => serve::serve(root, listen, pid_file).await,
        // Everything else drives host tools and waits on processes: keep it off the reactor.
        other => tokio::task::spawn_blocking(move || run_blocking(other)).await.into_diagnostic()?,
    }
}

fn run_blocking(cmd: LabCommand) -> Result<()> {
    match cmd {
        LabCommand::Up(args) => commands::up(args),
        LabCommand::Down(lab) => commands::down(&lab.name),
        LabCommand::Status(lab) => commands::status(&lab.name),
        LabCommand::Ssh(args) => commands::ssh(args),
        LabCommand::Stop(args) => commands::stop(&args.lab.name, &args.node),
        LabCommand::Start(args) => commands::start(&args.lab.name, &args.node),
        LabCommand::Wipe(args) => commands::wipe(&args.lab.name, &args.node),
        LabCommand::Pi(args) => commands::pi(args),
        LabCommand::Cut(args) => commands::set_link(&args.lab.name, &args.node, false),
        LabCommand::Heal(args) => commands::set_link(&args.lab.name, &args.node, true),
        LabCommand::Exec(args) => commands::exec(&args.lab.name, &args.command),
        LabCommand::Kubernetes(args) => kube::command(args),
        LabCommand::Boot { lab, node } => node::boot(&lab, &node),
        LabCommand::WaitSsh { timeout, addresses } => net::wait_ssh(Duration::from_secs(timeout), &addresses),
        LabCommand::Serve { .. } => Err(miette!("`lab __serve` runs on the async runtime")),
    }
}
