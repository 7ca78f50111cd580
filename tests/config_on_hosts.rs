//! What the cluster file puts into files on real lab hosts: an apt proxy with credentials is
//! written 0600 and never printed, and a value that would break out of its line is refused
//! before anything connects.
//! Needs root and systemd-nspawn; otherwise the test prints `SKIP:` and returns.

mod common;

use common::{text, Lab};

const PROXY_FILE: &str = "/etc/apt/apt.conf.d/80pikube-proxy";

#[test]
fn apt_proxy_credentials_are_0600_and_injected_lines_are_refused() {
    require_lab!();
    let lab = Lab::up("tcfg-apt", 65, &["--nodes", "1"]);
    let plain = std::fs::read_to_string(lab.cluster_file()).expect("read cluster file");
    assert!(plain.contains("  trusted: true\n"), "the lab's cluster file has a packages section:\n{plain}");
    // First run without a proxy: the mirror is set up (its apt-get update must not go through
    // the proxy below, which does not exist).
    let out = lab.pikube(&["up", "-f", lab.cluster_file().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));

    let with_proxy = |proxy: &str| {
        let file = lab.dir().join("proxy.yaml");
        std::fs::write(&file, plain.replace("  trusted: true\n", &format!("  trusted: true\n  proxy: {proxy}\n")))
            .expect("write");
        lab.pikube(&["up", "-f", file.to_str().unwrap()])
    };
    let out = with_proxy("http://pikube:s3cret-pw@10.77.65.1:3142");
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("s3cret-pw"), "the proxy password was printed:\n{}", text(&out));
    assert_eq!(lab.sh("node1", &format!("stat -c '%a %U' {PROXY_FILE}")), "600 root");
    let want = "Acquire::http::Proxy \"http://pikube:s3cret-pw@10.77.65.1:3142\";\n";
    assert_eq!(bytes_on(&lab, PROXY_FILE), hex::encode(want), "byte for byte");

    // A quote and newline in the URL would add an apt setting; it is refused, nothing changes.
    let out = with_proxy(r#""http://10.77.65.1:3142\";\nAcquire::http::Pipeline-Depth \"0""#);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("proxy.yaml:") && text(&out).contains("contains '\"'"), "{}", text(&out));
    assert_eq!(bytes_on(&lab, PROXY_FILE), hex::encode(want), "the refused run changed the file");
}

/// The file's bytes on the node as hex, so the comparison is byte for byte.
fn bytes_on(lab: &Lab, path: &str) -> String {
    lab.sh("node1", &format!("od -An -tx1 -v {path} | tr -d ' \\n'"))
}
