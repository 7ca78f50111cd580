//! Flag and config-file parsing for `k3s server` / `k3s agent`, modelled on the
//! real k3s (urfave/cli v1 + k3s `configfilearg`):
//! * unknown CLI flag → `Incorrect Usage: flag provided but not defined: -foo`, exit 1
//! * unknown config.yaml key → for `server` a warning `Unknown flag --foo found in config.yaml,
//!   skipping` (k3s-io/k3s#4509); for `agent` fatal like an unknown CLI flag, because k3s's
//!   configfilearg strips unknown keys only for `server` and `etcd-snapshot`.
//! * config values are applied first, CLI flags after: a CLI scalar wins, lists append.

use std::collections::BTreeMap;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Bool,
    Str,
    List,
}

/// (long name, short alias, kind, env var). Taken from docs.k3s.io/cli/agent.
pub const AGENT_FLAGS: &[(&str, &str, Kind, &str)] = &[
    ("config", "c", Kind::Str, "K3S_CONFIG_FILE"),
    ("debug", "", Kind::Bool, "K3S_DEBUG"),
    ("v", "", Kind::Str, ""),
    ("vmodule", "", Kind::Str, ""),
    ("log", "l", Kind::Str, ""),
    ("alsologtostderr", "", Kind::Bool, ""),
    ("token", "t", Kind::Str, "K3S_TOKEN"),
    ("token-file", "", Kind::Str, "K3S_TOKEN_FILE"),
    ("server", "s", Kind::Str, "K3S_URL"),
    ("data-dir", "d", Kind::Str, ""),
    ("node-name", "", Kind::Str, "K3S_NODE_NAME"),
    ("with-node-id", "", Kind::Bool, ""),
    ("node-label", "", Kind::List, ""),
    ("node-taint", "", Kind::List, ""),
    ("image-credential-provider-bin-dir", "", Kind::Str, ""),
    ("image-credential-provider-config", "", Kind::Str, ""),
    ("docker", "", Kind::Bool, ""),
    ("container-runtime-endpoint", "", Kind::Str, ""),
    ("default-runtime", "", Kind::Str, ""),
    ("image-service-endpoint", "", Kind::Str, ""),
    ("disable-default-registry-endpoint", "", Kind::Bool, ""),
    ("nonroot-devices", "", Kind::Bool, ""),
    ("pause-image", "", Kind::Str, ""),
    ("snapshotter", "", Kind::Str, ""),
    ("private-registry", "", Kind::Str, ""),
    ("bind-address", "", Kind::Str, ""),
    ("node-ip", "i", Kind::List, ""),
    ("node-external-ip", "", Kind::List, ""),
    ("node-internal-dns", "", Kind::List, ""),
    ("node-external-dns", "", Kind::List, ""),
    ("resolv-conf", "", Kind::Str, "K3S_RESOLV_CONF"),
    ("flannel-iface", "", Kind::Str, ""),
    ("flannel-conf", "", Kind::Str, ""),
    ("flannel-cni-conf", "", Kind::Str, ""),
    ("kubelet-arg", "", Kind::List, ""),
    ("kube-proxy-arg", "", Kind::List, ""),
    ("protect-kernel-defaults", "", Kind::Bool, ""),
    ("selinux", "", Kind::Bool, "K3S_SELINUX"),
    ("lb-server-port", "", Kind::Str, "K3S_LB_SERVER_PORT"),
    ("disable-apiserver-lb", "", Kind::Bool, ""),
    ("rootless", "", Kind::Bool, ""),
    ("prefer-bundled-bin", "", Kind::Bool, ""),
    ("airgap-extra-registry", "", Kind::List, ""),
    ("vpn-auth", "", Kind::Str, "K3S_VPN_AUTH"),
    ("vpn-auth-file", "", Kind::Str, "K3S_VPN_AUTH_FILE"),
    ("enable-pprof", "", Kind::Bool, ""),
];

