//! What `up` and `down` show while they work and what they report, on a real 2-node lab: the
//! line log without a terminal or with `--plain`, the live per-host view under a pseudo-terminal
//! (util-linux `script`), and the `--json` shapes of `up`, `down` and `status`.
//! Needs root and systemd-nspawn; otherwise the test prints `SKIP:` and returns.

mod common;

use std::process::{Command, Output};

use common::{standin_artifacts, stdout, text, Lab, BIN};

/// Runs `command` (a shell line) in the lab under a pseudo-terminal; returns the terminal's
/// whole output (stdout and stderr as a person would see them) and the exit code.
fn under_pty(lab: &Lab, command: &str) -> (String, Option<i32>) {
    let line = format!("{BIN} lab exec --name {} -- {command}", lab.name);
    let out = Command::new("script")
        .args(["-qfec", &line, "/dev/null"])
        .env("TERM", "xterm-256color")
        .output()
        .expect("run util-linux script (a pseudo-terminal)");
    (String::from_utf8_lossy(&out.stdout).into_owned(), out.status.code())
}

/// `s` without terminal control sequences (colours, cursor moves) and carriage returns.
fn visible(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.next_if_eq(&'[').is_some() {
                    while chars.next().is_some_and(|c| !c.is_ascii_alphabetic()) {}
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// The line log: each stderr line is a phase (`==> …`) or a host's step (`    node: …`).
fn assert_line_log(log: &str, steps: &[&str]) {
    assert!(!log.contains('\x1b') && !log.contains('✔'), "no terminal codes or ticks in the line log:\n{log}");
    for l in log.lines() {
        assert!(l.starts_with("==> ") || l.starts_with("    "), "unexpected line {l:?} in the line log:\n{log}");
    }
    for want in ["==> preflight", "==> prepare hosts", "==> reboot", "==> verify"].iter().chain(steps) {
        assert!(log.lines().any(|l| l == *want), "{want:?} missing from the line log:\n{log}");
    }
}

/// Whether the terminal showed `host`'s line ticked with `message`.
fn ticked(seen: &str, host: &str, message: &str) -> bool {
    seen.lines().any(|l| l.contains(&format!("✔ {host} ")) && l.contains(message))
}

/// The screen a terminal shows after `tty` (an 80-column one, tall enough to keep every line).
fn screen(tty: &str) -> String {
    let size = |n| std::num::NonZeroU16::new(n).expect("not zero");
    let mut term = vt100::Parser::new(size(500), size(80), 0);
    term.process(tty.as_bytes());
    // Row by row: a line filling all 80 columns is one row, not joined with the next.
    term.screen().rows(0, 80).collect::<Vec<_>>().join("\n")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON: {e}\n{}", text(out)))
}

fn host<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    doc["hosts"].as_array().and_then(|h| h.iter().find(|h| h["name"] == name)).unwrap_or_else(|| panic!("{doc:#}"))
}

#[test]
fn line_log_live_view_and_json_reports() {
    require_lab!();
    let lab = Lab::up("tprog-a", 20, &["--nodes", "2"]);
    let file = lab.cluster_file();
    let f = file.to_str().unwrap();
    // Makes node1 need a change again (its hostname back to the image's), so each run below shows a step.
    let unset_hostname = || lab.sh("node1", "echo debian > /etc/hostname && hostname debian");

    // No terminal (pipes): today's line log, and the final report.
    let up = lab.pikube(&["up", "-f", f]);
    assert_eq!(up.status.code(), Some(0), "{}", text(&up));
    let log = String::from_utf8_lossy(&up.stderr).into_owned();
    assert_line_log(&log, &["    node1: set hostname debian → node1", "    node2: set hostname debian → node2"]);
    assert!(stdout(&up).contains("node1 (10.77.20.11): changed\n  [prepare hosts] set hostname debian → node1\n"));

    // A terminal: one live line per host with its phase and step, ticked when done; no line log.
    // A warning while the lines show (from an ~/.ssh/config pikube reads) is printed above them.
    let home = lab.dir().join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::write(home.join(".ssh/config"), "Include elsewhere\n").unwrap();
    unset_hostname();
    let (tty, code) = under_pty(&lab, &format!("env HOME={} {BIN} up -f {f}", home.display()));
    let seen = visible(&tty);
    assert_eq!(code, Some(0), "{seen}");
    assert!(seen.contains("node1") && seen.contains("prepare hosts · set hostname debian → node1"), "{seen}");
    assert!(seen.contains("node2") && seen.contains("preflight"), "{seen}");
    // What the terminal shows at the end: each host's line once, redrawn in place, then the report.
    let shown = screen(&tty);
    let lines: Vec<&str> = shown.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    let tick_at =
        |host: &str, done: &str| lines.iter().position(|l| l.starts_with(&format!("✔ {host} ")) && l.ends_with(done));
    let (Some(t1), Some(t2)) = (tick_at("node1", "s  done, 1 change(s)"), tick_at("node2", "s  done, no changes"))
    else {
        panic!("no ticked lines on the screen:\n{shown}")
    };
    assert_eq!((t2, lines.len()), (t1 + 1, t1 + 6), "two host lines, then the report:\n{shown}");
    assert!(lines[t1 + 2] == "node1 (10.77.20.11): changed" && lines[t1 + 5].starts_with("Up: 1 change(s)"), "{shown}");
    assert_eq!(lines.iter().filter(|l| l.contains("node1 ") && l.contains("prepare hosts")).count(), 0, "{shown}");
    // The warning (two rows at 80 columns) stays whole above the host lines.
    let warned = lines[..t1].iter().position(|l| l.contains(" WARN pikube::ssh::config: "));
    assert!(warned.is_some_and(|w| lines[w + 1].ends_with("config:1: Include is not supported; ignored")), "{shown}");
    assert!(!seen.contains("==> prepare hosts") && !seen.contains("    node1: set hostname"), "{seen}");

    // `--plain` on a terminal: the line log again.
    unset_hostname();
    let (tty, code) = under_pty(&lab, &format!("{BIN} up --plain -f {f}"));
    assert_eq!(code, Some(0), "{tty}");
    let report_at = tty.find("node1 (10.77.20.11)").unwrap_or_else(|| panic!("no report:\n{tty}"));
    assert_line_log(&tty[..report_at].replace('\r', ""), &["    node1: set hostname debian → node1"]);

    // `up --json`: per host its status, changes and error; the exit code as without it.
    unset_hostname();
    let up = lab.pikube(&["up", "--json", "-f", f]);
    assert_eq!(up.status.code(), Some(0), "{}", text(&up));
    let doc = json(&up);
    assert_eq!(doc["ok"], true, "{doc:#}");
    let node1 = host(&doc, "node1");
    assert_eq!((&node1["status"], &node1["role"], &node1["error"]), (&"changed".into(), &"server".into(), &().into()));
    assert_eq!(
        node1["changes"],
        serde_json::json!([{"phase": "prepare hosts", "what": "set hostname debian → node1"}])
    );
    assert_eq!(host(&doc, "node2")["status"], "no changes", "{doc:#}");

    // `status --json`: no Kubernetes in this lab, so nothing is Ready and the exit code says so.
    let status = lab.pikube(&["status", "--json", "-f", f]);
    assert_eq!(status.status.code(), Some(1), "{}", text(&status));
    let doc = json(&status);
    assert_eq!(doc["ready"], false, "{doc:#}");
    assert_eq!(doc["endpoint"], "https://10.77.20.11:6443", "{doc:#}");
    let node2 = host(&doc, "node2");
    assert_eq!(
        (&node2["role"], &node2["unit"], &node2["service"]),
        (&"agent".into(), &"k3s-agent".into(), &"not installed".into())
    );
    assert_eq!((&node2["node"], &node2["version"]), (&"not registered".into(), &().into()), "{doc:#}");

    // `down --json`: nothing of k3s to remove.
    let down = lab.pikube(&["down", "--yes", "--json", "-f", f]);
    assert_eq!(down.status.code(), Some(0), "{}", text(&down));
    let doc = json(&down);
    assert!(["node1", "node2"].iter().all(|n| host(&doc, n)["status"] == "no changes"), "{doc:#}");

    // Ctrl-C in the middle of a host hook that takes minutes (sent after 15 s, room for a loaded
    // machine): the lines stop, marked, and stop redrawing, so the message after them stays readable.
    let slow = lab.dir().join("slow.yaml");
    let hook =
        "hooks:\n  hosts:\n    - phase: prepare hosts\n      when: after\n      on: [node1]\n      run: sleep 300\n";
    std::fs::write(&slow, std::fs::read_to_string(&file).unwrap() + hook).unwrap();
    let (tty, code) = under_pty(&lab, &format!("timeout --preserve-status -s INT 15 {BIN} up -f {}", slow.display()));
    assert_eq!(code, Some(130), "{tty}");
    let (before, after) = tty.split_once("interrupted: stopped before finishing").unwrap_or_else(|| panic!("{tty}"));
    assert!(visible(before).contains("interrupted") && visible(before).contains("prepare hosts · hook after"), "{tty}");
    assert!(!after.contains('\x1b'), "the live view went on drawing after the interrupt:\n{after:?}");

    // An error that ends the run before any host is reached: the lines stop, and the error
    // printed after them stays on the screen whole.
    let bad = lab.dir().join("bad.yaml");
    let text_of = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&bad, text_of.replace("  user: root\n", "  user: root\n  sudo_password: {env: TPROG_UNSET}\n"))
        .unwrap();
    let (tty, code) = under_pty(&lab, &format!("{BIN} up -f {}", bad.display()));
    assert_eq!(code, Some(2), "{tty}");
    let shown = screen(&tty);
    let lines: Vec<&str> = shown.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    let stopped = lines.iter().filter(|l| l.contains(" node") && l.ends_with("  stopped")).count();
    assert_eq!(stopped, 2, "{shown}");
    assert!(lines.iter().any(|l| l.contains("node1: sudo password variable TPROG_UNSET is not set")), "{shown}");

    // A host that fails: its line says so, the other is still ticked, and the JSON names the error.
    lab.lab("cut", "node2");
    unset_hostname();
    let (tty, code) = under_pty(&lab, &format!("{BIN} up -f {f}"));
    let seen = visible(&tty);
    assert_eq!(code, Some(1), "{seen}");
    assert!(seen.lines().any(|l| l.contains("✘ node2 ") && l.contains("FAILED: ")), "{seen}");
    assert!(ticked(&seen, "node1", "done, 1 change(s)"), "{seen}");
    let up = lab.pikube(&["up", "--json", "-f", f]);
    assert_eq!(up.status.code(), Some(1), "{}", text(&up));
    let doc = json(&up);
    assert_eq!((&doc["ok"], &host(&doc, "node2")["status"]), (&false.into(), &"failed".into()), "{doc:#}");
    assert!(host(&doc, "node2")["error"].as_str().is_some_and(|e| !e.is_empty()), "{doc:#}");
    assert_eq!(doc["failed"][0]["host"], "node2", "{doc:#}");
}

