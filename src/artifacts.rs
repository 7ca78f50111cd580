//! The k3s release files on this machine: from the user's airgap directory, or downloaded once
//! into a cache. Every binary is checked against the release's `sha256sum-<arch>.txt` before
//! it is pushed to a node, so a truncated download or a file from another release never lands.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::config::Cluster;
use crate::facts::Arch;

pub const DEFAULT_DOWNLOAD_URL: &str = "https://github.com/k3s-io/k3s/releases/download";

/// A verified k3s binary for one architecture.
#[derive(Debug, Clone)]
pub struct K3sBinary {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("k3s has no release for {0} (Raspberry Pi Zero/1 are armv6)")]
    Unsupported(String),
    #[error("Kubernetes publishes no kubeadm or kubelet for 32-bit arm since v1.27")]
    NoArm32,
    #[error("{path} is missing")]
    Missing { path: PathBuf, hint: String },
    #[error("{binary}: checksum mismatch: file has {got}, {sums} says {want}")]
    Mismatch { binary: PathBuf, sums: PathBuf, got: String, want: String },
    #[error("{sums} lists no checksum for {name}")]
    NotListed { sums: PathBuf, name: String },
    #[error("downloading {url} failed: {reason}")]
    Download { url: String, reason: String },
    #[error("{0}")]
    Io(String),
}

impl ArtifactError {
    pub fn hint(&self) -> String {
        match self {
            ArtifactError::Unsupported(_) => "use a Pi 2 or newer for Kubernetes nodes".into(),
            ArtifactError::NoArm32 => "install the 64-bit (arm64) OS: a Pi 3, 4, 5 or Zero 2 W runs it; or use `distribution: k3s`, which still ships armhf".into(),
            ArtifactError::Missing { hint, .. } => hint.clone(),
            ArtifactError::Mismatch { .. } => {
                "the file is corrupt or from another release: fetch both files of the pinned version again".into()
            }
            ArtifactError::NotListed { .. } => "use the sha256sum file of the same release and architecture".into(),
            ArtifactError::Download { .. } => {
                "check the network, or download the files yourself and set kubernetes.artifacts (airgap)".into()
            }
            ArtifactError::Io(_) => String::new(),
        }
    }
}

/// Release asset names: (binary, checksum file).
pub fn asset_names(arch: &Arch) -> Result<(&'static str, &'static str), ArtifactError> {
    match arch {
        Arch::X86_64 => Ok(("k3s", "sha256sum-amd64.txt")),
        Arch::Aarch64 => Ok(("k3s-arm64", "sha256sum-arm64.txt")),
        Arch::Armv7 => Ok(("k3s-armhf", "sha256sum-arm.txt")),
        other => Err(ArtifactError::Unsupported(other.as_str().to_string())),
    }
}

/// Where the files for `version` are: the airgap directory, or the download cache.
pub fn directory(cluster: &Cluster, version: &str) -> (PathBuf, bool) {
    match &cluster.spec.kubernetes.artifacts {
        Some(dir) => (cluster.resolve_path(Path::new(&dir.value)), true),
        None => (cache_dir().join(version), false),
    }
}

pub(crate) fn cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("pikube/k3s");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/pikube/k3s")
}

/// Finds (downloading when needed, unless `offline`) and verifies the binary for `arch`.
pub fn binary_for(cluster: &Cluster, version: &str, arch: &Arch, offline: bool) -> Result<K3sBinary, ArtifactError> {
    let (binary, sums) = asset_names(arch)?;
    let (dir, airgap) = directory(cluster, version);
    let (binary_path, sums_path) = (dir.join(binary), dir.join(sums));
    if !airgap && !offline {
        let base = cluster
            .spec
            .kubernetes
            .download_url
            .as_ref()
            .map_or(DEFAULT_DOWNLOAD_URL, |u| u.value.as_str())
            .trim_end_matches('/');
        // GitHub release tags contain '+', which must be escaped in a URL path.
        let tag = version.replace('+', "%2B");
        for (name, path) in [(sums, &sums_path), (binary, &binary_path)] {
            if !path.exists() {
                download(&format!("{base}/{tag}/{name}"), path)?;
            }
        }
    }
    for p in [&binary_path, &sums_path] {
        if !p.exists() {
            let hint = if airgap {
                format!(
                    "put the k3s {version} release files `{binary}` and `{sums}` into {} (kubernetes.artifacts)",
                    dir.display()
                )
            } else {
                "run `pikube up` (or `pikube artifacts`) with network access once to fill the cache".into()
            };
            return Err(ArtifactError::Missing { path: p.to_path_buf(), hint });
        }
    }
    verify(&binary_path, &sums_path, binary)
}

fn verify(binary_path: &Path, sums_path: &Path, name: &str) -> Result<K3sBinary, ArtifactError> {
    let sums =
        std::fs::read_to_string(sums_path).map_err(|e| ArtifactError::Io(format!("{}: {e}", sums_path.display())))?;
    let want = sums
        .lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .find(|(_, file)| file.trim().trim_start_matches('*') == name)
        .map(|(sum, _)| sum.trim().to_ascii_lowercase())
        .ok_or_else(|| ArtifactError::NotListed { sums: sums_path.to_path_buf(), name: name.to_string() })?;
    let (got, size) = sha256_file(binary_path)?;
    if got != want {
        return Err(ArtifactError::Mismatch {
            binary: binary_path.to_path_buf(),
            sums: sums_path.to_path_buf(),
            got,
            want,
        });
    }
    Ok(K3sBinary { path: binary_path.to_path_buf(), sha256: got, size })
}

pub(crate) fn sha256_file(path: &Path) -> Result<(String, u64), ArtifactError> {
    let mut f = std::fs::File::open(path).map_err(|e| ArtifactError::Io(format!("{}: {e}", path.display())))?;
    let mut h = Sha256::new();
    let size = std::io::copy(&mut f, &mut h).map_err(|e| ArtifactError::Io(format!("{}: {e}", path.display())))?;
    Ok((hex::encode(h.finalize()), size))
}

/// Downloads with curl (present on every machine that runs pikube's installers; keeps an HTTP
/// client and its TLS stack out of the binary) into a temp file, renamed only when complete.
pub(crate) fn download(url: &str, to: &Path) -> Result<(), ArtifactError> {
    let dir = to.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| ArtifactError::Io(format!("{}: {e}", dir.display())))?;
    let part = to.with_extension("part");
    crate::progress::note(&format!("downloading {url}"));
    let out = Command::new("curl")
        .args(["-fsSL", "--retry", "3", "--connect-timeout", "15", "-o"])
        .arg(&part)
        .arg(url)
        .output()
        .map_err(|e| ArtifactError::Download { url: url.into(), reason: format!("cannot run curl: {e}") })?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&part);
        return Err(ArtifactError::Download {
            url: url.into(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    std::fs::rename(&part, to).map_err(|e| ArtifactError::Io(format!("{}: {e}", to.display())))
}
