//! Lab networking. Everything lives in network namespaces the lab creates: the lab netns holds
//! the bridge (and the mirror), each node netns holds the node's `eth0`. Nothing is added to
//! the root namespace, and there is no default route or NAT: nodes reach only each other and
//! the bridge address.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use miette::{miette, Result, WrapErr};

use super::util::run;

pub fn lab_netns(lab: &str) -> String {
    format!("pikube-{lab}")
}

pub fn node_netns(lab: &str, node: &str) -> String {
    format!("pikube-{lab}-{node}")
}

pub fn netns_path(netns: &str) -> String {
    format!("/run/netns/{netns}")
}

/// The bridge-side end of a node's veth, named after the node (fits IFNAMSIZ for node1..node999).
fn bridge_port(node: &str) -> String {
    format!("v{node}")
}

fn exists(netns: &str) -> bool {
    Path::new(&netns_path(netns)).exists()
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(drop)
}

/// Creates the lab netns with `br0` at `<prefix>.1/24` unless it exists.
pub fn ensure_lab(lab: &str, bridge_ip: &str) -> Result<()> {
    let ns = lab_netns(lab);
    if exists(&ns) {
        return Ok(());
    }
    let setup = || -> Result<()> {
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &ns, "addr", "add", &format!("{bridge_ip}/24"), "dev", "br0"])?;
        ip(&["-n", &ns, "link", "set", "br0", "up"])
    };
    setup().wrap_err_with(|| format!("creating the lab network namespace {ns}"))
}

/// Creates a node's netns and its veth (created inside the lab netns, so no end ever appears in
/// the root namespace) unless the netns exists. With `address`, eth0 is configured from here,
/// for nodes whose own networkd cannot run (arm64 under qemu-user).
pub fn ensure_node(lab: &str, node: &str, address: Option<&str>) -> Result<()> {
    let (lab_ns, ns, port) = (lab_netns(lab), node_netns(lab, node), bridge_port(node));
    if exists(&ns) {
        return Ok(());
    }
    let setup = || -> Result<()> {
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &lab_ns, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
        ip(&["-n", &lab_ns, "link", "set", &port, "master", "br0"])?;
        ip(&["-n", &lab_ns, "link", "set", &port, "up"])?;
        if let Some(address) = address {
            ip(&["-n", &ns, "addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    };
    setup().wrap_err_with(|| format!("creating the network of node {node}"))
}

/// Cuts (`up = false`) or restores a node's link by setting its bridge port down/up; the node
/// keeps running and keeps its address (its networkd ignores carrier loss).
pub fn set_link(lab: &str, node: &str, up: bool) -> Result<()> {
    let port = bridge_port(node);
    if link_up(lab, node).is_none() {
        return Err(miette!("node {node} has no network (is lab {lab:?} up? try `pikube lab up --name {lab}`)"));
    }
    ip(&["-n", &lab_netns(lab), "link", "set", &port, if up { "up" } else { "down" }])
}

/// Whether the node's bridge port is administratively up; `None` when it does not exist.
pub fn link_up(lab: &str, node: &str) -> Option<bool> {
    let out =
        run(Command::new("ip").args(["-n", &lab_netns(lab), "-o", "link", "show", "dev", &bridge_port(node)])).ok()?;
    let flags = out.split(['<', '>']).nth(1)?;
    Some(flags.split(',').any(|f| f == "UP"))
}

/// Deletes the node netns and the lab netns (and with them the veths and the bridge).
pub fn delete(lab: &str, nodes: &[String]) -> Result<()> {
    let mut failed = Vec::new();
    let all = nodes.iter().map(|node| node_netns(lab, node)).chain(std::iter::once(lab_netns(lab)));
    for ns in all {
        if exists(&ns) {
            if let Err(e) = ip(&["netns", "delete", &ns]) {
                failed.push(format!("{ns}: {e}"));
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(miette!("could not delete network namespaces: {}", failed.join("; ")))
    }
}

/// Refuses a subnet that the root namespace already routes (a clash would make the lab's
/// addresses ambiguous for anyone reading the cluster file on the host).
pub fn check_subnet_free(prefix: &str) -> Result<()> {
    let ours = parse_cidr(&format!("{prefix}.0/24")).ok_or_else(|| miette!("bad subnet prefix {prefix}"))?;
    let routes = run(Command::new("ip").args(["-4", "route", "show", "table", "all"]))?;
    for line in routes.lines() {
        let mut words = line.split_whitespace().peekable();
        // `ip route show table all` prefixes non-unicast routes with their type.
        if words.peek().is_some_and(|w| !w.starts_with(|c: char| c.is_ascii_digit()) && *w != "default") {
            words.next();
        }
        let Some(dest) = words.next() else { continue };
        let cidr = if dest.contains('/') { dest.to_string() } else { format!("{dest}/32") };
        if let Some(theirs) = parse_cidr(&cidr) {
            if overlaps(ours, theirs) {
                return Err(miette!(
                    "subnet {prefix}.0/24 is in use on this host (route: {}); choose another with --subnet",
                    line.trim()
                ));
            }
        }
    }
    Ok(())
}

pub fn parse_cidr(s: &str) -> Option<(u32, u8)> {
    let (addr, len) = s.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    (len <= 32).then_some((u32::from(addr), len))
}

fn overlaps(a: (u32, u8), b: (u32, u8)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a.0 & mask == b.0 & mask
}

/// `__wait-ssh`: prints `ready <addr>` as each sshd answers, `pending <addr>` for the rest on
/// timeout.
pub fn wait_ssh(timeout: Duration, addresses: &[String]) -> Result<()> {
    let mut pending: Vec<SocketAddr> = addresses
        .iter()
        .map(|a| format!("{a}:22").parse().map_err(|_| miette!("bad address {a:?}")))
        .collect::<Result<_>>()?;
    let deadline = Instant::now() + timeout;
    while !pending.is_empty() && Instant::now() < deadline {
        pending.retain(|addr| {
            let ready = ssh_banner(addr);
            if ready {
                println!("ready {}", addr.ip());
            }
            !ready
        });
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    for addr in &pending {
        println!("pending {}", addr.ip());
    }
    if pending.is_empty() {
        Ok(())
    } else {
        Err(miette!("{} node(s) did not answer SSH", pending.len()))
    }
}

fn ssh_banner(addr: &SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    let mut banner = [0u8; 4];
    let ok = stream.read_exact(&mut banner).is_ok() && &banner == b"SSH-";
    // Say goodbye properly so sshd does not log a protocol error for every probe.
    let _ = stream.write_all(b"SSH-2.0-pikube-lab-probe\r\n");
    ok
}

#[cfg(test)]
mod tests {
    #[test]
    fn overlap() {
        let p = |s| super::parse_cidr(s).unwrap();
        assert!(super::overlaps(p("10.77.0.0/24"), p("10.0.0.0/8")));
        assert!(super::overlaps(p("10.77.0.0/24"), p("10.77.0.5/32")));
        assert!(!super::overlaps(p("10.77.0.0/24"), p("10.77.1.0/24")));
    }
}
