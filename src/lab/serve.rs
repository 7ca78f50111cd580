//! A tiny static HTTP/1.1 file server for the lab package mirror (GET/HEAD only), run inside
//! the lab network namespace so only lab nodes can reach it.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use miette::{IntoDiagnostic, Result, WrapErr};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Requests larger than this are not from apt; refusing them bounds memory per connection.
const MAX_HEAD: usize = 16 * 1024;
const IDLE: Duration = Duration::from_secs(30);

pub async fn serve(root: PathBuf, listen: String, pid_file: PathBuf) -> Result<()> {
    let listener = TcpListener::bind(&listen)
        .await
        .into_diagnostic()
        .wrap_err_with(|| format!("binding the lab mirror to {listen}"))?;
    super::util::write_atomic(&pid_file, format!("{}\n", std::process::id()).as_bytes(), 0o644)?;
    eprintln!("serving {} on http://{listen}", root.display());
    loop {
        let (stream, peer) = listener.accept().await.into_diagnostic()?;
        let root = root.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &root).await {
                eprintln!("{peer}: {e}");
            }
        });
    }
}

/// Serves requests on one connection until the client closes it or goes idle (apt reuses
/// connections, so keep-alive saves a handshake per file).
async fn connection(stream: TcpStream, root: &Path) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    loop {
        let head = match tokio::time::timeout(IDLE, read_head(&mut stream)).await {
            Ok(Ok(Some(head))) => head,
            Ok(Ok(None)) | Err(_) => return Ok(()),
            Ok(Err(e)) => return Err(e),
        };
        let mut words = head.lines().next().unwrap_or_default().split(' ');
        let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let close = head.lines().any(|l| l.to_ascii_lowercase().replace(' ', "") == "connection:close");
        let out = stream.get_mut();
        if method != "GET" && method != "HEAD" {
            respond(out, "405 Method Not Allowed", None, true).await?;
            return Ok(());
        }
        let file = match resolve(root, target) {
            Some(path) => tokio::fs::File::open(&path).await.ok(),
            None => None,
        };
        let len = match &file {
            Some(f) => f.metadata().await.ok().filter(|m| m.is_file()).map(|m| m.len()),
            None => None,
        };
        eprintln!("{method} {target} {}", if len.is_some() { 200 } else { 404 });
        match (file, len) {
            (Some(mut file), Some(len)) => {
                respond(out, "200 OK", Some(len), close).await?;
                if method == "GET" {
                    tokio::io::copy(&mut file, out).await?;
                }
            }
            _ => respond(out, "404 Not Found", None, close).await?,
        }
        out.flush().await?;
        if close {
            return Ok(());
        }
    }
}

/// Reads one request head (up to the blank line); `None` when the client closed cleanly. No
/// line is read past [`MAX_HEAD`]: a client sending no newline cannot make it grow.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut BufReader<S>) -> std::io::Result<Option<String>> {
    let mut head = String::new();
    loop {
        let before = head.len();
        let room = (MAX_HEAD + 1 - head.len()) as u64;
        if (&mut *stream).take(room).read_line(&mut head).await? == 0 {
            return Ok(None);
        }
        if head.len() > MAX_HEAD {
            return Err(std::io::Error::other("request head too large"));
        }
        if head[before..].trim_end_matches(['\r', '\n']).is_empty() {
            return Ok(Some(head));
        }
    }
}

async fn respond(out: &mut TcpStream, status: &str, len: Option<u64>, close: bool) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nServer: pikube-lab\r\n");
    match len {
        Some(len) => head.push_str(&format!("Content-Type: application/octet-stream\r\nContent-Length: {len}\r\n")),
        None => head.push_str("Content-Length: 0\r\n"),
    }
    head.push_str(if close { "Connection: close\r\n\r\n" } else { "Connection: keep-alive\r\n\r\n" });
    out.write_all(head.as_bytes()).await
}

/// Maps a request target to a file under `root`; `None` for anything that could leave it
/// (`..`, absolute or encoded separators, NULs) or is not valid percent-encoding.
fn resolve(root: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next()?;
    if !path.starts_with('/') {
        return None;
    }
    let mut resolved = root.to_path_buf();
    for raw in path.split('/').filter(|s| !s.is_empty()) {
        let segment = percent_decode(raw)?;
        if segment.contains(['/', '\\', '\0']) {
            return None;
        }
        match Path::new(&segment).components().next() {
            Some(Component::Normal(_)) => resolved.push(&segment),
            Some(Component::CurDir) => {}
            _ => return None,
        }
    }
    Some(resolved)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::{read_head, resolve, MAX_HEAD};
    use std::path::Path;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// A client that sends an endless line and keeps the connection open: the head read stops
    /// at the bound with an error instead of buffering what comes.
    #[tokio::test]
    async fn a_head_line_without_end_is_cut_at_the_bound() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut server = tokio::io::BufReader::new(server);
        let writer = tokio::spawn(async move {
            let mut client = client;
            let _ = client.write_all(b"GET /").await;
            let _ = client.write_all(&vec![b'a'; 4 * MAX_HEAD]).await;
            // Held open: a read waiting for the line's end would wait forever.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let read = tokio::time::timeout(Duration::from_secs(5), read_head(&mut server)).await;
        writer.abort();
        let err = read.expect("the read stops at the bound").expect_err("too large");
        assert_eq!(err.to_string(), "request head too large");
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"GET /debian/x HTTP/1.1\r\nHost: m\r\n\r\n").await.unwrap();
        let head = read_head(&mut tokio::io::BufReader::new(server)).await.unwrap().unwrap();
        assert!(head.starts_with("GET /debian/x HTTP/1.1\r\n") && head.ends_with("\r\n\r\n"), "{head}");
    }

    #[test]
    fn resolves_inside_root_only() {
        let root = Path::new("/m");
        assert_eq!(
            resolve(root, "/debian/dists/bookworm/Release").unwrap(),
            Path::new("/m/debian/dists/bookworm/Release")
        );
        assert_eq!(
            resolve(root, "/debian/pool/main/a%2Bb_1.deb?x=1").unwrap(),
            Path::new("/m/debian/pool/main/a+b_1.deb")
        );
        for bad in ["/../etc/passwd", "/debian/%2e%2e/x", "/a%2fb", "/a%00", "x", "/%zz"] {
            assert!(resolve(root, bad).is_none(), "{bad}");
        }
    }
}
