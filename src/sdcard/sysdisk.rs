//! Which whole disks hold the running system, so `flash` never writes one of them (and
//! `hosts[].storage` never formats one: see `crate::storage`, which asks a host's listing).
//!
//! Device numbers from mountinfo are not enough: btrfs and ZFS report anonymous `0:N` numbers,
//! which name no block device. Each system mount is resolved through every source there is (the
//! device number, the mount source path, btrfs's device list, a ZFS pool's vdevs), down through
//! partitions and device-mapper/md `slaves` to whole disks. A system mount that cannot be resolved
//! is an error, never an empty answer: flashing must fail safe.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Mount points whose disks are the system: writing over any of them breaks this machine.
const SYSTEM_MOUNTS: [&str; 5] = ["/", "/boot", "/boot/firmware", "/boot/efi", "/usr"];
/// Filesystems no local disk holds: memory, the network, and systemd's untriggered automounts
/// (once triggered, the real mount shows as a line of its own).
const DISKLESS_FS: [&str; 10] = ["tmpfs", "ramfs", "rootfs", "autofs", "nfs", "nfs4", "cifs", "smb3", "9p", "virtiofs"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "cannot tell which disk holds {mount} ({fstype} from {device}), so no block device can be \
     ruled out as this machine's system disk; flash from a machine whose system disk pikube can \
     identify, or write a prepared image (`pikube image prepare --out card.img`) with another tool"
)]
pub struct Unknown {
    pub mount: String,
    pub fstype: String,
    pub device: String,
}

/// One line of /proc/self/mountinfo, as far as disk resolution needs it.
#[derive(Debug)]
pub struct Mount {
    pub dev: (u32, u32),
    pub at: String,
    pub fstype: String,
    pub source: String,
}

/// Parses mountinfo: `id parent maj:min root mountpoint opts [optional…] - fstype source super`.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split_whitespace().collect();
            let (ma, mi) = f.get(2)?.split_once(':')?;
            let mut r = right.split_whitespace();
            Some(Mount {
                dev: (ma.parse().ok()?, mi.parse().ok()?),
                at: unescape(f.get(4)?),
                fstype: r.next()?.to_string(),
                source: unescape(r.next().unwrap_or("none")),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out + rest
}

/// What resolving mounts to disks needs to know about block devices: this machine's sysfs (the
/// path of its root, `/sys`), or a listing gathered from another host.
pub trait BlockDevices {
    /// The name (`sda2`, `dm-0`) of the block device with this number, if any.
    fn name_of_dev(&self, dev: (u32, u32)) -> Option<String>;
    /// The whole disk a device belongs to, and whether the device is a partition of it.
    fn disk_of(&self, name: &str) -> Option<(String, bool)>;
    /// The name behind a `/dev/…` path: `/dev/sda2`, `/dev/mapper/root` (by dm name), or a
    /// symlink such as `/dev/disk/by-uuid/…` resolved on the machine it belongs to.
    fn name_of_source(&self, source: &str) -> Option<String>;
    /// The devices a device-mapper or md device is stacked on (its `slaves`).
    fn slaves(&self, name: &str) -> Vec<String>;
    /// Every device of the btrfs filesystem that has `name` among its devices (multi-device
    /// btrfs spreads `/` over all of them).
    fn btrfs_siblings(&self, name: &str) -> Vec<String>;
}

impl BlockDevices for PathBuf {
    fn name_of_dev(&self, (major, minor): (u32, u32)) -> Option<String> {
        let p = std::fs::canonicalize(self.join(format!("dev/block/{major}:{minor}"))).ok()?;
        Some(p.file_name()?.to_string_lossy().into_owned())
    }

    fn disk_of(&self, name: &str) -> Option<(String, bool)> {
        let p = std::fs::canonicalize(self.join("class/block").join(name)).ok()?;
        if p.join("partition").exists() {
            let parent = p.parent()?.file_name()?.to_string_lossy().into_owned();
            Some((parent, true))
        } else {
            Some((name.to_string(), false))
        }
    }

    fn name_of_source(&self, source: &str) -> Option<String> {
        let rel = source.strip_prefix("/dev/")?;
        if let Some(dm) = rel.strip_prefix("mapper/") {
            let dir = std::fs::read_dir(self.join("class/block")).ok()?;
            return dir.flatten().find_map(|e| {
                let name = std::fs::read_to_string(e.path().join("dm/name")).ok()?;
                (name.trim() == dm).then(|| e.file_name().to_string_lossy().into_owned())
            });
        }
        let base = Path::new(rel).file_name()?.to_string_lossy().into_owned();
        if self.join("class/block").join(&base).exists() {
            return Some(base);
        }
        let real = std::fs::canonicalize(source).ok()?;
        let base = real.file_name()?.to_string_lossy().into_owned();
        self.join("class/block").join(&base).exists().then_some(base)
    }

    fn slaves(&self, name: &str) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.join("class/block").join(name).join("slaves")) else {
            return Vec::new();
        };
        dir.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
    }

    fn btrfs_siblings(&self, name: &str) -> Vec<String> {
        let Ok(fsids) = std::fs::read_dir(self.join("fs/btrfs")) else {
            return Vec::new();
        };
        for fsid in fsids.flatten() {
            let Ok(devs) = std::fs::read_dir(fsid.path().join("devices")) else {
                continue;
            };
            let devs: Vec<String> = devs.flatten().map(|d| d.file_name().to_string_lossy().into_owned()).collect();
            if devs.iter().any(|d| d == name) {
                return devs;
            }
        }
        Vec::new()
    }
}

