//! Fetches the admin kubeconfig from a server and writes `build/<cluster>-config.yml` (0600)
//! pointing at the cluster's endpoint.

use futures::future::BoxFuture;

use crate::config::{Cluster, Role};
use crate::fleet::Fleet;
use crate::k3s;
use crate::kubeconfig;
use crate::remote::{Cmd, Host};

pub fn run<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        let Some((node, api)) = fleet.healthy(Role::Server).next() else { return };
        match write_local(&fleet.cluster, api, None).await {
            Ok((path, changed)) => {
                let verb = if changed { "wrote" } else { "unchanged:" };
                eprintln!("    {verb} {}", path.display());
            }
            Err(e) => node.fail(e),
        }
    })
}

/// Writes the kubeconfig to `to` (default `build/<cluster>-config.yml`); returns the path
/// and whether the file changed.
pub async fn write_local(cluster: &Cluster, api: &Host, to: Option<&std::path::Path>) -> Result<(std::path::PathBuf, bool), String> {
    let remote = api
        .run_ok(&Cmd::read_script(format!("cat {}", k3s::REMOTE_KUBECONFIG)))
        .await
        .map_err(|e| format!("cannot read the server's kubeconfig: {e}"))?;
    let doc = kubeconfig::from_k3s(&remote, cluster.name(), &cluster.endpoint().url())?;
    let path = to.map(std::path::Path::to_path_buf).unwrap_or_else(|| cluster.kubeconfig_path());
    let existing = std::fs::read_to_string(&path).ok();
    let merged = match to {
        // An explicit target (e.g. ~/.kube/config) is merged into, never replaced.
        Some(_) => kubeconfig::merge(existing.as_deref().map(kubeconfig::parse).transpose()?, &doc),
        None => doc,
    };
    let text = kubeconfig::to_yaml(&merged)?;
    if existing.as_deref() == Some(text.as_str()) {
        return Ok((path, false));
    }
    crate::local::write_secret(&path, text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok((path, true))
}
