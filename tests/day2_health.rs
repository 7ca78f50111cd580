//! Pi health in `status` (issue 11): on Pi-like lab nodes whose firmware and thermal files the
//! lab emulates at the real paths (`pikube lab pi NODE --throttled … --temp …`) and whose disk
//! is a small file system of its own (`lab up --disk-size`), `status` calls an under-voltage
//! Pi, a hot Pi and a nearly full disk degraded (exit 1) with the reason, and the healthy
//! cluster healthy (exit 0); `--json` parses. Real systemd, sshd, lab network; k3s is the
//! labelled STAND-IN.

mod common;

use std::process::Command;

use common::{standin_artifacts, stdout, text, Lab, BIN};

fn status(lab: &Lab) -> (Option<i32>, String) {
    let out = lab.pikube(&["status", "-f", lab.cluster_file().to_str().unwrap()]);
    (out.status.code(), format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr)))
}

fn status_json(lab: &Lab) -> (Option<i32>, serde_json::Value) {
    let out = lab.pikube(&["status", "--json", "-f", lab.cluster_file().to_str().unwrap()]);
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status --json: {e}\n{}", text(&out)));
    (out.status.code(), doc)
}

fn host<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    doc["hosts"].as_array().unwrap().iter().find(|h| h["name"] == name).expect("host in status --json")
}

/// `pikube lab pi` (run on the host, as a user of the lab would).
fn pi(lab: &Lab, node: &str, args: &[&str]) {
    let out = Command::new(BIN).args(["lab", "pi", "--name", &lab.name, node]).args(args).output().unwrap();
    assert!(out.status.success(), "lab pi failed:\n{}", text(&out));
}

fn assert_healthy(lab: &Lab) {
    let (code, said) = status(lab);
    assert_eq!(code, Some(0), "a healthy cluster exits 0:\n{said}");
    assert!(!said.contains("degraded"), "{said}");
    let (code, doc) = status_json(lab);
    assert_eq!((code, &doc["healthy"]), (Some(0), &true.into()), "{doc:#}");
    for n in ["node1", "node2"] {
        assert_eq!(host(&doc, n)["verdict"], "healthy", "{doc:#}");
    }
}

/// `status` exits 1 and names `node` degraded with `why`; the other node stays healthy.
fn assert_degraded(lab: &Lab, node: &str, why: &str) {
    let (code, said) = status(lab);
    assert_eq!(code, Some(1), "a degraded host makes status exit 1:\n{said}");
    let line = said.lines().find(|l| l.starts_with(&format!("{node}: degraded: "))).unwrap_or_else(|| panic!("{said}"));
    assert!(line.contains(why), "want {why:?} in {line:?}\n{said}");
    let (code, doc) = status_json(lab);
    assert_eq!((code, &doc["healthy"]), (Some(1), &false.into()), "{doc:#}");
    let other = if node == "node1" { "node2" } else { "node1" };
    assert_eq!((&host(&doc, node)["verdict"], &host(&doc, other)["verdict"]), (&"degraded".into(), &"healthy".into()));
    assert!(host(&doc, node)["reasons"].as_array().unwrap().iter().any(|r| r.as_str().unwrap().contains(why)));
}

#[test]
fn status_reports_under_voltage_heat_and_a_full_disk() {
    require_lab!();
    let artifacts = standin_artifacts();
    let lab = Lab::up(
        "hl-pi",
        54,
        &[
            "--nodes",
            "2",
            "--servers",
            "1",
            "--pi",
            "bookworm",
            "--disk-size",
            "2048",
            "--k3s-artifacts",
            artifacts.to_str().unwrap(),
        ],
    );
    let file = lab.cluster_file();
    let out = lab.pikube(&["up", "-f", file.to_str().unwrap(), "--ready-timeout", "90"]);
    assert!(out.status.success(), "pikube up failed:\n{}", text(&out));
    assert_healthy(&lab);
    let (_, doc) = status_json(&lab);
    let h = &host(&doc, "node2")["health"];
    assert_eq!((&h["throttled"], &h["soc_temp_c"]), (&0.into(), &48.3.into()), "{h:#}");
    let root = &h["filesystems"][0];
    assert_eq!(root["mount"], "/");
    assert!(root["size_bytes"].as_u64().unwrap() < 2200 << 20, "the node's root is its own 2 GiB disk: {root}");

    // A weak power supply: under-voltage and throttling, now and since boot.
    pi(&lab, "node2", &["--throttled", "0x50005"]);
    let seen = lab.sh("node2", "cat /sys/devices/platform/soc/soc:firmware/get_throttled");
    assert_eq!(seen, "50005", "the node reads the firmware file at its real path");
    assert_degraded(&lab, "node2", "under-voltage now, throttled now, under-voltage since boot, throttled since boot");

    // A hot SoC.
    pi(&lab, "node2", &["--throttled", "0", "--temp", "85"]);
    assert_eq!(lab.sh("node2", "cat /sys/class/thermal/thermal_zone0/temp"), "85000");
    assert_degraded(&lab, "node2", "SoC 85.0 °C");
    pi(&lab, "node2", &["--temp", "52.5"]);
    assert_healthy(&lab);

    // A nearly full SD card: fill the server's root file system to 100 MiB free.
    lab.sh(
        "node1",
        "avail=$(df -P -B1 / | awk 'NR==2 {print $4}'); fallocate -l $((avail - 100*1024*1024)) /var/tmp/fill",
    );
    assert_degraded(&lab, "node1", "/ nearly full");
    lab.sh("node1", "rm /var/tmp/fill");
    assert_healthy(&lab);
}
