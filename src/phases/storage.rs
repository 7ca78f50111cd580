//! The `storage` phase: the container runtime's and kubelet's data onto the host's own disk
//! (`hosts[].storage`, see `crate::storage`), before either is installed or started. It runs
//! right after host preparation and before the reboot, so the reboot (when there is one)
//! already mounts the disk the way every later boot will.

use std::time::Duration;

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use crate::config::{Role, Storage};
use crate::fleet::{Fleet, Node};
use crate::remote::{quote, Cmd, Host, Mode, RemoteError};
use crate::storage::{self, probe, render, DataDir, Layout, Verdict, MOUNT_POINT, VOLUME};

/// How long udev may take to link a new file system under /dev/disk/by-uuid.
const UDEV_WAIT: Duration = Duration::from_secs(30);

pub fn run<'a>(fleet: &'a Fleet) -> BoxFuture<'a, ()> {
    Box::pin(fleet.each(move |node: &'a Node, host: &'a Host| async move {
        match &node.spec.storage {
            Some(storage) if node.role() != Role::Loadbalancer => prepare(fleet, node, host, storage).await,
            _ => Ok(()),
        }
    }))
}

async fn prepare(fleet: &Fleet, node: &Node, host: &Host, storage: &Storage) -> Result<(), String> {
    let layout = Layout::of(fleet.cluster.distribution(), node.role());
    let found = probe::run(host, storage, &layout).await?;
    // Preflight decided the same; the disk is looked at again right before it is used.
    let verdict = storage::decide(node.name(), storage, &layout.dirs, &found)
        .map_err(|r| format!("storage: {} (fix: {})", r.message, r.fix))?;
    let real = found.real.clone().unwrap_or_default();
    let uuid = match &verdict.uuid {
        Some(uuid) => uuid.clone(),
        None => format(host, storage, &real, &found).await?,
    };
    let e = |e: RemoteError| e.to_string();
    let mut changed = false;
    for (path, text) in render::files(&layout, storage, &uuid) {
        let have = found.files.get(&path).cloned().unwrap_or_default();
        let want = hex::encode(Sha256::digest(text.as_bytes()));
        changed |= host.ensure_file_from(&path, text.as_bytes(), &want, Some(0o644), &have).await.map_err(e)?;
    }
    if changed {
        host.apply("systemctl daemon-reload", &Cmd::change("systemctl", &["daemon-reload"])).await.map_err(e)?;
    }
    if mount(host, &layout.dirs, &uuid, &verdict, &found).await? && host.mode() == Mode::Apply {
        check_mounted(node, host, storage, &layout).await?;
    }
    Ok(())
}

/// systemd takes a mount unit for active whenever anything is mounted at its path: what is
/// mounted after starting the units is checked, not assumed.
async fn check_mounted(node: &Node, host: &Host, storage: &Storage, layout: &Layout) -> Result<(), String> {
    let now = probe::run(host, storage, layout).await?;
    let after =
        storage::decide(node.name(), storage, &layout.dirs, &now).map_err(|r| format!("storage: {}", r.message))?;
    let unmounted: Vec<&str> = std::iter::once(MOUNT_POINT)
        .filter(|_| !after.mounted)
        .chain(layout.dirs.iter().map(|d| d.path).filter(|d| !after.bound.contains(d)))
        .collect();
    if unmounted.is_empty() {
        return Ok(());
    }
    Err(format!(
        "storage: the data disk is not mounted at {} after starting its units; see `systemctl status {}`",
        unmounted.join(", "),
        layout.units.join(" ")
    ))
}

