//! Starts a stand-in server, a joining server and an agent on 127.0.0.1 only, and checks
//! node listing, readiness, token refusal and NotReady after the agent dies.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_k3s");

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
    Proc(
        Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap(),
    )
}

fn kubectl(kc: &Path, args: &[&str]) -> Output {
    Command::new(BIN).arg("kubectl").arg("--kubeconfig").arg(kc).args(args).output().unwrap()
}

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
        &["server", "--config", &d("config.yaml"), "--bind-address", "127.0.0.1", "--https-listen-port", &s1_port,
          "--data-dir", &d("s1"), "--write-kubeconfig", &d("s1.yaml"), "--node-name", "srv1", "--node-ip", "127.0.0.1"],
        &dir.join("s1.log"),
    );
    let kc1 = dir.join("s1.yaml");
    wait_for("server 1 kubeconfig", Duration::from_secs(20), || kc1.exists());
    wait_for("srv1 Ready", Duration::from_secs(20), || status_of(&kc1, "srv1").as_deref() == Some("Ready"));

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
        &["agent", "--config", &d("empty.yaml"), "--server", &url1, "--token", &full, "--node-name", "ag1",
          "--node-ip", "127.0.0.1", "--data-dir", &d("a1"), "--node-taint", "dedicated=lab:NoSchedule"],
        &dir.join("a1.log"),
    );
    // second agent with the short token form
    let _agent2 = spawn(
        &["agent", "--config", &d("empty.yaml"), "--server", &url1, "--token", "lab-secret", "--node-name", "ag2",
          "--node-ip", "127.0.0.1", "--data-dir", &d("a2")],
        &dir.join("a2.log"),
    );
    wait_for("ag1 and ag2 Ready", Duration::from_secs(20), || {
        status_of(&kc1, "ag1").as_deref() == Some("Ready") && status_of(&kc1, "ag2").as_deref() == Some("Ready")
    });

    // wrong password: agent keeps retrying (like real k3s under systemd) and never registers
    let bad = full.replace("::server:lab-secret", "::server:wrong");
    let mut bad_agent = spawn(
        &["agent", "--config", &d("empty.yaml"), "--server", &url1, "--token", &bad, "--node-name", "intruder",
          "--node-ip", "127.0.0.1", "--data-dir", &d("bad")],
        &dir.join("bad.log"),
    );
    // wrong CA hash
    let wrong_hash = format!("K10{}::server:lab-secret", "0".repeat(64));
    let _bad2 = spawn(
        &["agent", "--config", &d("empty.yaml"), "--server", &url1, "--token", &wrong_hash, "--node-name", "intruder2",
          "--node-ip", "127.0.0.1", "--data-dir", &d("bad2")],
        &dir.join("bad2.log"),
    );
    wait_for("wrong-token refusals logged", Duration::from_secs(15), || {
        let a = std::fs::read_to_string(dir.join("bad.log")).unwrap_or_default();
        let b = std::fs::read_to_string(dir.join("bad2.log")).unwrap_or_default();
        a.contains("401 Unauthorized") && b.contains("token CA hash does not match")
    });
    assert!(bad_agent.0.try_wait().unwrap().is_none(), "agent keeps retrying like real k3s");
    let names = String::from_utf8_lossy(&kubectl(&kc1, &["get", "nodes", "-o", "name"]).stdout).to_string();
    assert!(!names.contains("intruder"), "{names}");

    // a joining server with a wrong token exits 1
    let out = Command::new(BIN)
        .args(["server", "--config", &d("empty.yaml"), "--server", &url1, "--token", "nope", "--bind-address", "127.0.0.1",
               "--https-listen-port", &free_port().to_string(), "--data-dir", &d("sbad"), "--write-kubeconfig", &d("sbad.yaml")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401 Unauthorized"));

    // a joining server with the right token sees the full cluster
    let s2_port = p2.to_string();
    let _s2 = spawn(
        &["server", "--config", &d("empty.yaml"), "--server", &url1, "--token", &full, "--bind-address", "127.0.0.1",
          "--https-listen-port", &s2_port, "--data-dir", &d("s2"), "--write-kubeconfig", &d("s2.yaml"),
          "--node-name", "srv2", "--node-ip", "127.0.0.1"],
        &dir.join("s2.log"),
    );
    let kc2 = dir.join("s2.yaml");
    wait_for("srv2 Ready, seen from both servers", Duration::from_secs(20), || {
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
    wait_for("ag1 NotReady", Duration::from_secs(25), || status_of(&kc1, "ag1").as_deref() == Some("NotReady"));
    let o = kubectl(&kc1, &["delete", "node", "ag1"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "node \"ag1\" deleted\n");
    let o = kubectl(&kc1, &["delete", "node", "ag1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Error from server (NotFound): nodes \"ag1\" not found"));

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
