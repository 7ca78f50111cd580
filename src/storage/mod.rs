//! `hosts[].storage`: the container runtime's and kubelet's data on a second disk (a USB SSD on
//! a Pi) instead of the SD card.
//!
//! The disk gets one file system (on an LVM thin volume with `storage.lvm`), mounted by UUID at
//! [`MOUNT_POINT`] through a systemd mount unit with `nofail` (a missing disk does not stop the
//! boot). Each data directory (containerd's root and kubelet's for kubeadm; k3s's
//! /var/lib/rancher and kubelet's for k3s) is a bind mount of a directory on it, and the
//! services that keep data there require those mounts (`RequiresMountsFor=`), so without the
//! disk they do not start rather than fill the SD card.
//!
//! Safety comes first and is decided here, from what [`probe`] read, before anything changes
//! (preflight) and again right before the change: pikube formats only an empty disk (no
//! signature, no partition table, no partitions, nothing stacked on it, not mounted, not swap),
//! never the disk holding the running system, and never hides data a directory already holds.

pub mod probe;
pub mod render;

use std::collections::BTreeSet;

use crate::check::{Finding, Severity};
use crate::config::{Distribution, Filesystem, Role, Storage};
use crate::fleet::Fleet;
use crate::sdcard::sysdisk::{self, BlockDevices};
use probe::Probe;

/// Where the disk's file system is mounted.
pub const MOUNT_POINT: &str = "/var/lib/pikube/storage";
/// The file system label pikube gives the disk (ext4 and xfs both allow 12 characters).
pub const LABEL: &str = "pikube-data";
/// The thin volume that holds the file system with `storage.lvm`.
pub const VOLUME: &str = "data";

/// Shell functions for teardown scripts: `on_data_disk DIR` succeeds when DIR is one of the
/// data directories bound from the data disk (the top mount at DIR comes from the device that
/// is mounted at [`MOUNT_POINT`]); `clear_dir DIR` then empties it and keeps the mount (the disk
/// is the host's, like its SD card), else removes DIR; `left_dir DIR` says whether what
/// `clear_dir` was to remove is still there.
pub const TEARDOWN_FUNCTIONS: &str = r#"on_data_disk() {
  awk -v d="$1" -v m=/var/lib/pikube/storage '$5 == m { disk = $3 } $5 == d { top = $3 }
    END { exit !(disk != "" && top == disk) }' /proc/self/mountinfo
}
clear_dir() { if on_data_disk "$1"; then find "$1" -xdev -mindepth 1 -delete; else rm -rf "$1"; fi; }
left_dir() {
  if on_data_disk "$1"; then [ -n "$(ls -A "$1")" ]; else [ -e "$1" ] || [ -L "$1" ]; fi
}
"#;

/// A data directory that lives on the disk: where services expect it, and its directory there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataDir {
    pub path: &'static str,
    pub on_disk: &'static str,
}

const CONTAINERD: DataDir = DataDir { path: "/var/lib/containerd", on_disk: "containerd" };
const KUBELET: DataDir = DataDir { path: "/var/lib/kubelet", on_disk: "kubelet" };
/// k3s's data dir (/var/lib/rancher/k3s: its containerd, images, datastore) and its parent,
/// as k3s users put it on an SSD.
const RANCHER: DataDir = DataDir { path: "/var/lib/rancher", on_disk: "rancher" };

/// The directories that move to the disk: the container runtime's and kubelet's.
fn data_dirs(distribution: Distribution) -> [DataDir; 2] {
    match distribution {
        Distribution::Kubeadm => [CONTAINERD, KUBELET],
        Distribution::K3s => [RANCHER, KUBELET],
    }
}

/// The services that keep data in those directories, each with the ones it needs.
fn services(distribution: Distribution, role: Role) -> Vec<(&'static str, Vec<&'static str>)> {
    match distribution {
        Distribution::Kubeadm => vec![("containerd", vec![CONTAINERD.path]), ("kubelet", vec![KUBELET.path])],
        Distribution::K3s => vec![(crate::k3s::unit_name(role), vec![RANCHER.path, KUBELET.path])],
    }
}

