//! The cluster file: one YAML document that declares the hosts and the cluster settings.
//!
//! Parsing keeps source positions ([`Spanned`]) for every value a validation rule may point at,
//! so each error names `file:line:column` and says how to fix it.

pub mod url;
mod validate;

pub(crate) use validate::{is_address, is_k3s_version};

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use miette::{Diagnostic, NamedSource, SourceSpan};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::ssh::HostKeyPolicy;

/// The commented example written by `pikube init`.
pub const EXAMPLE: &str = include_str!("example.yaml");

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "pikube cluster file")]
pub struct ClusterFile {
    /// Cluster name: used for the kubeconfig context and local state (`build/<name>-…`).
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// SSH defaults for every host.
    #[serde(default)]
    pub ssh: SshSettings,
    /// The machines of the cluster.
    #[schemars(with = "Vec<HostSpec>")]
    pub hosts: Spanned<Vec<HostSpec>>,
    /// Kubernetes distribution, version and API endpoint.
    #[serde(default)]
    pub kubernetes: Kubernetes,
    /// OS package mirror/proxy for the hosts.
    #[serde(default)]
    pub packages: Packages,
    /// HTTP(S) proxy the hosts must use to reach the outside.
    #[serde(default)]
    pub proxy: Option<Proxy>,
    /// Container registry mirrors, e.g. `docker.io: [https://mirror.example]`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, Vec<String>>")]
    pub registry_mirrors: BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
    /// Manifests applied at cluster milestones and shell commands run around phases.
    #[serde(default)]
    pub hooks: Hooks,
}

/// Cluster hooks (manifests from `dir`) and host hooks (shell commands around phases).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Directory of hook manifests (default `hooks` next to the cluster file):
    /// `k3s-post-master-up.yml` or `post-master-up.yml` is applied once the servers are up and
    /// before agents join; `k3s-pre-master-down.yml` or `pre-master-down.yml` before `pikube down`.
    #[schemars(with = "Option<String>")]
    pub dir: Option<Spanned<String>>,
    /// Shell commands run as root on selected hosts before or after a phase of `up`.
    #[serde(default)]
    pub hosts: Vec<HostHook>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostHook {
    /// Phase name as `pikube up` prints it after `==>`, e.g. `agents` (the older `k3s artifacts`,
    /// `k3s servers` and `k3s agents` still work).
    #[schemars(with = "String")]
    pub phase: Spanned<String>,
    /// `before` or `after` the phase.
    pub when: HookWhen,
    /// Host names and/or roles (`server`, `agent`, `loadbalancer`) to run on; default all hosts.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub on: Vec<Spanned<String>>,
    /// The shell command (run with `sh -c` as root).
    pub run: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HookWhen {
    Before,
    After,
}

impl HostHook {
    pub fn applies_to(&self, host: &HostSpec) -> bool {
        self.on.is_empty() || self.on.iter().any(|o| o.value == host.name.value || o.value == host.role.value.as_str())
    }
}

/// SSH settings; all optional. Cluster-wide under `ssh:`, per host under `hosts[].ssh:`.
/// Unset values come from `~/.ssh/config`, then OpenSSH defaults.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SshSettings {
    /// Login user (default: `~/.ssh/config`, then `$USER`).
    pub user: Option<String>,
    /// SSH port (default 22).
    pub port: Option<u16>,
    /// Private key file (default: `~/.ssh/config` IdentityFile, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa).
    pub key: Option<PathBuf>,
    /// known_hosts file (default ~/.ssh/known_hosts).
    pub known_hosts: Option<PathBuf>,
    /// `strict` (default): refuse unknown host keys. `accept-new`: record them on first contact.
    /// A changed host key is always refused.
    pub host_key_policy: Option<HostKeyPolicy>,
    /// Jump host, OpenSSH ProxyJump syntax `[user@]host[:port]`.
    pub bastion: Option<String>,
    /// Where the sudo password comes from, for users whose sudo asks for one. Never inline.
    pub sudo_password: Option<SecretSource>,
    /// Use keys from the ssh-agent (`$SSH_AUTH_SOCK`); default true.
    pub agent: Option<bool>,
    /// Seconds to wait for a TCP connection and the SSH handshake (default 10).
    pub connect_timeout: Option<u64>,
}

