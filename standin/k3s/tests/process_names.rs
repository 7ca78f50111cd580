//! The stand-in runs under the names real k3s re-execs as (`k3s-server`, `k3s-agent`, from
//! `<data-dir>/data/<dir>/bin/`), so a teardown that kills only `k3s` is caught. Loopback only.

use std::path::Path;
use std::process::{Child, Command, Stdio};
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
    let log = std::fs::File::create(log).unwrap();
    Proc(Command::new(BIN).args(args).stdout(Stdio::null()).stderr(log).spawn().unwrap())
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
