//! Stops hosts with blocking preflight findings (see `check`, and `storage` for the hosts'
//! data disks) before anything changes.

use futures::future::BoxFuture;

use crate::check;
use crate::fleet::Fleet;

pub fn run(fleet: &Fleet) -> BoxFuture<'_, ()> {
    Box::pin(async move {
        let findings = check::with_storage(fleet).await;
        for f in check::blocking(&findings) {
            if let Some(node) = fleet.nodes.iter().find(|n| n.name() == f.host) {
                if node.host.is_some() {
                    node.fail(format!("preflight: {} (fix: {})", f.message, f.fix));
                }
            }
        }
    })
}
