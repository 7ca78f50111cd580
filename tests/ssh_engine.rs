//! The SSH engine against real OpenSSH servers on 127.0.0.1: each test starts its own sshd with
//! its own host key and authorized_keys, and stops it when done.
//!
//! Needs root and /usr/sbin/sshd (Debian: `openssh-server`, plus `openssh-client` for
//! ssh-keygen/ssh-agent/ssh-add). Without them each test prints a `SKIP:` line and returns.

mod skip;

use std::fs;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pikube::ssh::config::{resolve, SshConfig, Wanted};
use pikube::ssh::{HostKeyPolicy, Output, Session, SshError, Target, MAX_OUTPUT};

const SSHD: &str = "/usr/sbin/sshd";
/// Upper bound for any one test, so a hang fails instead of stalling CI.
const TEST_LIMIT: Duration = Duration::from_secs(90);

fn skip_reason() -> Option<String> {
    if !Path::new(SSHD).exists() {
        return Some(format!("{SSHD} is missing (apt-get install openssh-server)"));
    }
    let uid = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref().ok() != Some("0") {
        return Some("not running as root (sshd must start as root)".into());
    }
    for tool in ["ssh-keygen", "ssh-agent", "ssh-add"] {
        if Command::new(tool).arg("-h").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            return Some(format!("{tool} is missing (apt-get install openssh-client)"));
        }
    }
    None
}

macro_rules! require_sshd {
    () => {
        if let Some(why) = skip_reason() {
            skip!(return "{why}");
        }
    };
}

async fn within<T>(work: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_LIMIT, work).await.expect("test took too long")
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("pikube-ssh-{}-{n}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run helper command");
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh ed25519 key pair at `path` / `path.pub`.
fn keygen(path: &Path, passphrase: &str) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-C", "pikube-test", "-N", passphrase, "-f"])
        .arg(path));
}

