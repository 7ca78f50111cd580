//! `pikube discover`: find SSH hosts on a subnet (TCP connect sweep, bounded in concurrency and
//! time), name them (MAC from the neighbour table, vendor from the OUI, hostname over mDNS),
//! match them to the cluster file and optionally fill in missing addresses.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::node::parse_cidr;
use super::Error;
use crate::config::{Cluster, ClusterFile};

#[derive(Debug, clap::Args)]
pub struct DiscoverArgs {
    /// IPv4 subnet to sweep, e.g. 192.168.1.0/24 (default: the first local interface's subnet).
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
    /// Cluster file to match hosts against (default: ./cluster.yaml when present).
    #[arg(short = 'f', long = "file", env = "PIKUBE_FILE")]
    pub file: Option<PathBuf>,
    /// Fill in the missing `address:` of matched hosts in the cluster file.
    #[arg(long)]
    pub write: bool,
    /// TCP port to probe.
    #[arg(long, default_value_t = 22)]
    pub port: u16,
    /// Per-host connect (and banner) timeout in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub timeout_ms: u64,
    /// Connections in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Allow subnets larger than /16 (up to a /8).
    #[arg(long)]
    pub force: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Raspberry Pi Foundation / Raspberry Pi Trading OUIs.
const PI_OUIS: [&str; 6] = ["b8:27:eb", "dc:a6:32", "e4:5f:01", "28:cd:c1", "d8:3a:dd", "2c:cf:67"];

#[derive(Debug, Clone, Serialize)]
pub struct Found {
    pub address: Ipv4Addr,
    pub mac: Option<String>,
    pub vendor: Option<&'static str>,
    pub hostname: Option<String>,
    pub banner: Option<String>,
    /// The cluster-file host this machine was matched to, and how.
    pub host: Option<String>,
    pub matched_by: Option<&'static str>,
    /// Why a host this machine answers as was not matched to it (ambiguous or contradicted).
    pub conflict: Option<String>,
}

pub fn vendor(mac: &str) -> Option<&'static str> {
    let prefix = mac.get(..8)?.to_lowercase();
    PI_OUIS.contains(&prefix.as_str()).then_some("Raspberry Pi")
}

/// `aa:bb:cc:dd:ee:ff`, accepting `-` or `:` separators and any case.
pub fn normalize_mac(mac: &str) -> Option<String> {
    let hex: String = mac.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    let seps = mac.chars().filter(|c| !c.is_ascii_hexdigit()).all(|c| c == ':' || c == '-');
    if hex.len() != 12 || !seps {
        return None;
    }
    let lower = hex.to_lowercase();
    Some((0..6).map(|i| &lower[2 * i..2 * i + 2]).collect::<Vec<_>>().join(":"))
}

/// Complete neighbour entries of /proc/net/arp (IPv4 → MAC).
fn neighbours() -> BTreeMap<Ipv4Addr, String> {
    let text = std::fs::read_to_string("/proc/net/arp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let ip = f.first()?.parse().ok()?;
            let flags = u32::from_str_radix(f.get(2)?.trim_start_matches("0x"), 16).ok()?;
            // ATF_COM: the entry is resolved; incomplete ones show 00:00:00:00:00:00.
            (flags & 0x2 != 0).then(|| Some((ip, normalize_mac(f.get(3)?)?)))?
        })
        .collect()
}

/// The addresses to probe: all hosts of the subnet (without network and broadcast for /30 and
/// larger).
fn targets(net: Ipv4Addr, prefix: u8) -> impl Iterator<Item = Ipv4Addr> {
    let size = 1u64 << (32 - u32::from(prefix));
    let base = u64::from(u32::from(net)) & !(size - 1);
    let (first, last) = if prefix >= 31 { (base, base + size - 1) } else { (base + 1, base + size - 2) };
    (first..=last).filter_map(|a| u32::try_from(a).ok().map(Ipv4Addr::from))
}