/// systemd's name for the mount unit of `path` (`systemd-escape --path --suffix=mount`).
pub fn mount_unit(path: &str) -> String {
    let mut out = String::new();
    for (i, part) in path.trim_matches('/').split('/').enumerate() {
        if i > 0 {
            out.push('-');
        }
        for (j, b) in part.bytes().enumerate() {
            if b.is_ascii_alphanumeric() || b == b'_' || (b == b'.' && j > 0) || b == b':' {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    out + ".mount"
}

/// What storage preparation puts on a host of one distribution and role.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dirs: [DataDir; 2],
    /// pikube's mount units: the disk's first, then one per data directory.
    pub units: Vec<String>,
    /// The services that keep data in the directories, each with the ones it needs.
    pub services: Vec<(&'static str, Vec<&'static str>)>,
}

impl Layout {
    pub fn of(distribution: Distribution, role: Role) -> Layout {
        let dirs = data_dirs(distribution);
        let units = std::iter::once(MOUNT_POINT).chain(dirs.iter().map(|d| d.path)).map(mount_unit).collect();
        Layout { dirs, units, services: services(distribution, role) }
    }

    /// The files pikube writes (the mount units, then the drop-ins), in [`render::files`]' order.
    pub fn paths(&self) -> Vec<String> {
        let units = self.units.iter().map(|u| format!("{}/{u}", render::UNIT_DIR));
        units.chain(self.services.iter().map(|(service, _)| render::dropin_path(service))).collect()
    }
}

/// Why the disk is not touched: a finding code, what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
    pub fix: String,
}

fn refuse(code: &'static str, message: String, fix: impl Into<String>) -> Refusal {
    Refusal { code, message, fix: fix.into() }
}

/// What `up` does with the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The whole disk's kernel name (`sda`).
    pub disk: String,
    /// The file system's UUID when it is pikube's already; None: the disk is empty and gets
    /// formatted.
    pub uuid: Option<String>,
    /// Data directories that are mounted from the disk already.
    pub bound: Vec<&'static str>,
    /// The disk's file system is mounted at [`MOUNT_POINT`].
    pub mounted: bool,
}

/// Decides from the probe whether the disk may be used and how; see the module comment.
pub fn decide(host: &str, storage: &Storage, dirs: &[DataDir], p: &Probe) -> Result<Verdict, Refusal> {
    let device = storage.device.value.as_str();
    let Some(real) = &p.real else {
        return Err(refuse(
            "storage-missing",
            format!("storage device {device} does not exist on {host}"),
            "plug the disk in, and check its name with `ls -l /dev/disk/by-id` on the host",
        ));
    };
    let name = real.rsplit('/').next().unwrap_or_default();
    let Some((disk, partition)) = p.blocks.disk_of(name) else {
        return Err(refuse(
            "storage-missing",
            format!("storage device {device} ({real}) is not in the host's /sys/class/block"),
            "name a disk the kernel lists (`lsblk` on the host)",
        ));
    };
    let shown = format!("{device} ({real})");
    if partition {
        return Err(refuse(
            "storage-partition",
            format!("storage device {shown} is a partition of {disk}"),
            format!(
                "name the whole disk (/dev/{disk}, better its /dev/disk/by-id name); pikube formats the whole disk"
            ),
        ));
    }
    let no_zfs = |_: &str| None;
    // A system mount that cannot be traced to a disk (an overlay root, say) leaves the checks
    // below in charge: a disk that carries the running system is never empty and unused.
    let (system, _untraced) = sysdisk::resolve_system(&p.mountinfo, &p.swaps, &p.blocks, &no_zfs);
    if system.contains(&disk) {
        return Err(refuse(
            "storage-system-disk",
            format!("storage device {shown} is the system disk: it holds `/`, /boot, /usr or swap"),
            "name the second disk (an SSD on USB), not the one the host boots from",
        ));
    }
    let ours = ours(storage, p)?;
    if ours.is_none() {
        in_use(&shown, &disk, p)?;
        empty(&shown, &disk, p)?;
        if storage.lvm.is_some() {
            lvm_ready(host, &shown, storage, &disk, p)?;
        }
    }
    let (bound, mounted) = placement(storage, dirs, p, real, ours.is_some())?;
    Ok(Verdict { disk, uuid: ours, bound, mounted })
}