/// Whole disks under a device, following partitions and device-mapper/md `slaves` (LVM, LUKS,
/// RAID on top of partitions).
pub fn disks_under(sys: &dyn BlockDevices, name: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![name.to_string()];
    // Bounded: a malformed (or hostile) sysfs tree must not loop forever.
    for _ in 0..64 {
        let Some(n) = todo.pop() else { break };
        let (disk, _) = sys.disk_of(&n).unwrap_or((n.clone(), false));
        out.insert(disk);
        todo.extend(sys.slaves(&n));
    }
    out
}

/// The whole disks one mount lives on; Err when they cannot be determined.
pub fn disks_of_mount(
    sys: &dyn BlockDevices,
    m: &Mount,
    zpool: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Result<BTreeSet<String>, Unknown> {
    let unknown = || Unknown { mount: m.at.clone(), fstype: m.fstype.clone(), device: m.source.clone() };
    if DISKLESS_FS.contains(&m.fstype.as_str()) {
        return Ok(BTreeSet::new());
    }
    let mut names: Vec<String> = Vec::new();
    if m.fstype == "zfs" {
        let pool = m.source.split('/').next().unwrap_or_default();
        let vdevs = zpool(pool).ok_or_else(unknown)?;
        names.extend(vdevs.iter().filter_map(|v| sys.name_of_source(v)));
        if names.len() != vdevs.len() || names.is_empty() {
            return Err(unknown());
        }
    } else {
        // A real device number names the device; btrfs's anonymous 0:N names nothing.
        if m.dev.0 != 0 {
            names.extend(sys.name_of_dev(m.dev));
        }
        names.extend(sys.name_of_source(&m.source));
        if m.fstype == "btrfs" {
            let siblings: Vec<String> = names.iter().flat_map(|n| sys.btrfs_siblings(n)).collect();
            names.extend(siblings);
        }
    }
    if names.is_empty() {
        return Err(unknown());
    }
    Ok(names.iter().flat_map(|n| disks_under(sys, n)).collect())
}

/// The disks holding the system mounts and active swap partitions (`/proc/swaps` text).
pub fn system_disks(
    mountinfo: &str,
    swaps: &str,
    sys: &dyn BlockDevices,
    zpool: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Result<BTreeSet<String>, Unknown> {
    let (disks, unknown) = resolve_system(mountinfo, swaps, sys, zpool);
    match unknown.into_iter().next() {
        Some(first) => Err(first),
        None => Ok(disks),
    }
}

/// The system disks that can be told, and the system mounts that cannot: for a caller with
/// another guard against those (`storage` formats only a disk that nothing uses).
pub fn resolve_system(
    mountinfo: &str,
    swaps: &str,
    sys: &dyn BlockDevices,
    zpool: &dyn Fn(&str) -> Option<Vec<String>>,
) -> (BTreeSet<String>, Vec<Unknown>) {
    let mounts = parse_mountinfo(mountinfo);
    let mut unknown = Vec::new();
    if !mounts.iter().any(|m| m.at == "/") {
        unknown.push(Unknown { mount: "/".into(), fstype: "no entry".into(), device: "mountinfo".into() });
    }
    let mut disks = BTreeSet::new();
    for m in mounts.iter().filter(|m| SYSTEM_MOUNTS.contains(&m.at.as_str())) {
        match disks_of_mount(sys, m, zpool) {
            Ok(found) => disks.extend(found),
            Err(e) => unknown.push(e),
        }
    }
    // Swap files live on a mounted filesystem (covered above); swap partitions name a device.
    for dev in swap_devices(swaps) {
        if let Some(name) = sys.name_of_source(&dev) {
            disks.extend(disks_under(sys, &name));
        }
    }
    (disks, unknown)
}

/// The devices and files of `/proc/swaps` (its text).
fn swap_devices(swaps: &str) -> impl Iterator<Item = String> + '_ {
    swaps.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(unescape)
}

/// Where a whole disk is in use: the mount points of anything on it (its partitions, whatever
/// is stacked on them), and whether any of it is swap.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Uses {
    pub mounted_at: Vec<String>,
    pub swap: bool,
}

