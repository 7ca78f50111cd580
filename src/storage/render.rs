//! The files and commands storage preparation writes and runs (golden-tested): the disk's mount
//! unit, one bind-mount unit per data directory, the services' drop-ins, and for
//! `storage.lvm` the thin-pool commands and LVM profile.

use super::{mount_unit, DataDir, Layout, LABEL, MOUNT_POINT, VOLUME};
use crate::config::{Filesystem, Lvm, Storage};
use crate::remote::quote;

/// Where pikube's mount units and drop-ins go.
pub const UNIT_DIR: &str = "/etc/systemd/system";
/// The name of pikube's drop-in in each service's `.d` directory.
pub const DROPIN: &str = "pikube-storage.conf";
/// The LVM profile that lets dmeventd grow the thin pool before it fills up.
pub const LVM_PROFILE: &str = "/etc/lvm/profile/pikube-thinpool.profile";

/// Every file for `layout` (paths as [`Layout::paths`] lists them) with its text, for the disk
/// `storage` whose file system has `uuid`.
pub fn files(layout: &Layout, storage: &Storage, uuid: &str) -> Vec<(String, String)> {
    let mut texts = vec![disk_unit(&storage.device.value, uuid, storage.filesystem)];
    texts.extend(layout.dirs.iter().map(bind_unit));
    texts.extend(layout.services.iter().map(|(_, needs)| service_dropin(needs)));
    layout.paths().into_iter().zip(texts).collect()
}

/// The disk's file system at [`MOUNT_POINT`], by UUID. `nofail`: a missing disk does not stop
/// the boot (the host stays reachable); the services that need it require it themselves.
pub fn disk_unit(device: &str, uuid: &str, fs: Filesystem) -> String {
    format!(
        "# Written by pikube (hosts[].storage): the data disk {device}, by its file system's UUID.\n\
         [Unit]\n\
         Description=pikube data disk\n\
         \n\
         [Mount]\n\
         What=/dev/disk/by-uuid/{uuid}\n\
         Where={MOUNT_POINT}\n\
         Type={fs}\n\
         Options=defaults,noatime,nofail\n\
         \n\
         [Install]\n\
         WantedBy=local-fs.target\n",
        fs = fs.as_str()
    )
}

/// A data directory as a bind mount of its directory on the disk.
pub fn bind_unit(dir: &DataDir) -> String {
    format!(
        "# Written by pikube (hosts[].storage): {path} lives on the data disk.\n\
         [Unit]\n\
         Description=pikube data disk: {path}\n\
         Requires={disk}\n\
         After={disk}\n\
         \n\
         [Mount]\n\
         What={MOUNT_POINT}/{on_disk}\n\
         Where={path}\n\
         Type=none\n\
         Options=bind,nofail\n\
         \n\
         [Install]\n\
         WantedBy=local-fs.target\n",
        path = dir.path,
        on_disk = dir.on_disk,
        disk = mount_unit(MOUNT_POINT),
    )
}

/// A service's drop-in: it starts only with its data directories mounted (and after them).
pub fn service_dropin(dirs: &[&str]) -> String {
    format!(
        "# Written by pikube (hosts[].storage): this service keeps its data on the data disk.\n\
         # Without the disk it does not start, rather than fill the SD card underneath.\n\
         [Unit]\n\
         RequiresMountsFor={}\n",
        dirs.join(" ")
    )
}

/// Where a service's drop-in goes.
pub fn dropin_path(service: &str) -> String {
    format!("{UNIT_DIR}/{service}.service.d/{DROPIN}")
}

/// dmeventd extends the pool by 20% whenever it is 80% full, while the volume group has room.
pub const LVM_PROFILE_TEXT: &str = "# Written by pikube (hosts[].storage.lvm).\n\
activation {\n\
\tthin_pool_autoextend_threshold=80\n\
\tthin_pool_autoextend_percent=20\n\
}\n";

/// The thin pool on the empty disk, the data volume in it and its file system. Unproven:
/// pikube's lab kernel has no device-mapper; the commands follow lvmthin(7).
pub fn lvm_script(device: &str, lvm: &Lvm, fs: Filesystem) -> String {
    let (vg, pool, size) = (quote(&lvm.vg.value), quote(&lvm.thinpool.value), quote(&lvm.size.value));
    let device = quote(device);
    let profile = std::path::Path::new(LVM_PROFILE).file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    format!(
        "set -e\n\
         pvcreate {device}\n\
         vgcreate {vg} {device}\n\
         lvcreate --yes --type thin-pool --size {size} --metadataprofile {profile} --name {pool} {vg}\n\
         lvcreate --yes --type thin --virtualsize {size} --thinpool {pool} --name {VOLUME} {vg}\n\
         {mkfs}\n",
        mkfs = fs.mkfs(&format!("/dev/{}/{VOLUME}", lvm.vg.value)),
    )
}

/// Bytes of an LVM size as validation accepts it (`200G`): binary multiples.
pub fn lvm_bytes(size: &str) -> Option<u64> {
    let (digits, unit) = size.split_at_checked(size.len().checked_sub(1)?)?;
    let shift = match unit {
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return None,
    };
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// The label check for the golden files: ext4 and xfs both take at most 12 characters.
const _: () = assert!(LABEL.len() <= 12);
