//! keepalived holding the API's virtual IP: on the servers (`endpoint.mode: vip`, straight to
//! the local API) or on two load balancers. A host only holds the VIP while its local API
//! port answers, so the address follows a working API within seconds.

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use crate::config::{Cluster, EndpointMode, Role};
use crate::fleet::{Fleet, Node};
use crate::remote::Host;

use super::load_balancer::{ensure_running, install_package};

const CONFIG: &str = "/etc/keepalived/keepalived.conf";
const CHECK: &str = "/etc/keepalived/pikube-check-api.sh";

/// Which role holds the VIP, if any.
fn holders(cluster: &Cluster) -> Option<Role> {
    let ep = cluster.endpoint();
    ep.vip.as_ref()?;
    Some(if ep.mode == EndpointMode::Vip { Role::Server } else { Role::Loadbalancer })
}

pub fn run<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        let Some(role) = holders(&fleet.cluster) else { return };
        let peers: Vec<String> = fleet.cluster.with_role(role).map(|h| h.address().to_string()).collect();
        let peers = &peers;
        fleet
            .each(move |node: &'a Node, host: &'a Host| async move {
                if node.role() != role {
                    return Ok(());
                }
                let facts = node.facts().ok_or("no facts gathered")?;
                let me = node.spec.address();
                let iface = facts.ipv4.iter().find(|a| a.address == me).ok_or_else(|| {
                    format!("no interface holds {me}; the VIP needs the host's own IPv4 address as `address:`")
                })?;
                let index = peers.iter().position(|p| p == me).unwrap_or(0);
                let conf = keepalived_conf(&fleet.cluster, node.name(), &iface.iface, iface.prefix, me, peers, index);
                let installed = facts.packages.iter().any(|p| p == "keepalived");
                if !installed {
                    install_package(host, "keepalived").await?;
                }
                let port = fleet.cluster.endpoint().port;
                let script = format!(
                    "#!/bin/sh\n# Written by pikube: keepalived holds the VIP only while the API port answers here.\n\
                     exec timeout 2 bash -c '</dev/tcp/127.0.0.1/{port}'\n"
                );
                let mut changed =
                    host.ensure_file(CHECK, script.as_bytes(), Some(0o755)).await.map_err(|e| e.to_string())?;
                changed |= host.ensure_file(CONFIG, conf.as_bytes(), Some(0o600)).await.map_err(|e| e.to_string())?;
                let state = facts.services.get("keepalived").cloned().unwrap_or_default();
                ensure_running(host, "keepalived", changed && installed, &state).await
            })
            .await;
    })
}

pub(super) fn keepalived_conf(
    cluster: &Cluster,
    name: &str,
    iface: &str,
    prefix: u8,
    me: &str,
    peers: &[String],
    index: usize,
) -> String {
    let ep = cluster.endpoint();
    let vip = ep.vip.unwrap_or_default();
    // Clusters on one LAN must not share a VRRP router id; derive it from the name.
    let router_id = 1 + (Sha256::digest(cluster.name().as_bytes())[0] as u16 % 254);
    let priority = 150 - 10 * index.min(10);
    let unicast: String = peers.iter().filter(|p| *p != me).map(|p| format!("        {p} min_ttl 255\n")).collect();
    format!(
        "# Written by pikube: API virtual IP {vip} for cluster {cluster}.\n\
         global_defs {{\n\
         \x20   router_id {name}\n\
         \x20   script_user root\n\
         \x20   enable_script_security\n\
         }}\n\
         \n\
         vrrp_script pikube_api {{\n\
         \x20   script \"{CHECK}\"\n\
         \x20   interval 1\n\
         \x20   timeout 3\n\
         \x20   rise 2\n\
         \x20   fall 2\n\
         }}\n\
         \n\
         vrrp_instance pikube_api {{\n\
         \x20   state BACKUP\n\
         \x20   interface {iface}\n\
         \x20   virtual_router_id {router_id}\n\
         \x20   priority {priority}\n\
         \x20   advert_int 1\n\
         \x20   # Unicast: works on networks that drop multicast (many Wi-Fi access points). Adverts\n\
         \x20   # count only from the peers below, sent on this link (TTL 255; a router lowers it).\n\
         \x20   # VRRP has no authentication worth the name: a password would travel in clear.\n\
         \x20   unicast_src_ip {me}\n\
         \x20   check_unicast_src\n\
         \x20   unicast_peer {{\n{unicast}    }}\n\
         \x20   virtual_ipaddress {{\n\
         \x20       {vip}/{prefix} dev {iface}\n\
         \x20   }}\n\
         \x20   track_script {{\n\
         \x20       pikube_api\n\
         \x20   }}\n\
         }}\n",
        cluster = cluster.name(),
    )
}
