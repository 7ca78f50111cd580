//! What goes into each image (paths and entrypoints as the upstream images have them where
//! kubeadm's and flannel's manifests depend on it), and the airgap directory.

use std::fs;
use std::path::Path;

use miette::{miette, IntoDiagnostic, Result, WrapErr};
use sha2::{Digest, Sha256};

use super::build::{KubeadmImages, Work};
use super::oci::Image;
use super::write_file;

/// The probe image tests run as a workload: busybox, prints a line, then sleeps.
pub const PROBE: &str = "pikube.local/probe:1";
/// What `tree` leaves out of unpacked packages: documentation and locale data.
const SKIP: &[&str] = &["usr/share", "usr/lib/x86_64-linux-gnu/gconv", "usr/lib/aarch64-linux-gnu/gconv"];

/// Every image: kubeadm's list, flannel's two, and the probe.
pub fn all(
    work: &Work,
    wanted: &KubeadmImages,
    flannel_manifest: &str,
    busybox: &Path,
    iptables: &Path,
) -> Result<Vec<Image>> {
    let mut images = Vec::new();
    // Control plane: kubeadm's static pods run the command by name, from PATH.
    for component in ["kube-apiserver", "kube-controller-manager", "kube-scheduler"] {
        let mut image = Image::new(wanted.get(component)?);
        image.file(&format!("usr/local/bin/{component}"), &work.bin(component))?;
        images.push(image);
    }
    // kube-proxy programs iptables: Debian's, with iptables-nft as Debian's default alternative.
    let mut proxy = Image::new(wanted.get("kube-proxy")?);
    with_iptables(&mut proxy, iptables)?;
    proxy.file("usr/local/bin/kube-proxy", &work.bin("kube-proxy"))?;
    images.push(proxy);
    let mut etcd = Image::new(wanted.get("etcd")?);
    etcd.file("usr/local/bin/etcd", &work.bin("etcd"))?;
    etcd.file("usr/local/bin/etcdctl", &work.bin("etcdctl"))?;
    etcd.file("usr/local/bin/etcdutl", &work.bin("etcdutl"))?;
    etcd.dir("var/lib/etcd", 0o700);
    images.push(etcd);
    let mut coredns = Image::new(wanted.get("coredns")?);
    coredns.file("coredns", &work.bin("coredns"))?;
    coredns.entrypoint = vec!["/coredns".into()];
    images.push(coredns);
    let mut pause = Image::new(wanted.get("pause")?);
    pause.file("pause", &work.bin("pause"))?;
    pause.entrypoint = vec!["/pause".into()];
    images.push(pause);
    images.extend(flannel(work, flannel_manifest, busybox, iptables)?);
    let mut probe = Image::new(PROBE);
    with_busybox(&mut probe, busybox, &["sh", "sleep", "cat", "hostname", "echo", "ls", "ps", "wget"])?;
    probe.entrypoint =
        vec!["/bin/sh".into(), "-c".into(), "echo \"probe up on $(hostname)\"; exec sleep 2147483647".into()];
    images.push(probe);
    Ok(images)
}

/// flannel's image (flanneld, install-conf, iptables) and its CNI plugin image (the `flannel`
/// binary and a `cp` its init container copies it with), named as kube-flannel.yml names them.
fn flannel(work: &Work, manifest: &str, busybox: &Path, iptables: &Path) -> Result<Vec<Image>> {
    let (cni_name, flannel_name) = flannel_images(manifest)?;
    let mut plugin = Image::new(&cni_name);
    with_busybox(&mut plugin, busybox, &["cp", "sh"])?;
    plugin.file("flannel", &work.bin("flannel-cni"))?;
    let mut flannel = Image::new(&flannel_name);
    with_iptables(&mut flannel, iptables)?;
    flannel.file("opt/bin/flanneld", &work.bin("flanneld"))?;
    flannel.file("opt/bin/install-conf", &work.bin("install-conf"))?;
    flannel.entrypoint = vec!["/opt/bin/flanneld".into()];
    Ok(vec![plugin, flannel])
}

