//! The Kubernetes release files on this machine, in upstream's layout
//! (`<version>/bin/linux/<arch>/<binary>` with `<binary>.sha256`): from the user's airgap
//! directory (`kubernetes.artifacts`), or downloaded once from the release site into a cache.
//! An image archive (`<version>/images/<arch>.tar`) and the flannel manifest
//! (`<version>/cni/kube-flannel.yml`) are taken from the airgap directory when present.

use std::path::{Path, PathBuf};

use crate::artifacts::{download, read_checked, ArtifactError, K3sBinary};
use crate::config::Cluster;
use crate::facts::Arch;

pub const DEFAULT_DOWNLOAD_URL: &str = "https://dl.k8s.io/release";
/// The flannel manifest applied when the airgap directory has none: flannel v0.28.10's as
/// tagged, and its sha256. The Go module of that tag holds the same bytes, and `go mod download`
/// checks those against the Go checksum database: that is where the pin was taken from.
pub const FLANNEL_MANIFEST_URL: &str =
    "https://raw.githubusercontent.com/flannel-io/flannel/v0.28.10/Documentation/kube-flannel.yml";
pub const FLANNEL_MANIFEST_SHA256: &str = "944a3c1f925f117727a1b7272a323c80965da642498397ec7e6ea9bef0f9e6c5";
pub const BINARIES: [&str; 3] = ["kubeadm", "kubelet", "kubectl"];

/// Upstream's architecture names. 32-bit arm is not one since v1.27 (kubernetes/kubernetes#115742
/// kept only kubectl).
pub fn arch_name(arch: &Arch) -> Result<&'static str, ArtifactError> {
    match arch {
        Arch::X86_64 => Ok("amd64"),
        Arch::Aarch64 => Ok("arm64"),
        Arch::Armv7 => Err(ArtifactError::NoArm32),
        other => Err(ArtifactError::Unsupported(other.as_str().to_string())),
    }
}

/// `<root>/<version>` and whether it is the user's airgap directory.
fn release_dir(cluster: &Cluster, version: &str) -> (PathBuf, bool) {
    match &cluster.spec.kubernetes.artifacts {
        Some(dir) => (cluster.resolve_path(Path::new(&dir.value)).join(version), true),
        None => (crate::artifacts::cache_dir().with_file_name("kubernetes").join(version), false),
    }
}

fn base_url(cluster: &Cluster) -> String {
    let url = cluster.spec.kubernetes.download_url.as_ref().map_or(DEFAULT_DOWNLOAD_URL, |u| u.value.as_str());
    url.trim_end_matches('/').to_string()
}

/// Finds (downloading when needed) and verifies one binary for `arch`; with its bytes, read
/// once: what is pushed is what was checked.
pub fn binary(
    cluster: &Cluster,
    version: &str,
    arch: &Arch,
    name: &str,
) -> Result<(K3sBinary, Vec<u8>), ArtifactError> {
    let arch = arch_name(arch)?;
    let (dir, airgap) = release_dir(cluster, version);
    let rel = format!("bin/linux/{arch}/{name}");
    let (path, sums) = (dir.join(&rel), dir.join(format!("{rel}.sha256")));
    for p in [&sums, &path] {
        if p.exists() {
            continue;
        }
        if airgap {
            return Err(ArtifactError::Missing {
                path: p.clone(),
                hint: format!(
                    "mirror the release files into {} as upstream lays them out: <version>/bin/linux/<arch>/{{kubeadm,kubelet,kubectl}} and their .sha256",
                    dir.parent().unwrap_or(&dir).display()
                ),
            });
        }
        let suffix = p.strip_prefix(&dir).unwrap_or(p).display().to_string();
        download(&format!("{}/{version}/{suffix}", base_url(cluster)), p)?;
    }
    verify(&path, &sums)
}

/// Upstream's `.sha256` files hold the hex digest alone (sha256sum's format is accepted too).
fn verify(path: &Path, sums: &Path) -> Result<(K3sBinary, Vec<u8>), ArtifactError> {
    let text = std::fs::read_to_string(sums).map_err(|e| ArtifactError::Io(format!("{}: {e}", sums.display())))?;
    let want = text.split_whitespace().next().unwrap_or("").to_ascii_lowercase();
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
    if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ArtifactError::NotListed { sums: sums.to_path_buf(), name });
    }
    read_checked(path, sums, &want)
}

/// The image archive for `arch` in the airgap directory, when there is one.
pub fn image_archive(cluster: &Cluster, version: &str, arch: &Arch) -> Option<PathBuf> {
    let (dir, airgap) = release_dir(cluster, version);
    let path = dir.join(format!("images/{}.tar", arch_name(arch).ok()?));
    (airgap && path.is_file()).then_some(path)
}

