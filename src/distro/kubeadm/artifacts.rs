//! The Kubernetes release files on this machine, in upstream's layout
//! (`<version>/bin/linux/<arch>/<binary>` with `<binary>.sha256`): from the user's airgap
//! directory (`kubernetes.artifacts`), or downloaded once from the release site into a cache.
//! An image archive (`<version>/images/<arch>.tar`) and the flannel manifest
//! (`<version>/cni/kube-flannel.yml`) are taken from the airgap directory when present.

use std::path::{Path, PathBuf};

use crate::artifacts::{download, sha256_file, ArtifactError, K3sBinary};
use crate::config::Cluster;
use crate::facts::Arch;

pub const DEFAULT_DOWNLOAD_URL: &str = "https://dl.k8s.io/release";
/// The flannel release whose manifest is applied when the airgap directory has none.
pub const FLANNEL_MANIFEST_URL: &str =
    "https://github.com/flannel-io/flannel/releases/download/v0.28.10/kube-flannel.yml";
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

/// Finds (downloading when needed) and verifies one binary for `arch`.
pub fn binary(cluster: &Cluster, version: &str, arch: &Arch, name: &str) -> Result<K3sBinary, ArtifactError> {
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
fn verify(path: &Path, sums: &Path) -> Result<K3sBinary, ArtifactError> {
    let text = std::fs::read_to_string(sums).map_err(|e| ArtifactError::Io(format!("{}: {e}", sums.display())))?;
    let want = text.split_whitespace().next().unwrap_or("").to_ascii_lowercase();
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
    if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ArtifactError::NotListed { sums: sums.to_path_buf(), name });
    }
    let (got, size) = sha256_file(path)?;
    if got != want {
        return Err(ArtifactError::Mismatch { binary: path.to_path_buf(), sums: sums.to_path_buf(), got, want });
    }
    Ok(K3sBinary { path: path.to_path_buf(), sha256: got, size })
}

/// The image archive for `arch` in the airgap directory, when there is one.
pub fn image_archive(cluster: &Cluster, version: &str, arch: &Arch) -> Option<PathBuf> {
    let (dir, airgap) = release_dir(cluster, version);
    let path = dir.join(format!("images/{}.tar", arch_name(arch).ok()?));
    (airgap && path.is_file()).then_some(path)
}

/// The flannel manifest: the airgap directory's, or the pinned release's, downloaded once.
pub fn flannel_manifest(cluster: &Cluster, version: &str) -> Result<PathBuf, ArtifactError> {
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
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_upstream_sha256_files() {
        let dir = std::env::temp_dir().join(format!("pikube-kadm-sums-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (bin, sums) = (dir.join("kubeadm"), dir.join("kubeadm.sha256"));
        std::fs::write(&bin, b"kubeadm").unwrap();
        let sum = crate::artifacts::sha256_file(&bin).unwrap().0;
        for good in [sum.clone(), format!("{sum}  kubeadm\n"), sum.to_ascii_uppercase()] {
            std::fs::write(&sums, good).unwrap();
            assert_eq!(verify(&bin, &sums).unwrap().sha256, sum);
        }
        std::fs::write(&sums, "a".repeat(64)).unwrap();
        assert!(matches!(verify(&bin, &sums), Err(ArtifactError::Mismatch { .. })));
        std::fs::write(&sums, "<html>not found</html>").unwrap();
        assert!(matches!(verify(&bin, &sums), Err(ArtifactError::NotListed { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
