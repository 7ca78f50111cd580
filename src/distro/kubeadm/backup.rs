//! kubeadm's half of `pikube backup` and `pikube restore`. A snapshot is `etcdctl snapshot
//! save` in a server's etcd static pod, written into etcd's data dir (a hostPath, the one
//! place in that pod the host can read) and taken from there; with it go the cluster's shared
//! PKI (what `kubeadm join --control-plane` copies between servers), so a backup also says
//! which cluster it belongs to. A restore follows etcd's disaster-recovery guide: the control
//! plane stops on every server, each member is restored from the same snapshot with `etcdutl`
//! into a fresh data dir with the same `--initial-cluster`, the old data dir is kept aside, and
//! the control plane starts again. It is stopped by stopping kubelet and then its static pods'
//! processes, not by moving the manifests aside (kubeadm's usual way): kubelet would then see
//! the control plane's images unused, and on a nearly full SD card (disk pressure) it deletes
//! unused images at once — an air-gapped cluster could not start its control plane again.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::etcd::etcdctl;
use crate::backup::BackupError;
use crate::config::Role;
use crate::fleet::{Fleet, Node};
use crate::remote::{quote, Cmd, Host};

/// The cluster's shared keys and certificates under /etc/kubernetes/pki (kubeadm's
/// `--upload-certs` set without the external-etcd client files): the cluster CA, the
/// service-account key pair, the front-proxy CA and the etcd CA.
pub const PKI_FILES: [&str; 8] =
    ["ca.crt", "ca.key", "sa.key", "sa.pub", "front-proxy-ca.crt", "front-proxy-ca.key", "etcd/ca.crt", "etcd/ca.key"];
pub const PKI: &str = "/etc/kubernetes/pki";
pub const MANIFESTS: &str = "/etc/kubernetes/manifests";
/// The control plane's processes (`comm` names: the kernel cuts them at 15 characters).
pub(super) const CONTROL_PLANE: &str = "etcd|kube-apiserver|kube-controller|kube-scheduler";
/// What each server's etcd.yaml sets by default (kubeadm's defaults; read from the file).
const DATA_DIR: &str = "/var/lib/etcd";

/// The etcd member a server's static pod manifest describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdPod {
    pub name: String,
    pub peer_url: String,
    pub data_dir: String,
    pub image: String,
}

/// Reads `--name`, `--initial-advertise-peer-urls`, `--data-dir` and the image from kubeadm's
/// etcd.yaml.
pub fn parse_etcd_manifest(yaml: &str) -> Option<EtcdPod> {
    let flag = |name: &str| {
        yaml.lines().find_map(|l| l.trim().trim_start_matches("- ").strip_prefix(&format!("--{name}=")).map(str::trim))
    };
    let image = yaml.lines().find_map(|l| l.trim().strip_prefix("image:")).map(|s| s.trim().trim_matches('"'));
    Some(EtcdPod {
        name: flag("name")?.to_string(),
        peer_url: flag("initial-advertise-peer-urls")?.split(',').next()?.to_string(),
        data_dir: flag("data-dir").unwrap_or(DATA_DIR).to_string(),
        image: image?.to_string(),
    })
}

/// The etcd pod of a server, from its static pod manifest.
pub async fn etcd_pod(host: &Host) -> Result<EtcdPod, String> {
    let cmd = Cmd::read_script(format!("cat {MANIFESTS}/etcd.yaml"));
    let out = host.run(&cmd).await.map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!("{}: no {MANIFESTS}/etcd.yaml (not a kubeadm server with stacked etcd)", host.name));
    }
    parse_etcd_manifest(&out.stdout_str()).ok_or_else(|| {
        format!("{}: {MANIFESTS}/etcd.yaml lacks --name, --initial-advertise-peer-urls or image", host.name)
    })
}

