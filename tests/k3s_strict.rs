//! k3s as strict as real k3s, on lab hosts (real systemd, sshd, apt; the k3s binary is the
//! labelled STAND-IN, which checks what k3s checks): joins carry the full K10 token, a custom
//! API port without a load balancer is what the servers listen on, labels kubelet may not set
//! reach the node through the API, install.sh's linking rule, and registries.yaml follows the
//! cluster file.

mod common;

use std::process::Output;

use common::{standin_artifacts, stdout, text, Lab};

fn up(lab: &Lab) -> Output {
    let file = lab.cluster_file();
    lab.pikube(&["up", "-f", file.to_str().unwrap(), "--ready-timeout", "90"])
}

fn up_ok(lab: &Lab) {
    let out = up(lab);
    assert!(out.status.success(), "pikube up failed:\n{}", text(&out));
}

/// The value of `key` in a node's k3s config.yaml (a scalar line `key: value`).
fn config_value(lab: &Lab, node: &str, key: &str) -> String {
    let config = lab.sh(node, "cat /etc/rancher/k3s/config.yaml");
    config
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no `{key}:` in {node}'s config.yaml:\n{config}"))
        .trim_matches('"')
        .to_string()
}

#[test]
fn full_token_custom_port_api_labels_links_and_registries() {
    require_lab!();
    let artifacts = standin_artifacts();
    let lab = Lab::up("k3s-strict", 55, &["--nodes", "2", "--k3s-artifacts", artifacts.to_str().unwrap()]);
    let file = lab.cluster_file();
    let text_before = std::fs::read_to_string(&file).unwrap();
    let artifacts_line = format!("  artifacts: {}\n", artifacts.display());
    assert!(text_before.contains(&artifacts_line), "{text_before}");
    let with_mirrors = text_before
        .replace(&artifacts_line, &format!("{artifacts_line}  endpoint:\n    mode: none\n    port: 7443\n"))
        .replace(
            "    address: 10.77.55.12\n    role: agent\n",
            "    address: 10.77.55.12\n    role: agent\n    labels:\n      node.kubernetes.io/pool: edge\n    api_labels:\n      node-role.kubernetes.io/worker: \"\"\n",
        )
        + "registry_mirrors:\n  docker.io: [\"https://registry.lab:5000\"]\n";
    std::fs::write(&file, &with_mirrors).unwrap();

    // node-role labels as `labels:` (kubelet's --node-labels) are refused before any change.
    let refused = with_mirrors.replace("    api_labels:\n", "");
    std::fs::write(&file, &refused).unwrap();
    let line = refused.lines().position(|l| l.contains("node-role.kubernetes.io/worker")).unwrap() + 1;
    let out = up(&lab);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let all = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    let at = format!("{}:{line}:7: kubelet refuses to set label \"node-role.kubernetes.io/worker\"", file.display());
    assert!(all.contains(&at), "expected {at}:\n{all}");
    assert!(all.contains("api_labels"), "the hint names the setting that works:\n{all}");
    std::fs::write(&file, &with_mirrors).unwrap();

    // A distro kubectl on the agent's PATH: install.sh does not shadow it with a k3s link.
    lab.sh("node2", "printf '#!/bin/sh\\necho distro kubectl\\n' > /usr/bin/kubectl && chmod 755 /usr/bin/kubectl");
    up_ok(&lab);

    // The servers listen on the endpoint's port; joins and the kubeconfig use it.
    assert_eq!(config_value(&lab, "node1", "https-listen-port"), "7443");
    assert_eq!(config_value(&lab, "node2", "server"), "https://10.77.55.11:7443");
    let kubeconfig = std::fs::read_to_string(lab.dir().join("build/k3s-strict-config.yml")).unwrap();
    assert!(kubeconfig.contains("https://10.77.55.11:7443"), "{kubeconfig}");
    assert_eq!(stdout(&lab.exec("curl", &["-sk", "--max-time", "3", "https://10.77.55.11:7443/ping"])), "pong");

    // The agent joined with the full token, the one the server wrote (it pins the cluster CA).
    let agent_token = config_value(&lab, "node2", "token");
    assert!(
        agent_token.starts_with("K10") && agent_token.contains("::server:"),
        "the agent's token is not the full K10 form"
    );
    assert_eq!(
        agent_token,
        lab.sh("node1", "cat /var/lib/rancher/k3s/server/token"),
        "the agent's token is the server's"
    );

    // Labels: `labels` through kubelet, `api_labels` through the API.
    let node: serde_json::Value = serde_json::from_str(&lab.sh("node1", "k3s kubectl get node node2 -o json")).unwrap();
    let labels = &node["metadata"]["labels"];
    assert_eq!(labels["node-role.kubernetes.io/worker"], "", "{labels}");
    assert_eq!(labels["node.kubernetes.io/pool"], "edge", "{labels}");

    // install.sh's linking rule.
    assert_eq!(lab.sh("node1", "readlink /usr/local/bin/kubectl"), "k3s", "no kubectl on node1's PATH: linked");
    assert!(lab.absent("node2", "/usr/local/bin/kubectl"), "a distro kubectl is shadowed");
    assert_eq!(lab.sh("node2", "kubectl"), "distro kubectl");
    assert_eq!(lab.sh("node2", "readlink /usr/local/bin/crictl"), "k3s");

    // Mirrors removed from the file: registries.yaml goes, k3s restarts without it.
    for node in ["node1", "node2"] {
        assert!(lab.sh(node, "cat /etc/rancher/k3s/registries.yaml").contains("registry.lab:5000"));
    }
    std::fs::write(
        &file,
        with_mirrors.replace("registry_mirrors:\n  docker.io: [\"https://registry.lab:5000\"]\n", ""),
    )
    .unwrap();
    up_ok(&lab);
    for node in ["node1", "node2"] {
        assert!(lab.absent(node, "/etc/rancher/k3s/registries.yaml"), "{node}: a stale registries.yaml stayed");
    }
    let nodes = lab.sh("node1", "k3s kubectl get nodes --no-headers");
    assert_eq!(nodes.lines().filter(|l| l.split_whitespace().nth(1) == Some("Ready")).count(), 2, "{nodes}");
}
