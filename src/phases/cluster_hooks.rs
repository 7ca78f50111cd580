//! Cluster hooks: manifests from the hooks directory applied on a server at cluster
//! milestones. `post-master-up` runs once the servers are up and before agents join;
//! `pre-master-down` before `pikube down` tears the cluster down. A k3s-specific file
//! (`k3s-post-master-up.yml`) wins over the generic one (`post-master-up.yml`).
//! A manifest is applied again only when its content changed since the last apply.

use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use crate::config::{Cluster, Role};
use crate::fleet::Fleet;
use crate::k3s::BIN;
use crate::remote::{Cmd, Host};

/// Where each hook's last applied checksum is kept on the server (`down` removes it).
pub const APPLIED_DIR: &str = "/var/lib/pikube/hooks";

pub fn post_master_up<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        let Some(file) = hook_file(&fleet.cluster, "post-master-up") else { return };
        let Some((node, api)) = fleet.healthy(Role::Server).next() else { return };
        if let Err(e) = apply_hook(api, "post-master-up", &file, true).await {
            node.fail(e);
        }
    })
}

/// Applies the pre-master-down manifests (always: teardown is not idempotent).
pub async fn pre_master_down(cluster: &Cluster, api: &Host) -> Result<(), String> {
    let Some(file) = hook_file(cluster, "pre-master-down") else { return Ok(()) };
    apply_hook(api, "pre-master-down", &file, false).await
}

fn hook_file(cluster: &Cluster, hook: &str) -> Option<PathBuf> {
    let dir = cluster.spec.hooks.dir.as_ref().map_or("hooks", |d| d.value.as_str());
    let dir = cluster.resolve_path(Path::new(dir));
    [format!("k3s-{hook}.yml"), format!("{hook}.yml"), format!("k3s-{hook}.yaml"), format!("{hook}.yaml")]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

async fn apply_hook(api: &Host, hook: &str, file: &Path, only_when_changed: bool) -> Result<(), String> {
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
    let cmd = Cmd::change_script(format!("{BIN} kubectl apply -f -")).stdin(manifest);
    api.apply(format!("apply {hook} hook {name}"), &cmd)
        .await
        .map_err(|e| format!("hook {} failed: {e}", file.display()))?;
    api.ensure_file(&marker, format!("{sum}\n").as_bytes(), Some(0o644)).await.map_err(|e| e.to_string())?;
    Ok(())
}