/// A secret read at run time, so it never sits in the cluster file.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SecretSource {
    /// Name of an environment variable holding the secret.
    Env(String),
    /// Path of a file holding the secret (first line); should be mode 0600.
    File(PathBuf),
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// Host name; pikube sets it as the machine's hostname. Lowercase letters, digits, `-`.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// IP address or DNS name pikube connects to (and the node IP Kubernetes uses).
    /// May be left out until `pikube discover --write` fills it in.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub address: Option<Spanned<String>>,
    /// MAC address of the host's network interface, to recognise it in `pikube discover`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub mac: Option<Spanned<String>>,
    /// `server` (control plane), `agent` (worker) or `loadbalancer` (API load balancer).
    #[schemars(with = "Role")]
    pub role: Spanned<Role>,
    /// SSH overrides for this host.
    #[serde(default)]
    pub ssh: Option<SshSettings>,
    /// Kubernetes node labels k3s sets when the node registers (kubelet's `--node-labels`).
    /// kubelet refuses keys in the `kubernetes.io`/`k8s.io` namespaces except its own
    /// (e.g. `node.kubernetes.io/*`); put such labels, like `node-role.kubernetes.io/worker`,
    /// under `api_labels`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub labels: Labels,
    /// Node labels pikube sets through the API once the node has registered: for keys kubelet
    /// may not set itself, e.g. `node-role.kubernetes.io/worker: ""`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub api_labels: Labels,
    /// Kubernetes node taints, `key[=value]:NoSchedule|PreferNoSchedule|NoExecute`.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub taints: Vec<Spanned<String>>,
    /// A second disk (an SSD on USB, say) for the container runtime's and kubelet's data:
    /// formatted when it is empty, mounted by UUID before containerd, kubelet or k3s start.
    #[serde(default)]
    pub storage: Option<Storage>,
}

/// `hosts[].storage`: the disk that holds containerd's (k3s: /var/lib/rancher) and kubelet's data.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// The whole disk, by a name that stays put: `/dev/disk/by-id/usb-…` (`ls -l
    /// /dev/disk/by-id`). Kernel names like /dev/sda work but can change between boots.
    /// pikube formats it only when it is empty (no partition table, no file system signature).
    #[schemars(with = "String")]
    pub device: Spanned<String>,
    /// `ext4` (default) or `xfs`.
    #[serde(default)]
    pub filesystem: Filesystem,
    /// An LVM thin pool on the disk, the file system on a thin volume in it. Rendered and
    /// checked, but unproven: pikube's lab kernel has no device-mapper to run it on.
    #[serde(default)]
    pub lvm: Option<Lvm>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    #[default]
    Ext4,
    Xfs,
}

impl Filesystem {
    pub fn as_str(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
        }
    }
}

/// `storage.lvm`: volume group, thin pool and its size.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Lvm {
    /// Volume group made on the disk, e.g. `pikube`.
    #[schemars(with = "String")]
    pub vg: Spanned<String>,
    /// Thin pool in it, e.g. `pool`; the data file system lives on a thin volume `data`.
    #[schemars(with = "String")]
    pub thinpool: Spanned<String>,
    /// Size of the pool (and of the data volume) in LVM units, e.g. `200G`; leave room on the
    /// disk for the pool's metadata and for growing it.
    #[schemars(with = "String")]
    pub size: Spanned<String>,
}

/// A label map in file order, keys and values with their positions so errors can point at them.
#[derive(Debug, Clone, Default)]
pub struct Labels(pub Vec<(Spanned<String>, Spanned<String>)>);

impl Labels {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// (key, value) pairs without positions.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.value.as_str(), v.value.as_str()))
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> serde::de::Visitor<'de> for Pairs {
            type Value = Labels;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of label keys to string values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Labels, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = m.next_key::<Spanned<String>>()? {
                    out.push((k, m.next_value()?));
                }
                Ok(Labels(out))
            }
        }
        d.deserialize_map(Pairs)
    }
}