/// With Kubernetes (the k3s STAND-IN, a labelled test double): the live view goes through the
/// k3s phases, `status --json` reports the Ready node with its version and address, and
/// `down --json` lists what it removed.
#[test]
fn kubernetes_phases_live_and_status_json() {
    require_lab!();
    let artifacts = standin_artifacts();
    let lab = Lab::up("tprog-b", 21, &["--nodes", "1", "--k3s-artifacts", artifacts.to_str().unwrap()]);
    let file = lab.cluster_file();
    let f = file.to_str().unwrap();

    let (tty, code) = under_pty(&lab, &format!("{BIN} up -f {f}"));
    let seen = visible(&tty);
    assert_eq!(code, Some(0), "{seen}");
    for phase in ["prepare hosts", "artifacts · pushing k3s v1.31.4+k3s1", "servers"] {
        assert!(seen.lines().any(|l| l.contains("node1") && l.contains(phase)), "{phase:?} not shown:\n{seen}");
    }
    assert!(seen.lines().any(|l| l.contains("✔ node1 ") && l.contains("change(s)")), "{seen}");

    let status = lab.pikube(&["status", "--json", "-f", f]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    let doc = json(&status);
    assert_eq!((&doc["ready"], &doc["split"]), (&true.into(), &().into()), "{doc:#}");
    let node1 = host(&doc, "node1");
    let want = serde_json::json!({
        "name": "node1", "role": "server", "address": "10.77.21.11", "unit": "k3s", "service": "active",
        "node": "Ready", "version": "v1.31.4+k3s1", "internal_ip": "10.77.21.11",
        "verdict": "healthy", "reasons": [],
    });
    let listed: serde_json::Map<String, serde_json::Value> =
        want.as_object().unwrap().keys().map(|k| (k.clone(), node1[k].clone())).collect();
    assert_eq!(serde_json::Value::Object(listed), want, "{doc:#}");
    assert_eq!(node1["health"]["filesystems"][0]["mount"], "/", "the health readings are in the JSON: {doc:#}");

    let down = lab.pikube(&["down", "--yes", "--json", "-f", f]);
    assert_eq!(down.status.code(), Some(0), "{}", text(&down));
    let doc = json(&down);
    let node1 = host(&doc, "node1");
    assert_eq!(node1["status"], "changed", "{doc:#}");
    let changes = node1["changes"].as_array().unwrap();
    assert!(!changes.is_empty() && changes.iter().all(|c| c["phase"] == "down"), "{doc:#}");
    let status = lab.pikube(&["status", "--json", "-f", f]);
    assert_eq!(status.status.code(), Some(1), "{}", text(&status));
    assert_eq!(host(&json(&status), "node1")["service"], "not installed");
}