/// One connect attempt; `Some(banner)` when the port is open.
async fn probe(ip: Ipv4Addr, port: u16, timeout: Duration) -> Option<Option<String>> {
    let addr = SocketAddr::V4(SocketAddrV4::new(ip, port));
    let mut stream = tokio::time::timeout(timeout, TcpStream::connect(addr)).await.ok()?.ok()?;
    let mut buf = [0u8; 256];
    let banner = match tokio::time::timeout(timeout, stream.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => {
            let text = String::from_utf8_lossy(&buf[..n]);
            text.lines().next().map(|l| l.trim().to_string()).filter(|l| l.starts_with("SSH-"))
        }
        _ => None,
    };
    Some(banner)
}

/// Reverse-resolves over mDNS: a PTR query for `d.c.b.a.in-addr.arpa` to 224.0.0.251:5353
/// with the unicast-response bit, sent from an ephemeral port (a "legacy unicast" query that
/// responders answer directly).
async fn mdns_name(ip: Ipv4Addr, timeout: Duration) -> Option<String> {
    let o = ip.octets();
    let qname = format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0]);
    let mut q = vec![0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00];
    for label in qname.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    // QTYPE PTR (12), QCLASS IN with the QU (unicast response) bit.
    q.extend_from_slice(&[0x00, 0x00, 0x00, 0x0c, 0x80, 0x01]);
    let sock = UdpSocket::bind("0.0.0.0:0").await.ok()?;
    sock.send_to(&q, "224.0.0.251:5353").await.ok()?;
    let mut buf = [0u8; 1500];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (n, _) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await.ok()?.ok()?;
        if let Some(name) = parse_ptr_answer(&buf[..n], &qname) {
            return Some(name.trim_end_matches('.').trim_end_matches(".local").to_string());
        }
    }
}

/// Reads a possibly compressed DNS name at `pos`; returns it and the position after it.
fn read_name(msg: &[u8], mut pos: usize) -> Option<(String, usize)> {
    let mut labels = Vec::new();
    let mut end = None;
    // Bounded: a malicious packet must not loop us through pointers forever.
    for _ in 0..128 {
        let len = *msg.get(pos)? as usize;
        if len == 0 {
            return Some((labels.join("."), end.unwrap_or(pos + 1)));
        }
        if len & 0xc0 == 0xc0 {
            let ptr = ((len & 0x3f) << 8) | *msg.get(pos + 1)? as usize;
            end.get_or_insert(pos + 2);
            pos = ptr;
            continue;
        }
        let label = msg.get(pos + 1..pos + 1 + len)?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        pos += 1 + len;
    }
    None
}

/// The PTR target for `qname` from a DNS response, if it holds one.
pub fn parse_ptr_answer(msg: &[u8], qname: &str) -> Option<String> {
    if msg.len() < 12 || msg[2] & 0x80 == 0 {
        return None;
    }
    let qd = u16::from_be_bytes([msg[4], msg[5]]) as usize;
    let an = u16::from_be_bytes([msg[6], msg[7]]) as usize;
    let mut pos = 12;
    for _ in 0..qd {
        pos = read_name(msg, pos)?.1 + 4;
    }
    for _ in 0..an {
        let (name, after) = read_name(msg, pos)?;
        let rtype = u16::from_be_bytes([*msg.get(after)?, *msg.get(after + 1)?]);
        let rdlen = u16::from_be_bytes([*msg.get(after + 8)?, *msg.get(after + 9)?]) as usize;
        let rdata = after + 10;
        if rtype == 12 && name.eq_ignore_ascii_case(qname) {
            return read_name(msg, rdata).map(|(n, _)| n).filter(|n| !n.is_empty());
        }
        pos = rdata + rdlen;
    }
    None
}

