//! The container runtime for kubeadm nodes: containerd, runc and the CNI plugins from the
//! hosts' own packages (Debian, Raspberry Pi OS and Ubuntu all ship them), configured by
//! pikube, plus the release's images from the airgap directory when it has an archive.

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::artifacts;
use super::render;
use crate::config::Role;
use crate::facts::HostFacts;
use crate::fleet::{Fleet, Node};
use crate::remote::{quote, Cmd, Host, Mode, RemoteError};

const PACKAGES: [&str; 3] = ["containerd", "containernetworking-plugins", "iptables"];
const CONFIG: &str = "/etc/containerd/config.toml";
const PROXY_DROPIN: &str = "/etc/systemd/system/containerd.service.d/pikube-proxy.conf";
const IMAGES_DIR: &str = "/var/lib/pikube/images";
/// Where Debian's containernetworking-plugins live; kubelet and flannel expect /opt/cni/bin.
const DISTRO_CNI_DIR: &str = "/usr/lib/cni";

pub fn container_runtime<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        let Some(version) = fleet.cluster.version() else { return };
        fleet
            .each(move |node: &'a Node, host: &'a Host| async move {
                if node.role() == Role::Loadbalancer {
                    return Ok(());
                }
                let facts = node.facts().ok_or("no facts gathered")?;
                let e = |e: RemoteError| e.to_string();
                let missing: Vec<&str> =
                    PACKAGES.iter().copied().filter(|p| !facts.packages.iter().any(|i| i == p)).collect();
                if !missing.is_empty() {
                    crate::phases::install_package(host, &missing.join(" ")).await?;
                }
                let mut changed = !missing.is_empty();
                changed |= configure(fleet, host, version, &facts).await?;
                link_cni_plugins(host).await.map_err(e)?;
                let state = facts.services.get("containerd").cloned().unwrap_or_default();
                crate::phases::ensure_running(host, "containerd", changed, &state).await?;
                if let Some(archive) = artifacts::image_archive(&fleet.cluster, version, &facts.arch) {
                    import_images(fleet, host, &archive).await?;
                }
                Ok(())
            })
            .await;
    })
}

/// Writes containerd's files; returns whether any changed (containerd must restart).
async fn configure(fleet: &Fleet, host: &Host, version: &str, facts: &HostFacts) -> Result<bool, String> {
    let e = |e: RemoteError| e.to_string();
    let pause = sandbox_image(fleet, host, version).await?;
    let config = render::containerd_config(&pause, !facts.can_lower_oom_score);
    let mut changed = host.ensure_file(CONFIG, config.as_bytes(), Some(0o644)).await.map_err(e)?;
    for (path, text) in render::registry_hosts(&fleet.cluster) {
        changed |= host.ensure_file(&path, text.as_bytes(), Some(0o644)).await.map_err(e)?;
    }
    match render::containerd_proxy_env(&fleet.cluster) {
        Some(env) => {
            changed |= host.ensure_file(render::CONTAINERD_PROXY_ENV, env.as_bytes(), Some(0o600)).await.map_err(e)?;
            let dropin = render::CONTAINERD_PROXY_DROPIN.as_bytes();
            changed |= host.ensure_file(PROXY_DROPIN, dropin, Some(0o644)).await.map_err(e)?;
        }
        None => {
            for path in [PROXY_DROPIN, render::CONTAINERD_PROXY_ENV] {
                changed |= host.remove_file(path, "no proxy in the cluster file").await.map_err(e)?;
            }
        }
    }
    if changed {
        host.apply("systemctl daemon-reload", &Cmd::change("systemctl", &["daemon-reload"])).await.map_err(e)?;
    }
    let crictl = host.run(&Cmd::read_script("command -v crictl")).await.map_err(e)?;
    if crictl.success() {
        host.ensure_file("/etc/crictl.yaml", render::CRICTL_YAML.as_bytes(), Some(0o644)).await.map_err(e)?;
    }
    Ok(changed)
}

/// The pause image of the pinned release, as that release's kubeadm names it.
async fn sandbox_image(fleet: &Fleet, host: &Host, version: &str) -> Result<String, String> {
    let cmd =
        Cmd::read_script(format!("/usr/local/bin/kubeadm config images list --kubernetes-version {}", quote(version)));
    let out = host.run(&cmd).await.map_err(|e| e.to_string())?;
    let found = out.stdout_str().lines().map(str::trim).find(|l| l.contains("/pause:")).map(String::from);
    match found {
        Some(image) => Ok(image),
        // Planning before the first push: kubeadm is not on the node yet.
        None if fleet.mode == Mode::DryRun => Ok("(the pause image kubeadm names)".into()),
        None => Err(format!("kubeadm named no pause image for {version}: {}", out.stderr_str().trim())),
    }
}

