//! Command line: parse, dispatch, render, exit codes (0 ok, 1 some host failed, 2 bad input).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

use crate::check::{self, Severity};
use crate::config::{Cluster, ClusterFile, FileArg, Role, EXAMPLE};
use crate::fleet::Fleet;
use crate::lab;
use crate::phases;
use crate::remote::Mode;
use crate::sdcard;
use crate::term::clean;

#[derive(Debug, Parser)]
#[command(
    name = "pikube",
    version,
    about = "Raspberry Pis (or any Debian/Ubuntu hosts) → Kubernetes, from one cluster file"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct Target {
    #[command(flatten)]
    cluster: FileArg,
    /// Hosts worked on at the same time.
    #[arg(long, default_value_t = 10)]
    parallel: usize,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a commented example cluster file.
    Init {
        #[arg(default_value = "cluster.yaml")]
        file: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Print the cluster file's JSON Schema (for editor completion and validation).
    Schema,
    /// Connect to every host, gather facts and report preflight findings.
    Check {
        #[command(flatten)]
        target: Target,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show what `up` would change on each host, changing nothing.
    Plan {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        upgrade: Upgrade,
        /// The first server may initialise a new cluster although other servers do not answer
        /// or this machine shows an earlier cluster of this name (its kubeconfig, token or
        /// backups): only when that cluster is really gone, or a server of a new one still boots.
        #[arg(long)]
        new_cluster: bool,
        #[arg(long)]
        json: bool,
    },
    /// Converge the hosts to the cluster file (idempotent).
    Up {
        #[command(flatten)]
        target: Target,
        /// Seconds a rebooted host may take to answer SSH again (slow SD cards need more).
        #[arg(long, default_value_t = 300)]
        reboot_timeout: u64,
        /// Seconds each k3s node may take to become Ready before its logs are shown.
        #[arg(long, default_value_t = 300)]
        ready_timeout: u64,
        #[command(flatten)]
        upgrade: Upgrade,
        /// The first server may initialise a new cluster although other servers do not answer
        /// or this machine shows an earlier cluster of this name (its kubeconfig, token or
        /// backups): only when that cluster is really gone, or a server of a new one still boots.
        #[arg(long)]
        new_cluster: bool,
        #[command(flatten)]
        output: Output,
    },
    /// Show each host's Kubernetes state and Pi health with a verdict (exit 1 unless all healthy).
    Status {
        #[command(flatten)]
        target: Target,
        /// Machine-readable output (the shape is in the README).
        #[arg(long)]
        json: bool,
    },
    /// kubeadm: each server's certificates and when they expire (exit 1 when one is within
    /// kubernetes.renew_certificates_days, which `up` then renews, or a server was not read).
    Certs {
        #[command(flatten)]
        target: Target,
        /// Machine-readable output (the shape is in the README).
        #[arg(long)]
        json: bool,
    },
    /// (Re)write build/<cluster>-config.yml from a server, or merge it into ~/.kube/config.
    Kubeconfig {
        #[command(flatten)]
        target: Target,
        /// Merge into ~/.kube/config (or the first file of $KUBECONFIG) under a context named
        /// after the cluster, and make it the current context.
        #[arg(long)]
        merge: bool,
    },
    /// Tear Kubernetes down: all nodes, or drain, delete and reset only the --limit ones.
    Down {
        #[command(flatten)]
        target: Target,
        /// Only these hosts (repeat the flag); they are drained and deleted from the cluster first.
        /// A host that does not answer SSH is only deleted from the cluster (it is not reset).
        #[arg(long, value_name = "HOST")]
        limit: Vec<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        output: Output,
    },
    /// Take an etcd snapshot into backups/<cluster>/<UTC time>/ next to the cluster file.
    Backup {
        #[command(flatten)]
        target: Target,
        /// Then keep only the newest N backups of this cluster, deleting older ones.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        keep: Option<u64>,
    },
    /// Restore the cluster from a backup directory: stops every server, resets the first one
    /// to the snapshot, makes the others rejoin. Changes since the backup are lost.
    Restore {
        /// The backup directory (as `pikube backup` printed it).
        backup: PathBuf,
        #[command(flatten)]
        target: Target,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Seconds each node may take to become Ready again.
        #[arg(long, default_value_t = 300)]
        ready_timeout: u64,
    },
    /// Download and verify the pinned k3s release files into the cache (or check the airgap dir).
    Artifacts {
        #[command(flatten)]
        cluster: FileArg,
        /// Architectures to fetch: amd64, arm64, armhf (repeat the flag) [default: all the
        /// distribution has: k3s all three, kubeadm amd64 and arm64].
        #[arg(long, value_name = "ARCH")]
        arch: Vec<String>,
    },
    /// Turn an existing inventory into a cluster file: `pikube import ansible INVENTORY [-o FILE]`.
    Import {
        #[command(subcommand)]
        command: crate::import::ImportCommand,
    },
    #[command(flatten)]
    Cards(sdcard::CardCommand),
    /// Local test nodes (systemd-nspawn containers) for trying pikube without Pis.
    Lab {
        #[command(subcommand)]
        command: lab::LabCommand,
    },
    /// Print the shell completion script (see the README for where to put it).
    Completions { shell: clap_complete::Shell },
}

/// How `up` and `down` report.
#[derive(Debug, clap::Args)]
struct Upgrade {
    /// Upgrades restart nodes without cordoning and draining them first.
    #[arg(long)]
    no_drain: bool,
    /// Seconds draining one node may take before the upgrade stops with the pods that block it.
    #[arg(long, default_value_t = 300, value_name = "SECONDS", conflicts_with = "no_drain")]
    drain_timeout: u64,
}

#[derive(Debug, clap::Args)]
struct Output {
    /// The line log even on a terminal (instead of the live per-host view).
    #[arg(long)]
    plain: bool,
    /// Print the result as JSON on stdout (the shape is in the README).
    #[arg(long)]
    json: bool,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Unwrapped lines: an error's `file:line:column: message` must survive pipes and logs intact.
    let _ = miette::set_hook(Box::new(|_| Box::new(miette::MietteHandlerOpts::new().wrap_lines(false).build())));
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PIKUBE_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(|| crate::progress::LogWriter)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = dispatch(cli.command) => r,
            _ = tokio::signal::ctrl_c() => {
                crate::progress::stop("interrupted");
                eprintln!("\ninterrupted: stopped before finishing. Every change pikube makes is atomic and \
                           re-checked, so re-run the same command to converge.");
                Ok(ExitCode::from(130))
            }
        }
    });
    // Don't wait for stuck SSH reads after an interrupt.
    runtime.shutdown_background();
    match outcome {
        Ok(code) => code,
        Err(report) => {
            crate::progress::stop("stopped");
            eprintln!("{report:?}");
            ExitCode::from(2)
        }
    }
}

