//! Minimal OCI images and one OCI image-layout archive holding them, in the form
//! `ctr -n k8s.io images import` takes: `oci-layout`, `index.json` whose manifests carry the
//! image name in `io.containerd.image.name`, and `blobs/sha256/…`. Every image is one layer.
//! Output is deterministic: fixed mtimes, owners root, entries sorted, gzip without a timestamp.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use miette::{miette, IntoDiagnostic, Result, WrapErr};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The timestamp every tar entry and image config carries (the Kubernetes release's date would
/// do as well; any fixed value makes rebuilds byte-identical).
const EPOCH: u64 = 0;
const CREATED: &str = "1970-01-01T00:00:00Z";
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What goes into an image's single layer, by path inside the image (no leading slash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { source: PathBuf, mode: u32 },
    Symlink { target: String },
}

/// One image: its full name (`registry.k8s.io/pause:3.10.1`), layer and run configuration.
#[derive(Debug, Default)]
pub struct Image {
    pub name: String,
    pub entries: BTreeMap<String, Entry>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

impl Image {
    pub fn new(name: &str) -> Image {
        let mut image = Image { name: name.to_string(), ..Image::default() };
        image.dir("tmp", 0o1777);
        image
    }

    /// Adds a directory and its parents.
    pub fn dir(&mut self, path: &str, mode: u32) {
        let mut prefix = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.entries.entry(prefix.clone()).or_insert(Entry::Dir { mode: 0o755 });
        }
        self.entries.insert(prefix, Entry::Dir { mode });
    }

    fn parent(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            if !self.entries.contains_key(parent) {
                self.dir(parent, 0o755);
            }
        }
    }

    /// Adds a host file at `path` with the host file's permission bits.
    pub fn file(&mut self, path: &str, source: &Path) -> Result<()> {
        let meta = fs::metadata(source).into_diagnostic().wrap_err_with(|| format!("reading {}", source.display()))?;
        self.parent(path);
        self.entries.insert(path.to_string(), Entry::File { source: source.to_path_buf(), mode: meta.mode() & 0o7777 });
        Ok(())
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parent(path);
        self.entries.insert(path.to_string(), Entry::Symlink { target: target.to_string() });
    }

    /// Adds a host tree (e.g. an extracted .deb) under `at`, skipping `skip` subtrees (docs).
    pub fn tree(&mut self, root: &Path, at: &str, skip: &[&str]) -> Result<()> {
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for item in fs::read_dir(&dir).into_diagnostic().wrap_err_with(|| format!("reading {}", dir.display()))? {
                let path = item.into_diagnostic()?.path();
                let relative = path.strip_prefix(root).into_diagnostic()?.to_string_lossy().into_owned();
                if skip.iter().any(|s| relative == *s || relative.starts_with(&format!("{s}/"))) {
                    continue;
                }
                let inside = if at.is_empty() { relative } else { format!("{at}/{relative}") };
                let meta = fs::symlink_metadata(&path).into_diagnostic()?;
                if meta.file_type().is_symlink() {
                    let target = fs::read_link(&path).into_diagnostic()?;
                    self.symlink(&inside, &target.to_string_lossy());
                } else if meta.is_dir() {
                    self.dir(&inside, meta.permissions().mode() & 0o7777);
                    stack.push(path);
                } else if meta.is_file() {
                    self.file(&inside, &path)?;
                }
            }
        }
        Ok(())
    }

    /// The layer as an uncompressed tar (its sha256 is the config's diff_id).
    pub fn layer(&self) -> Result<Vec<u8>> {
        let mut tar = Vec::new();
        for (path, entry) in &self.entries {
            match entry {
                Entry::Dir { mode } => append(&mut tar, &format!("{path}/"), b'5', *mode, "", &[])?,
                Entry::Symlink { target } => append(&mut tar, path, b'2', 0o777, target, &[])?,
                Entry::File { source, mode } => {
                    let data =
                        fs::read(source).into_diagnostic().wrap_err_with(|| format!("reading {}", source.display()))?;
                    append(&mut tar, path, b'0', *mode, "", &data)?;
                }
            }
        }
        tar.extend_from_slice(&[0; 1024]);
        Ok(tar)
    }

    /// The image config (OCI image-spec `config`): what a runtime needs to start it.
    pub fn config(&self, arch: &str, diff_id: &str) -> serde_json::Value {
        let mut config = serde_json::Map::new();
        config.insert("Env".into(), json!([PATH_ENV]));
        if !self.entrypoint.is_empty() {
            config.insert("Entrypoint".into(), json!(self.entrypoint));
        }
        if !self.cmd.is_empty() {
            config.insert("Cmd".into(), json!(self.cmd));
        }
        config.insert("WorkingDir".into(), json!("/"));
        json!({
            "created": CREATED,
            "architecture": arch,
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": CREATED, "created_by": "pikube lab kubernetes"}],
        })
    }
}

