//! Replacing k3s servers of an HA lab (3 servers behind HAProxy, 1 agent): the first server
//! brought back after `down --limit` joins the existing cluster instead of starting a second
//! one, a server given a new SD card (`lab wipe`) rejoins under its old name (its node password handled),
//! `status` says so when two servers do not agree about the cluster, and a wiped first server
//! whose peers are off does not start a second cluster but waits for them. Real systemd, sshd,
//! haproxy and lab network; k3s is the labelled STAND-IN (it checks node passwords as k3s).

mod common;

use std::collections::BTreeMap;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{real_kubectl, section, standin_artifacts, stdout, text, wait_for, Lab};

const SERVERS: [&str; 3] = ["node1", "node2", "node3"];
const NODES: [&str; 4] = ["node1", "node2", "node3", "node5"];

fn up(lab: &Lab) -> Output {
    let file = lab.cluster_file();
    let started = Instant::now();
    let out = lab.pikube(&["up", "-f", file.to_str().unwrap(), "--ready-timeout", "90"]);
    eprintln!("pikube up took {:.1}s", started.elapsed().as_secs_f64());
    out
}

fn up_ok(lab: &Lab) -> String {
    let out = up(lab);
    assert!(out.status.success(), "pikube up failed:\n{}", text(&out));
    format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr))
}

fn status(lab: &Lab) -> Output {
    lab.pikube(&["status", "-f", lab.cluster_file().to_str().unwrap()])
}

/// sha256 of each server's cluster CA.
fn ca_hashes(lab: &Lab) -> BTreeMap<String, String> {
    SERVERS
        .iter()
        .map(|s| (s.to_string(), lab.sh(s, "sha256sum /var/lib/rancher/k3s/server/tls/server-ca.crt | cut -d' ' -f1")))
        .collect()
}

/// NAME → STATUS through the endpoint (real kubectl when installed, else node2's own API).
fn nodes(lab: &Lab) -> BTreeMap<String, String> {
    let text = match real_kubectl() {
        Some(k) => stdout(&lab.kubectl(&k, &["get", "nodes", "--no-headers"])),
        None => lab.sh("node2", "k3s kubectl get nodes --no-headers"),
    };
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect()
}

/// One cluster: every server has the same CA, all nodes Ready through the endpoint, `status` 0.
fn assert_one_cluster(lab: &Lab, ca: &str) {
    let hashes = ca_hashes(lab);
    assert!(hashes.values().all(|h| h == ca), "servers disagree about the CA: {hashes:?} (want {ca})");
    let nodes = nodes(lab);
    assert!(NODES.iter().all(|n| nodes.get(*n).map(String::as_str) == Some("Ready")), "{nodes:?}");
    let out = status(lab);
    assert!(out.status.success(), "status must say all is well:\n{}", text(&out));
}