/// Server-only flags (docs.k3s.io/cli/server). A server accepts these plus the agent ones.
/// k3s has no `supervisor-port`, `apiserver-port` or `apiserver-bind-address` flags (those are
/// RKE2's); `system-default-registry` is a server flag only.
pub const SERVER_FLAGS: &[(&str, &str, Kind, &str)] = &[
    ("system-default-registry", "", Kind::Str, ""),
    ("advertise-address", "", Kind::Str, ""),
    ("advertise-port", "", Kind::Str, ""),
    ("tls-san", "", Kind::List, ""),
    ("tls-san-security", "", Kind::Bool, ""),
    ("https-listen-port", "", Kind::Str, ""),
    ("cluster-cidr", "", Kind::List, ""),
    ("service-cidr", "", Kind::List, ""),
    ("service-node-port-range", "", Kind::Str, ""),
    ("cluster-dns", "", Kind::List, ""),
    ("cluster-domain", "", Kind::Str, ""),
    ("flannel-backend", "", Kind::Str, ""),
    ("flannel-ipv6-masq", "", Kind::Bool, ""),
    ("flannel-external-ip", "", Kind::Bool, ""),
    ("egress-selector-mode", "", Kind::Str, ""),
    ("servicelb-namespace", "", Kind::Str, ""),
    ("write-kubeconfig", "o", Kind::Str, "K3S_KUBECONFIG_OUTPUT"),
    ("write-kubeconfig-mode", "", Kind::Str, "K3S_KUBECONFIG_MODE"),
    ("write-kubeconfig-group", "", Kind::Str, "K3S_KUBECONFIG_GROUP"),
    ("helm-job-image", "", Kind::Str, ""),
    ("agent-token", "", Kind::Str, "K3S_AGENT_TOKEN"),
    ("agent-token-file", "", Kind::Str, "K3S_AGENT_TOKEN_FILE"),
    ("cluster-init", "", Kind::Bool, "K3S_CLUSTER_INIT"),
    ("cluster-reset", "", Kind::Bool, "K3S_CLUSTER_RESET"),
    ("cluster-reset-restore-path", "", Kind::Str, ""),
    ("kube-apiserver-arg", "", Kind::List, ""),
    ("etcd-arg", "", Kind::List, ""),
    ("kube-controller-manager-arg", "", Kind::List, ""),
    ("kube-scheduler-arg", "", Kind::List, ""),
    ("kube-cloud-controller-manager-arg", "", Kind::List, ""),
    ("datastore-endpoint", "", Kind::Str, "K3S_DATASTORE_ENDPOINT"),
    ("datastore-cafile", "", Kind::Str, "K3S_DATASTORE_CAFILE"),
    ("datastore-certfile", "", Kind::Str, "K3S_DATASTORE_CERTFILE"),
    ("datastore-keyfile", "", Kind::Str, "K3S_DATASTORE_KEYFILE"),
    ("etcd-expose-metrics", "", Kind::Bool, ""),
    ("etcd-disable-snapshots", "", Kind::Bool, ""),
    ("etcd-snapshot-name", "", Kind::Str, ""),
    ("etcd-snapshot-schedule-cron", "", Kind::Str, ""),
    ("etcd-snapshot-retention", "", Kind::Str, ""),
    ("etcd-snapshot-dir", "", Kind::Str, ""),
    ("etcd-snapshot-compress", "", Kind::Bool, ""),
    ("etcd-s3", "", Kind::Bool, ""),
    ("etcd-s3-endpoint", "", Kind::Str, ""),
    ("etcd-s3-endpoint-ca", "", Kind::Str, ""),
    ("etcd-s3-skip-ssl-verify", "", Kind::Bool, ""),
    ("etcd-s3-access-key", "", Kind::Str, "AWS_ACCESS_KEY_ID"),
    ("etcd-s3-secret-key", "", Kind::Str, "AWS_SECRET_ACCESS_KEY"),
    ("etcd-s3-bucket", "", Kind::Str, ""),
    ("etcd-s3-region", "", Kind::Str, ""),
    ("etcd-s3-folder", "", Kind::Str, ""),
    ("etcd-s3-insecure", "", Kind::Bool, ""),
    ("etcd-s3-timeout", "", Kind::Str, ""),
    ("default-local-storage-path", "", Kind::Str, ""),
    ("disable", "", Kind::List, ""),
    ("disable-scheduler", "", Kind::Bool, ""),
    ("disable-cloud-controller", "", Kind::Bool, ""),
    ("disable-kube-proxy", "", Kind::Bool, ""),
    ("disable-network-policy", "", Kind::Bool, ""),
    ("disable-helm-controller", "", Kind::Bool, ""),
    ("disable-agent", "", Kind::Bool, ""),
    ("embedded-registry", "", Kind::Bool, ""),
    ("secrets-encryption", "", Kind::Bool, ""),
    ("kine-tls", "", Kind::Bool, ""),
];

