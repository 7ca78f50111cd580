//! Cluster hooks: manifests from the hooks directory applied on a server at cluster
//! milestones. `post-master-up` runs once the servers are up and before agents join;
//! `pre-master-down` before `pikube down` tears the cluster down. A distribution's own file
//! (`k3s-post-master-up.yml`, `k8s-post-master-up.yml` for kubeadm) wins over the generic
//! one (`post-master-up.yml`), except that kubeadm's `down` runs both (see `pre_master_down`).
//! A manifest is applied again only when its content changed since the last apply.

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
        let Some(file) = hook_file(&fleet.cluster, "post-master-up") else { return };
        let Some((node, api)) = fleet.healthy(Role::Server).next() else { return };
        if let Err(e) = apply_hook(&fleet.cluster, api, "post-master-up", &file, true).await {
            node.fail(e);
        }
    })
}

/// Applies the pre-master-down manifests (always: teardown is not idempotent). kubeadm runs
/// both files, `pre-master-down.yml` and then `k8s-pre-master-down.yml` (the order issue 9
/// asks for: the distribution's own teardown last); k3s only the first found, as for
/// post-master-up.
pub async fn pre_master_down(cluster: &Cluster, api: &Host) -> Result<(), String> {
    let files = match cluster.distribution() {
        Distribution::K3s => hook_file(cluster, "pre-master-down").into_iter().collect(),
        Distribution::Kubeadm => {
            let own = distro::hook_prefix(Distribution::Kubeadm);
            let names = |n: &str| [format!("{n}.yml"), format!("{n}.yaml")];
            [names("pre-master-down"), names(&format!("{own}-pre-master-down"))]
                .iter()
                .filter_map(|n| first_file(cluster, n))
                .collect::<Vec<_>>()
        }
    };
    for file in files {
        apply_hook(cluster, api, "pre-master-down", &file, false).await?;
    }
    Ok(())
}

fn hook_file(cluster: &Cluster, hook: &str) -> Option<PathBuf> {
    let own = distro::hook_prefix(cluster.distribution());
    first_file(
        cluster,
        &[format!("{own}-{hook}.yml"), format!("{hook}.yml"), format!("{own}-{hook}.yaml"), format!("{hook}.yaml")],
    )
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
    let marker = format!("{APPLIED_DIR}/{hook}.sha256");
    if only_when_changed {
        let have = api
            .run_ok(&Cmd::read_script(format!("cat {marker} 2>/dev/null || true")))
            .await
            .map_err(|e| e.to_string())?;
        if have.trim() == sum {
            return Ok(());
        }
    }
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or(hook);
    let kubectl = distro::kubectl(cluster.distribution());
    let cmd = Cmd::change_script(format!("{kubectl} apply -f -")).stdin(manifest);
    api.apply(format!("apply {hook} hook {name}"), &cmd)
        .await
        .map_err(|e| format!("hook {} failed: {e}", file.display()))?;
    api.ensure_file(&marker, format!("{sum}\n").as_bytes(), Some(0o644)).await.map_err(|e| e.to_string())?;
    Ok(())
}