/// Takes a snapshot on the first of `servers` whose etcd answers: `etcdctl snapshot save` in
/// its etcd pod into the data dir. Returns the server, the host path of the snapshot, and the
/// PKI files as (`pki/<path>`, bytes).
pub async fn save<'a>(
    servers: &[(&'a Node, &'a Host)],
    name: &str,
) -> Result<(&'a Node, &'a Host, String, Vec<(String, Vec<u8>)>), BackupError> {
    let mut failed = Vec::new();
    for &(node, host) in servers {
        match save_on(node, host, name).await {
            Ok(remote) => {
                let pki = read_pki(host).await.map_err(|e| BackupError::Remote(format!("{}: {e}", node.name())))?;
                return Ok((node, host, remote, pki));
            }
            Err(e) => failed.push(format!("{}: {e}", node.name())),
        }
    }
    Err(BackupError::Remote(format!("no server's etcd took a snapshot: {}", failed.join("; "))))
}

async fn save_on(node: &Node, host: &Host, name: &str) -> Result<String, String> {
    let pod = etcd_pod(host).await?;
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let path = format!("{}/{name}-{}-{secs}", pod.data_dir, node.name());
    let cmd = Cmd::change_script(etcdctl(&format!("snapshot save {}", quote(&path)))).timeout(Duration::from_secs(600));
    host.apply(format!("etcdctl snapshot save {path} (in etcd-{})", node.name()), &cmd)
        .await
        .map_err(|e| e.to_string())?;
    Ok(path)
}

/// The PKI files a restore needs (read as root; they are written 0600 here, never shown).
async fn read_pki(host: &Host) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut files = Vec::new();
    for f in PKI_FILES {
        let out = host.run(&Cmd::read_script(format!("cat {PKI}/{f}"))).await.map_err(|e| e.to_string())?;
        if !out.success() || out.stdout.is_empty() {
            return Err(format!("cannot read {PKI}/{f}: {}", out.stderr_str().trim()));
        }
        files.push((format!("pki/{f}"), out.stdout));
    }
    Ok(files)
}

/// The backup's files under `pki/` (what SHA256SUMS must list).
pub fn required_files() -> Vec<String> {
    PKI_FILES.iter().map(|f| format!("pki/{f}")).collect()
}

/// Where a restore puts the snapshot and etcdutl writes the restored data dir on each server.
const WORK: &str = "/var/lib/pikube-restore";
/// The container etcdutl runs in (with the etcd image of the server's own manifest).
const ETCDUTL_CONTAINER: &str = "pikube-etcdutl";
/// How far a restore moves etcd's revision on: clients (kube-apiserver's watch caches,
/// informers) that saw newer revisions than the snapshot's must not see old ones again;
/// etcd's recovery guide names this value. Objects keep their own revisions.
const BUMP_REVISION: u64 = 1_000_000_000;
/// How long the static pods may take to stop once their manifests are gone.
const STOP_TIMEOUT: Duration = Duration::from_secs(180);

/// What a kubeadm restore does, in order (printed before and while doing it).
pub fn restore_plan(servers: &[&str], agents: &[&str], backup: &crate::backup::Verified) -> Vec<String> {
    let all = servers.join(", ");
    let ready = match agents {
        [] => "wait until every node is Ready".to_string(),
        a => format!(
            "restart kubelet on {} (no state from before the restore); wait until every node is Ready",
            a.join(", ")
        ),
    };
    vec![
        format!("copy snapshot {} to {all}", backup.manifest.snapshot),
        format!("stop the control plane on {all}: kubelet (it would restart the static pods, or delete their images under disk pressure), then etcd, kube-apiserver, kube-controller-manager and kube-scheduler; wait until they exit"),
        format!("etcdutl snapshot restore on each of {all} into a fresh data dir, all with the same --initial-cluster (etcd's own image, through ctr; revision bumped by {BUMP_REVISION} and marked compacted)"),
        "on each server keep the old etcd data dir as <data dir>-old-<UTC time> and put the restored one in its place".to_string(),
        format!("start kubelet on {all} (it starts the control plane again); wait for the API and {} healthy etcd members", servers.len()),
        ready,
    ]
}

