//! Cluster hooks: manifests from the hooks directory applied on a server at cluster
//! milestones. `post-master-up` runs once the servers are up and before agents join;
//! `pre-master-down` before `pikube down` tears the cluster down. For k3s its own file
//! (`k3s-post-master-up.yml`) wins over the generic one (`post-master-up.yml`). kubeadm runs
//! both, as the kubeadm write-ups pikube replaces did: `k8s-post-master-up.yml` before
//! `post-master-up.yml`, and on the way down `pre-master-down.yml` before
//! `k8s-pre-master-down.yml` (the distribution's own part first up, last down). A
//! post-master-up manifest is applied again only when its content changed since the last apply.

use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use crate::config::{Cluster, Distribution, Role};
use crate::distro;
use crate::fleet::Fleet;
use crate::remote::{Cmd, Host};

/// Where each hook's last applied checksum is kept on the server (`down` removes it).
pub const APPLIED_DIR: &str = "/var/lib/pikube/hooks";

pub fn post_master_up<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        let files = hook_files(&fleet.cluster, "post-master-up");
        let Some((node, api)) = fleet.healthy(Role::Server).next().filter(|_| !files.is_empty()) else { return };
        for file in files {
            if let Err(e) = apply_hook(&fleet.cluster, api, "post-master-up", &file, true).await {
                return node.fail(e);
            }
        }
    })
}

/// Applies the pre-master-down manifests (always: teardown is not idempotent).
pub async fn pre_master_down(cluster: &Cluster, api: &Host) -> Result<(), String> {
    for file in hook_files(cluster, "pre-master-down") {
        apply_hook(cluster, api, "pre-master-down", &file, false).await?;
    }
    Ok(())
}

/// The manifests of `hook` to apply, in order (see the module's comment).
fn hook_files(cluster: &Cluster, hook: &str) -> Vec<PathBuf> {
    let own = distro::hook_prefix(cluster.distribution());
    let names = |n: &str| [format!("{n}.yml"), format!("{n}.yaml")];
    let (generic, own) = (names(hook), names(&format!("{own}-{hook}")));
    match cluster.distribution() {
        Distribution::K3s => first_file(cluster, &[own, generic].concat()).into_iter().collect(),
        Distribution::Kubeadm => {
            let order = if hook == "pre-master-down" { [generic, own] } else { [own, generic] };
            order.iter().filter_map(|n| first_file(cluster, n)).collect()
        }
    }
}

/// The first of `names` in the hooks directory that is a file.
fn first_file(cluster: &Cluster, names: &[String]) -> Option<PathBuf> {
    let dir = cluster.spec.hooks.dir.as_ref().map_or("hooks", |d| d.value.as_str());
    let dir = cluster.resolve_path(Path::new(dir));
    names.iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

async fn apply_hook(
    cluster: &Cluster,
    api: &Host,
    hook: &str,
    file: &Path,
    only_when_changed: bool,
) -> Result<(), String> {
    let manifest = std::fs::read(file).map_err(|e| format!("cannot read hook {}: {e}", file.display()))?;
    let sum = hex::encode(Sha256::digest(&manifest));
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or(hook);
    let marker = format!("{APPLIED_DIR}/{name}.sha256");
    if only_when_changed {
        let have = api
            .run_ok(&Cmd::read_script(format!("cat {marker} 2>/dev/null || true")))
            .await
            .map_err(|e| e.to_string())?;
        if have.trim() == sum {
            return Ok(());
        }
    }
    let kubectl = distro::kubectl(cluster.distribution());
    let cmd = Cmd::change_script(format!("{kubectl} apply -f -")).stdin(manifest);
    api.apply(format!("apply {hook} hook {name}"), &cmd)
        .await
        .map_err(|e| format!("hook {} failed: {e}", file.display()))?;
    api.ensure_file(&marker, format!("{sum}\n").as_bytes(), Some(0o644)).await.map_err(|e| e.to_string())?;
    Ok(())
}
