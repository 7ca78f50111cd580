//! Starts a stand-in server, a joining server and an agent on 127.0.0.1 only, and checks
//! node listing, readiness, token refusal and NotReady after the agent dies; and that the
//! stand-in runs under the names real k3s re-execs as (`k3s-server`, `k3s-agent`, from
//! `<data-dir>/data/<dir>/bin/`), so a teardown that kills only `k3s` is caught.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_k3s");

/// The one way a test of this package skips: a `SKIP: <test>: <reason>` line that scripts/test
/// counts (and strict mode fails on), written past libtest's capture of eprintln!.
macro_rules! skip {
    ($($why:tt)+) => {{
        // libtest runs each test on a thread named after it.
        let test = std::thread::current().name().unwrap_or("?").to_string();
        let line = format!("SKIP: {test}: {}\n", format_args!($($why)+));
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    }};
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(args: &[&str], log: &Path) -> Proc {
    let f = std::fs::File::create(log).unwrap();
    Proc(Command::new(BIN).args(args).stdout(Stdio::null()).stderr(f).spawn().unwrap())
}

fn kubectl(kc: &Path, args: &[&str]) -> Output {
    Command::new(BIN).arg("kubectl").arg("--kubeconfig").arg(kc).args(args).output().unwrap()
}

/// Polls `f` until it holds. The bounds are generous (60 s): the suite runs these servers
/// beside lab clusters that load the machine, and a pass never waits for them.
fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("timed out waiting for {what}");
}

