//! What goes on a node's card: identity from the cluster file, network and secrets from flags
//! and environment variables. Secrets never come from argv and are never printed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use sha_crypt::{PasswordHasher, ShaCrypt};

use crate::config::{Cluster, HostSpec, Role};

/// Per-node customisation flags shared by `image prepare` and `flash`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CustomizeArgs {
    /// Wi-Fi network name to join on first boot.
    #[arg(long, requires = "wifi_psk_env")]
    pub wifi_ssid: Option<String>,
    /// Name of the environment variable holding the Wi-Fi passphrase (never pass it in argv).
    #[arg(long, value_name = "VAR", requires = "wifi_ssid")]
    pub wifi_psk_env: Option<String>,
    /// Wi-Fi regulatory country, ISO 3166 alpha-2 (e.g. DE, US).
    #[arg(long, value_name = "CC", default_value = "US")]
    pub wifi_country: String,
    /// Name of the environment variable holding the login password (default: a random one that
    /// is never shown; only its hash goes on the card).
    #[arg(long, value_name = "VAR")]
    pub password_env: Option<String>,
    /// Static addressing: the subnet (e.g. 192.168.1.0/24) the nodes' cluster-file addresses
    /// belong to. Without it the nodes use DHCP.
    #[arg(long = "static", value_name = "CIDR", requires = "gateway")]
    pub static_net: Option<String>,
    /// Default gateway for --static.
    #[arg(long, value_name = "IP", requires = "static_net")]
    pub gateway: Option<IpAddr>,
    /// DNS server for --static (repeatable; default: the gateway).
    #[arg(long, value_name = "IP", requires = "static_net")]
    pub dns: Vec<IpAddr>,
}

pub enum Network {
    Dhcp,
    Static { address: Ipv4Addr, prefix: u8, gateway: IpAddr, dns: Vec<IpAddr> },
}

pub struct Wifi {
    pub ssid: String,
    pub psk: String,
    pub country: String,
}

pub struct NodeConfig {
    pub cluster: String,
    pub hostname: String,
    pub role: Role,
    pub user: String,
    pub authorized_key: String,
    /// `$6$` SHA-512 crypt hash.
    pub password_hash: String,
    /// Whether the password was chosen by the user (else random: console login is pointless).
    pub password_given: bool,
    pub network: Network,
    pub wifi: Option<Wifi>,
}

// Hand-written so a stray `{:?}` can never print the PSK or the hash.
impl fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeConfig")
            .field("hostname", &self.hostname)
            .field("role", &self.role)
            .field("user", &self.user)
            .field("wifi", &self.wifi.as_ref().map(|w| &w.ssid))
            .finish_non_exhaustive()
    }
}

impl NodeConfig {
    /// A stable fingerprint of the non-secret settings: changes when the node's setup changes,
    /// so cloud-init treats a re-prepared card as a new instance.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for part in [&self.cluster, &self.hostname, self.role.as_str(), &self.user, &self.authorized_key] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        if let Network::Static { address, prefix, .. } = &self.network {
            h.update(format!("{address}/{prefix}").as_bytes());
        }
        hex::encode(&h.finalize()[..6])
    }
}

/// Parses `a.b.c.d/n`.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad = || format!("`{s}` is not an IPv4 CIDR like 192.168.1.0/24");
    let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if prefix > 32 {
        return Err(bad());
    }
    Ok((ip, prefix))
}

pub fn in_subnet(ip: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
    u32::from(ip) & mask == u32::from(net) & mask
}

fn secret_from_env(var: &str, what: &str) -> Result<String, String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(v),
        Ok(_) => Err(format!("environment variable {var} (the {what}) is empty")),
        Err(_) => Err(format!("environment variable {var} (the {what}) is not set")),
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(b)
}

pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = random_bytes::<12>()?;
    ShaCrypt::SHA512
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// The private key pikube logs in with; its `.pub` goes on the card.
fn key_path(cluster: &Cluster, host: &HostSpec) -> Result<PathBuf, String> {
    if let Some(k) = cluster.ssh_for(host).key {
        return Ok(cluster.resolve_path(&k));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|n| home.join(".ssh").join(n))
        .find(|p| with_pub(p).exists())
        .ok_or_else(|| "no SSH key: set ssh.key in the cluster file (its .pub file goes on the card)".to_string())
}

fn with_pub(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

fn read_public_key(private: &Path) -> Result<String, String> {
    let path = with_pub(private);
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("cannot read SSH public key {}: {e}", path.display()))?;
    let key = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).unwrap_or("");
    let known = ["ssh-", "ecdsa-", "sk-"].iter().any(|p| key.starts_with(p));
    if !known || key.split_whitespace().count() < 2 {
        return Err(format!("{} does not hold an OpenSSH public key", path.display()));
    }
    Ok(key.to_string())
}

/// Hostnames go into shell scripts and YAML: insist on the RFC 1123 label the cluster file asks for.
fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn valid_user(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name.as_bytes()[0].is_ascii_lowercase()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

pub fn find_host<'a>(cluster: &'a Cluster, name: &str) -> Result<&'a HostSpec, String> {
    cluster.hosts().find(|h| h.name.value == name).ok_or_else(|| {
        let names: Vec<&str> = cluster.hosts().map(|h| h.name.value.as_str()).collect();
        format!("no host `{name}` in {}; hosts: {}", cluster.file.display(), names.join(", "))
    })
}

/// Resolved once per command: the secrets are read (and a random password drawn) per node.
pub fn node_config(cluster: &Cluster, host: &HostSpec, args: &CustomizeArgs) -> Result<NodeConfig, String> {
    let hostname = host.name.value.clone();
    if !valid_hostname(&hostname) {
        return Err(format!("host name `{hostname}` is not a valid hostname (lowercase letters, digits, -)"));
    }
    let ssh = cluster.ssh_for(host);
    let user = ssh.user.or_else(|| std::env::var("USER").ok()).unwrap_or_default();
    if !valid_user(&user) || user == "root" {
        return Err(format!(
            "cannot create login user `{user}` on {hostname}: set ssh.user in the cluster file to a non-root user name"
        ));
    }
    let authorized_key = read_public_key(&key_path(cluster, host)?)?;
    let (password, password_given) = match &args.password_env {
        Some(var) => (secret_from_env(var, "login password")?, true),
        None => (hex::encode(random_bytes::<18>()?), false),
    };
    let password_hash = hash_password(&password)?;
    let network = match &args.static_net {
        None => Network::Dhcp,
        Some(cidr) => {
            let (net, prefix) = parse_cidr(cidr)?;
            let address: Ipv4Addr = host.address().parse().map_err(|_| {
                format!(
                    "--static needs {hostname}'s address in the cluster file to be an IPv4 address (it is `{}`)",
                    host.address()
                )
            })?;
            if !in_subnet(address, net, prefix) {
                return Err(format!("{hostname}'s address {address} is outside --static {cidr}"));
            }
            let gateway = args.gateway.ok_or("--static needs --gateway")?;
            let dns = if args.dns.is_empty() { vec![gateway] } else { args.dns.clone() };
            Network::Static { address, prefix, gateway, dns }
        }
    };
    let wifi = match (&args.wifi_ssid, &args.wifi_psk_env) {
        (Some(ssid), Some(var)) => {
            let psk = secret_from_env(var, "Wi-Fi passphrase")?;
            if !(8..=63).contains(&psk.len()) {
                return Err(format!("the Wi-Fi passphrase in {var} must be 8 to 63 characters"));
            }
            let country = args.wifi_country.to_uppercase();
            if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(format!("--wifi-country `{}` is not a two-letter country code", args.wifi_country));
            }
            Some(Wifi { ssid: ssid.clone(), psk, country })
        }
        _ => None,
    };
    Ok(NodeConfig {
        cluster: cluster.name().to_string(),
        hostname,
        role: host.role.value,
        user,
        authorized_key,
        password_hash,
        password_given,
        network,
        wifi,
    })
}