/// (CNI plugin image, flannel image) from the manifest's `image:` lines.
pub fn flannel_images(manifest: &str) -> Result<(String, String)> {
    let mut names: Vec<&str> =
        manifest.lines().filter_map(|l| l.trim().strip_prefix("image:")).map(|n| n.trim().trim_matches('"')).collect();
    names.sort();
    names.dedup();
    let cni = names.iter().find(|n| n.contains("flannel-cni-plugin"));
    let flannel = names.iter().find(|n| !n.contains("flannel-cni-plugin"));
    match (cni, flannel, names.len()) {
        (Some(cni), Some(flannel), 2) => Ok((cni.to_string(), flannel.to_string())),
        _ => Err(miette!("kube-flannel.yml names images {names:?}; expected flannel and flannel-cni-plugin")),
    }
}

fn with_busybox(image: &mut Image, busybox: &Path, applets: &[&str]) -> Result<()> {
    image.file("bin/busybox", &busybox.join("bin/busybox"))?;
    for applet in applets {
        image.symlink(&format!("bin/{applet}"), "busybox");
    }
    Ok(())
}

fn with_iptables(image: &mut Image, iptables: &Path) -> Result<()> {
    image.tree(iptables, "", SKIP)?;
    // dpkg -x runs no maintainer scripts: set the alternatives Debian's postinst would.
    for tool in ["iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"] {
        let nft = tool.replacen("tables", "tables-nft", 1);
        image.symlink(&format!("usr/sbin/{tool}"), &nft);
    }
    Ok(())
}