/// Which data directories (and whether the mount point) are mounted from pikube's file system
/// already; a refusal when one of them holds data or another mount that the disk would hide,
/// or that systemd would take for the disk's (it does not mount over a mount point).
fn placement(
    storage: &Storage,
    dirs: &[DataDir],
    p: &Probe,
    real: &str,
    ours: bool,
) -> Result<(Vec<&'static str>, bool), Refusal> {
    let fs_dev = fs_device(storage, p, real).filter(|_| ours);
    let paths = std::iter::once(MOUNT_POINT).chain(dirs.iter().map(|d| d.path));
    let mut on_disk = Vec::new();
    for path in paths {
        match mounted_from(p, path) {
            Some(dev) if Some(dev) == fs_dev => on_disk.push(path),
            Some(_) => {
                let source = top_mount(p, path).map(|m| format!("{} ({})", m.source, m.fstype)).unwrap_or_default();
                return Err(refuse(
                    "storage-mount-point",
                    format!("{path} is a mount point already, of {source}; systemd would not mount the disk there"),
                    "take that mount away (its /etc/fstab line or mount unit) and run again, or leave `storage:` out for this host",
                ));
            }
            None => {}
        }
    }
    if let Some(dir) = p.busy_dirs.iter().find(|d| !on_disk.contains(&d.as_str())) {
        return Err(refuse(
            "storage-data-present",
            format!("{dir} already holds data; mounting the disk there would hide it"),
            format!(
                "pikube does not move a live node's data: add the disk before Kubernetes is installed, or stop \
                 the services that use {dir}, move its contents to the disk yourself and run `up` again; \
                 or leave `storage:` out for this host"
            ),
        ));
    }
    let mounted = on_disk.contains(&MOUNT_POINT);
    let bound = dirs.iter().map(|d| d.path).filter(|d| on_disk.contains(d)).collect();
    Ok((bound, mounted))
}

/// The UUID of the file system pikube made on this disk earlier (its mount unit names it),
/// when the disk still carries it; a refusal when it does but the cluster file now asks for
/// another kind.
fn ours(storage: &Storage, p: &Probe) -> Result<Option<String>, Refusal> {
    let Some(want) = &p.unit_uuid else { return Ok(None) };
    let (fs, on_lvm) = match (&p.volume, p.blkid.get("UUID")) {
        (Some((_, volume)), _) if volume.get("UUID") == Some(want) => (volume.get("TYPE"), true),
        (_, Some(uuid)) if uuid == want => (p.blkid.get("TYPE"), false),
        _ => return Ok(None),
    };
    let wanted = storage.filesystem.as_str();
    if fs.map(String::as_str) != Some(wanted) || on_lvm != storage.lvm.is_some() {
        let have = format!("{}{}", fs.map_or("unknown", String::as_str), if on_lvm { " on LVM" } else { "" });
        let want = format!("{wanted}{}", if storage.lvm.is_some() { " on LVM" } else { "" });
        return Err(refuse(
            "storage-changed",
            format!("the disk holds pikube's {have} file system, the cluster file asks for {want}"),
            "pikube does not reformat a disk that holds data: put `storage` back as it was, or wipe the disk \
             yourself (it holds the node's containers and kubelet data)",
        ));
    }
    Ok(Some(want.clone()))
}

/// The mount on top at `at`, if something is mounted there.
fn top_mount(p: &Probe, at: &str) -> Option<sysdisk::Mount> {
    sysdisk::parse_mountinfo(&p.mountinfo).into_iter().rev().find(|m| m.at == at)
}

/// The block device (major:minor) of the file system mounted at `at`, if something is.
fn mounted_from(p: &Probe, at: &str) -> Option<(u32, u32)> {
    top_mount(p, at).map(|m| m.dev)
}

/// The device number of the block device pikube's file system is on: the disk, or the LVM
/// data volume.
fn fs_device(storage: &Storage, p: &Probe, real: &str) -> Option<(u32, u32)> {
    let path = if storage.lvm.is_some() { p.volume.as_ref().map(|(r, _)| r.as_str())? } else { real };
    p.blocks.get(path.rsplit('/').next()?).map(|b| b.dev)
}

