//! Verifies from live facts that host preparation is live — not just written to disk:
//! hostname, no swap now or at boot, memory cgroup enabled in the running kernel, modules,
//! sysctls. A host this run changed anything on (or rebooted) is asked again; on a host with
//! no change the facts gathered at the start of the run are still its live state, so they
//! are checked as they are, which saves a round trip per host on a no-op run.

use futures::future::BoxFuture;

use crate::facts::{self, HostFacts, MODULES, SYSCTLS};
use crate::fleet::{Fleet, Node};
use crate::remote::Host;

pub fn run<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    Box::pin(fleet.each(move |node: &'a Node, host: &'a Host| async move {
        let changed = fleet.journal.changes().iter().any(|c| c.host == node.name());
        let f = match node.facts() {
            Some(f) if !changed => f,
            _ => facts::gather(host).await.map_err(|e| e.to_string())?,
        };
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
        p.push(memory_cgroup_problem(f));
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

/// Why the memory cgroup is still off after pikube's reboot, and what fixes it.
fn memory_cgroup_problem(f: &HostFacts) -> String {
    let (true, Some(dir)) = (f.is_pi(), &f.boot_dir) else {
        return "memory cgroup disabled: add cgroup_enable=memory to the kernel command line (GRUB) and reboot".into();
    };
    let has_flag = |line: &str| line.split_whitespace().any(|w| w == "cgroup_enable=memory");
    if f.cmdline_txt.as_deref().is_some_and(has_flag) && !has_flag(&f.kernel_cmdline) {
        // pikube's edit is on disk but the kernel did not get it: the firmware read another file.
        format!(
            "memory cgroup still disabled after reboot: {dir}/cmdline.txt has cgroup_enable=memory but the kernel \
             did not boot with it, so the firmware reads another file; look for a `cmdline=` line in \
             {dir}/config.txt and put the flags in the file it names (or remove the line), then run up again"
        )
    } else {
        format!(
            "memory cgroup still disabled after reboot: the kernel command line (/proc/cmdline) needs \
             cgroup_enable=memory and no later cgroup_disable=memory; check {dir}/cmdline.txt is the one the firmware reads"
        )
    }
}