impl HostSpec {
    /// The address to connect to; empty when not known yet (only `discover` accepts that).
    pub fn address(&self) -> &str {
        self.address.as_ref().map_or("", |a| a.value.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Server,
    Agent,
    Loadbalancer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
            Role::Loadbalancer => "loadbalancer",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes {
    /// `k3s` (default) or `kubeadm` (upstream Kubernetes: containerd from the hosts' packages,
    /// kubeadm, kubelet and kubectl from the release).
    #[serde(default)]
    pub distribution: Distribution,
    /// Pinned version: a k3s release tag like `v1.31.4+k3s1`, or for kubeadm a Kubernetes
    /// release like `v1.34.4`. Without it `up` prepares the hosts only.
    #[schemars(with = "Option<String>")]
    pub version: Option<Spanned<String>>,
    /// Stable API endpoint; required for HA (more than one server) and for `loadbalancer` hosts.
    pub endpoint: Option<Endpoint>,
    /// Airgap: a directory holding the release files for the pinned version. k3s: `k3s`,
    /// `k3s-arm64`, `k3s-armhf` and their `sha256sum-<arch>.txt`. kubeadm: upstream's layout,
    /// `<version>/bin/linux/<arch>/{kubeadm,kubelet,kubectl}` each with its `.sha256`, and
    /// optionally `<version>/images/<arch>.tar` (imported into containerd on each node) and
    /// `<version>/cni/kube-flannel.yml`. Without it pikube downloads the files once into
    /// `~/.cache/pikube/<distribution>/` on this machine.
    #[schemars(with = "Option<String>")]
    pub artifacts: Option<Spanned<String>>,
    /// Where releases are downloaded from when `artifacts` is not set (default
    /// `https://github.com/k3s-io/k3s/releases/download` for k3s, `https://dl.k8s.io/release`
    /// for kubeadm). Must be `https://`
    /// (the checksum file comes from the same place, so plain HTTP would let anyone on the
    /// way swap both); `http://` is accepted only for this machine (127.0.0.1, ::1, localhost).
    #[schemars(with = "Option<String>")]
    pub download_url: Option<Spanned<String>>,
    /// kubeadm only: the pod network. `flannel` (default; pod subnet 10.244.0.0/16) or `none`
    /// (bring your own, e.g. through the `post-master-up` hook). k3s ships flannel built in.
    #[serde(default)]
    pub cni: Cni,
    /// kubeadm only: `up` renews a server's certificates (`kubeadm certs renew all`, then its
    /// control plane restarts, one server at a time) once the first of them expires within
    /// this many days (default 90, as KubeOne; 30 to 300). kubeadm signs them for a year.
    #[schemars(with = "Option<u32>")]
    pub renew_certificates_days: Option<Spanned<u32>>,
}

/// Days before expiry from which `up` renews kubeadm's certificates, unless the cluster file
/// says otherwise: KubeOne's choice, a quarter of the year kubeadm signs them for.
pub const DEFAULT_RENEW_CERTIFICATES_DAYS: u32 = 90;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Cni {
    #[default]
    Flannel,
    None,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    #[default]
    K3s,
    Kubeadm,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `loadbalancer`: HAProxy on the `loadbalancer` hosts; `vip`: keepalived virtual IP on the
    /// servers; `none`: the first server's address.
    #[schemars(with = "EndpointMode")]
    pub mode: Spanned<EndpointMode>,
    /// Address clients use: the VIP, or a DNS name/IP in front of the load balancers.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub address: Option<Spanned<String>>,
    /// API port (default 6443).
    #[serde(default = "default_api_port")]
    pub port: u16,
}

fn default_api_port() -> u16 {
    6443
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    Loadbalancer,
    Vip,
    None,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    /// Debian/Ubuntu mirror URL replacing the hosts' default apt sources,
    /// e.g. `http://mirror.lan/debian`.
    #[schemars(with = "Option<String>")]
    pub mirror: Option<Spanned<String>>,
    /// Components to use from the mirror (default `[main]`).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub components: Vec<Spanned<String>>,
    /// Trust the mirror without a signature (for internal unsigned mirrors only).
    #[serde(default)]
    pub trusted: bool,
    /// HTTP proxy for apt only (e.g. an apt-cacher-ng at `http://cache.lan:3142`).
    #[schemars(with = "Option<String>")]
    pub proxy: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Proxy {
    #[schemars(with = "Option<String>")]
    pub http: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub https: Option<Spanned<String>>,
    /// Hosts/CIDRs that bypass the proxy. Cluster addresses are added automatically.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub no_proxy: Vec<Spanned<String>>,
}

/// The resolved API endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiEndpoint {
    pub mode: EndpointMode,
    pub address: String,
    pub port: u16,
    /// The virtual IP keepalived holds: on the servers (`vip`) or on two load balancers.
    pub vip: Option<String>,
}

impl ApiEndpoint {
    pub fn url(&self) -> String {
        if self.address.contains(':') {
            format!("https://[{}]:{}", self.address, self.port)
        } else {
            format!("https://{}:{}", self.address, self.port)
        }
    }
}

/// A cluster file error located at `file:line:column`, with a hint on how to fix it.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
    #[help]
    pub hint: Option<String>,
    #[source_code]
    pub src: NamedSource<String>,
    #[label("here")]
    pub span: Option<SourceSpan>,
}

impl ConfigError {
    /// `file:line:column: message` + `  hint: …` — the stable plain-text form (used in tests).
    pub fn plain(&self) -> String {
        match &self.hint {
            Some(h) => format!("{self}\n  hint: {h}"),
            None => self.to_string(),
        }
    }
}

/// Errors of the whole file (several rules can fail at once; all are reported).
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{} has {} error(s)", .file, .errors.len())]
pub struct ConfigErrors {
    pub file: String,
    #[related]
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    pub fn plain(&self) -> String {
        self.errors.iter().map(ConfigError::plain).collect::<Vec<_>>().join("\n")
    }
}

/// `-f/--file`: the cluster file, for every command that reads one.
#[derive(Debug, Clone, clap::Args)]
pub struct FileArg {
    /// Cluster file.
    #[arg(short = 'f', long = "file", env = "PIKUBE_FILE", default_value = "cluster.yaml")]
    pub file: PathBuf,
}

/// A loaded, validated cluster file plus where it came from (relative paths resolve against it).
#[derive(Debug, Clone)]
pub struct Cluster {
    pub file: PathBuf,
    pub spec: ClusterFile,
}

impl Cluster {
    /// Reads, parses and validates a cluster file.
    pub fn load(path: &Path) -> Result<Cluster, miette::Report> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            miette::miette!(
                help = "pass the cluster file with -f FILE, or write an example with `pikube init`",
                "cannot read cluster file {}: {e}",
                path.display()
            )
        })?;
        Ok(Cluster::parse(path, &text)?)
    }

    /// Parses and validates; every host must have an address.
    pub fn parse(path: &Path, text: &str) -> Result<Cluster, ConfigErrors> {
        Cluster::parse_with(path, text, true)
    }

    /// Like [`Cluster::load`] but hosts may lack an address (for `pikube discover`).
    pub fn load_without_addresses(path: &Path) -> Result<Cluster, miette::Report> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| miette::miette!("cannot read cluster file {}: {e}", path.display()))?;
        Ok(Cluster::parse_with(path, &text, false)?)
    }

    fn parse_with(path: &Path, text: &str, addresses_required: bool) -> Result<Cluster, ConfigErrors> {
        let file = path.display().to_string();
        let located = Locator { file: &file, text };
        let spec: ClusterFile = serde_saphyr::from_str(text)
            .map_err(|e| ConfigErrors { file: file.clone(), errors: vec![located.parse_error(&e)] })?;
        let problems = validate::check(&spec, addresses_required);
        if !problems.is_empty() {
            return Err(ConfigErrors {
                file: file.clone(),
                errors: problems.into_iter().map(|p| located.error(p)).collect(),
            });
        }
        Ok(Cluster { file: path.to_path_buf(), spec })
    }

    pub fn name(&self) -> &str {
        &self.spec.name.value
    }

    pub fn hosts(&self) -> impl Iterator<Item = &HostSpec> {
        self.spec.hosts.value.iter()
    }

    /// Resolves a path from the cluster file: `~/` is the home directory, relative paths are
    /// relative to the cluster file's directory.
    pub fn resolve_path(&self, p: &Path) -> PathBuf {
        if let Ok(rest) = p.strip_prefix("~") {
            if let Some(home) = std::env::var_os("HOME") {
                return PathBuf::from(home).join(rest);
            }
        }
        if p.is_absolute() {
            return p.to_path_buf();
        }
        self.file.parent().unwrap_or(Path::new(".")).join(p)
    }

    pub fn with_role(&self, role: Role) -> impl Iterator<Item = &HostSpec> {
        self.hosts().filter(move |h| h.role.value == role)
    }

    pub fn distribution(&self) -> Distribution {
        self.spec.kubernetes.distribution
    }

    /// The pinned Kubernetes version; None means "prepare the hosts only".
    pub fn version(&self) -> Option<&str> {
        self.spec.kubernetes.version.as_ref().map(|v| v.value.as_str())
    }

    /// Days before expiry from which `up` renews a kubeadm server's certificates.
    pub fn renew_certificates_days(&self) -> u32 {
        self.spec.kubernetes.renew_certificates_days.as_ref().map_or(DEFAULT_RENEW_CERTIFICATES_DAYS, |d| d.value)
    }

    /// The API endpoint every agent and the kubeconfig use.
    pub fn endpoint(&self) -> ApiEndpoint {
        let ep = self.spec.kubernetes.endpoint.as_ref();
        let mode = ep.map_or(EndpointMode::None, |e| e.mode.value);
        let given = ep.and_then(|e| e.address.as_ref()).map(|a| a.value.clone());
        let first = |role| self.with_role(role).next().map(|h| h.address().to_string()).unwrap_or_default();
        let address = given.clone().unwrap_or_else(|| match mode {
            EndpointMode::Loadbalancer => first(Role::Loadbalancer),
            _ => first(Role::Server),
        });
        let balancers = self.with_role(Role::Loadbalancer).count();
        let vip = match mode {
            EndpointMode::Vip => given,
            EndpointMode::Loadbalancer if balancers > 1 => given,
            _ => None,
        };
        ApiEndpoint { mode, address, port: ep.map_or(6443, |e| e.port), vip }
    }

    /// The SSH settings for a host: its own overrides on top of the cluster-wide ones.
    pub fn ssh_for(&self, host: &HostSpec) -> SshSettings {
        let base = &self.spec.ssh;
        let Some(o) = &host.ssh else { return base.clone() };
        SshSettings {
            user: o.user.clone().or_else(|| base.user.clone()),
            port: o.port.or(base.port),
            key: o.key.clone().or_else(|| base.key.clone()),
            known_hosts: o.known_hosts.clone().or_else(|| base.known_hosts.clone()),
            host_key_policy: o.host_key_policy.or(base.host_key_policy),
            bastion: o.bastion.clone().or_else(|| base.bastion.clone()),
            sudo_password: o.sudo_password.clone().or_else(|| base.sudo_password.clone()),
            agent: o.agent.or(base.agent),
            connect_timeout: o.connect_timeout.or(base.connect_timeout),
        }
    }
}

