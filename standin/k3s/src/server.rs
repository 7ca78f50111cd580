//! `k3s server` and `k3s agent`.

use crate::cli::{self, Opts};
use crate::cluster::{self, NodeReg, Refused, State};
use crate::net::{self, Ca, Trust};
use crate::node;
use crate::util::{fatal, log};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const BANNER: &str = "k3s STAND-IN (test double for pikube's lab tests)";

fn write_file(path: &Path, content: &str, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, content)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    let r = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if r != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase()
}

/// First non-loopback IPv4 of the host (what k3s picks from the default-route interface).
fn local_ip() -> String {
    unsafe {
        let mut ifa: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut ifa) != 0 {
            return "127.0.0.1".into();
        }
        let mut p = ifa;
        let mut found = None;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() && (*a).sa_family as i32 == libc::AF_INET {
                let sin = &*(a as *const libc::sockaddr_in);
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() {
                    found = Some(ip.to_string());
                    break;
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(ifa);
        found.unwrap_or_else(|| "127.0.0.1".into())
    }
}

fn uname() -> (String, String) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
        .unwrap_or_else(|| "Linux".into());
    (kernel, os)
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

/// Build this node's registration from the options (labels/taints validated here).
fn node_reg(o: &Opts, data_dir: &Path, server_role: Option<bool>) -> NodeReg {
    let mut name = o.get("node-name").map(|s| s.to_ascii_lowercase()).unwrap_or_else(hostname);
    if o.flag("with-node-id") {
        let idf = data_dir.join("agent/standin-node-id");
        let id = std::fs::read_to_string(&idf).ok().map(|s| s.trim().to_string()).unwrap_or_else(|| {
            let id = net::random_hex(4);
            write_file(&idf, &id, 0o600).ok();
            id
        });
        name = format!("{name}-{id}");
    }
    if let Err(e) = cli::check_ip_families(&o.list("cluster-cidr"), &o.list("node-ip")) {
        fatal(&format!("Error: {e}"));
    }
    let ip = o.list("node-ip").first().cloned().unwrap_or_else(local_ip);
    let mut labels = BTreeMap::new();
    let arch = go_arch();
    for (k, v) in [
        ("beta.kubernetes.io/arch", arch),
        ("beta.kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", arch),
        ("kubernetes.io/os", "linux"),
        ("node.kubernetes.io/instance-type", "k3s"),
    ] {
        labels.insert(k.to_string(), v.to_string());
    }
    labels.insert("kubernetes.io/hostname".into(), name.clone());
    if let Some(etcd) = server_role {
        labels.insert("node-role.kubernetes.io/control-plane".into(), "true".into());
        labels.insert("node-role.kubernetes.io/master".into(), "true".into());
        if etcd {
            labels.insert("node-role.kubernetes.io/etcd".into(), "true".into());
        }
    }
    let given: Vec<String> =
        o.list("node-label").iter().map(|l| l.split('=').next().unwrap_or("").to_string()).collect();
    if let Err(e) = cli::check_kubelet_labels(&given) {
        fatal(&e);
    }
    for l in o.list("node-label") {
        match cli::validate_label(&l) {
            Ok((k, v)) => {
                labels.insert(k, v);
            }
            Err(e) => fatal(&e),
        }
    }
    let taints = o.list("node-taint");
    for t in &taints {
        if let Err(e) = cli::validate_taint(t) {
            fatal(&e);
        }
    }
    let (kernel, os_image) = uname();
    let password = node_password(data_dir);
    NodeReg {
        name,
        internal_ip: ip,
        external_ip: o.list("node-external-ip").first().cloned(),
        labels,
        taints,
        os_image,
        kernel,
        arch: arch.into(),
        version: cluster::VERSION.into(),
        password,
    }
}

/// The node's password, made once (32 hex chars, 0600) as k3s's agent does. Real k3s keeps it
/// in /etc/rancher/node/password; the stand-in does too with the default data dir, and under
/// `<data-dir>/node/` otherwise so its loopback tests can run several nodes on one host.
fn node_password(data_dir: &Path) -> String {
    let file = if data_dir == Path::new(node::DEFAULT_DATA_DIR) {
        PathBuf::from("/etc/rancher/node/password")
    } else {
        data_dir.join("node/password")
    };
    if let Some(p) = std::fs::read_to_string(&file).ok().map(|p| p.trim().to_string()).filter(|p| !p.is_empty()) {
        return p;
    }
    let p = net::random_hex(16);
    write_file(&file, &format!("{p}\n"), 0o600).unwrap_or_else(|e| fatal(&format!("writing {}: {e}", file.display())));
    p
}

fn common_start(o: &Opts) {
    log("info", &format!("{BANNER}: not Kubernetes, runs no containers"));
    for w in &o.warnings {
        log("warning", w);
    }
    if !o.warnings.is_empty() {
        log("warning", "STAND-IN: unknown config.yaml keys are skipped with the warning above, as real k3s does");
    }
    log("info", &format!("Starting k3s {} (standin)", cluster::VERSION));
    let reg = o.get("private-registry").unwrap_or("/etc/rancher/k3s/registries.yaml");
    match std::fs::read_to_string(reg) {
        Ok(t) => match crate::util::check_registries(&t) {
            Ok(ws) => {
                for w in ws {
                    log("warning", &format!("STAND-IN registries check: {w}"));
                }
                log("info", &format!("Using private registry config file at {reg}"));
            }
            Err(e) => fatal(&e),
        },
        Err(_) if o.get("private-registry").is_some() => {
            fatal(&format!("failed to read private registry config {reg}"))
        }
        Err(_) => {}
    }
}

/// `--token-file` wins over `--token` (and config.yaml's `token:`), as in k3s's server.go.
pub fn token_value(o: &Opts, key: &str, file_key: &str) -> Option<String> {
    let from_file = o.get(file_key).map(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_else(|e| fatal(&format!("failed to read token file {f}: {e}")))
            .trim()
            .to_string()
    });
    from_file.or_else(|| o.get(key).map(str::to_string))
}

