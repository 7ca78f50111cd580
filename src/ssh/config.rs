//! `~/.ssh/config` reading (Host, HostName, User, Port, IdentityFile, ProxyJump, UserKnownHostsFile)
//! and [`resolve`], which merges the cluster file's wishes, the ssh config and defaults into a
//! [`Target`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::pattern::matches_list;
use super::{HostKeyPolicy, Target};

/// Longest ProxyJump chain followed; a longer one is almost surely a loop in the ssh config.
const MAX_JUMPS: usize = 8;

/// A parsed OpenSSH client config. Only the options pikube uses are kept and other options
/// are ignored; `Match` blocks and `Include` lines are skipped with a warning.
#[derive(Debug, Clone, Default)]
pub struct SshConfig {
    blocks: Vec<Block>,
}

#[derive(Debug, Clone)]
struct Block {
    /// `None` for options before the first `Host` line: they apply to every host.
    patterns: Option<Vec<String>>,
    settings: Vec<Setting>,
}

#[derive(Debug, Clone)]
enum Setting {
    HostName(String),
    User(String),
    Port(u16),
    IdentityFile(String),
    ProxyJump(String),
    UserKnownHostsFile(String),
}

/// What the ssh config says about one host; values are as written (no `~`/`%` expansion).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSettings {
    pub host_name: Option<String>,
    pub user: Option<String>,
    pub port: Option<u16>,
    /// All `IdentityFile`s of the matching blocks, in file order.
    pub identity_files: Vec<String>,
    pub proxy_jump: Option<String>,
    pub user_known_hosts_file: Option<String>,
}

impl SshConfig {
    /// Reads `~/.ssh/config`; no home directory or no file gives an empty config.
    pub fn load_default() -> Result<SshConfig, String> {
        match home_dir() {
            Some(home) => SshConfig::load(&home.join(".ssh").join("config")),
            None => Ok(SshConfig::default()),
        }
    }

