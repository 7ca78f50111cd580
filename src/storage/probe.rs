//! What a host says about its storage disk, in one read-only round trip: the device and its
//! signatures, the block devices (for [`sysdisk`]'s system-disk resolution), mounts and swap,
//! pikube's mount unit, the data directories and the tools at hand.

use std::collections::BTreeMap;

use super::{Layout, MOUNT_POINT, VOLUME};
use crate::config::Storage;
use crate::remote::{quote, Cmd, FileState, Host, RemoteError};
use crate::sdcard::sysdisk::BlockDevices;

/// The host's answers; see [`script`] for where each comes from.
#[derive(Debug, Default)]
pub struct Probe {
    /// The device's real path (`/dev/sda`); None when it is no block device on the host.
    pub real: Option<String>,
    /// Signature types `wipefs` sees on the device (file systems, partition tables, RAID/LVM).
    pub signatures: Vec<String>,
    /// `blkid -p` of the device: TYPE, UUID, PTTYPE, …
    pub blkid: BTreeMap<String, String>,
    /// The LVM data volume (`/dev/<vg>/data`) when `storage.lvm` is set: its real path and blkid.
    pub volume: Option<(String, BTreeMap<String, String>)>,
    pub blocks: Listing,
    pub mountinfo: String,
    pub swaps: String,
    /// The file system UUID pikube's mount unit names (`What=/dev/disk/by-uuid/…`).
    pub unit_uuid: Option<String>,
    /// (UnitFileState, ActiveState) of pikube's mount units, by unit name.
    pub units: BTreeMap<String, (String, String)>,
    /// Checksum and mode of each file pikube writes for the layout (absent: no such file).
    pub files: BTreeMap<String, FileState>,
    /// Data directories (and the mount point) that hold something.
    pub busy_dirs: Vec<String>,
    /// Which of mkfs.ext4, mkfs.xfs, lvcreate the host has, and `device-mapper` when the kernel
    /// offers /dev/mapper/control.
    pub tools: Vec<String>,
}

impl Probe {
    pub fn has(&self, tool: &str) -> bool {
        self.tools.iter().any(|t| t == tool)
    }
}

/// The block devices of a host as its sysfs lists them, plus where its `/dev` links lead.
#[derive(Debug, Default)]
pub struct Listing {
    pub devices: Vec<Block>,
    /// Device names of each btrfs file system.
    pub btrfs: Vec<Vec<String>>,
    /// `/dev/…` paths named by mounts and swap, and the real paths they lead to.
    pub links: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub name: String,
    pub dev: (u32, u32),
    /// The whole disk, when this is a partition.
    pub parent: Option<String>,
    pub slaves: Vec<String>,
    pub bytes: u64,
    pub dm_name: Option<String>,
}

impl Listing {
    pub fn get(&self, name: &str) -> Option<&Block> {
        self.devices.iter().find(|b| b.name == name)
    }

    /// The partitions of `disk`.
    pub fn partitions(&self, disk: &str) -> Vec<&str> {
        self.devices.iter().filter(|b| b.parent.as_deref() == Some(disk)).map(|b| b.name.as_str()).collect()
    }

    /// Devices stacked on `name` (device-mapper, md), as its `holders` would list them.
    pub fn holders(&self, name: &str) -> Vec<&str> {
        self.devices.iter().filter(|b| b.slaves.iter().any(|s| s == name)).map(|b| b.name.as_str()).collect()
    }
}

impl BlockDevices for Listing {
    fn name_of_dev(&self, dev: (u32, u32)) -> Option<String> {
        self.devices.iter().find(|b| b.dev == dev).map(|b| b.name.clone())
    }

    fn disk_of(&self, name: &str) -> Option<(String, bool)> {
        let block = self.get(name)?;
        Some(match &block.parent {
            Some(disk) => (disk.clone(), true),
            None => (name.to_string(), false),
        })
    }

