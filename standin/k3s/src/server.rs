//! `k3s server` and `k3s agent`.

use crate::cli::{self, Opts};
use crate::cluster::{self, NodeReg, State};
use crate::net::{self, Ca, Trust};
use crate::util::{fatal, log};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const BANNER: &str = "k3s STAND-IN (test double for pikube's lab tests)";

enum Mode {
    /// Holds the authoritative state (first server, `--cluster-init` or sqlite).
    Primary,
    /// Joined another server: reads from a replica pulled every 2 s, writes forwarded.
    Replica { upstream: String, ca_pem: String },
}

struct Srv {
    state: Mutex<State>,
    ca: Ca,
    password: String,
    agent_password: Option<String>,
    mode: Mode,
}

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
    NodeReg {
        name,
        internal_ip: ip,
        external_ip: o.list("node-external-ip").first().cloned(),
        labels,
        taints,
        os_image,
        kernel,
        arch: arch.into(),
    }
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
        Err(_) if o.get("private-registry").is_some() => fatal(&format!("failed to read private registry config {reg}")),
        Err(_) => {}
    }
}

fn token_value(o: &Opts, key: &str, file_key: &str) -> Option<String> {
    if let Some(t) = o.get(key) {
        return Some(t.to_string());
    }
    o.get(file_key).map(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_else(|e| fatal(&format!("failed to read token file {f}: {e}")))
            .trim()
            .to_string()
    })
}

