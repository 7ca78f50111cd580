//! Writing a (decompressed) image to a file or device with progress, and `pikube image prepare`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use super::customize::{self, Report};
use super::node::{self, CustomizeArgs};
use super::source::{self, Source};
use super::Error;
use crate::config::{Cluster, FileArg};

const CHUNK: usize = 4 << 20;

#[derive(Debug, clap::Args)]
pub struct PrepareArgs {
    /// Input image: .img, .img.xz, .img.gz or .zip.
    #[arg(long, value_name = "IN")]
    pub image: PathBuf,
    /// Output image for --node.
    #[arg(long, value_name = "OUT", required_unless_present = "all", conflicts_with = "all")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: FileArg,
    /// The cluster-file host to prepare the image for.
    #[arg(long, value_name = "NAME", required_unless_present = "all", conflicts_with = "all")]
    pub node: Option<String>,
    /// Prepare one image per host of the cluster file (into --out-dir, as NAME.img).
    #[arg(long, requires = "out_dir")]
    pub all: bool,
    /// Output directory for --all.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    #[command(flatten)]
    pub customize: CustomizeArgs,
}

/// What a write produced: the byte count and the SHA-256 of the bytes written.
pub struct Written {
    pub bytes: u64,
    pub sha256: [u8; 32],
    pub elapsed: Duration,
}

impl Written {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A bar over `total` progress units; the message carries the bytes written and their rate
/// (for compressed input the bar advances with the compressed bytes consumed).
pub fn progress_bar(total: u64, label: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    // The template is a constant; fall back to the default style rather than fail.
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{elapsed_precise}] [{wide_bar}] {percent:>3}% {msg} eta {eta}")
    {
        pb.set_style(style);
    }
    pb.set_prefix(label.to_string());
    pb
}

/// `"1234 MB, 85.2 MB/s"` for the progress message.
pub fn rate_message(bytes: u64, started: Instant) -> String {
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    format!("{} MB, {:.1} MB/s", bytes / 1_000_000, bytes as f64 / 1e6 / secs)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Streams the decompressed image into `out`: a reader thread decompresses and hashes while
/// this thread writes, so decompression and I/O overlap on the two stages.
pub fn write_image(mut src: Source, out: &mut File, label: &str) -> Result<Written, String> {
    let started = Instant::now();
    let pb = progress_bar(src.total, label);
    let consumed = src.consumed.clone();
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(2);
    let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || -> io::Result<[u8; 32]> {
        let mut hash = Sha256::new();
        loop {
            let mut buf = back_rx.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]);
            buf.resize(CHUNK, 0);
            let n = read_full(&mut src, &mut buf)?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            hash.update(&buf);
            if tx.send(buf).is_err() {
                // The writer gave up; its error is the one to report.
                break;
            }
        }
        src.finish()?;
        Ok(hash.finalize().into())
    });
    let mut bytes = 0u64;
    let mut write_err = None;
    for buf in rx.iter() {
        if let Err(e) = out.write_all(&buf) {
            write_err = Some(e);
            break;
        }
        bytes += buf.len() as u64;
        pb.set_position(consumed.load(Ordering::Relaxed));
        pb.set_message(rate_message(bytes, started));
        // The reader may have stopped; recycling is only an optimisation.
        let _ = back_tx.send(buf);
    }
    drop(rx);
    let read_result = reader.join().map_err(|_| "image reader thread panicked".to_string())?;
    if let Some(e) = write_err {
        pb.abandon();
        return Err(format!("write failed after {bytes} bytes: {e}"));
    }
    let sha256 = read_result.map_err(|e| {
        pb.abandon();
        format!("cannot read the image: {e}")
    })?;
    out.sync_all().map_err(|e| format!("fsync failed: {e}"))?;
    pb.finish_and_clear();
    if bytes == 0 {
        return Err("the image is empty".into());
    }
    Ok(Written { bytes, sha256, elapsed: started.elapsed() })
}

pub fn print_report(target: &Path, node: &str, r: &Report) {
    println!(
        "{}: {} partition table, boot partition {}; customised for {node} with {}",
        target.display(),
        r.table.as_str(),
        r.partition,
        r.method.describe()
    );
    println!("  wrote {}", r.written.join(", "));
}

pub fn prepare(args: PrepareArgs) -> Result<(), Error> {
    let cluster = Cluster::load(&args.cluster.file)?;
    let jobs: Vec<(String, PathBuf)> = match (&args.node, &args.out, args.all, &args.out_dir) {
        (Some(n), Some(out), false, _) => vec![(n.clone(), out.clone())],
        (None, None, true, Some(dir)) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            cluster.hosts().map(|h| (h.name.value.clone(), dir.join(format!("{}.img", h.name.value)))).collect()
        }
        _ => return Err("use either --node NAME --out OUT, or --all --out-dir DIR".into()),
    };
    // Resolve every node first, so a bad flag, missing secret or device as output fails
    // before any write.
    let nodes = jobs
        .iter()
        .map(|(name, out)| {
            check_output(out)?;
            let host = node::find_host(&cluster, name)?;
            Ok((node::node_config(&cluster, host, &args.customize)?, out))
        })
        .collect::<Result<Vec<_>, String>>()?;
    for (node, out) in nodes {
        if same_file(&args.image, out) {
            return Err(format!("--out {} is the input image; choose another path", out.display()).into());
        }
        let src = source::open(&args.image)?;
        println!("{}: {}", args.image.display(), src.describe());
        let mut file = create_private(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
        let result = write_image(src, &mut file, &node.hostname).and_then(|written| {
            drop(file);
            println!(
                "{}: {} bytes in {:.1}s ({:.1} MB/s)",
                out.display(),
                written.bytes,
                written.elapsed.as_secs_f64(),
                written.mb_per_s()
            );
            customize::apply(out, &node)
        });
        match result {
            Ok(report) => print_report(out, &node.hostname, &report),
            Err(e) => {
                // A half-made output is worse than none: it would boot uncustomised.
                let _ = std::fs::remove_file(out);
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// `--out` must be an image file: a block device (an SD card, or the system disk) would be
/// written with none of `flash`'s checks, and a FIFO or character device is no image.
fn check_output(out: &Path) -> Result<(), String> {
    match std::fs::metadata(out) {
        Ok(m) if !m.is_file() => Err(format!(
            "--out {} is not a regular file; `image prepare` writes image files only. To write \
             a card, use `pikube flash --image IMAGE --device {} --node NAME`",
            out.display(),
            out.display()
        )),
        _ => Ok(()),
    }
}

/// Creates (or truncates) an image file readable by its owner only: once customised it holds
/// the password hash and any Wi-Fi passphrase. An existing file gets its mode tightened too.
/// Anything but a regular file is refused once opened too (it may have been swapped in after
/// [`check_output`]), before its mode is touched or a byte is written.
pub fn create_private(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (use `pikube flash` to write a device)",
        ));
    }
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

pub fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
