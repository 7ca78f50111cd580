//! The boot partition's FAT filesystem, edited in place with `fatfs` (no mount, no root needed
//! for image files, works on a card whose partitions the kernel has not re-read yet).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use super::partition::Partition;

/// A byte window `[start, start+len)` of a file or block device, seen as a whole disk.
pub struct Slice {
    inner: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Slice {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }
}

impl Read for Slice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.remaining()) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        let got = self.inner.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for Slice {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.remaining()) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "write past the end of the boot partition"));
        }
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        let put = self.inner.write(&buf[..n])?;
        self.pos += put as u64;
        Ok(put)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Seek for Slice {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) if p <= self.len => {
                self.pos = p;
                Ok(p)
            }
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "seek outside the boot partition")),
        }
    }
}

/// The mounted-in-memory boot filesystem. Call [`BootFs::finish`] to flush, clear the dirty
/// flag and fsync; dropping without it leaves the card as fatfs's drop handler leaves it.
pub struct BootFs {
    fs: fatfs::FileSystem<Slice>,
    sync: File,
}

impl BootFs {
    pub fn open(file: File, part: &Partition) -> io::Result<BootFs> {
        let sync = file.try_clone()?;
        let slice = Slice { inner: file, start: part.start, len: part.len, pos: 0 };
        let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new().time_provider(&UtcClock))?;
        Ok(BootFs { fs, sync })
    }

    /// Lower-cased names in the root directory (FAT is case-insensitive).
    pub fn root_names(&self) -> io::Result<Vec<String>> {
        self.fs.root_dir().iter().map(|e| e.map(|e| e.file_name().to_lowercase())).collect()
    }

    pub fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match self.fs.root_dir().open_file(name) {
            Ok(mut f) => {
                let mut out = Vec::new();
                f.read_to_end(&mut out)?;
                Ok(Some(out))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates or replaces a root-directory file.
    pub fn write(&self, name: &str, content: &[u8]) -> io::Result<()> {
        let mut f = self.fs.root_dir().create_file(name)?;
        f.truncate()?;
        f.write_all(content)?;
        f.flush()
    }

    pub fn finish(self) -> io::Result<()> {
        self.fs.unmount()?;
        self.sync.sync_all()
    }
}

/// File timestamps from the system clock in UTC. (fatfs without its `chrono` feature would
/// stamp an invalid 1980-00-00; pulling in chrono for this is not worth it.)
#[derive(Debug)]
struct UtcClock;

impl UtcClock {
    fn now() -> fatfs::DateTime {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
        // Civil-from-days (H. Hinnant), valid for the whole FAT date range.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u16;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u16;
        let year = (yoe + era * 400 + i64::from(month <= 2)).clamp(1980, 2107) as u16;
        fatfs::DateTime {
            date: fatfs::Date { year, month, day },
            time: fatfs::Time {
                hour: (rem / 3600) as u16,
                min: (rem / 60 % 60) as u16,
                sec: (rem % 60) as u16,
                millis: 0,
            },
        }
    }
}

impl fatfs::TimeProvider for UtcClock {
    fn get_current_date(&self) -> fatfs::Date {
        Self::now().date
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        Self::now()
    }
}
