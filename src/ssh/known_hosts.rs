//! known_hosts in OpenSSH's format: plain, wildcard, negated and hashed (`|1|salt|hash`) host
//! fields, `@revoked` markers, and appending new entries.
//!
//! Our own reader rather than russh's: we need real file line numbers in messages, tolerance
//! of lines we cannot parse (OpenSSH skips them), markers, and wildcard patterns.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use russh::keys::ssh_key::known_hosts::HostPatterns;
use russh::keys::{parse_public_key_base64, Algorithm, PublicKey};

/// What known_hosts says about one host key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Known,
    /// The host has no entry at all.
    Unknown,
    /// The host is recorded with another key; `line` is the first such entry.
    Changed {
        line: usize,
    },
    /// The key is listed under `@revoked`.
    Revoked {
        line: usize,
    },
}

/// The host field OpenSSH writes and looks up: `host`, or `[host]:port` off port 22.
pub(crate) fn host_entry(address: &str, port: u16) -> String {
    let host = address.to_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

struct Entry {
    line: usize,
    revoked: bool,
    key: PublicKey,
}

/// Entries whose host field matches `host`. Lines that do not parse are skipped, as OpenSSH does;
/// `@cert-authority` lines are skipped too (host certificates are not negotiated).
fn entries_for(text: &str, host: &str) -> Vec<Entry> {
    let mut found = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let mut fields = raw.split_whitespace();
        let Some(mut first) = fields.next() else {
            continue;
        };
        if first.starts_with('#') {
            continue;
        }
        let mut revoked = false;
        if first.starts_with('@') {
            if first != "@revoked" {
                continue;
            }
            revoked = true;
            let Some(next) = fields.next() else { continue };
            first = next;
        }
        let (Some(_key_type), Some(blob)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !host_field_matches(first, host) {
            continue;
        }
        match parse_public_key_base64(blob) {
            Ok(key) => found.push(Entry { line: index + 1, revoked, key }),
            Err(e) => tracing::debug!("known_hosts line {}: unreadable key skipped: {e}", index + 1),
        }
    }
    found
}

fn host_field_matches(field: &str, host: &str) -> bool {
    if field.starts_with("|1|") {
        return match field.parse::<HostPatterns>() {
            Ok(HostPatterns::HashedName { salt, hash }) => {
                let mac = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt);
                ring::hmac::verify(&mac, host.as_bytes(), &hash).is_ok()
            }
            _ => false,
        };
    }
    super::pattern::matches_list(host, field.split(','))
}

