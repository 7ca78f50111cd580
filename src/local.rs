//! Files pikube keeps on this machine: the state directory (join token) and the kubeconfig.
//! Secrets are written 0600 into 0700 directories, atomically.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::Cluster;

impl Cluster {
    /// `.pikube/<cluster>/` next to the cluster file: the join token and other local state.
    pub fn state_dir(&self) -> PathBuf {
        self.resolve_path(Path::new(".pikube")).join(self.name())
    }

    /// `build/<cluster>-config.yml` next to the cluster file.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.resolve_path(Path::new("build")).join(format!("{}-config.yml", self.name()))
    }
}

/// Writes `content` to `path` with mode 0600 (parent directories 0700 when created).
pub fn write_secret(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("pikube")));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(content)?;
    f.sync_all()?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)
}
