//! kubeadm's certificates over time. kubeadm signs every certificate and kubeconfig it makes
//! for a year (the CAs for ten); kubelet's client certificate rotates by itself, the others do
//! not, and only `kubeadm upgrade` renews them along the way. A cluster left on one release
//! for a year stops: etcd's peers refuse each other, the API server cannot reach etcd, kubectl
//! is refused. So `status` and `pikube certs` read `kubeadm certs check-expiration -o json`
//! on each server, and `up` renews a server's certificates once the first of them expires
//! within `kubernetes.renew_certificates_days`: `kubeadm certs renew all`, then the server's
//! control plane restarts so it loads them (kubeadm-certs.md), one server at a time, its API
//! server and etcd member checked healthy before the next. The control plane restarts by
//! stopping its processes, which kubelet starts again at once, rather than by moving the static
//! pod manifests away for 20 s as kubeadm's guide does: without their pods kubelet sees the
//! control plane's images unused, and on a nearly full SD card it deletes unused images — an
//! air-gapped server could not start its control plane again (as in `backup::restore`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::backup::CONTROL_PLANE;
use super::KUBECTL;
use crate::fleet::{Fleet, Node};
use crate::remote::{quote, Cmd, Host, Mode};

/// Prints the server's certificates as JSON, or nothing on a host without a control plane.
/// Read with the cluster's configuration when the API answers and kubeadm's defaults when it
/// does not (expired certificates), which is what pikube's clusters use.
pub const CHECK_EXPIRATION: &str = "[ -f /etc/kubernetes/manifests/kube-apiserver.yaml ] || exit 0; \
     /usr/local/bin/kubeadm certs check-expiration -o json";

/// Renews every certificate and kubeconfig kubeadm made, then stops the control plane's
/// processes, which kubelet starts again with them. One command: renewed files with the old
/// processes still running would not be due again on the next run. None running (kubelet
/// stopped) is fine: kubelet starts them anew.
fn renew_and_restart() -> String {
    format!("/usr/local/bin/kubeadm certs renew all >/dev/null && {{ pkill -TERM -x '{CONTROL_PLANE}' || true; }}")
}

/// One certificate (or kubeconfig, or CA) as kubeadm reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cert {
    pub name: String,
    /// When it expires, RFC 3339 in UTC; null when it is missing.
    #[serde(rename(deserialize = "expirationDate"), default)]
    pub expires: Option<String>,
    /// Seconds it had left when read (negative: expired).
    #[serde(rename(deserialize = "residualTime"), default)]
    pub residual_seconds: i64,
    /// The CA that signed it; none for a CA.
    #[serde(rename(deserialize = "caName"), default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// kubeadm knows it but the server does not have it (super-admin.conf exists only on the
    /// server that ran `kubeadm init`).
    #[serde(default)]
    pub missing: bool,
}

/// A server's certificates, from `kubeadm certs check-expiration -o json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Certificates {
    pub certificates: Vec<Cert>,
    /// The CAs: kubeadm does not renew them.
    pub authorities: Vec<Cert>,
}

/// kubeadm's `CertificateExpirationInfo` (output.kubeadm.k8s.io/v1alpha3); its lists are
/// null when empty.
#[derive(Deserialize)]
struct Info {
    certificates: Option<Vec<Cert>>,
    #[serde(rename = "certificateAuthorities")]
    authorities: Option<Vec<Cert>>,
}

impl Certificates {
    /// None for an empty output (a host without a control plane).
    pub fn parse(json: &str) -> Result<Option<Certificates>, String> {
        if json.trim().is_empty() {
            return Ok(None);
        }
        let info: Info = serde_json::from_str(json)
            .map_err(|e| format!("unexpected `kubeadm certs check-expiration` output: {e}"))?;
        Ok(Some(Certificates {
            certificates: info.certificates.unwrap_or_default(),
            authorities: info.authorities.unwrap_or_default(),
        }))
    }

    /// Certificates (not CAs) with less than `days` left, the first to expire first.
    pub fn within(&self, days: u32) -> Vec<&Cert> {
        let mut out: Vec<&Cert> = self.certificates.iter().filter(|c| !c.missing && c.left_under(days)).collect();
        out.sort_by_key(|c| c.residual_seconds);
        out
    }
}