/// An io::Error worded like Go's (`no such file or directory`).
pub fn os_err(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = s.split(" (os error").next().unwrap_or(&s).to_string();
    let mut c = s.chars();
    c.next().map(|f| f.to_lowercase().chain(c).collect()).unwrap_or_default()
}

/// The bootstrap data a server keeps on disk: the CA, the token files and server-ca.crt.
pub fn write_bootstrap(server_dir: &Path, ca: &Ca, password: &str) {
    write_file(&server_dir.join("tls/standin-ca.json"), &serde_json::to_string(ca).unwrap(), 0o600)
        .unwrap_or_else(|e| fatal(&format!("writing standin-ca.json: {e}")));
    write_tokens(server_dir, ca, password);
}

/// Token files, as real k3s writes them, and the cluster CA where real k3s keeps it (what
/// `pikube status` compares between servers).
fn write_tokens(server_dir: &Path, ca: &Ca, password: &str) {
    let full = cli::format_token(&ca.hash(), "server", password);
    for f in ["token", "node-token"] {
        write_file(&server_dir.join(f), &format!("{full}\n"), 0o600)
            .unwrap_or_else(|e| fatal(&format!("writing token: {e}")));
    }
    write_file(&server_dir.join("tls/server-ca.crt"), &ca.cert_pem, 0o644)
        .unwrap_or_else(|e| fatal(&format!("writing server-ca.crt: {e}")));
}

/// Fetch /cacerts from `url` and check it against a K10 token's CA hash.
pub async fn fetch_ca(url: &str, tok: &cli::Token) -> Result<String, String> {
    let r = net::request(url, &Trust::Insecure, "GET", "/cacerts", None, b"").await?;
    if r.status != 200 {
        return Err(format!("failed to get CA certs: {url}/cacerts: {}", r.status));
    }
    let pem = String::from_utf8_lossy(&r.body).to_string();
    if let Some(h) = &tok.ca_hash {
        let got = net::sha256_hex(pem.as_bytes());
        if &got != h {
            return Err(format!("token CA hash does not match the Cluster CA certificate hash: {got} != {h}"));
        }
    }
    Ok(pem)
}

/// Where a server keeps the replicated state and member list (real k3s: etcd/sqlite in
/// `<data-dir>/server/db`).
pub const STATE_FILE: &str = "db/standin-state.json";

pub fn load_json<T: serde::de::DeserializeOwned>(p: &Path) -> Option<T> {
    std::fs::read(p).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// Write a file atomically with the given mode (created with it, then renamed into place).
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
    f.write_all(content)?;
    f.sync_all().ok();
    drop(f);
    std::fs::rename(&tmp, path)
}

/// `https://<advertise-address | first node-ip | local ip>:<https-listen-port>`
fn self_url(o: &Opts, port: u16) -> String {
    let host = o
        .get("advertise-address")
        .map(String::from)
        .or_else(|| o.list("node-ip").first().cloned())
        .unwrap_or_else(local_ip);
    if host.contains(':') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    }
}