/// A rule violation found after parsing: where, what, how to fix.
pub(crate) struct Problem {
    pub at: serde_saphyr::Location,
    pub message: String,
    pub hint: Option<String>,
}

struct Locator<'a> {
    file: &'a str,
    text: &'a str,
}

impl Locator<'_> {
    fn error(&self, p: Problem) -> ConfigError {
        self.at(p.at.line(), p.at.column(), p.message, p.hint)
    }

    fn parse_error(&self, e: &serde_saphyr::Error) -> ConfigError {
        let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
        let raw = e.to_string();
        // serde-saphyr appends its own location/snippet; keep the first line, ours has file:line:col.
        let first = raw.lines().next().unwrap_or("invalid cluster file").trim();
        let message = strip_location_suffix(first);
        let hint = parse_hint(&message);
        self.at(line, column, message, hint)
    }

    fn at(&self, line: u64, column: u64, message: String, hint: Option<String>) -> ConfigError {
        let offset = offset_of(self.text, line, column);
        ConfigError {
            file: self.file.to_string(),
            line,
            column,
            message,
            hint,
            src: NamedSource::new(self.file, self.text.to_string()),
            span: offset.map(|o| SourceSpan::from((o, 1))),
        }
    }
}

/// serde-saphyr words its position as "error: line 3 column 5: …" (or "… at line 3 column 5");
/// ours leads with `file:line:column`, so drop theirs.
pub(crate) fn strip_location_suffix(msg: &str) -> String {
    let msg = msg.strip_prefix("error: ").unwrap_or(msg);
    let msg = match msg.strip_prefix("line ").and_then(|rest| rest.split_once(": ")) {
        Some((_, tail)) => tail,
        None => msg,
    };
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].trim_end_matches(',').to_string(),
        None => msg.to_string(),
    }
}

fn parse_hint(message: &str) -> Option<String> {
    // Every error gets a hint; the specific ones first.
    if message.contains("unknown field") {
        Some("remove or correct this key; `pikube schema` lists every valid key".into())
    } else if message.contains("unknown variant") {
        Some("use one of the values listed above".into())
    } else if message.contains("missing field") {
        Some("add the missing key; `pikube init` writes a complete example".into())
    } else {
        Some("check indentation, quotes and brackets here; `pikube schema` shows what each key expects".into())
    }
}

fn offset_of(text: &str, line: u64, column: u64) -> Option<usize> {
    let mut offset = 0usize;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i as u64 + 1 == line {
            let col_bytes: usize = l.chars().take(column.saturating_sub(1) as usize).map(char::len_utf8).sum();
            return Some(offset + col_bytes.min(l.len()));
        }
        offset += l.len();
    }
    None
}

/// True when `s` parses as an IP address.
pub fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}