    fn name_of_source(&self, source: &str) -> Option<String> {
        let rel = source.strip_prefix("/dev/")?;
        if let Some(dm) = rel.strip_prefix("mapper/") {
            return self.devices.iter().find(|b| b.dm_name.as_deref() == Some(dm)).map(|b| b.name.clone());
        }
        let known = |path: &str| {
            let base = path.rsplit('/').next()?;
            self.get(base).map(|b| b.name.clone())
        };
        known(rel).or_else(|| known(self.links.get(source)?))
    }

    fn slaves(&self, name: &str) -> Vec<String> {
        self.get(name).map(|b| b.slaves.clone()).unwrap_or_default()
    }

    fn btrfs_siblings(&self, name: &str) -> Vec<String> {
        self.btrfs.iter().find(|fs| fs.iter().any(|d| d == name)).cloned().unwrap_or_default()
    }
}

/// The probe script for `storage` on a host of `layout`.
pub fn script(storage: &Storage, layout: &Layout) -> String {
    let volume = storage.lvm.as_ref().map(|l| format!("/dev/{}/{VOLUME}", l.vg.value)).unwrap_or_default();
    let dir_list: Vec<&str> = std::iter::once(MOUNT_POINT).chain(layout.dirs.iter().map(|d| d.path)).collect();
    format!(
        r#"LC_ALL=C; export LC_ALL
d={device}; v={volume}
sec() {{ echo "@@$1"; }}
sec device; [ -b "$d" ] && readlink -f "$d"
sec signatures; [ -b "$d" ] && {{ wipefs --noheadings --output TYPE "$d" || echo "(unreadable: wipefs failed)"; }}
sec blkid; [ -b "$d" ] && blkid -p -o export "$d"
sec volume; [ -n "$v" ] && [ -b "$v" ] && readlink -f "$v" && blkid -p -o export "$v"
sec blocks
for b in /sys/class/block/*; do
  [ -r "$b/dev" ] || continue
  r=$(readlink -f "$b"); p=-
  [ -e "$r/partition" ] && p=$(basename "$(dirname "$r")")
  s=$(ls "$b/slaves" 2>/dev/null | tr '\n' ',')
  echo "${{b##*/}} $(cat "$b/dev") $p ${{s:-,}} $(cat "$b/size") $(cat "$b/dm/name" 2>/dev/null)"
