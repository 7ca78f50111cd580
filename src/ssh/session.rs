//! [`Session`]: one authenticated russh connection, shared by many concurrent commands.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::agent::client::AgentClient;
use russh::keys::agent::AgentIdentity;
use russh::keys::{decode_secret_key, Algorithm, HashAlg, PrivateKeyWithHashAlg, PublicKey};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Disconnect, Preferred, Sig};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::known_hosts::{self, Verdict};
use super::{HostKeyPolicy, Output, SshError, Target};

/// A host that stops answering is dropped after about a minute instead of hanging the run.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_MAX: usize = 3;
/// OpenSSH's sshd allows 10 sessions per connection (`MaxSessions`); stay under it and queue
/// the rest rather than fail them.
const MAX_CHANNELS: usize = 8;
/// Most output (stdout and stderr together) one command may return before it is stopped.
/// pikube reads kilobytes (facts, kubeconfig, tokens); the cap keeps a host with endless
/// output (a file it reads linked to /dev/zero) from exhausting the operator's memory,
/// even with many hosts in parallel.
pub const MAX_OUTPUT: usize = 16 * 1024 * 1024;
/// Bound on the polite goodbyes (signal, close, disconnect), which must not hang a caller.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// One connection to one host. Cheap to clone; clones share the connection, and commands run
/// concurrently on it as separate channels.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    handle: Handle<Verifier>,
    channels: Semaphore,
    closed: AtomicBool,
    /// The ProxyJump connection this one is tunnelled through; it must live as long as we do.
    jump: Option<Session>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("host", &self.inner.host).field("closed", &self.is_closed()).finish()
    }
}

impl Session {
    /// Connects (through `target.jump` first, if set), verifies the host key and authenticates.
    pub async fn connect(target: &Target) -> Result<Session, SshError> {
        let jump = match &target.jump {
            // Boxed: the jump's own connect may recurse through further hops.
            Some(hop) => Some(Box::pin(Session::connect(hop)).await?),
            None => None,
        };
        let unreachable = |reason: String| SshError::Unreachable {
            host: target.name.clone(),
            address: target.address.clone(),
            port: target.port,
            reason,
        };
        let entry = known_hosts::host_entry(&target.address, target.port);
        let config = Arc::new(client_config(&target.known_hosts, &entry).await);
        let verifier = Verifier {
            host: target.name.clone(),
            entry,
            known_hosts: target.known_hosts.clone(),
            policy: target.host_key_policy,
        };

        let handshake = async {
            let connected = match &jump {
                None => {
                    let tcp = tokio::net::TcpStream::connect((target.address.as_str(), target.port))
                        .await
                        .map_err(|e| unreachable(e.to_string()))?;
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!("{}: cannot set TCP_NODELAY: {e}", target.name);
                    }
                    client::connect_stream(config, tcp, verifier).await
                }
                Some(jump) => {
                    let tunnel = jump
                        .inner
                        .handle
                        .channel_open_direct_tcpip(target.address.as_str(), u32::from(target.port), "127.0.0.1", 0)
                        .await
                        .map_err(|e| unreachable(format!("through jump host {}: {e}", jump.host())))?;
                    client::connect_stream(config, tunnel.into_stream(), verifier).await
                }
            };
            connected.map_err(|e| match e {
                HandlerError::Refused(refusal) => refusal,
                HandlerError::Ssh(e) => unreachable(e.to_string()),
            })
        };
        let mut handle = tokio::time::timeout(target.connect_timeout, handshake)
            .await
            .map_err(|_| unreachable(format!("no SSH handshake within {:?}", target.connect_timeout)))??;