/// Links the distribution's CNI plugins into /opt/cni/bin (where flannel adds its own).
async fn link_cni_plugins(host: &Host) -> Result<(), RemoteError> {
    let probe = Cmd::read_script(format!(
        "for p in {DISTRO_CNI_DIR}/*; do [ -e \"$p\" ] && [ ! -e /opt/cni/bin/\"${{p##*/}}\" ] && echo \"${{p##*/}}\"; done; true"
    ));
    let missing = host.run_ok(&probe).await?;
    let missing: Vec<&str> = missing.lines().filter(|l| !l.is_empty()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let cmd = Cmd::change_script(link_script(DISTRO_CNI_DIR, "/opt/cni/bin", &missing));
    host.apply(format!("link CNI plugins into /opt/cni/bin: {}", missing.join(" ")), &cmd).await
}

/// Symlinks `names` of `from` into `to`; names come from the host's own listing.
fn link_script(from: &str, to: &str, names: &[&str]) -> String {
    let links: Vec<String> = names
        .iter()
        .map(|p| format!("ln -sf {} {}", quote(&format!("{from}/{p}")), quote(&format!("{to}/{p}"))))
        .collect();
    format!("mkdir -p {} && {}", quote(to), links.join(" && "))
}

/// Pushes the image archive (only when it changed) and imports it into containerd's k8s.io
/// namespace once per archive checksum — and again when an image it brought is gone: kubelet's
/// image garbage collection deletes unused images when the disk fills, and an air-gapped node
/// could not pull them back (a control plane that stopped for a while could not start again).
async fn import_images(fleet: &Fleet, host: &Host, archive: &std::path::Path) -> Result<(), String> {
    let e = |e: RemoteError| e.to_string();
    let bytes =
        tokio::task::block_in_place(|| std::fs::read(archive)).map_err(|e| format!("{}: {e}", archive.display()))?;
    let sum = hex::encode(Sha256::digest(&bytes));
    let name = archive.file_name().and_then(|n| n.to_str()).unwrap_or("images.tar");
    let remote = format!("{IMAGES_DIR}/{name}");
    let have = host.file_state(&remote).await.map_err(e)?;
    host.ensure_file_from(&remote, &bytes, &sum, Some(0o600), &have).await.map_err(e)?;
    // The marker holds the archive's checksum, then the images its import unpacked.
    let marker = format!("{remote}.imported");
    let probe =
        format!("cat {marker} 2>/dev/null; echo {IMAGES_SEPARATOR}; ctr -n k8s.io images ls -q 2>/dev/null; true");
    let state = host.run_ok(&Cmd::read_script(probe)).await.map_err(e)?;
    let what = match missing_images(&state, &sum) {
        Some(missing) if missing.is_empty() => return Ok(()),
        Some(missing) => format!("import images from {name} again (gone from containerd: {})", missing.join(", ")),
        None => format!("import images from {name} ({:.0} MiB) into containerd", bytes.len() as f64 / 1048576.0),
    };
    // `ctr images import` prints `unpacking NAME (DIGEST)...done` for each image.
    let cmd = Cmd::change_script(format!(
        "ctr -n k8s.io images import {remote} > {marker}.log && \
         {{ echo {sum}; sed -n 's/^unpacking \\([^ ]*\\) .*/\\1/p' {marker}.log; }} > {marker} && rm -f {marker}.log"
    ))
    .timeout(std::time::Duration::from_secs(900));
    host.apply(what, &cmd).await.map_err(e)?;
    if fleet.mode == Mode::Apply {
        crate::progress::step(&host.name, "images imported");
    }
    Ok(())
}

const IMAGES_SEPARATOR: &str = "@@images";

/// From the marker and containerd's image list: None when the archive `sum` was never
/// imported, else the images its import brought that containerd no longer has.
fn missing_images(state: &str, sum: &str) -> Option<Vec<String>> {
    let (marker, listed) = state.split_once(IMAGES_SEPARATOR)?;
    let mut marker = marker.lines().map(str::trim).filter(|l| !l.is_empty());
    if marker.next()? != sum {
        return None;
    }
    let present: std::collections::BTreeSet<&str> = listed.lines().map(str::trim).collect();
    Some(marker.filter(|image| !present.contains(image)).map(String::from).collect())
}

#[cfg(test)]
mod tests {
    use super::link_script;

    #[test]
    fn cni_plugin_names_are_quoted_in_the_link_script() {
        let dir = std::env::temp_dir().join(format!("pikube-cni-links-{}", std::process::id()));
        let (from, to) = (dir.join("lib"), dir.join("bin"));
        std::fs::create_dir_all(&from).unwrap();
        let names = ["bridge", "odd name;touch pwned", "it's"];
        for n in names {
            std::fs::write(from.join(n), "").unwrap();
        }
        let script = link_script(from.to_str().unwrap(), to.to_str().unwrap(), &names);
        let out = std::process::Command::new("sh").arg("-c").arg(&script).current_dir(&dir).output().unwrap();
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        for n in names {
            assert_eq!(std::fs::read_link(to.join(n)).unwrap(), from.join(n), "{n}");
        }
        assert!(!dir.join("pwned").exists(), "a name ran as a command");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