    /// Reads and parses `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<SshConfig, String> {
        match std::fs::read(path) {
            Ok(bytes) => SshConfig::parse(&bytes, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SshConfig::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Parses config text; `origin` only names the file in messages (`file:line: …`).
    pub fn parse(bytes: &[u8], origin: &Path) -> Result<SshConfig, String> {
        let mut blocks: Vec<Block> = Vec::new();
        let mut in_match = false;
        for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let at = || format!("{}:{}", origin.display(), index + 1);
            let line = std::str::from_utf8(raw).map_err(|_| format!("{}: not valid UTF-8", at()))?;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = split_keyword(line);
            let args = split_args(rest).map_err(|e| format!("{}: {e}", at()))?;
            let keyword = keyword.to_ascii_lowercase();
            let single = || match args.as_slice() {
                [one] => Ok(one.clone()),
                [] => Err(format!("{}: {keyword} needs a value", at())),
                _ => Err(format!("{}: {keyword} takes one value, got {}", at(), args.len())),
            };
            let setting = match keyword.as_str() {
                "host" => {
                    if args.is_empty() {
                        return Err(format!("{}: Host needs at least one pattern", at()));
                    }
                    in_match = false;
                    blocks.push(Block { patterns: Some(args), settings: Vec::new() });
                    continue;
                }
                "match" => {
                    tracing::warn!("{}: Match blocks are not supported; this block is ignored", at());
                    in_match = true;
                    continue;
                }
                _ if in_match => continue,
                "include" => {
                    tracing::warn!("{}: Include is not supported; ignored", at());
                    continue;
                }
                "hostname" => Setting::HostName(single()?),
                "user" => Setting::User(single()?),
                "port" => {
                    let value = single()?;
                    match value.parse::<u16>() {
                        Ok(port) if port != 0 => Setting::Port(port),
                        _ => return Err(format!("{}: bad port {value:?}", at())),
                    }
                }
                "identityfile" => Setting::IdentityFile(single()?),
                "proxyjump" => Setting::ProxyJump(single()?),
                "userknownhostsfile" => match args.first() {
                    Some(first) => Setting::UserKnownHostsFile(first.clone()),
                    None => return Err(format!("{}: UserKnownHostsFile needs a value", at())),
                },
                // The rest of OpenSSH's options are not pikube's to interpret.
                _ => continue,
            };
            match blocks.last_mut() {
                Some(block) => block.settings.push(setting),
                None => blocks.push(Block { patterns: None, settings: vec![setting] }),
            }
        }
        Ok(SshConfig { blocks })
    }

    /// Settings for `host`, first obtained value winning, as OpenSSH does.
    pub fn lookup(&self, host: &str) -> HostSettings {
        let mut out = HostSettings::default();
        let applies = |block: &&Block| match &block.patterns {
            None => true,
            Some(patterns) => matches_list(host, patterns.iter().map(String::as_str)),
        };
        for setting in self.blocks.iter().filter(applies).flat_map(|b| &b.settings) {
            match setting {
                Setting::HostName(v) => first(&mut out.host_name, v),
                Setting::User(v) => first(&mut out.user, v),
                Setting::Port(v) => first(&mut out.port, v),
                Setting::IdentityFile(v) => out.identity_files.push(v.clone()),
                Setting::ProxyJump(v) => first(&mut out.proxy_jump, v),
                Setting::UserKnownHostsFile(v) => first(&mut out.user_known_hosts_file, v),
            }
        }
        out
    }
}

fn first<T: Clone>(slot: &mut Option<T>, value: &T) {
    if slot.is_none() {
        *slot = Some(value.clone());
    }
}

/// OpenSSH allows `Keyword value`, `Keyword=value` and `Keyword = value`.
fn split_keyword(line: &str) -> (&str, &str) {
    let end = line.find(|c: char| c.is_whitespace() || c == '=').unwrap_or(line.len());
    let (keyword, rest) = line.split_at(end);
    let rest = rest.trim_start();
    (keyword, rest.strip_prefix('=').unwrap_or(rest).trim_start())
}

/// Splits arguments like OpenSSH: whitespace-separated, `"…"`/`'…'` quoting, `\` escapes,
/// and an unquoted `#` starting a word ends the line.
fn split_args(rest: &str) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.peek() {
            None | Some('#') => return Ok(args),
            Some(_) => {}
        }
        let mut arg = String::new();
        let mut quote: Option<char> = None;
        while let Some(c) = chars.next() {
            match (c, quote) {
                ('\\', _) => match chars.next() {
                    Some(escaped) => arg.push(escaped),
                    None => return Err("trailing backslash".into()),
                },
                ('"' | '\'', None) => quote = Some(c),
                (c, Some(q)) if c == q => quote = None,
                (c, None) if c.is_whitespace() => break,
                (c, _) => arg.push(c),
            }
        }
        if quote.is_some() {
            return Err("unterminated quote".into());
        }
        args.push(arg);
    }
}

/// What the cluster file asked for one host (defaults and per-host overrides already merged).
#[derive(Debug, Clone)]
pub struct Wanted {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_file: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub host_key_policy: HostKeyPolicy,
    /// `[user@]host[:port]` or an ssh config alias; `a,b` chains hops; `none` disables a ProxyJump
    /// the ssh config would add.
    pub proxy_jump: Option<String>,
    pub connect_timeout: Duration,
    pub use_agent: bool,
}

/// Builds the [`Target`] for host `name` at `address`. Precedence: the cluster file (`wanted`),
/// then the ssh config (Host patterns matched against `address`, then `name`), then defaults
/// (`$USER` or root, port 22, ~/.ssh/id_{ed25519,ecdsa,rsa} that exist, ~/.ssh/known_hosts).
/// A `HostName` is honoured only for `address`: an explicit address is never redirected by a
/// block that matched the name.
pub fn resolve(name: &str, address: &str, wanted: &Wanted, ssh_config: &SshConfig) -> Result<Target, String> {
    let address = address.trim();
    if address.is_empty() {
        return Err("empty address".into());
    }
    let by_address = ssh_config.lookup(address);
    let by_name = if name == address { HostSettings::default() } else { ssh_config.lookup(name) };
    let mut identity_files = by_address.identity_files.clone();
    identity_files.extend(by_name.identity_files.iter().filter(|f| !by_address.identity_files.contains(f)).cloned());
    let settings = HostSettings {
        host_name: by_address.host_name,
        user: by_address.user.or(by_name.user),
        port: by_address.port.or(by_name.port),
        identity_files,
        proxy_jump: by_address.proxy_jump.or(by_name.proxy_jump),
        user_known_hosts_file: by_address.user_known_hosts_file.or(by_name.user_known_hosts_file),
    };
    let explicit = Hop { user: wanted.user.clone(), host: address.to_string(), port: wanted.port };
    let jump = match wanted.proxy_jump.as_deref().or(settings.proxy_jump.as_deref()) {
        Some(spec) => resolve_jumps(spec, wanted, ssh_config, 0)?,
        None => None,
    };
    build(name, explicit, settings, wanted, jump, Role::Target)
}