/// The subnet of the first global IPv4 address (`ip -o -4 addr show scope global`).
fn local_subnet() -> Result<(String, String), String> {
    let out = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show", "scope", "global"])
        .output()
        .map_err(|e| format!("cannot list local addresses with `ip`: {e}; pass --subnet"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(iface), Some(i)) = (f.get(1), f.iter().position(|w| *w == "inet")) else {
            continue;
        };
        let Some(Ok((ip, prefix))) = f.get(i + 1).map(|c| parse_cidr(c)) else {
            continue;
        };
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
        let net = Ipv4Addr::from(u32::from(ip) & mask);
        return Ok((format!("{net}/{prefix}"), iface.to_string()));
    }
    Err("no global IPv4 address on this machine; pass --subnet".into())
}

pub async fn discover(args: DiscoverArgs) -> Result<(), Error> {
    let cidr = match &args.subnet {
        Some(s) => s.clone(),
        None => {
            let (cidr, iface) = local_subnet()?;
            // Say what will be scanned before any packet leaves.
            eprintln!("no --subnet given: scanning {cidr} (from {iface})");
            cidr
        }
    };
    let (net, prefix) = parse_cidr(&cidr)?;
    if prefix < 8 {
        return Err(format!("{cidr} is too large to sweep; the limit is a /8 (with --force)").into());
    }
    if prefix < 16 && !args.force {
        return Err(
            format!("{cidr} has {} addresses; sweep at most a /16, or pass --force", 1u64 << (32 - prefix)).into()
        );
    }
    let cluster_path = args.file.clone().or_else(|| Some(PathBuf::from("cluster.yaml")).filter(|p| p.exists()));
    if args.write && cluster_path.is_none() {
        return Err("--write needs a cluster file (-f FILE)".into());
    }
    let cluster = match &cluster_path {
        Some(p) => Some(Cluster::load_without_addresses(p)?),
        None => None,
    };
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let mut found = sweep(targets(net, prefix), args.port, timeout, args.concurrency.max(1)).await;
    let ambiguous = match &cluster {
        Some(c) => match_hosts(c, &mut found),
        None => Vec::new(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&found).map_err(|e| e.to_string())?);
    } else {
        print_table(&cidr, args.port, &found);
    }
    // Notes on stderr: with --json, stdout holds the document only.
    for f in &found {
        if let Some(why) = &f.conflict {
            eprintln!("note: {}: {}", f.address, crate::term::clean(why));
        }
    }
    if args.write {
        if let (Some(c), Some(p)) = (&cluster, &cluster_path) {
            refuse_ambiguous(c, p, &ambiguous)?;
            write_addresses(c, p, &found, args.json)?;
        }
    }
    Ok(())
}

async fn sweep(ips: impl Iterator<Item = Ipv4Addr>, port: u16, timeout: Duration, concurrency: usize) -> Vec<Found> {
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    let mut open = Vec::new();
    for ip in ips {
        // Take the permit before spawning, so at most `concurrency` probes exist at once.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        tasks.spawn(async move {
            let _permit = permit;
            probe(ip, port, timeout).await.map(|banner| (ip, banner))
        });
        while let Some(r) = tasks.try_join_next() {
            if let Ok(Some(hit)) = r {
                open.push(hit);
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        if let Ok(Some(hit)) = r {
            open.push(hit);
        }
    }
    // The connects just resolved every responder's MAC: read the table once, afterwards.
    let macs = neighbours();
    let mut names = JoinSet::new();
    for (ip, _) in &open {
        let ip = *ip;
        names.spawn(async move { (ip, mdns_name(ip, timeout).await) });
    }
    let mut hostnames = BTreeMap::new();
    while let Some(r) = names.join_next().await {
        if let Ok((ip, Some(n))) = r {
            hostnames.insert(ip, n);
        }
    }
    let mut found: Vec<Found> = open
        .into_iter()
        .map(|(ip, banner)| {
            let mac = macs.get(&ip).cloned();
            Found {
                address: ip,
                vendor: mac.as_deref().and_then(vendor),
                mac,
                hostname: hostnames.remove(&ip),
                banner,
                host: None,
                matched_by: None,
                conflict: None,
            }
        })
        .collect();
    found.sort_by_key(|f| f.address);
    found
}