pub fn lookup(server: bool, name: &str) -> Option<(&'static str, Kind)> {
    let tables: &[&[(&str, &str, Kind, &str)]] = if server { &[AGENT_FLAGS, SERVER_FLAGS] } else { &[AGENT_FLAGS] };
    for t in tables {
        for (long, short, kind, _) in t.iter() {
            if *long == name || (!short.is_empty() && *short == name) {
                return Some((long, *kind));
            }
        }
    }
    None
}

#[derive(Debug, Default, Clone)]
pub struct Opts {
    pub scalars: BTreeMap<String, String>,
    pub lists: BTreeMap<String, Vec<String>>,
    pub bools: BTreeMap<String, bool>,
    /// Warnings to log once logging starts (unknown config keys …).
    pub warnings: Vec<String>,
}

impl Opts {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.scalars.get(k).map(|s| s.as_str())
    }
    pub fn flag(&self, k: &str) -> bool {
        self.bools.get(k).copied().unwrap_or(false)
    }
    pub fn list(&self, k: &str) -> Vec<String> {
        self.lists.get(k).cloned().unwrap_or_default()
    }
    fn set(&mut self, name: &str, kind: Kind, val: &str) -> Result<(), String> {
        match kind {
            Kind::Bool => {
                let b = match val {
                    "true" | "1" | "t" | "T" | "TRUE" | "True" => true,
                    "false" | "0" | "f" | "F" | "FALSE" | "False" => false,
                    _ => return Err(format!("invalid boolean value \"{val}\" for -{name}: parse error")),
                };
                self.bools.insert(name.into(), b);
            }
            Kind::Str => {
                self.scalars.insert(name.into(), val.into());
            }
            // urfave StringSlice: repeated flags append; a single value may hold commas for
            // some flags (k3s splits tls-san, disable, node-ip … on commas).
            Kind::List => {
                let e = self.lists.entry(name.into()).or_default();
                for p in val.split(',') {
                    let p = p.trim();
                    if !p.is_empty() {
                        e.push(p.into());
                    }
                }
            }
        }
        Ok(())
    }
}

/// Parse CLI args (after the subcommand). Returns Err(message) worded like urfave/cli.
pub fn parse_args(server: bool, args: &[String]) -> Result<Opts, String> {
    parse_with(args, |name| lookup(server, name))
}

/// `k3s etcd-snapshot save` flags (docs.k3s.io/cli/etcd-snapshot; pkg/cli/cmds/etcd_snapshot.go:
/// `--etcd-server`/`--etcd-token`, so config.yaml's `server:` and `token:` do not apply).
pub const SNAPSHOT_FLAGS: &[(&str, &str, Kind, &str)] = &[
    ("config", "c", Kind::Str, "K3S_CONFIG_FILE"),
    ("debug", "", Kind::Bool, "K3S_DEBUG"),
    ("log", "l", Kind::Str, ""),
    ("alsologtostderr", "", Kind::Bool, ""),
    ("node-name", "", Kind::Str, "K3S_NODE_NAME"),
    ("data-dir", "d", Kind::Str, ""),
    ("etcd-server", "s", Kind::Str, ""),
    ("etcd-token", "t", Kind::Str, ""),
    ("name", "", Kind::Str, ""),
    ("dir", "", Kind::Str, ""),
    ("etcd-snapshot-dir", "", Kind::Str, ""),
    ("snapshot-compress", "", Kind::Bool, ""),
    ("etcd-snapshot-compress", "", Kind::Bool, ""),
];

pub fn parse_snapshot_args(args: &[String]) -> Result<Opts, String> {
    parse_with(args, |name| {
        SNAPSHOT_FLAGS.iter().find(|(l, s, _, _)| *l == name || (!s.is_empty() && *s == name)).map(|f| (f.0, f.2))
    })
}

fn parse_with(args: &[String], lookup: impl Fn(&str) -> Option<(&'static str, Kind)>) -> Result<Opts, String> {
    let mut cli = Opts::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if !a.starts_with('-') || a == "-" {
            return Err(format!("unexpected argument \"{a}\" (k3s takes no positional arguments here)"));
        }
        let body = a.trim_start_matches('-');
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        if name == "help" || name == "h" {
            return Err("help".into());
        }
        let Some((long, kind)) = lookup(name) else {
            return Err(format!("flag provided but not defined: -{name}"));
        };
        let val = match (kind, inline) {
            (_, Some(v)) => v,
            (Kind::Bool, None) => "true".into(),
            (_, None) => {
                i += 1;
                match args.get(i) {
                    Some(v) => v.clone(),
                    None => return Err(format!("flag needs an argument: -{name}")),
                }
            }
        };
        cli.set(long, kind, &val)?;
        i += 1;
    }
    Ok(cli)
}