/// Appends one ustar entry (names up to 100 bytes, or 255 split at a slash into the prefix).
fn append(tar: &mut impl Write, path: &str, kind: u8, mode: u32, link: &str, data: &[u8]) -> Result<()> {
    let mut header = [0u8; 512];
    let (prefix, name) = split_name(path).ok_or_else(|| miette!("path too long for a tar header: {path}"))?;
    if link.len() > 100 {
        return Err(miette!("symlink target too long for a tar header: {link}"));
    }
    header[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut header[100..108], mode as u64);
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    octal(&mut header[124..136], data.len() as u64);
    octal(&mut header[136..148], EPOCH);
    header[156] = kind;
    header[157..157 + link.len()].copy_from_slice(link.as_bytes());
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[265..269].copy_from_slice(b"root");
    header[297..301].copy_from_slice(b"root");
    header[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    header[148..156].fill(b' ');
    let sum: u64 = header.iter().map(|b| *b as u64).sum();
    octal(&mut header[148..155], sum);
    let padding = [0u8; 512];
    tar.write_all(&header)
        .and_then(|_| tar.write_all(data))
        .and_then(|_| tar.write_all(&padding[..(512 - data.len() % 512) % 512]))
        .into_diagnostic()
}

fn split_name(path: &str) -> Option<(&str, &str)> {
    if path.len() <= 100 {
        return Some(("", path));
    }
    let cut = path[..path.len().min(156)].rfind('/')?;
    let (prefix, name) = (&path[..cut], &path[cut + 1..]);
    (prefix.len() <= 155 && !name.is_empty() && name.len() <= 100).then_some((prefix, name))
}

/// Zero-padded octal with a NUL terminator, as ustar wants.
fn octal(field: &mut [u8], value: u64) {
    let text = format!("{value:0width$o}\0", width = field.len() - 1);
    field.copy_from_slice(text.as_bytes());
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Sizes of what went into an archive, for the build record.
#[derive(Debug, serde::Serialize)]
pub struct Written {
    pub name: String,
    pub layer_bytes: usize,
    pub compressed_bytes: usize,
}

/// Writes all `images` into one OCI image-layout tar at `archive` (via a temp file and
/// rename), streaming: one image's layer is in memory at a time.
pub fn write_archive(images: &[Image], arch: &str, archive: &Path) -> Result<Vec<Written>> {
    let tmp = archive.with_extension("tar.tmp");
    let file = fs::File::create(&tmp).into_diagnostic().wrap_err_with(|| format!("creating {}", tmp.display()))?;
    let mut tar = std::io::BufWriter::new(file);
    append(&mut tar, "oci-layout", b'0', 0o644, "", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    append(&mut tar, "blobs/", b'5', 0o755, "", &[])?;
    append(&mut tar, "blobs/sha256/", b'5', 0o755, "", &[])?;
    let mut stored = BTreeSet::new();
    let mut manifests = Vec::new();
    let mut written = Vec::new();
    for image in images {
        let layer = image.layer()?;
        let mut gzip = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::fast());
        gzip.write_all(&layer).into_diagnostic()?;
        let compressed = gzip.finish().into_diagnostic()?;
        let config = serde_json::to_vec(&image.config(arch, &sha256(&layer))).into_diagnostic()?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(&compressed), "size": compressed.len()}],
        }))
        .into_diagnostic()?;
        let tag = image.name.rsplit_once(':').map(|(_, tag)| tag).unwrap_or("latest");
        manifests.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&manifest),
            "size": manifest.len(),
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"io.containerd.image.name": image.name, "org.opencontainers.image.ref.name": tag},
        }));
        written.push(Written {
            name: image.name.clone(),
            layer_bytes: layer.len(),
            compressed_bytes: compressed.len(),
        });
        for blob in [compressed, config, manifest] {
            let digest = sha256(&blob);
            if stored.insert(digest.clone()) {
                append(&mut tar, &format!("blobs/sha256/{}", &digest["sha256:".len()..]), b'0', 0o644, "", &blob)?;
            }
        }
    }
    let index = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}),
    )
    .into_diagnostic()?;
    append(&mut tar, "index.json", b'0', 0o644, "", &index)?;
    tar.write_all(&[0; 1024]).into_diagnostic()?;
    tar.into_inner().map_err(|e| miette!("writing {}: {e}", tmp.display()))?.sync_all().into_diagnostic()?;
    fs::rename(&tmp, archive).into_diagnostic().wrap_err_with(|| format!("moving {} into place", tmp.display()))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_headers_are_ustar_with_valid_checksums() {
        let mut tar = Vec::new();
        append(&mut tar, "bin/sh", b'2', 0o777, "busybox", &[]).unwrap();
        append(&mut tar, "etc/hostname", b'0', 0o644, "", b"probe\n").unwrap();
        assert_eq!(tar.len(), 512 * 3);
        let header = &tar[512..1024];
        assert_eq!(&header[..12], b"etc/hostname");
        assert_eq!(&header[124..136], b"00000000006\0");
        assert_eq!(&header[257..263], b"ustar\0");
        let stored = u64::from_str_radix(std::str::from_utf8(&header[148..154]).unwrap(), 8).unwrap();
        let mut blank = header.to_vec();
        blank[148..156].fill(b' ');
        assert_eq!(stored, blank.iter().map(|b| *b as u64).sum::<u64>());
        assert_eq!(&tar[1024..1030], b"probe\n");
        assert_eq!(&tar[157..164], b"busybox");
    }

    #[test]
    fn long_names_split_at_a_slash_or_fail() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(20));
        assert_eq!(split_name(&long), Some((&long[..120], &long[121..])));
        assert_eq!(split_name(&"x".repeat(101)), None);
    }

    #[test]
    fn images_get_parents_and_a_config_with_entrypoint() {
        let mut image = Image::new("pikube.local/probe:1");
        image.symlink("bin/sh", "busybox");
        image.entrypoint = vec!["/bin/sh".into(), "-c".into(), "sleep 1".into()];
        let names: Vec<&str> = image.entries.keys().map(String::as_str).collect();
        assert_eq!(names, ["bin", "bin/sh", "tmp"]);
        assert_eq!(image.entries["tmp"], Entry::Dir { mode: 0o1777 });
        let config = image.config("amd64", "sha256:00");
        assert_eq!(config["config"]["Entrypoint"], json!(["/bin/sh", "-c", "sleep 1"]));
        assert_eq!(config["config"]["Env"], json!([PATH_ENV]));
        assert_eq!(config["rootfs"]["diff_ids"], json!(["sha256:00"]));
        assert!(config["config"].get("Cmd").is_none());
    }

    #[test]
    fn archives_are_deterministic_and_name_their_images() {
        let dir = std::env::temp_dir().join(format!("pikube-oci-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let build = |file: &str| {
            let mut image = Image::new("registry.k8s.io/pause:3.10.1");
            image.symlink("pause", "/bin/true");
            write_archive(&[image], "amd64", &dir.join(file)).unwrap();
            fs::read(dir.join(file)).unwrap()
        };
        let (first, second) = (build("a.tar"), build("b.tar"));
        assert_eq!(first, second);
        let text = String::from_utf8_lossy(&first);
        assert!(text.contains(r#""io.containerd.image.name":"registry.k8s.io/pause:3.10.1""#));
        assert!(text.contains(r#""org.opencontainers.image.ref.name":"3.10.1""#));
        fs::remove_dir_all(&dir).unwrap();
    }
}
