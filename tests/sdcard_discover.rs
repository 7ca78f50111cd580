//! `pikube discover` inside network namespaces made by the test: fake Pis (veth MACs with
//! Raspberry Pi OUIs) running a real sshd, one answering mDNS reverse queries. No packet
//! leaves these namespaces.

mod sdcard_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sdcard_support::*;

/// The namespaces and the daemons started in them; all removed when the test ends.
struct Net {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Net {
    fn ns(&self, n: &str) -> String {
        format!("{}{n}", self.prefix)
    }

    fn ip(&self, args: &[&str]) {
        sh(Command::new("ip").args(args));
    }

    fn add_ns(&mut self, n: &str) -> String {
        let name = self.ns(n);
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        self.ip(&["netns", "add", &name]);
        self.namespaces.push(name.clone());
        self.ip(&["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// `ip netns exec NS CMD…` as a background daemon.
    fn spawn_in(&mut self, ns: &str, cmd: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start daemon in netns");
        self.children.push(child);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

const MDNS_RESPONDER: &str = r#"
import socket, struct, sys
ip, name = sys.argv[1], sys.argv[2]
rev = ".".join(reversed(ip.split("."))) + ".in-addr.arpa"
def enc(n):
    return b"".join(bytes([len(p)]) + p.encode() for p in n.split(".")) + b"\0"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5353))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton("224.0.0.251") + socket.inet_aton(ip))
while True:
    q, src = s.recvfrom(1500)
    if len(q) < 12 or q[12:12 + len(enc(rev))].lower() != enc(rev).lower():
        continue
    question = q[12:12 + len(enc(rev)) + 4]
    rdata = enc(name)
    answer = b"\xc0\x0c" + struct.pack(">HHIH", 12, 1, 120, len(rdata)) + rdata
    s.sendto(q[:2] + b"\x84\x00\x00\x01\x00\x01\x00\x00\x00\x00" + question + answer, src)
"#;

fn wait_listening(ns: &str, port: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let out = Command::new("ip").args(["netns", "exec", ns, "ss", "-lntu"]).output().unwrap();
        if String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} ")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listening on {port} in {ns}");
}

fn discover_in(ns: &str, args: &[&str]) -> std::process::Output {
    Command::new("ip").args(["netns", "exec", ns, BIN, "discover"]).args(args).stdin(Stdio::null()).output().unwrap()
}

const CLUSTER_HOSTS: &str = concat!(
    "  - name: rasp01   # top shelf\n",
    "    mac: b8:27:eb:00:00:01\n",
    "    role: server\n",
    "  - name: rasp02\n",
    "    mac: DC-A6-32-00-00-02\n",
    "    role: agent\n",
    "    labels:\n",
    "      zone: a\n",
    "  # rasp03 keeps its address: discover only fills in missing ones\n",
    "  - name: rasp03\n",
    "    address: 10.79.0.99\n",
    "    mac: 52:54:00:00:00:99\n",
    "    role: agent\n",
    "  - name: rasp04\n",
    "    role: agent\n",
);

/// A bridge in a namespace of its own (`NET.1/24`), the sweeping side of the test LAN.
fn lan(tag: &str, net24: &str) -> (Net, String) {
    let mut net =
        Net { prefix: format!("{tag}{}", std::process::id() % 100_000), namespaces: Vec::new(), children: Vec::new() };
    let main = net.add_ns("m");
    net.ip(&["-n", &main, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"]);
    net.ip(&["-n", &main, "addr", "add", &format!("{net24}.1/24"), "dev", "br0"]);
    net.ip(&["-n", &main, "link", "set", "br0", "up"]);
    // Multicast (the mDNS query) goes out on the test bridge only.
    net.ip(&["-n", &main, "route", "add", "224.0.0.0/4", "dev", "br0"]);
    std::fs::create_dir_all("/run/sshd").unwrap();
    (net, main)
}

/// A fake Pi `NET.1i` with this MAC in a namespace on the bridge; a real sshd when `sshd`, and
/// an mDNS responder giving `mdns` as its name when set.
fn add_pi(net: &mut Net, dir: &Path, net24: &str, (i, mac, sshd, mdns): (u8, &str, bool, Option<&str>)) {
    let main = net.ns("m");
    let host_key = dir.join("host_key");
    if !host_key.exists() {
        sh(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", ""]).arg("-f").arg(&host_key));
    }
    let ns = net.add_ns(&format!("p{i}"));
    let ip = format!("{net24}.1{i}");
    net.ip(&["-n", &main, "link", "add", &format!("vb{i}"), "type", "veth", "peer", "name", "eth0", "netns", &ns]);
    net.ip(&["-n", &main, "link", "set", &format!("vb{i}"), "master", "br0", "up"]);
    net.ip(&["-n", &ns, "link", "set", "eth0", "address", mac]);
    net.ip(&["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    net.ip(&["-n", &ns, "link", "set", "eth0", "up"]);
    if sshd {
        let cfg = dir.join(format!("sshd-{i}.conf"));
        std::fs::write(
            &cfg,
            format!(
                "Port 22\nListenAddress {ip}\nHostKey {}\nPidFile {}\nUsePAM no\nPasswordAuthentication no\n",
                host_key.display(),
                dir.join(format!("sshd-{i}.pid")).display()
            ),
        )
        .unwrap();
        net.spawn_in(&ns, &["/usr/sbin/sshd", "-D", "-e", "-f", cfg.to_str().unwrap()]);
        wait_listening(&ns, "22");
    }
    if let Some(name) = mdns {
        net.spawn_in(&ns, &["python3", "-c", MDNS_RESPONDER, &ip, &format!("{name}.local")]);
        wait_listening(&ns, "5353");
    }
}

#[test]
fn discovers_pis_in_namespaces_and_writes_addresses() {
    require!(true, "ip", "ss", "sshd", "ssh-keygen", "python3");
    let dir = tempdir("discover");
    let (mut net, main) = lan("pkd", "10.79.0");
    // (index, MAC, sshd?, mDNS name)
    let pis = [
        (1, "b8:27:eb:00:00:01", true, None),
        (2, "dc:a6:32:00:00:02", true, None),
        (3, "52:54:00:00:00:03", true, Some("rasp04")),
        (4, "e4:5f:01:00:00:04", false, None),
    ];
    for pi in pis {
        add_pi(&mut net, &dir, "10.79.0", pi);
    }

    let cluster = cluster(&dir, CLUSTER_HOSTS);
    let original = std::fs::read_to_string(&cluster).unwrap();
    let started = Instant::now();
    let out = discover_in(
        &main,
        &["--subnet", "10.79.0.0/24", "-f", cluster.to_str().unwrap(), "--timeout-ms", "400", "--json", "--write"],
    );
    assert!(out.status.success(), "discover failed:\n{}", text(&out));
    // 254 addresses, 256 in flight, 400 ms connect + 400 ms banner + 400 ms mDNS.
    assert!(started.elapsed() < Duration::from_secs(10), "sweep took {:?}", started.elapsed());
    let stdout = String::from_utf8_lossy(&out.stdout);
    // With --json, stdout is exactly one JSON document (notes go to stderr).
    let found: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is valid JSON");
    let notes = String::from_utf8_lossy(&out.stderr);
    assert!(notes.contains("rasp01 address: 10.79.0.11"), "{notes}");
    let found = found.as_array().unwrap();
    let addrs: Vec<&str> = found.iter().map(|f| f["address"].as_str().unwrap()).collect();
    assert_eq!(addrs, ["10.79.0.11", "10.79.0.12", "10.79.0.13"], "{stdout}");
    let expect = [
        ("b8:27:eb:00:00:01", Some("Raspberry Pi"), "rasp01", "mac"),
        ("dc:a6:32:00:00:02", Some("Raspberry Pi"), "rasp02", "mac"),
        ("52:54:00:00:00:03", None, "rasp04", "hostname"),
    ];
    for (f, (mac, vendor, host, how)) in found.iter().zip(expect) {
        assert_eq!(f["mac"], mac, "{f}");
        assert_eq!(f["vendor"].as_str(), vendor, "{f}");
        assert_eq!(f["host"], host, "{f}");
        assert_eq!(f["matched_by"], how, "{f}");
        assert!(f["banner"].as_str().unwrap_or("").starts_with("SSH-2.0-OpenSSH"), "{f}");
    }
    assert_eq!(found[2]["hostname"], "rasp04");

    // --write: exactly three `address:` lines added, everything else byte for byte.
    let edited = std::fs::read_to_string(&cluster).unwrap();
    let added: Vec<&str> = edited.lines().filter(|l| !original.lines().any(|o| o == *l)).collect();
    assert_eq!(added, ["    address: 10.79.0.11", "    address: 10.79.0.12", "    address: 10.79.0.13"], "{edited}");
    let without: Vec<&str> = edited.lines().filter(|l| !added.contains(l)).collect();
    assert_eq!(without, original.lines().collect::<Vec<_>>());
    assert!(edited.contains("  - name: rasp01   # top shelf\n    address: 10.79.0.11\n"), "{edited}");
    assert!(edited.contains("  - name: rasp04\n    address: 10.79.0.13\n"), "{edited}");
    assert!(edited.contains("address: 10.79.0.99"), "rasp03's address must stay");
    // The strict loader (every host needs an address) now accepts the file.
    assert!(pikube_parses(&cluster), "edited cluster file no longer loads");

    // Table output; a second --write has nothing left to fill in.
    let out = discover_in(
        &main,
        &["--subnet", "10.79.0.0/24", "-f", cluster.to_str().unwrap(), "--timeout-ms", "300", "--write"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("ADDRESS")
            && table.contains("Raspberry Pi")
            && table.contains("rasp02 (by mac)")
            // rasp04 was found by its mDNS name; now its written address identifies it.
            && table.contains("rasp04 (by address)"),
        "{table}"
    );
    assert!(table.contains("no missing addresses"), "{table}");
    assert_eq!(std::fs::read_to_string(&cluster).unwrap(), edited);

    // Oversized sweeps are refused before any packet is sent.
    let out = discover_in(&main, &["--subnet", "10.0.0.0/8"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most a /16"), "{}", text(&out));

    // No --subnet: derived from the namespace's only global address, and said before scanning.
    let out = discover_in(&main, &["--timeout-ms", "300", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let notes = String::from_utf8_lossy(&out.stderr);
    assert!(notes.contains("scanning 10.79.0.0/24 (from br0)"), "{notes}");
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(found.as_array().map(Vec::len), Some(3), "{found}");
    drop(net);
}

/// Loads the cluster file the way `image prepare` does (every host needs an address).
fn pikube_parses(cluster: &Path) -> bool {
    let out = Command::new(BIN)
        .args([
            "image",
            "prepare",
            "--image",
            "/nonexistent.img",
            "--out",
            "/nonexistent.out",
            "--node",
            "rasp01",
            "-f",
        ])
        .arg(cluster)
        .output()
        .unwrap();
    // Past loading, prepare fails on the missing image: that proves the file loaded.
    let err = String::from_utf8_lossy(&out.stderr);
    err.contains("/nonexistent.img")
}

/// (last digit of `NET.1x`, the host it matched and how, or else a part of its conflict note)
type Expect<'a> = (u8, Option<(&'a str, &'a str)>, &'a str);

/// Checks discover's JSON rows against the expected matches and conflicts.
fn assert_rows(found: &serde_json::Value, net24: &str, expect: &[Expect]) {
    let found = found.as_array().expect("a list");
    for &(last, matched, conflict) in expect {
        let ip = format!("{net24}.1{last}");
        let f =
            found.iter().find(|f| f["address"] == ip.as_str()).unwrap_or_else(|| panic!("{ip} not found: {found:?}"));
        match matched {
            Some((host, how)) => {
                assert_eq!((&f["host"], &f["matched_by"]), (&host.into(), &how.into()), "{f}");
                assert!(f["conflict"].is_null(), "{f}");
            }
            None => {
                assert!(f["host"].is_null(), "{f}");
                let note = f["conflict"].as_str().unwrap_or("");
                assert!(note.contains(conflict), "{f}");
            }
        }
    }
}

#[test]
fn ambiguous_and_spoofed_mdns_answers_are_not_matched() {
    require!(true, "ip", "ss", "sshd", "ssh-keygen", "python3");
    let dir = tempdir("discover-spoof");
    let (mut net, main) = lan("pks", "10.85.0");
    let pis = [
        // Claims rasp01's name, from a lower address than the real rasp01 (known by MAC).
        (1, "52:54:00:00:00:11", true, Some("rasp01")),
        (2, "b8:27:eb:00:00:01", true, None),
        // Two machines both calling themselves rasp04 (no mac: in the file).
        (3, "52:54:00:00:00:13", true, Some("rasp04")),
        (4, "52:54:00:00:00:14", true, Some("rasp04")),
        // Calls itself rasp03, whose mac: in the file is another one.
        (5, "52:54:00:00:00:15", true, Some("rasp03")),
        // Calls itself rasp05, whose address in the file is another machine's.
        (6, "52:54:00:00:00:16", true, Some("rasp05")),
        (7, "52:54:00:00:00:17", true, None),
    ];
    for pi in pis {
        add_pi(&mut net, &dir, "10.85.0", pi);
    }
    let hosts = concat!(
        "  - name: rasp01\n",
        "    mac: b8:27:eb:00:00:01\n",
        "    role: server\n",
        "  - name: rasp03\n",
        "    mac: dc:a6:32:00:00:03\n",
        "    role: agent\n",
        "  - name: rasp04\n",
        "    role: agent\n",
        "  - name: rasp05\n",
        "    address: 10.85.0.17\n",
        "    role: agent\n",
    );
    let cluster = cluster(&dir, hosts);
    let original = std::fs::read_to_string(&cluster).unwrap();
    let run = |write: bool| {
        let mut args = vec!["--subnet", "10.85.0.0/24", "--timeout-ms", "400", "--json"];
        args.extend(["-f", cluster.to_str().unwrap()]);
        if write {
            args.push("--write");
        }
        discover_in(&main, &args)
    };

    let out = run(false);
    assert!(out.status.success(), "{}", text(&out));
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let expect: [Expect; 7] = [
        (1, None, "rasp01's mac is b8:27:eb:00:00:01, not 52:54:00:00:00:11"),
        (2, Some(("rasp01", "mac")), ""),
        (3, None, "rasp04 is ambiguous: 10.85.0.13, 10.85.0.14 all match it by hostname"),
        (4, None, "rasp04 is ambiguous: 10.85.0.13, 10.85.0.14 all match it by hostname"),
        (5, None, "rasp03's mac is dc:a6:32:00:00:03, not 52:54:00:00:00:15"),
        (6, None, "answers as rasp05 by hostname but a machine matches rasp05 by address"),
        (7, Some(("rasp05", "address")), ""),
    ];
    assert_rows(&found, "10.85.0", &expect);
    let notes = String::from_utf8_lossy(&out.stderr);
    assert!(notes.contains("10.85.0.11: answers as rasp01"), "{notes}");

    // --write picks no address among equal candidates: nothing is written at all.
    let out = run(true);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).replace('│', " ");
    let err = err.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(err.contains("not writing") && err.contains("rasp04 is ambiguous: 10.85.0.13, 10.85.0.14"), "{err}");
    assert!(err.contains("give rasp04 its `mac:`"), "{err}");
    assert_eq!(std::fs::read_to_string(&cluster).unwrap(), original);

    // With rasp04's MAC in the file, the MAC decides; rasp01 gets the real machine's address.
    let with_mac = original.replace("  - name: rasp04\n", "  - name: rasp04\n    mac: 52:54:00:00:00:13\n");
    std::fs::write(&cluster, &with_mac).unwrap();
    let out = run(true);
    assert!(out.status.success(), "{}", text(&out));
    let edited = std::fs::read_to_string(&cluster).unwrap();
    let added: Vec<&str> = edited.lines().filter(|l| !with_mac.lines().any(|o| o == *l)).collect();
    assert_eq!(added, ["    address: 10.85.0.12", "    address: 10.85.0.13"], "{edited}");
    assert!(edited.contains("  - name: rasp01\n    address: 10.85.0.12\n"), "{edited}");
    assert!(edited.contains("  - name: rasp04\n    address: 10.85.0.13\n"), "{edited}");
    drop(net);
}