pub fn uses_of(disk: &str, mountinfo: &str, swaps: &str, sys: &dyn BlockDevices) -> Uses {
    let no_zfs = |_: &str| None;
    let on_disk = |source: &str| {
        // By source path too: a btrfs mount's numbers are virtual, its source is not.
        let base = Path::new(source).file_name().map(|b| b.to_string_lossy().into_owned()).unwrap_or_default();
        source.starts_with("/dev/") && (base == disk || is_partition_name(&base, disk))
    };
    let mut mounted_at: Vec<String> = parse_mountinfo(mountinfo)
        .into_iter()
        .filter(|m| on_disk(&m.source) || disks_of_mount(sys, m, &no_zfs).is_ok_and(|d| d.contains(disk)))
        .map(|m| m.at)
        .collect();
    mounted_at.sort();
    mounted_at.dedup();
    let swap = swap_devices(swaps)
        .any(|s| on_disk(&s) || sys.name_of_source(&s).is_some_and(|n| disks_under(sys, &n).contains(disk)));
    Uses { mounted_at, swap }
}

/// `sdb1` of `sdb`, `mmcblk0p1` of `mmcblk0`, `loop0p1` of `loop0`.
fn is_partition_name(name: &str, disk: &str) -> bool {
    name.strip_prefix(disk)
        .map(|rest| {
            let rest = rest.strip_prefix('p').unwrap_or(rest);
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())
        })
        .unwrap_or(false)
}