/// Render a YAML config value as the strings k3s would have turned into `--key=value`.
fn yaml_values(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::Array(a) => a.iter().flat_map(yaml_values).collect(),
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Null => vec![],
        other => vec![other.to_string()],
    }
}

/// Apply config.yaml text. Unknown keys: a warning for a server, an error for an agent (k3s).
pub fn apply_config(server: bool, text: &str, into: &mut Opts) -> Result<(), String> {
    if text.trim().is_empty() {
        return Ok(());
    }
    let map: BTreeMap<String, serde_json::Value> =
        serde_saphyr::from_str(text).map_err(|e| format!("failed to parse config: {e}"))?;
    for (key, val) in map {
        // k3s supports `key+: value` to append to a list from an earlier file.
        let k = key.trim_end_matches('+');
        match lookup(server, k) {
            Some((long, kind)) if long == k && k != "config" => {
                // a plain key in a later file replaces a list; `key+:` appends
                if kind == Kind::List && !key.ends_with('+') {
                    into.lists.remove(long);
                }
                for v in yaml_values(&val) {
                    into.set(long, kind, &v)?;
                }
            }
            _ if server => into.warnings.push(format!("Unknown flag --{k} found in config.yaml, skipping")),
            _ => return Err(format!("flag provided but not defined: -{k}")),
        }
    }
    Ok(())
}

/// Full resolution: env → config file → CLI (later wins for scalars, lists append).
pub fn resolve(server: bool, args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Opts, String> {
    let cli = parse_args(server, args)?;
    let mut out = Opts::default();
    // environment variables (urfave EnvVar)
    let tables: &[&[(&str, &str, Kind, &str)]] = if server { &[AGENT_FLAGS, SERVER_FLAGS] } else { &[AGENT_FLAGS] };
    for t in tables {
        for (long, _, kind, envn) in t.iter() {
            if !envn.is_empty() {
                if let Some(v) = env(envn) {
                    if !v.is_empty() {
                        out.set(long, *kind, &v)?;
                    }
                }
            }
        }
    }
    let cfg_path = cli.get("config").map(String::from).or_else(|| out.get("config").map(String::from));
    let (path, explicit) = match cfg_path {
        Some(p) => (p, true),
        None => ("/etc/rancher/k3s/config.yaml".to_string(), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(t) => apply_config(server, &t, &mut out)?,
        Err(e) if explicit => return Err(format!("failed to read config file {path}: {e}")),
        Err(_) => {}
    }
    // config.yaml.d drop-ins, lexical order (real k3s reads <config>.d/*.yaml)
    if let Ok(rd) = std::fs::read_dir(format!("{path}.d")) {
        let mut files: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            if matches!(f.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                if let Ok(t) = std::fs::read_to_string(&f) {
                    apply_config(server, &t, &mut out)?;
                }
            }
        }
    }
    // CLI last
    for (k, v) in cli.scalars {
        out.scalars.insert(k, v);
    }
    for (k, v) in cli.bools {
        out.bools.insert(k, v);
    }
    for (k, v) in cli.lists {
        out.lists.entry(k).or_default().extend(v);
    }
    Ok(out)
}

// ---------------------------------------------------------------- tokens

/// A parsed join token. Real format: `K10<sha256-hex of CA bundle>::<user>:<password>`,
/// or just `<password>` (no CA pinning). See docs.k3s.io/cli/token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub ca_hash: Option<String>,
    pub username: Option<String>,
    pub password: String,
}

pub fn parse_token(t: &str) -> Result<Token, String> {
    let t = t.trim();
    let err = || {
        "failed to normalize server token; must be in format K10<CA-HASH>::<USERNAME>:<PASSWORD> or <PASSWORD>"
            .to_string()
    };
    if t.is_empty() {
        return Err(err());
    }
    if let Some(rest) = t.strip_prefix("K10") {
        let (hash, creds) = rest.split_once("::").ok_or_else(err)?;
        let (user, pw) = creds.split_once(':').ok_or_else(err)?;
        if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) || pw.is_empty() {
            return Err(err());
        }
        return Ok(Token {
            ca_hash: Some(hash.to_ascii_lowercase()),
            username: Some(user.to_string()),
            password: pw.to_string(),
        });
    }
    if t.contains("::") {
        return Err(err());
    }
    Ok(Token { ca_hash: None, username: None, password: t.to_string() })
}