/// Writes the airgap directory under `release` and returns the sizes for the build record.
pub fn layout(work: &Work, release: &Path, images: &[Image], flannel_manifest: &str) -> Result<serde_json::Value> {
    let bin = release.join("bin/linux").join(work.arch);
    let mut binaries = serde_json::Map::new();
    for name in ["kubeadm", "kubelet", "kubectl"] {
        let data = fs::read(work.bin(name)).into_diagnostic()?;
        write_file(&bin.join(name), &data, 0o755)?;
        // Upstream's .sha256 files hold the bare hex digest.
        write_file(&bin.join(format!("{name}.sha256")), hex::encode(Sha256::digest(&data)).as_bytes(), 0o644)?;
    }
    for name in ["kubeadm", "kubelet", "kubectl", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
        .into_iter()
        .chain([
            "kube-proxy",
            "etcd",
            "etcdctl",
            "etcdutl",
            "coredns",
            "pause",
            "flanneld",
            "install-conf",
            "flannel-cni",
        ])
    {
        let size = fs::metadata(work.bin(name)).into_diagnostic().wrap_err_with(|| format!("bin/{name}"))?.len();
        binaries.insert(name.into(), size.into());
    }
    write_file(&release.join("cni/kube-flannel.yml"), flannel_manifest.as_bytes(), 0o644)?;
    let archive = release.join("images").join(format!("{}.tar", work.arch));
    fs::create_dir_all(archive.parent().unwrap_or(release)).into_diagnostic()?;
    let written = super::oci::write_archive(images, work.arch, &archive)?;
    let archive_bytes = fs::metadata(&archive).into_diagnostic()?.len();
    Ok(serde_json::json!({
        "binaries": binaries,
        "images": written,
        "archive_bytes": archive_bytes,
    }))
}

/// `kube-flannel.yml.sha256` next to the release's manifest: pikube applies an airgap manifest
/// other than flannel's pinned one only with its sha256 there. The lab's manifest passes when it
/// is the pinned one with exactly the CNI version change below, nothing else (checked by undoing
/// the change), on a fresh build and on every cache hit.
pub fn vouch_for_manifest(release: &Path) -> Result<()> {
    use crate::distro::kubeadm::artifacts::FLANNEL_MANIFEST_SHA256;
    let path = release.join("cni/kube-flannel.yml");
    let manifest =
        fs::read_to_string(&path).into_diagnostic().wrap_err_with(|| format!("reading {}", path.display()))?;
    let upstream = match manifest.matches(PINNED_CNI).count() {
        1 => manifest.replacen(PINNED_CNI, ASKED_CNI, 1),
        _ => manifest.clone(),
    };
    if hex::encode(Sha256::digest(upstream.as_bytes())) != FLANNEL_MANIFEST_SHA256 {
        return Err(miette!(
            "{} is not flannel {}'s manifest (sha256 {FLANNEL_MANIFEST_SHA256}) with only its CNI version changed; \
             was flannel bumped without the pin in distro/kubeadm/artifacts.rs?",
            path.display(),
            super::recipe::FLANNEL
        ));
    }
    write_file(&release.join("cni/kube-flannel.yml.sha256"), hex::encode(Sha256::digest(&manifest)).as_bytes(), 0o644)
}

const ASKED_CNI: &str = "\"cniVersion\": \"1.0.0\"";
const PINNED_CNI: &str = "\"cniVersion\": \"0.4.0\"";

/// The manifest's CNI network config asks for CNI spec 1.0.0, which flannel's own CNI plugin
/// (flannel-io/cni-plugin, not served by the Go proxy) speaks. The same plugin as it last shipped
/// in containernetworking/plugins v0.9.1, the one built here, speaks up to 0.4.0, and so do
/// Debian's bridge and host-local it delegates to: the config is pinned to 0.4.0.
pub fn cni_version_for_plugin(manifest: &str) -> Result<String> {
    match manifest.matches(ASKED_CNI).count() {
        1 => Ok(manifest.replace(ASKED_CNI, PINNED_CNI)),
        n => {
            Err(miette!("kube-flannel.yml has {n} `{ASKED_CNI}` lines, expected one: its CNI config changed; check it"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cni_config_is_pinned_to_what_the_plugin_speaks() {
        let manifest = "  cni-conf.json: |\n    {\n      \"name\": \"cbr0\",\n      \"cniVersion\": \"1.0.0\",\n";
        let pinned = cni_version_for_plugin(manifest).unwrap();
        assert!(pinned.contains("\"cniVersion\": \"0.4.0\"") && !pinned.contains("1.0.0"), "{pinned}");
        assert!(cni_version_for_plugin("no config").is_err());
    }

    #[test]
    fn the_lab_vouches_only_for_the_pinned_manifest_with_its_one_change() {
        let release = std::env::temp_dir().join(format!("pikube-vouch-{}", std::process::id()));
        std::fs::create_dir_all(release.join("cni")).unwrap();
        let changed = "  cni-conf.json: |\n    {\n      \"cniVersion\": \"0.4.0\",\n";
        std::fs::write(release.join("cni/kube-flannel.yml"), changed).unwrap();
        let err = vouch_for_manifest(&release).unwrap_err().to_string();
        assert!(err.contains("is not flannel") && err.contains("only its CNI version changed"), "{err}");
        assert!(!release.join("cni/kube-flannel.yml.sha256").exists());
        std::fs::remove_dir_all(&release).unwrap();
    }

    #[test]
    fn flannel_manifest_names_two_images() {
        let manifest = "      - name: install-cni-plugin\n        image: ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3\n\
                        \x20       image: ghcr.io/flannel-io/flannel:v0.28.10\n        image: ghcr.io/flannel-io/flannel:v0.28.10\n";
        let (cni, flannel) = flannel_images(manifest).unwrap();
        assert_eq!(cni, "ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3");
        assert_eq!(flannel, "ghcr.io/flannel-io/flannel:v0.28.10");
        assert!(flannel_images("image: a:1\nimage: b:2\nimage: c:3\n").is_err());
    }
}
