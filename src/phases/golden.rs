//! Golden files: every file pikube renders for the hosts, from two representative cluster
//! files (k3s and kubeadm, HA behind a load balancer, with proxy, mirrors, labels and taints),
//! compared byte for byte with `tests/golden/`. Refactors are checked in milliseconds; the lab
//! tests prove the files work. `PIKUBE_UPDATE_SNAPSHOTS=1 cargo test --lib golden` rewrites
//! them (review the diff before committing).

use std::path::{Path, PathBuf};

use crate::config::{Cluster, Role};
use crate::distro::kubeadm::render::{self, JoinSecrets};
use crate::k3s::{self, Join};

const COMMON: &str = "proxy:
  http: http://proxy.lan:3128
  https: http://proxy.lan:3128
  no_proxy: [.lan]
registry_mirrors:
  docker.io: [\"https://mirror.lan:5000\"]
hosts:
  - {name: rasp01, address: 192.168.1.101, role: server}
  - {name: rasp02, address: 192.168.1.102, role: server}
  - {name: rasp03, address: 192.168.1.103, role: server}
  - {name: lb01, address: 192.168.1.100, role: loadbalancer}
  - name: rasp04
    address: 192.168.1.104
    role: agent
    labels: {disk: ssd}
    taints: [\"dedicated=edge:NoSchedule\"]
";

fn cluster(kubernetes: &str) -> Cluster {
    let text = format!("name: pi\nkubernetes:\n{kubernetes}{COMMON}");
    Cluster::parse(Path::new("/nonexistent/cluster.yaml"), &text).expect("the golden cluster file is valid")
}

fn host<'a>(c: &'a Cluster, name: &str) -> &'a crate::config::HostSpec {
    c.hosts().find(|h| h.name.value == name).expect("host in the golden cluster file")
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Compares every (file name, rendered text) with its golden file; all mismatches at once.
fn check(rendered: &[(&str, String)]) {
    let update = std::env::var_os("PIKUBE_UPDATE_SNAPSHOTS").is_some();
    let mut mismatches = Vec::new();
    for (name, got) in rendered {
        let path = dir().join(name);
        if update {
            std::fs::create_dir_all(dir()).expect("golden dir");
            std::fs::write(&path, got).expect("write golden file");
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if &want != got {
            mismatches.push(format!("tests/golden/{name}:\n--- want\n{want}--- got\n{got}"));
        }
    }
    assert!(mismatches.is_empty(), "golden files differ:\n{}", mismatches.join("\n"));
}

#[test]
fn k3s_files_match_their_golden_files() {
    let c = cluster("  version: v1.31.4+k3s1\n  endpoint: {mode: loadbalancer}\n");
    let ep = c.endpoint();
    let token = "K10-golden-token";
    check(&[
        (
            "k3s-server-init.yaml",
            k3s::config_yaml(&c, host(&c, "rasp01"), "192.168.1.101", token, Join::Init { cluster_init: true }),
        ),
        ("k3s-server-join.yaml", k3s::config_yaml(&c, host(&c, "rasp02"), "192.168.1.102", token, Join::Via(&ep))),
        ("k3s-agent.yaml", k3s::config_yaml(&c, host(&c, "rasp04"), "192.168.1.104", token, Join::Via(&ep))),
        ("k3s.service", k3s::unit(Role::Server)),
        ("k3s-agent.service", k3s::unit(Role::Agent)),
        ("k3s.service.env", k3s::env_file(&c)),
        ("k3s-registries.yaml", k3s::registries(&c).expect("mirrors")),
        ("haproxy.cfg", super::load_balancer::haproxy_cfg(&c)),
    ]);
}

#[test]
fn keepalived_conf_matches_its_golden_file() {
    let c = cluster("  version: v1.31.4+k3s1\n  endpoint: {mode: vip, address: 192.168.1.10}\n");
    let peers: Vec<String> = c.with_role(Role::Server).map(|h| h.address().to_string()).collect();
    let conf = super::virtual_ip::keepalived_conf(&c, "rasp01", "eth0", 24, "192.168.1.101", &peers, 0, "golden");
    check(&[("keepalived.conf", conf)]);
}

#[test]
fn kubeadm_files_match_their_golden_files() {
    let c = cluster("  distribution: kubeadm\n  version: v1.34.4\n  endpoint: {mode: loadbalancer}\n");
    let secrets = |key: Option<&str>| JoinSecrets {
        token: "abcdef.0123456789abcdef".into(),
        ca_cert_hash: "sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
        certificate_key: key.map(String::from),
    };
    let (hosts, _) = render::registry_hosts(&c).into_iter().next().expect("a mirror");
    assert_eq!(hosts, "/etc/containerd/certs.d/docker.io/hosts.toml");
    check(&[
        ("kubeadm-init.yaml", render::init_config(&c, host(&c, "rasp01"), "192.168.1.101", "v1.34.4", true)),
        (
            "kubeadm-init-no-conntrack.yaml",
            render::init_config(&c, host(&c, "rasp01"), "192.168.1.101", "v1.34.4", false),
        ),
        (
            "kubeadm-join-server.yaml",
            render::join_config(&c, host(&c, "rasp02"), "192.168.1.102", &secrets(Some(&"0".repeat(64)))),
        ),
        ("kubeadm-join-agent.yaml", render::join_config(&c, host(&c, "rasp04"), "192.168.1.104", &secrets(None))),
        ("kubeadm-upgrade.yaml", render::upgrade_config("v1.34.4")),
        ("containerd-config.toml", render::containerd_config("registry.k8s.io/pause:3.10.1", false)),
        ("containerd-config-restricted.toml", render::containerd_config("registry.k8s.io/pause:3.10.1", true)),
        ("containerd-hosts-docker.io.toml", render::registry_hosts(&c).remove(0).1),
        ("containerd-proxy.conf", render::containerd_proxy(&c).expect("a proxy")),
        ("kubelet.service", render::KUBELET_UNIT.to_string()),
        ("10-kubeadm.conf", render::KUBEADM_DROPIN.to_string()),
        ("crictl.yaml", render::CRICTL_YAML.to_string()),
        ("haproxy-kubeadm.cfg", super::load_balancer::haproxy_cfg(&c)),
    ]);
}