/// One `[user@]host[:port]` hop as written.
struct Hop {
    user: Option<String>,
    host: String,
    port: Option<u16>,
}

/// The cluster file's key replaces the ssh config's keys for the target itself; for a jump host
/// it is only tried after them (the bastion often takes the same key as the nodes).
enum Role {
    Target,
    Jump,
}

fn build(
    name: &str,
    hop: Hop,
    settings: HostSettings,
    wanted: &Wanted,
    jump: Option<Box<Target>>,
    role: Role,
) -> Result<Target, String> {
    let user = hop.user.or(settings.user).unwrap_or_else(local_user);
    let port = hop.port.or(settings.port).unwrap_or(22);
    let address = match &settings.host_name {
        Some(host_name) => expand(host_name, &hop.host, &hop.host, &user, port)?,
        None => hop.host.clone(),
    };
    let config_file = |file: &str| -> Result<PathBuf, String> {
        Ok(expand_tilde(Path::new(&expand(file, &address, &hop.host, &user, port)?)))
    };
    let cluster_key = wanted.identity_file.as_deref().map(expand_tilde);
    let mut identity_files = Vec::new();
    match (&cluster_key, &role) {
        (Some(key), Role::Target) => identity_files.push(key.clone()),
        _ => {
            for file in &settings.identity_files {
                identity_files.push(config_file(file)?);
            }
            if let Some(key) = cluster_key.filter(|k| !identity_files.contains(k)) {
                identity_files.push(key);
            }
        }
    }
    if identity_files.is_empty() {
        identity_files = default_identity_files();
    }
    let known_hosts = match (&wanted.known_hosts, &settings.user_known_hosts_file) {
        (Some(path), _) => expand_tilde(path),
        (None, Some(file)) => config_file(file)?,
        (None, None) => home_dir()
            .map(|home| home.join(".ssh").join("known_hosts"))
            .ok_or("no home directory to find ~/.ssh/known_hosts in; set known_hosts explicitly")?,
    };
    Ok(Target {
        name: name.to_string(),
        address,
        port,
        user,
        identity_files,
        use_agent: wanted.use_agent,
        jump,
        known_hosts,
        host_key_policy: wanted.host_key_policy,
        connect_timeout: wanted.connect_timeout,
    })
}

/// Resolves a ProxyJump value into the hop nearest the target, each hop reached through the
/// previous one; the first hop follows its own ssh config ProxyJump, as OpenSSH does.
fn resolve_jumps(
    spec: &str,
    wanted: &Wanted,
    ssh_config: &SshConfig,
    depth: usize,
) -> Result<Option<Box<Target>>, String> {
    let spec = spec.trim();
    if spec.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let hops: Vec<&str> = spec.split(',').map(str::trim).collect();
    if depth + hops.len() > MAX_JUMPS {
        return Err(format!("ProxyJump chain longer than {MAX_JUMPS} hops (a loop in ~/.ssh/config?)"));
    }
    let mut previous: Option<Box<Target>> = None;
    for (index, text) in hops.iter().enumerate() {
        let hop = parse_hop(text)?;
        let settings = ssh_config.lookup(&hop.host);
        let jump = match (index, settings.proxy_jump.as_deref()) {
            (0, Some(own)) => resolve_jumps(own, wanted, ssh_config, depth + hops.len())?,
            _ => previous.take(),
        };
        let name = hop.host.clone();
        previous = Some(Box::new(build(&name, hop, settings, wanted, jump, Role::Jump)?));
    }
    Ok(previous)
}

/// `[user@]host[:port]`, `ssh://[user@]host[:port]`, IPv6 as `[addr]` or `[addr]:port`.
fn parse_hop(text: &str) -> Result<Hop, String> {
    let bad = |why: &str| format!("bad ProxyJump hop {text:?}: {why}");
    let rest = text.strip_prefix("ssh://").unwrap_or(text);
    let (user, rest) = match rest.rsplit_once('@') {
        Some(("", _)) => return Err(bad("empty user")),
        Some((user, rest)) => (Some(user.to_string()), rest),
        None => (None, rest),
    };
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or_else(|| bad("missing ]"))?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?)),
        }
    } else {
        match rest.split_once(':') {
            // More than one colon and no brackets: a bare IPv6 address.
            Some((_, after)) if after.contains(':') => (rest, None),
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 => Some(n),
            _ => return Err(bad("bad port")),
        },
    };
    Ok(Hop { user, host: host.to_string(), port })
}