        match tokio::time::timeout(target.connect_timeout, authenticate(&mut handle, target)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                goodbye(&handle).await;
                return Err(e);
            }
            Err(_) => {
                goodbye(&handle).await;
                return Err(unreachable(format!("authentication did not finish within {:?}", target.connect_timeout)));
            }
        }
        tracing::debug!("{}: connected as {}", target.name, target.user);
        Ok(Session {
            inner: Arc::new(Inner {
                host: target.name.clone(),
                handle,
                channels: Semaphore::new(MAX_CHANNELS),
                closed: AtomicBool::new(false),
                jump,
            }),
        })
    }

    /// The target's name, for messages.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst) || self.inner.handle.is_closed()
    }

    /// Disconnects politely (and the jump connection behind it, if any).
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        goodbye(&self.inner.handle).await;
        if let Some(jump) = &self.inner.jump {
            Box::pin(jump.close()).await;
        }
    }

    /// Runs `command` (already quoted for the remote shell) on a new channel, feeds it `stdin`
    /// then EOF, and collects its output. `timeout` covers the command itself, not the wait for a
    /// free channel; on expiry the command is sent SIGTERM (sshd honours that for non-root
    /// logins only) and its channel is closed.
    pub async fn exec(&self, command: &str, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output, SshError> {
        let host = self.host();
        let lost = |reason: String| SshError::Disconnected { host: host.to_string(), reason };
        if self.is_closed() {
            return Err(lost("the session is closed".into()));
        }
        let _permit = self.inner.channels.acquire().await.map_err(|e| lost(e.to_string()))?;
        let deadline = Instant::now() + timeout;
        let timed_out = || SshError::Timeout { host: host.to_string(), after: timeout };
        let channel = match tokio::time::timeout_at(deadline, self.inner.handle.channel_open_session()).await {
            Err(_) => return Err(timed_out()),
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) if self.inner.handle.is_closed() => return Err(lost(e.to_string())),
            Ok(Err(e)) => {
                return Err(SshError::Other { host: host.to_string(), reason: format!("cannot open a channel: {e}") })
            }
        };
        let (mut reader, writer) = channel.split();
        let outcome = tokio::time::timeout_at(deadline, run(&mut reader, &writer, command, stdin)).await;
        match outcome {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(Failure::Refused)) => {
                close_channel(&writer, false).await;
                Err(SshError::Other { host: host.to_string(), reason: "the server refused to run the command".into() })
            }
            Ok(Err(Failure::Lost(reason))) => Err(lost(reason)),
            Ok(Err(Failure::TooLarge)) => {
                close_channel(&writer, true).await;
                Err(SshError::OutputTooLarge {
                    host: host.to_string(),
                    command: shortened(command),
                    limit_mib: MAX_OUTPUT >> 20,
                })
            }
            Err(_) => {
                tracing::debug!("{host}: command timed out after {timeout:?}; closing its channel");
                close_channel(&writer, true).await;
                Err(timed_out())
            }
        }
    }
}

enum Failure {
    Refused,
    Lost(String),
    TooLarge,
}

/// A command line short enough for an error message.
fn shortened(command: &str) -> String {
    let line = command.lines().next().unwrap_or("");
    if line.chars().count() > 120 || line.len() < command.len() {
        format!("{}…", line.chars().take(120).collect::<String>())
    } else {
        line.to_string()
    }
}

/// Sends the exec request and stdin, and gathers output until the server closes the channel
/// (or the output passes [`MAX_OUTPUT`]).
/// Reading and writing run together: a command that answers before reading all its input
/// (or never reads it) must not deadlock against a full window.
async fn run(
    reader: &mut ChannelReadHalf,
    writer: &ChannelWriteHalf<client::Msg>,
    command: &str,
    stdin: Option<&[u8]>,
) -> Result<Output, Failure> {
    writer.exec(true, command).await.map_err(|e| Failure::Lost(e.to_string()))?;
    let feed = async {
        if let Some(bytes) = stdin.filter(|b| !b.is_empty()) {
            writer.data_bytes(bytes.to_vec()).await?;
        }
        writer.eof().await
    };
    let collect = async {
        let mut output = Output::default();
        while let Some(message) = reader.wait().await {
            let size = output.stdout.len() + output.stderr.len();
            match message {
                ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, ext: 1 }
                    if size + data.len() > MAX_OUTPUT =>
                {
                    return Err(Failure::TooLarge)
                }
                ChannelMsg::Data { data } => output.stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, ext: 1 } => output.stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => output.status = Some(exit_status),
                ChannelMsg::ExitSignal { signal_name, .. } => {
                    tracing::debug!("command ended by signal {signal_name:?}")
                }
                ChannelMsg::Failure => return Err(Failure::Refused),
                ChannelMsg::Close => return Ok(output),
                _ => {}
            }
        }
        // The channel vanished without a close: the connection itself is gone.
        Err(Failure::Lost("connection closed while a command was running".into()))
    };
    tokio::pin!(feed, collect);
    let mut feeding = true;
    loop {
        tokio::select! {
            result = &mut collect => return result,
            fed = &mut feed, if feeding => {
                feeding = false;
                // The command may exit without reading its input; its output still counts.
                if let Err(e) = fed {
                    tracing::debug!("stdin not fully delivered: {e}");
                }
            }
        }
    }
}