impl Cert {
    fn left_under(&self, days: u32) -> bool {
        self.residual_seconds < i64::from(days) * 86_400
    }

    /// The time left, "23 h" or "364 days", or "expired".
    pub fn left(&self) -> String {
        if self.residual_seconds < 0 {
            return "expired".into();
        }
        span(self.residual_seconds)
    }

    /// "expires in 23 h", "expired 2 days ago".
    pub fn when(&self) -> String {
        match self.residual_seconds {
            s if s < 0 => format!("expired {} ago", span(s)),
            s => format!("expires in {}", span(s)),
        }
    }

    /// `2027-12-05 17:03 UTC` of RFC 3339's `2027-12-05T17:03:41Z`.
    pub fn expiry(&self) -> String {
        match &self.expires {
            Some(t) if t.len() >= 16 => format!("{} {} UTC", &t[..10], &t[11..16]),
            Some(t) => t.clone(),
            None => "missing".into(),
        }
    }
}

/// A duration in seconds as days, hours or minutes.
fn span(seconds: i64) -> String {
    match seconds.unsigned_abs() {
        a if a >= 2 * 86_400 => format!("{} days", a / 86_400),
        a if a >= 3_600 => format!("{} h", a / 3_600),
        a => format!("{} min", a / 60),
    }
}

/// A server's certificates; None when it runs no control plane.
pub async fn read(host: &Host) -> Result<Option<Certificates>, String> {
    let cmd = Cmd::read_script(CHECK_EXPIRATION).timeout(Duration::from_secs(60));
    let out = host.run(&cmd).await.map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!("`kubeadm certs check-expiration` failed: {}", out.stderr_str().trim()));
    }
    Certificates::parse(&out.stdout_str())
}

/// `up` on a server that runs a control plane: renews its certificates when the first expires
/// within the cluster file's threshold, restarts its control plane and waits until its API
/// server answers and its etcd member is healthy again. `kubeadm upgrade` renews them itself,
/// so an upgraded server does not come here.
pub async fn renew_if_due(fleet: &Fleet, node: &Node, host: &Host) -> Result<(), String> {
    let days = fleet.cluster.renew_certificates_days();
    let Some(certs) = read(host).await? else { return Ok(()) };
    let due = certs.within(days);
    let Some(first) = due.first() else { return Ok(()) };
    let names: Vec<&str> = due.iter().map(|c| c.name.as_str()).collect();
    let why = format!("{} {} ({}), within renew_certificates_days ({days})", first.name, first.when(), first.expiry());
    let before = match fleet.mode {
        Mode::Apply => control_plane_pids(host).await?,
        _ => BTreeSet::new(),
    };
    let what = format!(
        "renew the certificates with `kubeadm certs renew all` ({why}; due: {}), then restart the control plane \
         (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) so it loads them; admin.conf changes too: the \
         local kubeconfig is written again",
        names.join(", ")
    );
    host.apply(what, &Cmd::change_script(renew_and_restart()).timeout(Duration::from_secs(120)))
        .await
        .map_err(|e| e.to_string())?;
    if fleet.mode != Mode::Apply {
        return Ok(());
    }
    let facts = node.facts().ok_or("no facts gathered")?;
    let ip = crate::k3s::node_ip(&node.spec, &facts)?;
    let ip = if ip.contains(':') { format!("[{ip}]") } else { ip };
    let api = format!("https://{ip}:{}", super::render::bind_port(&fleet.cluster));
    wait_restarted(node, host, &before, &api, fleet.ready_timeout).await?;
    match read(host).await?.as_ref().and_then(|c| c.within(days).first().map(|c| (c.name.clone(), c.when()))) {
        Some((name, when)) => Err(format!("renewed, but {name} still {when}")),
        None => Ok(()),
    }
}

