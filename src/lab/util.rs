//! Small process and file helpers shared by the lab modules.
//!
//! The lab drives host tools (`ip`, `mount`, `debootstrap`, `systemd-nspawn`, …) and inspects
//! processes through `/proc`, because the crate has no libc binding of its own.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use miette::{miette, IntoDiagnostic, Result, WrapErr};

/// Runs a command to completion and returns its stdout; a failure carries the command line and
/// its stderr so the user sees what the host tool said.
pub fn run(cmd: &mut Command) -> Result<String> {
    let shown = describe(cmd);
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| miette!("could not run `{shown}`: {e}"))?;
    if !out.status.success() {
        return Err(miette!("`{shown}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command whose output goes to `log` (long builds), pointing at the log on failure.
pub fn run_logged(cmd: &mut Command, log: &Path) -> Result<()> {
    let shown = describe(cmd);
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .into_diagnostic()
        .wrap_err_with(|| format!("opening {}", log.display()))?;
    writeln!(file, "+ {shown}").into_diagnostic()?;
    let err = file.try_clone().into_diagnostic()?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .status()
        .map_err(|e| miette!("could not run `{shown}`: {e}"))?;
    if !status.success() {
        return Err(miette!("`{shown}` failed ({status}); see {}", log.display()));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

/// Whether the effective uid is 0 (read from /proc: no libc here).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Whether `program` is on PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// (state, parent pid, comm) of a process, from /proc/<pid>/stat.
fn stat(pid: u32) -> Option<(char, u32, String)> {
    let raw = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = raw.find('(')?;
    let close = raw.rfind(')')?;
    let comm = raw[open + 1..close].to_string();
    let mut rest = raw[close + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid, comm))
}

/// Whether `pid` is a live (non-zombie) process whose command line contains every `marker`;
/// the markers guard against a recycled pid from a stale pid file.
pub fn alive(pid: u32, markers: &[&str]) -> bool {
    match stat(pid) {
        Some((state, _, _)) if state != 'Z' && state != 'X' => {}
        _ => return false,
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    markers.iter().all(|m| args.iter().any(|a| a == m))
}

/// Live children of `pid` with their comm.
pub fn children(pid: u32) -> Vec<(u32, String)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| match stat(p) {
            Some((state, ppid, comm)) if ppid == pid && state != 'Z' => Some((p, comm)),
            _ => None,
        })
        .collect()
}

/// Sends `signal` (a name such as TERM or KILL) to `pid` with kill(1).
pub fn signal(pid: u32, signal: &str) {
    // The process may already be gone; that is the outcome the caller wants anyway.
    let _ = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Polls `done` every 200 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Reads a pid file; a missing or garbled file means "no process".
pub fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `path` is a mount point in this mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().filter_map(|l| l.split(' ').nth(4)).any(|mount_point| mount_point == want)
}

/// Whether any mount point lies at or below `dir` (guards recursive deletes).
pub fn has_mounts_below(dir: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return true;
    };
    info.lines().filter_map(|l| l.split(' ').nth(4)).any(|mount_point| Path::new(mount_point).starts_with(dir))
}

/// Writes a file atomically (temp file + rename) so readers never see half a file.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    fs::write(&tmp, contents)
        .and_then(|_| fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)))
        .and_then(|_| fs::rename(&tmp, path))
        .into_diagnostic()
        .wrap_err_with(|| format!("writing {}", path.display()))
}

/// Detaches `argv` into its own session (setsid) with stdio to `log`, so it outlives this
/// command and is not hit by the terminal's signals.
pub fn spawn_detached(argv: &[String], log: &Path) -> Result<()> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .into_diagnostic()
        .wrap_err_with(|| format!("opening {}", log.display()))?;
    let err = out.try_clone().into_diagnostic()?;
    Command::new("setsid")
        .args(argv)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map(drop)
        .map_err(|e| miette!("could not start `{}`: {e}", argv.join(" ")))
}

/// This binary, for re-executing hidden subcommands. If it was replaced on disk while running
/// (a rebuild), the old image stays reachable through /proc as long as we live, and the
/// callers only need it until their child has started.
pub fn self_exe() -> Result<String> {
    match std::env::current_exe() {
        Ok(path) if path.is_file() => Ok(path.to_string_lossy().into_owned()),
        _ => {
            let proc_exe = format!("/proc/{}/exe", std::process::id());
            if Path::new(&proc_exe).exists() {
                Ok(proc_exe)
            } else {
                Err(miette!("cannot locate the pikube binary to start a helper process"))
            }
        }
    }
}
