//! `pikube flash`: write an image to a card with verification, then customise it for a node.
//!
//! Safety first: the disks holding the running system (`/`, /boot, /usr, swap) are never a
//! target, nor is any block device when those disks cannot be told; mounted and swapped-on disks
//! are refused; non-removable disks and partitions need `--force`; overwriting needs a typed
//! "yes" or `--yes`.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::customize;
use super::image::{self, Written};
use super::node::{self, CustomizeArgs, NodeConfig};
use super::source;
use super::sysdisk::{self, BlockDevices};
use super::Error;
use crate::config::{Cluster, FileArg};

#[derive(Debug, clap::Args)]
pub struct FlashArgs {
    /// Image to write: .img, .img.xz, .img.gz or .zip.
    #[arg(long, value_name = "IN")]
    pub image: PathBuf,
    /// Target: a whole-disk block device (e.g. /dev/sdb, /dev/mmcblk0) or a regular file.
    #[arg(long, value_name = "DEV")]
    pub device: PathBuf,
    /// Customise the card for this cluster-file host after writing.
    #[arg(long, value_name = "NAME", conflicts_with = "batch")]
    pub node: Option<String>,
    #[command(flatten)]
    pub cluster: FileArg,
    /// Do not ask before overwriting the target.
    #[arg(long)]
    pub yes: bool,
    /// Allow non-removable or partition targets (never a system disk, nor a mounted one).
    #[arg(long)]
    pub force: bool,
    /// One card per cluster host, in file order: prompts to insert each card.
    #[arg(long)]
    pub batch: bool,
    #[command(flatten)]
    pub customize: CustomizeArgs,
}

/// The target's kind, decided once from its metadata.
enum Target {
    /// A regular file (or a path that does not exist yet).
    File { exists: bool },
    /// A block device, known by its sysfs name (e.g. `sdb`, `loop3`, `sdb1`).
    Block { name: String, disk: String, partition: bool, size: u64 },
}

/// (device name, whole-disk name, is-partition) of a block device number.
fn block_names(major: u32, minor: u32) -> Option<(String, String, bool)> {
    let sys = PathBuf::from("/sys");
    let name = sys.name_of_dev((major, minor))?;
    let (disk, partition) = sys.disk_of(&name)?;
    Some((name, disk, partition))
}

fn dev_numbers(meta: &std::fs::Metadata) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let rdev = meta.rdev();
    (libc::major(rdev), libc::minor(rdev))
}

/// Why the target must not be written (or needs --force), as user-facing refusals.
fn check_block(dev: &Path, name: &str, disk: &str, partition: bool, force: bool) -> Result<(), String> {
    // Fail safe: when the system's disks cannot be told, no block device is known to be safe.
    let system = sysdisk::this_system().map_err(|e| format!("refusing {}: {e}", dev.display()))?;
    if system.contains(disk) {
        return Err(format!(
            "refusing {}: disk {disk} holds the root filesystem `/` or another part of the \
             running system (/boot, /usr or swap)",
            dev.display()
        ));
    }
    // In use: --force cannot help, the exclusive open below would be refused by the kernel.
    let busy = in_use(disk);
    if !busy.is_empty() {
        return Err(format!("refusing {}: {}; unmount it (and swapoff) first", dev.display(), busy.join("; ")));
    }
    let mut problems = Vec::new();
    if partition {
        problems.push(format!("{name} is a partition of {disk}; flash the whole disk /dev/{disk}"));
    }
    // Built-in SD slots (mmcblk) report removable=0; loop devices are files in disguise.
    let removable = std::fs::read_to_string(format!("/sys/block/{disk}/removable")).unwrap_or_default();
    let card_like = disk.starts_with("mmcblk") || disk.starts_with("loop");
    if removable.trim() != "1" && !card_like {
        problems.push(format!("{disk} is not a removable disk (/sys/block/{disk}/removable is not 1)"));
    }
    if problems.is_empty() || force {
        return Ok(());
    }
    Err(format!("refusing {}: {}; pass --force if you are sure", dev.display(), problems.join("; ")))
}