done
sec btrfs; for f in /sys/fs/btrfs/*/devices; do [ -d "$f" ] && echo $(ls "$f"); done
sec links
{{ awk '{{ for (i = 7; i <= NF; i++) if ($i == "-") {{ print $(i + 2); break }} }}' /proc/self/mountinfo
  tail -n +2 /proc/swaps | awk '{{ print $1 }}'; }} | grep '^/dev/' | sort -u |
  while read -r s; do echo "$s $(readlink -f "$s")"; done
sec mountinfo; cat /proc/self/mountinfo
sec swaps; cat /proc/swaps
sec unit; sed -n 's|^What=/dev/disk/by-uuid/||p' {unit_file} 2>/dev/null
sec units; systemctl show -p Id,UnitFileState,ActiveState {units} 2>/dev/null
sec files; for f in {files}; do [ -f "$f" ] && echo "$(sha256sum < "$f" | cut -d' ' -f1) $(stat -c %a "$f") $f"; done
sec dirs; for p in {dirs}; do [ -n "$(ls -A "$p" 2>/dev/null)" ] && echo "$p"; done
sec tools; for t in mkfs.ext4 mkfs.xfs lvcreate; do command -v $t >/dev/null && echo $t; done
  [ -e /dev/mapper/control ] && echo device-mapper
sec end
"#,
        device = quote(&storage.device.value),
        volume = quote(&volume),
        unit_file = quote(&format!("/etc/systemd/system/{}", super::mount_unit(MOUNT_POINT))),
        units = layout.units.iter().map(|u| quote(u)).collect::<Vec<_>>().join(" "),
        files = layout.paths().iter().map(|f| quote(f)).collect::<Vec<_>>().join(" "),
        dirs = dir_list.join(" "),
    )
}

/// Runs the probe on `host`.
pub async fn run(host: &Host, storage: &Storage, layout: &Layout) -> Result<Probe, String> {
    let out = host
        .run_ok(&Cmd::read_script(script(storage, layout)))
        .await
        .map_err(|e: RemoteError| format!("probing the storage disk: {e}"))?;
    parse(&out).map_err(|e| format!("{}: unexpected storage probe output: {e}", host.name))
}

pub fn parse(out: &str) -> Result<Probe, String> {
    let sections = crate::facts::sections(out);
    if !sections.contains_key("end") {
        return Err("the storage probe did not finish (missing end marker)".into());
    }
    let lines = |k: &str| -> Vec<&str> {
        sections.get(k).into_iter().flatten().map(|l| l.trim()).filter(|l| !l.is_empty()).collect()
    };
    let text = |k: &str| sections.get(k).map(|v| v.join("\n")).unwrap_or_default();
    let volume = lines("volume");
    Ok(Probe {
        real: lines("device").first().map(|s| s.to_string()),
        signatures: lines("signatures").iter().map(|s| s.to_string()).collect(),
        blkid: export(&lines("blkid")),
        volume: volume.split_first().map(|(real, rest)| (real.to_string(), export(rest))),
        blocks: Listing {
            devices: lines("blocks").iter().map(|l| block(l)).collect::<Result<_, _>>()?,
            btrfs: lines("btrfs").iter().map(|l| l.split_whitespace().map(String::from).collect()).collect(),
            links: lines("links")
                .iter()
                .filter_map(|l| l.split_once(' '))
                .map(|(a, b)| (a.to_string(), b.trim().to_string()))
                .collect(),
        },
        mountinfo: text("mountinfo"),
        swaps: text("swaps"),
        unit_uuid: lines("unit").first().map(|s| s.to_string()),
        units: units(&text("units")),
        files: lines("files")
            .iter()
            .filter_map(|l| {
                let mut f = l.splitn(3, ' ');
                let (sha256, mode, path) = (f.next()?, f.next()?, f.next()?);
                Some((path.to_string(), FileState { sha256: sha256.into(), mode: mode.into() }))
            })
            .collect(),
        busy_dirs: lines("dirs").iter().map(|s| s.to_string()).collect(),
        tools: lines("tools").iter().map(|s| s.to_string()).collect(),
    })
}

/// `KEY=value` lines (`blkid -o export`).
fn export(lines: &[&str]) -> BTreeMap<String, String> {
    lines.iter().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// One `blocks` line: `name maj:min parent|- slave,slave,|, sectors [dm name]`.
fn block(line: &str) -> Result<Block, String> {
    let bad = || format!("bad block device line {line:?}");
    let mut f = line.splitn(6, ' ');
    let name = f.next().ok_or_else(bad)?.to_string();
    let (major, minor) = f.next().and_then(|d| d.split_once(':')).ok_or_else(bad)?;
    let dev = (major.parse().map_err(|_| bad())?, minor.parse().map_err(|_| bad())?);
    let parent = f.next().filter(|p| *p != "-").map(String::from);
    let slaves = f.next().ok_or_else(bad)?.split(',').filter(|s| !s.is_empty()).map(String::from).collect();
    let sectors: u64 = f.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let dm_name = f.next().map(str::trim).filter(|n| !n.is_empty()).map(String::from);
    Ok(Block { name, dev, parent, slaves, bytes: sectors * 512, dm_name })
}

/// (UnitFileState, ActiveState) by `Id` from `systemctl show` blocks.
fn units(text: &str) -> BTreeMap<String, (String, String)> {
    text.split("\n\n")
        .filter_map(|block| {
            let prop = |k: &str| block.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix('=')).map(str::trim);
            Some((prop("Id")?.to_string(), (prop("UnitFileState")?.to_string(), prop("ActiveState")?.to_string())))
        })
        .collect()
}