/// etcd's documented restore of a multi-member cluster, on every server of the kubeadm cluster.
pub async fn restore(
    fleet: &Fleet,
    backup: &crate::backup::Verified,
    servers: &[(&Node, &Host)],
    steps: &[String],
    say: &dyn Fn(usize, &str),
) -> Result<(), BackupError> {
    let r = BackupError::Remote;
    // Everything that can refuse does so before any server is touched.
    let mut pods = Vec::new();
    for (node, host) in servers {
        check_ca(node, host, backup).await?;
        pods.push(etcd_pod(host).await.map_err(r)?);
    }
    let initial_cluster: Vec<String> = pods.iter().map(|p| format!("{}={}", p.name, p.peer_url)).collect();
    let initial_cluster = initial_cluster.join(",");
    let stamp = crate::backup::stamp(crate::backup::now());
    let snapshot = format!("{WORK}/{}", backup.manifest.snapshot);

    say(1, &steps[0]);
    for (_, host) in servers {
        let mkdir = Cmd::change_script(format!("mkdir -p {WORK} && chmod 700 {WORK}"));
        host.apply(format!("create {WORK}"), &mkdir).await.map_err(remote)?;
        host.ensure_file(&snapshot, &backup.snapshot, Some(0o600)).await.map_err(remote)?;
    }
    say(2, &steps[1]);
    stop_control_plane(servers).await.map_err(r)?;
    say(3, &steps[2]);
    let token = format!("pikube-restore-{stamp}");
    for ((_, host), pod) in servers.iter().zip(&pods) {
        if let Err(e) = etcdutl_restore(host, pod, &snapshot, &initial_cluster, &token).await {
            // No data dir was swapped yet: the control plane comes back on its old data, and
            // the snapshot copies (every Secret of the cluster) go.
            for (_, host) in servers {
                let _ = host.apply(format!("remove {WORK}"), &Cmd::change("rm", &["-rf", WORK])).await;
            }
            let now = match start_kubelets(servers).await {
                Ok(()) => "nothing was restored; the control plane was started again on its old data".to_string(),
                Err(b) => format!("nothing was restored, and starting kubelet again failed too: {b}"),
            };
            return Err(r(format!("{e}\n  {now}")));
        }
    }
    say(4, &steps[3]);
    for ((node, host), pod) in servers.iter().zip(&pods) {
        let old = swap_data_dir(host, pod, &stamp, &snapshot).await.map_err(|e| r(format!("{}: {e}", node.name())))?;
        say(0, &format!("{}: old etcd data kept in {old}", node.name()));
    }
    say(5, &steps[4]);
    start_kubelets(servers).await.map_err(r)?;
    let (first, api) = servers[0];
    super::bringup::wait_for_api(api, fleet.ready_timeout).await.map_err(|e| r(format!("{}: {e}", first.name())))?;
    wait_members_healthy(api, servers.len(), fleet.ready_timeout).await.map_err(r)?;
    say(6, &steps[5]);
    restart_agents(fleet).await?;
    wait_all_ready(fleet, api).await.map_err(r)
}

fn remote(e: crate::remote::RemoteError) -> BackupError {
    BackupError::Remote(e.to_string())
}

/// The restored etcd holds Secrets, tokens and certificates of the backup's cluster: its CA
/// must be this cluster's.
async fn check_ca(node: &Node, host: &Host, backup: &crate::backup::Verified) -> Result<(), BackupError> {
    let want = backup.files.get("pki/ca.crt").map(|c| hex::encode(Sha256::digest(c))).unwrap_or_default();
    let have = host
        .run_ok(&Cmd::read_script(format!("sha256sum {PKI}/ca.crt 2>/dev/null | cut -d' ' -f1")))
        .await
        .map_err(remote)?;
    if have.trim() != want {
        return Err(BackupError::OtherCa { server: node.name().to_string(), pki: PKI });
    }
    Ok(())
}