pub fn format_token(ca_hash: &str, user: &str, pw: &str) -> String {
    format!("K10{ca_hash}::{user}:{pw}")
}

pub fn validate_taint(t: &str) -> Result<(), String> {
    let (kv, effect) = t.rsplit_once(':').ok_or_else(|| format!("invalid taint {t}: must be key[=value]:Effect"))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(format!("invalid taint effect: {effect}, unsupported taint effect"));
    }
    let key = kv.split('=').next().unwrap_or("");
    if key.is_empty() {
        return Err(format!("invalid taint {t}: empty key"));
    }
    Ok(())
}

/// k3s refuses a node-ip whose IP families differ from the cluster CIDR's (default
/// 10.42.0.0/16; an agent gets it from the server: the stand-in assumes the default there).
pub fn check_ip_families(cluster_cidrs: &[String], node_ips: &[String]) -> Result<(), String> {
    let cidrs = if cluster_cidrs.is_empty() { vec!["10.42.0.0/16".to_string()] } else { cluster_cidrs.to_vec() };
    let families = |v: &[String]| {
        let mut f: Vec<bool> = v.iter().map(|a| a.contains(':')).collect();
        f.sort();
        f.dedup();
        f
    };
    if node_ips.is_empty() || families(&cidrs) == families(node_ips) {
        return Ok(());
    }
    Err(format!(
        "cluster-cidr: [{}] and node-ip: [{}], must share the same IP version (IPv4, IPv6 or dual-stack)",
        cidrs.join(" "),
        node_ips.join(" ")
    ))
}