/// OpenSSH `%` tokens: `%h` host name, `%n` host as given, `%r` remote user, `%u` local user,
/// `%p` port, `%d` home directory, `%%` a percent sign.
fn expand(text: &str, host: &str, given: &str, user: &str, port: u16) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('h') => out.push_str(host),
            Some('n') => out.push_str(given),
            Some('r') => out.push_str(user),
            Some('u') => out.push_str(&local_user()),
            Some('p') => out.push_str(&port.to_string()),
            Some('d') => match home_dir() {
                Some(home) => out.push_str(&home.to_string_lossy()),
                None => return Err(format!("{text:?}: %d used but there is no home directory")),
            },
            Some(other) => return Err(format!("{text:?}: unsupported token %{other}")),
            None => return Err(format!("{text:?}: lone % at the end")),
        }
    }
    Ok(out)
}

fn expand_tilde(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), home_dir()) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => path.to_path_buf(),
    }
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
}

fn local_user() -> String {
    std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "root".to_string())
}

fn default_identity_files() -> Vec<PathBuf> {
    let Some(home) = home_dir() else {
        return Vec::new();
    };
    ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|name| home.join(".ssh").join(name))
        .filter(|path| path.is_file())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SshConfig, String> {
        SshConfig::parse(text.as_bytes(), Path::new("cfg"))
    }

    fn wanted() -> Wanted {
        Wanted {
            user: None,
            port: None,
            identity_file: None,
            known_hosts: Some(PathBuf::from("/kh")),
            host_key_policy: HostKeyPolicy::Strict,
            proxy_jump: None,
            connect_timeout: Duration::from_secs(5),
            use_agent: false,
        }
    }

    const SAMPLE: &str = r#"
# global defaults
User fallback

Host pi? !pi9
    HostName %h.lan
    Port=2201
    IdentityFile "/keys/pi key"   # trailing comment
    IdentityFile /keys/second

Match host pi1
    User ignored-in-match

Host pi1 pi9
    User second-block
    Port 2299

Host bastion
    HostName 127.0.0.1
    User jumper
    Port 2022

Host loop1
    ProxyJump loop2
Host loop2
    ProxyJump loop1

Host *
    User star
    IdentityFile /keys/star
