//! SSH engine: one connection per host per run, many channels over it.
//!
//! Contract used by the rest of pikube (see `remote` for the typed command layer on top):
//! - [`Target`] is everything needed to reach one host, already merged from the cluster file
//!   and `~/.ssh/config` (see [`config::resolve`]).
//! - [`Session::connect`] authenticates (agent keys, then identity files), checks the host key
//!   against known_hosts under a [`HostKeyPolicy`], and goes through the ProxyJump hop(s) if set.
//! - [`Session::exec`] runs one already-quoted command line on a new channel, optionally
//!   feeding stdin, bounded by a timeout. It never logs stdin (it may carry a sudo password).

pub mod config;
mod known_hosts;
mod pattern;
mod session;

use std::path::PathBuf;
use std::time::Duration;

pub use session::{Session, MAX_OUTPUT};

/// What to do with a host key that is not in known_hosts. A *changed* key is always refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyPolicy {
    /// Refuse hosts whose key is not already in known_hosts.
    #[default]
    Strict,
    /// Record unknown keys in known_hosts on first contact (like OpenSSH `accept-new`).
    AcceptNew,
}

/// Everything needed to reach one host.
#[derive(Debug, Clone)]
pub struct Target {
    /// Name used in messages (the cluster file's host name).
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    /// Private key files to try, in order, after the agent's keys.
    pub identity_files: Vec<PathBuf>,
    /// Try keys from `$SSH_AUTH_SOCK` first.
    pub use_agent: bool,
    /// ProxyJump hop, reached first; the target is then reached through it.
    pub jump: Option<Box<Target>>,
    pub known_hosts: PathBuf,
    pub host_key_policy: HostKeyPolicy,
    pub connect_timeout: Duration,
}

/// Result of one remote command.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Exit status; `None` when the remote side closed without one (e.g. killed by a signal).
    pub status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot reach {host} at {address}:{port}: {reason}")]
    Unreachable { host: String, address: String, port: u16, reason: String },
    #[error("authentication as {user}@{host} failed (tried: {tried})")]
    AuthFailed { host: String, user: String, tried: String },
    #[error("host key of {host} ({fingerprint}) is not in {known_hosts}")]
    HostKeyUnknown { host: String, fingerprint: String, known_hosts: PathBuf },
    #[error("HOST KEY OF {host} CHANGED ({fingerprint}); known_hosts {known_hosts}:{line} has another key")]
    HostKeyChanged { host: String, fingerprint: String, known_hosts: PathBuf, line: usize },
    #[error("command on {host} timed out after {after:?}")]
    Timeout { host: String, after: Duration },
    #[error("{host}: `{command}` printed more than {limit_mib} MiB, so it was stopped; pikube reads far less: is a file it reads a link to a device such as /dev/zero?")]
    OutputTooLarge { host: String, command: String, limit_mib: usize },
    #[error("connection to {host} lost: {reason}")]
    Disconnected { host: String, reason: String },
    #[error("{host}: {reason}")]
    Other { host: String, reason: String },
}
