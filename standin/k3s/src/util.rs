//! Small helpers: logrus-style logging, base64, time formatting, registries.yaml checks.

use serde_json::Value;

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// systemd `Type=notify` (sd_notify(3)): send `READY=1` to $NOTIFY_SOCKET as a unix
/// datagram. A name starting with '@' is an abstract socket. Without NOTIFY_SOCKET this
/// does nothing, as with the real k3s.
pub fn sd_notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let path = path.to_string_lossy().to_string();
    if path.is_empty() {
        return;
    }
    let res = (|| -> std::io::Result<()> {
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let sock = UnixDatagram::unbound()?;
        let addr = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())?
            }
            None => SocketAddr::from_pathname(&path)?,
        };
        sock.send_to_addr(b"READY=1", &addr)?;
        Ok(())
    })();
    match res {
        Ok(()) => log("info", "STAND-IN: sent READY=1 to systemd (NOTIFY_SOCKET)"),
        Err(e) => log("warning", &format!("STAND-IN: failed to notify systemd at NOTIFY_SOCKET={path}: {e}")),
    }
}

/// RFC 3339 UTC timestamp (no chrono dependency).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // civil-from-days (Howard Hinnant)
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// logrus text format, as k3s logs under systemd.
pub fn log(level: &str, msg: &str) {
    let msg = msg.replace('\\', "\\\\").replace('"', "\\\"");
    eprintln!("time=\"{}\" level={level} msg=\"{msg}\"", rfc3339(now_unix()));
}

pub fn fatal(msg: &str) -> ! {
    log("fatal", msg);
    std::process::exit(1);
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Percent-decoding of a query parameter (`+` is a space in a query).
pub fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex =
            b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn b64enc(data: &[u8]) -> String {
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn b64dec(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for ch in s.bytes().filter(|b| !b.is_ascii_whitespace() && *b != b'=') {
        let v = B64.iter().position(|&c| c == ch)? as u32;
        buf = buf << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits & 0xff) as u8);
        }
    }
    Some(out)
}

/// kubectl's human-readable age (k8s.io/apimachinery duration.HumanDuration, simplified).
pub fn human_age(secs: u64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        let s = secs % 60;
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        let mm = m % 60;
        if mm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{mm}m")
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        let hh = h % 24;
        if hh == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{hh}h")
        }
    } else {
        format!("{d}d")
    }
}

/// Columns padded like kubectl's tabwriter (min width + 3 spaces padding).
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut w = vec![0; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<width$}", width = w[i] + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Validate registries.yaml (docs.k3s.io/installation/private-registry): top-level
/// `mirrors` and `configs`. Type errors are fatal (real k3s fails to unmarshal);
/// unknown keys are returned as warnings (real k3s ignores them silently).
pub fn check_registries(text: &str) -> Result<Vec<String>, String> {
    let mut warn = Vec::new();
    if text.trim().is_empty() {
        return Ok(warn);
    }
    let v: Value = serde_saphyr::from_str(text).map_err(|e| format!("failed to parse registries.yaml: {e}"))?;
    let top = v.as_object().ok_or("registries.yaml: top level must be a mapping")?;
    for (k, val) in top {
        match k.as_str() {
            "mirrors" => {
                let m = val.as_object().ok_or("registries.yaml: mirrors must be a mapping")?;
                for (reg, mv) in m {
                    let mo = mv.as_object().ok_or(format!("registries.yaml: mirrors.{reg} must be a mapping"))?;
                    for (mk, x) in mo {
                        match mk.as_str() {
                            "endpoint" => {
                                let eps = x
                                    .as_array()
                                    .ok_or(format!("registries.yaml: mirrors.{reg}.endpoint must be a list"))?;
                                for e in eps {
                                    let s = e.as_str().ok_or(format!(
                                        "registries.yaml: mirrors.{reg}.endpoint entries must be strings"
                                    ))?;
                                    if !(s.starts_with("http://") || s.starts_with("https://")) {
                                        warn.push(format!("registries.yaml: mirrors.{reg} endpoint {s:?} has no http:// or https:// scheme"));
                                    }
                                }
                            }
                            "rewrite" => {
                                let r = x
                                    .as_object()
                                    .ok_or(format!("registries.yaml: mirrors.{reg}.rewrite must be a mapping"))?;
                                if r.values().any(|v| !v.is_string()) {
                                    return Err(format!(
                                        "registries.yaml: mirrors.{reg}.rewrite values must be strings"
                                    ));
                                }
                            }
                            other => warn.push(format!("registries.yaml: unknown key mirrors.{reg}.{other}")),
                        }
                    }
                }
            }
            "configs" => {
                let m = val.as_object().ok_or("registries.yaml: configs must be a mapping")?;
                for (reg, cv) in m {
                    let co = cv.as_object().ok_or(format!("registries.yaml: configs.{reg} must be a mapping"))?;
                    for (ck, x) in co {
                        let allowed: &[&str] = match ck.as_str() {
                            "auth" => &["username", "password", "auth", "identitytoken"],
                            "tls" => &["cert_file", "key_file", "ca_file", "insecure_skip_verify"],
                            other => {
                                warn.push(format!("registries.yaml: unknown key configs.{reg}.{other}"));
                                continue;
                            }
                        };
                        let o =
                            x.as_object().ok_or(format!("registries.yaml: configs.{reg}.{ck} must be a mapping"))?;
                        for (fk, fv) in o {
                            if !allowed.contains(&fk.as_str()) {
                                warn.push(format!("registries.yaml: unknown key configs.{reg}.{ck}.{fk}"));
                            } else if fk == "insecure_skip_verify" {
                                if !fv.is_boolean() {
                                    return Err(format!(
                                        "registries.yaml: configs.{reg}.tls.insecure_skip_verify must be a boolean"
                                    ));
                                }
                            } else if !fv.is_string() {
                                return Err(format!("registries.yaml: configs.{reg}.{ck}.{fk} must be a string"));
                            }
                        }
                    }
                }
            }
            other => warn.push(format!("registries.yaml: unknown top-level key {other}")),
        }
    }
    Ok(warn)
}

/// The host of an `https://host:port` URL (IPv6 without its brackets).
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let hostport = rest.split('/').next()?;
    match hostport.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map(|(h, _)| h),
        None => Some(hostport.rsplit_once(':').map_or(hostport, |(h, _)| h)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn b64_roundtrip() {
        for s in ["", "a", "ab", "abc", "hello world!"] {
            assert_eq!(b64dec(&b64enc(s.as_bytes())).unwrap(), s.as_bytes());
        }
        assert_eq!(b64enc(b"ab"), "YWI=");
    }
    #[test]
    fn time_and_age() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(150), "2m30s");
        assert_eq!(human_age(3 * 86400), "3d");
    }
    #[test]
    fn registries() {
        let ok = "mirrors:\n  docker.io:\n    endpoint:\n      - \"https://mirror.local:5000\"\nconfigs:\n  \"mirror.local:5000\":\n    auth:\n      username: u\n      password: p\n    tls:\n      insecure_skip_verify: true\n";
        assert!(check_registries(ok).unwrap().is_empty());
        assert!(check_registries("mirrors:\n  docker.io:\n    endpoint: https://x\n").is_err());
        assert!(check_registries("configs:\n  x:\n    tls:\n      insecure_skip_verify: yes-please\n").is_err());
        assert_eq!(check_registries("mirror:\n  a: b\n").unwrap().len(), 1);
        assert_eq!(check_registries("mirrors:\n  d:\n    endpoint: [\"mirror:5000\"]\n").unwrap().len(), 1);
    }
}
