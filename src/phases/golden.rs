//! Golden files: every file pikube renders for the hosts, from two representative cluster
//! files (k3s and kubeadm, HA behind a load balancer, with proxy, mirrors, labels and taints),
//! compared byte for byte with `tests/golden/`. Refactors are checked in milliseconds; the lab
//! tests prove the files work. `PIKUBE_UPDATE_SNAPSHOTS=1 cargo test --lib golden` rewrites
//! them (review the diff before committing).

use std::path::{Path, PathBuf};

#[path = "../../tests/snapshot/mod.rs"]
mod snapshot;

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
    let mismatches: Vec<String> =
        rendered.iter().filter_map(|(name, got)| snapshot::compare(&dir().join(name), got).err()).collect();
    assert!(mismatches.is_empty(), "golden files differ:\n{}", mismatches.join("\n"));
}

/// Every file of tests/golden is one a test renders: a golden nothing renders any more would
/// pass forever while pinning nothing.
#[test]
fn every_golden_file_is_rendered() {
    let mut rendered: Vec<&str> = [k3s_files(), keepalived_files(), kubeadm_files(), storage_files()]
        .iter()
        .flatten()
        .map(|(name, _)| *name)
        .collect();
    rendered.sort();
    let mut on_disk: Vec<String> = std::fs::read_dir(dir())
        .expect("tests/golden")
        .map(|e| e.expect("tests/golden entry").file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, rendered, "tests/golden holds files no test renders, or misses rendered ones");
}

#[test]
fn k3s_files_match_their_golden_files() {
    check(&k3s_files());
}

#[test]
fn keepalived_conf_matches_its_golden_file() {
    check(&keepalived_files());
}

#[test]
fn kubeadm_files_match_their_golden_files() {
    check(&kubeadm_files());
}

fn k3s_files() -> Vec<(&'static str, String)> {
    let c = cluster("  version: v1.31.4+k3s1\n  endpoint: {mode: loadbalancer}\n");
    let ep = c.endpoint();
    let token = "K10-golden-token";
    vec![
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
    ]
}

fn keepalived_files() -> Vec<(&'static str, String)> {
    let c = cluster("  version: v1.31.4+k3s1\n  endpoint: {mode: vip, address: 192.168.1.10}\n");
    let peers: Vec<String> = c.with_role(Role::Server).map(|h| h.address().to_string()).collect();
    let conf = super::virtual_ip::keepalived_conf(&c, "rasp01", "eth0", 24, "192.168.1.101", &peers, 0);
    vec![("keepalived.conf", conf)]
}

fn kubeadm_files() -> Vec<(&'static str, String)> {
    let c = cluster("  distribution: kubeadm\n  version: v1.34.4\n  endpoint: {mode: loadbalancer}\n");
    let secrets = |key: Option<&str>| JoinSecrets {
        token: "abcdef.0123456789abcdef".into(),
        ca_cert_hash: "sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
        certificate_key: key.map(String::from),
    };
    let (hosts, _) = render::registry_hosts(&c).into_iter().next().expect("a mirror");
    assert_eq!(hosts, "/etc/containerd/certs.d/docker.io/hosts.toml");
    vec![
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
        ("containerd-proxy.conf", render::CONTAINERD_PROXY_DROPIN.to_string()),
        ("containerd-proxy.env", render::containerd_proxy_env(&c).expect("a proxy")),
        ("kubelet.service", render::KUBELET_UNIT.to_string()),
        ("10-kubeadm.conf", render::KUBEADM_DROPIN.to_string()),
        ("crictl.yaml", render::CRICTL_YAML.to_string()),
        ("haproxy-kubeadm.cfg", super::load_balancer::haproxy_cfg(&c)),
    ]
}

#[test]
fn storage_files_match_their_golden_files() {
    check(&storage_files());
}

fn storage_files() -> Vec<(&'static str, String)> {
    use crate::config::{Distribution, Filesystem};
    use crate::storage::{self, render as disk};
    let text = "name: pi\nhosts:\n  - name: rasp01\n    address: 192.168.1.101\n    role: server\n    storage:\n      \
                device: /dev/disk/by-id/usb-Samsung_Portable_SSD_T7_S5SX-0:0\n      filesystem: xfs\n      \
                lvm: {vg: pikube, thinpool: pool, size: 400G}\n";
    let c = Cluster::parse(Path::new("/nonexistent/cluster.yaml"), text).expect("valid");
    let s = host(&c, "rasp01").storage.clone().expect("storage");
    let lvm = s.lvm.as_ref().expect("lvm");
    let uuid = "6f1c0c2e-3a5b-4c1d-9e2f-0a1b2c3d4e5f";
    let [containerd, kubelet] = storage::Layout::of(Distribution::Kubeadm, Role::Agent).dirs;
    let [rancher, _] = storage::Layout::of(Distribution::K3s, Role::Agent).dirs;
    let dropin = |distribution, role| {
        let services = storage::Layout::of(distribution, role).services;
        services.iter().map(|(unit, needs)| format!("# {unit}.service.d\n{}", disk::service_dropin(needs))).collect()
    };
    vec![
        ("storage-disk-ext4.mount", disk::disk_unit(&s.device.value, uuid, Filesystem::Ext4)),
        ("storage-disk-xfs.mount", disk::disk_unit(&s.device.value, uuid, Filesystem::Xfs)),
        ("storage-bind-containerd.mount", disk::bind_unit(&containerd)),
        ("storage-bind-kubelet.mount", disk::bind_unit(&kubelet)),
        ("storage-bind-rancher.mount", disk::bind_unit(&rancher)),
        ("storage-dropins-kubeadm.conf", dropin(Distribution::Kubeadm, Role::Agent)),
        ("storage-dropins-k3s-server.conf", dropin(Distribution::K3s, Role::Server)),
        ("storage-lvm.sh", disk::lvm_script("/dev/sda", lvm, s.filesystem)),
        ("storage-lvm-thinpool.profile", disk::LVM_PROFILE_TEXT.to_string()),
    ]
}

/// `%` starts a specifier in systemd unit files (a percent-encoded password would be mangled),
/// and unit files are readable by every user: URLs go to the 0600 environment files only.
#[test]
fn urls_reach_environment_files_never_unit_files() {
    let url = "http://svc:p%40ss%25w0rd@proxy.lan:3128";
    let text = format!(
        "name: pi\nkubernetes: {{distribution: kubeadm, version: v1.34.4}}\nproxy: {{http: \"{url}\", https: \"{url}\"}}\n\
         hosts:\n  - {{name: rasp01, address: 192.168.1.101, role: server}}\n"
    );
    let c = Cluster::parse(Path::new("/nonexistent/cluster.yaml"), &text).expect("valid");
    let units = [
        k3s::unit(Role::Server),
        k3s::unit(Role::Agent),
        render::KUBELET_UNIT.to_string(),
        render::KUBEADM_DROPIN.to_string(),
        render::CONTAINERD_PROXY_DROPIN.to_string(),
    ];
    for unit in &units {
        assert!(!unit.contains("proxy.lan") && !unit.contains("p%40ss"), "a URL in a unit file:\n{unit}");
    }
    for env in [k3s::env_file(&c), render::containerd_proxy_env(&c).expect("a proxy")] {
        assert!(env.contains(&format!("\nHTTP_PROXY={url}\nHTTPS_PROXY={url}\n")), "{env}");
    }
}