/// Where `disk` (or a partition of it, or anything stacked on them) is mounted or swapped on.
fn in_use(disk: &str) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    let uses = sysdisk::uses_of(disk, &info, &swaps, &PathBuf::from("/sys"));
    let mut problems = Vec::new();
    if !uses.mounted_at.is_empty() {
        problems.push(format!("{disk} (or a partition of it) is mounted at {}", uses.mounted_at.join(", ")));
    }
    if uses.swap {
        problems.push(format!("{disk} (or a partition of it) is in use as swap"));
    }
    problems
}

fn inspect(dev: &Path, force: bool) -> Result<Target, String> {
    let meta = match std::fs::metadata(dev) {
        Ok(m) => m,
        // A mistyped /dev/sdX must not become a regular file in /dev.
        Err(e) if e.kind() == io::ErrorKind::NotFound && dev.starts_with("/dev") => {
            return Err(format!("{}: no such device", dev.display()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Target::File { exists: false }),
        Err(e) => return Err(format!("cannot inspect {}: {e}", dev.display())),
    };
    let ft = meta.file_type();
    if ft.is_file() {
        return Ok(Target::File { exists: true });
    }
    if !ft.is_block_device() {
        return Err(format!("{} is neither a block device nor a regular file", dev.display()));
    }
    let (ma, mi) = dev_numbers(&meta);
    let (name, disk, partition) =
        block_names(ma, mi).ok_or_else(|| format!("{} ({ma}:{mi}) is not in /sys/dev/block", dev.display()))?;
    check_block(dev, &name, &disk, partition, force)?;
    let sectors = std::fs::read_to_string(format!("/sys/class/block/{name}/size")).unwrap_or_default();
    let size = sectors.trim().parse::<u64>().unwrap_or(0) * 512;
    Ok(Target::Block { name, disk, partition, size })
}

fn confirm(question: &str) -> Result<(), String> {
    if !io::stdin().is_terminal() {
        return Err(format!("{question}: no terminal to confirm on; pass --yes to overwrite without asking"));
    }
    eprint!("{question}? Type 'yes' to continue: ");
    let _ = io::stderr().flush();
    let mut answer = String::new();
    io::stdin().lock().read_line(&mut answer).map_err(|e| format!("cannot read the answer: {e}"))?;
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err("not confirmed; nothing was written".into())
    }
}

/// Re-reads what was written, bypassing the page cache, and hashes it.
fn read_back(dev: &Path, len: u64) -> Result<[u8; 32], String> {
    let mut f = File::open(dev).map_err(|e| format!("cannot reopen {} to verify: {e}", dev.display()))?;
    // Cached pages would only prove that memory holds the image; drop them so the read hits
    // the medium. Dirty pages (rewritten by someone else since) stay and are read as they are.
    // SAFETY: plain syscall on a valid open descriptor.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
    f.seek(SeekFrom::Start(0)).map_err(|e| format!("cannot seek {}: {e}", dev.display()))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut left = len;
    let started = std::time::Instant::now();
    let pb = image::progress_bar(len, "verify");
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = f.read(&mut buf[..want]).map_err(|e| format!("read-back of {} failed: {e}", dev.display()))?;
        if n == 0 {
            return Err(format!(
                "read-back of {} ended {left} bytes early: the target is smaller than the image",
                dev.display()
            ));
        }
        hash.update(&buf[..n]);
        pb.inc(n as u64);
        pb.set_message(image::rate_message(len - left + n as u64, started));
        left -= n as u64;
    }
    pb.finish_and_clear();
    Ok(hash.finalize().into())
}