/// How a machine is tied to a cluster host; the stronger tie wins. A MAC is the hardware's,
/// an address is the operator's, an mDNS name is whatever the machine says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tie {
    Hostname,
    Address,
    Mac,
}

impl Tie {
    fn as_str(self) -> &'static str {
        match self {
            Tie::Hostname => "hostname",
            Tie::Address => "address",
            Tie::Mac => "mac",
        }
    }
}

/// A cluster host that several machines answer for equally strongly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ambiguous {
    pub host: String,
    pub by: &'static str,
    pub candidates: Vec<Ipv4Addr>,
}

impl std::fmt::Display for Ambiguous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c: Vec<String> = self.candidates.iter().map(Ipv4Addr::to_string).collect();
        write!(
            f,
            "{} is ambiguous: {} all match it by {}; give {} its `mac:` (or its address) in the \
             cluster file",
            self.host,
            c.join(", "),
            self.by,
            self.host
        )
    }
}

/// Matches machines to hosts by `mac:` first, then by an address already in the file, then by
/// mDNS name. Each host goes to the one machine with the strongest tie; a tie shared by several
/// machines matches none of them (returned), and a weaker claim or an mDNS name that contradicts
/// a host's `mac:` is noted as the machine's `conflict`, never matched.
pub fn match_hosts(cluster: &Cluster, found: &mut [Found]) -> Vec<Ambiguous> {
    let mut claims: BTreeMap<String, Vec<(usize, Tie)>> = BTreeMap::new();
    for (i, f) in found.iter_mut().enumerate() {
        if let Some((host, tie)) = claim(cluster, f) {
            claims.entry(host).or_default().push((i, tie));
        }
    }
    let mut ambiguous = Vec::new();
    for (host, list) in claims {
        let best = list.iter().map(|c| c.1).max().unwrap_or(Tie::Hostname);
        let top: Vec<usize> = list.iter().filter(|c| c.1 == best).map(|c| c.0).collect();
        for &(i, tie) in list.iter().filter(|c| c.1 < best) {
            found[i].conflict = Some(format!(
                "answers as {host} by {} but a machine matches {host} by {}",
                tie.as_str(),
                best.as_str()
            ));
        }
        if let [only] = top[..] {
            found[only].host = Some(host);
            found[only].matched_by = Some(best.as_str());
            continue;
        }
        let a = Ambiguous { host, by: best.as_str(), candidates: top.iter().map(|&i| found[i].address).collect() };
        for &i in &top {
            found[i].conflict = Some(a.to_string());
        }
        ambiguous.push(a);
    }
    ambiguous
}

/// The host one machine claims, and how; an mDNS name naming a host whose `mac:` is not this
/// machine's is a conflict, not a claim (the name is the machine's word, the MAC the hardware's).
fn claim(cluster: &Cluster, f: &mut Found) -> Option<(String, Tie)> {
    let mac_of = |h: &crate::config::HostSpec| h.mac.as_ref().and_then(|m| normalize_mac(&m.value));
    if let Some(h) = cluster.hosts().find(|h| mac_of(h).is_some_and(|m| Some(&m) == f.mac.as_ref())) {
        return Some((h.name.value.clone(), Tie::Mac));
    }
    let ip = f.address.to_string();
    if let Some(h) = cluster.hosts().find(|h| h.address() == ip) {
        return Some((h.name.value.clone(), Tie::Address));
    }
    let name = f.hostname.as_ref()?;
    let h = cluster.hosts().find(|h| h.name.value.eq_ignore_ascii_case(name))?;
    if let Some(declared) = mac_of(h) {
        f.conflict = Some(format!(
            "answers as {} by hostname, but {}'s mac is {declared}, not {}",
            h.name.value,
            h.name.value,
            f.mac.as_deref().unwrap_or("unknown")
        ));
        return None;
    }
    Some((h.name.value.clone(), Tie::Hostname))
}