"#;

    #[test]
    fn first_value_wins_and_patterns_apply() {
        let cfg = parse(SAMPLE).expect("sample parses");
        let pi1 = cfg.lookup("pi1");
        assert_eq!(pi1.host_name.as_deref(), Some("%h.lan"));
        assert_eq!(pi1.user.as_deref(), Some("fallback"), "top-of-file value comes first");
        assert_eq!(pi1.port, Some(2201));
        assert_eq!(pi1.identity_files, vec!["/keys/pi key", "/keys/second", "/keys/star"]);
        let pi9 = cfg.lookup("PI9");
        assert_eq!(pi9.host_name, None, "negated pattern vetoes the first block");
        assert_eq!(pi9.port, Some(2299));
        let other = cfg.lookup("example");
        assert_eq!(other.port, None);
        assert_eq!(other.identity_files, vec!["/keys/star"]);
    }

    #[test]
    fn garbled_lines_name_file_and_line() {
        assert_eq!(parse("Host a\n  Port abc\n").unwrap_err(), "cfg:2: bad port \"abc\"");
        assert_eq!(parse("Host a\n  Port 0\n").unwrap_err(), "cfg:2: bad port \"0\"");
        assert_eq!(parse("\n\nHost\n").unwrap_err(), "cfg:3: Host needs at least one pattern");
        assert_eq!(parse("User \"open\n").unwrap_err(), "cfg:1: unterminated quote");
        assert_eq!(parse("Host a\nUser\n").unwrap_err(), "cfg:2: user needs a value");
        assert_eq!(parse("User a b\n").unwrap_err(), "cfg:1: user takes one value, got 2");
        let err = SshConfig::parse(b"Host a\n\xff\n", Path::new("cfg")).unwrap_err();
        assert_eq!(err, "cfg:2: not valid UTF-8");
        // Options pikube does not use are ignored, not errors.
        assert!(parse("Host a\n  ForwardAgent yes\n  Include other\n  ServerAliveInterval=5\n").is_ok());
    }

    #[test]
    fn missing_file_is_empty() {
        let cfg = SshConfig::load(Path::new("/nonexistent/pikube/ssh_config")).expect("missing is fine");
        assert_eq!(cfg.lookup("x"), HostSettings::default());
    }

    #[test]
    fn resolve_precedence() {
        let cfg = parse(SAMPLE).expect("sample parses");
        // ssh config values (matched on the address) fill what the cluster file left open.
        let t = resolve("node-a", "pi1", &wanted(), &cfg).expect("resolves");
        assert_eq!(t.name, "node-a");
        assert_eq!(t.address, "pi1.lan");
        assert_eq!((t.user.as_str(), t.port), ("fallback", 2201));
        assert_eq!(t.identity_files[0], PathBuf::from("/keys/pi key"));
        assert_eq!(t.known_hosts, PathBuf::from("/kh"));
        assert!(t.jump.is_none());

        // Cluster-file values win; its key replaces the config's keys.
        let mut w = wanted();
        w.user = Some("pi".into());
        w.port = Some(22);
        w.identity_file = Some("/keys/cluster".into());
        let t = resolve("node-a", "pi1", &w, &cfg).expect("resolves");
        assert_eq!((t.user.as_str(), t.port), ("pi", 22));
        assert_eq!(t.identity_files, vec![PathBuf::from("/keys/cluster")]);

        // Matched on the name only: its settings apply, but not its HostName.
        let t = resolve("pi2", "10.0.0.2", &wanted(), &cfg).expect("resolves");
        assert_eq!(t.address, "10.0.0.2");
        assert_eq!(t.port, 2201);
    }

    #[test]
    fn resolve_proxy_jump() {
        let cfg = parse(SAMPLE).expect("sample parses");
        let mut w = wanted();
        w.proxy_jump = Some("bastion".into());
        w.identity_file = Some("/keys/cluster".into());
        let t = resolve("n", "10.0.0.9", &w, &cfg).expect("resolves");
        let jump = t.jump.expect("one hop");
        // The top-of-file User comes before the bastion block's, as in OpenSSH.
        assert_eq!((jump.address.as_str(), jump.port, jump.user.as_str()), ("127.0.0.1", 2022, "fallback"));
        assert_eq!(jump.identity_files, vec![PathBuf::from("/keys/star"), PathBuf::from("/keys/cluster")]);
        assert_eq!(jump.known_hosts, PathBuf::from("/kh"), "jump hosts share the cluster's known_hosts");
        assert!(jump.jump.is_none());

        // Explicit parts beat the alias; a chain nests first hop innermost.
        w.proxy_jump = Some("a@first:2200,ops@bastion:2023".into());
        let t = resolve("n", "10.0.0.9", &w, &cfg).expect("resolves");
        let near = t.jump.expect("near hop");
        assert_eq!((near.address.as_str(), near.port, near.user.as_str()), ("127.0.0.1", 2023, "ops"));
        let far = near.jump.expect("far hop");
        assert_eq!((far.address.as_str(), far.port, far.user.as_str()), ("first", 2200, "a"));

        w.proxy_jump = Some("[::1]:2200".into());
        let t = resolve("n", "10.0.0.9", &w, &cfg).expect("resolves");
        assert_eq!(t.jump.map(|j| (j.address, j.port)), Some(("::1".to_string(), 2200)));

        w.proxy_jump = Some("none".into());
        assert!(resolve("n", "10.0.0.9", &w, &cfg).expect("resolves").jump.is_none());

        w.proxy_jump = Some("loop1".into());
        assert!(resolve("n", "10.0.0.9", &w, &cfg).unwrap_err().contains("loop"));
        for bad in ["host:notaport", "@host", "[::1", "host,", ""] {
            w.proxy_jump = Some(bad.into());
            assert!(resolve("n", "10.0.0.9", &w, &cfg).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn token_expansion() {
        assert_eq!(expand("/k/%h-%r-%p-%n%%", "h.lan", "h", "pi", 22).as_deref(), Ok("/k/h.lan-pi-22-h%"));
        assert!(expand("%z", "h", "h", "u", 22).is_err());
        assert!(expand("50%", "h", "h", "u", 22).is_err());
    }
}
