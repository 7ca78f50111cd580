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
        output: Output,
    },
    /// Show each host's Kubernetes state: service, Ready, node IP (exit 1 when not all Ready).
    Status {
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
        #[arg(long, value_name = "HOST")]
        limit: Vec<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        output: Output,
    },
    /// Download and verify the pinned k3s release files into the cache (or check the airgap dir).
    Artifacts {
        #[command(flatten)]
        cluster: FileArg,
        /// Architectures to fetch: amd64, arm64, armhf (repeat the flag) [default: all three].
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
        Command::Plan { target, json } => {
            converge(target, Mode::DryRun, Output { plain: true, json }, Timeouts { reboot: 0, ready: 0 }).await
        }
        Command::Up { target, reboot_timeout, ready_timeout, output } => {
            converge(target, Mode::Apply, output, Timeouts { reboot: reboot_timeout, ready: ready_timeout }).await
        }
        Command::Status { target, json } => status(target, json).await,
        Command::Kubeconfig { target, merge } => kubeconfig(target, merge).await,
        Command::Down { target, limit, yes, output } => down(target, limit, yes, output).await,
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
    let findings = check::findings(&fleet);
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
        "seconds": started.elapsed().as_secs_f64(),
    });
    serde_json::to_string_pretty(&doc).map_err(|e| miette::miette!("{e}"))
}

async fn converge(target: Target, mode: Mode, output: Output, timeouts: Timeouts) -> miette::Result<ExitCode> {
    let started = Instant::now();
    let cluster = Cluster::load(&target.cluster.file)?;
    if mode == Mode::Apply {
        crate::progress::start(cluster.hosts().map(|h| h.name.value.as_str()), output.plain);
    }
    let mut fleet = Fleet::connect(cluster, mode, target.parallel).await?;
    fleet.reboot_timeout = std::time::Duration::from_secs(timeouts.reboot);
    fleet.ready_timeout = std::time::Duration::from_secs(timeouts.ready);
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
    fleet.close().await;
    let states: Vec<HostState> = fleet.nodes.iter().map(|n| HostState::of(d, n, nodes.get(n.name()))).collect();
    let all_ready =
        split.is_none() && states.iter().all(|s| s.role == Role::Loadbalancer.as_str() || s.node == "Ready");
    if json {
        let doc = serde_json::json!({
            "ready": all_ready, "endpoint": fleet.cluster.endpoint().url(), "hosts": states, "split": split,
        });
        println!("{}", serde_json::to_string_pretty(&doc).map_err(|e| miette::miette!("{e}"))?);
        return Ok(if all_ready { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }
    let rows: Vec<[String; 5]> = states
        .iter()
        .map(|s| [s.name.clone(), s.role.into(), s.address.clone(), s.service_line(), s.node.clone()])
        .collect();
    print!("{}", check::render_table(&["HOST", "ROLE", "ADDRESS", "SERVICE", "NODE"], &rows));
    println!("\nendpoint: {}", fleet.cluster.endpoint().url());
    if let Some(split) = split {
        println!("\nerror: {split}\n  hint: a server with an empty disk started a cluster of its own; `pikube down --limit NODE --yes` then `pikube up` makes it join");
    }
    Ok(if all_ready { ExitCode::SUCCESS } else { ExitCode::from(1) })
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
}

impl HostState {
    fn of(d: crate::config::Distribution, n: &crate::fleet::Node, api: Option<&crate::k3s::NodeStatus>) -> HostState {
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
        }
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
    if !yes {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            miette::bail!(help = "add --yes to confirm", "refusing to tear down {what} without confirmation");
        }
        eprint!("Tear down Kubernetes on {what}? Workloads there are lost. Type yes: ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).ok();
        if answer.trim() != "yes" {
            eprintln!("nothing done");
            return Ok(ExitCode::from(1));
        }
    }
    let started = Instant::now();
    crate::progress::start(cluster.hosts().map(|h| h.name.value.as_str()), output.plain);
    let fleet = Fleet::connect(cluster, Mode::Apply, target.parallel).await?;
    let result = crate::down::run(&fleet, &limit).await;
    fleet.close().await;
    crate::progress::finish(&fleet.journal.changes());
    result.map_err(|e| miette::miette!("{e}"))?;
    let failures = fleet.failures();
    if output.json {
        println!("{}", json_report(&fleet, started)?);
        return Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }
    for (h, e) in &failures {
        println!("{h}: FAILED\n  error: {}", clean(e));
    }
    println!("\nDown: {what} ({:.1}s)", started.elapsed().as_secs_f64());
    Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
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
    let arches = if arches.is_empty() { vec!["amd64".into(), "arm64".into(), "armhf".into()] } else { arches };
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
