//! Command line: parse, dispatch, render, exit codes (0 ok, 1 some host failed, 2 bad input).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

use crate::check::{self, Severity};
use crate::config::{Cluster, ClusterFile, FileArg, EXAMPLE};
use crate::fleet::Fleet;
use crate::lab;
use crate::phases;
use crate::remote::Mode;
use crate::sdcard;

#[derive(Debug, Parser)]
#[command(name = "pikube", version, about = "Raspberry Pis (or any Debian/Ubuntu hosts) → Kubernetes, from one cluster file")]
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
    },
    #[command(flatten)]
    Cards(sdcard::CardCommand),
    /// Local test nodes (systemd-nspawn containers) for trying pikube without Pis.
    Lab {
        #[command(subcommand)]
        command: lab::LabCommand,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Unwrapped lines: an error's `file:line:column: message` must survive pipes and logs intact.
    let _ = miette::set_hook(Box::new(|_| Box::new(miette::MietteHandlerOpts::new().wrap_lines(false).build())));
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PIKUBE_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
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
        Command::Plan { target, json } => converge(target, Mode::DryRun, json, 0).await,
        Command::Up { target, reboot_timeout } => converge(target, Mode::Apply, false, reboot_timeout).await,
        Command::Cards(command) => sdcard::run(command).await.map(|()| ExitCode::SUCCESS),
        Command::Lab { command } => lab::run(command).await.map(|()| ExitCode::SUCCESS),
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

async fn converge(target: Target, mode: Mode, json: bool, reboot_timeout: u64) -> miette::Result<ExitCode> {
    let started = Instant::now();
    let cluster = Cluster::load(&target.cluster.file)?;
    let mut fleet = Fleet::connect(cluster, mode, target.parallel).await?;
    fleet.reboot_timeout = std::time::Duration::from_secs(reboot_timeout);
    phases::run_all(&fleet).await;
    fleet.close().await;
    let changes = fleet.journal.changes();
    let failures = fleet.failures();
    let mut out = std::io::stdout().lock();
    if json {
        let doc = serde_json::json!({
            "changes": changes,
            "failed": failures.iter().map(|(h, e)| serde_json::json!({"host": h, "error": e})).collect::<Vec<_>>(),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc).map_err(|e| miette::miette!("{e}"))?).ok();
    } else {
        for node in &fleet.nodes {
            let mine: Vec<_> = changes.iter().filter(|c| c.host == node.name()).collect();
            let status = match (node.failure(), mine.is_empty(), mode) {
                (Some(_), _, _) => "FAILED",
                (None, true, _) => "no changes",
                (None, false, Mode::DryRun) => "would change",
                (None, false, Mode::Apply) => "changed",
            };
            writeln!(out, "{} ({}): {status}", node.name(), node.spec.address()).ok();
            for c in mine {
                writeln!(out, "  [{}] {}", c.phase, c.what).ok();
            }
            if let Some(e) = node.failure() {
                writeln!(out, "  error: {e}").ok();
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
