//! Reboots only the hosts whose changes need it, and waits until each is back (new boot id).

use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::facts;
use crate::fleet::{Fleet, Node};
use crate::remote::{Cmd, Host, Mode};
use crate::ssh::Session;

const POLL: Duration = Duration::from_secs(2);

pub fn run<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    Box::pin(fleet.each(move |node: &'a Node, host: &'a Host| async move {
        if !node.wants_reboot() {
            return Ok(());
        }
        let old_boot = node.facts().map(|f| f.boot_id).unwrap_or_default();
        // Detached with a delay so the SSH command returns before the connection drops.
        let cmd = Cmd::change_script("nohup sh -c 'sleep 1; systemctl reboot' >/dev/null 2>&1 &");
        host.apply("reboot to apply the kernel command line", &cmd).await.map_err(|e| e.to_string())?;
        if fleet.mode == Mode::DryRun {
            return Ok(());
        }
        let wait = format!("waiting for it to come back (up to {}s)", fleet.reboot_timeout.as_secs());
        crate::progress::step(node.name(), &wait);
        host.session().close().await;
        let started = Instant::now();
        loop {
            tokio::time::sleep(POLL).await;
            if started.elapsed() > fleet.reboot_timeout {
                return Err(format!(
                    "did not come back within {}s after reboot; check its console/power and re-run `pikube up`",
                    fleet.reboot_timeout.as_secs()
                ));
            }
            let Ok(session) = Session::connect(&node.target).await else { continue };
            host.replace_session(session);
            match facts::gather(host).await {
                Ok(f) if f.boot_id != old_boot => {
                    node.set_facts(f);
                    return Ok(());
                }
                // Still the old boot (reboot not started yet) or a half-up host: try again.
                _ => host.session().close().await,
            }
        }
    }))
}