/// Stops kubelet, then the control plane's processes (SIGTERM; SIGKILL after 20s: etcd's old
/// data is set aside anyway), on all servers at once, and waits until they have exited, so
/// nothing writes to a data dir any more. Their containers stay (exited): kubelet starts them
/// again when it starts.
async fn stop_control_plane(servers: &[(&Node, &Host)]) -> Result<(), String> {
    let signal = |sig: &str| Cmd::change_script(format!("pkill -{sig} -x '{CONTROL_PLANE}' || true"));
    for (node, host) in servers {
        let stop = Cmd::change("systemctl", &["stop", "kubelet"]);
        host.apply(format!("stop kubelet on {}", node.name()), &stop).await.map_err(|e| e.to_string())?;
        host.apply(format!("stop the control plane on {} (SIGTERM)", node.name()), &signal("TERM"))
            .await
            .map_err(|e| e.to_string())?;
    }
    let probe = Cmd::read_script(format!("pgrep -x '{CONTROL_PLANE}' || true"));
    let started = std::time::Instant::now();
    for (node, host) in servers {
        let mut killed = false;
        loop {
            let left = host.run_ok(&probe).await.map_err(|e| e.to_string())?;
            if left.trim().is_empty() {
                break;
            }
            if !killed && started.elapsed() > Duration::from_secs(20) {
                let what = format!("the control plane on {} still runs after 20s: SIGKILL", node.name());
                host.apply(what, &signal("KILL")).await.map_err(|e| e.to_string())?;
                killed = true;
            }
            if started.elapsed() > STOP_TIMEOUT {
                return Err(format!(
                    "{}: the control plane still runs {}s after kubelet stopped (pids {}); kubelet is stopped on every server",
                    node.name(),
                    STOP_TIMEOUT.as_secs(),
                    left.split_whitespace().collect::<Vec<_>>().join(" ")
                ));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Ok(())
}

/// `etcdutl snapshot restore` into `WORK/etcd` (a fresh directory: etcdutl refuses an existing
/// one), run with the server's own etcd image through containerd's ctr, which has only `WORK`
/// mounted: the live data dir is out of its reach.
async fn etcdutl_restore(
    host: &Host,
    pod: &EtcdPod,
    snapshot: &str,
    initial_cluster: &str,
    token: &str,
) -> Result<(), String> {
    let args = [
        "etcdutl snapshot restore".to_string(),
        quote(snapshot),
        format!("--name {}", quote(&pod.name)),
        format!("--initial-cluster {}", quote(initial_cluster)),
        format!("--initial-cluster-token {}", quote(token)),
        format!("--initial-advertise-peer-urls {}", quote(&pod.peer_url)),
        format!("--data-dir {WORK}/etcd"),
        format!("--bump-revision {BUMP_REVISION} --mark-compacted"),
    ]
    .join(" ");
    // `WORK/etcd` can only be what an earlier, failed restore left there.
    let script = format!(
        "set -e; c={ETCDUTL_CONTAINER}; rm -rf {WORK}/etcd; \
         ctr -n k8s.io tasks kill -s KILL $c >/dev/null 2>&1 || true; ctr -n k8s.io containers rm $c >/dev/null 2>&1 || true; \
         ctr -n k8s.io run --rm --mount type=bind,src={WORK},dst={WORK},options=rbind:rw {image} $c {args} 2>&1",
        image = quote(&pod.image),
    );
    let what = format!("etcdutl snapshot restore --name {} into {WORK}/etcd", pod.name);
    host.apply(what, &Cmd::change_script(script).timeout(Duration::from_secs(600))).await.map_err(|e| e.to_string())
}

/// Keeps the old data dir as `<data dir>-old-<stamp>` and renames the restored one into its
/// place (kubeadm's etcd.yaml stays as it is); returns where the old data is.
async fn swap_data_dir(host: &Host, pod: &EtcdPod, stamp: &str, snapshot: &str) -> Result<String, String> {
    let (dir, old) = (quote(&pod.data_dir), format!("{}-old-{stamp}", pod.data_dir));
    let script = format!(
        "set -e; if [ -e {dir} ]; then mv {dir} {o}; fi; mv {WORK}/etcd {dir}; rm -f {s}; rmdir {WORK}",
        o = quote(&old),
        s = quote(snapshot)
    );
    let what = format!("keep {} as {old}; the restored data dir takes its place", pod.data_dir);
    host.apply(what, &Cmd::change_script(script)).await.map_err(|e| e.to_string())?;
    Ok(old)
}

/// Starts kubelet on every server: it starts the control plane's containers again.
async fn start_kubelets(servers: &[(&Node, &Host)]) -> Result<(), String> {
    for (node, host) in servers {
        let what = format!("start kubelet on {}", node.name());
        host.apply(what, &Cmd::change("systemctl", &["start", "kubelet"]))
            .await
            .map_err(|e| format!("{}: {e}", node.name()))?;
    }
    Ok(())
}

/// Polls etcd (through the first server's etcd container) until all `want` members report healthy.
async fn wait_members_healthy(api: &Host, want: usize, timeout: Duration) -> Result<(), String> {
    let probe = Cmd::read_script(etcdctl("endpoint health --cluster -w json")).timeout(Duration::from_secs(30));
    let started = std::time::Instant::now();
    loop {
        let out = api.run(&probe).await.map_err(|e| e.to_string())?;
        let healthy = serde_json::from_str::<serde_json::Value>(out.stdout_str().trim())
            .ok()
            .and_then(|v| v.as_array().map(|a| a.iter().filter(|m| m["health"] == true).count()))
            .unwrap_or(0);
        if healthy == want {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(format!(
                "{healthy} of {want} etcd members healthy after {}s: {}{}",
                timeout.as_secs(),
                out.stdout_str().trim(),
                out.stderr_str().trim()
            ));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// Restarts kubelet on the agents (Kubernetes' restore guide: components must not keep state
/// read before the restore; the servers' kubelets were stopped throughout).
async fn restart_agents(fleet: &Fleet) -> Result<(), BackupError> {
    for node in fleet.nodes.iter().filter(|n| n.role() == Role::Agent && n.ok()) {
        let Some(host) = &node.host else { continue };
        host.apply(format!("restart kubelet on {}", node.name()), &Cmd::change("systemctl", &["restart", "kubelet"]))
            .await
            .map_err(remote)?;
    }
    Ok(())
}

/// Waits until the API lists every server and agent Ready with kubelet active.
async fn wait_all_ready(fleet: &Fleet, api: &Host) -> Result<(), String> {
    let d = fleet.cluster.distribution();
    let members: Vec<&Node> = fleet.nodes.iter().filter(|n| n.role() != Role::Loadbalancer).collect();
    let started = std::time::Instant::now();
    loop {
        let status = crate::distro::nodes(d, api).await.unwrap_or_default();
        let mut pending = Vec::new();
        for n in &members {
            let active = match &n.host {
                Some(h) => crate::distro::unit_active(d, h, n.role()).await.unwrap_or(false),
                None => false,
            };
            if !active || !status.get(n.name()).is_some_and(|s| s.ready) {
                pending.push(n.name());
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if started.elapsed() > fleet.ready_timeout {
            return Err(format!("not Ready after {}s: {}", fleet.ready_timeout.as_secs(), pending.join(", ")));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_etcd_manifest_gives_name_peer_url_data_dir_and_image() {
        let yaml =
            "spec:\n  containers:\n  - command:\n    - etcd\n    - --advertise-client-urls=https://10.0.0.1:2379\n    \
                    - --data-dir=/var/lib/etcd\n    - --initial-advertise-peer-urls=https://10.0.0.1:2380\n    \
                    - --initial-cluster=rasp01=https://10.0.0.1:2380\n    - --name=rasp01\n    \
                    image: registry.k8s.io/etcd:3.6.5-0\n";
        let pod = parse_etcd_manifest(yaml).expect("parses");
        assert_eq!(
            pod,
            EtcdPod {
                name: "rasp01".into(),
                peer_url: "https://10.0.0.1:2380".into(),
                data_dir: "/var/lib/etcd".into(),
                image: "registry.k8s.io/etcd:3.6.5-0".into(),
            }
        );
        assert!(parse_etcd_manifest("image: x\n").is_none());
    }
}