/// The control plane's process IDs.
async fn control_plane_pids(host: &Host) -> Result<BTreeSet<String>, String> {
    let out = host.run_ok(&Cmd::read_script(format!("pgrep -x '{CONTROL_PLANE}' || true"))).await;
    Ok(out.map_err(|e| e.to_string())?.split_whitespace().map(String::from).collect())
}

/// Waits until every control-plane component runs as a new process, the server's own API
/// server is ready (asked at its own address, not through the endpoint, which other servers
/// answer too) and its etcd member is healthy.
async fn wait_restarted(
    node: &Node,
    host: &Host,
    before: &BTreeSet<String>,
    api: &str,
    timeout: Duration,
) -> Result<(), String> {
    crate::progress::step(
        node.name(),
        &format!("waiting until its control plane is back (up to {}s)", timeout.as_secs()),
    );
    let probe = Cmd::read_script(health_probe(api)).timeout(Duration::from_secs(60));
    let started = Instant::now();
    loop {
        let out = host.run(&probe).await.map_err(|e| e.to_string())?.stdout_str();
        let pending = pending(&out, before);
        if pending.is_empty() {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(format!(
                "the control plane did not come back within {}s after the restart: {}\n  hint: look at `crictl ps -a` and kubelet's log on {}",
                timeout.as_secs(),
                pending.join(", "),
                node.name()
            ));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// One script: `pid COMPONENT` per control-plane process, then `api-ready` and `etcd-healthy`
/// when they are.
fn health_probe(api: &str) -> String {
    let etcd = super::etcd::etcdctl("endpoint health");
    format!(
        "pgrep -l -x '{CONTROL_PLANE}' | awk '{{print \"pid\", $1, $2}}'\n\
         {KUBECTL} --server {server} get --raw /readyz --request-timeout=5s >/dev/null 2>&1 && echo api-ready\n\
         ( {etcd} ) >/dev/null 2>&1 && echo etcd-healthy\ntrue",
        server = quote(api),
    )
}

/// What [`health_probe`] says is not back yet: a component without a new process, the API
/// server, etcd.
fn pending(out: &str, before: &BTreeSet<String>) -> Vec<String> {
    let mut waiting: Vec<String> = Vec::new();
    for component in CONTROL_PLANE.split('|') {
        let restarted = out.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 3 && f[0] == "pid" && f[2] == component && !before.contains(f[1])
        });
        if !restarted {
            waiting.push(format!("{component} not restarted"));
        }
    }
    for (word, what) in [("api-ready", "API server not ready"), ("etcd-healthy", "etcd member not healthy")] {
        if !out.lines().any(|l| l.trim() == word) {
            waiting.push(what.into());
        }
    }
    waiting
}

/// Why `status` calls a server degraded over its certificates: any expiring within `days`,
/// or a CA (which kubeadm does not renew).
pub fn reasons(certs: &Certificates, days: u32) -> Vec<String> {
    let mut why = Vec::new();
    let soon = certs.within(days);
    if !soon.is_empty() {
        let each: Vec<String> = soon.iter().map(|c| format!("{} {}", c.name, c.when())).collect();
        why.push(format!(
            "certificates expire within {days} days: {} (`pikube up` renews them; it is due from kubernetes.renew_certificates_days)",
            each.join(", ")
        ));
    }
    for ca in certs.authorities.iter().filter(|c| !c.missing && c.left_under(days)) {
        why.push(format!(
            "CA {} {}: kubeadm does not renew CAs (see kubeadm's \"Manual rotation of CA certificates\")",
            ca.name,
            ca.when()
        ));
    }
    why
}

/// One server in `pikube certs` (the JSON shape is in the README).
#[derive(Debug, Serialize)]
pub struct ServerCerts {
    pub name: String,
    /// None when it runs no control plane or could not be read.
    #[serde(flatten)]
    pub certs: Option<Certificates>,
    /// Why it could not be read.
    pub error: Option<String>,
    /// The certificates within the renewal threshold: `up` renews this server's.
    pub due: Vec<String>,
}

impl ServerCerts {
    pub fn new(name: &str, read: Result<Option<Certificates>, String>, days: u32) -> ServerCerts {
        let (certs, error) = match read {
            Ok(c) => (c, None),
            Err(e) => (None, Some(e)),
        };
        let due = certs.iter().flat_map(|c| c.within(days)).map(|c| c.name.clone()).collect();
        ServerCerts { name: name.to_string(), certs, error, due }
    }
}

/// `pikube certs`'s table: every certificate of every server, then the CAs, and a line per
/// server that is due, unread or runs no control plane.
pub fn table(servers: &[ServerCerts], days: u32) -> String {
    let mut rows: Vec<[String; 5]> = Vec::new();
    for s in servers {
        let Some(c) = &s.certs else { continue };
        for (cert, ca) in c.certificates.iter().map(|x| (x, false)).chain(c.authorities.iter().map(|x| (x, true))) {
            let name = if ca { format!("{} (CA)", cert.name) } else { cert.name.clone() };
            let left = if cert.missing { "-".into() } else { cert.left() };
            let signer = cert.ca.clone().unwrap_or_else(|| "-".into());
            rows.push([s.name.clone(), name, cert.expiry(), left, signer]);
        }
    }
    let mut out = crate::check::render_table(&["HOST", "CERTIFICATE", "EXPIRES", "LEFT", "SIGNED BY"], &rows);
    for s in servers {
        let line = match (&s.error, &s.certs, s.due.first()) {
            (Some(e), _, _) => format!("{}: not read: {e}", s.name),
            (None, None, _) => format!("{}: runs no control plane", s.name),
            (None, Some(c), Some(_)) => {
                let first = c.within(days)[0];
                format!(
                    "{}: {} {}, within renew_certificates_days ({days}): `pikube up` renews its certificates ({}) and restarts its control plane",
                    s.name,
                    first.name,
                    first.when(),
                    s.due.join(", ")
                )
            }
            (None, Some(_), None) => continue,
        };
        out.push_str(&crate::term::clean(&line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A joined server's `kubeadm certs check-expiration -o json`, two certificates short-lived.
    const JOINED: &str = r#"{
  "kind": "CertificateExpirationInfo",
  "apiVersion": "output.kubeadm.k8s.io/v1alpha3",
  "certificates": [
    {"name": "admin.conf", "expirationDate": "2027-12-05T17:03:41Z", "residualTime": 31535000, "caName": "ca", "externallyManaged": false, "missing": false},
    {"name": "apiserver", "expirationDate": "2026-12-06T17:00:00Z", "residualTime": 82800, "caName": "ca", "externallyManaged": false, "missing": false},
    {"name": "etcd-server", "expirationDate": "2027-01-20T10:00:00Z", "residualTime": 3974400, "caName": "etcd-ca", "externallyManaged": false, "missing": false},
    {"name": "super-admin.conf", "expirationDate": null, "residualTime": 0, "externallyManaged": false, "missing": true}
  ],
  "certificateAuthorities": [
    {"name": "ca", "expirationDate": "2036-12-03T17:03:41Z", "residualTime": 315187200, "externallyManaged": false, "missing": false}
  ]
}"#;

    #[test]
    fn kubeadms_expiration_report_gives_what_expires_first() {
        let certs = Certificates::parse(JOINED).unwrap().expect("a control plane");
        assert_eq!(certs.certificates.len(), 4);
        assert_eq!(certs.authorities[0].ca, None);
        let first = certs.within(365)[0];
        assert_eq!(
            (first.name.as_str(), first.when(), first.left(), first.expiry()),
            ("apiserver", "expires in 23 h".into(), "23 h".into(), "2026-12-06 17:00 UTC".into())
        );
        // The missing one is no certificate that expires.
        assert_eq!(certs.within(90).iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["apiserver", "etcd-server"]);
        assert_eq!(certs.within(30).len(), 1);
        assert!(certs.within(0).is_empty());
        assert_eq!(Certificates::parse("").unwrap(), None, "no control plane");
        assert!(Certificates::parse("[check-expiration] Reading configuration").is_err());
        let empty = r#"{"certificates": null, "certificateAuthorities": null}"#;
        assert!(Certificates::parse(empty).unwrap().unwrap().within(365).is_empty());
    }

    #[test]
    fn status_names_what_expires_soon_and_a_ca_kubeadm_cannot_renew() {
        let mut certs = Certificates::parse(JOINED).unwrap().unwrap();
        assert_eq!(
            reasons(&certs, 30),
            ["certificates expire within 30 days: apiserver expires in 23 h (`pikube up` renews them; it is due from kubernetes.renew_certificates_days)"]
        );
        certs.certificates[1].residual_seconds = -3 * 86_400;
        certs.authorities[0].residual_seconds = 20 * 86_400;
        let why = reasons(&certs, 30).join("\n");
        assert!(why.contains("apiserver expired 3 days ago"), "{why}");
        assert!(why.contains("CA ca expires in 20 days: kubeadm does not renew CAs"), "{why}");
        certs.certificates[1].residual_seconds = 364 * 86_400;
        certs.authorities[0].residual_seconds = 3000 * 86_400;
        assert!(reasons(&certs, 30).is_empty());
    }

    #[test]
    fn the_certs_table_lists_every_server_and_says_which_up_renews() {
        let servers = [
            ServerCerts::new("node1", Certificates::parse(JOINED), 90),
            ServerCerts::new("node2", Err("cannot reach node2".into()), 90),
            ServerCerts::new("node3", Ok(None), 90),
        ];
        assert_eq!(servers[0].due, ["apiserver", "etcd-server"]);
        let shown = table(&servers, 90);
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["HOST", "CERTIFICATE", "EXPIRES", "LEFT", "SIGNED", "BY"]
        );
        assert!(
            lines[2].starts_with("node1  apiserver ") && lines[2].contains("2026-12-06 17:00 UTC  23 h "),
            "{shown}"
        );
        assert!(lines[4].starts_with("node1  super-admin.conf") && lines[4].contains("missing"), "{shown}");
        assert!(lines[5].starts_with("node1  ca (CA)") && lines[5].ends_with("3648 days  -"), "{shown}");
        assert_eq!(
            &lines[6..],
            [
                "node1: apiserver expires in 23 h, within renew_certificates_days (90): `pikube up` renews its certificates (apiserver, etcd-server) and restarts its control plane",
                "node2: not read: cannot reach node2",
                "node3: runs no control plane",
            ]
        );
        let json = serde_json::to_value(&servers[0]).unwrap();
        assert_eq!(json["certificates"][1]["residual_seconds"], 82800);
        assert_eq!(json["authorities"][0]["expires"], "2036-12-03T17:03:41Z");
        assert_eq!(json["due"], serde_json::json!(["apiserver", "etcd-server"]));
    }

    #[test]
    fn the_control_plane_restarts_only_after_a_renewal_and_in_the_same_command() {
        assert_eq!(
            renew_and_restart(),
            "/usr/local/bin/kubeadm certs renew all >/dev/null && \
             { pkill -TERM -x 'etcd|kube-apiserver|kube-controller|kube-scheduler' || true; }"
        );
    }

    #[test]
    fn the_restart_is_done_when_every_component_runs_anew_and_answers() {
        let before: BTreeSet<String> = ["100", "101", "102", "103"].map(String::from).into();
        let old = "pid 100 etcd\npid 101 kube-apiserver\npid 102 kube-controller\npid 103 kube-scheduler\napi-ready\netcd-healthy\n";
        assert_eq!(pending(old, &before).len(), 4, "the old processes still answer");
        let half =
            "pid 200 etcd\npid 101 kube-apiserver\npid 202 kube-controller\npid 203 kube-scheduler\netcd-healthy\n";
        assert_eq!(pending(half, &before), ["kube-apiserver not restarted", "API server not ready"]);
        let done = "pid 200 etcd\npid 201 kube-apiserver\npid 202 kube-controller\npid 203 kube-scheduler\napi-ready\netcd-healthy\n";
        assert!(pending(done, &before).is_empty());
        let probe = health_probe("https://10.0.0.1:6443");
        assert!(probe.contains("--server https://10.0.0.1:6443 get --raw /readyz"), "{probe}");
        assert!(probe.contains("etcdctl --endpoints=https://127.0.0.1:2379"), "{probe}");
    }
}
