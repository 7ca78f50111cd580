//! The one typed interface for remote commands: quoting, sudo, timeouts and the dry-run guard.
//!
//! Phases never build ad-hoc SSH strings. They describe a [`Cmd`] (read-only or mutating) and
//! hand it to a [`Host`]. In [`Mode::DryRun`] (`pikube plan`) a mutating command is recorded as
//! a planned change and not sent; trying to `run` one directly is refused, so a phase cannot
//! change a host during `plan` by accident.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::ssh::{Output, Session, SshError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Apply,
    DryRun,
}

/// A password for sudo; never printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// POSIX shell single-quoting.
pub fn quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The line the sudo check sends after the password; only sudo reading the password first
/// leaves it as the command's first line.
const SUDO_MARKER: &str = "pikube-sudo-read-the-password";
/// The sudo check's exit status when the command read something else first.
const UNREAD: u32 = 3;

/// One remote command, run as root (through sudo when the login user is not root).
#[derive(Debug, Clone)]
pub struct Cmd {
    script: String,
    mutates: bool,
    timeout: Duration,
    stdin: Option<Vec<u8>>,
}

impl Cmd {
    /// A mutating program invocation; arguments are quoted. Guarded in dry-run.
    pub fn change(program: &str, args: &[&str]) -> Cmd {
        Cmd::new(argv(program, args), true)
    }
    /// A read-only shell snippet written by pikube (never containing user input unquoted).
    pub fn read_script(script: impl Into<String>) -> Cmd {
        Cmd::new(script.into(), false)
    }
    /// A mutating shell snippet written by pikube. Guarded in dry-run.
    pub fn change_script(script: impl Into<String>) -> Cmd {
        Cmd::new(script.into(), true)
    }
    fn new(script: String, mutates: bool) -> Cmd {
        Cmd { script, mutates, timeout: DEFAULT_TIMEOUT, stdin: None }
    }
    pub fn timeout(mut self, t: Duration) -> Cmd {
        self.timeout = t;
        self
    }
    pub fn stdin(mut self, data: Vec<u8>) -> Cmd {
        self.stdin = Some(data);
        self
    }
}

fn argv(program: &str, args: &[&str]) -> String {
    let mut s = quote(program);
    for a in args {
        s.push(' ');
        s.push_str(&quote(a));
    }
    s
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("{host}: `{command}` failed (exit {status}): {stderr}")]
    Failed { host: String, command: String, status: String, stderr: String },
    #[error("{host}: sudo refused: {reason}")]
    Sudo { host: String, reason: String },
    #[error("{host}: internal error: mutating command attempted in plan mode: {command}")]
    DryRunViolation { host: String, command: String },
}

/// One planned or applied change on a host, as shown by `plan` and `up`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub host: String,
    pub phase: String,
    pub what: String,
}

/// Where changes are collected, shared by all hosts of a run.
#[derive(Debug, Default, Clone)]
pub struct Journal(Arc<Mutex<Vec<Change>>>);

impl Journal {
    pub fn push(&self, c: Change) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(c);
    }
    pub fn changes(&self) -> Vec<Change> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A remote file's sha256 and octal mode; both empty when the file does not exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileState {
    pub sha256: String,
    pub mode: String,
}

/// How commands get root on a host; found once per host (see [`Host::sudo`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sudo {
    /// Logged in as root.
    None,
    /// `sudo -n`: sudo must not ask (NOPASSWD), and stdin belongs to the command alone.
    NoPassword,
    /// `sudo -k -S`: sudo asks every time and reads the password line before the command runs.
    Password,
}

/// A connected host with its privileges and the run's mode.
pub struct Host {
    pub name: String,
    session: Mutex<Session>,
    login_user: String,
    login_is_root: bool,
    sudo_password: Option<Secret>,
    sudo: tokio::sync::OnceCell<Sudo>,
    mode: Mode,
    journal: Journal,
    phase: Mutex<String>,
}