/// `key=value` with the API's syntax rules (apimachinery: qualified name, label value).
pub fn validate_label(l: &str) -> Result<(String, String), String> {
    let (k, v) = l.split_once('=').ok_or_else(|| format!("invalid node label {l}: must be key=value"))?;
    let (prefix, name) = k.split_once('/').map_or((None, k), |(p, n)| (Some(p), n));
    let dns_label = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if prefix.is_some_and(|p| p.len() > 253 || !p.split('.').all(dns_label)) || name.is_empty() || !is_label_value(name)
    {
        return Err(format!("invalid node label {l}: key is not a qualified name ([prefix/]name)"));
    }
    if !is_label_value(v) {
        return Err(format!(
            "invalid node label {l}: value must be at most 63 of [A-Za-z0-9_.-], starting and ending alphanumeric"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

fn is_label_value(v: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    v.is_empty()
        || (v.len() <= 63
            && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && alnum(v.chars().next())
            && alnum(v.chars().last()))
}

/// Labels kubelet may set on its own Node (k8s.io/kubernetes pkg/kubelet/apis `IsKubeletLabel`).
const KUBELET_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
];

/// kubelet's check of `--node-labels` at start: keys in the kubernetes.io / k8s.io namespaces
/// must be its own; k3s exits when kubelet refuses them (k3s-io/k3s#10916).
pub fn check_kubelet_labels(keys: &[String]) -> Result<(), String> {
    let within = |ns: &str, d: &str| ns == d || ns.ends_with(&format!(".{d}"));
    let refused: Vec<&str> = keys
        .iter()
        .map(String::as_str)
        .filter(|k| {
            let Some((ns, _)) = k.split_once('/') else { return false };
            (within(ns, "kubernetes.io") || within(ns, "k8s.io"))
                && !KUBELET_LABELS.contains(k)
                && !within(ns, "kubelet.kubernetes.io")
                && !within(ns, "node.kubernetes.io")
        })
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    Err(format!(
        "kubelet exited: failed to validate kubelet flags: unknown 'kubernetes.io' or 'k8s.io' labels specified with --node-labels: [{}]\n\
         --node-labels in the 'kubernetes.io' namespace must begin with an allowed prefix (kubelet.kubernetes.io, node.kubernetes.io) or be in the specifically allowed set ({})",
        refused.join(" "),
        KUBELET_LABELS.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }
    fn noenv(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn unknown_flag_is_rejected_like_urfave() {
        let e = parse_args(true, &s(&["--foo"])).unwrap_err();
        assert_eq!(e, "flag provided but not defined: -foo");
        let e = parse_args(false, &s(&["--cluster-init"])).unwrap_err();
        assert_eq!(e, "flag provided but not defined: -cluster-init", "agent has no cluster-init");
        assert!(parse_args(false, &s(&["--tls-san", "x"])).is_err());
    }

    #[test]
    fn flag_forms() {
        let o = parse_args(
            true,
            &s(&[
                "--cluster-init",
                "--tls-san=a,b",
                "--tls-san",
                "c",
                "-t",
                "tok",
                "--node-label",
                "x=y",
                "--write-kubeconfig-mode",
                "0644",
                "--disable=traefik",
                "-d",
                "/x",
            ]),
        )
        .unwrap();
        assert!(o.flag("cluster-init"));
        assert_eq!(o.list("tls-san"), s(&["a", "b", "c"]));
        assert_eq!(o.get("token"), Some("tok"));
        assert_eq!(o.get("data-dir"), Some("/x"));
        assert_eq!(o.get("write-kubeconfig-mode"), Some("0644"));
        assert_eq!(o.list("disable"), s(&["traefik"]));
        assert!(parse_args(true, &s(&["--token"])).unwrap_err().contains("needs an argument"));
        assert!(parse_args(true, &s(&["--cluster-init=maybe"])).is_err());
        assert!(parse_args(true, &s(&["stray"])).is_err());
    }

    #[test]
    fn config_keys_unknown_warn_known_apply() {
        let mut o = Opts::default();
        apply_config(
            true,
            "token: abc\ncluster-init: true\ntls-san:\n  - lb.example\n  - 10.0.0.5\nnotaflag: 1\nwrite-kubeconfig-mode: \"0644\"\nnode-taint:\n  - CriticalAddonsOnly=true:NoExecute\n",
            &mut o,
        )
        .unwrap();
        assert_eq!(o.get("token"), Some("abc"));
        assert!(o.flag("cluster-init"));
        assert_eq!(o.list("tls-san"), s(&["lb.example", "10.0.0.5"]));
        assert_eq!(o.warnings.len(), 1);
        assert!(o.warnings[0].starts_with("Unknown flag --notaflag found in config.yaml, skipping"));
        // a server-only key in an agent config is fatal: k3s skips unknown keys only for servers
        let mut a = Opts::default();
        let e = apply_config(false, "server: https://x:6443\ncluster-init: true\n", &mut a).unwrap_err();
        assert_eq!(e, "flag provided but not defined: -cluster-init");
        apply_config(false, "server: https://x:6443\nnode-label: [a=b]\n", &mut a).unwrap();
        assert_eq!(a.get("server"), Some("https://x:6443"));
        assert!(a.warnings.is_empty());
        assert!(apply_config(true, "token: [unclosed", &mut Opts::default()).is_err());
        apply_config(true, "tls-san+: [extra]\n", &mut o).unwrap();
        assert_eq!(o.list("tls-san"), s(&["lb.example", "10.0.0.5", "extra"]));
        apply_config(true, "tls-san: [only]\n", &mut o).unwrap();
        assert_eq!(o.list("tls-san"), s(&["only"]));
    }

    #[test]
    fn cli_overrides_config_and_lists_append() {
        let dir = std::env::temp_dir().join(format!("k3s-standin-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("config.yaml");
        std::fs::write(&p, "token: fromfile\nnode-label: [a=1]\n").unwrap();
        let o =
            resolve(false, &s(&["--config", p.to_str().unwrap(), "--token", "fromcli", "--node-label", "b=2"]), &noenv)
                .unwrap();
        assert_eq!(o.get("token"), Some("fromcli"));
        assert_eq!(o.list("node-label"), s(&["a=1", "b=2"]));
        let env = |k: &str| (k == "K3S_URL").then(|| "https://e:6443".to_string());
        let o = resolve(false, &s(&["--config", p.to_str().unwrap()]), &env).unwrap();
        assert_eq!(o.get("server"), Some("https://e:6443"));
        assert!(resolve(false, &s(&["--config", "/nonexistent/k3s.yaml"]), &noenv).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn tokens() {
        let h = "a".repeat(64);
        let t = parse_token(&format!("K10{h}::server:s3cret")).unwrap();
        assert_eq!(t.ca_hash.as_deref(), Some(h.as_str()));
        assert_eq!(t.username.as_deref(), Some("server"));
        assert_eq!(t.password, "s3cret");
        let t = parse_token("justasecret").unwrap();
        assert_eq!(t, Token { ca_hash: None, username: None, password: "justasecret".into() });
        assert!(parse_token("K10abc::server:x").is_err(), "short hash");
        assert!(parse_token(&format!("K10{h}::nouser")).is_err());
        assert!(parse_token("").is_err());
        assert!(parse_token("a::b").is_err());
        assert_eq!(format_token(&h, "server", "p"), format!("K10{h}::server:p"));
    }

    #[test]
    fn taints_and_labels() {
        assert!(validate_taint("CriticalAddonsOnly=true:NoExecute").is_ok());
        assert!(validate_taint("k:NoSchedule").is_ok());
        assert!(validate_taint("k=v:Sometimes").is_err());
        assert!(validate_taint("k=v").is_err());
        assert_eq!(validate_label("a=b").unwrap(), ("a".into(), "b".into()));
        assert!(validate_label("ab").is_err());
        assert!(validate_label("example.com/x=").is_ok());
        for bad in ["=v", "Ex.com/x=v", "a b=v", "k=-v", "k=a/b"] {
            assert!(validate_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kubelet_refuses_labels_in_its_reserved_namespaces() {
        let ok = s(&[
            "disk",
            "example.com/x",
            "node.kubernetes.io/pool",
            "a.kubelet.kubernetes.io/b",
            "kubernetes.io/arch",
            "topology.kubernetes.io/zone",
        ]);
        assert!(check_kubelet_labels(&ok).is_ok());
        for bad in [
            "node-role.kubernetes.io/worker",
            "kubernetes.io/role",
            "k8s.io/x",
            "x.k8s.io/y",
            "node-restriction.kubernetes.io/z",
        ] {
            let e = check_kubelet_labels(&s(&["disk", bad])).unwrap_err();
            assert!(e.contains(&format!("[{bad}]")), "{e}");
        }
    }

    #[test]
    fn node_ip_family_must_match_the_cluster_cidr() {
        assert!(check_ip_families(&[], &s(&["10.0.0.5"])).is_ok());
        assert!(check_ip_families(&[], &[]).is_ok());
        let e = check_ip_families(&[], &s(&["fd00::5"])).unwrap_err();
        assert_eq!(e, "cluster-cidr: [10.42.0.0/16] and node-ip: [fd00::5], must share the same IP version (IPv4, IPv6 or dual-stack)");
        assert!(check_ip_families(&s(&["10.42.0.0/16", "fd42::/56"]), &s(&["10.0.0.5"])).is_err());
        assert!(check_ip_families(&s(&["10.42.0.0/16", "fd42::/56"]), &s(&["10.0.0.5", "fd00::5"])).is_ok());
    }

    #[test]
    fn etcd_snapshot_takes_its_own_flags_and_a_token_file_wins() {
        let o = parse_snapshot_args(&s(&["--name", "x", "-s", "https://127.0.0.1:7443", "-t", "T"])).unwrap();
        assert_eq!(
            (o.get("name"), o.get("etcd-server"), o.get("etcd-token")),
            (Some("x"), Some("https://127.0.0.1:7443"), Some("T"))
        );
        let e = parse_snapshot_args(&s(&["--server", "https://x:6443"])).unwrap_err();
        assert_eq!(e, "flag provided but not defined: -server");
        let f = std::env::temp_dir().join(format!("standin-token-{}", std::process::id()));
        std::fs::write(&f, "fromfile\n").unwrap();
        let o = parse_args(true, &s(&["--token", "fromflag", "--token-file", f.to_str().unwrap()])).unwrap();
        assert_eq!(crate::server::token_value(&o, "token", "token-file").as_deref(), Some("fromfile"));
        std::fs::remove_file(&f).ok();
    }

    #[test]
    fn flag_lists_match_k3s() {
        for missing in ["supervisor-port", "apiserver-port", "apiserver-bind-address"] {
            assert!(lookup(true, missing).is_none(), "k3s server has no --{missing}");
        }
        assert!(lookup(false, "system-default-registry").is_none(), "a server-only flag");
        assert!(lookup(true, "system-default-registry").is_some());
        assert!(lookup(false, "bind-address").is_some() && lookup(true, "bind-address").is_some());
        assert!(lookup(true, "https-listen-port").is_some() && lookup(false, "https-listen-port").is_none());
    }
}
