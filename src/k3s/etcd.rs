//! etcd as pikube asks about it. The member list's JSON is etcd's MemberListResponse for both
//! distributions (kubeadm's etcdctl lives in `distro::kubeadm::etcd`). For k3s it is what a
//! server's supervisor serves at `/db/info` for joining servers, authenticated as user `server`
//! with the token's password; removal is k3s's own: deleting a server's Node makes its etcd
//! member controller remove that member (k3s pkg/etcd/member_controller.go), so pikube deletes
//! the Node and waits for the member to go.

use serde_json::Value;

use crate::remote::{Cmd, Host};

/// One etcd member: its name and the host of its peer URL (the server's node IP).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    pub name: String,
    pub host: String,
    /// etcd's member ID (what `etcdctl member remove` takes, in hex).
    #[serde(skip)]
    pub id: u64,
}

/// Prints the local server's `/db/info`. The password is read and used on the host (via
/// curl's config on stdin, so it is not on a command line) and never leaves it.
pub const MEMBERS_SCRIPT: &str = r#"t=$(cat /var/lib/rancher/k3s/server/token 2>/dev/null) && [ -n "$t" ] &&
printf 'user = "server:%s"\n' "${t##*:}" | curl -sk --max-time 5 -K - https://127.0.0.1:6443/db/info"#;

/// Votes a cluster of `members` needs to write (and so to change its membership).
pub fn quorum(members: usize) -> usize {
    members / 2 + 1
}

/// The member list as `server` sees it.
pub async fn members(server: &Host) -> Result<Vec<Member>, String> {
    let out = server.run_ok(&Cmd::read_script(MEMBERS_SCRIPT)).await.map_err(|e| e.to_string())?;
    parse(&out).ok_or_else(|| format!("{}: unexpected etcd member list from /db/info: {}", server.name, out.trim()))
}

/// Members from `/db/info` JSON; None when it is not a member list.
pub fn parse(json: &str) -> Option<Vec<Member>> {
    let v: Value = serde_json::from_str(json.trim()).ok()?;
    v.get("members")?
        .as_array()?
        .iter()
        .map(|m| {
            let url = m.pointer("/peerURLs/0")?.as_str()?;
            let hostport = url.split_once("://").map_or(url, |(_, r)| r);
            let host = match hostport.strip_prefix('[') {
                Some(v6) => v6.split_once(']')?.0,
                None => hostport.rsplit_once(':').map_or(hostport, |(h, _)| h),
            };
            let id = m.get("ID").and_then(Value::as_u64).unwrap_or_default();
            Some(Member { name: m.get("name")?.as_str()?.to_string(), host: host.to_string(), id })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_list_from_db_info() {
        let j = r#"{"members":[{"ID":1,"name":"node1-0a1b2c3d","peerURLs":["https://10.0.0.1:2380"],"clientURLs":["https://10.0.0.1:2379"]},
                   {"ID":2,"name":"node2-1","peerURLs":["https://[fd00::2]:2380"]}]}"#;
        let m = parse(j).expect("parses");
        assert_eq!(m[0], Member { name: "node1-0a1b2c3d".into(), host: "10.0.0.1".into(), id: 1 });
        assert_eq!(m[1].host, "fd00::2");
        assert!(parse("Unauthorized").is_none());
        assert_eq!((quorum(3), quorum(2), quorum(1)), (2, 2, 1));
    }
}