async fn close_channel(writer: &ChannelWriteHalf<client::Msg>, terminate: bool) {
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
        if terminate {
            // Without a pty, closing the channel alone would leave the command running.
            let _ = writer.signal(Sig::TERM).await;
        }
        let _ = writer.close().await;
    })
    .await;
}

async fn goodbye(handle: &Handle<Verifier>) {
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, handle.disconnect(Disconnect::ByApplication, "", "en")).await;
}

/// Default russh settings plus keepalives, and host key algorithms reordered so the server
/// offers a key type known_hosts already has for it (as OpenSSH does).
async fn client_config(known_hosts: &Path, entry: &str) -> client::Config {
    let (path, host) = (known_hosts.to_path_buf(), entry.to_string());
    let known =
        tokio::task::spawn_blocking(move || known_hosts::known_algorithms(&path, &host)).await.unwrap_or_default();
    let is_known = |a: &Algorithm| known.iter().any(|k| known_hosts::same_kind(k, a));
    let (mut keys, rest): (Vec<Algorithm>, Vec<Algorithm>) = Preferred::DEFAULT.key.iter().cloned().partition(is_known);
    keys.extend(rest);
    client::Config {
        keepalive_interval: Some(KEEPALIVE_INTERVAL),
        keepalive_max: KEEPALIVE_MAX,
        nodelay: true,
        preferred: Preferred { key: Cow::Owned(keys), ..Preferred::DEFAULT },
        ..client::Config::default()
    }
}

/// The russh handler: checks the server's host key against known_hosts.
struct Verifier {
    host: String,
    entry: String,
    known_hosts: PathBuf,
    policy: HostKeyPolicy,
}

/// Lets a host key refusal travel out of russh as the precise [`SshError`].
#[derive(Debug)]
enum HandlerError {
    Ssh(russh::Error),
    Refused(SshError),
}

impl From<russh::Error> for HandlerError {
    fn from(e: russh::Error) -> Self {
        HandlerError::Ssh(e)
    }
}

impl client::Handler for Verifier {
    type Error = HandlerError;

    async fn check_server_key(&mut self, key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, HandlerError> {
        let (host, entry, path, policy) =
            (self.host.clone(), self.entry.clone(), self.known_hosts.clone(), self.policy);
        let key = key.public_key();
        tokio::task::spawn_blocking(move || verify_host_key(&host, &entry, &path, policy, &key))
            .await
            .map_err(|e| HandlerError::Refused(SshError::Other { host: self.host.clone(), reason: e.to_string() }))?
            .map_err(HandlerError::Refused)?;
        Ok(true)
    }
}

fn verify_host_key(
    host: &str,
    entry: &str,
    path: &Path,
    policy: HostKeyPolicy,
    key: &PublicKey,
) -> Result<(), SshError> {
    // Serialises check-then-append, so concurrent first contacts record a host once.
    static KNOWN_HOSTS: Mutex<()> = Mutex::new(());
    let _guard = KNOWN_HOSTS.lock().unwrap_or_else(PoisonError::into_inner);
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    let other = |reason: String| SshError::Other { host: host.to_string(), reason };
    match known_hosts::check(path, entry, key).map_err(other)? {
        Verdict::Known => Ok(()),
        Verdict::Changed { line } => {
            Err(SshError::HostKeyChanged { host: host.to_string(), fingerprint, known_hosts: path.to_path_buf(), line })
        }
        Verdict::Revoked { line } => {
            Err(other(format!("host key {fingerprint} is marked @revoked in {}:{line}", path.display())))
        }
        Verdict::Unknown => match policy {
            HostKeyPolicy::Strict => {
                Err(SshError::HostKeyUnknown { host: host.to_string(), fingerprint, known_hosts: path.to_path_buf() })
            }
            HostKeyPolicy::AcceptNew => {
                known_hosts::learn(path, entry, key).map_err(other)?;
                tracing::info!("{host}: recorded new host key {fingerprint} for {entry} in {}", path.display());
                Ok(())
            }
        },
    }
}

/// Agent keys first, then each identity file; the error lists everything that was tried.
async fn authenticate(handle: &mut Handle<Verifier>, target: &Target) -> Result<(), SshError> {
    let mut tried = Vec::new();
    let mut rsa = RsaHash::default();
    if target.use_agent {
        if std::env::var_os("SSH_AUTH_SOCK").is_none() {
            tried.push("agent (SSH_AUTH_SOCK not set)".into());
        } else if with_agent(handle, target, &mut rsa, &mut tried).await {
            return Ok(());
        }
    }
    for path in &target.identity_files {
        if handle.is_closed() {
            tried.push("(server closed the connection)".into());
            break;
        }
        let shown = path.display();
        let text = match tokio::fs::read_to_string(path).await {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!("{}: cannot read identity file {shown}: {e}", target.name);
                tried.push(format!("{shown} (unreadable: {e})"));
                continue;
            }
        };
        let key = match decode_secret_key(&text, None) {
            Ok(key) => key,
            Err(russh::keys::Error::KeyIsEncrypted) => {
                tracing::warn!("{}: identity file {shown} is encrypted; skipped (add it to ssh-agent)", target.name);
                tried.push(format!("{shown} (encrypted, skipped)"));
                continue;
            }
            Err(e) => {
                tracing::warn!("{}: cannot use identity file {shown}: {e}", target.name);
                tried.push(format!("{shown} (unusable: {e})"));
                continue;
            }
        };
        let hash = if key.algorithm().is_rsa() { rsa.get(handle).await } else { None };
        match handle.authenticate_publickey(&target.user, PrivateKeyWithHashAlg::new(Arc::new(key), hash)).await {
            Ok(result) if result.success() => return Ok(()),
            Ok(_) => tried.push(shown.to_string()),
            Err(e) => tried.push(format!("{shown} ({e})")),
        }
    }
    Err(SshError::AuthFailed {
        host: target.name.clone(),
        user: target.user.clone(),
        tried: if tried.is_empty() { "no agent keys and no identity files".into() } else { tried.join(", ") },
    })
}