fn print_table(cidr: &str, port: u16, found: &[Found]) {
    println!("{} host(s) answering on port {port} in {cidr}", found.len());
    if found.is_empty() {
        return;
    }
    let rows: Vec<[String; 6]> = found
        .iter()
        .map(|f| {
            [
                f.address.to_string(),
                f.mac.clone().unwrap_or_else(|| "-".into()),
                f.vendor.unwrap_or("-").to_string(),
                f.hostname.clone().unwrap_or_else(|| "-".into()),
                f.host
                    .as_ref()
                    .map(|h| format!("{h} (by {})", f.matched_by.unwrap_or("?")))
                    .unwrap_or_else(|| "-".into()),
                f.banner.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = ["ADDRESS", "MAC", "VENDOR", "HOSTNAME", "CLUSTER HOST", "SSH BANNER"];
    print!("{}", crate::check::render_table(&header, &rows));
}

/// Inserts `address:` lines under the matched hosts' `name:` lines, leaving the rest of the
/// file (comments, order, quoting) as the user wrote it.
pub fn insert_addresses(text: &str, inserts: &[(u64, Ipv4Addr)]) -> Result<String, String> {
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
    let mut sorted = inserts.to_vec();
    // Bottom-up, so earlier line numbers stay valid.
    sorted.sort_by_key(|s| std::cmp::Reverse(s.0));
    for (line_no, ip) in sorted {
        let idx = usize::try_from(line_no).ok().and_then(|l| l.checked_sub(1)).filter(|&i| i < lines.len());
        let Some(idx) = idx else {
            return Err(format!("line {line_no} is not in the cluster file"));
        };
        let line = &lines[idx];
        let key_at = line.find("name:").filter(|&at| !line[..at].contains(['{', '#']));
        let Some(key_at) = key_at else {
            return Err(format!("line {line_no} is not a block-style `name:` entry; add the address by hand"));
        };
        let indent: String = line[..key_at].chars().map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
        let newline = if line.ends_with("\r\n") { "\r\n" } else { "\n" };
        if !line.ends_with('\n') {
            lines[idx].push_str(newline);
        }
        lines.insert(idx + 1, format!("{indent}address: {ip}{newline}"));
    }
    Ok(lines.concat())
}

/// An address picked among equal candidates may be an impostor's: while a host still missing
/// its address is ambiguous, nothing is written.
fn refuse_ambiguous(cluster: &Cluster, path: &Path, ambiguous: &[Ambiguous]) -> Result<(), String> {
    let open: Vec<String> = ambiguous
        .iter()
        .filter(|a| cluster.hosts().any(|h| h.name.value == a.host && h.address.is_none()))
        .map(ToString::to_string)
        .collect();
    if open.is_empty() {
        return Ok(());
    }
    Err(format!("not writing {}: {}", path.display(), open.join("; ")))
}

/// `quiet_stdout`: with --json, stdout holds only the JSON document; notes go to stderr.
fn write_addresses(cluster: &Cluster, path: &Path, found: &[Found], quiet_stdout: bool) -> Result<(), String> {
    let note = |msg: String| {
        if quiet_stdout {
            eprintln!("{msg}");
        } else {
            println!("{msg}");
        }
    };
    let mut inserts = Vec::new();
    let mut names = Vec::new();
    for f in found {
        let Some(name) = &f.host else { continue };
        let Some(h) = cluster.hosts().find(|h| &h.name.value == name) else {
            continue;
        };
        if h.address.is_none() && !names.contains(name) {
            inserts.push((h.name.referenced.line(), f.address));
            names.push(name.clone());
        }
    }
    if inserts.is_empty() {
        note(format!("{}: no missing addresses to fill in", path.display()));
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let new = insert_addresses(&text, &inserts)?;
    // Never leave a file that no longer parses or lost track of a host.
    let parsed: ClusterFile = serde_saphyr::from_str(&new)
        .map_err(|e| format!("not writing {}: the edited file would not parse: {e}", path.display()))?;
    for (name, (_, ip)) in names.iter().zip(&inserts) {
        let ok = parsed.hosts.value.iter().any(|h| &h.name.value == name && h.address() == ip.to_string());
        if !ok {
            return Err(format!("not writing {}: the edit did not give {name} its address", path.display()));
        }
    }
    let tmp = path.with_extension("yaml.pikube-tmp");
    std::fs::write(&tmp, new).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))?;
    for (name, (_, ip)) in names.iter().zip(&inserts) {
        note(format!("{}: {name} address: {ip}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_normalise_and_pi_ouis_are_known() {
        assert_eq!(normalize_mac("DC-A6-32-01-02-0F").as_deref(), Some("dc:a6:32:01:02:0f"));
        assert_eq!(normalize_mac("dc:a6:32:01:02"), None);
        assert_eq!(normalize_mac("dc:a6:32:01:02:0f:aa"), None);
        assert_eq!(vendor("2c:cf:67:00:00:01"), Some("Raspberry Pi"));
        assert_eq!(vendor("52:54:00:00:00:01"), None);
    }

    #[test]
    fn sweep_targets_skip_network_and_broadcast() {
        let t: Vec<_> = targets(Ipv4Addr::new(10, 1, 2, 77), 30).collect();
        assert_eq!(t, [Ipv4Addr::new(10, 1, 2, 77 & !3 | 1), Ipv4Addr::new(10, 1, 2, 78)]);
        assert_eq!(targets(Ipv4Addr::new(10, 0, 0, 0), 16).count(), 65_534);
        assert_eq!(targets(Ipv4Addr::new(10, 0, 0, 9), 32).count(), 1);
    }

    #[test]
    fn ptr_answers_parse_with_compression_and_loops_are_bounded() {
        let q = "7.1.168.192.in-addr.arpa";
        let mut msg = vec![0, 0, 0x84, 0, 0, 1, 0, 1, 0, 0, 0, 0];
        for l in q.split('.') {
            msg.push(l.len() as u8);
            msg.extend_from_slice(l.as_bytes());
        }
        msg.extend_from_slice(&[0, 0, 12, 0, 1]);
        let rdata = b"\x06rasp07\x05local\x00";
        msg.extend_from_slice(&[0xc0, 12, 0, 12, 0, 1, 0, 0, 0, 120, 0, rdata.len() as u8]);
        msg.extend_from_slice(rdata);
        assert_eq!(parse_ptr_answer(&msg, q).as_deref(), Some("rasp07.local"));
        // A pointer to itself must end, not spin.
        let mut evil = msg[..12].to_vec();
        evil.extend_from_slice(&[0xc0, 12]);
        assert_eq!(parse_ptr_answer(&evil, q), None);
        for cut in 0..msg.len() {
            let _ = parse_ptr_answer(&msg[..cut], q);
        }
    }

    #[test]
    fn addresses_go_under_the_name_line_keeping_the_rest() {
        let text = "hosts:\r\n  - name: a   # first\r\n    role: server\r\n  -   name: b\r\n    role: agent";
        let out = insert_addresses(text, &[(2, Ipv4Addr::new(10, 0, 0, 1)), (4, Ipv4Addr::new(10, 0, 0, 2))]).unwrap();
        assert_eq!(
            out,
            "hosts:\r\n  - name: a   # first\r\n    address: 10.0.0.1\r\n    role: server\r\n  -   name: b\r\n      address: 10.0.0.2\r\n    role: agent"
        );
        let err = insert_addresses("hosts: [{name: a, role: server}]\n", &[(1, Ipv4Addr::LOCALHOST)]).unwrap_err();
        assert!(err.contains("add the address by hand"), "{err}");
        assert!(insert_addresses("x\n", &[(9, Ipv4Addr::LOCALHOST)]).is_err());
    }
}