pub type Resp = (u16, &'static str, Vec<u8>);

pub struct Srv {
    pub state: Mutex<State>,
    pub ca: Ca,
    pub password: String,
    pub agent_password: Option<String>,
    /// this server's own URL in the member list
    pub self_url: String,
    /// Embedded etcd (cluster-init or joined) rather than sqlite: only then snapshots work.
    pub etcd: bool,
    pub snapshot_dir: PathBuf,
    pub node_name: String,
}

impl Srv {
    fn peers(&self) -> Vec<String> {
        self.state.lock().unwrap().live_members().into_iter().filter(|u| *u != self.self_url).collect()
    }
    /// Which of `members` are started now (etcd: peers it is connected to): this server, and
    /// each peer that answers `/ping` within 2 s, all asked at once.
    pub async fn started(&self, members: &[String]) -> Vec<bool> {
        let probes: Vec<_> = members
            .iter()
            .map(|m| {
                let (url, trust, me) = (m.clone(), self.trust(), *m == self.self_url);
                tokio::spawn(async move {
                    let ping = net::request(&url, &trust, "GET", "/ping", None, b"");
                    me || matches!(tokio::time::timeout(std::time::Duration::from_secs(2), ping).await, Ok(Ok(r)) if r.status == 200)
                })
            })
            .collect();
        let mut out = Vec::with_capacity(probes.len());
        for p in probes {
            out.push(p.await.unwrap_or(false));
        }
        out
    }
    fn trust(&self) -> Trust {
        Trust::CaAnyName(self.ca.cert_pem.clone())
    }
}

/// Best-effort push of a written record to every peer (anti-entropy repairs misses).
/// With `wait`, the write's response waits (at most 1.5 s) for the pushes, so a client
/// that reads from another server right after sees its write whenever peers are up.
pub async fn push(srv: &Arc<Srv>, part: State, wait: bool) {
    let peers = srv.peers();
    if peers.is_empty() {
        return;
    }
    let body = Arc::new(serde_json::to_vec(&part).unwrap());
    let tasks: Vec<_> = peers
        .into_iter()
        .map(|p| {
            let (srv, body) = (srv.clone(), body.clone());
            tokio::spawn(async move {
                let _ = net::request(&p, &srv.trust(), "POST", "/v1-standin/merge", Some(&srv.password), &body).await;
            })
        })
        .collect();
    if wait {
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_millis(1500), all).await;
    }
}

/// Anti-entropy: every second pull the full state from each peer and merge it.
async fn sync_loop(srv: Arc<Srv>) {
    let mut down = std::collections::BTreeSet::new();
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let peers = srv.peers();
        let tasks: Vec<_> = peers
            .iter()
            .map(|p| {
                let (srv, p) = (srv.clone(), p.clone());
                tokio::spawn(async move {
                    net::request(&p, &srv.trust(), "GET", "/v1-standin/state", Some(&srv.password), b"").await
                })
            })
            .collect();
        for (p, t) in peers.iter().zip(tasks) {
            let res = match t.await {
                Ok(Ok(r)) if r.status == 200 => serde_json::from_slice::<State>(&r.body).map_err(|e| e.to_string()),
                Ok(Ok(r)) => Err(format!("HTTP {}", r.status)),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(e.to_string()),
            };
            match res {
                Ok(st) => {
                    srv.state.lock().unwrap().merge(st);
                    if down.remove(p) {
                        log("info", &format!("STAND-IN replication: peer {p} is reachable again"));
                    }
                }
                Err(e) => {
                    if down.insert(p.clone()) {
                        log("warning", &format!("STAND-IN replication: peer {p} unreachable, will keep retrying: {e}"));
                    }
                }
            }
        }
    }
}