#[test]
fn replaced_and_wiped_servers_rejoin_the_one_cluster() {
    require_lab!();
    let artifacts = standin_artifacts();
    let lab = Lab::up(
        "k3s-repl-lb",
        50,
        &["--nodes", "5", "--servers", "3", "--loadbalancers", "1", "--k3s-artifacts", artifacts.to_str().unwrap()],
    );
    up_ok(&lab);
    let ca = ca_hashes(&lab)["node1"].clone();
    assert_one_cluster(&lab, &ca);

    // The first server's card dies: take it out, then bring it back with `up`. It must join
    // the cluster the others hold, not start a new one behind the same load balancer.
    let file = lab.cluster_file();
    let out = lab.pikube(&["down", "-f", file.to_str().unwrap(), "--limit", "node1", "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    up_ok(&lab);
    let config = lab.sh("node1", "cat /etc/rancher/k3s/config.yaml");
    assert!(
        config.contains("server: \"https://10.77.50.14:6443\""),
        "node1 must join through the load balancer:\n{config}"
    );
    assert!(!config.contains("cluster-init"), "node1 must not initialise a second cluster:\n{config}");
    assert_one_cluster(&lab, &ca);
    let out = up(&lab);
    assert!(stdout(&out).contains("Up: no changes"), "a second up changes nothing:\n{}", text(&out));

    // node2 gets a new SD card (`lab wipe`: the base image, a new SSH host key) while the
    // cluster still knows its name. First the user's known_hosts: strict checking refuses the
    // new key until the user trusts the new one.
    lab.lab("wipe", "node2");
    let out = up(&lab);
    assert!(!out.status.success(), "a changed host key must be refused:\n{}", text(&out));
    assert!(stdout(&out).contains("node2 (10.77.50.12): FAILED"), "{}", text(&out));
    lab.trust_new_host_key("node2", "10.77.50.12");

    // up prepares the new card again and removes the stale Node and its node-password secret
    // (else k3s refuses node2, its password being new), and node2 rejoins the same cluster.
    let log = up_ok(&lab);
    assert!(
        log.contains("node2 has no /etc/rancher/node/password"),
        "up must say why it deletes node2's old entry:\n{log}"
    );
    assert!(log.contains("secret/node2.node-password.k3s"), "{log}");
    assert!(lab.sh("node2", "cat /etc/rancher/k3s/config.yaml").contains("server: \"https://10.77.50.14:6443\""));
    assert_one_cluster(&lab, &ca);

    // A split brain made by hand: node3 starts a cluster of its own. status says so, exit 1.
    // Its full join token pins the old cluster's CA, which k3s refuses for a new cluster
    // ("token CA hash does not match"), so the hand-made cluster gets the bare secret.
    lab.sh(
        "node3",
        "systemctl stop k3s && rm -rf /var/lib/rancher/k3s && sed -i '/^server:/d' /etc/rancher/k3s/config.yaml \
         && sed -i -E 's/^token: \"K10[^\"]*::server:/token: \"/' /etc/rancher/k3s/config.yaml \
         && grep -q '^token: \"[0-9a-f]*\"$' /etc/rancher/k3s/config.yaml \
         && echo 'cluster-init: true' >> /etc/rancher/k3s/config.yaml && systemctl start k3s",
    );
    let out = status(&lab);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stdout(&out).contains("servers disagree about the cluster"), "{}", text(&out));
}

/// With the VIP on the servers, a replaced first server could hold the endpoint address
/// itself: it joins the second server directly instead, and the VIP keeps answering.
#[test]
fn replaced_first_server_on_a_vip_joins_another_server_directly() {
    require_lab!();
    let artifacts = standin_artifacts();
    let lab = Lab::up(
        "k3s-repl-vip",
        51,
        &["--nodes", "3", "--servers", "3", "--vip", "--k3s-artifacts", artifacts.to_str().unwrap()],
    );
    up_ok(&lab);
    let ca = ca_hashes(&lab)["node1"].clone();
    let file = lab.cluster_file();
    let out = lab.pikube(&["down", "-f", file.to_str().unwrap(), "--limit", "node1", "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    up_ok(&lab);
    let config = lab.sh("node1", "cat /etc/rancher/k3s/config.yaml");
    assert!(config.contains("server: \"https://10.77.51.12:6443\""), "node1 must join node2 directly:\n{config}");
    assert!(!config.contains("cluster-init"), "{config}");
    let hashes = ca_hashes(&lab);
    assert!(hashes.values().all(|h| *h == ca), "{hashes:?}");
    let nodes = lab.sh("node2", "k3s kubectl get nodes --no-headers");
    for n in SERVERS {
        assert!(nodes.lines().any(|l| l.split_whitespace().take(2).eq([n, "Ready"])), "{n} not Ready:\n{nodes}");
    }
    let out = status(&lab);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("endpoint: https://10.77.51.10:6443"), "{}", text(&out));
    let out = up(&lab);
    assert!(stdout(&out).contains("Up: no changes"), "{}", text(&out));
    a_wiped_first_server_waits_for_the_others(&lab, &ca);
}

/// node1's card dies while node2 and node3 are off: `up` must not initialise a second cluster
/// on the blank node1 (a new CA behind the same VIP). It says why and how to go on; once the
/// others are back, `up` joins node1 into the one cluster.
fn a_wiped_first_server_waits_for_the_others(lab: &Lab, ca: &str) {
    lab.lab("stop", "node2");
    lab.lab("stop", "node3");
    lab.lab("wipe", "node1");
    lab.trust_new_host_key("node1", "10.77.51.11");
    let out = up(lab);
    assert!(!out.status.success(), "up must refuse to start a new cluster:\n{}", text(&out));
    let report = stdout(&out);
    let node1 = section(&report, "node1");
    assert!(node1.starts_with("node1 (10.77.51.11): FAILED"), "{}", text(&out));
    for want in [
        "refusing to initialise a new cluster on node1: it holds no cluster data",
        "node2 did not answer, so it may hold the cluster (cannot reach node2",
        "node3 did not answer",
        "this machine shows the cluster was made before: build/k3s-repl-vip-config.yml, .pikube/k3s-repl-vip/token",
        "a new CA and a second cluster behind the same endpoint",
        "hint: bring node2, node3 back and run `pikube up` again",
        "`pikube up --new-cluster`",
    ] {
        assert!(node1.contains(want), "{want:?} missing:\n{}", text(&out));
    }
    assert!(!lab.ssh("node1", "test -e /var/lib/rancher/k3s/server/tls/server-ca.crt").0, "node1 made a CA");
    assert!(!lab.ssh("node1", "systemctl is-active k3s").0, "node1 runs k3s");

    // The user brings node2 and node3 back; they hold the cluster as it was, and up joins node1.
    lab.lab("start", "node2");
    lab.lab("start", "node3");
    for node in ["node2", "node3"] {
        wait_for(&format!("k3s on {node}"), Duration::from_secs(120), Duration::from_secs(2), || {
            let (active, out) = lab.ssh(node, "systemctl is-active k3s");
            active.then_some(()).ok_or(out)
        });
    }
    up_ok(lab);
    let config = lab.sh("node1", "cat /etc/rancher/k3s/config.yaml");
    assert!(config.contains("server: \"https://10.77.51.12:6443\""), "node1 must join node2 directly:\n{config}");
    let hashes = ca_hashes(lab);
    assert!(hashes.values().all(|h| h == ca), "one CA, the cluster's first: {hashes:?} (want {ca})");
    let nodes = lab.sh("node2", "k3s kubectl get nodes --no-headers");
    for n in SERVERS {
        assert!(nodes.lines().any(|l| l.split_whitespace().take(2).eq([n, "Ready"])), "{n} not Ready:\n{nodes}");
    }
    let out = status(lab);
    assert!(out.status.success(), "{}", text(&out));
}
