//! Image inputs: raw `.img`, `.img.xz`, `.img.gz` and `.zip`, decompressed as a stream so a
//! multi-GB image never sits in memory or in a temporary file. The format is taken from the
//! file's magic bytes, not its name.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Xz,
    Gzip,
    Zip,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw image",
            Format::Xz => "xz-compressed image",
            Format::Gzip => "gzip-compressed image",
            Format::Zip => "zip archive",
        }
    }
}

/// Counts bytes passing through, so progress can be shown against the input file's size even
/// when the decompressed size is unknown.
struct Counting<R> {
    inner: R,
    consumed: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// An opened input: read the decompressed image from `reader`, then call [`Source::finish`].
pub struct Source {
    pub format: Format,
    /// Progress goal: the input file's size (compressed bytes), or for zip the entry's size.
    pub total: u64,
    /// Progress so far, in the same unit as `total`.
    pub consumed: Arc<AtomicU64>,
    /// Name of the image inside a zip archive.
    pub inner_name: Option<String>,
    reader: Box<dyn Read + Send>,
    worker: Option<JoinHandle<io::Result<u64>>>,
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl Source {
    /// What the input is, for messages: `xz-compressed image`, or with the zip entry named.
    pub fn describe(&self) -> String {
        match &self.inner_name {
            Some(n) => format!("{} (entry {n})", self.format.as_str()),
            None => self.format.as_str().to_string(),
        }
    }

    /// Surfaces errors of the zip worker thread (a truncated or corrupt archive ends the pipe
    /// early; only the worker knows why).
    pub fn finish(self) -> io::Result<()> {
        let Source { reader, worker, .. } = self;
        // Close our end first: a worker still writing (we stopped early) then fails with a
        // broken pipe instead of blocking the join forever.
        drop(reader);
        match worker {
            Some(w) => match w.join() {
                Ok(r) => r.map(|_| ()),
                Err(_) => Err(io::Error::other("zip reader thread panicked")),
            },
            None => Ok(()),
        }
    }
}

pub fn detect(head: &[u8]) -> Format {
    if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Format::Xz
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Format::Gzip
    } else if head.starts_with(b"PK\x03\x04") {
        Format::Zip
    } else {
        Format::Raw
    }
}

pub fn open(path: &Path) -> Result<Source, String> {
    let ctx = |e: io::Error| format!("cannot read image {}: {e}", path.display());
    let mut file = File::open(path).map_err(ctx)?;
    let input_len = file.metadata().map_err(ctx)?.len();
    let mut head = [0u8; 6];
    let got = read_up_to(&mut file, &mut head).map_err(ctx)?;
    let format = detect(&head[..got]);
    let consumed = Arc::new(AtomicU64::new(0));
    let mut inner_name = None;
    let mut total = input_len;
    let mut worker = None;
    let reader: Box<dyn Read + Send> = if format == Format::Zip {
        let (name, size, reader, handle) = open_zip(path, consumed.clone())?;
        inner_name = Some(name);
        worker = Some(handle);
        total = size;
        reader
    } else {
        let file = File::open(path).map_err(ctx)?;
        let counted = Counting { inner: BufReader::with_capacity(1 << 20, file), consumed: consumed.clone() };
        match format {
            Format::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, counted))),
            Format::Xz => Box::new(lzma_rust2::XzReader::new(counted, true)),
            Format::Raw | Format::Zip => Box::new(counted),
        }
    };
    Ok(Source { format, total, consumed, inner_name, reader, worker })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

type ZipParts = (String, u64, Box<dyn Read + Send>, JoinHandle<io::Result<u64>>);

/// The archive's image entry (the only `.img` file, or the only file) streamed through a pipe:
/// the zip crate's entry reader borrows the archive, so a thread owns both. Progress counts the
/// entry's decompressed bytes against its recorded size.
fn open_zip(path: &Path, progress: Arc<AtomicU64>) -> Result<ZipParts, String> {
    let ctx = |e: zip::result::ZipError| format!("cannot read zip archive {}: {e}", path.display());
    let file = File::open(path).map_err(|e| format!("cannot read image {}: {e}", path.display()))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(ctx)?;
    let mut files = Vec::new();
    for i in 0..archive.len() {
        let entry = archive.by_index_raw(i).map_err(ctx)?;
        if !entry.is_dir() {
            files.push((i, entry.name().map_err(ctx)?.to_string(), entry.size()));
        }
    }
    let images: Vec<_> = files.iter().filter(|(_, n, _)| n.to_lowercase().ends_with(".img")).collect();
    let (index, name, size) = match (images.as_slice(), files.as_slice()) {
        ([one], _) => (*one).clone(),
        ([], [only]) => only.clone(),
        _ => {
            let names: Vec<&str> = files.iter().map(|(_, n, _)| n.as_str()).collect();
            return Err(format!(
                "zip archive {} must hold exactly one .img file; it holds: {}",
                path.display(),
                if names.is_empty() { "nothing".to_string() } else { names.join(", ") }
            ));
        }
    };
    let (reader, writer) = io::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let handle = std::thread::spawn(move || -> io::Result<u64> {
        let mut entry = archive.by_index(index).map_err(io::Error::other)?;
        let mut out = Counting { inner: writer, consumed: progress };
        io::copy(&mut entry, &mut out)
    });
    Ok((name, size, Box::new(reader), handle))
}

impl<W: io::Write> io::Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.consumed.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
