//! A node's extra disk (`lab up --extra-disk MIB`), like a USB SSD on a Pi: a sparse image
//! file on the host behind a loop device, passed into the node as that device.
//!
//! A node has no udev of its own (a container shares the host's devices, and this host runs
//! none), yet pikube names disks by /dev/disk/by-id and mounts file systems by
//! /dev/disk/by-uuid, as on a Pi. So the lab does udev's part for the disk it passes in: the
//! node's /dev/disk is a host directory the launcher keeps, with the disk's by-id link and a
//! by-uuid link for the file system on it, refreshed every second while the node runs. It
//! emulates the host's device manager, the way `firmware` emulates a Pi's firmware.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use miette::{IntoDiagnostic, Result, WrapErr};

use super::state::NodePaths;
use super::util::run;

/// How often the by-uuid link follows the disk's file system (udev does it on a uevent).
const REFRESH: Duration = Duration::from_secs(1);

/// The disk's /dev/disk/by-id name in the node: a USB disk's kind of name, per node.
pub fn by_id(node: &str) -> String {
    format!("usb-pikube_lab_disk_{node}-0:0")
}

/// The loop device (`/dev/loopN`) backing the node's extra disk, made (sparse, `mib` MiB) and
/// attached when it is not yet.
pub fn attach(paths: &NodePaths, mib: u64) -> Result<String> {
    let image = paths.extra_disk();
    if let Some(dev) = attached(&image)? {
        return Ok(dev);
    }
    if !image.exists() {
        fs::create_dir_all(&paths.dir).into_diagnostic()?;
        run(std::process::Command::new("truncate").arg(format!("--size={mib}M")).arg(&image))?;
    }
    let out = run(std::process::Command::new("losetup").args(["--find", "--show"]).arg(&image))
        .wrap_err_with(|| format!("attaching {} to a loop device", image.display()))?;
    Ok(out.trim().to_string())
}

/// The loop devices backed by `image` (normally one).
fn attached_all(image: &Path) -> Result<Vec<String>> {
    if !image.exists() {
        return Ok(Vec::new());
    }
    let out = run(std::process::Command::new("losetup")
        .args(["--noheadings", "--output", "NAME", "--associated"])
        .arg(image))?;
    Ok(out.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
}

fn attached(image: &Path) -> Result<Option<String>> {
    Ok(attached_all(image)?.into_iter().next())
}

/// Detaches the node's extra disk (the node must be off); `lab down` deletes the image after.
pub fn detach(paths: &NodePaths) -> Result<()> {
    for dev in attached_all(&paths.extra_disk())? {
        run(std::process::Command::new("losetup").arg("--detach").arg(&dev))
            .wrap_err_with(|| format!("detaching {dev} (the extra disk of {})", paths.dir.display()))?;
    }
    Ok(())
}

/// systemd-nspawn arguments that pass `dev` into the node with its /dev/disk links, which are
/// made now (as udev's coldplug does at boot).
pub fn nspawn_args(paths: &NodePaths, node: &str, dev: &str) -> Result<Vec<String>> {
    let dir = paths.dev_disk();
    let name = dev.rsplit('/').next().unwrap_or(dev);
    let ids = dir.join("by-id");
    fs::create_dir_all(&ids).into_diagnostic().wrap_err_with(|| format!("creating {}", ids.display()))?;
    link(&ids.join(by_id(node)), name)?;
    refresh_uuid(&dir, dev);
    Ok(vec![format!("--bind={dev}"), format!("--bind-ro={}:/dev/disk", dir.display())])
}

/// Keeps the by-uuid link current until `running` turns false.
pub fn follow(dir: PathBuf, dev: String, running: Arc<AtomicBool>) {
    while running.load(Ordering::SeqCst) {
        refresh_uuid(&dir, &dev);
        std::thread::sleep(REFRESH);
    }
}

/// by-uuid holds one link, for the file system on `dev` now (none when it has none).
fn refresh_uuid(dir: &Path, dev: &str) {
    let uuid = std::process::Command::new("blkid")
        .args(["-p", "-s", "UUID", "-o", "value", dev])
        .stdin(std::process::Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let by_uuid = dir.join("by-uuid");
    let _ = fs::create_dir_all(&by_uuid);
    let current: Vec<PathBuf> =
        fs::read_dir(&by_uuid).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    for stale in current.iter().filter(|p| p.file_name().is_none_or(|n| n != uuid.as_str())) {
        let _ = fs::remove_file(stale);
    }
    if !uuid.is_empty() && !current.iter().any(|p| p.file_name().is_some_and(|n| n == uuid.as_str())) {
        let name = dev.rsplit('/').next().unwrap_or(dev);
        let _ = link(&by_uuid.join(&uuid), name);
    }
}

/// A udev-style relative link (`../../loop3`) at `at`.
fn link(at: &Path, dev_name: &str) -> Result<()> {
    let target = format!("../../{dev_name}");
    if fs::read_link(at).is_ok_and(|t| t == Path::new(&target)) {
        return Ok(());
    }
    let _ = fs::remove_file(at);
    std::os::unix::fs::symlink(&target, at).into_diagnostic().wrap_err_with(|| format!("linking {}", at.display()))
}