/// Persist state + member list at most once per second when it changed.
async fn persist_loop(srv: Arc<Srv>, file: PathBuf) {
    let mut written = u64::MAX;
    loop {
        let snap = {
            let st = srv.state.lock().unwrap();
            (st.gen != written).then(|| (st.gen, serde_json::to_vec(&*st).unwrap()))
        };
        if let Some((g, bytes)) = snap {
            match write_atomic(&file, &bytes, 0o600) {
                Ok(()) => written = g,
                Err(e) => log("warning", &format!("STAND-IN: writing {}: {e}", file.display())),
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

pub async fn run_server(o: Opts) -> ! {
    let data_dir = PathBuf::from(o.get("data-dir").unwrap_or(node::DEFAULT_DATA_DIR));
    node::reexec("server", &data_dir);
    common_start(&o);
    let port: u16 = o
        .get("https-listen-port")
        .unwrap_or("6443")
        .parse()
        .unwrap_or_else(|_| fatal("invalid value for --https-listen-port"));
    let bind = o.get("bind-address").unwrap_or("0.0.0.0").to_string();
    if o.get("cluster-reset-restore-path").is_some() && !o.flag("cluster-reset") {
        fatal("invalid flag use; --cluster-reset required with --cluster-reset-restore-path");
    }
    if o.flag("cluster-reset") {
        crate::snapshot::cluster_reset(&o, &data_dir, port, &self_url(&o, port));
    }
    let token_opt = token_value(&o, "token", "token-file");
    let agent_token = token_value(&o, "agent-token", "agent-token-file");
    let join = o.get("server").map(String::from);
    let server_dir = data_dir.join("server");
    let state_file = server_dir.join(STATE_FILE);
    let ca_file = server_dir.join("tls/standin-ca.json");
    let local_ca: Option<Ca> = load_json(&ca_file);
    let local_state: Option<State> = load_json(&state_file);
    let has_data = local_ca.is_some() && local_state.is_some();
    if join.is_some() && o.flag("cluster-init") && !has_data {
        log(
            "warning",
            "STAND-IN: --cluster-init is ignored because --server is set (this server joins the existing cluster)",
        );
    }
    // Existing etcd data keeps a restarted server on etcd without either flag, as in k3s.
    let etcd = join.is_some() || o.flag("cluster-init") || server_dir.join("db/etcd").is_dir();
    if etcd {
        // Where real k3s keeps embedded etcd; its presence tells etcd from sqlite.
        std::fs::create_dir_all(server_dir.join("db/etcd")).ok();
    }
    let me_url = self_url(&o, port);

    // A joining server with no local data bootstraps from --server. With local data (a
    // restart) it starts from that, like real k3s with existing etcd data: --server need
    // not be reachable then.
    let fresh_join = join.as_ref().filter(|_| !has_data).cloned();
    let (ca, password) = if let Some(url) = &fresh_join {
        net::parse_url(url).unwrap_or_else(|e| fatal(&e));
        let Some(t) = token_opt.clone() else {
            fatal("starting kubernetes: preparing server: token is required to join a cluster")
        };
        let tok = cli::parse_token(&t).unwrap_or_else(|e| fatal(&e));
        if let Some(u) = &tok.username {
            if u != "server" {
                fatal(
                    "starting kubernetes: preparing server: token is not a server token (username must be \"server\")",
                );
            }
        }
        let ca_pem =
            fetch_ca(url, &tok).await.unwrap_or_else(|e| fatal(&format!("starting kubernetes: preparing server: {e}")));
        let r = net::request(
            url,
            &Trust::CaAnyName(ca_pem.clone()),
            "GET",
            "/v1-k3s/server-bootstrap",
            Some(&tok.password),
            b"",
        )
        .await
        .unwrap_or_else(|e| {
            fatal(&format!("starting kubernetes: preparing server: failed to get bootstrap data: {e}"))
        });
        if r.status != 200 {
            // k3s's clientaccess reports a refused GET as "<url>: <Go's resp.Status>"; a server
            // on sqlite answers 400 ("etcd disabled").
            fatal(&format!(
                "starting kubernetes: preparing server: failed to bootstrap cluster data: {}/v1-k3s/server-bootstrap: {} {}",
                url.trim_end_matches('/'),
                r.status,
                net::reason_phrase(r.status)
            ));
        }
        let ca: Ca = serde_json::from_slice(&r.body).unwrap_or_else(|e| fatal(&format!("bad bootstrap data: {e}")));
        write_file(&ca_file, &serde_json::to_string(&ca).unwrap(), 0o600)
            .unwrap_or_else(|e| fatal(&format!("writing {}: {e}", ca_file.display())));
        (ca, tok.password)
    } else {
        let ca = match local_ca {
            Some(c) => c,
            None => {
                let c = Ca::generate();
                write_file(&ca_file, &serde_json::to_string(&c).unwrap(), 0o600)
                    .unwrap_or_else(|e| fatal(&format!("writing {}: {e}", ca_file.display())));
                c
            }
        };
        let existing = std::fs::read_to_string(server_dir.join("token")).ok().and_then(|t| cli::parse_token(&t).ok());
        let password = match &token_opt {
            Some(t) => {
                let tok = cli::parse_token(t).unwrap_or_else(|e| fatal(&e));
                if let Some(h) = &tok.ca_hash {
                    if *h != ca.hash() {
                        fatal(&format!(
                            "token CA hash does not match the Cluster CA certificate hash: {} != {h}",
                            ca.hash()
                        ));
                    }
                }
                if let Some(ex) = &existing {
                    if ex.password != tok.password {
                        fatal("bootstrap data already found and encrypted with different token");
                    }
                }
                tok.password
            }
            None => existing.map(|e| e.password).unwrap_or_else(|| net::random_hex(16)),
        };
        if has_data && etcd {
            log(
                "info",
                &format!(
                    "Found existing cluster data in {} (STAND-IN: replicated state, not etcd); starting from it{}",
                    state_file.display(),
                    if join.is_some() || o.flag("cluster-init") {
                        "; --server / --cluster-init are ignored, as with real k3s"
                    } else {
                        ""
                    }
                ),
            );
        } else if !etcd {
            log("info", "Configuring sqlite3 database connection pooling (STAND-IN: state in standin-state.json)");
        } else {
            log("info", "Starting etcd for new cluster (STAND-IN: replicated state, not etcd)");
        }
        (ca, password)
    };

    write_tokens(&server_dir, &ca, &password);
    if let Some(a) = &agent_token {
        let p = cli::parse_token(a).unwrap_or_else(|e| fatal(&e)).password;
        write_file(&server_dir.join("agent-token"), &format!("{}\n", cli::format_token(&ca.hash(), "node", &p)), 0o600)
            .ok();
    }

    let me = node_reg(&o, &data_dir, Some(etcd));
    let mut sans: Vec<String> = [
        "127.0.0.1",
        "::1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sans.push(hostname());
    sans.push(me.name.clone());
    sans.extend(o.list("node-ip"));
    sans.push(me.internal_ip.clone());
    sans.extend(o.get("advertise-address").map(String::from));
    if bind != "0.0.0.0" && bind != "::" {
        sans.push(bind.clone());
    }
    sans.extend(o.list("tls-san"));
    let (chain, key) = ca.serving(&sans);
    let tls = tokio_rustls::TlsAcceptor::from(net::server_config(chain, key, &ca.cert_pem));

    let listener = tokio::net::TcpListener::bind((bind.as_str(), port))
        .await
        .unwrap_or_else(|e| fatal(&format!("starting kubernetes: preparing server: listen tcp {bind}:{port}: {e}")));
    log("info", &format!("Serving HTTPS on {bind}:{port} (STAND-IN API)"));

    // kubeconfig with an admin client certificate (CN=system:admin, O=system:masters), as
    // real k3s writes it; kept in <data-dir>/server/tls/client-admin.{crt,key}
    let (crt_f, key_f) = (server_dir.join("tls/client-admin.crt"), server_dir.join("tls/client-admin.key"));
    let (admin_crt, admin_key) = match (std::fs::read_to_string(&crt_f), std::fs::read_to_string(&key_f)) {
        (Ok(c), Ok(k)) if has_data || fresh_join.is_none() => (c, k),
        _ => {
            let (c, k) = ca.client_admin();
            write_file(&crt_f, &c, 0o644).ok();
            write_file(&key_f, &k, 0o600).ok();
            (c, k)
        }
    };
    let kc_path = PathBuf::from(o.get("write-kubeconfig").unwrap_or("/etc/rancher/k3s/k3s.yaml"));
    let mode_str = o.get("write-kubeconfig-mode").unwrap_or("0600");
    let kc_mode = u32::from_str_radix(mode_str, 8)
        .unwrap_or_else(|_| fatal(&format!("invalid write-kubeconfig-mode {mode_str}")));
    let host = if bind == "0.0.0.0" || bind == "::" { "127.0.0.1".to_string() } else { bind.clone() };
    let kc = format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://{host}:{port}\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\nkind: Config\npreferences: {{}}\nusers:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        crate::util::b64enc(ca.cert_pem.as_bytes()),
        crate::util::b64enc(admin_crt.as_bytes()),
        crate::util::b64enc(admin_key.as_bytes()),
    );
    write_file(&kc_path, &kc, kc_mode).unwrap_or_else(|e| fatal(&format!("writing kubeconfig: {e}")));
    log("info", &format!("Wrote kubeconfig {}", kc_path.display()));

    let srv = Arc::new(Srv {
        state: Mutex::new(local_state.unwrap_or_default()),
        ca,
        password: password.clone(),
        agent_password: agent_token.map(|a| cli::parse_token(&a).map(|t| t.password).unwrap_or(a)),
        self_url: me_url.clone(),
        etcd,
        snapshot_dir: crate::snapshot::dir(&o, &data_dir),
        node_name: me.name.clone(),
    });
    if etcd && !srv.state.lock().unwrap().members.contains_key(&me_url) {
        srv.state.lock().unwrap().add_member(&me_url);
    }

    // a fresh joiner registers itself as a member and receives the member list + state
    if let Some(url) = &fresh_join {
        let body = serde_json::to_vec(&json!({"url": me_url})).unwrap();
        let r = net::request(url, &srv.trust(), "POST", "/v1-standin/members", Some(&password), &body)
            .await
            .unwrap_or_else(|e| fatal(&format!("starting kubernetes: preparing server: failed to join cluster: {e}")));
        if r.status != 200 {
            fatal(&format!(
                "starting kubernetes: preparing server: failed to join cluster via {url}: HTTP {}",
                r.status
            ));
        }
        let st: State = serde_json::from_slice(&r.body).unwrap_or_else(|e| fatal(&format!("bad member data: {e}")));
        let members: Vec<String> = {
            let mut s = srv.state.lock().unwrap();
            s.merge(st);
            s.members.keys().cloned().collect()
        };
        let bytes = serde_json::to_vec(&*srv.state.lock().unwrap()).unwrap();
        write_atomic(&state_file, &bytes, 0o600)
            .unwrap_or_else(|e| fatal(&format!("writing {}: {e}", state_file.display())));
        log(
            "info",
            &format!(
                "Joined cluster via {url} as member {me_url} (STAND-IN multi-master replication; members: {})",
                members.join(", ")
            ),
        );
    } else {
        // a restarted member announces itself (its peers usually know it already)
        let part = srv.state.lock().unwrap().part(None, None, Some(&me_url));
        push(&srv, part, false).await;
    }

    tokio::spawn(persist_loop(srv.clone(), state_file));
    tokio::spawn(sync_loop(srv.clone()));

    // the server's own node (a k3s server also runs an agent unless --disable-agent)
    if !o.flag("disable-agent") {
        let s2 = srv.clone();
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let r = s2.state.lock().unwrap().heartbeat(me.clone(), first);
                match r {
                    Ok(_) => {
                        let part = s2.state.lock().unwrap().part(Some(&me.name), None, None);
                        push(&s2, part, false).await;
                        if first {
                            log("info", &format!("Node {} registered (STAND-IN kubelet heartbeat every 2s)", me.name));
                            first = false;
                        }
                    }
                    Err(Refused::NotFound) => log(
                        "error",
                        &format!("Error updating node status, will retry: nodes \"{}\" not found", me.name),
                    ),
                    Err(Refused::PasswordRejected) => log(
                        "info",
                        &format!(
                            "Waiting to retrieve agent configuration; server is not ready: {}",
                            cluster::PASSWORD_REJECTED
                        ),
                    ),
                }
                tokio::time::sleep(cluster::HEARTBEAT).await;
            }
        });
    }
    if !o.flag("disable-agent") {
        node::leave_traces(&data_dir);
    }
    log("info", "k3s is up and running");
    crate::util::sd_notify_ready();

    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => continue,
        };
        let (tls, srv) = (tls.clone(), srv.clone());
        tokio::spawn(async move {
            let Ok(Ok(mut s)) = tokio::time::timeout(std::time::Duration::from_secs(10), tls.accept(tcp)).await else {
                return;
            };
            // the verifier only lets through certificates that chain to the cluster CA
            let client_cert = s.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
            let Ok(Ok(mut req)) =
                tokio::time::timeout(std::time::Duration::from_secs(30), net::read_request(&mut s)).await
            else {
                return;
            };
            req.peer = peer.to_string();
            let (code, ctype, body) = handle(&srv, req, client_cert).await;
            let _ = net::write_response(&mut s, code, ctype, &body).await;
        });
    }
}