fn public_key(path: &Path) -> String {
    let text = fs::read_to_string(path.with_extension("pub")).expect("read public key");
    text.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

fn sha256_fingerprint(path: &Path) -> String {
    let out = run(Command::new("ssh-keygen").args(["-l", "-E", "sha256", "-f"]).arg(path.with_extension("pub")));
    out.split_whitespace().nth(1).expect("fingerprint field").to_string()
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// One sshd on 127.0.0.1, killed on drop.
struct Sshd {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Sshd {
    fn start(dir: &Path, name: &str, host_key: &Path, authorized_keys: &Path, log_level: &str) -> Sshd {
        fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        let config = dir.join(format!("{name}.sshd_config"));
        let log = dir.join(format!("{name}.log"));
        // A port freed by free_port() may be taken again before sshd binds it: retry.
        for _ in 0..5 {
            let port = free_port();
            let text = format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile none\nUsePAM no\nStrictModes no\n\
                 AuthorizedKeysFile {}\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nAllowTcpForwarding yes\n\
                 LogLevel {log_level}\n",
                host_key.display(),
                authorized_keys.display()
            );
            fs::write(&config, text).expect("write sshd_config");
            let stderr = fs::File::create(&log).expect("create sshd log");
            let child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("spawn sshd");
            let mut sshd = Sshd { child, port, log: log.clone() };
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if sshd.log_text().contains(&format!("Server listening on 127.0.0.1 port {port}")) {
                    return sshd;
                }
                if let Ok(Some(_)) = sshd.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("sshd did not start; last log:\n{}", fs::read_to_string(&log).unwrap_or_default());
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// sshd's per-connection processes: the children of the listener.
    fn connection_pids(&self) -> Vec<u32> {
        children_of(self.child.id())
    }
}

fn children_of(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so read after the last ')'.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(parent) {
            pids.push(pid);
        }
    }
    pids
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Everything this sshd started (connections and the commands they run), deepest first.
        let mut doomed = Vec::new();
        let mut frontier = vec![self.child.id()];
        while let Some(pid) = frontier.pop() {
            let children = children_of(pid);
            doomed.extend(children.iter().copied());
            frontier.extend(children);
        }
        for pid in doomed.into_iter().rev() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).stderr(Stdio::null()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One sshd with its host key, a client key it accepts, and a known_hosts path.
struct Lab {
    scratch: Scratch,
    client_key: PathBuf,
    host_key: PathBuf,
    known_hosts: PathBuf,
    sshd: Sshd,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        Lab::with_log_level(tag, "INFO")
    }

    fn with_log_level(tag: &str, log_level: &str) -> Lab {
        let scratch = Scratch::new(tag);
        let client_key = scratch.path("client_key");
        let host_key = scratch.path("host_key");
        keygen(&client_key, "");
        keygen(&host_key, "");
        let authorized = scratch.path("authorized_keys");
        fs::write(&authorized, public_key(&client_key) + "\n").expect("write authorized_keys");
        let sshd = Sshd::start(&scratch.0, tag, &host_key, &authorized, log_level);
        let known_hosts = scratch.path("known_hosts");
        Lab { scratch, client_key, host_key, known_hosts, sshd }
    }

    /// Records this sshd's real host key in known_hosts.
    fn trust(self) -> Lab {
        let line = format!("[127.0.0.1]:{} {}\n", self.sshd.port, public_key(&self.host_key));
        fs::write(&self.known_hosts, line).expect("write known_hosts");
        self
    }

    fn target(&self, policy: HostKeyPolicy) -> Target {
        Target {
            name: "node1".into(),
            address: "127.0.0.1".into(),
            port: self.sshd.port,
            user: "root".into(),
            identity_files: vec![self.client_key.clone()],
            use_agent: false,
            jump: None,
            known_hosts: self.known_hosts.clone(),
            host_key_policy: policy,
            connect_timeout: Duration::from_secs(10),
        }
    }

    async fn session(&self) -> Session {
        Session::connect(&self.target(HostKeyPolicy::Strict)).await.expect("connect")
    }
}

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_collects_stdout_stderr_and_exit_status() {
    require_sshd!();
    let lab = Lab::new("exec").trust();
    within(async {
        let session = lab.session().await;
        assert_eq!(session.host(), "node1");
        let out = session.exec("printf 'out\\n'; printf err >&2; exit 3", None, T).await.expect("exec");
        assert_eq!(out.stdout_str(), "out\n");
        assert_eq!(out.stderr_str(), "err");
        assert_eq!(out.status, Some(3));
        assert!(!out.success());
        let out = session.exec("true", None, T).await.expect("exec");
        assert!(out.success() && out.stdout.is_empty() && out.stderr.is_empty());
        // A command killed by a signal has no exit status.
        let out = session.exec("kill -9 $$", None, T).await.expect("exec");
        assert_eq!(out.status, None);
        session.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_round_trips_larger_than_the_window() {
    require_sshd!();
    let lab = Lab::new("stdin").trust();
    within(async {
        let session = lab.session().await;
        // 3 MiB: more than either side's channel window, so both directions must flow at once.
        let input: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let out = session.exec("cat", Some(&input), T).await.expect("exec cat");
        assert!(out.success());
        assert_eq!(out.stdout.len(), input.len());
        assert!(out.stdout == input, "cat returned different bytes");
        // A command that ignores its input still completes.
        let out = session.exec("echo ignored", Some(&input), T).await.expect("exec echo");
        assert_eq!(out.stdout_str(), "ignored\n");
        // No stdin means immediate EOF, not a hang.
        let out = session.exec("wc -c", None, T).await.expect("exec wc");
        assert_eq!(out.stdout_str().trim(), "0");
        session.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_execs_share_one_session() {
    require_sshd!();
    fn shareable<S: Clone + Send + Sync + 'static>() {}
    shareable::<Session>();
    let lab = Lab::new("concurrent").trust();
    within(async {
        let session = lab.session().await;
        // More than sshd's MaxSessions (10): the excess must queue, not fail. Each command
        // reports when it started and ended on the host; the most intervals that overlap is how
        // many commands ran at once. 3 s per command keeps a loaded machine's start-up skew
        // from splitting a round.
        let started = Instant::now();
        let tasks: Vec<_> = (0..14)
            .map(|i| {
                let session = session.clone();
                let script = format!("s=$(date +%s.%N); sleep 3; echo {i} $s $(date +%s.%N)");
                tokio::spawn(async move { session.exec(&script, None, T).await })
            })
            .collect();
        let mut spans: Vec<(f64, f64)> = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            let out = task.await.expect("task").expect("exec").stdout_str();
            let fields: Vec<&str> = out.split_whitespace().collect();
            assert_eq!(fields.len(), 3, "`ID START END`: {out:?}");
            assert_eq!(fields[0], i.to_string(), "each command gets its own output");
            spans.push((fields[1].parse().expect("start"), fields[2].parse().expect("end")));
        }
        let at_once = |t: f64| spans.iter().filter(|(s, e)| *s <= t && t < *e).count();
        let most = spans.iter().map(|(s, _)| at_once(*s)).max().unwrap_or(0);
        // The session's channel limit (MAX_CHANNELS in src/ssh/session.rs), no more and no less.
        assert_eq!(most, 8, "commands running at once on one session: {spans:?}");
        // 14 three-second commands, 8 at a time: two rounds, far from 42 s in sequence.
        assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
        assert_eq!(lab.sshd.connection_pids().len(), 1, "one connection for all commands");
        session.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_timeout_returns_promptly_and_keeps_the_session() {
    require_sshd!();
    let lab = Lab::new("timeout").trust();
    within(async {
        let session = lab.session().await;
        let started = Instant::now();
        let err = session.exec("sleep 5", None, Duration::from_millis(500)).await.expect_err("must time out");
        assert!(matches!(err, SshError::Timeout { ref host, after } if host == "node1" && after == Duration::from_millis(500)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
        // (sshd refuses the SIGTERM we send for root sessions, so whether the remote `sleep`
        // ends early is not checked here; the channel is closed either way.)
        let out = session.exec("echo alive", None, T).await.expect("session still usable");
        assert_eq!(out.stdout_str(), "alive\n");
        session.close().await;
    })
    .await;
}

/// The error of a command that must fail; a success is reported by its size, not its bytes.
fn must_fail(result: Result<Output, SshError>, what: &str) -> SshError {
    match result {
        Ok(out) => panic!(
            "{what} succeeded: {} bytes of stdout, {} of stderr, exit {:?}",
            out.stdout.len(),
            out.stderr.len(),
            out.status
        ),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_output_is_cut_at_the_cap_with_a_clear_error() {
    require_sshd!();
    let lab = Lab::new("cap").trust();
    within(async {
        let session = lab.session().await;
        // Exactly the cap, split over stdout and stderr, still comes back whole.
        let half = MAX_OUTPUT / 2;
        let out = session
            .exec(&format!("head -c {half} /dev/zero; head -c {half} /dev/zero >&2"), None, T)
            .await
            .expect("output at the cap is fine");
        assert_eq!((out.stdout.len(), out.stderr.len()), (half, half));
        // One byte more (on stderr) is refused.
        let err = must_fail(
            session.exec(&format!("head -c {half} /dev/zero; head -c {} /dev/zero >&2", half + 1), None, T).await,
            "one byte over the cap",
        );
        assert!(matches!(err, SshError::OutputTooLarge { .. }), "{err:?}");
        // Endless output: stopped as soon as it passes the cap, long before the timeout
        // (the old code buffered it all until the timeout, gigabytes on loopback).
        let started = Instant::now();
        let err = must_fail(session.exec("cat /dev/zero", None, Duration::from_secs(60)).await, "endless output");
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
        assert!(
            matches!(err, SshError::OutputTooLarge { ref host, ref command, limit_mib: 16 }
                if host == "node1" && command == "cat /dev/zero"),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("node1") && message.contains("`cat /dev/zero`") && message.contains("16 MiB"),
            "{message}"
        );
        // The session survives, and timeouts still apply to commands below the cap.
        let out = session.exec("echo alive", None, T).await.expect("session still usable");
        assert_eq!(out.stdout_str(), "alive\n");
        let err = must_fail(
            session.exec("head -c 1000 /dev/zero; sleep 5", None, Duration::from_millis(500)).await,
            "a command past its timeout",
        );
        assert!(matches!(err, SshError::Timeout { .. }), "{err:?}");
        session.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_or_dead_connections_report_disconnected() {
    require_sshd!();
    let lab = Lab::new("dead").trust();
    within(async {
        let session = lab.session().await;
        assert!(!session.is_closed());
        let running = {
            let session = session.clone();
            tokio::spawn(async move { session.exec("sleep 5", None, Duration::from_secs(60)).await })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Kill the server side of the connection mid-command.
        for pid in lab.sshd.connection_pids() {
            run(Command::new("kill").arg("-9").arg(pid.to_string()));
        }
        let err = running.await.expect("task").expect_err("the connection died");
        assert!(matches!(err, SshError::Disconnected { .. }), "{err:?}");
        let err = session.exec("true", None, T).await.expect_err("dead session");
        assert!(matches!(err, SshError::Disconnected { .. }), "{err:?}");
        assert!(session.is_closed());

        let session = lab.session().await;
        session.close().await;
        assert!(session.is_closed());
        let err = session.exec("true", None, T).await.expect_err("closed session");
        assert!(matches!(err, SshError::Disconnected { .. }), "{err:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_policy_refuses_an_unknown_host_key() {
    require_sshd!();
    let lab = Lab::new("strict");
    within(async {
        let err = Session::connect(&lab.target(HostKeyPolicy::Strict)).await.expect_err("unknown host");
        match err {
            SshError::HostKeyUnknown { host, fingerprint, known_hosts } => {
                assert_eq!(host, "node1");
                assert_eq!(fingerprint, sha256_fingerprint(&lab.host_key));
                assert_eq!(known_hosts, lab.known_hosts);
            }
            other => panic!("expected HostKeyUnknown, got {other:?}"),
        }
        assert!(!lab.known_hosts.exists(), "strict mode must not write known_hosts");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_new_records_the_key_and_strict_then_accepts_it() {
    require_sshd!();
    let mut lab = Lab::new("acceptnew");
    lab.known_hosts = lab.scratch.path("fresh/dir/known_hosts");
    within(async {
        let session = Session::connect(&lab.target(HostKeyPolicy::AcceptNew)).await.expect("first contact");
        session.close().await;
        let mode = fs::metadata(&lab.known_hosts).expect("known_hosts created").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // One line: this server's address and its real host key, nothing else.
        let entry = format!("[127.0.0.1]:{}", lab.sshd.port);
        assert_eq!(
            fs::read_to_string(&lab.known_hosts).expect("read known_hosts"),
            format!("{entry} {}\n", public_key(&lab.host_key))
        );
        // OpenSSH itself finds the entry we wrote.
        run(Command::new("ssh-keygen").arg("-F").arg(&entry).arg("-f").arg(&lab.known_hosts));

        let session = Session::connect(&lab.target(HostKeyPolicy::Strict)).await.expect("now known");
        assert!(session.exec("true", None, T).await.expect("exec").success());
        session.close().await;
        let again = Session::connect(&lab.target(HostKeyPolicy::AcceptNew)).await.expect("still known");
        again.close().await;
        let lines = fs::read_to_string(&lab.known_hosts).expect("read known_hosts").lines().count();
        assert_eq!(lines, 1, "a known host is not recorded twice");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_host_key_is_refused_even_under_accept_new() {
    require_sshd!();
    let lab = Lab::new("changed");
    let impostor = lab.scratch.path("old_host_key");
    keygen(&impostor, "");
    let text = format!("# managed by hand\n\n[127.0.0.1]:{} {}\n", lab.sshd.port, public_key(&impostor));
    fs::write(&lab.known_hosts, &text).expect("write known_hosts");
    within(async {
        for policy in [HostKeyPolicy::AcceptNew, HostKeyPolicy::Strict] {
            let err = Session::connect(&lab.target(policy)).await.expect_err("changed key");
            match err {
                SshError::HostKeyChanged { host, fingerprint, known_hosts, line } => {
                    assert_eq!((host.as_str(), line), ("node1", 3));
                    assert_eq!(known_hosts, lab.known_hosts);
                    assert_eq!(fingerprint, sha256_fingerprint(&lab.host_key));
                }
                other => panic!("expected HostKeyChanged, got {other:?}"),
            }
        }
        assert_eq!(fs::read_to_string(&lab.known_hosts).expect("read"), text, "known_hosts untouched");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_known_hosts_entries_are_honoured() {
    require_sshd!();
    let lab = Lab::new("hashed").trust();
    run(Command::new("ssh-keygen").arg("-H").arg("-f").arg(&lab.known_hosts));
    let text = fs::read_to_string(&lab.known_hosts).expect("read");
    assert!(text.starts_with("|1|"), "ssh-keygen -H hashes the entry: {text}");
    within(async {
        let session = lab.session().await;
        session.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_keys_fail_authentication_listing_what_was_tried() {
    require_sshd!();
    let lab = Lab::new("authfail").trust();
    let stranger = lab.scratch.path("stranger_key");
    keygen(&stranger, "");
    let locked = lab.scratch.path("locked_key");
    keygen(&locked, "correct horse");
    let missing = lab.scratch.path("no_such_key");
    let mut target = lab.target(HostKeyPolicy::Strict);
    target.identity_files = vec![locked.clone(), stranger.clone(), missing.clone()];
    within(async {
        let err = Session::connect(&target).await.expect_err("no acceptable key");
        match err {
            SshError::AuthFailed { host, user, tried } => {
                assert_eq!((host.as_str(), user.as_str()), ("node1", "root"));
                assert!(tried.contains(&format!("{} (encrypted, skipped)", locked.display())), "{tried}");
                assert!(tried.contains(&stranger.display().to_string()), "{tried}");
                assert!(tried.contains(&format!("{} (unreadable", missing.display())), "{tried}");
            }
            other => panic!("expected AuthFailed, got {other:?}"),
        }
        // The right key after wrong ones still gets in.
        target.identity_files = vec![stranger, lab.client_key.clone()];
        Session::connect(&target).await.expect("second key works").close().await;
    })
    .await;
}

/// ssh-agent on a private socket, killed on drop.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The agent test runs its connect in a child test process, so `SSH_AUTH_SOCK` is set there
/// without changing this process's environment under the other tests.
#[test]
fn agent_keys_authenticate() {
    require_sshd!();
    let lab = Lab::new("agent").trust();
    let socket = lab.scratch.path("agent.sock");
    let agent = Agent(
        Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn ssh-agent"),
    );
    let started = Instant::now();
    while !socket.exists() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    run(Command::new("ssh-add").arg("-q").arg(&lab.client_key).env("SSH_AUTH_SOCK", &socket));
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "agent_login_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("SSH_AUTH_SOCK", &socket)
        .env("PIKUBE_TEST_PORT", lab.sshd.port.to_string())
        .env("PIKUBE_TEST_KNOWN_HOSTS", &lab.known_hosts)
        .output()
        .expect("run child test");
    drop(agent);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("AGENT LOGIN OK"),
        "child test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper: run by agent_keys_authenticate with SSH_AUTH_SOCK set"]
async fn agent_login_child() {
    let port = std::env::var("PIKUBE_TEST_PORT").expect("PIKUBE_TEST_PORT").parse().expect("port");
    let target = Target {
        name: "node1".into(),
        address: "127.0.0.1".into(),
        port,
        user: "root".into(),
        // No identity file: only the agent holds the key.
        identity_files: Vec::new(),
        use_agent: true,
        jump: None,
        known_hosts: std::env::var_os("PIKUBE_TEST_KNOWN_HOSTS").expect("known_hosts").into(),
        host_key_policy: HostKeyPolicy::Strict,
        connect_timeout: Duration::from_secs(10),
    };
    within(async {
        let session = Session::connect(&target).await.expect("agent login");
        let out = session.exec("echo agent", None, T).await.expect("exec");
        assert_eq!(out.stdout_str(), "agent\n");
        session.close().await;
    })
    .await;
    println!("AGENT LOGIN OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_jump_through_a_second_sshd() {
    require_sshd!();
    // The jump host logs at DEBUG1 so the test can see the tunnel it opened.
    let bastion = Lab::with_log_level("bastion", "DEBUG1");
    let node = Lab::new("jumptarget");
    let config = format!(
        "Host bastion\n    HostName 127.0.0.1\n    Port {}\n    User root\n    IdentityFile {}\n",
        bastion.sshd.port,
        bastion.client_key.display()
    );
    let ssh_config = SshConfig::parse(config.as_bytes(), Path::new("test_ssh_config")).expect("parse ssh config");
    let wanted = Wanted {
        user: Some("root".into()),
        port: Some(node.sshd.port),
        identity_file: Some(node.client_key.clone()),
        known_hosts: Some(node.known_hosts.clone()),
        host_key_policy: HostKeyPolicy::AcceptNew,
        proxy_jump: Some("bastion".into()),
        connect_timeout: Duration::from_secs(10),
        use_agent: false,
    };
    let target = resolve("node1", "127.0.0.1", &wanted, &ssh_config).expect("resolve");
    let jump = target.jump.as_deref().expect("jump resolved");
    assert_eq!((jump.port, jump.identity_files[0].as_path()), (bastion.sshd.port, bastion.client_key.as_path()));
    within(async {
        let session = Session::connect(&target).await.expect("connect through the jump host");
        let out = session.exec("echo via-jump", None, T).await.expect("exec");
        assert_eq!(out.stdout_str(), "via-jump\n");
        session.close().await;
    })
    .await;
    let tunnel = format!("target 127.0.0.1 port {}", node.sshd.port);
    assert!(
        bastion.sshd.log_text().contains(&tunnel),
        "the bastion did not tunnel to the node:\n{}",
        bastion.sshd.log_text()
    );
    // accept-new recorded each host with its own key: the bastion's, then the node's.
    let known = fs::read_to_string(&node.known_hosts).expect("known_hosts");
    assert_eq!(
        known,
        format!(
            "[127.0.0.1]:{} {}\n[127.0.0.1]:{} {}\n",
            bastion.sshd.port,
            public_key(&bastion.host_key),
            node.sshd.port,
            public_key(&node.host_key)
        )
    );
}

/// No sshd needed: nothing listening, and a listener that never speaks SSH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_silent_hosts_fail_within_the_connect_timeout() {
    let scratch = Scratch::new("unreachable");
    let mut target = Target {
        name: "ghost".into(),
        address: "127.0.0.1".into(),
        port: free_port(),
        user: "root".into(),
        identity_files: Vec::new(),
        use_agent: false,
        jump: None,
        known_hosts: scratch.path("known_hosts"),
        host_key_policy: HostKeyPolicy::Strict,
        connect_timeout: Duration::from_millis(700),
    };
    within(async {
        let err = Session::connect(&target).await.expect_err("nothing listens");
        assert!(
            matches!(err, SshError::Unreachable { ref host, port, .. } if host == "ghost" && port == target.port),
            "{err:?}"
        );

        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        target.port = silent.local_addr().expect("addr").port();
        let started = Instant::now();
        let err = Session::connect(&target).await.expect_err("no SSH banner");
        assert!(matches!(err, SshError::Unreachable { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
        drop(silent);
    })
    .await;
}

#[test]
fn ssh_config_load_reads_a_real_file() {
    let scratch = Scratch::new("sshconfig");
    let path = scratch.path("config");
    fs::write(&path, "Host pi1\n  HostName 10.0.0.1\n  Port 2222\n").expect("write");
    let config = SshConfig::load(&path).expect("load");
    let settings = config.lookup("pi1");
    assert_eq!((settings.host_name.as_deref(), settings.port), (Some("10.0.0.1"), Some(2222)));
    fs::write(&path, "Host pi1\n  Port nope\n").expect("rewrite");
    let err = SshConfig::load(&path).expect_err("garbled");
    assert!(err.starts_with(&format!("{}:2:", path.display())), "{err}");
}