/// Refuses a disk that is mounted, swapped on or has something stacked on it.
fn in_use(shown: &str, disk: &str, p: &Probe) -> Result<(), Refusal> {
    let uses = sysdisk::uses_of(disk, &p.mountinfo, &p.swaps, &p.blocks);
    if !uses.mounted_at.is_empty() || uses.swap {
        let mut what = uses.mounted_at.iter().map(|m| format!("mounted at {m}")).collect::<Vec<_>>();
        if uses.swap {
            what.push("in use as swap".into());
        }
        return Err(refuse(
            "storage-in-use",
            format!("storage device {shown} is {}", what.join(", ")),
            "pikube only formats a disk nothing uses: unmount it (and swapoff), or name another disk",
        ));
    }
    let mut holders: BTreeSet<&str> = p.blocks.holders(disk).into_iter().collect();
    for part in p.blocks.partitions(disk) {
        holders.extend(p.blocks.holders(part));
    }
    if !holders.is_empty() {
        return Err(refuse(
            "storage-in-use",
            format!(
                "storage device {shown} carries {} (device-mapper/RAID)",
                holders.into_iter().collect::<Vec<_>>().join(", ")
            ),
            "pikube only formats a disk nothing uses: take those devices down, or name another disk",
        ));
    }
    Ok(())
}

/// Refuses a disk with any signature, partition table or partition.
fn empty(shown: &str, disk: &str, p: &Probe) -> Result<(), Refusal> {
    let mut found: Vec<String> = p.signatures.clone();
    for key in ["TYPE", "PTTYPE"] {
        if let Some(v) = p.blkid.get(key).filter(|v| !found.contains(v)) {
            found.push(v.clone());
        }
    }
    let partitions = p.blocks.partitions(disk);
    if !partitions.is_empty() {
        found.push(format!("partitions {}", partitions.join(", ")));
    }
    if found.is_empty() {
        return Ok(());
    }
    Err(refuse(
        "storage-not-empty",
        format!("storage device {shown} is not empty: {}", found.join(", ")),
        format!(
            "pikube formats only an empty disk. If nothing on it is needed, wipe it on the host \
             (`wipefs -a {}`, which destroys its data) and run again",
            p.real.as_deref().unwrap_or(shown)
        ),
    ))
}

/// Refuses `storage.lvm` where it cannot work: no device-mapper in the kernel, or a pool
/// larger than the disk.
fn lvm_ready(host: &str, shown: &str, storage: &Storage, disk: &str, p: &Probe) -> Result<(), Refusal> {
    let Some(lvm) = &storage.lvm else { return Ok(()) };
    if !p.has("device-mapper") {
        return Err(refuse(
            "storage-no-device-mapper",
            format!("{host}'s kernel offers no device-mapper (/dev/mapper/control), so LVM cannot run there"),
            "leave `storage.lvm` out to put the file system on the disk itself",
        ));
    }
    let size = render::lvm_bytes(&lvm.size.value).unwrap_or(u64::MAX);
    let disk_bytes = p.blocks.get(disk).map_or(0, |b| b.bytes);
    // The pool's metadata, its spare and LVM's own header need room beside the data.
    if size > disk_bytes / 100 * 98 {
        return Err(refuse(
            "storage-lvm-size",
            format!(
                "storage.lvm.size {} does not fit on {shown} ({} GiB) with room for the pool's metadata",
                lvm.size.value,
                disk_bytes >> 30
            ),
            "give a size at least 2% below the disk's",
        ));
    }
    Ok(())
}