/// Fetch /cacerts from `url` and check it against a K10 token's CA hash.
async fn fetch_ca(url: &str, tok: &cli::Token) -> Result<String, String> {
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

pub async fn run_server(o: Opts) -> ! {
    common_start(&o);
    let data_dir = PathBuf::from(o.get("data-dir").unwrap_or("/var/lib/rancher/k3s"));
    let port: u16 = o
        .get("https-listen-port")
        .unwrap_or("6443")
        .parse()
        .unwrap_or_else(|_| fatal("invalid value for --https-listen-port"));
    let bind = o.get("bind-address").unwrap_or("0.0.0.0").to_string();
    let token_opt = token_value(&o, "token", "token-file");
    let agent_token = token_value(&o, "agent-token", "agent-token-file");
    let join = o.get("server").map(String::from);
    if join.is_some() && o.flag("cluster-init") {
        log("warning", "STAND-IN: --cluster-init is ignored because --server is set (this server joins the existing cluster)");
    }
    let etcd = join.is_some() || o.flag("cluster-init");
    let server_dir = data_dir.join("server");

    let (ca, password, mode) = if let Some(url) = &join {
        net::parse_url(url).unwrap_or_else(|e| fatal(&e));
        let Some(t) = token_opt.clone() else {
            fatal("starting kubernetes: preparing server: token is required to join a cluster")
        };
        let tok = cli::parse_token(&t).unwrap_or_else(|e| fatal(&e));
        if let Some(u) = &tok.username {
            if u != "server" {
                fatal("starting kubernetes: preparing server: token is not a server token (username must be \"server\")");
            }
        }
        let ca_pem = fetch_ca(url, &tok)
            .await
            .unwrap_or_else(|e| fatal(&format!("starting kubernetes: preparing server: {e}")));
        let r = net::request(url, &Trust::CaAnyName(ca_pem.clone()), "GET", "/v1-k3s/server-bootstrap", Some(&tok.password), b"")
            .await
            .unwrap_or_else(|e| fatal(&format!("starting kubernetes: preparing server: failed to get bootstrap data: {e}")));
        if r.status != 200 {
            let reason = if r.status == 401 { "401 Unauthorized".to_string() } else { r.status.to_string() };
            fatal(&format!(
                "starting kubernetes: preparing server: failed to get bootstrap data from {url}/v1-k3s/server-bootstrap: {reason}"
            ));
        }
        let ca: Ca = serde_json::from_slice(&r.body).unwrap_or_else(|e| fatal(&format!("bad bootstrap data: {e}")));
        log("info", &format!("Joined cluster via {url}; replicating cluster state from it"));
        (ca, tok.password, Mode::Replica { upstream: url.clone(), ca_pem })
    } else {
        let ca_file = server_dir.join("tls/standin-ca.json");
        let ca = match std::fs::read(&ca_file).ok().and_then(|b| serde_json::from_slice::<Ca>(&b).ok()) {
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
                        fatal(&format!("token CA hash does not match the Cluster CA certificate hash: {} != {h}", ca.hash()));
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
        if !etcd {
            log("info", "Configuring sqlite3 database connection pooling (STAND-IN: state is in memory)");
        } else {
            log("info", "Starting etcd for new cluster (STAND-IN: state is in memory)");
        }
        (ca, password, Mode::Primary)
    };

    // token files, as real k3s writes them
    let full = cli::format_token(&ca.hash(), "server", &password);
    for f in ["token", "node-token"] {
        write_file(&server_dir.join(f), &format!("{full}\n"), 0o600)
            .unwrap_or_else(|e| fatal(&format!("writing token: {e}")));
    }
    if let Some(a) = &agent_token {
        let p = cli::parse_token(a).unwrap_or_else(|e| fatal(&e)).password;
        write_file(&server_dir.join("agent-token"), &format!("{}\n", cli::format_token(&ca.hash(), "node", &p)), 0o600).ok();
    }

    let me = node_reg(&o, &data_dir, Some(etcd));
    let mut sans: Vec<String> = [
        "127.0.0.1", "::1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
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
    let tls = tokio_rustls::TlsAcceptor::from(net::server_config(chain, key));

    let listener = tokio::net::TcpListener::bind((bind.as_str(), port))
        .await
        .unwrap_or_else(|e| fatal(&format!("starting kubernetes: preparing server: listen tcp {bind}:{port}: {e}")));
    log("info", &format!("Serving HTTPS on {bind}:{port} (STAND-IN API)"));

    // kubeconfig
    let kc_path = PathBuf::from(o.get("write-kubeconfig").unwrap_or("/etc/rancher/k3s/k3s.yaml"));
    let mode_str = o.get("write-kubeconfig-mode").unwrap_or("0600");
    let kc_mode = u32::from_str_radix(mode_str, 8).unwrap_or_else(|_| fatal(&format!("invalid write-kubeconfig-mode {mode_str}")));
    let host = if bind == "0.0.0.0" || bind == "::" { "127.0.0.1".to_string() } else { bind.clone() };
    let kc = format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://{host}:{port}\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\nkind: Config\npreferences: {{}}\nusers:\n- name: default\n  user:\n    token: {password}\n",
        crate::util::b64enc(ca.cert_pem.as_bytes())
    );
    write_file(&kc_path, &kc, kc_mode).unwrap_or_else(|e| fatal(&format!("writing kubeconfig: {e}")));
    log("info", &format!("Wrote kubeconfig {}", kc_path.display()));

    let srv = Arc::new(Srv {
        state: Mutex::new(State::default()),
        ca,
        password: password.clone(),
        agent_password: agent_token.map(|a| cli::parse_token(&a).map(|t| t.password).unwrap_or(a)),
        mode,
    });

    // replica pull loop
    if let Mode::Replica { upstream, ca_pem } = &srv.mode {
        let (s2, up, ca_pem) = (srv.clone(), upstream.clone(), ca_pem.clone());
        tokio::spawn(async move {
            loop {
                match net::request(&up, &Trust::CaAnyName(ca_pem.clone()), "GET", "/v1-standin/state", Some(&s2.password), b"").await {
                    Ok(r) if r.status == 200 => {
                        if let Ok(e) = serde_json::from_slice::<cluster::Export>(&r.body) {
                            s2.state.lock().unwrap().import(e);
                        }
                    }
                    Ok(r) => log("warning", &format!("STAND-IN replication from {up} failed: HTTP {}", r.status)),
                    Err(e) => log("warning", &format!("STAND-IN replication from {up} failed: {e}")),
                }
                tokio::time::sleep(cluster::HEARTBEAT).await;
            }
        });
    }

    // the server's own node (a k3s server also runs an agent unless --disable-agent)
    if !o.flag("disable-agent") {
        let s2 = srv.clone();
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let ok = match &s2.mode {
                    Mode::Primary => {
                        let r = s2.state.lock().unwrap().heartbeat(me.clone(), first);
                        if r.is_err() {
                            log("error", &format!("Error updating node status, will retry: nodes \"{}\" not found", me.name));
                        }
                        r.is_ok()
                    }
                    Mode::Replica { upstream, ca_pem } => {
                        let body = serde_json::to_vec(&me).unwrap();
                        let path = if first { "/v1-standin/heartbeat?register=1" } else { "/v1-standin/heartbeat" };
                        match net::request(upstream, &Trust::CaAnyName(ca_pem.clone()), "POST", path, Some(&s2.password), &body).await {
                            Err(e) => {
                                log("warning", &format!("node heartbeat failed: {e}"));
                                false
                            }
                            Ok(r) if r.status == 404 => {
                                log("error", &format!("Error updating node status, will retry: nodes \"{}\" not found", me.name));
                                false
                            }
                            Ok(r) => r.status == 200,
                        }
                    }
                };
                if first && ok {
                    log("info", &format!("Node {} registered (STAND-IN kubelet heartbeat every 2s)", me.name));
                    first = false;
                }
                tokio::time::sleep(cluster::HEARTBEAT).await;
            }
        });
    }
    log("info", "k3s is up and running");

    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => continue,
        };
        let (tls, srv) = (tls.clone(), srv.clone());
        tokio::spawn(async move {
            let Ok(Ok(mut s)) = tokio::time::timeout(std::time::Duration::from_secs(10), tls.accept(tcp)).await else {
                return;
            };
            let Ok(req) = net::read_request(&mut s).await else { return };
            let (code, ctype, body) = handle(&srv, req).await;
            let _ = net::write_response(&mut s, code, ctype, &body).await;
        });
    }
}

