//! HAProxy on the `loadbalancer` hosts, in front of the servers' API, with the health-check
//! timings of the hand-built clusters it replaces (roundrobin,
//! `inter 10s downinter 5s rise 2 fall 2 slowstart 60s maxconn 250 maxqueue 256 weight 100`);
//! the check is TCP for k3s and HTTPS `/readyz` for kubeadm ([`health_check`]).
//! The config is checked with `haproxy -c` before it replaces the running one.

use std::fmt::Write as _;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::config::{Cluster, Distribution, EndpointMode, Role};
use crate::fleet::{Fleet, Node};
use crate::remote::{Cmd, Host, Mode};

const CONFIG: &str = "/etc/haproxy/haproxy.cfg";

pub fn run<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        if fleet.cluster.endpoint().mode != EndpointMode::Loadbalancer {
            return;
        }
        let config = haproxy_cfg(&fleet.cluster);
        let config = &config;
        fleet
            .each(move |node: &'a Node, host: &'a Host| async move {
                if node.role() != Role::Loadbalancer {
                    return Ok(());
                }
                let facts = node.facts().ok_or("no facts gathered")?;
                let installed = facts.packages.iter().any(|p| p == "haproxy");
                if !installed {
                    install_package(host, "haproxy").await?;
                }
                if installed || fleet.mode == Mode::Apply {
                    validate(host, config).await?;
                }
                let changed =
                    host.ensure_file(CONFIG, config.as_bytes(), Some(0o644)).await.map_err(|e| e.to_string())?;
                let state = facts.services.get("haproxy").cloned().unwrap_or_default();
                ensure_running(host, "haproxy", changed && installed, &state).await
            })
            .await;
    })
}

pub async fn install_package(host: &Host, package: &str) -> Result<(), String> {
    let cmd = Cmd::change_script(format!(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Options::=--force-confold {package}"
    ))
    .timeout(Duration::from_secs(600));
    host.apply(format!("install {package}"), &cmd).await.map_err(|e| e.to_string())
}

/// Enables and starts `unit`, or restarts it when its config changed while it ran.
pub async fn ensure_running(
    host: &Host,
    unit: &str,
    restart: bool,
    state: &crate::facts::ServiceState,
) -> Result<(), String> {
    let (what, script) = if restart && state.active {
        (format!("restart {unit} (config changed)"), format!("systemctl enable -q {unit} && systemctl restart {unit}"))
    } else if !state.active || !state.enabled {
        (format!("enable and start {unit}"), format!("systemctl enable -q {unit} && systemctl restart {unit}"))
    } else {
        return Ok(());
    };
    host.apply(what, &Cmd::change_script(script)).await.map_err(|e| e.to_string())
}

async fn validate(host: &Host, config: &str) -> Result<(), String> {
    // No -q: it also silences the alerts that say what is wrong.
    let check = Cmd::read_script("haproxy -c -f /dev/stdin").stdin(config.as_bytes().to_vec());
    let out = host.run(&check).await.map_err(|e| e.to_string())?;
    if !out.success() {
        let said = format!("{}\n{}", out.stderr_str(), out.stdout_str());
        let said: Vec<&str> = said.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        return Err(format!(
            "haproxy -c rejected the generated config, nothing was installed:\n    {}",
            said.join("\n    ")
        ));
    }
    Ok(())
}

pub fn haproxy_cfg(cluster: &Cluster) -> String {
    let ep = cluster.endpoint();
    let mut out = format!(
        "# Written by pikube: Kubernetes API load balancer for cluster {name}.\n\
         global\n\
         \x20   log /dev/log local0\n\
         \x20   maxconn 4000\n\
         \n\
         defaults\n\
         \x20   log global\n\
         \x20   mode tcp\n\
         \x20   option tcplog\n\
         \x20   option dontlognull\n\
         \x20   # A dead server is skipped at once, before its health checks catch up.\n\
         \x20   option redispatch\n\
         \x20   retries 3\n\
         \x20   timeout connect 3s\n\
         \x20   # kubectl watches and logs hold connections open.\n\
         \x20   timeout client 1h\n\
         \x20   timeout server 1h\n\
         \x20   timeout check 5s\n\
         \n\
         frontend kubernetes-api\n\
         \x20   bind :{port}\n\
         \x20   default_backend k3s-servers\n\
         \n\
         backend k3s-servers\n\
         {check}\
         \x20   balance roundrobin\n\
         \x20   default-server inter 10s downinter 5s rise 2 fall 2 slowstart 60s maxconn 250 maxqueue 256 weight 100\n",
        name = cluster.name(),
        port = ep.port,
        check = health_check(cluster.distribution()),
    );
    // kubeadm's API servers are checked over TLS: their certificates are of the cluster's own
    // CA, which the load balancer does not hold.
    let tls = if cluster.distribution() == Distribution::Kubeadm { " verify none" } else { "" };
    for s in cluster.with_role(Role::Server) {
        let _ = writeln!(out, "    server {} {}:6443 check{tls}", s.name.value, s.address());
    }
    out
}

/// How HAProxy decides that a server may take API traffic. kubeadm's API server answers
/// `/readyz` to anyone (kubeadm binds it to system:unauthenticated), so a server counts only
/// while it is ready: one that listens but has lost its etcd, or is still starting after a
/// reboot, gets no requests. k3s's refuses anonymous requests: a TCP check.
fn health_check(distribution: Distribution) -> &'static str {
    match distribution {
        Distribution::Kubeadm => {
            "    option httpchk\n    http-check connect ssl\n    http-check send meth GET uri /readyz\n    http-check expect status 200\n"
        }
        Distribution::K3s => "    option tcp-check\n",
    }
}