async fn dispatch(command: Command) -> miette::Result<ExitCode> {
    match command {
        Command::Init { file, force } => init(&file, force),
        Command::Schema => {
            let schema = schemars::schema_for!(ClusterFile);
            println!("{}", serde_json::to_string_pretty(&schema).map_err(|e| miette::miette!("{e}"))?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { target, json } => check(target, json).await,
        Command::Plan { target, upgrade, new_cluster, json } => {
            let timeouts = Timeouts { reboot: 0, ready: 0, drain: upgrade.drain() };
            converge(target, Mode::DryRun, Output { plain: true, json }, timeouts, new_cluster).await
        }
        Command::Up { target, reboot_timeout, ready_timeout, upgrade, new_cluster, output } => {
            let timeouts = Timeouts { reboot: reboot_timeout, ready: ready_timeout, drain: upgrade.drain() };
            converge(target, Mode::Apply, output, timeouts, new_cluster).await
        }
        Command::Status { target, json } => status(target, json).await,
        Command::Certs { target, json } => certs(target, json).await,
        Command::Kubeconfig { target, merge } => kubeconfig(target, merge).await,
        Command::Down { target, limit, yes, output } => down(target, limit, yes, output).await,
        Command::Backup { target, keep } => backup(target, keep).await,
        Command::Restore { backup, target, yes, ready_timeout } => restore(target, &backup, yes, ready_timeout).await,
        Command::Artifacts { cluster, arch } => fetch_artifacts(cluster, arch),
        Command::Import { command } => crate::import::run(command).map(|()| ExitCode::SUCCESS),
        Command::Cards(command) => sdcard::run(command).await.map(|()| ExitCode::SUCCESS),
        Command::Lab { command } => lab::run(command).await.map(|()| ExitCode::SUCCESS),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "pikube",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init(file: &Path, force: bool) -> miette::Result<ExitCode> {
    if file.exists() && !force {
        miette::bail!(help = "use --force to overwrite it", "{} already exists", file.display());
    }
    std::fs::write(file, EXAMPLE).map_err(|e| miette::miette!("cannot write {}: {e}", file.display()))?;
    println!("wrote {} — edit the hosts, then run `pikube check -f {}`", file.display(), file.display());
    Ok(ExitCode::SUCCESS)
}

async fn check(target: Target, json: bool) -> miette::Result<ExitCode> {
    let cluster = Cluster::load(&target.cluster.file)?;
    let fleet = Fleet::connect(cluster, Mode::DryRun, target.parallel).await?;
    let findings = check::with_storage(&fleet).await;
    fleet.close().await;
    if json {
        let hosts: Vec<_> = fleet
            .nodes
            .iter()
            .map(|n| serde_json::json!({"name": n.name(), "address": n.spec.address(), "facts": n.facts()}))
            .collect();
        let doc = serde_json::json!({"findings": findings, "hosts": hosts});
        println!("{}", serde_json::to_string_pretty(&doc).map_err(|e| miette::miette!("{e}"))?);
    } else {
        print!("{}", facts_table(&fleet));
        println!();
        if findings.is_empty() {
            println!("No findings: all {} hosts look ready.", fleet.nodes.len());
        } else {
            print!("{}", check::table(&findings));
        }
    }
    let errors = findings.iter().filter(|f| f.severity == Severity::Error).count();
    Ok(if errors > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn facts_table(fleet: &Fleet) -> String {
    let rows: Vec<[String; 7]> = fleet
        .nodes
        .iter()
        .map(|n| match n.facts() {
            Some(f) => [
                n.name().to_string(),
                n.spec.address().to_string(),
                n.spec.role.value.as_str().to_string(),
                format!("{} {}", f.os_id, f.os_version_id),
                f.arch.as_str().to_string(),
                f.pi_model.clone().unwrap_or_else(|| "-".into()),
                format!("{} MiB", f.mem_total_kib / 1024),
            ],
            None => [
                n.name().to_string(),
                n.spec.address().to_string(),
                n.spec.role.value.as_str().to_string(),
                "unreachable".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
        })
        .collect();
    check::render_table(&["HOST", "ADDRESS", "ROLE", "OS", "ARCH", "MODEL", "RAM"], &rows)
}

struct Timeouts {
    reboot: u64,
    ready: u64,
    /// None: `--no-drain`.
    drain: Option<u64>,
}

impl Upgrade {
    fn drain(&self) -> Option<u64> {
        (!self.no_drain).then_some(self.drain_timeout)
    }
}

/// The rolling upgrade's order, one line, when nodes move to a new release.
fn upgrade_order(fleet: &Fleet) -> Option<String> {
    let order = fleet.upgrade_order.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if order.is_empty() {
        return None;
    }
    let kubeadm = fleet.cluster.distribution() == crate::config::Distribution::Kubeadm;
    let steps = match (fleet.drain_timeout, kubeadm) {
        (Some(_), false) => "drain, restart, Ready on the new version, uncordon",
        (None, false) => "restart, Ready on the new version; not drained (--no-drain)",
        (Some(_), true) => "kubeadm upgrade, drain, new kubelet, Ready on the new version, uncordon",
        (None, true) => "kubeadm upgrade, new kubelet, Ready on the new version; not drained (--no-drain)",
    };
    Some(format!("Upgrade order, one node at a time ({steps}): {}", order.join(" → ")))
}

/// A host's outcome in the report of `plan`, `up` and `down`.
fn outcome(node: &crate::fleet::Node, changed: bool, mode: Mode) -> &'static str {
    match (node.failure(), changed, mode) {
        (Some(_), _, _) => "FAILED",
        (None, false, _) => "no changes",
        (None, true, Mode::DryRun) => "would change",
        (None, true, Mode::Apply) => "changed",
    }
}

/// The JSON report of `plan`, `up` and `down` (documented in the README): per host its status,
/// changes and error, and the flat lists `changes` and `failed` that `plan --json` always had.
fn json_report(fleet: &Fleet, started: Instant) -> miette::Result<String> {
    let changes = fleet.journal.changes();
    let hosts: Vec<_> = fleet
        .nodes
        .iter()
        .map(|n| {
            let mine: Vec<_> = changes
                .iter()
                .filter(|c| c.host == n.name())
                .map(|c| serde_json::json!({"phase": c.phase, "what": c.what}))
                .collect();
            let status = outcome(n, !mine.is_empty(), fleet.mode).to_lowercase();
            serde_json::json!({
                "name": n.name(), "address": n.spec.address(), "role": n.role().as_str(),
                "status": status, "changes": mine, "error": n.failure(),
            })
        })
        .collect();
    let failed: Vec<_> = fleet.failures().iter().map(|(h, e)| serde_json::json!({"host": h, "error": e})).collect();
    let doc = serde_json::json!({
        "ok": failed.is_empty(), "hosts": hosts, "changes": changes, "failed": failed,
        "upgrade_order": fleet.upgrade_order.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        "seconds": started.elapsed().as_secs_f64(),
    });
    serde_json::to_string_pretty(&doc).map_err(|e| miette::miette!("{e}"))
}

async fn converge(
    target: Target,
    mode: Mode,
    output: Output,
    timeouts: Timeouts,
    new_cluster: bool,
) -> miette::Result<ExitCode> {
    let started = Instant::now();
    let cluster = Cluster::load(&target.cluster.file)?;
    if mode == Mode::Apply {
        crate::progress::start(cluster.hosts().map(|h| h.name.value.as_str()), output.plain);
    }
    let mut fleet = Fleet::connect(cluster, mode, target.parallel).await?;
    fleet.reboot_timeout = std::time::Duration::from_secs(timeouts.reboot);
    fleet.ready_timeout = std::time::Duration::from_secs(timeouts.ready);
    fleet.drain_timeout = timeouts.drain.map(std::time::Duration::from_secs);
    fleet.new_cluster = new_cluster;
    phases::run_all(&fleet).await;
    fleet.close().await;
    crate::progress::finish(&fleet.journal.changes());
    let changes = fleet.journal.changes();
    let failures = fleet.failures();
    let mut out = std::io::stdout().lock();
    if output.json {
        writeln!(out, "{}", json_report(&fleet, started)?).ok();
    } else {
        for node in &fleet.nodes {
            let mine: Vec<_> = changes.iter().filter(|c| c.host == node.name()).collect();
            let status = outcome(node, !mine.is_empty(), mode);
            writeln!(out, "{} ({}): {status}", node.name(), node.spec.address()).ok();
            for c in mine {
                writeln!(out, "  [{}] {}", c.phase, clean(&c.what)).ok();
            }
            if let Some(e) = node.failure() {
                writeln!(out, "  error: {}", clean(&e)).ok();
            }
        }
        if let Some(order) = upgrade_order(&fleet) {
            writeln!(out, "\n{order}").ok();
        }
        let hosts_changed = fleet.nodes.iter().filter(|n| changes.iter().any(|c| c.host == n.name())).count();
        let healthy = fleet.nodes.len() - failures.len();
        let summary = match (mode, changes.len()) {
            (Mode::DryRun, 0) => "Plan: no changes; the hosts match the cluster file.".to_string(),
            (Mode::DryRun, n) => format!("Plan: {n} change(s) on {hosts_changed} host(s). Run `pikube up` to apply."),
            (Mode::Apply, 0) if failures.is_empty() => {
                "Up: no changes; every host already converged and verified.".to_string()
            }
            (Mode::Apply, n) => {
                format!("Up: {n} change(s) applied; {healthy} of {} host(s) converged and verified.", fleet.nodes.len())
            }
        };
        writeln!(out, "\n{summary} ({:.1}s)", started.elapsed().as_secs_f64()).ok();
        if !failures.is_empty() {
            let names: Vec<_> = failures.iter().map(|(h, _)| *h).collect();
            writeln!(
                out,
                "{} host(s) failed: {}. The other hosts finished; fix the cause and re-run to converge.",
                failures.len(),
                names.join(", ")
            )
            .ok();
        }
    }
    Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Connects to the servers only (what `kubeconfig` needs), returning the whole cluster too:
/// the endpoint may be a load balancer host the servers-only fleet does not list.
async fn connect_servers(target: &Target, mode: Mode) -> miette::Result<(Fleet, Cluster)> {
    let whole = Cluster::load(&target.cluster.file)?;
    let mut servers = whole.clone();
    servers.spec.hosts.value.retain(|h| h.role.value == Role::Server);
    Ok((Fleet::connect(servers, mode, target.parallel).await?, whole))
}

async fn kubeconfig(target: Target, merge: bool) -> miette::Result<ExitCode> {
    let (fleet, cluster) = connect_servers(&target, Mode::DryRun).await?;
    let api = fleet.healthy(Role::Server).next().map(|(_, h)| h);
    let Some(api) = api else {
        let why: Vec<String> = fleet.failures().iter().map(|(h, e)| format!("{h}: {e}")).collect();
        miette::bail!(help = "start a server and retry", "no server answered: {}", why.join("; "));
    };
    let to = merge.then(|| {
        std::env::var_os("KUBECONFIG")
            .and_then(|k| std::env::split_paths(&k).next())
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".kube/config"))
    });
    let result = phases::write_kubeconfig(&cluster, api, to.as_deref()).await;
    fleet.close().await;
    let (path, changed) = result.map_err(|e| miette::miette!("{e}"))?;
    let name = cluster.name();
    match (merge, changed) {
        (true, _) => println!("merged context {name} into {} (now the current context)", path.display()),
        (false, true) => println!("wrote {}", path.display()),
        (false, false) => println!("{} is up to date", path.display()),
    }
    Ok(ExitCode::SUCCESS)
}

async fn certs(target: Target, json: bool) -> miette::Result<ExitCode> {
    use crate::distro::kubeadm::certs::{self, ServerCerts};
    let file = Cluster::load(&target.cluster.file)?;
    if file.distribution() != crate::config::Distribution::Kubeadm {
        miette::bail!(
            help = "k3s renews its own certificates when it starts and they expire within 90 days (`k3s certificate rotate` renews them by hand)",
            "`pikube certs` reads kubeadm's certificates, and {} is a k3s cluster",
            file.file.display()
        );
    }
    let (fleet, cluster) = connect_servers(&target, Mode::DryRun).await?;
    let days = cluster.renew_certificates_days();
    let read = futures::future::join_all(fleet.nodes.iter().map(|n| async move {
        match n.host.as_ref().filter(|_| n.ok()) {
            Some(h) => certs::read(h).await,
            None => Err(n.failure().unwrap_or_default()),
        }
    }))
    .await;
    fleet.close().await;
    let servers: Vec<ServerCerts> =
        fleet.nodes.iter().zip(read).map(|(n, r)| ServerCerts::new(n.name(), r, days)).collect();
    let bad = servers.iter().any(|s| s.error.is_some() || !s.due.is_empty());
    if json {
        let doc = serde_json::json!({"renew_certificates_days": days, "servers": servers});
        println!("{}", serde_json::to_string_pretty(&doc).map_err(|e| miette::miette!("{e}"))?);
    } else {
        print!("{}", certs::table(&servers, days));
    }
    Ok(if bad { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

async fn status(target: Target, json: bool) -> miette::Result<ExitCode> {
    let cluster = Cluster::load(&target.cluster.file)?;
    let d = cluster.distribution();
    let fleet = Fleet::connect(cluster, Mode::DryRun, target.parallel).await?;
    let server_unit = crate::distro::unit_name(d, Role::Server);
    let active =
        |n: &crate::fleet::Node| n.facts().is_some_and(|f| f.services.get(server_unit).is_some_and(|s| s.active));
    let api = fleet.healthy(Role::Server).find(|(n, _)| active(n)).map(|(_, h)| h);
    let nodes = match api {
        Some(h) => crate::distro::nodes(d, h)
            .await
            .map_err(|e| eprintln!("warning: {}", clean(&e.to_string())))
            .unwrap_or_default(),
        None => Default::default(),
    };
    let running: Vec<(&str, &crate::remote::Host)> =
        fleet.healthy(Role::Server).filter(|(n, _)| active(n)).map(|(n, h)| (n.name(), h)).collect();
    // kubeadm servers join through a token that pins the CA: they cannot start a cluster of their own.
    let split = match d {
        crate::config::Distribution::K3s => crate::k3s::disagreement(&running).await,
        crate::config::Distribution::Kubeadm => None,
    };
    let etcd = |n: &crate::fleet::Node| match n.role() {
        Role::Server => crate::distro::etcd_probe(d),
        _ => crate::health::EtcdProbe::None,
    };
    let certs = |n: &crate::fleet::Node| crate::distro::certificates_probe(d).filter(|_| n.role() == Role::Server);
    let health = futures::future::join_all(fleet.nodes.iter().map(|n| async move {
        match n.host.as_ref().filter(|_| n.ok()) {
            Some(h) => Some(crate::health::gather(h, &etcd(n), certs(n)).await),
            None => None,
        }
    }))
    .await;
    fleet.close().await;
    let states: Vec<HostState> =
        fleet.nodes.iter().zip(health).map(|(n, h)| HostState::of(d, n, nodes.get(n.name()), h)).collect();
    let all_ready =
        split.is_none() && states.iter().all(|s| s.role == Role::Loadbalancer.as_str() || s.node == "Ready");
    let healthy = all_ready && states.iter().all(|s| s.verdict == "healthy");
    let code = if healthy { ExitCode::SUCCESS } else { ExitCode::from(1) };
    if json {
        let doc = serde_json::json!({
            "ready": all_ready, "healthy": healthy, "endpoint": fleet.cluster.endpoint().url(), "hosts": states,
            "split": split,
        });
        println!("{}", serde_json::to_string_pretty(&doc).map_err(|e| miette::miette!("{e}"))?);
        return Ok(code);
    }
    let rows: Vec<[String; 10]> = states.iter().map(HostState::row).collect();
    let head = ["HOST", "ROLE", "ADDRESS", "SERVICE", "NODE", "VERSION", "SOC", "ROOT FREE", "MEM FREE", "VERDICT"];
    print!("{}", check::render_table(&head, &rows));
    for s in states.iter().filter(|s| !s.reasons.is_empty()) {
        println!("{}: {}: {}", s.name, s.verdict, clean(&s.reasons.join("; ")));
    }
    println!("\nendpoint: {}", fleet.cluster.endpoint().url());
    if let Some(split) = split {
        println!("\nerror: {split}\n  hint: a server with an empty disk started a cluster of its own; `pikube down --limit NODE --yes` then `pikube up` makes it join");
    }
    Ok(code)
}

/// One host in `status` (the table's row, and the JSON shape documented in the README).
#[derive(serde::Serialize)]
struct HostState {
    name: String,
    role: &'static str,
    address: String,
    /// The unit that runs the host's part: k3s, k3s-agent or haproxy.
    unit: &'static str,
    /// active, inactive, not installed or unreachable.
    service: &'static str,
    /// Ready, NotReady or not registered; `-` for a load balancer.
    node: String,
    /// The k3s binary's version on the host, when installed.
    version: Option<String>,
    /// The node's InternalIP as the API reports it.
    internal_ip: Option<String>,
    /// healthy, degraded or unreachable.
    verdict: &'static str,
    /// Why the host is degraded (thresholds in the README).
    reasons: Vec<String>,
    /// The readings behind the verdict (see `health::Health`); null when unreachable.
    health: Option<crate::health::Health>,
}

impl HostState {
    fn of(
        d: crate::config::Distribution,
        n: &crate::fleet::Node,
        api: Option<&crate::k3s::NodeStatus>,
        health: Option<Result<crate::health::Health, String>>,
    ) -> HostState {
        let unit = match n.role() {
            Role::Loadbalancer => "haproxy",
            r => crate::distro::unit_name(d, r),
        };
        let facts = n.facts();
        let service = match (n.failure(), facts.as_ref().and_then(|f| f.services.get(unit))) {
            (Some(_), _) => "unreachable",
            (None, Some(s)) if s.active => "active",
            (None, Some(s)) if s.enabled => "inactive",
            _ => "not installed",
        };
        let node = match (n.role(), api) {
            (Role::Loadbalancer, _) => "-",
            (_, Some(s)) if s.ready => "Ready",
            (_, Some(_)) => "NotReady",
            (_, None) => "not registered",
        };
        HostState {
            name: n.name().to_string(),
            role: n.role().as_str(),
            address: n.spec.address().to_string(),
            unit,
            service,
            node: node.to_string(),
            // `k3s --version` says "k3s version v1.31.4+k3s1 (fa8a1bfd)", `kubelet --version`
            // "Kubernetes v1.34.4".
            version: facts.and_then(|f| {
                let line = f.kubernetes.get(if unit == "kubelet" { "kubelet" } else { "k3s" })?;
                line.split_whitespace()
                    .find(|w| w.starts_with('v') && w[1..].starts_with(|c: char| c.is_ascii_digit()))
                    .map(str::to_string)
            }),
            internal_ip: api.map(|s| s.internal_ip.clone()).filter(|ip| !ip.is_empty()),
            verdict: "healthy",
            reasons: Vec::new(),
            health: None,
        }
        .judged(n, health)
    }

    /// Sets the verdict from the service, the node and the host's health readings.
    fn judged(mut self, n: &crate::fleet::Node, health: Option<Result<crate::health::Health, String>>) -> HostState {
        if self.service == "unreachable" {
            self.verdict = "unreachable";
            self.reasons = n.failure().into_iter().collect();
            return self;
        }
        if self.service != "active" {
            self.reasons.push(format!("{} is {}", self.unit, self.service));
        }
        if self.node != "Ready" && self.node != "-" {
            self.reasons.push(format!("node {}", self.node));
        }
        match health {
            Some(Ok(h)) => {
                let mut ips: Vec<&str> = vec![n.spec.address()];
                ips.extend(self.internal_ip.as_deref());
                let facts = n.facts();
                ips.extend(facts.iter().flat_map(|f| f.ipv4.iter().map(|a| a.address.as_str())));
                self.reasons.extend(h.reasons(n.role() == Role::Server, &ips));
                self.health = Some(h);
            }
            Some(Err(e)) => self.reasons.push(format!("health not read: {e}")),
            None => {}
        }
        if !self.reasons.is_empty() {
            self.verdict = "degraded";
        }
        self
    }

    fn row(&self) -> [String; 10] {
        let h = self.health.as_ref();
        let root = h.and_then(|h| h.filesystems.first());
        [
            self.name.clone(),
            self.role.into(),
            self.address.clone(),
            self.service_line(),
            self.node.clone(),
            self.version.clone().unwrap_or_else(|| "-".into()),
            h.and_then(|h| h.soc_temp_c).map_or("-".into(), |c| format!("{c:.1}°C")),
            root.map_or("-".into(), |f| format!("{} {:.0}%", crate::health::bytes(f.free_bytes), f.free_pct())),
            h.filter(|h| h.mem_total_kib > 0)
                .map_or("-".into(), |h| format!("{:.0}%", h.mem_available_kib as f64 * 100.0 / h.mem_total_kib as f64)),
            self.verdict.into(),
        ]
    }

    fn service_line(&self) -> String {
        if self.service == "unreachable" {
            return self.service.to_string();
        }
        format!("{} {}", self.unit, self.service)
    }
}

async fn down(target: Target, limit: Vec<String>, yes: bool, output: Output) -> miette::Result<ExitCode> {
    let cluster = Cluster::load(&target.cluster.file)?;
    for l in &limit {
        if !cluster.hosts().any(|h| &h.name.value == l) {
            miette::bail!(
                help = "name hosts as written under `hosts:`",
                "--limit {l}: no such host in {}",
                cluster.file.display()
            );
        }
    }
    let what = if limit.is_empty() { format!("the whole cluster {}", cluster.name()) } else { limit.join(", ") };
    let refusal = format!("refusing to tear down {what} without confirmation");
    if !confirmed(yes, &refusal, &format!("Tear down Kubernetes on {what}? Workloads there are lost. Type yes: "))? {
        return Ok(ExitCode::from(1));
    }
    let started = Instant::now();
    crate::progress::start(cluster.hosts().map(|h| h.name.value.as_str()), output.plain);
    let mut fleet = Fleet::connect(cluster, Mode::Apply, target.parallel).await?;
    let result = crate::down::run(&mut fleet, &limit).await;
    fleet.close().await;
    crate::progress::finish(&fleet.journal.changes());
    let notes = result.map_err(|e| miette::miette!("{e}"))?;
    let failures = fleet.failures();
    if output.json {
        notes.iter().for_each(|n| eprintln!("note: {n}"));
        println!("{}", json_report(&fleet, started)?);
        return Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }
    for (h, e) in &failures {
        println!("{h}: FAILED\n  error: {}", clean(e));
    }
    for n in &notes {
        println!("note: {}", clean(n));
    }
    println!("\nDown: {what} ({:.1}s)", started.elapsed().as_secs_f64());
    Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

async fn backup(target: Target, keep: Option<u64>) -> miette::Result<ExitCode> {
    let cluster = Cluster::load(&target.cluster.file)?;
    let fleet = Fleet::connect(cluster, Mode::Apply, target.parallel).await?;
    let taken = crate::backup::take(&fleet, "manual").await;
    fleet.close().await;
    let taken = taken.map_err(|e| miette::miette!("{e}"))?;
    let m = &taken.manifest;
    println!("backup of {} written to {}", m.cluster, taken.dir.display());
    println!("  snapshot  {} ({}) from server {}", m.snapshot, size(m.size), m.server);
    match m.distribution {
        crate::config::Distribution::K3s => {
            println!("  token     token (0600; a restore needs it to decrypt the snapshot)");
            println!("  checksums SHA256SUMS");
            println!("  the snapshot was removed from {} (k3s keeps its scheduled snapshots)", m.server);
        }
        crate::config::Distribution::Kubeadm => {
            println!("  pki       pki/ (cluster, front-proxy and etcd CAs, service-account keys; 0600)");
            println!("  checksums SHA256SUMS");
            println!("  the snapshot was removed from {}", m.server);
        }
    }
    if let Some(keep) = keep {
        let gone = crate::backup::prune(&fleet.cluster, keep as usize).map_err(|e| miette::miette!("{e}"))?;
        for dir in &gone {
            println!("deleted old backup {} (--keep {keep})", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / 1048576.0),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} bytes"),
    }
}

async fn restore(target: Target, dir: &Path, yes: bool, ready_timeout: u64) -> miette::Result<ExitCode> {
    let cluster = Cluster::load(&target.cluster.file)?;
    // The checksums first: a corrupt backup is refused before any server is touched.
    let backup = crate::backup::verify(dir).map_err(|e| miette::miette!("{e}"))?;
    let steps = crate::backup::restore_plan(&cluster, &backup);
    let m = &backup.manifest;
    let what = format!(
        "restore cluster {} from {} (taken {} on {}); changes made since then are lost. It would:\n{}",
        cluster.name(),
        dir.display(),
        m.created,
        m.server,
        steps.iter().enumerate().map(|(i, s)| format!("  {}. {s}", i + 1)).collect::<Vec<_>>().join("\n")
    );
    if !confirmed(yes, &format!("refusing to {what}\nNothing was done."), &format!("{what}\nType yes to restore: "))? {
        return Ok(ExitCode::from(1));
    }
    let started = Instant::now();
    let mut fleet = Fleet::connect(cluster, Mode::Apply, target.parallel).await?;
    fleet.ready_timeout = std::time::Duration::from_secs(ready_timeout);
    let say = |i: usize, s: &str| match i {
        0 => println!("   {s}"),
        i => println!("{i}/{}: {s}", steps.len()),
    };
    let result = crate::backup::restore(&fleet, &backup, &say).await;
    fleet.close().await;
    result.map_err(|e| miette::miette!("{e}"))?;
    println!("\nRestore: {} is back at {} ({:.1}s)", fleet.cluster.name(), m.created, started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

fn fetch_artifacts(file: FileArg, arches: Vec<String>) -> miette::Result<ExitCode> {
    use crate::facts::Arch;
    let cluster = Cluster::load(&file.file)?;
    let Some(version) = cluster.version() else {
        miette::bail!(
            help = "add `kubernetes: {version: v1.31.4+k3s1}`",
            "the cluster file pins no kubernetes.version"
        );
    };
    let arches = if arches.is_empty() {
        release_arches(cluster.distribution()).iter().map(|a| a.to_string()).collect()
    } else {
        arches
    };
    for a in arches {
        let arch = match a.as_str() {
            "amd64" | "x86_64" => Arch::X86_64,
            "arm64" | "aarch64" => Arch::Aarch64,
            "armhf" | "arm" | "armv7" => Arch::Armv7,
            other => miette::bail!(help = "use amd64, arm64 or armhf", "unknown architecture {other:?}"),
        };
        let bins = crate::distro::binaries(&cluster, version, &arch, false)
            .map_err(|e| miette::miette!(help = e.hint(), "{e}"))?;
        for bin in bins {
            println!("{a}: {} ({} bytes, sha256 {}) verified", bin.path.display(), bin.size, bin.sha256);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The architectures a distribution releases (upstream Kubernetes has no 32-bit arm since v1.27).
fn release_arches(d: crate::config::Distribution) -> &'static [&'static str] {
    match d {
        crate::config::Distribution::K3s => &["amd64", "arm64", "armhf"],
        crate::config::Distribution::Kubeadm => &["amd64", "arm64"],
    }
}

/// A destructive command goes on with `--yes`, or when the user types `yes` at `prompt`; without
/// a terminal to ask on it is refused with `refusal`.
fn confirmed(yes: bool, refusal: &str, prompt: &str) -> miette::Result<bool> {
    use std::io::IsTerminal;
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        miette::bail!(help = "add --yes to confirm", "{refusal}");
    }
    eprint!("{prompt}");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).ok();
    if answer.trim() != "yes" {
        eprintln!("nothing done");
    }
    Ok(answer.trim() == "yes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeadm_artifacts_are_refused_for_32_bit_arm() {
        use crate::config::Distribution;
        assert_eq!(release_arches(Distribution::Kubeadm), ["amd64", "arm64"]);
        assert_eq!(release_arches(Distribution::K3s), ["amd64", "arm64", "armhf"]);
        let dir = std::env::temp_dir().join(format!("pikube-armhf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cluster.yaml");
        let text = "name: t\nkubernetes: {distribution: kubeadm, version: v1.34.4}\nhosts:\n  - {name: a, address: 10.0.0.1, role: server}\n";
        std::fs::write(&file, text).unwrap();
        let refused = fetch_artifacts(FileArg { file }, vec!["armhf".into()]).expect_err("armhf is refused");
        let shown = format!("{refused:?}");
        assert!(shown.contains("Kubernetes publishes no kubeadm or kubelet for 32-bit arm since v1.27"), "{shown}");
        assert!(shown.contains("install the 64-bit (arm64) OS"), "{shown}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