fn j(code: u16, v: Value) -> (u16, &'static str, Vec<u8>) {
    (code, "application/json", serde_json::to_vec(&v).unwrap())
}

fn status_err(code: u16, reason: &str, msg: &str) -> (u16, &'static str, Vec<u8>) {
    j(code, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": msg, "code": code}))
}

async fn handle(srv: &Srv, req: net::Request) -> (u16, &'static str, Vec<u8>) {
    let path = req.path.split('?').next().unwrap_or("").to_string();
    match (req.method.as_str(), path.as_str()) {
        ("GET", "/cacerts") => return (200, "text/plain", srv.ca.cert_pem.as_bytes().to_vec()),
        ("GET", "/ping") => return (200, "text/plain", b"pong".to_vec()),
        _ => {}
    }
    let bearer = req.header("authorization").and_then(|h| h.strip_prefix("Bearer ")).unwrap_or("");
    let is_server = bearer == srv.password;
    let is_agent = srv.agent_password.as_deref() == Some(bearer);
    let allowed = is_server || (is_agent && path == "/v1-standin/heartbeat");
    if !allowed {
        return status_err(401, "Unauthorized", "Unauthorized");
    }
    if path == "/v1-k3s/server-bootstrap" && req.method == "GET" {
        return j(200, serde_json::to_value(&srv.ca).unwrap());
    }
    // joined servers forward writes to the server they joined
    if let Mode::Replica { upstream, ca_pem } = &srv.mode {
        if req.method != "GET" {
            return match net::request(upstream, &Trust::CaAnyName(ca_pem.clone()), &req.method, &req.path, Some(bearer), &req.body).await {
                Ok(r) => (r.status, "application/json", r.body),
                Err(e) => status_err(502, "ServiceUnavailable", &format!("STAND-IN: upstream server {upstream} unreachable: {e}")),
            };
        }
    }
    let mut st = srv.state.lock().unwrap();
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method.as_str(), seg.as_slice()) {
        ("GET", ["v1-standin", "state"]) => j(200, serde_json::to_value(st.export()).unwrap()),
        ("POST", ["v1-standin", "heartbeat"]) => match serde_json::from_slice::<NodeReg>(&req.body) {
            Ok(reg) => {
                let name = reg.name.clone();
                let register = req.path.contains("register=1");
                match st.heartbeat(reg, register) {
                    Ok(true) => {
                        log("info", &format!("Node {name} registered"));
                        j(200, json!({"ok": true}))
                    }
                    Ok(false) => j(200, json!({"ok": true})),
                    Err(()) => status_err(404, "NotFound", &format!("nodes \"{name}\" not found")),
                }
            }
            Err(e) => status_err(400, "BadRequest", &e.to_string()),
        },
        ("GET", ["api", "v1", "nodes"]) => j(200, st.node_list()),
        ("GET", ["api", "v1", "nodes", name]) => match st.nodes.get(*name) {
            Some(n) => j(200, cluster::node_json(n)),
            None => status_err(404, "NotFound", &format!("nodes \"{name}\" not found")),
        },
        ("DELETE", ["api", "v1", "nodes", name]) => match st.nodes.remove(*name) {
            Some(_) => j(200, json!({"kind": "Status", "status": "Success"})),
            None => status_err(404, "NotFound", &format!("nodes \"{name}\" not found")),
        },
        ("POST", ["v1-standin", "cordon", name]) => {
            let v: Value = serde_json::from_slice(&req.body).unwrap_or(json!({}));
            let want = v.get("unschedulable").and_then(Value::as_bool).unwrap_or(true);
            match st.nodes.get_mut(*name) {
                Some(n) => {
                    let changed = n.unschedulable != want;
                    n.unschedulable = want;
                    j(200, json!({"changed": changed}))
                }
                None => status_err(404, "NotFound", &format!("nodes \"{name}\" not found")),
            }
        }
        ("POST", ["v1-standin", "apply"]) => {
            let Ok(doc) = serde_json::from_slice::<Value>(&req.body) else {
                return status_err(400, "BadRequest", "invalid document");
            };
            match st.apply(doc) {
                Ok((display, result)) => j(200, json!({"name": display, "result": result})),
                Err(e) => status_err(400, "BadRequest", &e),
            }
        }
        ("GET", ["v1-standin", "objects"]) => {
            let items: Vec<Value> = st
                .objects
                .iter()
                .map(|(k, o)| json!({"key": k, "object": cluster::object_json(o), "created": o.created}))
                .collect();
            j(200, json!({"items": items}))
        }
        _ => status_err(404, "NotFound", "the server could not find the requested resource"),
    }
}