impl Host {
    pub fn new(
        name: String,
        session: Session,
        login_user: &str,
        sudo_password: Option<Secret>,
        mode: Mode,
        journal: Journal,
    ) -> Host {
        Host {
            name,
            session: Mutex::new(session),
            login_user: login_user.to_string(),
            login_is_root: login_user == "root",
            sudo_password,
            sudo: tokio::sync::OnceCell::new(),
            mode,
            journal,
            phase: Mutex::new(String::new()),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn session(&self) -> Session {
        self.session.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swap in a new connection (after a reboot).
    pub fn replace_session(&self, s: Session) {
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// Name of the phase now running on this host, used to label recorded changes.
    pub fn set_phase(&self, phase: &str) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase.to_string();
        crate::progress::host_phase(&self.name, phase);
    }

    /// Runs a command and returns its output whatever the exit status.
    /// Refuses mutating commands in dry-run mode: use [`Host::apply`] for changes.
    pub async fn run(&self, cmd: &Cmd) -> Result<Output, RemoteError> {
        if cmd.mutates && self.mode == Mode::DryRun {
            return Err(RemoteError::DryRunViolation { host: self.name.clone(), command: cmd.script.clone() });
        }
        let sudo = self.sudo().await?;
        let (line, stdin) = self.wrap(sudo, cmd);
        let out = self.session().exec(&line, stdin.as_deref(), cmd.timeout).await?;
        if sudo != Sudo::None {
            self.sudo_refused(&out, sudo == Sudo::Password)?;
        }
        Ok(out)
    }

    /// Finds, once per host, whether sudo needs the password. `-k` ignores cached credentials,
    /// so `sudo -n -k` succeeds only when the policy itself is NOPASSWD; then the password is
    /// never sent, because sudo would not read it and the command would get it on stdin.
    /// A password is tried once on its own, so a wrong one fails here and not by feeding
    /// a command's input to sudo as further password attempts. Then a command behind sudo
    /// reads the line after the password, a marker: it proves sudo took the password line,
    /// which a PAM module answering first (pam_permit, a U2F key) would leave to every
    /// command's input.
    async fn sudo(&self) -> Result<Sudo, RemoteError> {
        let init = || async {
            if self.login_is_root {
                return Ok(Sudo::None);
            }
            let Some(pw) = &self.sudo_password else { return Ok(Sudo::NoPassword) };
            let session = self.session();
            if session.exec("sudo -n -k -- sh -c true", None, DEFAULT_TIMEOUT).await?.success() {
                return Ok(Sudo::NoPassword);
            }
            let line = format!("{}\n", pw.expose()).into_bytes();
            let out = session.exec("sudo -k -S -p '' -- sh -c true", Some(&line), DEFAULT_TIMEOUT).await?;
            self.sudo_refused(&out, true)?;
            if !out.success() {
                return Err(RemoteError::Sudo {
                    host: self.name.clone(),
                    reason: sudo_reason(&out.stderr_str(), true),
                });
            }
            // The password is right (asked apart: a wrong one is not tried twice, and PAM may
            // lock the account after a few failures). Now the marker after it.
            let probe = format!("sudo -k -S -p '' -- sh -c 'read -r l && [ \"$l\" = {SUDO_MARKER} ] || exit {UNREAD}'");
            let stdin = format!("{}\n{SUDO_MARKER}\n", pw.expose()).into_bytes();
            let out = session.exec(&probe, Some(&stdin), DEFAULT_TIMEOUT).await?;
            let reason = match out.status {
                Some(0) => return Ok(Sudo::Password),
                Some(UNREAD) => format!(
                    "sudo let {} in without reading the password (a PAM module answered first), so the password \
                     would reach the commands' input; give the login user NOPASSWD in sudoers, or log in as root",
                    self.login_user
                ),
                _ => sudo_reason(&out.stderr_str(), true),
            };
            Err(RemoteError::Sudo { host: self.name.clone(), reason })
        };
        self.sudo.get_or_try_init(init).await.copied()
    }

    /// A sudo refusal (rather than the command's own failure) as a clear error.
    fn sudo_refused(&self, out: &Output, sent_password: bool) -> Result<(), RemoteError> {
        let err = out.stderr_str();
        if out.status == Some(1)
            && err.contains("sudo:")
            && (err.contains("password") || err.contains("not in the sudoers"))
        {
            return Err(RemoteError::Sudo { host: self.name.clone(), reason: sudo_reason(&err, sent_password) });
        }
        Ok(())
    }

    /// Runs a command and fails unless it exits 0; returns stdout.
    pub async fn run_ok(&self, cmd: &Cmd) -> Result<String, RemoteError> {
        let out = self.run(cmd).await?;
        if !out.success() {
            return Err(self.failed(cmd, &out));
        }
        Ok(out.stdout_str())
    }

    /// Records `what` as a change of the current phase and, unless planning, runs `cmd`.
    pub async fn apply(&self, what: impl Into<String>, cmd: &Cmd) -> Result<(), RemoteError> {
        self.record(what.into());
        if self.mode == Mode::DryRun {
            return Ok(());
        }
        self.run_ok(cmd).await.map(|_| ())
    }

    /// Makes `path` hold exactly `content` (and `mode`, when given), writing only when the
    /// checksum differs. Returns whether it changed (or would change, when planning).
    /// `mode: None` leaves permissions alone: FAT boot partitions refuse chmod.
    pub async fn ensure_file(&self, path: &str, content: &[u8], mode: Option<u32>) -> Result<bool, RemoteError> {
        let have = self.file_state(path).await?;
        self.ensure_file_from(path, content, &hex::encode(Sha256::digest(content)), mode, &have).await
    }

    /// Removes the file at `path` when there is one (`why`: for the report); returns whether
    /// it did (or would, when planning).
    pub async fn remove_file(&self, path: &str, why: &str) -> Result<bool, RemoteError> {
        if self.file_state(path).await?.sha256.is_empty() {
            return Ok(false);
        }
        self.apply(format!("remove {path} ({why})"), &Cmd::change("rm", &["-f", path])).await?;
        Ok(true)
    }

    /// The checksum and mode of the file at `path`, both empty when there is none.
    pub async fn file_state(&self, path: &str) -> Result<FileState, RemoteError> {
        let probe = Cmd::read_script(format!(
            "if [ -f {p} ]; then sha256sum < {p} | cut -d' ' -f1; stat -c %a {p}; fi",
            p = quote(path)
        ));
        let out = self.run_ok(&probe).await?;
        let mut lines = out.lines();
        let (sha256, mode) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
        Ok(FileState { sha256: sha256.to_string(), mode: mode.to_string() })
    }

    /// [`Host::ensure_file`] for a caller that already has the content's checksum (`want`)
    /// and the file's state, e.g. to report before a large push.
    pub async fn ensure_file_from(
        &self,
        path: &str,
        content: &[u8],
        want: &str,
        mode: Option<u32>,
        have: &FileState,
    ) -> Result<bool, RemoteError> {
        if have.sha256 == want && mode.is_none_or(|m| have.mode == format!("{m:o}")) {
            return Ok(false);
        }
        let verb = if have.sha256.is_empty() { "create" } else { "update" };
        let chmod = mode.map(|m| format!("chmod {m:o} \"$t\"; ")).unwrap_or_default();
        let write = Cmd::change_script(format!(
            "set -e; d=$(dirname {p}); mkdir -p \"$d\"; t=$(mktemp \"$d/.pikube.XXXXXX\"); \
             cat > \"$t\"; {chmod}sync \"$t\" 2>/dev/null || true; mv -f \"$t\" {p}",
            p = quote(path),
        ))
        .stdin(content.to_vec())
        .timeout(Duration::from_secs(600));
        self.apply(format!("{verb} {path}"), &write).await?;
        Ok(true)
    }

    /// Notes a change in the journal; when applying, also shows it live on stderr.
    pub fn record(&self, what: String) {
        let phase = self.phase.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if self.mode == Mode::Apply {
            crate::progress::step(&self.name, &what);
        }
        self.journal.push(Change { host: self.name.clone(), phase, what });
    }

    fn failed(&self, cmd: &Cmd, out: &Output) -> RemoteError {
        let stderr = out.stderr_str();
        let stderr = stderr.trim();
        RemoteError::Failed {
            host: self.name.clone(),
            command: first_line(&cmd.script),
            status: out.status.map_or("none".into(), |s| s.to_string()),
            stderr: if stderr.is_empty() { first_line(out.stdout_str().trim()) } else { stderr.to_string() },
        }
    }

    /// The command line actually sent, and the stdin (sudo password first when sudo asks).
    fn wrap(&self, sudo: Sudo, cmd: &Cmd) -> (String, Option<Vec<u8>>) {
        let shell = format!("sh -c {}", quote(&cmd.script));
        match (sudo, &self.sudo_password) {
            (Sudo::None, _) => (shell, cmd.stdin.clone()),
            // -k makes sudo ask (and so read the line) every time; -p '' keeps the prompt out
            // of stderr.
            (Sudo::Password, Some(pw)) => {
                let mut stdin = format!("{}\n", pw.expose()).into_bytes();
                stdin.extend_from_slice(cmd.stdin.as_deref().unwrap_or_default());
                (format!("sudo -k -S -p '' -- {shell}"), Some(stdin))
            }
            (Sudo::NoPassword | Sudo::Password, _) => (format!("sudo -n -- {shell}"), cmd.stdin.clone()),
        }
    }
}

fn first_line(s: &str) -> String {
    let l = s.lines().next().unwrap_or("").trim();
    if l.chars().count() > 120 {
        format!("{}…", l.chars().take(120).collect::<String>())
    } else {
        l.to_string()
    }
}

fn sudo_reason(stderr: &str, had_password: bool) -> String {
    if stderr.contains("not in the sudoers") {
        "the login user may not use sudo; log in as root or add the user to the sudo group".into()
    } else if had_password {
        "the sudo password was rejected; check ssh.sudo_password".into()
    } else {
        "sudo wants a password; set ssh.sudo_password (e.g. {env: PIKUBE_SUDO_PASSWORD}) or allow NOPASSWD".into()
    }
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quoting_survives_the_shell() {
        for s in ["plain", "with space", "it's", "$(rm -rf /)", "", "a\"b", "tab\there"] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", quote(s)))
                .output()
                .expect("sh runs");
            assert_eq!(String::from_utf8_lossy(&out.stdout), s);
        }
    }
}
