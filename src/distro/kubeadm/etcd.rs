//! kubeadm's stacked etcd as pikube asks about it: etcdctl inside the etcd container of the
//! server asked (upstream's etcd image carries etcdctl and etcdutl; the host has neither), run
//! through containerd on that server rather than through the API, so it still answers when
//! etcd has lost its quorum and the API with it — when pikube most needs the member list.
//! etcdctl authenticates with the health-check client certificate kubeadm mounts into the
//! pod; etcd runs without RBAC under kubeadm, so any client certificate of its CA may list,
//! remove members and take snapshots.

use crate::k3s::etcd::{parse, Member};
use crate::remote::{Cmd, Host};

const PKI: &str = "/etc/kubernetes/pki/etcd";

/// A shell command running `etcdctl ARGS` in the etcd container that runs on this host,
/// against its own member's client URL.
pub fn etcdctl(args: &str) -> String {
    format!(
        "c=$(ctr -n k8s.io containers ls -q 'labels.\"io.kubernetes.container.name\"==etcd' | while read -r id; do \
         ctr -n k8s.io tasks ls | awk -v id=\"$id\" '$1 == id && $3 == \"RUNNING\" {{ print id }}'; done | head -n 1)\n\
         [ -n \"$c\" ] || {{ echo \"no etcd container runs on $(hostname)\" >&2; exit 1; }}\n\
         ctr -n k8s.io tasks exec --exec-id \"pikube-etcdctl-$$\" \"$c\" etcdctl --endpoints=https://127.0.0.1:2379 \
         --cacert={PKI}/ca.crt --cert={PKI}/healthcheck-client.crt --key={PKI}/healthcheck-client.key {args}"
    )
}

/// The member list as the etcd on server `host` knows it (serializable: it answers without
/// a quorum).
pub async fn members(host: &Host) -> Result<Vec<Member>, String> {
    let cmd =
        Cmd::read_script(etcdctl("member list --consistency=s -w json")).timeout(std::time::Duration::from_secs(30));
    let out = host.run(&cmd).await.map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!("{}: etcdctl member list failed: {}", host.name, out.stderr_str().trim()));
    }
    parse(&out.stdout_str())
        .ok_or_else(|| format!("{}: unexpected etcd member list: {}", host.name, out.stdout_str().trim()))
}

/// Removes `member` through the etcd on server `host` (etcd refuses without a quorum).
pub async fn remove_member(host: &Host, member: &Member) -> Result<(), String> {
    let cmd = Cmd::change_script(etcdctl(&format!("member remove {:x}", member.id)))
        .timeout(std::time::Duration::from_secs(30));
    host.apply(format!("remove etcd member {} ({})", member.name, member.host), &cmd).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcdctl_runs_in_the_local_etcd_container_with_the_health_check_certificate() {
        let cmd = etcdctl("member list -w json");
        assert!(cmd.contains("'labels.\"io.kubernetes.container.name\"==etcd'"), "{cmd}");
        assert!(cmd.contains("tasks exec --exec-id \"pikube-etcdctl-$$\" \"$c\" etcdctl "), "{cmd}");
        assert!(cmd.contains("--key=/etc/kubernetes/pki/etcd/healthcheck-client.key member list -w json"), "{cmd}");
        // etcdctl's JSON carries the IDs as numbers; remove takes them in hex.
        let json = r#"{"header":{"cluster_id":1},"members":[{"ID":10501334649042878790,"name":"rasp01",
            "peerURLs":["https://192.168.1.101:2380"],"clientURLs":["https://192.168.1.101:2379"]}]}"#;
        let m = parse(json).expect("parses");
        assert_eq!((m[0].name.as_str(), m[0].host.as_str()), ("rasp01", "192.168.1.101"));
        assert_eq!(format!("{:x}", m[0].id), "91bc3c398fb3c146");
    }
}