/// k3s's `/db/info` (the etcd member list, in etcd's MemberListResponse JSON): members named
/// `<host>-<8 hex>` as k3s names them, peer URLs on 2380 and client URLs on 2379.
fn db_info(srv: &Srv) -> Value {
    let members: Vec<Value> = srv
        .state
        .lock()
        .unwrap()
        .live_members()
        .iter()
        .map(|url| {
            let host = crate::util::url_host(url).unwrap_or("");
            let id = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(url.as_bytes()));
            let h = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
            json!({
                "ID": u64::from_be_bytes(id[..8].try_into().unwrap()),
                "name": format!("{host}-{:02x}{:02x}{:02x}{:02x}", id[0], id[1], id[2], id[3]),
                "peerURLs": [format!("https://{h}:2380")],
                "clientURLs": [format!("https://{h}:2379")],
            })
        })
        .collect();
    json!({ "members": members })
}

pub fn j(code: u16, v: Value) -> Resp {
    (code, "application/json", serde_json::to_vec(&v).unwrap())
}

pub fn status_err(code: u16, reason: &str, msg: &str) -> Resp {
    j(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": msg, "reason": reason, "code": code}),
    )
}

async fn handle(srv: &Arc<Srv>, req: net::Request, client_cert: bool) -> Resp {
    let path = req.path.split('?').next().unwrap_or("").to_string();
    match (req.method.as_str(), path.as_str()) {
        ("GET", "/cacerts") => return (200, "text/plain", srv.ca.cert_pem.as_bytes().to_vec()),
        ("GET", "/ping") => return (200, "text/plain", b"pong".to_vec()),
        _ => {}
    }
    let bearer = req.header("authorization").and_then(|h| h.strip_prefix("Bearer ")).unwrap_or("");
    // k3s's supervisor also takes HTTP basic auth as user `server` with the token's password.
    let basic = req
        .header("authorization")
        .and_then(|h| h.strip_prefix("Basic "))
        .and_then(crate::util::b64dec)
        .is_some_and(|b| b == format!("server:{}", srv.password).as_bytes());
    let is_server = (!bearer.is_empty() && bearer == srv.password) || basic;
    let is_agent = !bearer.is_empty() && srv.agent_password.as_deref() == Some(bearer);
    let allowed = client_cert || is_server || (is_agent && path == "/v1-standin/heartbeat");
    if !allowed {
        return status_err(401, "Unauthorized", "Unauthorized");
    }
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    // server-to-server endpoints need the server token
    if matches!(
        seg.as_slice(),
        ["v1-k3s", "server-bootstrap"] | ["v1-standin", "members" | "state" | "merge"] | ["db", "info" | "snapshot"]
    ) && !is_server
    {
        return status_err(401, "Unauthorized", "Unauthorized");
    }
    match (req.method.as_str(), seg.as_slice()) {
        ("GET", ["v1-k3s", "server-bootstrap"]) | ("POST", ["v1-standin", "members"]) if !srv.etcd => {
            // k3s serves bootstrap data only with embedded etcd (pkg/server/router.go): a server
            // on sqlite refuses every server that tries to join it.
            log(
                "warning",
                &format!("Received HTTP bootstrap request from {}, but embedded etcd is not enabled.", req.peer),
            );
            status_err(400, "BadRequest", "etcd disabled")
        }
        ("GET", ["v1-k3s", "server-bootstrap"]) => j(200, serde_json::to_value(&srv.ca).unwrap()),
        ("GET", ["db", "info"]) => j(200, db_info(srv)),
        ("POST", ["v1-standin", "members"]) => {
            let Some(url) =
                serde_json::from_slice::<Value>(&req.body).ok().and_then(|v| v["url"].as_str().map(String::from))
            else {
                return status_err(400, "BadRequest", "member url missing");
            };
            let (full, part) = {
                let mut st = srv.state.lock().unwrap();
                if !st.members.contains_key(&srv.self_url) {
                    st.add_member(&srv.self_url);
                }
                st.add_member(&url);
                let mut part = st.part(None, None, Some(&url));
                part.members.insert(srv.self_url.clone(), st.members[&srv.self_url]);
                (serde_json::to_value(&*st).unwrap(), part)
            };
            log("info", &format!("STAND-IN: server {url} joined the cluster as a member"));
            // not waited for: the new member is still waiting for this answer
            push(srv, part, false).await;
            j(200, full)
        }
        ("POST", ["db", "snapshot"]) => snapshot(srv, &req.body),
        ("GET", ["v1-standin", "state"]) => j(200, serde_json::to_value(&*srv.state.lock().unwrap()).unwrap()),
        ("POST", ["v1-standin", "merge"]) => match serde_json::from_slice::<State>(&req.body) {
            Ok(part) => {
                srv.state.lock().unwrap().merge(part);
                j(200, json!({"ok": true}))
            }
            Err(e) => status_err(400, "BadRequest", &e.to_string()),
        },
        ("POST", ["v1-standin", "heartbeat"]) => match serde_json::from_slice::<NodeReg>(&req.body) {
            Ok(reg) => {
                let name = reg.name.clone();
                let register = req.path.contains("register=1");
                let (r, part) = {
                    let mut st = srv.state.lock().unwrap();
                    let r = st.heartbeat(reg, register);
                    (r, st.part(Some(&name), None, None))
                };
                match r {
                    Ok(created) => {
                        if created {
                            log("info", &format!("Node {name} registered"));
                        }
                        push(srv, part, true).await;
                        j(200, json!({"ok": true}))
                    }
                    Err(Refused::NotFound) => status_err(404, "NotFound", &format!("nodes \"{name}\" not found")),
                    Err(Refused::PasswordRejected) => status_err(403, "Forbidden", cluster::PASSWORD_REJECTED),
                }
            }
            Err(e) => status_err(400, "BadRequest", &e.to_string()),
        },
        ("POST", ["v1-standin", "cordon", name]) => {
            let v: Value = serde_json::from_slice(&req.body).unwrap_or(json!({}));
            let want = v.get("unschedulable").and_then(Value::as_bool).unwrap_or(true);
            let (r, part) = {
                let mut st = srv.state.lock().unwrap();
                (st.cordon(name, want), st.part(Some(name), None, None))
            };
            match r {
                Some(changed) => {
                    push(srv, part, true).await;
                    j(200, json!({"changed": changed}))
                }
                None => status_err(404, "NotFound", &format!("nodes \"{name}\" not found")),
            }
        }
        ("POST", ["v1-standin", verb @ ("label" | "taint"), name]) => {
            let v: Value = serde_json::from_slice(&req.body).unwrap_or(json!({}));
            let overwrite = v.get("overwrite").and_then(Value::as_bool).unwrap_or(false);
            let strings = |k: &str| -> Vec<String> {
                v.get(k)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            };
            let (r, part) = {
                let mut st = srv.state.lock().unwrap();
                let r = if *verb == "label" {
                    let want: BTreeMap<String, Option<String>> =
                        serde_json::from_value(v.get("labels").cloned().unwrap_or(json!({}))).unwrap_or_default();
                    st.label(name, &want, overwrite)
                } else {
                    st.taint(name, &strings("add"), &strings("remove"), overwrite)
                };
                (r, st.part(Some(name), None, None))
            };
            match r {
                Some(Ok(changed)) => {
                    push(srv, part, true).await;
                    j(200, json!({"changed": changed}))
                }
                Some(Err(e)) => status_err(409, "Conflict", &e),
                None => status_err(404, "NotFound", &format!("nodes \"{name}\" not found")),
            }
        }
        ("POST", ["v1-standin", "apply"]) => {
            let Ok(doc) = serde_json::from_slice::<Value>(&req.body) else {
                return status_err(400, "BadRequest", "invalid document");
            };
            let (r, part) = {
                let mut st = srv.state.lock().unwrap();
                let r = st.apply(doc);
                let part = r.as_ref().ok().map(|(k, _, _)| st.part(None, Some(k), None));
                (r, part)
            };
            match r {
                Ok((_, display, result)) => {
                    if let Some(p) = part.filter(|_| result != "unchanged") {
                        push(srv, p, true).await;
                    }
                    j(200, json!({"name": display, "result": result}))
                }
                Err(e) => status_err(400, "BadRequest", &e),
            }
        }
        ("GET", ["v1-standin", "objects"]) => {
            let st = srv.state.lock().unwrap();
            let mut items: Vec<Value> = st
                .live_objects()
                .map(|(k, o)| json!({"key": k, "object": cluster::object_json(o), "created": o.created}))
                .collect();
            items.extend(st.password_secrets().into_iter().map(|o| {
                json!({"key": format!("/Secret/kube-system/{}", o["metadata"]["name"].as_str().unwrap_or("")), "object": o})
            }));
            j(200, json!({"items": items}))
        }
        _ => crate::api::handle(srv, &req, &path).await,
    }
}

