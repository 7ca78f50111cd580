//! Pushes the pinned, checksum-verified k3s binary to every server and agent over SSH, once:
//! a node whose binary already has the right checksum is skipped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;

use crate::artifacts::{self, K3sBinary};
use crate::config::Role;
use crate::fleet::{Fleet, Node};
use crate::k3s::{BIN, LINKS};
use crate::remote::{quote, Cmd, Host, Mode};

type Loaded = Result<(K3sBinary, Arc<Vec<u8>>), String>;

pub fn run<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        let Some(version) = fleet.cluster.version() else { return };
        crate::backup::before_upgrade(fleet).await;
        let arches: Vec<_> = fleet
            .nodes
            .iter()
            .filter(|n| n.ok() && n.role() != Role::Loadbalancer)
            .filter_map(|n| n.facts().map(|f| f.arch))
            .collect();
        // Each architecture's binary is found (or downloaded) and verified once, then shared.
        let mut binaries: BTreeMap<String, Loaded> = BTreeMap::new();
        for arch in arches {
            binaries.entry(arch.as_str().to_string()).or_insert_with(|| {
                tokio::task::block_in_place(|| {
                    let (bin, bytes) = artifacts::binary_for(&fleet.cluster, version, &arch, false)
                        .map_err(|e| format!("k3s {version} for {}: {e}\n  hint: {}", arch.as_str(), e.hint()))?;
                    Ok((bin, Arc::new(bytes)))
                })
            });
        }
        let binaries = &binaries;
        fleet
            .each(move |node: &'a Node, host: &'a Host| async move {
                if node.role() == Role::Loadbalancer {
                    return Ok(());
                }
                let arch = node.facts().ok_or("no facts gathered")?.arch;
                let (bin, bytes) = binaries.get(arch.as_str()).ok_or("no binary for this architecture")?.clone()?;
                push(fleet, node, host, version, &bin, &bytes).await
            })
            .await;
    })
}

async fn push(
    fleet: &Fleet,
    node: &Node,
    host: &Host,
    version: &str,
    bin: &K3sBinary,
    bytes: &[u8],
) -> Result<(), String> {
    let have = host.file_state(BIN).await.map_err(|e| e.to_string())?;
    let pushing = have.sha256 != bin.sha256;
    let (started, mib) = (Instant::now(), bin.size as f64 / 1048576.0);
    if pushing && fleet.mode == Mode::Apply {
        crate::progress::step(node.name(), &format!("pushing k3s {version} ({mib:.1} MiB) …"));
    }
    // Also run when the checksum matches: the mode may be off (a binary copied by hand).
    // The checksums are known already: neither side hashes the binary again.
    host.ensure_file_from(BIN, bytes, &bin.sha256, Some(0o755), &have).await.map_err(|e| e.to_string())?;
    if pushing {
        node.k3s_binary_changed.store(true, std::sync::atomic::Ordering::SeqCst);
        if fleet.mode == Mode::Apply {
            let secs = started.elapsed().as_secs_f64();
            crate::progress::step(node.name(), &format!("pushed in {secs:.1}s ({:.1} MiB/s)", mib / secs.max(0.001)));
        }
    }
    // install.sh's rule: link only when the command is neither there nor elsewhere on PATH,
    // so a distro kubectl is not shadowed.
    for link in LINKS {
        let path = format!("/usr/local/bin/{link}");
        let probe = Cmd::read_script(format!(
            "{{ [ -e {p} ] || [ -L {p} ] || command -v {l} >/dev/null 2>&1; }} && echo present || true",
            p = quote(&path),
            l = quote(link)
        ));
        if host.run_ok(&probe).await.map_err(|e| e.to_string())?.trim() != "present" {
            host.apply(format!("link {path} → k3s"), &Cmd::change("ln", &["-s", "k3s", &path]))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    if fleet.mode == Mode::Apply {
        let out = host.run_ok(&Cmd::read_script(format!("{BIN} --version"))).await.map_err(|e| e.to_string())?;
        if !out.contains(version) {
            return Err(format!(
                "the k3s binary reports {:?}, but the cluster file pins {version}\n  hint: the artifact files are from another release; use the files of {version}",
                out.lines().next().unwrap_or("").trim()
            ));
        }
    }
    Ok(())
}