/// The storage findings of every host with `storage:`: the kernel-name warning, and each
/// disk's refusal (an error that stops `up` on that host before anything changes).
pub async fn findings(fleet: &Fleet) -> Vec<Finding> {
    let per_host = fleet.nodes.iter().filter(|n| n.ok()).map(|node| async move {
        let mut out = Vec::new();
        let (Some(storage), Some(host)) = (&node.spec.storage, &node.host) else { return out };
        let finding = |severity, code, message: String, fix: String| Finding {
            host: node.name().to_string(),
            severity,
            code,
            message,
            fix,
        };
        if let Some(warning) = kernel_name_warning(storage) {
            out.push(finding(Severity::Warning, "storage-device-name", warning.0, warning.1));
        }
        let layout = Layout::of(fleet.cluster.distribution(), node.role());
        let verdict = match probe::run(host, storage, &layout).await {
            Ok(p) => decide(node.name(), storage, &layout.dirs, &p).err(),
            Err(e) => Some(refuse("storage-probe", e, "check that the host answers and has util-linux")),
        };
        if let Some(r) = verdict {
            out.push(finding(Severity::Error, r.code, r.message, r.fix));
        }
        out
    });
    futures::future::join_all(per_host).await.into_iter().flatten().collect()
}

/// Kernel names (/dev/sda) are handed out in the order disks appear; a second USB disk can
/// take the name at the next boot. pikube mounts by UUID, so only formatting could go wrong.
fn kernel_name_warning(storage: &Storage) -> Option<(String, String)> {
    let device = &storage.device.value;
    if device.starts_with("/dev/disk/by-id/") || device.starts_with("/dev/disk/by-path/") {
        return None;
    }
    Some((
        format!("storage device {device} is a kernel name, which can move to another disk between boots"),
        "name it by /dev/disk/by-id/… (`ls -l /dev/disk/by-id` on the host); pikube mounts by UUID either way".into(),
    ))
}

