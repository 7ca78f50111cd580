//! k3s behind the seam: one binary that embeds containerd, flannel and the control plane.
//! The work itself stays in `crate::k3s` and the `k3s_*` phase modules.

use futures::future::BoxFuture;

use crate::fleet::Fleet;
use crate::phases::{k3s_agents, k3s_artifacts, k3s_servers};

pub const KUBECTL: &str = "/usr/local/bin/k3s kubectl";

pub fn artifacts<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    k3s_artifacts::run(fleet)
}

pub fn servers<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    k3s_servers::run(fleet)
}

pub fn agents<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    k3s_agents::run(fleet)
}
