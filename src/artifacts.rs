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
    #[error("{path}: sha256 {got} is not the one pinned for it ({want})")]
    Unpinned { path: PathBuf, got: String, want: String, hint: String },
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
            ArtifactError::Missing { hint, .. } | ArtifactError::Unpinned { hint, .. } => hint.clone(),
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

/// Finds (downloading when needed, unless `offline`) and verifies the binary for `arch`; with
/// its bytes, read once: what is pushed is what was checked.
pub fn binary_for(
    cluster: &Cluster,
    version: &str,
    arch: &Arch,
    offline: bool,
) -> Result<(K3sBinary, Vec<u8>), ArtifactError> {
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

fn verify(binary_path: &Path, sums_path: &Path, name: &str) -> Result<(K3sBinary, Vec<u8>), ArtifactError> {
    let sums =
        std::fs::read_to_string(sums_path).map_err(|e| ArtifactError::Io(format!("{}: {e}", sums_path.display())))?;
    let want = sums
        .lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .find(|(_, file)| file.trim().trim_start_matches('*') == name)
        .map(|(sum, _)| sum.trim().to_ascii_lowercase())
        .ok_or_else(|| ArtifactError::NotListed { sums: sums_path.to_path_buf(), name: name.to_string() })?;
    read_checked(binary_path, sums_path, &want)
}

/// The file's bytes, read once and hashed as read, when their sha256 is `want` (from `sums`).
pub(crate) fn read_checked(path: &Path, sums: &Path, want: &str) -> Result<(K3sBinary, Vec<u8>), ArtifactError> {
    let bytes = std::fs::read(path).map_err(|e| ArtifactError::Io(format!("{}: {e}", path.display())))?;
    let got = hex::encode(Sha256::digest(&bytes));
    if got != want {
        return Err(ArtifactError::Mismatch {
            binary: path.to_path_buf(),
            sums: sums.to_path_buf(),
            got,
            want: want.to_string(),
        });
    }
    let bin = K3sBinary { path: path.to_path_buf(), sha256: got, size: bytes.len() as u64 };
    Ok((bin, bytes))
}

/// Downloads with curl (present on every machine that runs pikube's installers; keeps an HTTP
/// client and its TLS stack out of the binary) into a temp file, renamed only when complete.
pub(crate) fn download(url: &str, to: &Path) -> Result<(), ArtifactError> {
    let dir = to.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| ArtifactError::Io(format!("{}: {e}", dir.display())))?;
    let part = to.with_extension("part");
    // A download_url may carry credentials: they are not shown.
    let shown = crate::config::url::redact_userinfo(url);
    crate::progress::note(&format!("downloading {shown}"));
    let out = curl(url, &part)
        .output()
        .map_err(|e| ArtifactError::Download { url: shown.clone(), reason: format!("cannot run curl: {e}") })?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&part);
        let reason = crate::config::url::redact_userinfo(String::from_utf8_lossy(&out.stderr).trim());
        return Err(ArtifactError::Download { url: shown, reason });
    }
    std::fs::rename(&part, to).map_err(|e| ArtifactError::Io(format!("{}: {e}", to.display())))
}

/// curl fetching `url` into `part`. An https URL stays https across redirects: a release
/// file and its checksum come from one place, so a downgrade to http would let anyone on the
/// way swap both (http is for loopback only, see config validation).
fn curl(url: &str, part: &Path) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-fsSL", "--retry", "3", "--connect-timeout", "15"]);
    if url.starts_with("https://") {
        cmd.args(["--proto", "=https", "--proto-redir", "=https"]);
    }
    cmd.arg("-o").arg(part).arg(url);
    cmd
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, Read, Write};
    use std::process::Stdio;

    /// A redirect from https to http would let anyone on the way serve the file (and, for
    /// k3s, its checksum file): curl must refuse it. An https server on loopback (openssl
    /// s_server with a certificate made here) answers 302 to a plain http server on loopback.
    #[test]
    fn https_downloads_refuse_a_redirect_to_plain_http() {
        let dir = std::env::temp_dir().join(format!("pikube-redirect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let made = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl");
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let plain_port = plain.local_addr().unwrap().port();
        let (hit, reached) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            if let Ok((mut conn, _)) = plain.accept() {
                let _ = hit.send(());
                let _ = conn.read(&mut [0; 4096]);
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nswapped");
            }
        });
        let tls_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = std::process::Command::new("openssl")
            .args(["s_server", "-accept", &format!("127.0.0.1:{tls_port}"), "-naccept", "1", "-cert"])
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        // s_server sends what it reads on stdin to the client that connects.
        let redirect = format!(
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{plain_port}/k3s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let mut stdin = server.stdin.take().unwrap();
        stdin.write_all(redirect.as_bytes()).unwrap();
        let mut lines = std::io::BufReader::new(server.stdout.take().unwrap()).lines();
        assert!(lines.any(|l| l.is_ok_and(|l| l == "ACCEPT")), "s_server did not start");
        let out = super::curl(&format!("https://127.0.0.1:{tls_port}/k3s"), &dir.join("k3s.part"))
            .env("CURL_CA_BUNDLE", &cert)
            .output()
            .unwrap();
        let _ = server.kill();
        let _ = server.wait();
        drop(stdin);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(reached.try_recv().is_err(), "curl followed the redirect to http (exit {:?})", out.status.code());
        assert_eq!(out.status.code(), Some(1), "refused as an unsupported protocol: {stderr}");
        assert!(stderr.contains("Protocol \"http\""), "{stderr}");
        assert!(!dir.join("k3s.part").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