/// Makes the file system on the empty disk (on a new LVM thin volume with `storage.lvm`) and
/// returns its UUID; when planning, a stand-in for the UUID the real run reads back.
async fn format(host: &Host, storage: &Storage, real: &str, found: &probe::Probe) -> Result<String, String> {
    let e = |e: RemoteError| e.to_string();
    let fs = storage.filesystem;
    let device = &storage.device.value;
    if fs == crate::config::Filesystem::Xfs && !found.has("mkfs.xfs") {
        crate::phases::install_package(host, "xfsprogs").await?;
    }
    // The disk was empty when probed a moment ago; it must still be, right before mkfs.
    let guard = format!(
        "found=$(wipefs --noheadings --output TYPE {d}) || exit 1\n\
         if [ -n \"$found\" ]; then echo {said} >&2; exit 1; fi\n",
        d = quote(real),
        said = quote(&format!("{device} is no longer empty; not formatted")),
    );
    let (what, script, fs_device) = match &storage.lvm {
        None => (format!("format {device} ({real}) as {}", fs.as_str()), fs.mkfs(real), real.to_string()),
        Some(lvm) => {
            if !found.has("lvcreate") {
                crate::phases::install_package(host, "lvm2 thin-provisioning-tools").await?;
            }
            host.ensure_file(render::LVM_PROFILE, render::LVM_PROFILE_TEXT.as_bytes(), Some(0o644)).await.map_err(e)?;
            let what = format!(
                "make LVM thin pool {vg}/{pool} ({size}) on {device} ({real}) and {} on its volume {vg}/{VOLUME} \
                 [unproven: pikube's lab kernel has no device-mapper]",
                fs.as_str(),
                vg = lvm.vg.value,
                pool = lvm.thinpool.value,
                size = lvm.size.value,
            );
            (what, render::lvm_script(real, lvm, fs), format!("/dev/{}/{VOLUME}", lvm.vg.value))
        }
    };
    host.apply(what, &Cmd::change_script(format!("{guard}{script}")).timeout(Duration::from_secs(600)))
        .await
        .map_err(e)?;
    if host.mode() == Mode::DryRun {
        return Ok("UUID-OF-THE-NEW-FILE-SYSTEM".into());
    }
    let read = Cmd::read_script(format!("blkid -p -s UUID -o value {}", quote(&fs_device)));
    let uuid = host.run_ok(&read).await.map_err(e)?.trim().to_string();
    if uuid.is_empty() || !uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(format!("the new file system on {fs_device} has no readable UUID ({uuid:?})"));
    }
    Ok(uuid)
}

/// Mounts the disk and binds the data directories onto it, enabled for every boot; whether
/// anything had to be started.
async fn mount(
    host: &Host,
    dirs: &[DataDir],
    uuid: &str,
    verdict: &Verdict,
    found: &probe::Probe,
) -> Result<bool, String> {
    let e = |e: RemoteError| e.to_string();
    let running =
        |unit: &str| found.units.get(unit).is_some_and(|(file, active)| file == "enabled" && active == "active");
    let disk_unit = storage::mount_unit(MOUNT_POINT);
    let mut started = false;
    if !(verdict.mounted && running(&disk_unit)) {
        started = true;
        if host.mode() == Mode::Apply {
            wait_for_udev(host, uuid).await?;
        }
        let script = format!("systemctl enable -q {u} && systemctl start {u}", u = quote(&disk_unit));
        host.apply(
            format!("mount the data disk at {MOUNT_POINT} ({disk_unit}), at every boot"),
            &Cmd::change_script(script),
        )
        .await
        .map_err(e)?;
    }
    let pending: Vec<&DataDir> =
        dirs.iter().filter(|d| !(verdict.bound.contains(&d.path) && running(&storage::mount_unit(d.path)))).collect();
    if pending.is_empty() {
        return Ok(started);
    }
    let on_disk: Vec<String> = pending.iter().map(|d| quote(&format!("{MOUNT_POINT}/{}", d.on_disk))).collect();
    let units: Vec<String> = pending.iter().map(|d| quote(&storage::mount_unit(d.path))).collect();
    let script = format!(
        "mkdir -p {} && systemctl enable -q {units} && systemctl start {units}",
        on_disk.join(" "),
        units = units.join(" ")
    );
    let paths: Vec<&str> = pending.iter().map(|d| d.path).collect();
    host.apply(format!("bind {} onto the data disk, at every boot", paths.join(", ")), &Cmd::change_script(script))
        .await
        .map_err(e)?;
    Ok(true)
}

/// udev links a new file system under /dev/disk/by-uuid shortly after mkfs; the mount unit
/// names it there.
async fn wait_for_udev(host: &Host, uuid: &str) -> Result<(), String> {
    let link = quote(&format!("/dev/disk/by-uuid/{uuid}"));
    let tries = UDEV_WAIT.as_secs() * 2;
    let script = format!(
        "command -v udevadm >/dev/null && udevadm settle 2>/dev/null; i=0; \
         while [ ! -e {link} ]; do i=$((i + 1)); [ $i -gt {tries} ] && exit 1; sleep 0.5; done"
    );
    let out = host
        .run(&Cmd::read_script(script).timeout(UDEV_WAIT + Duration::from_secs(30)))
        .await
        .map_err(|e| e.to_string())?;
    if out.success() {
        return Ok(());
    }
    Err(format!(
        "storage: udev did not link the data disk's file system at {link} within {}s; \
         is systemd-udevd running on the host?",
        UDEV_WAIT.as_secs()
    ))
}