impl Filesystem {
    /// The mkfs call for a device found empty, labelled. mke2fs does not ask before overwriting
    /// when stdin is no terminal, so emptiness is pikube's own check (see the phase's guard);
    /// mkfs.xfs, never forced, refuses a device with a file system by itself as well.
    pub fn mkfs(self, device: &str) -> String {
        let device = crate::remote::quote(device);
        match self {
            Filesystem::Ext4 => format!("mkfs.ext4 -q -L {LABEL} {device} </dev/null"),
            Filesystem::Xfs => format!("mkfs.xfs -q -L {LABEL} {device} </dev/null"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cluster, Distribution};
    use std::path::Path;

    const SSD: &str = "/dev/disk/by-id/usb-Samsung_Portable_SSD_T7_S5SX-0:0";
    const UUID: &str = "6f1c0c2e-3a5b-4c1d-9e2f-0a1b2c3d4e5f";

    /// A Pi booted from its SD card (/ and /boot/firmware) with a USB SSD as sda.
    const BLOCKS: &str = "mmcblk0 179:0 - , 62333952 \nmmcblk0p1 179:1 mmcblk0 , 1048576 \n\
                          mmcblk0p2 179:2 mmcblk0 , 61280256 \nsda 8:0 - , 976773168 \n";
    const MOUNTS: &str = "22 1 179:2 / / rw,noatime shared:1 - ext4 /dev/mmcblk0p2 rw\n\
                          25 22 179:1 / /boot/firmware rw,relatime shared:5 - vfat /dev/mmcblk0p1 rw\n";

    fn storage(extra: &str) -> Storage {
        let text = format!(
            "name: pi\nhosts:\n  - name: rasp01\n    address: 192.168.1.101\n    role: server\n    storage:\n      device: {SSD}\n{extra}"
        );
        let cluster = Cluster::parse(Path::new("/nonexistent/cluster.yaml"), &text).expect("valid");
        let found = cluster.hosts().next().and_then(|h| h.storage.clone());
        found.expect("storage")
    }

    /// The probe's output for `real` with these extra sections (each `@@name\n…`).
    fn probe(real: &str, blocks: &str, mounts: &str, extra: &str) -> Probe {
        let out = format!(
            "@@device\n{real}\n@@blocks\n{blocks}@@mountinfo\n{mounts}@@swaps\nFilename Type Size Used Priority\n\
             {extra}@@tools\nmkfs.ext4\n@@end\n"
        );
        probe::parse(&out).expect("parses")
    }

    fn refusal(storage: &Storage, p: &Probe) -> Refusal {
        decide("rasp01", storage, &data_dirs(Distribution::Kubeadm), p).expect_err("refused")
    }

    #[test]
    fn an_empty_second_disk_is_formatted() {
        let v =
            decide("rasp01", &storage(""), &data_dirs(Distribution::Kubeadm), &probe("/dev/sda", BLOCKS, MOUNTS, ""));
        assert_eq!(v, Ok(Verdict { disk: "sda".into(), uuid: None, bound: vec![], mounted: false }));
    }

    #[test]
    fn the_system_disk_and_its_partitions_are_refused() {
        let r = refusal(&storage(""), &probe("/dev/mmcblk0", BLOCKS, MOUNTS, ""));
        assert_eq!(r.code, "storage-system-disk", "{r:?}");
        assert!(r.message.contains("(/dev/mmcblk0) is the system disk"), "{r:?}");
        let r = refusal(&storage(""), &probe("/dev/mmcblk0p2", BLOCKS, MOUNTS, ""));
        assert_eq!((r.code, r.fix.contains("/dev/mmcblk0,")), ("storage-partition", true), "{r:?}");
        // Booted from the SSD: the SSD is the system disk, through its partition's mount.
        let ssd_root = "22 1 8:2 / / rw - ext4 /dev/sda2 rw\n";
        let blocks = format!("{BLOCKS}sda2 8:2 sda , 1000 \n");
        assert_eq!(refusal(&storage(""), &probe("/dev/sda", &blocks, ssd_root, "")).code, "storage-system-disk");
    }

    #[test]
    fn a_disk_in_use_is_refused() {
        let mounted = format!("{MOUNTS}40 22 8:1 / /media/usb rw - exfat /dev/sda1 rw\n");
        let blocks = format!("{BLOCKS}sda1 8:1 sda , 976771072 \n");
        let r = refusal(&storage(""), &probe("/dev/sda", &blocks, &mounted, ""));
        assert_eq!(
            (r.code, r.message.as_str()),
            ("storage-in-use", &*format!("storage device {SSD} (/dev/sda) is mounted at /media/usb"))
        );
        // Swap counts as part of the running system, as `flash` sees it.
        let swap = "@@swaps\nFilename Type Size Used Priority\n/dev/sda1 partition 1 0 -2\n";
        let r = refusal(&storage(""), &probe("/dev/sda", &blocks, MOUNTS, swap));
        assert!(r.code == "storage-system-disk" && r.message.ends_with("/usr or swap"), "{r:?}");
        let crypt = format!("{BLOCKS}dm-0 253:0 - sda, 976771072 usbcrypt\n");
        let r = refusal(&storage(""), &probe("/dev/sda", &crypt, MOUNTS, ""));
        assert!(r.code == "storage-in-use" && r.message.contains("carries dm-0"), "{r:?}");
    }

    #[test]
    fn only_an_empty_disk_is_formatted() {
        let exfat = "@@signatures\nexfat\n@@blkid\nTYPE=exfat\nUUID=64A5-F009\n";
        let r = refusal(&storage(""), &probe("/dev/sda", BLOCKS, MOUNTS, exfat));
        assert_eq!((r.code, r.message.ends_with("is not empty: exfat")), ("storage-not-empty", true), "{r:?}");
        assert!(r.fix.contains("wipefs -a /dev/sda"), "{r:?}");
        let table = format!("{BLOCKS}sda1 8:1 sda , 976771072 \n");
        let gpt = "@@signatures\nPMBR\ngpt\n@@blkid\nPTTYPE=gpt\n";
        let r = refusal(&storage(""), &probe("/dev/sda", &table, MOUNTS, gpt));
        assert!(r.message.ends_with("is not empty: PMBR, gpt, partitions sda1"), "{r:?}");
        let r = refusal(&storage(""), &probe("", BLOCKS, MOUNTS, ""));
        assert_eq!(r.code, "storage-missing");
    }

    /// After the first `up`: the disk carries pikube's file system, mounted and bound.
    fn converged(dirs_bound: bool) -> Probe {
        let mut mounts = format!("{MOUNTS}50 22 8:0 / {MOUNT_POINT} rw - ext4 /dev/sda rw\n");
        if dirs_bound {
            mounts.push_str("51 22 8:0 /containerd /var/lib/containerd rw - ext4 /dev/sda rw\n");
            mounts.push_str("52 22 8:0 /kubelet /var/lib/kubelet rw - ext4 /dev/sda rw\n");
        }
        let ours = format!(
            "@@signatures\next4\n@@blkid\nTYPE=ext4\nUUID={UUID}\n@@unit\n{UUID}\n\
             @@dirs\n{MOUNT_POINT}\n/var/lib/containerd\n/var/lib/kubelet\n"
        );
        probe("/dev/sda", BLOCKS, &mounts, &ours)
    }

    #[test]
    fn pikubes_own_file_system_is_used_again_and_data_is_never_hidden() {
        let dirs = data_dirs(Distribution::Kubeadm);
        let v = decide("rasp01", &storage(""), &dirs, &converged(true)).expect("ours");
        let bound = vec!["/var/lib/containerd", "/var/lib/kubelet"];
        assert_eq!(v, Verdict { disk: "sda".into(), uuid: Some(UUID.into()), bound, mounted: true });
        // The same data but not on the disk (its binds are gone): it would be hidden.
        let r = refusal(&storage(""), &converged(false));
        assert_eq!(r.code, "storage-data-present", "{r:?}");
        assert!(r.message.starts_with("/var/lib/containerd already holds data"), "{r:?}");
        // Another mount on a data directory: systemd would take it for the disk's.
        let other = format!("{MOUNTS}60 22 7:1 /c /var/lib/containerd rw - ext4 /dev/loop1 rw\n");
        let r = refusal(&storage(""), &probe("/dev/sda", BLOCKS, &other, ""));
        assert_eq!(r.code, "storage-mount-point", "{r:?}");
        assert!(r.message.starts_with("/var/lib/containerd is a mount point already, of /dev/loop1 (ext4)"), "{r:?}");
        // Something left in the mount point itself would be hidden just the same.
        let left = probe("/dev/sda", BLOCKS, MOUNTS, &format!("@@dirs\n{MOUNT_POINT}\n"));
        assert_eq!(refusal(&storage(""), &left).code, "storage-data-present");
        // A fresh disk, but a node that already runs: its data stays where it is.
        let busy = probe("/dev/sda", BLOCKS, MOUNTS, "@@dirs\n/var/lib/kubelet\n");
        assert_eq!(refusal(&storage(""), &busy).code, "storage-data-present");
        // pikube's ext4, but the cluster file now asks for xfs or LVM: not reformatted.
        let r = refusal(&storage("      filesystem: xfs\n"), &converged(true));
        assert_eq!(r.code, "storage-changed", "{r:?}");
        assert!(r.message.contains("holds pikube's ext4 file system, the cluster file asks for xfs"), "{r:?}");
        let lvm = storage("      lvm: {vg: pikube, thinpool: pool, size: 400G}\n");
        assert_eq!(refusal(&lvm, &converged(true)).code, "storage-changed");
    }

    #[test]
    fn lvm_needs_device_mapper_and_room_for_metadata() {
        let lvm = |size: &str| storage(&format!("      lvm: {{vg: pikube, thinpool: pool, size: {size}}}\n"));
        let r = refusal(&lvm("400G"), &probe("/dev/sda", BLOCKS, MOUNTS, ""));
        assert_eq!(r.code, "storage-no-device-mapper", "{r:?}");
        let dm = "@@tools\ndevice-mapper\n";
        // sda is 465 GiB.
        let r = refusal(&lvm("460G"), &probe("/dev/sda", BLOCKS, MOUNTS, dm));
        assert_eq!((r.code, r.message.contains("(465 GiB)")), ("storage-lvm-size", true), "{r:?}");
        let v = decide("rasp01", &lvm("400G"), &data_dirs(Distribution::K3s), &probe("/dev/sda", BLOCKS, MOUNTS, dm));
        assert_eq!(v.map(|v| v.uuid), Ok(None));
    }

    #[test]
    fn an_overlay_root_leaves_the_emptiness_checks_in_charge() {
        // A container's root names no disk; an empty, unused loop disk is still recognised.
        let overlay = "30 1 0:40 / / rw - overlay pikube-lab rw,lowerdir=/a\n";
        let blocks = "vda 254:0 - , 536870912 \nloop3 7:3 - , 33554432 \n";
        let v = decide("node1", &storage(""), &data_dirs(Distribution::K3s), &probe("/dev/loop3", blocks, overlay, ""));
        assert_eq!(v.map(|v| v.disk), Ok("loop3".into()));
        // The system mounts that can be traced still count: the disk holding /boot is the system's.
        let boot = format!("{overlay}31 30 7:3 / /boot rw - ext4 /dev/loop3 rw\n");
        let r = refusal(&storage(""), &probe("/dev/loop3", blocks, &boot, ""));
        assert_eq!(r.code, "storage-system-disk", "{r:?}");
    }

    #[test]
    fn mount_units_are_named_as_systemd_escape_names_them() {
        for (path, unit) in [
            ("/var/lib/pikube/storage", "var-lib-pikube-storage.mount"),
            ("/var/lib/pikube-data", "var-lib-pikube\\x2ddata.mount"),
            ("/.hidden/x", "\\x2ehidden-x.mount"),
        ] {
            assert_eq!(mount_unit(path), unit);
        }
        let layout = Layout::of(Distribution::K3s, Role::Agent);
        assert_eq!(layout.units, ["var-lib-pikube-storage.mount", "var-lib-rancher.mount", "var-lib-kubelet.mount"]);
        let uuid = "0d6b2c4e-8f7a-4b1e-9c3d-2a5f6e7b8c9d";
        let rendered: Vec<String> =
            render::files(&layout, &storage(""), uuid).into_iter().map(|(path, _)| path).collect();
        assert_eq!(rendered, layout.paths(), "the probe reads the state of exactly the files written");
        assert_eq!(layout.paths()[3], "/etc/systemd/system/k3s-agent.service.d/pikube-storage.conf");
    }

    #[test]
    fn the_probe_output_is_read_field_by_field() {
        let sum = "a".repeat(64);
        let p = probe(
            "/dev/sda",
            "sda 8:0 - , 976773168 \ndm-0 253:0 - sda,sdb, 2048 my crypt\n",
            "",
            &format!(
                "@@files\n{sum} 644 /etc/systemd/system/var-lib-kubelet.mount\n@@units\n\
                 Id=var-lib-kubelet.mount\nUnitFileState=enabled\nActiveState=active\n\n\
                 Id=var-lib-rancher.mount\nUnitFileState=\nActiveState=inactive\n"
            ),
        );
        let dm = p.blocks.get("dm-0").expect("listed");
        assert_eq!((dm.dev, dm.slaves.clone(), dm.bytes), ((253, 0), vec!["sda".to_string(), "sdb".into()], 1 << 20));
        assert_eq!(p.blocks.name_of_source("/dev/mapper/my crypt"), Some("dm-0".into()));
        assert_eq!(p.blocks.holders("sdb"), ["dm-0"]);
        let unit = &p.files["/etc/systemd/system/var-lib-kubelet.mount"];
        assert_eq!((unit.sha256.as_str(), unit.mode.as_str()), (sum.as_str(), "644"));
        assert_eq!(p.units["var-lib-kubelet.mount"], ("enabled".into(), "active".into()));
        assert_eq!(p.units["var-lib-rancher.mount"], (String::new(), "inactive".into()));
        assert!(probe::parse("@@device\n/dev/sda\n").is_err(), "a cut-off output is an error");
    }

    #[test]
    fn kernel_names_are_warned_about() {
        assert!(kernel_name_warning(&storage("")).is_none());
        let text = "name: pi\nhosts:\n  - {name: a, address: 10.0.0.1, role: server, storage: {device: /dev/sda}}\n";
        let cluster = Cluster::parse(Path::new("/x/cluster.yaml"), text).expect("valid");
        let sda = cluster.hosts().next().and_then(|h| h.storage.clone()).expect("storage");
        let (message, fix) = kernel_name_warning(&sda).expect("a warning");
        assert!(message.contains("/dev/sda is a kernel name") && fix.contains("/dev/disk/by-id/"), "{message} {fix}");
    }
}