fn status_of(kc: &Path, node: &str) -> Option<String> {
    let o = kubectl(kc, &["get", "nodes"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(node))
        .and_then(|l| l.split_whitespace().nth(1).map(String::from))
}

#[test]
fn server_agent_join_tokens_and_readiness() {
    let dir: PathBuf = std::env::temp_dir().join(format!("k3s-standin-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (p1, p2) = (free_port(), free_port());
    let d = |s: &str| dir.join(s).to_string_lossy().to_string();

    // server config via config.yaml (keys = long flag names), with one unknown key
    std::fs::write(
        dir.join("config.yaml"),
        "cluster-init: true\ntoken: lab-secret\ntls-san:\n  - lab-vip.local\nwrite-kubeconfig-mode: \"0644\"\nnode-label:\n  - pikube.io/lab=yes\nnot-a-k3s-flag: 1\n",
    )
    .unwrap();
    std::fs::write(dir.join("empty.yaml"), "").unwrap();

    let s1_port = p1.to_string();
    let _s1 = spawn(
        &[
            "server",
            "--config",
            &d("config.yaml"),
            "--bind-address",
            "127.0.0.1",
            "--https-listen-port",
            &s1_port,
            "--data-dir",
            &d("s1"),
            "--write-kubeconfig",
            &d("s1.yaml"),
            "--node-name",
            "srv1",
            "--node-ip",
            "127.0.0.1",
        ],
        &dir.join("s1.log"),
    );
    let kc1 = dir.join("s1.yaml");
    wait_for("server 1 kubeconfig", Duration::from_secs(60), || kc1.exists());
    wait_for("srv1 Ready", Duration::from_secs(60), || status_of(&kc1, "srv1").as_deref() == Some("Ready"));

    // files written like real k3s
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&kc1), 0o644, "write-kubeconfig-mode from config.yaml");
    let token_file = dir.join("s1/server/node-token");
    assert_eq!(mode(&token_file), 0o600);
    let full = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
    assert!(full.starts_with("K10") && full.ends_with("::server:lab-secret"), "{full}");
    assert_eq!(std::fs::read_to_string(dir.join("s1/server/token")).unwrap().trim(), full);
    let s1log = std::fs::read_to_string(dir.join("s1.log")).unwrap();
    assert!(s1log.contains("k3s STAND-IN (test double for pikube's lab tests)"));
    assert!(s1log.contains("Unknown flag --not-a-k3s-flag found in config.yaml, skipping"));

    // agent with the full K10 token
    let url1 = format!("https://127.0.0.1:{p1}");
    let agent = spawn(
        &[
            "agent",
            "--config",
            &d("empty.yaml"),
            "--server",
            &url1,
            "--token",
            &full,
            "--node-name",
            "ag1",
            "--node-ip",
            "127.0.0.1",
            "--data-dir",
            &d("a1"),
            "--node-taint",
            "dedicated=lab:NoSchedule",
        ],
        &dir.join("a1.log"),
    );
    // second agent with the short token form
    let _agent2 = spawn(
        &[
            "agent",
            "--config",
            &d("empty.yaml"),
            "--server",
            &url1,
            "--token",
            "lab-secret",
            "--node-name",
            "ag2",
            "--node-ip",
            "127.0.0.1",
            "--data-dir",
            &d("a2"),
        ],
        &dir.join("a2.log"),
    );
    wait_for("ag1 and ag2 Ready", Duration::from_secs(60), || {
        status_of(&kc1, "ag1").as_deref() == Some("Ready") && status_of(&kc1, "ag2").as_deref() == Some("Ready")
    });

    // wrong password: agent keeps retrying (like real k3s under systemd) and never registers
    let bad = full.replace("::server:lab-secret", "::server:wrong");
    let mut bad_agent = spawn(
        &[
            "agent",
            "--config",
            &d("empty.yaml"),
            "--server",
            &url1,
            "--token",
            &bad,
            "--node-name",
            "intruder",
            "--node-ip",
            "127.0.0.1",
            "--data-dir",
            &d("bad"),
        ],
        &dir.join("bad.log"),
    );
    // wrong CA hash
    let wrong_hash = format!("K10{}::server:lab-secret", "0".repeat(64));
    let _bad2 = spawn(
        &[
            "agent",
            "--config",
            &d("empty.yaml"),
            "--server",
            &url1,
            "--token",
            &wrong_hash,
            "--node-name",
            "intruder2",
            "--node-ip",
            "127.0.0.1",
            "--data-dir",
            &d("bad2"),
        ],
        &dir.join("bad2.log"),
    );
    wait_for("wrong-token refusals logged", Duration::from_secs(60), || {
        let a = std::fs::read_to_string(dir.join("bad.log")).unwrap_or_default();
        let b = std::fs::read_to_string(dir.join("bad2.log")).unwrap_or_default();
        a.contains("401 Unauthorized") && b.contains("token CA hash does not match")
    });
    assert!(bad_agent.0.try_wait().unwrap().is_none(), "agent keeps retrying like real k3s");
    let names = String::from_utf8_lossy(&kubectl(&kc1, &["get", "nodes", "-o", "name"]).stdout).to_string();
    assert!(!names.contains("intruder"), "{names}");

    // a joining server with a wrong token exits 1
    let out = Command::new(BIN)
        .args([
            "server",
            "--config",
            &d("empty.yaml"),
            "--server",
            &url1,
            "--token",
            "nope",
            "--bind-address",
            "127.0.0.1",
            "--https-listen-port",
            &free_port().to_string(),
            "--data-dir",
            &d("sbad"),
            "--write-kubeconfig",
            &d("sbad.yaml"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401 Unauthorized"));

    // a joining server with the right token sees the full cluster
    let s2_port = p2.to_string();
    let _s2 = spawn(
        &[
            "server",
            "--config",
            &d("empty.yaml"),
            "--server",
            &url1,
            "--token",
            &full,
            "--bind-address",
            "127.0.0.1",
            "--https-listen-port",
            &s2_port,
            "--data-dir",
            &d("s2"),
            "--write-kubeconfig",
            &d("s2.yaml"),
            "--node-name",
            "srv2",
            "--node-ip",
            "127.0.0.1",
        ],
        &dir.join("s2.log"),
    );
    let kc2 = dir.join("s2.yaml");
    wait_for("srv2 Ready, seen from both servers", Duration::from_secs(60), || {
        status_of(&kc1, "srv2").as_deref() == Some("Ready") && status_of(&kc2, "ag1").as_deref() == Some("Ready")
    });
    let o = String::from_utf8_lossy(&kubectl(&kc2, &["get", "nodes"]).stdout).to_string();
    assert!(o.contains("control-plane,etcd,master"), "{o}");

    // json output carries labels/taints
    let j: serde_json::Value = serde_json::from_slice(&kubectl(&kc1, &["get", "nodes", "-o", "json"]).stdout).unwrap();
    let items = j["items"].as_array().unwrap();
    let ag1 = items.iter().find(|n| n["metadata"]["name"] == "ag1").unwrap();
    assert_eq!(ag1["spec"]["taints"][0]["key"], "dedicated");
    let srv1 = items.iter().find(|n| n["metadata"]["name"] == "srv1").unwrap();
    assert_eq!(srv1["metadata"]["labels"]["pikube.io/lab"], "yes");

    // apply through the joined server, read back from the first
    std::fs::write(
        dir.join("m.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: lab\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: lab\nspec:\n  replicas: 1\n",
    )
    .unwrap();
    let m = d("m.yaml");
    let o = kubectl(&kc2, &["apply", "-f", &m]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "namespace/lab created\ndeployment.apps/web created\n");
    let o = kubectl(&kc1, &["apply", "-f", &m]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "namespace/lab unchanged\ndeployment.apps/web unchanged\n");
    let o = kubectl(&kc1, &["get", "deployment", "web", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["spec"]["replicas"], 1);

    // unknown verb
    let o = kubectl(&kc1, &["foo"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("error: unknown command \"foo\" for \"kubectl\""));

    // drain + delete
    let o = kubectl(&kc1, &["drain", "ag2", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=30s"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "node/ag2 cordoned\nnode/ag2 drained\n");
    assert_eq!(status_of(&kc1, "ag2").as_deref(), Some("Ready,SchedulingDisabled"));

    // kill the agent → NotReady after the grace period
    drop(agent);
    wait_for("ag1 NotReady", Duration::from_secs(120), || status_of(&kc1, "ag1").as_deref() == Some("NotReady"));
    let o = kubectl(&kc1, &["delete", "node", "ag1"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "node \"ag1\" deleted\n");
    let o = kubectl(&kc1, &["delete", "node", "ag1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Error from server (NotFound): nodes \"ag1\" not found"));
    for output in ["json", "name", "wide"] {
        let o = kubectl(&kc1, &["get", "node", "ag1", "--ignore-not-found", "-o", output]);
        assert!(o.status.success() && o.stdout.is_empty(), "-o {output}: {o:?}");
    }

    // a live node that is deleted stays deleted (a running kubelet does not re-register)
    let o = kubectl(&kc1, &["delete", "node", "ag2"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "node \"ag2\" deleted\n");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status_of(&kc1, "ag2"), None);

    let _ = bad_agent.0.kill();
    drop(bad_agent);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cli_strictness_and_version() {
    let o = Command::new(BIN).arg("--version").output().unwrap();
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.starts_with("k3s version v1.31.4+k3s1 (standin)"), "{s}");
    let o = Command::new(BIN).args(["server", "--foo"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Incorrect Usage: flag provided but not defined: -foo"));
    let o = Command::new(BIN).args(["agent", "--cluster-init"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let o = Command::new(BIN).args(["agent", "--config", "/dev/null"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--server is required"));
}

// ---------------------------------------------------------------- HA, real kubectl, notify

fn free_port_on(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("k3s-standin-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("empty.yaml"), "").unwrap();
    dir
}

/// Server args on a loopback address; `extra` adds --cluster-init or --server/--token.
fn server_args(dir: &Path, name: &str, ip: &str, port: u16, extra: &[&str]) -> Vec<String> {
    let d = |s: &str| dir.join(s).to_string_lossy().to_string();
    let mut a: Vec<String> = [
        "server",
        "--config",
        &d("empty.yaml"),
        "--bind-address",
        ip,
        "--https-listen-port",
        &port.to_string(),
        "--data-dir",
        &d(name),
        "--write-kubeconfig",
        &d(&format!("{name}.yaml")),
        "--node-name",
        name,
        "--node-ip",
        ip,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn spawn_s(args: &[String], log: &Path) -> Proc {
    let v: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn(&v, log)
}

/// (a) 3 servers + 1 agent (through server 2); the first server dies, the others keep
/// serving and the agent stays Ready; a joined server restarts while the server it joined
/// through is down; the first server restarts from its data dir and catches up.
#[test]
fn ha_failover_without_a_primary() {
    let dir = test_dir("ha");
    let d = |s: &str| dir.join(s).to_string_lossy().to_string();
    let (ip1, ip2, ip3) = ("127.0.0.11", "127.0.0.12", "127.0.0.13");
    let (p1, p2, p3) = (free_port_on(ip1), free_port_on(ip2), free_port_on(ip3));
    let s1_args = server_args(&dir, "h1", ip1, p1, &["--cluster-init", "--token", "ha-secret"]);
    let mut s1 = spawn_s(&s1_args, &dir.join("h1.log"));
    let kc1 = dir.join("h1.yaml");
    wait_for("h1 Ready", Duration::from_secs(60), || kc1.exists() && status_of(&kc1, "h1").as_deref() == Some("Ready"));
    let full = std::fs::read_to_string(dir.join("h1/server/node-token")).unwrap().trim().to_string();
    let url1 = format!("https://{ip1}:{p1}");
    let url2 = format!("https://{ip2}:{p2}");
    let s2_args = server_args(&dir, "h2", ip2, p2, &["--server", &url1, "--token", &full]);
    let mut s2 = spawn_s(&s2_args, &dir.join("h2.log"));
    let _s3 = spawn_s(&server_args(&dir, "h3", ip3, p3, &["--server", &url1, "--token", &full]), &dir.join("h3.log"));
    // the agent only ever talks to server 2 (pikube points agents at an LB/VIP)
    let _agent = spawn(
        &[
            "agent",
            "--config",
            &d("empty.yaml"),
            "--server",
            &url2,
            "--token",
            &full,
            "--node-name",
            "ha-ag",
            "--node-ip",
            "127.0.0.21",
            "--data-dir",
            &d("ag"),
        ],
        &dir.join("ag.log"),
    );
    let (kc2, kc3) = (dir.join("h2.yaml"), dir.join("h3.yaml"));
    let all_ready = |kc: &Path, names: &[&str]| names.iter().all(|n| status_of(kc, n).as_deref() == Some("Ready"));
    wait_for("all four nodes Ready on every server", Duration::from_secs(60), || {
        kc2.exists() && kc3.exists() && [&kc1, &kc2, &kc3].iter().all(|kc| all_ready(kc, &["h1", "h2", "h3", "ha-ag"]))
    });
    let h2log = std::fs::read_to_string(dir.join("h2.log")).unwrap();
    assert!(h2log.contains("STAND-IN multi-master replication"), "{h2log}");

    // the kubeconfig of one server works on another (shared CA, admin client cert)
    let kc1_on_3 = dir.join("kc1-on-3.yaml");
    std::fs::write(&kc1_on_3, std::fs::read_to_string(&kc1).unwrap().replace(&url1, &format!("https://{ip3}:{p3}")))
        .unwrap();
    assert!(all_ready(&kc1_on_3, &["h1", "ha-ag"]));

    // a write on server 1 reaches the others
    std::fs::write(
        dir.join("before.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: before\ndata:\n  a: b\n",
    )
    .unwrap();
    let o = kubectl(&kc1, &["apply", "-f", &d("before.yaml")]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "configmap/before created\n");
    wait_for("configmap on server 3", Duration::from_secs(60), || {
        kubectl(&kc3, &["get", "cm", "before"]).status.success()
    });

    // kill the FIRST server
    let _ = s1.0.kill();
    let _ = s1.0.wait();
    let t_kill = Instant::now();
    for kc in [&kc2, &kc3] {
        let o = kubectl(kc, &["get", "nodes"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // writes keep working on the survivors
    std::fs::write(dir.join("during.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: during\n").unwrap();
    let o = kubectl(&kc3, &["apply", "-f", &d("during.yaml")]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "configmap/during created\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = kubectl(&kc2, &["cordon", "ha-ag"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "node/ha-ag cordoned\n");
    wait_for("h1 NotReady after the grace period", Duration::from_secs(120), || {
        status_of(&kc2, "h1").as_deref() == Some("NotReady") && status_of(&kc3, "h1").as_deref() == Some("NotReady")
    });
    // k3s's node-monitor grace period is 40 s, counted from the last heartbeat (every 2 s).
    assert!(
        t_kill.elapsed() >= Duration::from_secs(37),
        "NotReady after {:?}, before the 40 s grace period",
        t_kill.elapsed()
    );
    assert_eq!(status_of(&kc3, "ha-ag").as_deref(), Some("Ready,SchedulingDisabled"));
    assert!(all_ready(&kc3, &["h2", "h3"]));

    // a joined server restarts while the server it joined through is down: it starts from
    // its local data (like real k3s with existing etcd data) and syncs with its peers
    let _ = s2.0.kill();
    let _ = s2.0.wait();
    let _s2b = spawn_s(&s2_args, &dir.join("h2b.log"));
    wait_for("h2 back, with the object written while it was down", Duration::from_secs(60), || {
        kubectl(&kc2, &["get", "cm", "during"]).status.success()
    });
    wait_for("agent Ready again via h2", Duration::from_secs(60), || {
        status_of(&kc3, "ha-ag").as_deref() == Some("Ready,SchedulingDisabled")
            && status_of(&kc2, "h2").as_deref() == Some("Ready")
    });

    // restart server 1 from its data dir: it rejoins, is Ready, and has the new state
    let state_file = dir.join("h1/server/db/standin-state.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&state_file).unwrap().permissions().mode() & 0o777, 0o600);
    let _s1b = spawn_s(&s1_args, &dir.join("h1b.log"));
    wait_for("h1 Ready again on all servers", Duration::from_secs(60), || {
        [&kc1, &kc2, &kc3].iter().all(|kc| status_of(kc, "h1").as_deref() == Some("Ready"))
    });
    wait_for("server 1 sees what was written while it was down", Duration::from_secs(60), || {
        kubectl(&kc1, &["get", "cm", "during"]).status.success()
            && status_of(&kc1, "ha-ag").as_deref() == Some("Ready,SchedulingDisabled")
    });
    let o = kubectl(&kc1, &["get", "cm", "before", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["data"]["a"], "b");

    // a deleted node stays deleted everywhere (tombstones survive anti-entropy)
    let o = kubectl(&kc3, &["delete", "node", "ha-ag"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "node \"ha-ag\" deleted\n");
    std::thread::sleep(Duration::from_secs(3));
    for kc in [&kc1, &kc2, &kc3] {
        assert_eq!(status_of(kc, "ha-ag"), None);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn real_kubectl(bin: &str, kc: &Path, cache: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .arg("--kubeconfig")
        .arg(kc)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn kc_field(kc: &str, key: &str) -> String {
    kc.lines().find_map(|l| l.trim().strip_prefix(&format!("{key}: "))).unwrap().to_string()
}

/// (b) the real kubectl client against the stand-in with the client-cert kubeconfig.
/// Extra kubectl binaries (e.g. Debian's 1.20) can be listed in STANDIN_EXTRA_KUBECTL
/// (colon-separated paths).
#[test]
fn real_kubectl_with_client_cert_kubeconfig() {
    let mut bins: Vec<String> = vec![];
    if Command::new("kubectl").arg("version").arg("--client").output().is_ok_and(|o| o.status.success()) {
        bins.push("kubectl".into());
    } else {
        skip!("`kubectl` is not on PATH; the real-kubectl checks were not run");
    }
    bins.extend(
        std::env::var("STANDIN_EXTRA_KUBECTL")
            .unwrap_or_default()
            .split(':')
            .filter(|s| !s.is_empty())
            .map(String::from),
    );
    if bins.is_empty() {
        return;
    }
    let dir = test_dir("kubectl");
    let d = |s: &str| dir.join(s).to_string_lossy().to_string();
    let ip = "127.0.0.1";
    let (pa, pb) = (free_port_on(ip), free_port_on(ip));
    let _a = spawn_s(
        &server_args(&dir, "ka", ip, pa, &["--token", "kc-secret", "--write-kubeconfig-mode", "0640"]),
        &dir.join("ka.log"),
    );
    // a second, unrelated cluster: its admin cert is signed by another CA
    let _b = spawn_s(&server_args(&dir, "kb", ip, pb, &["--token", "other"]), &dir.join("kb.log"));
    let _agent = spawn(
        &[
            "agent",
            "--config",
            &d("empty.yaml"),
            "--server",
            &format!("https://{ip}:{pa}"),
            "--token",
            "kc-secret",
            "--node-name",
            "kc-ag",
            "--node-ip",
            ip,
            "--data-dir",
            &d("ag"),
        ],
        &dir.join("ag.log"),
    );
    let (kca, kcb) = (dir.join("ka.yaml"), dir.join("kb.yaml"));
    wait_for("ka and kc-ag Ready", Duration::from_secs(60), || {
        kca.exists()
            && kcb.exists()
            && status_of(&kca, "ka").as_deref() == Some("Ready")
            && status_of(&kca, "kc-ag").as_deref() == Some("Ready")
    });
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&kca).unwrap().permissions().mode() & 0o777, 0o640);
    let a = std::fs::read_to_string(&kca).unwrap();
    let b = std::fs::read_to_string(&kcb).unwrap();
    assert!(a.contains("client-certificate-data: ") && a.contains("client-key-data: ") && !a.contains("token:"), "{a}");
    assert!(a.contains(&format!("server: https://127.0.0.1:{pa}")));
    let (a_crt, a_key) = (kc_field(&a, "client-certificate-data"), kc_field(&a, "client-key-data"));
    let (b_crt, b_key) = (kc_field(&b, "client-certificate-data"), kc_field(&b, "client-key-data"));
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let wrong_ca = write("wrong-ca.yaml", a.replace(&a_crt, &b_crt).replace(&a_key, &b_key));
    let wrong_key = write("wrong-key.yaml", a.replace(&a_key, &b_key));
    let no_creds = write(
        "no-creds.yaml",
        a.lines()
            .filter(|l| !l.contains("client-certificate-data") && !l.contains("client-key-data"))
            .collect::<Vec<_>>()
            .join("\n")
            .replace("  user:\n", "  user: {}\n")
            + "\n",
    );
    let bad_token = write(
        "bad-token.yaml",
        a.replace(&format!("client-certificate-data: {a_crt}"), "token: not-the-token")
            .lines()
            .filter(|l| !l.contains("client-key-data"))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
    );

    for bin in &bins {
        let cache = dir.join(format!("cache-{}", bin.replace('/', "_")));
        let run = |kc: &Path, args: &[&str]| real_kubectl(bin, kc, &cache, args);
        let o = run(&kca, &["get", "nodes"]);
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(o.status.success(), "{bin}: {}", String::from_utf8_lossy(&o.stderr));
        let mut lines = out.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(header, ["NAME", "STATUS", "ROLES", "AGE", "VERSION"], "{bin}: {out}");
        for n in ["ka", "kc-ag"] {
            let l = out
                .lines()
                .find(|l| l.split_whitespace().next() == Some(n))
                .unwrap_or_else(|| panic!("{bin}: {n} missing: {out}"));
            assert_eq!(l.split_whitespace().nth(1), Some("Ready"), "{bin}: {out}");
        }
        assert!(
            out.contains("control-plane,master") && out.contains("<none>") && out.contains("v1.31.4+k3s1"),
            "{bin}: {out}"
        );

        let o = run(&kca, &["get", "nodes", "-o", "wide"]);
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            out.lines().next().unwrap().contains("INTERNAL-IP")
                && out.contains("KERNEL-VERSION")
                && out.contains("containerd://standin"),
            "{bin}: {out}"
        );
        assert!(out.lines().any(|l| l.starts_with("kc-ag") && l.contains("127.0.0.1")), "{bin}: {out}");

        let o = run(&kca, &["get", "nodes", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{bin}: {e}"));
        let items = v["items"].as_array().unwrap();
        assert_eq!(items.len(), 2, "{bin}");
        assert!(items.iter().all(|n| n["status"]["conditions"][0]["status"] == "True"));

        let o = run(&kca, &["get", "node", "kc-ag"]);
        assert!(String::from_utf8_lossy(&o.stdout).contains("kc-ag"), "{bin}");
        let o = run(&kca, &["get", "node", "nope"]);
        assert!(String::from_utf8_lossy(&o.stderr).contains("(NotFound): nodes \"nope\" not found"), "{bin}");
        // The contract the stand-in's own kubectl follows: nothing printed, exit 0.
        let o = run(&kca, &["get", "node", "nope", "--ignore-not-found", "-o", "json"]);
        assert!(o.status.success() && o.stdout.is_empty(), "{bin}: {o:?}");
        let o = run(&kca, &["get", "--raw", "/readyz"]);
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "ok", "{bin}");
        let o = run(&kca, &["version"]);
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        // 1.20 prints version.Info{...GitVersion:"v1.31.4+k3s1"...}, newer ones a plain line
        let server_line = out.lines().find(|l| l.starts_with("Server Version:")).unwrap_or_default();
        assert!(server_line.contains("v1.31.4+k3s1"), "{bin}: {out}");

        // refused: another cluster's cert, a key that does not match, no credentials, bad token
        for kc in [&wrong_ca, &wrong_key, &no_creds, &bad_token] {
            let o = run(kc, &["get", "nodes"]);
            assert!(!o.status.success(), "{bin} {}: {}", kc.display(), String::from_utf8_lossy(&o.stdout));
            // No node list, not even its header: nothing on stdout but kubectl's own prompt for
            // the credentials the kubeconfig lacks.
            let prompt = if kc == &no_creds { "Please enter Username: " } else { "" };
            assert_eq!(String::from_utf8_lossy(&o.stdout), prompt, "{bin} {}", kc.display());
        }
        let o = run(&bad_token, &["get", "nodes"]);
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("Unauthorized"),
            "{bin}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // the stand-in's own kubectl refuses the same bad kubeconfigs
    for kc in [&wrong_ca, &wrong_key, &no_creds] {
        assert!(!kubectl(kc, &["get", "nodes"]).status.success(), "{}", kc.display());
    }
    let o = Command::new(BIN).args(["kubectl", "get", "nodes"]).env("KUBECONFIG", &kca).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("kc-ag"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// (c) systemd Type=notify: READY=1 on $NOTIFY_SOCKET (path and abstract '@' sockets).
#[test]
fn systemd_notify_ready() {
    use std::os::unix::net::UnixDatagram;
    let dir = test_dir("notify");
    let d = |s: &str| dir.join(s).to_string_lossy().to_string();
    let sock_path = dir.join("notify.sock");
    let srv_sock = UnixDatagram::bind(&sock_path).unwrap();
    srv_sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let abstract_name = format!("k3s-standin-notify-{}", std::process::id());
    let ag_sock = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap();
        UnixDatagram::bind_addr(&addr).unwrap()
    };
    ag_sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let port = free_port();
    let args = server_args(&dir, "ns1", "127.0.0.1", port, &["--token", "n-secret"]);
    let f = std::fs::File::create(dir.join("ns1.log")).unwrap();
    let _s = Proc(
        Command::new(BIN).args(&args).env("NOTIFY_SOCKET", &sock_path).stdout(Stdio::null()).stderr(f).spawn().unwrap(),
    );
    let mut buf = [0u8; 64];
    let n = srv_sock.recv(&mut buf).expect("server READY=1");
    assert_eq!(&buf[..n], b"READY=1");
    // the server answers by the time it said READY
    let kc = dir.join("ns1.yaml");
    assert!(kubectl(&kc, &["version"]).status.success());

    let f = std::fs::File::create(dir.join("nag.log")).unwrap();
    let _a = Proc(
        Command::new(BIN)
            .args([
                "agent",
                "--config",
                &d("empty.yaml"),
                "--server",
                &format!("https://127.0.0.1:{port}"),
                "--token",
                "n-secret",
                "--node-name",
                "n-ag",
                "--node-ip",
                "127.0.0.1",
                "--data-dir",
                &d("nag"),
            ])
            .env("NOTIFY_SOCKET", format!("@{abstract_name}"))
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap(),
    );
    let n = ag_sock.recv(&mut buf).expect("agent READY=1");
    assert_eq!(&buf[..n], b"READY=1");
    // READY means registered: the node is listed right away
    assert!(status_of(&kc, "n-ag").is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Real k3s keeps a hash of each node's password (`/etc/rancher/node/password`) in the
/// `<node>.node-password.k3s` secret and refuses the name with another password until that
/// secret (or the Node) is deleted: what a reflashed node rejoining under its old name hits.
#[test]
fn node_password_refuses_a_reflashed_node_until_its_secret_is_deleted() {
    let dir = test_dir("nodepw");
    let d = |s: &str| dir.join(s).to_string_lossy().to_string();
    std::fs::write(dir.join("empty.yaml"), "").unwrap();
    let port = free_port();
    let _s1 = spawn(
        &[
            "server",
            "--config",
            &d("empty.yaml"),
            "--bind-address",
            "127.0.0.1",
            "--https-listen-port",
            &port.to_string(),
            "--data-dir",
            &d("s1"),
            "--write-kubeconfig",
            &d("s1.yaml"),
            "--node-name",
            "srv1",
            "--node-ip",
            "127.0.0.1",
            "--token",
            "pw-secret",
        ],
        &dir.join("s1.log"),
    );
    let kc = dir.join("s1.yaml");
    wait_for("srv1 Ready", Duration::from_secs(60), || status_of(&kc, "srv1").as_deref() == Some("Ready"));
    let url = format!("https://127.0.0.1:{port}");
    let agent = |data: &str, log: &str| {
        spawn(
            &[
                "agent",
                "--config",
                &d("empty.yaml"),
                "--server",
                &url,
                "--token",
                "pw-secret",
                "--node-name",
                "np1",
                "--node-ip",
                "127.0.0.1",
                "--data-dir",
                &d(data),
            ],
            &dir.join(log),
        )
    };
    let first = agent("a1", "a1.log");
    wait_for("np1 Ready", Duration::from_secs(60), || status_of(&kc, "np1").as_deref() == Some("Ready"));
    drop(first);
    let pw = std::fs::read_to_string(dir.join("a1/node/password")).unwrap();
    assert_eq!(pw.trim().len(), 32, "{pw:?}");
    let get_secret = || {
        kubectl(
            &kc,
            &["-n", "kube-system", "get", "secret", "np1.node-password.k3s", "--ignore-not-found", "-o", "name"],
        )
    };
    assert_eq!(String::from_utf8_lossy(&get_secret().stdout).trim(), "secret/np1.node-password.k3s");

    // A new disk (another data dir: no password file) under the same name is refused, with k3s's words.
    let reflashed = agent("a2", "a2.log");
    wait_for("the refusal in the agent log", Duration::from_secs(60), || {
        std::fs::read_to_string(dir.join("a2.log")).unwrap_or_default().contains(
            "Waiting to retrieve agent configuration; server is not ready: Node password rejected, duplicate hostname or contents of '/etc/rancher/node/password' may not match server node-passwd entry, try enabling a unique node name with the --with-node-id flag",
        )
    });
    assert!(!std::fs::read_to_string(dir.join("a2.log")).unwrap().contains("Node np1 registered"));
    drop(reflashed);

    // The old disk is still welcome; deleting the secret lets the new one in.
    let out = kubectl(&kc, &["-n", "kube-system", "delete", "secret", "np1.node-password.k3s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "secret \"np1.node-password.k3s\" deleted");
    assert!(get_secret().stdout.is_empty());
    let _reflashed = agent("a2", "a2b.log");
    wait_for("the reflashed np1 registered", Duration::from_secs(60), || {
        std::fs::read_to_string(dir.join("a2b.log")).unwrap_or_default().contains("Node np1 registered")
    });
    // Deleting the Node deletes its secret too, as k3s's node controller does.
    assert!(kubectl(&kc, &["delete", "node", "np1"]).status.success());
    assert!(get_secret().stdout.is_empty());
}

/// The kernel's name of the process (what `pgrep -x`/`pkill -x` match).
fn comm(p: &Proc) -> String {
    std::fs::read_to_string(format!("/proc/{}/comm", p.0.id())).unwrap_or_default().trim().to_string()
}

fn wait_for_comm(p: &Proc, want: &str, log: &Path) {
    let started = Instant::now();
    while comm(p) != want {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "process named {:?}, not {want:?}; log:\n{}",
            comm(p),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn server_and_agent_run_as_k3s_server_and_k3s_agent() {
    let dir = std::env::temp_dir().join(format!("k3s-standin-names-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = |s: &str| dir.join(s).to_string_lossy().to_string();
    let port = free_port().to_string();
    let server = spawn(
        &[
            "server",
            "--bind-address",
            "127.0.0.1",
            "--https-listen-port",
            &port,
            "--token",
            "names-secret",
            "--data-dir",
            &d("s"),
            "--write-kubeconfig",
            &d("s.yaml"),
            "--node-ip",
            "127.0.0.1",
        ],
        &dir.join("s.log"),
    );
    wait_for_comm(&server, "k3s-server", &dir.join("s.log"));
    let link = dir.join("s/data/standin/bin/k3s-server");
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new(BIN).canonicalize().unwrap(), "{}", link.display());

    let url = format!("https://127.0.0.1:{port}");
    let agent = spawn(
        &[
            "agent",
            "--server",
            &url,
            "--token",
            "names-secret",
            "--data-dir",
            &d("a"),
            "--node-ip",
            "127.0.0.1",
            "--node-name",
            "a1",
        ],
        &dir.join("a.log"),
    );
    wait_for_comm(&agent, "k3s-agent", &dir.join("a.log"));
    // Same pid: the re-exec replaces the process (systemd's Type=notify tracks the main pid).
    let args = std::fs::read_to_string(format!("/proc/{}/cmdline", agent.0.id())).unwrap();
    assert!(args.starts_with("k3s-agent\0agent\0--server\0"), "{args:?}");
    drop((server, agent));
    let _ = std::fs::remove_dir_all(&dir);
}

/// k3s's `/db/info` member list as the peer-URL hosts, read with the server token as user `server`.
fn member_hosts(url: &str, token: &str) -> Vec<String> {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "5", "-u", &format!("server:{token}")])
        .arg(format!("{url}/db/info"))
        .output()
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let mut hosts: Vec<String> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["peerURLs"][0].as_str().unwrap().trim_start_matches("https://").split(':').next().unwrap().to_string()
        })
        .collect();
    hosts.sort();
    hosts
}

/// Deleting a dead server's Node removes its etcd member (k3s's member controller); with the
/// members that answer below quorum, etcd refuses the change and the Node stays.
#[test]
fn deleting_a_server_node_removes_its_member_while_quorum_holds() {
    let dir = test_dir("members");
    let (ip1, ip2, ip3) = ("127.0.0.11", "127.0.0.12", "127.0.0.13");
    let (p1, p2, p3) = (free_port_on(ip1), free_port_on(ip2), free_port_on(ip3));
    let _s1 =
        spawn_s(&server_args(&dir, "m1", ip1, p1, &["--cluster-init", "--token", "m-secret"]), &dir.join("m1.log"));
    let kc1 = dir.join("m1.yaml");
    wait_for("m1 Ready", Duration::from_secs(60), || kc1.exists() && status_of(&kc1, "m1").as_deref() == Some("Ready"));
    let url1 = format!("https://{ip1}:{p1}");
    let mut s2 =
        spawn_s(&server_args(&dir, "m2", ip2, p2, &["--server", &url1, "--token", "m-secret"]), &dir.join("m2.log"));
    let mut s3 =
        spawn_s(&server_args(&dir, "m3", ip3, p3, &["--server", &url1, "--token", "m-secret"]), &dir.join("m3.log"));
    wait_for("three members", Duration::from_secs(60), || {
        status_of(&kc1, "m3").as_deref() == Some("Ready") && member_hosts(&url1, "m-secret").len() == 3
    });
    let o = Command::new("curl").args(["-sk", "-u", "server:wrong"]).arg(format!("{url1}/db/info")).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("Unauthorized"), "/db/info needs the server token");

    let _ = s3.0.kill();
    let _ = s3.0.wait();
    let o = kubectl(&kc1, &["delete", "node", "m3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(member_hosts(&url1, "m-secret"), [ip1, ip2], "m3's member is removed with its Node");

    let _ = s2.0.kill();
    let _ = s2.0.wait();
    let o = kubectl(&kc1, &["delete", "node", "m2"]);
    assert!(!o.status.success(), "one of two members answering is no quorum");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("etcdserver: request timed out"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(member_hosts(&url1, "m-secret"), [ip1, ip2]);
    assert!(status_of(&kc1, "m2").is_some(), "the Node stays");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server started without `--cluster-init` runs on sqlite: real k3s serves no bootstrap data
/// then, so a server that tries to join it exits with k3s's fatal error, and the first server
/// stays alone.
#[test]
fn a_server_cannot_join_a_server_on_sqlite() {
    let dir = test_dir("sqlite");
    let ip = "127.0.0.1";
    let (p1, p2) = (free_port_on(ip), free_port_on(ip));
    let _s1 = spawn_s(&server_args(&dir, "q1", ip, p1, &["--token", "q-secret"]), &dir.join("q1.log"));
    let kc1 = dir.join("q1.yaml");
    wait_for("q1 Ready", Duration::from_secs(60), || kc1.exists() && status_of(&kc1, "q1").as_deref() == Some("Ready"));
    let full = std::fs::read_to_string(dir.join("q1/server/node-token")).unwrap().trim().to_string();
    let url1 = format!("https://{ip}:{p1}");
    let mut s2 = spawn_s(&server_args(&dir, "q2", ip, p2, &["--server", &url1, "--token", &full]), &dir.join("q2.log"));
    let started = Instant::now();
    let exit = loop {
        if let Some(status) = s2.0.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the joining server keeps running");
        std::thread::sleep(Duration::from_millis(300));
    };
    let q2log = std::fs::read_to_string(dir.join("q2.log")).unwrap();
    assert_eq!(exit.code(), Some(1), "{q2log}");
    let want = format!(
        "level=fatal msg=\"starting kubernetes: preparing server: failed to bootstrap cluster data: \
         {url1}/v1-k3s/server-bootstrap: 400 Bad Request\""
    );
    assert!(q2log.contains(&want), "want {want}\nin:\n{q2log}");
    let q1log = std::fs::read_to_string(dir.join("q1.log")).unwrap();
    let warned = "level=warning msg=\"Received HTTP bootstrap request from 127.0.0.1:";
    assert!(q1log.contains(warned) && q1log.contains("but embedded etcd is not enabled."), "{q1log}");
    let o = kubectl(&kc1, &["get", "nodes", "--no-headers"]);
    let names: Vec<String> =
        String::from_utf8_lossy(&o.stdout).lines().map(|l| l.split(' ').next().unwrap().into()).collect();
    assert_eq!(names, ["q1"], "only the first server is a node");
    let _ = std::fs::remove_dir_all(&dir);
}