/// Tries every identity of `$SSH_AUTH_SOCK`'s agent; true once one is accepted.
async fn with_agent(
    handle: &mut Handle<Verifier>,
    target: &Target,
    rsa: &mut RsaHash,
    tried: &mut Vec<String>,
) -> bool {
    let mut agent = match AgentClient::connect_env().await {
        Ok(agent) => agent,
        Err(e) => {
            tracing::warn!("{}: ssh-agent unavailable: {e}", target.name);
            tried.push(format!("agent (unavailable: {e})"));
            return false;
        }
    };
    // OpenSSH agents only offer destination-constrained keys to a bound session.
    if let Some(binding) = handle.agent_session_binding().cloned() {
        if let Err(e) = agent.bind_session(&binding, false).await {
            tracing::debug!("{}: agent did not bind the session: {e}", target.name);
        }
    }
    let identities = match agent.request_identities().await {
        Ok(identities) => identities,
        Err(e) => {
            tracing::warn!("{}: cannot list ssh-agent keys: {e}", target.name);
            tried.push(format!("agent (failed: {e})"));
            return false;
        }
    };
    tried.push(format!("agent: {} keys", identities.len()));
    for identity in identities {
        if handle.is_closed() {
            break;
        }
        let public = identity.public_key().into_owned();
        let hash = if public.algorithm().is_rsa() { rsa.get(handle).await } else { None };
        let result = match identity {
            AgentIdentity::PublicKey { key, .. } => {
                handle.authenticate_publickey_with(&target.user, key, hash, &mut agent).await
            }
            AgentIdentity::Certificate { certificate, .. } => {
                handle.authenticate_certificate_with(&target.user, certificate, hash, &mut agent).await
            }
        };
        match result {
            Ok(result) if result.success() => return true,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!("{}: agent key {} not usable: {e}", target.name, public.fingerprint(HashAlg::Sha256))
            }
        }
    }
    false
}

/// The server's preferred RSA signature hash, asked once and only if an RSA key comes up.
#[derive(Default)]
struct RsaHash(Option<Option<HashAlg>>);

impl RsaHash {
    async fn get(&mut self, handle: &Handle<Verifier>) -> Option<HashAlg> {
        if let Some(known) = self.0 {
            return known;
        }
        let hash = match handle.best_supported_rsa_hash().await {
            Ok(Some(best)) => best,
            // No server-sig-algs: an old server that only knows SHA-1 `ssh-rsa`.
            Ok(None) | Err(_) => None,
        };
        self.0 = Some(hash);
        hash
    }
}
