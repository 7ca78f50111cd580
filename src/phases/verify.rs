//! Verifies from fresh facts that host preparation is live — not just written to disk:
//! hostname, no swap now or at boot, memory cgroup enabled in the running kernel, modules,
//! sysctls.

use futures::future::BoxFuture;

use crate::facts::{self, HostFacts, MODULES, SYSCTLS};
use crate::remote::Host;
use crate::fleet::{Fleet, Node};

pub fn run<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    Box::pin(fleet.each(move |node: &'a Node, host: &'a Host| async move {
        let f = facts::gather(host).await.map_err(|e| e.to_string())?;
        let problems = problems(node.name(), &f);
        node.set_facts(f);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("verification failed: {}", problems.join("; ")))
        }
    }))
}

fn problems(name: &str, f: &HostFacts) -> Vec<String> {
    let mut p = Vec::new();
    if f.hostname != name {
        p.push(format!("hostname is {:?}, not {name:?}", f.hostname));
    }
    if f.swap.any() {
        p.push(format!("swap still on ({:?})", f.swap));
    }
    if !f.memory_cgroup {
        p.push(if f.is_pi() {
            "memory cgroup still disabled after reboot: check cmdline.txt is the one the firmware reads".to_string()
        } else {
            "memory cgroup disabled: add cgroup_enable=memory to the kernel command line (GRUB) and reboot".to_string()
        });
    }
    for m in MODULES.iter().filter(|m| !f.modules_loaded.iter().any(|l| l == *m)) {
        p.push(format!("kernel module {m} not loaded"));
    }
    for (k, v) in SYSCTLS {
        if f.sysctl.get(k).map(String::as_str) != Some(v) {
            p.push(format!("sysctl {k} is {:?}, want {v}", f.sysctl.get(k)));
        }
    }
    p
}
