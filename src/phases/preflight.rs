//! Stops hosts with blocking preflight findings (see `check`, and `storage` for the hosts'
//! data disks) before anything changes. A host with several is told all of them at once;
//! warnings about the pinned release are shown too.

use futures::future::BoxFuture;

use crate::check;
use crate::fleet::Fleet;

pub fn run(fleet: &Fleet) -> BoxFuture<'_, ()> {
    Box::pin(async move {
        let findings = check::with_storage(fleet).await;
        for f in check::release_warnings(&findings) {
            crate::progress::note(&format!("warning: {}: {} (fix: {})", f.host, f.message, f.fix));
        }
        for node in fleet.nodes.iter().filter(|n| n.host.is_some()) {
            let why: Vec<String> = check::blocking(&findings)
                .filter(|f| f.host == node.name())
                .map(|f| format!("preflight: {} (fix: {})", f.message, f.fix))
                .collect();
            if !why.is_empty() {
                node.fail(why.join("\n  "));
            }
        }
    })
}
