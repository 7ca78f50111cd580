//! Partition tables (MBR and GPT), parsed by hand: only the boot partition's location is needed,
//! and SD-card images always use 512-byte sectors.

use std::io::{Read, Seek, SeekFrom};

const SECTOR: u64 = 512;

/// Which kind of table the image carries (printed to the user).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Mbr,
    Gpt,
}

impl Table {
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Mbr => "MBR",
            Table::Gpt => "GPT",
        }
    }
}

/// A partition's byte range inside the image or device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub index: usize,
    pub start: u64,
    pub len: u64,
    pub fat_type: bool,
}

#[derive(Debug, Clone)]
pub struct Layout {
    pub table: Table,
    pub partitions: Vec<Partition>,
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot read the partition table: {0}")]
    Io(#[from] std::io::Error),
    #[error("no partition table (no MBR signature 55 AA at byte 510): unknown image layout")]
    NoTable,
    #[error("the image starts with a bare FAT filesystem, not a partitioned disk: unknown image layout")]
    Superfloppy,
    #[error("corrupt GPT: {0}")]
    BadGpt(&'static str),
    #[error("no FAT partition found ({0}): the image has no boot partition pikube can edit")]
    NoFat(String),
}

/// FAT partition types in an MBR: FAT12, FAT16 (<32M, >32M, LBA), FAT32 (CHS, LBA), EFI.
const MBR_FAT_TYPES: [u8; 7] = [0x01, 0x04, 0x06, 0x0b, 0x0c, 0x0e, 0xef];
/// GPT type GUIDs as stored on disk (mixed-endian): Microsoft basic data and EFI system.
const GPT_BASIC_DATA: [u8; 16] =
    [0xa2, 0xa0, 0xd0, 0xeb, 0xe5, 0xb9, 0x33, 0x44, 0x87, 0xc0, 0x68, 0xb6, 0xb7, 0x26, 0x99, 0xc7];
const GPT_EFI_SYSTEM: [u8; 16] =
    [0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b];

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

/// Reads the partition table of `disk` (an image file or a block device).
pub fn read_layout<D: Read + Seek>(disk: &mut D) -> Result<Layout, LayoutError> {
    let disk_len = disk.seek(SeekFrom::End(0))?;
    let mut mbr = [0u8; 512];
    disk.seek(SeekFrom::Start(0))?;
    disk.read_exact(&mut mbr)?;
    if mbr[510..512] != [0x55, 0xaa] {
        return Err(LayoutError::NoTable);
    }
    if looks_like_fat(&mbr) {
        return Err(LayoutError::Superfloppy);
    }
    let entries: Vec<&[u8]> = (0..4).map(|i| &mbr[446 + 16 * i..446 + 16 * (i + 1)]).collect();
    if entries.iter().any(|e| e[4] == 0xee) {
        return read_gpt(disk, disk_len);
    }
    let partitions = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e[4] != 0 && u32_at(e, 12) != 0)
        .map(|(i, e)| Partition {
            index: i + 1,
            start: u64::from(u32_at(e, 8)) * SECTOR,
            len: u64::from(u32_at(e, 12)) * SECTOR,
            fat_type: MBR_FAT_TYPES.contains(&e[4]),
        })
        .filter(|p| p.start.saturating_add(p.len) <= disk_len)
        .collect();
    Ok(Layout { table: Table::Mbr, partitions })
}

fn read_gpt<D: Read + Seek>(disk: &mut D, disk_len: u64) -> Result<Layout, LayoutError> {
    let mut header = [0u8; 92];
    disk.seek(SeekFrom::Start(SECTOR))?;
    disk.read_exact(&mut header)?;
    if &header[0..8] != b"EFI PART" {
        return Err(LayoutError::BadGpt("protective MBR but no \"EFI PART\" header at LBA 1"));
    }
    let entries_lba = u64_at(&header, 72);
    let count = u32_at(&header, 80);
    let entry_size = u32_at(&header, 84);
    if !(128..=4096).contains(&entry_size) || count > 1024 {
        return Err(LayoutError::BadGpt("implausible partition entry size or count"));
    }
    let table_len = u64::from(count) * u64::from(entry_size);
    let table_start = entries_lba.checked_mul(SECTOR).ok_or(LayoutError::BadGpt("entry LBA out of range"))?;
    if table_start.saturating_add(table_len) > disk_len {
        return Err(LayoutError::BadGpt("partition entries lie past the end of the disk"));
    }
    // Bounded by the checks above: at most 1024 * 4096 bytes.
    let mut table = vec![0u8; table_len as usize];
    disk.seek(SeekFrom::Start(table_start))?;
    disk.read_exact(&mut table)?;
    let partitions = table
        .chunks_exact(entry_size as usize)
        .enumerate()
        .filter(|(_, e)| e[0..16].iter().any(|&b| b != 0))
        .filter_map(|(i, e)| {
            let first = u64_at(e, 32);
            let last = u64_at(e, 40);
            let start = first.checked_mul(SECTOR)?;
            let len = last.checked_sub(first)?.checked_add(1)?.checked_mul(SECTOR)?;
            (start.checked_add(len)? <= disk_len).then_some(Partition {
                index: i + 1,
                start,
                len,
                fat_type: e[0..16] == GPT_BASIC_DATA || e[0..16] == GPT_EFI_SYSTEM,
            })
        })
        .collect();
    Ok(Layout { table: Table::Gpt, partitions })
}

/// A FAT boot sector: x86 jump, sane bytes-per-sector, and the "FAT" type string (FAT12/16 at
/// 54, FAT32 at 82).
fn looks_like_fat(sector: &[u8; 512]) -> bool {
    let jump = sector[0] == 0xeb || sector[0] == 0xe9;
    let bps = u16::from_le_bytes([sector[11], sector[12]]);
    let label = &sector[54..57] == b"FAT" || &sector[82..85] == b"FAT";
    jump && matches!(bps, 512 | 1024 | 2048 | 4096) && label
}

/// The boot partition: the first partition typed FAT whose content really is a FAT filesystem.
pub fn boot_partition<D: Read + Seek>(disk: &mut D, layout: &Layout) -> Result<Partition, LayoutError> {
    for p in layout.partitions.iter().filter(|p| p.fat_type) {
        let mut sector = [0u8; 512];
        disk.seek(SeekFrom::Start(p.start))?;
        disk.read_exact(&mut sector)?;
        if looks_like_fat(&sector) {
            return Ok(*p);
        }
    }
    let found = if layout.partitions.is_empty() {
        format!("{} table with no partitions", layout.table.as_str())
    } else {
        format!(
            "{} table with {} partition(s), none holding a FAT filesystem",
            layout.table.as_str(),
            layout.partitions.len()
        )
    };
    Err(LayoutError::NoFat(found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// Hostile or truncated inputs give errors, never panics.
    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in [0usize, 1, 511, 512, 513, 1024, 4096, 70_000] {
            for variant in 0..64 {
                let mut data: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u8
                    })
                    .collect();
                if len >= 512 {
                    data[510] = 0x55;
                    data[511] = 0xaa;
                    if variant % 2 == 0 {
                        data[446 + 4] = 0xee;
                    }
                    if variant % 4 == 0 && len >= 1024 {
                        data[512..520].copy_from_slice(b"EFI PART");
                    }
                }
                let mut c = Cursor::new(data);
                if let Ok(layout) = read_layout(&mut c) {
                    let _ = boot_partition(&mut c, &layout);
                }
            }
        }
    }

    #[test]
    fn mbr_partition_past_the_end_is_ignored() {
        let mut data = vec![0u8; 4096];
        data[510] = 0x55;
        data[511] = 0xaa;
        data[446 + 4] = 0x0c;
        data[446 + 8..446 + 12].copy_from_slice(&2u32.to_le_bytes());
        data[446 + 12..446 + 16].copy_from_slice(&1_000_000u32.to_le_bytes());
        let layout = read_layout(&mut Cursor::new(data.clone())).unwrap();
        assert!(layout.partitions.is_empty());
        let err = boot_partition(&mut Cursor::new(data), &layout).unwrap_err();
        assert!(err.to_string().contains("no FAT partition"), "{err}");
    }
}
