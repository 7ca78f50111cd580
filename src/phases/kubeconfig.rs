//! Fetches the admin kubeconfig from a server and writes `build/<cluster>-config.yml` (0600)
//! pointing at the cluster's endpoint.

use std::path::{Path, PathBuf};

use futures::future::BoxFuture;

use crate::config::{Cluster, Role};
use crate::distro;
use crate::fleet::Fleet;
use crate::kubeconfig;
use crate::remote::{Cmd, Host};

pub fn run<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        let Some((node, api)) = fleet.healthy(Role::Server).next() else {
            return;
        };
        match write_local(&fleet.cluster, api, None).await {
            Ok((path, changed)) => {
                let verb = if changed { "wrote" } else { "unchanged:" };
                crate::progress::note(&format!("{verb} {}", path.display()));
            }
            Err(e) => node.fail(e),
        }
    })
}

/// Writes the kubeconfig to `to` (default `build/<cluster>-config.yml`); returns the path
/// and whether the file changed.
pub async fn write_local(cluster: &Cluster, api: &Host, to: Option<&Path>) -> Result<(PathBuf, bool), String> {
    let remote = api
        .run_ok(&Cmd::read_script(format!("cat {}", distro::admin_kubeconfig(cluster.distribution()))))
        .await
        .map_err(|e| format!("cannot read the server's kubeconfig: {e}"))?;
    let doc = kubeconfig::from_k3s(&remote, &api.name, cluster.name(), &cluster.endpoint().url())
        .map_err(|e| e.to_string())?;
    match to {
        // An explicit target (e.g. ~/.kube/config) is merged into, never replaced.
        Some(path) => kubeconfig::merge_into(path, &doc).map(|changed| (path.to_path_buf(), changed)),
        None => {
            let path = cluster.kubeconfig_path();
            // pikube's own file: whatever is there is replaced; reading it only spares a rewrite.
            let existing = std::fs::read_to_string(&path).ok();
            kubeconfig::write_if_changed(&path, existing.as_deref(), &doc).map(|changed| (path, changed))
        }
    }
    .map_err(|e| e.to_string())
}