/// Writes, verifies and optionally customises one card.
fn flash_one(args: &FlashArgs, node: Option<&NodeConfig>) -> Result<(), String> {
    let dev = &args.device;
    let target = inspect(dev, args.force)?;
    let what = match &target {
        Target::File { .. } => format!("file {}", dev.display()),
        Target::Block { name, disk, size, .. } => {
            let model = std::fs::read_to_string(format!("/sys/block/{disk}/device/model")).unwrap_or_default();
            format!(
                "{} ({name}, {:.1} GB{})",
                dev.display(),
                *size as f64 / 1e9,
                if model.trim().is_empty() { String::new() } else { format!(", {}", crate::term::clean(model.trim())) }
            )
        }
    };
    let exists = !matches!(target, Target::File { exists: false });
    if exists && !args.yes {
        confirm(&format!("Overwrite {what} with {}", args.image.display()))?;
    }
    let src = source::open(&args.image)?;
    println!("writing {} to {what}: {}", args.image.display(), src.describe());
    if let Target::Block { size, .. } = &target {
        if *size > 0 && src.format == source::Format::Raw && src.total > *size {
            return Err(format!("the image ({} bytes) is larger than {what}", src.total));
        }
    }
    let mut out = match &target {
        // A file target becomes exactly the image; a device keeps whatever lies past it.
        Target::File { .. } => image::create_private(dev),
        // O_EXCL on a block device, always (also with --force): the kernel refuses if anything
        // mounted or claimed it, also since the checks above (the check-then-write race).
        Target::Block { .. } => OpenOptions::new().write(true).custom_flags(libc::O_EXCL).open(dev),
    }
    .map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) => format!(
            "cannot open {} for writing: the kernel reports it in use (mounted, swap, LVM, RAID \
             or opened by another program); release it first",
            dev.display()
        ),
        _ => format!("cannot open {} for writing: {e}", dev.display()),
    })?;
    let label = node.map_or("flash", |n| n.hostname.as_str());
    let written: Written = image::write_image(src, &mut out, label)?;
    drop(out);
    println!(
        "wrote {} bytes in {:.1}s ({:.1} MB/s); verifying",
        written.bytes,
        written.elapsed.as_secs_f64(),
        written.mb_per_s()
    );
    let back = read_back(dev, written.bytes)?;
    if back != written.sha256 {
        return Err(format!(
            "verification FAILED: sha256 written {} but read back {} — the card or reader is faulty; do not use this card",
            hex::encode(written.sha256),
            hex::encode(back)
        ));
    }
    println!("verified: sha256 {}", hex::encode(written.sha256));
    if let Some(node) = node {
        let report = customize::apply(dev, node)?;
        image::print_report(dev, &node.hostname, &report);
    }
    if let Target::Block { partition: false, .. } = target {
        reread_partitions(dev);
    }
    Ok(())
}

/// Asks the kernel to re-read the new partition table, so the card's partitions show up
/// without re-plugging. Best effort: a busy or partitionless device just keeps the old view.
fn reread_partitions(dev: &Path) {
    if let Ok(f) = File::open(dev) {
        // BLKRRPART = _IO(0x12, 95); SAFETY: plain ioctl without arguments on an open fd.
        unsafe {
            libc::ioctl(f.as_raw_fd(), 0x125f as _);
        }
    }
}

pub fn flash(args: FlashArgs) -> Result<(), Error> {
    if args.batch {
        return batch(&args);
    }
    let node = match &args.node {
        Some(name) => {
            let cluster = Cluster::load(&args.cluster.file)?;
            let host = node::find_host(&cluster, name)?;
            Some(node::node_config(&cluster, host, &args.customize)?)
        }
        None => None,
    };
    Ok(flash_one(&args, node.as_ref())?)
}

fn batch(args: &FlashArgs) -> Result<(), Error> {
    let cluster = Cluster::load(&args.cluster.file)?;
    let nodes =
        cluster.hosts().map(|h| node::node_config(&cluster, h, &args.customize)).collect::<Result<Vec<_>, String>>()?;
    let stdin = io::stdin();
    for (i, node) in nodes.iter().enumerate() {
        eprint!(
            "[{}/{}] insert the card for {} into {}, then press Enter: ",
            i + 1,
            nodes.len(),
            node.hostname,
            args.device.display()
        );
        let _ = io::stderr().flush();
        let mut line = String::new();
        match stdin.lock().read_line(&mut line) {
            Ok(0) | Err(_) => return Err(format!("stopped before {}: no more input", node.hostname).into()),
            Ok(_) => {}
        }
        flash_one(args, Some(node)).map_err(|e| format!("{}: {e}", node.hostname))?;
        println!("card for {} is ready; remove it", node.hostname);
    }
    Ok(())
}
