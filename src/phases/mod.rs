//! The phases of `pikube up`, in order. `plan` runs the same list in dry-run mode, so what it
//! prints is exactly what `up` would do: every mutation goes through `remote::Host::apply`
//! (or `ensure_file`), which only records it when planning.

mod preflight;
mod prepare_host;
mod reboot;
mod verify;

use futures::future::BoxFuture;

use crate::fleet::Fleet;
use crate::remote::Mode;

pub struct Phase {
    pub name: &'static str,
    /// Whether the phase also runs in plan mode (verification needs the changes made).
    pub in_plan: bool,
    pub run: for<'a> fn(&'a Fleet) -> BoxFuture<'a, ()>,
}

/// Every phase, in execution order. The one place that lists them.
pub const PHASES: &[Phase] = &[
    Phase { name: "preflight", in_plan: true, run: preflight::run },
    Phase { name: "prepare hosts", in_plan: true, run: prepare_host::run },
    Phase { name: "reboot", in_plan: true, run: reboot::run },
    Phase { name: "verify", in_plan: false, run: verify::run },
];

/// Runs all phases over the fleet. Hosts that fail drop out; the others go on.
pub async fn run_all(fleet: &Fleet) {
    for phase in PHASES {
        if fleet.mode == Mode::DryRun && !phase.in_plan {
            continue;
        }
        if fleet.mode == Mode::Apply {
            eprintln!("==> {}", phase.name);
        }
        for n in fleet.nodes.iter().filter(|n| n.ok()) {
            if let Some(h) = &n.host {
                h.set_phase(phase.name);
            }
        }
        (phase.run)(fleet).await;
    }
}
