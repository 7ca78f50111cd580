//! Removing dead nodes (issue 11): a powered-off agent and a powered-off server of an HA lab
//! (3 servers behind HAProxy, 1 agent) are removed with `down --limit`; the server's etcd
//! member goes with it, HAProxy stops sending to it, the rest stays healthy, and a removal
//! that would leave etcd without quorum is refused. Real systemd, sshd, haproxy and lab
//! network; k3s is the labelled STAND-IN (it removes a deleted server's member as k3s's etcd
//! member controller does, and refuses what etcd refuses).

mod common;

use std::process::Command;

use common::{standin_artifacts, stdout, text, Lab};

/// The local server's etcd member list (k3s's `/db/info`, as joining servers read it).
const MEMBERS: &str = r#"t=$(cat /var/lib/rancher/k3s/server/token) && printf 'user = "server:%s"\n' "${t##*:}" | curl -sk --max-time 5 -K - https://127.0.0.1:6443/db/info"#;

/// Peer-URL hosts of the etcd members, as node1 reports them.
fn member_hosts(lab: &Lab) -> Vec<String> {
    let json: serde_json::Value = serde_json::from_str(&lab.sh("node1", MEMBERS)).expect("/db/info is JSON");
    let mut hosts: Vec<String> = json["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["peerURLs"][0].as_str().unwrap().trim_start_matches("https://").split(':').next().unwrap().into())
        .collect();
    hosts.sort();
    hosts
}

/// NAME STATUS of every Node, as node1's API reports them.
fn nodes(lab: &Lab) -> Vec<String> {
    let out = lab.sh("node1", "k3s kubectl get nodes --no-headers");
    let mut v: Vec<String> = out.lines().map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ")).collect();
    v.sort();
    v
}

/// What the user does after removing a dead host: takes it out of the cluster file.
fn forget(lab: &Lab, node: &str) {
    let file = lab.cluster_file();
    let yaml = std::fs::read_to_string(&file).unwrap();
    let entry = yaml.find(&format!("  - name: {node}\n")).expect("host entry");
    let end = yaml[entry + 4..].find("  - name: ").map_or(yaml.len(), |e| entry + 4 + e);
    std::fs::write(&file, format!("{}{}", &yaml[..entry], &yaml[end..])).unwrap();
}

fn down(lab: &Lab, node: &str) -> std::process::Output {
    lab.pikube(&["down", "-f", lab.cluster_file().to_str().unwrap(), "--limit", node, "--yes", "--plain"])
}

#[test]
fn dead_agent_and_dead_server_are_removed_and_quorum_is_kept() {
    require_lab!();
    let artifacts = standin_artifacts();
    let lab = Lab::up(
        "dead-ha",
        53,
        &["--nodes", "5", "--servers", "3", "--loadbalancers", "1", "--k3s-artifacts", artifacts.to_str().unwrap()],
    );
    let file = lab.cluster_file();
    let out = lab.pikube(&["up", "-f", file.to_str().unwrap(), "--ready-timeout", "90"]);
    assert!(out.status.success(), "pikube up failed:\n{}", text(&out));
    assert_eq!(member_hosts(&lab), ["10.77.53.11", "10.77.53.12", "10.77.53.13"]);

    // A dead agent: deleted from the API, nothing else changes.
    lab.lab("stop", "node5");
    let out = down(&lab, "node5");
    assert!(out.status.success(), "removing the dead agent failed:\n{}", text(&out));
    let said = stdout(&out);
    assert!(said.contains("node5 does not answer SSH: deleted from the API"), "{said}");
    assert!(said.contains("The host itself was NOT reset"), "{said}");
    assert!(!nodes(&lab).iter().any(|n| n.starts_with("node5 ")), "{:?}", nodes(&lab));
    forget(&lab, "node5");

    // A dead server: its Node and its etcd member go, HAProxy forgets it, the rest is healthy.
    lab.lab("stop", "node3");
    let out = down(&lab, "node3");
    assert!(out.status.success(), "removing the dead server failed:\n{}", text(&out));
    let said = stdout(&out);
    assert!(said.contains("node3 does not answer SSH: deleted from the API and etcd member 10.77.53.13-"), "{said}");
    assert!(said.contains("take node3 out of"), "{said}");
    assert_eq!(member_hosts(&lab), ["10.77.53.11", "10.77.53.12"], "node3's member is gone");
    assert_eq!(nodes(&lab), ["node1 Ready", "node2 Ready"]);
    let haproxy = lab.sh("node4", "grep ' server ' /etc/haproxy/haproxy.cfg");
    assert!(haproxy.contains("node1") && haproxy.contains("node2") && !haproxy.contains("node3"), "{haproxy}");
    for _ in 0..4 {
        assert_eq!(lab.sh("node1", "curl -sk --max-time 5 https://10.77.53.14:6443/ping"), "pong", "API via HAProxy");
    }
    // The user gives node3 a new card (`lab wipe`: base image, new host key) and runs `up`:
    // it joins as a fresh server and member, and the whole cluster is healthy again.
    lab.lab("wipe", "node3");
    let known_hosts = lab.dir().join("known_hosts");
    let keygen = Command::new("ssh-keygen").args(["-R", "10.77.53.13", "-f"]).arg(&known_hosts).output().unwrap();
    assert!(keygen.status.success(), "{}", text(&keygen));
    let scanned = stdout(&lab.exec("ssh-keyscan", &["-t", "ed25519", "10.77.53.13"]));
    let mut trusted = std::fs::read_to_string(&known_hosts).unwrap();
    trusted.push_str(&format!("{}\n", scanned.trim()));
    std::fs::write(&known_hosts, trusted).unwrap();
    let out = lab.pikube(&["up", "-f", file.to_str().unwrap(), "--ready-timeout", "90"]);
    assert!(out.status.success(), "bringing node3 back on a new card failed:\n{}", text(&out));
    assert_eq!(member_hosts(&lab), ["10.77.53.11", "10.77.53.12", "10.77.53.13"]);
    let out = lab.pikube(&["status", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "the cluster must be healthy again:\n{}", text(&out));

    // Two of three servers dead: etcd has no quorum, so the removal is refused by pikube (and
    // by k3s itself when asked directly), and nothing is deleted.
    lab.lab("stop", "node2");
    lab.lab("stop", "node3");
    let out = down(&lab, "node2");
    assert_eq!(out.status.code(), Some(1), "a quorum-losing removal must fail:\n{}", text(&out));
    let said = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("refusing to remove node2: etcd has 3 members and only 1 answer (node1)"), "{said}");
    assert_eq!(member_hosts(&lab), ["10.77.53.11", "10.77.53.12", "10.77.53.13"]);
    assert!(nodes(&lab).iter().any(|n| n.starts_with("node2 ")), "node2 must still be there");
    let (ok, said) = lab.ssh("node1", "k3s kubectl delete node node2 2>&1");
    assert!(!ok, "the stand-in must refuse a member removal without quorum, as etcd does: {said}");
    assert!(said.contains("etcdserver: request timed out"), "{said}");
}