/// The flannel manifest, applied with cluster-admin rights, so checked first: the airgap
/// directory's or the pinned release's (downloaded once), as [`FLANNEL_MANIFEST_SHA256`] pins
/// it. An airgap manifest changed on purpose passes only with its own sha256 in
/// `kube-flannel.yml.sha256` next to it, as the release binaries have theirs.
pub fn flannel_manifest(cluster: &Cluster, version: &str) -> Result<Vec<u8>, ArtifactError> {
    let (dir, airgap) = release_dir(cluster, version);
    let path = dir.join("cni/kube-flannel.yml");
    if !path.exists() {
        if airgap {
            return Err(ArtifactError::Missing {
                path,
                hint: "put the flannel manifest there, or set `cni: none` and install a pod network yourself".into(),
            });
        }
        download(FLANNEL_MANIFEST_URL, &path)?;
    }
    let own = dir.join("cni/kube-flannel.yml.sha256");
    let want = match std::fs::read_to_string(&own) {
        Ok(text) if airgap => text.split_whitespace().next().unwrap_or("").to_ascii_lowercase(),
        _ => FLANNEL_MANIFEST_SHA256.to_string(),
    };
    let (_, bytes) = read_checked(&path, &own, &want).map_err(|e| match e {
        ArtifactError::Mismatch { binary, got, want, .. } => ArtifactError::Unpinned {
            hint: if airgap {
                format!(
                    "put flannel's own manifest there (sha256 {FLANNEL_MANIFEST_SHA256}, {FLANNEL_MANIFEST_URL}); \
                     for one you changed on purpose, write its sha256 into {}",
                    own.display()
                )
            } else {
                format!("delete {} and run again to download it anew", binary.display())
            },
            path: binary,
            got,
            want,
        },
        other => other,
    })?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flannel_manifest_applied_is_the_pinned_one_or_vouched_for() {
        let root = std::env::temp_dir().join(format!("pikube-flannel-pin-{}", std::process::id()));
        let cni = root.join("v1.34.4/cni");
        std::fs::create_dir_all(&cni).unwrap();
        let yaml = format!(
            "name: t\nkubernetes: {{distribution: kubeadm, version: v1.34.4, artifacts: {}}}\n\
             hosts:\n  - {{name: n1, address: 10.0.0.1, role: server}}\n",
            root.display()
        );
        let cluster = Cluster::parse(&root.join("cluster.yaml"), &yaml).unwrap();
        let manifest = b"kind: ClusterRoleBinding # not flannel's\n";
        std::fs::write(cni.join("kube-flannel.yml"), manifest).unwrap();
        assert!(flannel_manifest(&cluster, "v1.34.4").is_err(), "an unpinned manifest was accepted");
        let Err(ArtifactError::Unpinned { want, hint, .. }) = flannel_manifest(&cluster, "v1.34.4") else {
            panic!("not refused as unpinned")
        };
        assert_eq!(want, FLANNEL_MANIFEST_SHA256);
        assert!(hint.contains("kube-flannel.yml.sha256"), "{hint}");
        // The operator's own manifest, its sha256 next to it: taken as it is.
        let sum = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(manifest));
        std::fs::write(cni.join("kube-flannel.yml.sha256"), format!("{sum}  kube-flannel.yml\n")).unwrap();
        assert_eq!(flannel_manifest(&cluster, "v1.34.4").unwrap(), manifest);
        std::fs::write(cni.join("kube-flannel.yml"), b"kind: ClusterRoleBinding # changed since\n").unwrap();
        assert!(matches!(flannel_manifest(&cluster, "v1.34.4"), Err(ArtifactError::Unpinned { .. })));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn checksums_are_upstream_sha256_files() {
        let dir = std::env::temp_dir().join(format!("pikube-kadm-sums-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (bin, sums) = (dir.join("kubeadm"), dir.join("kubeadm.sha256"));
        std::fs::write(&bin, b"kubeadm").unwrap();
        let sum = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"kubeadm"));
        for good in [sum.clone(), format!("{sum}  kubeadm\n"), sum.to_ascii_uppercase()] {
            std::fs::write(&sums, good).unwrap();
            assert_eq!(verify(&bin, &sums).unwrap().0.sha256, sum);
        }
        std::fs::write(&sums, "a".repeat(64)).unwrap();
        assert!(matches!(verify(&bin, &sums), Err(ArtifactError::Mismatch { .. })));
        std::fs::write(&sums, "<html>not found</html>").unwrap();
        assert!(matches!(verify(&bin, &sums), Err(ArtifactError::NotListed { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