pub async fn run_agent(o: Opts) -> ! {
    common_start(&o);
    let Some(url) = o.get("server").map(String::from) else { fatal("Error: --server is required") };
    net::parse_url(&url).unwrap_or_else(|e| fatal(&e));
    let Some(t) = token_value(&o, "token", "token-file") else { fatal("Error: --token is required") };
    let tok = cli::parse_token(&t).unwrap_or_else(|e| fatal(&e));
    let data_dir = PathBuf::from(o.get("data-dir").unwrap_or("/var/lib/rancher/k3s"));
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
            let r = net::request(&url, &Trust::CaAnyName(ca.clone()), "POST", "/v1-standin/heartbeat?register=1", Some(&tok.password), &body).await?;
            match r.status {
                200 => Ok(ca),
                401 => Err(format!("failed to get CA certs / agent config from {url}: 401 Unauthorized")),
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
    log("info", "k3s agent is up and running");
    loop {
        tokio::time::sleep(cluster::HEARTBEAT).await;
        match net::request(&url, &Trust::CaAnyName(ca_pem.clone()), "POST", "/v1-standin/heartbeat", Some(&tok.password), &body).await {
            Ok(r) if r.status == 200 => {}
            Ok(r) if r.status == 404 => log("error", &format!("Error updating node status, will retry: nodes \"{}\" not found", me.name)),
            Ok(r) => log("warning", &format!("node status update failed: HTTP {}", r.status)),
            Err(e) => log("warning", &format!("node status update failed: {e}")),
        }
    }
}