/// The supervisor's `/db/snapshot` (what `k3s etcd-snapshot save` calls).
fn snapshot(srv: &Arc<Srv>, body: &[u8]) -> Resp {
    if !srv.etcd {
        log("error", "etcd datastore disabled");
        return status_err(500, "InternalError", "etcd datastore disabled");
    }
    let v: Value = serde_json::from_slice(body).unwrap_or(json!({}));
    let name = v["name"].as_str().unwrap_or("on-demand");
    let state = srv.state.lock().unwrap().clone();
    match crate::snapshot::save(&state, &srv.ca, &srv.password, &srv.snapshot_dir, name, &srv.node_name) {
        Ok(file) => {
            log("info", &format!("Saving etcd snapshot to {}", srv.snapshot_dir.join(&file).display()));
            j(200, json!({"name": file}))
        }
        Err(e) => {
            log("error", &e);
            status_err(500, "InternalError", &e)
        }
    }
}

pub async fn run_agent(o: Opts) -> ! {
    let Some(url) = o.get("server").map(String::from) else { fatal("Error: --server is required") };
    net::parse_url(&url).unwrap_or_else(|e| fatal(&e));
    let Some(t) = token_value(&o, "token", "token-file") else { fatal("Error: --token is required") };
    let tok = cli::parse_token(&t).unwrap_or_else(|e| fatal(&e));
    let data_dir = PathBuf::from(o.get("data-dir").unwrap_or(node::DEFAULT_DATA_DIR));
    node::reexec("agent", &data_dir);
    common_start(&o);
    let mut me = node_reg(&o, &data_dir, None);
    if o.list("node-ip").is_empty() {
        // pick the source address the kernel would use toward the server (no packet sent)
        if let Ok((h, p)) = net::parse_url(&url) {
            if let Ok(sock) = std::net::UdpSocket::bind("0.0.0.0:0") {
                if sock.connect((h.as_str(), p)).is_ok() {
                    if let Ok(a) = sock.local_addr() {
                        me.internal_ip = a.ip().to_string();
                    }
                }
            }
        }
    }
    let body = serde_json::to_vec(&me).unwrap();
    // Real k3s agents retry forever until the server accepts them (systemd keeps them up).
    let ca_pem = loop {
        let res = async {
            let ca = fetch_ca(&url, &tok).await?;
            let r = net::request(
                &url,
                &Trust::CaAnyName(ca.clone()),
                "POST",
                "/v1-standin/heartbeat?register=1",
                Some(&tok.password),
                &body,
            )
            .await?;
            match r.status {
                200 => Ok(ca),
                401 => Err(format!("failed to get CA certs / agent config from {url}: 401 Unauthorized")),
                403 => Err(cluster::PASSWORD_REJECTED.to_string()),
                s => Err(format!("{url}: HTTP {s}")),
            }
        }
        .await;
        match res {
            Ok(ca) => break ca,
            Err(e) => {
                log("info", &format!("Waiting to retrieve agent configuration; server is not ready: {e}"));
                tokio::time::sleep(cluster::HEARTBEAT).await;
            }
        }
    };
    log("info", &format!("Node {} registered with {url} (STAND-IN kubelet heartbeat every 2s)", me.name));
    node::leave_traces(&data_dir);
    log("info", "k3s agent is up and running");
    crate::util::sd_notify_ready();
    loop {
        tokio::time::sleep(cluster::HEARTBEAT).await;
        match net::request(
            &url,
            &Trust::CaAnyName(ca_pem.clone()),
            "POST",
            "/v1-standin/heartbeat",
            Some(&tok.password),
            &body,
        )
        .await
        {
            Ok(r) if r.status == 200 => {}
            Ok(r) if r.status == 404 => {
                log("error", &format!("Error updating node status, will retry: nodes \"{}\" not found", me.name))
            }
            Ok(r) => log("warning", &format!("node status update failed: HTTP {}", r.status)),
            Err(e) => log("warning", &format!("node status update failed: {e}")),
        }
    }
}