/// Vdev device paths of a ZFS pool, from `zpool list -vHP POOL` (None without zpool).
pub fn zpool_vdevs(pool: &str) -> Option<Vec<String>> {
    let out = std::process::Command::new("zpool").args(["list", "-vHP", pool]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let devs: Vec<String> = text.split_whitespace().filter(|w| w.starts_with("/dev/")).map(str::to_string).collect();
    (!devs.is_empty()).then_some(devs)
}

/// The disks of this machine's running system.
pub fn this_system() -> Result<BTreeSet<String>, Unknown> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    system_disks(&mountinfo, &swaps, &PathBuf::from("/sys"), &zpool_vdevs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake sysfs tree in a scratch directory, removed at the end.
    struct Sys(PathBuf);

    impl Drop for Sys {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    impl Sys {
        fn new(tag: &str) -> Sys {
            let root = std::env::temp_dir().join(format!("pikube-sysdisk-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(root.join("class/block")).unwrap();
            std::fs::create_dir_all(root.join("dev/block")).unwrap();
            Sys(root)
        }

        /// A disk (`parent` None) or a partition of `parent`, with its device number.
        fn dev(&self, name: &str, parent: Option<&str>, num: &str) -> PathBuf {
            let dir = match parent {
                Some(p) => self.0.join("devices/virtual/block").join(p).join(name),
                None => self.0.join("devices/virtual/block").join(name),
            };
            std::fs::create_dir_all(&dir).unwrap();
            if parent.is_some() {
                std::fs::write(dir.join("partition"), "2\n").unwrap();
            }
            symlink(&dir, self.0.join("class/block").join(name)).unwrap();
            symlink(&dir, self.0.join("dev/block").join(num)).unwrap();
            dir
        }
    }

    fn no_zfs(_: &str) -> Option<Vec<String>> {
        None
    }

    const SWAPS: &str = "Filename\tType\tSize\tUsed\tPriority\n";

    #[test]
    fn btrfs_root_on_nvme_is_found_through_its_source_not_its_0_n_number() {
        let sys = Sys::new("btrfs");
        sys.dev("nvme0n1", None, "259:0");
        sys.dev("nvme0n1p1", Some("nvme0n1"), "259:1");
        sys.dev("nvme0n1p2", Some("nvme0n1"), "259:2");
        sys.dev("sda", None, "8:0");
        sys.dev("sda1", Some("sda"), "8:1");
        // A second device of the same btrfs filesystem (a raid1 profile).
        let fs = sys.0.join("fs/btrfs/0b2e7c4a-1111-2222-3333-444455556666/devices");
        std::fs::create_dir_all(&fs).unwrap();
        symlink(sys.0.join("class/block/nvme0n1p2"), fs.join("nvme0n1p2")).unwrap();
        symlink(sys.0.join("class/block/sda1"), fs.join("sda1")).unwrap();
        let info = "\
29 1 0:35 /@ / rw,relatime shared:1 - btrfs /dev/nvme0n1p2 rw,ssd,subvol=/@
30 29 0:35 /@home /home rw,relatime shared:2 - btrfs /dev/nvme0n1p2 rw,ssd,subvol=/@home
31 29 259:1 / /boot/efi rw,relatime shared:3 - vfat /dev/nvme0n1p1 rw
32 29 0:40 / /tmp rw - tmpfs tmpfs rw
";
        let disks = system_disks(info, SWAPS, &sys.0, &no_zfs).unwrap();
        assert_eq!(disks, BTreeSet::from(["nvme0n1".into(), "sda".into()]));
        // The btrfs mount alone: the device number names nothing, the source does.
        let root = &parse_mountinfo(info)[0];
        assert_eq!((root.dev, root.at.as_str()), ((0, 35), "/"));
        assert!(sys.0.name_of_dev(root.dev).is_none());
    }

    #[test]
    fn mapper_sources_and_swap_partitions_lead_to_their_disks() {
        let sys = Sys::new("dm");
        sys.dev("sdb", None, "8:16");
        sys.dev("sdb3", Some("sdb"), "8:19");
        sys.dev("sdc", None, "8:32");
        sys.dev("sdc2", Some("sdc"), "8:34");
        let dm = sys.dev("dm-0", None, "254:0");
        std::fs::create_dir_all(dm.join("dm")).unwrap();
        std::fs::write(dm.join("dm/name"), "vg-root\n").unwrap();
        std::fs::create_dir_all(dm.join("slaves")).unwrap();
        symlink(sys.0.join("class/block/sdb3"), dm.join("slaves/sdb3")).unwrap();
        // ZFS-style numbers for a device-mapper root: resolved by its /dev/mapper name.
        let info = "27 1 0:99 / / rw - ext4 /dev/mapper/vg-root rw\n";
        let swaps = format!("{SWAPS}/dev/sdc2  partition\t999\t0\t-2\n/swapfile file 9 0 -3\n");
        let disks = system_disks(info, &swaps, &sys.0, &no_zfs).unwrap();
        // dm-0 is a disk of its own (flashing it would destroy `/` just as well).
        let want = ["dm-0", "sdb", "sdc"].map(String::from);
        assert_eq!(disks, BTreeSet::from(want));
    }

    #[test]
    fn zfs_root_uses_the_pools_vdevs_or_refuses() {
        let sys = Sys::new("zfs");
        sys.dev("sdd", None, "8:48");
        sys.dev("sdd1", Some("sdd"), "8:49");
        let info = "40 1 0:51 / / rw - zfs rpool/ROOT/debian rw,xattr\n";
        let pools = |p: &str| (p == "rpool").then(|| vec!["/dev/sdd1".to_string()]);
        let disks = system_disks(info, SWAPS, &sys.0, &pools).unwrap();
        assert_eq!(disks, BTreeSet::from(["sdd".into()]));
        let err = system_disks(info, SWAPS, &sys.0, &no_zfs).unwrap_err();
        assert_eq!(err.fstype, "zfs");
        assert!(err.to_string().contains("rpool/ROOT/debian"), "{err}");
    }

    #[test]
    fn an_unresolvable_root_is_an_error_not_an_empty_list() {
        let sys = Sys::new("unknown");
        sys.dev("sda", None, "8:0");
        for info in [
            // btrfs whose source is not in sysfs.
            "29 1 0:35 /@ / rw - btrfs /dev/nvme9n9p9 rw\n",
            // An overlay: whatever holds its layers is not named.
            "29 1 0:36 / / rw - overlay overlay rw,lowerdir=/a\n",
            // No `/` at all.
            "29 1 8:0 / /data rw - ext4 /dev/sda rw\n",
        ] {
            let err = system_disks(info, SWAPS, &sys.0, &no_zfs).unwrap_err();
            assert_eq!(err.mount, "/", "{info}");
            assert!(err.to_string().contains("cannot tell which disk holds /"));
        }
        // Memory and network roots, automounts: no disk at all, nothing to protect or unknown.
        let diskless = "1 1 0:2 / / rw - rootfs rootfs rw
2 1 0:60 / /boot/efi rw - autofs systemd-1 rw,fd=48
";
        assert_eq!(system_disks(diskless, SWAPS, &sys.0, &no_zfs), Ok(BTreeSet::new()));
        let nfs = "1 1 0:61 / / rw - nfs4 10.0.0.1:/pis/rasp01 rw\n";
        assert_eq!(system_disks(nfs, SWAPS, &sys.0, &no_zfs), Ok(BTreeSet::new()));
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        let m = parse_mountinfo("5 1 8:1 / /media/my\\040card rw - vfat /dev/sdx1 rw\n");
        assert_eq!(m[0].at, "/media/my card");
        assert_eq!(m[0].source, "/dev/sdx1");
    }
}
