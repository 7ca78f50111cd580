//! kubeadm's stacked etcd as pikube asks about it: etcdctl inside the server's etcd static pod
//! (upstream's etcd image carries etcdctl and etcdutl; the host has neither), through the API
//! with the server's admin credentials, authenticated to etcd with the health-check client
//! certificate kubeadm mounts into that pod. etcd runs without RBAC under kubeadm, so any
//! client certificate of its CA may list, remove members and take snapshots.

use crate::k3s::etcd::{parse, Member};
use crate::remote::{quote, Cmd, Host};

use super::KUBECTL;

const PKI: &str = "/etc/kubernetes/pki/etcd";

/// A shell command running `etcdctl ARGS` in the etcd pod of kubeadm node `node` (kubeadm names
/// it `etcd-<node name>`), against that member's own client URL.
pub fn etcdctl(node: &str, args: &str) -> String {
    format!(
        "{KUBECTL} -n kube-system exec {pod} -c etcd -- etcdctl --endpoints=https://127.0.0.1:2379 \
         --cacert={PKI}/ca.crt --cert={PKI}/healthcheck-client.crt --key={PKI}/healthcheck-client.key {args}",
        pod = quote(&format!("etcd-{node}")),
    )
}

/// [`etcdctl`] through server `node`'s own API server (the address and port of its
/// kube-apiserver manifest) instead of the endpoint: kubeadm's API servers each use their local
/// etcd only, and the endpoint's TCP check may hand the request to a server whose etcd is down.
pub fn local_etcdctl(node: &str, args: &str) -> String {
    let via = format!("{KUBECTL} --server=https://$a:$p");
    format!(
        "m=/etc/kubernetes/manifests/kube-apiserver.yaml; a=$(sed -n 's/^ *- --advertise-address=//p' $m);          p=$(sed -n 's/^ *- --secure-port=//p' $m); case $a in *:*) a=\"[$a]\";; esac; {}",
        etcdctl(node, args).replacen(KUBECTL, &via, 1)
    )
}

/// The member list as the etcd of server `node` (reached through `host`) sees it.
pub async fn members(host: &Host, node: &str) -> Result<Vec<Member>, String> {
    let cmd = Cmd::read_script(etcdctl(node, "member list -w json")).timeout(std::time::Duration::from_secs(30));
    let out = host.run(&cmd).await.map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!("{}: etcdctl member list failed: {}", host.name, out.stderr_str().trim()));
    }
    parse(&out.stdout_str())
        .ok_or_else(|| format!("{}: unexpected etcd member list: {}", host.name, out.stdout_str().trim()))
}

/// Removes `member` through the etcd of server `node` (reached through `host`).
pub async fn remove_member(host: &Host, node: &str, member: &Member) -> Result<(), String> {
    let cmd = Cmd::change_script(etcdctl(node, &format!("member remove {:x}", member.id)))
        .timeout(std::time::Duration::from_secs(30));
    host.apply(format!("remove etcd member {} ({})", member.name, member.host), &cmd).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcdctl_runs_in_the_nodes_etcd_pod_with_the_health_check_certificate() {
        let cmd = etcdctl("rasp01", "member list -w json");
        assert!(cmd.contains(" -n kube-system exec etcd-rasp01 -c etcd -- etcdctl "), "{cmd}");
        assert!(cmd.contains("--key=/etc/kubernetes/pki/etcd/healthcheck-client.key member list -w json"), "{cmd}");
        let local = local_etcdctl("rasp01", "member list -w json");
        assert!(
            local.contains("--server=https://$a:$p -n kube-system exec etcd-rasp01 -c etcd -- etcdctl "),
            "{local}"
        );
        // etcdctl's JSON carries the IDs as numbers; remove takes them in hex.
        let json = r#"{"header":{"cluster_id":1},"members":[{"ID":10501334649042878790,"name":"rasp01",
            "peerURLs":["https://192.168.1.101:2380"],"clientURLs":["https://192.168.1.101:2379"]}]}"#;
        let m = parse(json).expect("parses");
        assert_eq!((m[0].name.as_str(), m[0].host.as_str()), ("rasp01", "192.168.1.101"));
        assert_eq!(format!("{:x}", m[0].id), "91bc3c398fb3c146");
    }
}
