//! `pikube import ansible`: each inventory style in tests/inventories/ becomes a cluster file that
//! pikube's own parser accepts, with the expected roles, addresses and SSH users; what cannot be
//! mapped is listed with file:line; several clusters need --cluster; nothing is overwritten without --force.
//!
//! The generated files are pinned in `tests/inventories/*.expected.yaml`;
//! `PIKUBE_UPDATE_SNAPSHOTS=1 cargo test --test import_ansible` rewrites them (review the diff).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pikube::config::{Cluster, EndpointMode, Role};

mod snapshot;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inventories")
}

/// Runs `pikube import ansible ARGS` in tests/inventories, so comments name the file as given.
fn import(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pikube"))
        .args(["import", "ansible"])
        .args(args)
        .current_dir(dir())
        .output()
        .expect("run pikube")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Imports `inventory`, checks stdout against its golden file and parses it as `up` would.
fn imported(inventory: &str, extra: &[&str], golden: &str) -> (Cluster, String) {
    let mut args = vec![inventory];
    args.extend_from_slice(extra);
    let out = import(&args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "import {inventory} failed:\n{stderr}");
    if let Err(diff) = snapshot::compare(&dir().join(golden), &stdout) {
        panic!("{inventory}: output differs from {golden}:\n{diff}");
    }
    let cluster = Cluster::parse(Path::new(golden), &stdout)
        .unwrap_or_else(|e| panic!("{golden} does not validate:\n{}", e.plain()));
    (cluster, stderr)
}

/// (name, address, role, effective ssh user) of every host.
fn hosts(c: &Cluster) -> Vec<(String, String, Role, Option<String>)> {
    c.hosts().map(|h| (h.name.value.clone(), h.address().to_string(), h.role.value, c.ssh_for(h).user)).collect()
}

fn host(name: &str, address: &str, role: Role, user: Option<&str>) -> (String, String, Role, Option<String>) {
    (name.into(), address.into(), role, user.map(String::from))
}

#[test]
fn classic_master_nodes_ini_with_children_and_vars() {
    let (c, stderr) = imported("classic.ini", &[], "classic.expected.yaml");
    assert_eq!(c.name(), "classic");
    assert_eq!(
        hosts(&c),
        [
            host("rasp01", "192.168.1.101", Role::Server, Some("pi")),
            host("rasp02", "192.168.1.102", Role::Agent, Some("pi")),
            host("rasp03", "192.168.1.103", Role::Agent, Some("pi")),
            host("rasp04", "rasp04", Role::Agent, Some("ubuntu")),
            host("rasp05", "rasp05", Role::Agent, Some("ubuntu")),
        ]
    );
    let rasp03 = c.hosts().find(|h| h.name.value == "rasp03").expect("rasp03");
    assert_eq!(c.ssh_for(rasp03).port, Some(2222));
    assert_eq!(c.spec.ssh.key.as_deref(), Some(Path::new("~/.ssh/pi_ed25519")));
    assert_eq!(c.version(), Some("v1.31.4+k3s1"));
    let proxy = c.spec.proxy.as_ref().expect("proxy from proxy_url");
    assert_eq!(proxy.http.as_ref().map(|p| p.value.as_str()), Some("http://proxy.lan:3128"));
    assert_eq!(proxy.https.as_ref().map(|p| p.value.as_str()), Some("http://proxy.lan:3128"));
    let no_proxy: Vec<&str> = proxy.no_proxy.iter().map(|n| n.value.as_str()).collect();
    assert_eq!(no_proxy, ["localhost", ".lan", "10.0.0.0/8"]);
    let docker = &c.spec.registry_mirrors["docker.io"].value;
    assert_eq!(docker.iter().map(|m| m.value.as_str()).collect::<Vec<_>>(), ["https://registry-mirror.lan"]);
    assert!(stderr.contains("classic.ini:17: var boot_directory: "), "{stderr}");
}

#[test]
fn kubespray_yaml_control_plane_etcd_and_haproxy() {
    let (c, stderr) = imported("kubespray.yml", &[], "kubespray.expected.yaml");
    let got: Vec<_> = hosts(&c).into_iter().map(|(n, a, r, _)| (n, a, r)).collect();
    let want = [
        ("node1", "10.10.0.11", Role::Server),
        ("node2", "10.10.0.12", Role::Server),
        ("node3", "10.10.0.13", Role::Server),
        ("node4", "10.10.0.14", Role::Agent),
        ("node5", "10.10.0.15", Role::Agent),
        ("lb1", "10.10.0.10", Role::Loadbalancer),
    ]
    .map(|(n, a, r)| (n.to_string(), a.to_string(), r));
    assert_eq!(got, want);
    assert_eq!(c.spec.ssh.user.as_deref(), Some("admin"));
    assert_eq!(c.endpoint().mode, EndpointMode::Loadbalancer);
    assert_eq!(c.version(), None, "kube_version is a kubeadm version, not a k3s one");
    assert!(stderr.contains("kubespray.yml:17: var kube_version: "), "{stderr}");
    let proxy = c.spec.proxy.as_ref().expect("proxy from http_proxy");
    assert_eq!(proxy.http.as_ref().map(|p| p.value.as_str()), Some("http://proxy.corp:3128"));
    assert!(proxy.https.is_none(), "only http_proxy was set");
    assert_eq!(proxy.no_proxy.iter().map(|n| n.value.as_str()).collect::<Vec<_>>(), [".corp", "10.10.0.0/16"]);
    assert!(stderr.contains("kubespray.yml:6: var ip: "), "{stderr}");
}

#[test]
fn k3s_ansible_server_agent_yaml_with_a_vip_and_no_secrets_copied() {
    let (c, stderr) = imported("k3s-ansible.yaml", &[], "k3s-ansible.expected.yaml");
    let roles: Vec<_> = c.hosts().map(|h| (h.address().to_string(), h.role.value)).collect();
    assert_eq!(roles.iter().filter(|(_, r)| *r == Role::Server).count(), 3);
    assert_eq!(roles.iter().filter(|(_, r)| *r == Role::Agent).count(), 2);
    let ep = c.endpoint();
    assert_eq!((ep.mode, ep.vip.as_deref()), (EndpointMode::Vip, Some("192.168.30.222")));
    assert_eq!(c.version(), Some("v1.30.2+k3s1"));
    assert_eq!((c.spec.ssh.user.as_deref(), c.spec.ssh.port), (Some("debian"), Some(22)));
    assert!(stderr.contains("k3s-ansible.yaml:18: var token: pikube makes the join token itself"), "{stderr}");
    let golden = std::fs::read_to_string(dir().join("k3s-ansible.expected.yaml")).expect("golden");
    assert!(!golden.contains("changeme") && !stderr.contains("changeme"), "the token's value leaked");
}

#[test]
fn ip_only_hosts_get_names_from_their_addresses() {
    let (c, stderr) = imported("ip-only.ini", &[], "ip-only.expected.yaml");
    assert_eq!(
        hosts(&c),
        [
            host("node-10-0-0-11", "10.0.0.11", Role::Server, Some("pi")),
            host("node-10-0-0-12", "10.0.0.12", Role::Agent, Some("pi")),
            host("node-10-0-0-13", "10.0.0.13", Role::Agent, Some("pi")),
            host("node-10-0-0-14", "10.0.0.14", Role::Agent, Some("pi")),
        ]
    );
    assert!(stderr.contains("everything in ip-only.ini was mapped"), "{stderr}");
}

#[test]
fn unknown_vars_are_reported_with_file_and_line_and_secrets_stay_out() {
    let (c, stderr) = imported("unknown-vars.ini", &[], "unknown-vars.expected.yaml");
    let names: Vec<_> = c.hosts().map(|h| h.name.value.as_str()).collect();
    assert_eq!(names, ["master-01", "worker-01", "worker-02"], "grafana is in no role group");
    for line in [
        "unknown-vars.ini:3: var ansible_become_pass: secrets are never copied",
        "unknown-vars.ini:3: var gpu: pikube has no setting for this var",
        "unknown-vars.ini:6: var ansible_python_interpreter: an Ansible setting pikube does not need",
        "unknown-vars.ini:7: var ansible_port: not a port number",
        "unknown-vars.ini:10: host grafana: in no server, agent or load balancer group",
        "unknown-vars.ini:13: var k8s_version: a kubeadm version",
        "unknown-vars.ini:15: var timezone: pikube has no setting for this var",
        "unknown-vars.ini:18: var grafana_admin_password: ",
    ] {
        assert!(stderr.contains(&format!("  {line}")), "missing {line:?} in:\n{stderr}");
    }
    assert!(stderr.contains("not mapped (9):"), "{stderr}");
    let golden = std::fs::read_to_string(dir().join("unknown-vars.expected.yaml")).expect("golden");
    for secret in ["hunter2", "secret123"] {
        assert!(!golden.contains(secret) && !stderr.contains(secret), "{secret} leaked");
    }
}

#[test]
fn credentials_in_proxy_and_mirror_urls_stay_out_of_the_cluster_file() {
    let (c, stderr) = imported("proxy-credentials.ini", &[], "proxy-credentials.expected.yaml");
    let proxy = c.spec.proxy.as_ref().expect("proxy from http_proxy");
    assert_eq!(proxy.http.as_ref().map(|p| p.value.as_str()), Some("http://proxy.lan:3128"));
    assert_eq!(proxy.https.as_ref().map(|p| p.value.as_str()), Some("http://proxy.lan:3128"));
    let mirrors: Vec<&str> = c.spec.registry_mirrors["docker.io"].value.iter().map(|m| m.value.as_str()).collect();
    assert_eq!(mirrors, ["https://mirror.lan:5000"]);
    for line in [
        "proxy-credentials.ini:9: credentials in var http_proxy: its user:password@ was left out of the cluster file",
        "proxy-credentials.ini:10: credentials in var https_proxy: ",
        "proxy-credentials.ini:12: credentials in var docker_registry_mirror_url: ",
    ] {
        assert!(stderr.contains(&format!("  {line}")), "missing {line:?} in:\n{stderr}");
    }
    let golden = std::fs::read_to_string(dir().join("proxy-credentials.expected.yaml")).expect("golden");
    for secret in ["S3cret", "T0ken", "svc:", "puller"] {
        assert!(!golden.contains(secret) && !stderr.contains(secret), "{secret} leaked:\n{golden}\n{stderr}");
    }
}

#[test]
fn two_clusters_need_cluster_and_each_imports_alone() {
    let out = import(&["two-clusters.ini"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("two-clusters.ini holds 2 clusters: home, lab"), "{stderr}");
    assert!(stderr.contains("--cluster NAME"), "{stderr}");
    assert!(out.stdout.is_empty());

    let out = import(&["two-clusters.ini", "--cluster", "prod"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("has no cluster \"prod\"; it holds: home, lab"), "{}", text(&out.stderr));

    let (home, stderr) = imported("two-clusters.ini", &["--cluster", "home"], "two-clusters-home.expected.yaml");
    assert_eq!(home.name(), "home");
    assert_eq!(
        hosts(&home),
        [
            host("home1", "home1.lan", Role::Server, None),
            host("home2", "home2.lan", Role::Agent, Some("pi")),
            host("home3", "home3.lan", Role::Agent, Some("pi")),
            host("homelb", "homelb.lan", Role::Loadbalancer, None),
        ]
    );
    assert_eq!(home.endpoint().mode, EndpointMode::Loadbalancer);
    assert!(stderr.contains("everything in two-clusters.ini was mapped"), "the lab's vars are not home's: {stderr}");

    // Three servers without a load balancer or VIP: one stays a server, and the report says so.
    let (lab, stderr) = imported("two-clusters.ini", &["--cluster", "lab"], "two-clusters-lab.expected.yaml");
    assert_eq!(lab.name(), "lab");
    assert_eq!(lab.with_role(Role::Server).map(|h| h.address()).collect::<Vec<_>>(), ["10.1.0.1"]);
    assert_eq!(lab.with_role(Role::Agent).count(), 3);
    assert!(
        stderr.contains("two-clusters.ini:11: server role of 10.1.0.2: several servers need an API endpoint"),
        "{stderr}"
    );
    assert_eq!(lab.version(), Some("v1.31.4+k3s1"));
    assert!(!stderr.contains("home"), "home's hosts and vars are not the lab's business: {stderr}");
}

#[test]
fn output_file_is_never_overwritten_without_force() {
    let tmp = std::env::temp_dir().join(format!("pikube-import-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp dir");
    let out_file = tmp.join("cluster.yaml");
    let o = out_file.to_str().expect("utf-8 path");

    let out = import(&["ip-only.ini", "-o", o]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "with -o nothing goes to stdout");
    let written = std::fs::read_to_string(&out_file).expect("written");
    assert_eq!(written, std::fs::read_to_string(dir().join("ip-only.expected.yaml")).expect("golden"));

    std::fs::write(&out_file, "mine\n").expect("overwrite by hand");
    let out = import(&["ip-only.ini", "-o", o]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("already exists"), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--force"), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&out_file).expect("still there"), "mine\n");

    let out = import(&["ip-only.ini", "-o", o, "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&out_file).expect("rewritten"), written);
    std::fs::remove_dir_all(&tmp).expect("clean up");
}

#[test]
fn inventory_syntax_errors_name_file_and_line() {
    let tmp = std::env::temp_dir().join(format!("pikube-import-bad-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp dir");
    let cases = [
        ("bad.ini", "[master]\npi1\n[nodes\npi2\n", "bad.ini:3: section header \"[nodes\" has no closing ']'"),
        ("quote.ini", "[master]\npi1 ansible_user=\"pi\n", "quote.ini:2: unclosed \" quote"),
        (
            "novalue.ini",
            "[master]\npi1\n[master:vars]\nansible_user\n",
            "novalue.ini:4: \"ansible_user\" is not key=value",
        ),
        ("bad.yml", "all:\n  hosts:\n    pi1:\n  chilren:\n    master: {}\n", "bad.yml:4: "),
        ("noserver.ini", "[nodes]\npi1\n", "noserver.ini: no host is in a control-plane group"),
        (
            "range.ini",
            "[master]\npi1 ansible_host=10.0.0.[1:3]\n",
            "range.ini:2: address \"10.0.0.[1:3]\" of host \"pi1\"",
        ),
        (
            "dup.ini",
            "[master]\na ansible_host=10.0.0.1\n[nodes]\nb ansible_host=10.0.0.1\n",
            "dup.ini:4: hosts a (line 2) and b",
        ),
        // What only the cluster file's rules catch is shown with the generated file, whose comments lead back.
        ("url.ini", "[master]\na proxy_url=\"http://x y\"\n", "  http: \"http://x y\"  # from url.ini:2 (proxy_url)"),
    ];
    for (name, content, want) in cases {
        std::fs::write(tmp.join(name), content).expect("write inventory");
        let out = Command::new(env!("CARGO_BIN_EXE_pikube"))
            .args(["import", "ansible", name])
            .current_dir(&tmp)
            .output()
            .expect("run pikube");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(want), "{name}: want {want:?} in:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    std::fs::remove_dir_all(&tmp).expect("clean up");
}

#[test]
fn a_generic_inventory_file_name_gives_way_to_its_directory() {
    let tmp = std::env::temp_dir().join(format!("pikube-import-name-{}", std::process::id()));
    std::fs::create_dir_all(tmp.join("inventory/Home_Lab")).expect("tmp dirs");
    std::fs::write(tmp.join("inventory/Home_Lab/hosts.ini"), "[master]\npi1\n").expect("write");
    std::fs::write(tmp.join("hosts"), "[master]\npi1\n").expect("write");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_pikube"))
            .args(["import", "ansible"])
            .args(args)
            .current_dir(&tmp)
            .output()
            .expect("run pikube");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let cluster = Cluster::parse(Path::new("out.yaml"), &text(&out.stdout)).expect("validates");
        cluster.name().to_string()
    };
    assert_eq!(run(&["inventory/Home_Lab/hosts.ini"]), "home-lab");
    assert_eq!(run(&["hosts"]), format!("pikube-import-name-{}", std::process::id()));
    assert_eq!(run(&["hosts", "--cluster", "pis"]), "pis");
    std::fs::remove_dir_all(&tmp).expect("clean up");
}

/// Every file in tests/inventories is used: each `*.expected.yaml` is the snapshot of an
/// `imported(…)` call above, and each inventory is imported by one. Read from this file's own
/// source, as an orphan would otherwise pass forever while pinning nothing.
#[test]
fn every_inventory_and_snapshot_is_used() {
    let source = include_str!("import_ansible.rs");
    let calls: Vec<Vec<&str>> = source
        .match_indices("imported(\"")
        .map(|(at, _)| source[at..].split(");").next().unwrap_or("").split('"').skip(1).step_by(2).collect())
        .collect();
    let goldens: Vec<&str> = calls.iter().filter_map(|c| c.last().copied()).collect();
    let inventories: Vec<&str> = calls.iter().filter_map(|c| c.first().copied()).collect();
    let mut unused: Vec<String> = std::fs::read_dir(dir())
        .expect("tests/inventories")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| {
            if name.ends_with(".expected.yaml") {
                !goldens.contains(&name.as_str())
            } else {
                !inventories.contains(&name.as_str())
            }
        })
        .collect();
    unused.sort();
    assert!(goldens.len() >= 7, "found only {} imported(…) calls: {calls:?}", goldens.len());
    assert!(unused.is_empty(), "tests/inventories: files no test imports or compares with: {unused:?}");
}