fn read(path: &Path) -> Result<String, String> {
    match fs::read(path) {
        // Non-UTF-8 bytes only spoil their own line, which then fails to parse.
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Same key type; RSA counts once whatever signature hash it is used with.
pub(crate) fn same_kind(a: &Algorithm, b: &Algorithm) -> bool {
    a == b || (matches!(a, Algorithm::Rsa { .. }) && matches!(b, Algorithm::Rsa { .. }))
}

/// Checks `key` for `host` (as made by [`host_entry`]) against the file at `path`.
/// Like OpenSSH, any exact match wins over another entry of the same type; unlike OpenSSH
/// `accept-new`, a host recorded only with keys of other types counts as changed, not new.
pub(crate) fn check(path: &Path, host: &str, key: &PublicKey) -> Result<Verdict, String> {
    let entries = entries_for(&read(path)?, host);
    if let Some(e) = entries.iter().find(|e| e.revoked && e.key.key_data() == key.key_data()) {
        return Ok(Verdict::Revoked { line: e.line });
    }
    let valid = || entries.iter().filter(|e| !e.revoked);
    if valid().any(|e| e.key.key_data() == key.key_data()) {
        return Ok(Verdict::Known);
    }
    let other = valid().find(|e| same_kind(&e.key.algorithm(), &key.algorithm())).or_else(|| valid().next());
    Ok(match other {
        Some(e) => Verdict::Changed { line: e.line },
        None => Verdict::Unknown,
    })
}

/// Key algorithms recorded for `host`, so the handshake can ask for a key we can check.
pub(crate) fn known_algorithms(path: &Path, host: &str) -> Vec<Algorithm> {
    let text = read(path).unwrap_or_default();
    let mut algorithms: Vec<Algorithm> = Vec::new();
    for entry in entries_for(&text, host).into_iter().filter(|e| !e.revoked) {
        let algorithm = entry.key.algorithm();
        if !algorithms.iter().any(|a| same_kind(a, &algorithm)) {
            algorithms.push(algorithm);
        }
    }
    algorithms
}

/// Appends `host key` to `path`, creating the file (0600) and its directory (0700) if needed.
pub(crate) fn learn(path: &Path, host: &str, key: &PublicKey) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("cannot record host key in {}: {e}", path.display());
    // Written without the key's comment: the server's key has none, and the field is free text.
    let openssh = PublicKey::new(key.key_data().clone(), "").to_openssh().map_err(|e| fail(&e))?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(|e| fail(&e))?;
    }
    let mut file =
        fs::OpenOptions::new().read(true).append(true).create(true).mode(0o600).open(path).map_err(|e| fail(&e))?;
    let mut last = [0u8; 1];
    let needs_newline = file.seek(SeekFrom::End(-1)).is_ok() && file.read_exact(&mut last).is_ok() && last[0] != b'\n';
    let line = format!("{}{host} {openssh}\n", if needs_newline { "\n" } else { "" });
    // One write of the whole line: O_APPEND keeps it intact next to other writers.
    file.write_all(line.as_bytes()).map_err(|e| fail(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const KEY_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAILIG2T/B0l0gaqj3puu510tu9N1OkQ4znY3LYuEm5zCF";

    fn key(b64: &str) -> PublicKey {
        parse_public_key_base64(b64).expect("test key")
    }

    /// A known_hosts file in its own directory, removed on drop.
    struct Scratch {
        dir: std::path::PathBuf,
        path: std::path::PathBuf,
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn scratch(name: &str, text: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("pikube-kh-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        let path = dir.join("known_hosts");
        fs::write(&path, text).expect("scratch file");
        Scratch { dir, path }
    }

    #[test]
    fn entry_names_follow_openssh() {
        assert_eq!(host_entry("Pi1.LAN", 22), "pi1.lan");
        assert_eq!(host_entry("10.0.0.5", 2222), "[10.0.0.5]:2222");
    }

    #[test]
    fn verdicts_with_real_line_numbers() {
        let text = format!(
            "# comment\n\n\
             garbage line\n\
             pi1,10.0.0.1 ssh-ed25519 {KEY_A}\n\
             [pi2]:2222\tssh-ed25519  {KEY_B} some comment\n\
             *.lan,!bad.lan ssh-ed25519 {KEY_A}\n\
             @revoked pi3 ssh-ed25519 {KEY_B}\n\
             @cert-authority pi4 ssh-ed25519 {KEY_B}\n"
        );
        let scratch = scratch("verdicts", &text);
        let path = &scratch.path;
        assert_eq!(check(path, "pi1", &key(KEY_A)), Ok(Verdict::Known));
        assert_eq!(check(path, "10.0.0.1", &key(KEY_B)), Ok(Verdict::Changed { line: 4 }));
        assert_eq!(check(path, "[pi2]:2222", &key(KEY_B)), Ok(Verdict::Known));
        assert_eq!(check(path, "pi2", &key(KEY_B)), Ok(Verdict::Unknown));
        assert_eq!(check(path, "x.lan", &key(KEY_A)), Ok(Verdict::Known));
        assert_eq!(check(path, "bad.lan", &key(KEY_A)), Ok(Verdict::Unknown));
        assert_eq!(check(path, "pi3", &key(KEY_B)), Ok(Verdict::Revoked { line: 7 }));
        assert_eq!(check(path, "pi4", &key(KEY_B)), Ok(Verdict::Unknown));
        assert_eq!(check(&path.with_file_name("missing"), "pi1", &key(KEY_A)), Ok(Verdict::Unknown));
        assert_eq!(known_algorithms(path, "pi1"), vec![Algorithm::Ed25519]);
    }

    #[test]
    fn hashed_entries_match() {
        // From russh's own test suite: the hashed name is "example.com".
        let text = format!("|1|O33ESRMWPVkMYIwJ1Uw+n877jTo=|nuuC5vEqXlEZ/8BXQR7m619W6Ak= ssh-ed25519 {KEY_B}\n");
        let scratch = scratch("hashed", &text);
        let path = &scratch.path;
        assert_eq!(check(path, "example.com", &key(KEY_B)), Ok(Verdict::Known));
        assert_eq!(check(path, "example.com", &key(KEY_A)), Ok(Verdict::Changed { line: 1 }));
        assert_eq!(check(path, "example.org", &key(KEY_A)), Ok(Verdict::Unknown));
    }

    #[test]
    fn learn_appends_after_a_missing_newline() {
        let scratch = scratch("learn", &format!("pi1 ssh-ed25519 {KEY_A}"));
        let path = &scratch.path;
        learn(path, "[pi2]:2222", &key(KEY_B)).expect("learn");
        let text = fs::read_to_string(path).expect("read back");
        assert_eq!(text, format!("pi1 ssh-ed25519 {KEY_A}\n[pi2]:2222 ssh-ed25519 {KEY_B}\n"));
        assert_eq!(check(path, "[pi2]:2222", &key(KEY_B)), Ok(Verdict::Known));
    }
}
