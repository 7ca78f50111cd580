//! kubeadm's half of `pikube backup` and `pikube restore`. A snapshot is `etcdctl snapshot
//! save` in a server's etcd static pod, written into etcd's data dir (a hostPath, the one
//! place in that pod the host can read) and taken from there; with it go the cluster's shared
//! PKI (what `kubeadm join --control-plane` copies between servers), so a backup also says
//! which cluster it belongs to. A restore follows etcd's disaster-recovery guide: the control
//! plane stops on every server (kubeadm's static pod manifests moved aside), each member is
//! restored from the same snapshot with `etcdutl` into a fresh data dir with the same
//! `--initial-cluster`, the old data dir is kept aside, and the manifests go back.

use std::time::Duration;

use super::etcd::etcdctl;
use crate::backup::BackupError;
use crate::fleet::Node;
use crate::remote::{quote, Cmd, Host};

/// The cluster's shared keys and certificates under /etc/kubernetes/pki (kubeadm's
/// `--upload-certs` set without the external-etcd client files): the cluster CA, the
/// service-account key pair, the front-proxy CA and the etcd CA.
pub const PKI_FILES: [&str; 8] =
    ["ca.crt", "ca.key", "sa.key", "sa.pub", "front-proxy-ca.crt", "front-proxy-ca.key", "etcd/ca.crt", "etcd/ca.key"];
pub const PKI: &str = "/etc/kubernetes/pki";
pub const MANIFESTS: &str = "/etc/kubernetes/manifests";
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

/// The etcd pod of a server, from its manifest.
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
    let cmd = Cmd::change_script(etcdctl(node.name(), &format!("snapshot save {}", quote(&path))))
        .timeout(Duration::from_secs(600));
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
