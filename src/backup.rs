//! `pikube backup` and `pikube restore`, and the snapshot `up` takes before a version change.
//!
//! A backup is a directory `backups/<cluster>/<UTC time>[-<reason>]/` next to the cluster file
//! (0700): the datastore snapshot and the server token (both 0600: the snapshot holds the
//! cluster's Secrets, and k3s cannot decrypt its bootstrap data without the token),
//! `SHA256SUMS` over both, and `backup.json` saying what it is. The distribution-specific
//! commands live in `k3s.rs`; the `match` on [`Distribution`] here is where kubeadm's
//! etcdctl-based ones slot in.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::{Cluster, Distribution, Role};
use crate::distro::kubeadm;
use crate::fleet::{Fleet, Node};
use crate::k3s;
use crate::remote::{quote, Cmd, Host, Mode};

/// Why a backup or restore could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("no server runs {0}: {1}\n  hint: start the servers (`pikube up`) and retry")]
    NoServer(&'static str, String),
    #[error("{0} runs k3s on sqlite (a single server without embedded etcd), and etcd snapshots need etcd\n  hint: copy /var/lib/rancher/k3s/server (k3s stopped) and the token by hand, or run several servers")]
    Sqlite(String),
    #[error("{0}")]
    Remote(String),
    #[error("{path}: {source}")]
    Local { path: PathBuf, source: std::io::Error },
    #[error("{dir}: not a pikube backup ({why})\n  hint: give the directory `pikube backup` printed, e.g. backups/<cluster>/<time>")]
    NotABackup { dir: PathBuf, why: String },
    #[error("{file}: checksum mismatch (SHA256SUMS says {want}, the file has {got}); the backup is corrupt and was not used\n  hint: use another backup")]
    Checksum { file: PathBuf, want: String, got: String },
    #[error("the backup is of cluster {backup:?}, but {file} is cluster {cluster:?}")]
    OtherCluster { backup: String, cluster: String, file: PathBuf },
    #[error("the backup is of a {backup:?} cluster, but {file} says distribution {cluster:?}")]
    OtherDistribution { backup: Distribution, cluster: Distribution, file: PathBuf },
    #[error("{server}'s cluster CA is not the backup's: the cluster was made anew since the backup, and its etcd data would not match the new CA and keys\n  hint: to bring the old cluster back, `pikube down` it, copy the backup's pki/ files into {pki}/ on {server} (0600), `pikube up` (kubeadm init keeps an existing CA), then restore")]
    OtherCa { server: String, pki: &'static str },
    #[error("server {0} does not answer; a restore stops and resets every server, so all must be reachable\n  hint: bring it back, or remove it from the cluster file first")]
    Unreachable(String),
}

fn local(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Local { path: path.to_path_buf(), source }
}

/// What `backup.json` records.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub cluster: String,
    pub distribution: Distribution,
    /// RFC 3339, UTC.
    pub created: String,
    /// `manual` (`pikube backup`) or `pre-upgrade`.
    pub reason: String,
    /// The server the snapshot was taken on, and the version it ran.
    pub server: String,
    pub version: Option<String>,
    /// The snapshot's file name (as the server named it).
    pub snapshot: String,
    pub size: u64,
}

/// A backup written to this machine.
pub struct Taken {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// `backups/<cluster>/` next to the cluster file.
pub fn root(cluster: &Cluster) -> PathBuf {
    cluster.resolve_path(Path::new("backups")).join(cluster.name())
}

/// Takes a snapshot on the first server that runs the datastore and copies it here, with what
/// a restore needs (k3s: the server token; kubeadm: the shared PKI); the copy on the server is
/// removed (k3s keeps on-demand snapshots forever, filling the SD card), k3s's scheduled
/// snapshots stay as they are.
pub async fn take(fleet: &Fleet, reason: &str) -> Result<Taken, BackupError> {
    let name = if reason == "manual" { "pikube".to_string() } else { format!("pikube-{reason}") };
    let (node, host, remote, secrets) = match fleet.cluster.spec.kubernetes.distribution {
        Distribution::K3s => k3s_save(fleet, &name).await?,
        Distribution::Kubeadm => match running_servers(fleet) {
            running if running.is_empty() => return Err(no_server(fleet)),
            running => kubeadm::backup::save(&running, &name).await?,
        },
    };
    let bytes = read_bytes(host, &remote).await?;
    let remote_sum = host
        .run_ok(&Cmd::read_script(format!("sha256sum {} | cut -d' ' -f1", quote(&remote))))
        .await
        .map_err(|e| BackupError::Remote(e.to_string()))?;
    let sum = hex::encode(Sha256::digest(&bytes));
    if remote_sum.trim() != sum {
        return Err(BackupError::Remote(format!("{}: the copy of {remote} differs from the original", node.name())));
    }
    let file = remote.rsplit('/').next().unwrap_or(&remote).to_string();
    let d = fleet.cluster.spec.kubernetes.distribution;
    let version = node.facts().and_then(|f| crate::distro::installed_version(d, &f));
    let taken_at = now();
    let manifest = Manifest {
        cluster: fleet.cluster.name().to_string(),
        distribution: d,
        created: rfc3339(taken_at),
        reason: reason.to_string(),
        server: node.name().to_string(),
        version,
        snapshot: file.clone(),
        size: bytes.len() as u64,
    };
    let base = match reason {
        "manual" => stamp(taken_at),
        r => format!("{}-{r}", stamp(taken_at)),
    };
    // Two backups in one second get `-1`, `-2`…, which still sort after the first.
    let dir = (0..)
        .map(|i| root(&fleet.cluster).join(if i == 0 { base.clone() } else { format!("{base}-{i}") }))
        .find(|d| !d.exists())
        .unwrap_or_default();
    // Removed from the server whatever happens here: it holds every Secret of the cluster.
    let written = write(&dir, &manifest, &bytes, &secrets);
    let shown = dir.strip_prefix(fleet.cluster.resolve_path(Path::new(""))).unwrap_or(&dir).display().to_string();
    let what = match &written {
        Ok(()) => format!("etcd snapshot {file} copied to {shown}; removed from the server"),
        Err(_) => format!("remove etcd snapshot {file} (the local copy failed)"),
    };
    host.apply(what, &Cmd::change("rm", &["-f", &remote])).await.map_err(|e| BackupError::Remote(e.to_string()))?;
    written?;
    Ok(Taken { dir, manifest })
}

/// k3s's `etcd-snapshot save` on the first server with embedded etcd, and its token.
async fn k3s_save<'a>(fleet: &'a Fleet, name: &str) -> Result<(&'a Node, &'a Host, String, Secrets), BackupError> {
    let (node, host) = snapshot_server(fleet).await?;
    let remote = k3s::etcd_snapshot_save(host, &fleet.cluster, name)
        .await
        .map_err(|e| BackupError::Remote(format!("{}: {e}", node.name())))?;
    let token = k3s::server_token(host).await.map_err(BackupError::Remote)?;
    if token.is_empty() {
        return Err(BackupError::Remote(format!(
            "{}: no {} to back up with the snapshot",
            node.name(),
            k3s::SERVER_TOKEN
        )));
    }
    Ok((node, host, remote, vec![("token".to_string(), format!("{}\n", token.trim()).into_bytes())]))
}

/// What a backup holds besides the snapshot: (path in the backup, content), all secret.
type Secrets = Vec<(String, Vec<u8>)>;

/// The file's bytes as they are (an etcd snapshot is binary).
async fn read_bytes(host: &Host, path: &str) -> Result<Vec<u8>, BackupError> {
    let out = host
        .run(&Cmd::read_script(format!("cat {}", quote(path))).timeout(std::time::Duration::from_secs(600)))
        .await
        .map_err(|e| BackupError::Remote(e.to_string()))?;
    if !out.success() {
        return Err(BackupError::Remote(format!("{}: cannot read {path}: {}", host.name, out.stderr_str().trim())));
    }
    Ok(out.stdout)
}

/// The healthy servers whose distribution's unit runs (k3s, or kubelet for kubeadm).
fn running_servers(fleet: &Fleet) -> Vec<(&Node, &Host)> {
    let unit = crate::distro::unit_name(fleet.cluster.distribution(), Role::Server);
    fleet
        .healthy(Role::Server)
        .filter(|(n, _)| n.facts().is_some_and(|f| f.services.get(unit).is_some_and(|s| s.active)))
        .collect()
}

/// Why no server can take a snapshot, server by server.
fn no_server(fleet: &Fleet) -> BackupError {
    let unit = crate::distro::unit_name(fleet.cluster.distribution(), Role::Server);
    let why: Vec<String> = fleet
        .nodes
        .iter()
        .filter(|n| n.role() == Role::Server)
        .map(|n| format!("{}: {}", n.name(), n.failure().unwrap_or_else(|| format!("{unit} not active"))))
        .collect();
    BackupError::NoServer(unit, why.join("; "))
}

/// The first healthy server that runs, with (for k3s) the datastore snapshots need.
async fn snapshot_server(fleet: &Fleet) -> Result<(&Node, &Host), BackupError> {
    let running = running_servers(fleet);
    if running.is_empty() {
        return Err(no_server(fleet));
    }
    if fleet.cluster.distribution() == Distribution::Kubeadm {
        return Ok(running[0]);
    }
    for (node, host) in &running {
        if k3s::runs_etcd(host).await.map_err(BackupError::Remote)? {
            return Ok((node, host));
        }
    }
    Err(BackupError::Sqlite(running[0].0.name().to_string()))
}

/// Writes the backup directory: files first, `backup.json` last (a directory without it is
/// an unfinished backup and is neither restored nor counted). Every file but SHA256SUMS and
/// backup.json is secret (0600, in 0700 directories).
fn write(dir: &Path, manifest: &Manifest, snapshot: &[u8], secrets: &[(String, Vec<u8>)]) -> Result<(), BackupError> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(local(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(local(dir))?;
    let snap = dir.join(&manifest.snapshot);
    crate::local::write_secret(&snap, snapshot).map_err(local(&snap))?;
    let mut sums = format!("{}  {}\n", hex::encode(Sha256::digest(snapshot)), manifest.snapshot);
    for (name, content) in secrets {
        let path = dir.join(name);
        crate::local::write_secret(&path, content).map_err(local(&path))?;
        sums.push_str(&format!("{}  {name}\n", hex::encode(Sha256::digest(content))));
    }
    write_public(&dir.join("SHA256SUMS"), sums.as_bytes())?;
    let json = serde_json::to_vec_pretty(manifest).unwrap_or_default();
    write_public(&dir.join("backup.json"), &json)
}

fn write_public(path: &Path, content: &[u8]) -> Result<(), BackupError> {
    let mut f = std::fs::File::create(path).map_err(local(path))?;
    f.write_all(content).and_then(|()| f.sync_all()).map_err(local(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).map_err(local(path))
}

/// The finished backups of the cluster, oldest first (names start with the UTC time).
pub fn list(cluster: &Cluster) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root(cluster))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("backup.json").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// Deletes the oldest backups beyond the newest `keep`; returns what it deleted.
pub fn prune(cluster: &Cluster, keep: usize) -> Result<Vec<PathBuf>, BackupError> {
    let all = list(cluster);
    let old = &all[..all.len().saturating_sub(keep)];
    for dir in old {
        std::fs::remove_dir_all(dir).map_err(local(dir))?;
    }
    Ok(old.to_vec())
}

/// A backup read back and verified against its SHA256SUMS.
pub struct Verified {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub snapshot: Vec<u8>,
    /// k3s's server token (empty for kubeadm).
    pub token: String,
    /// The other files a restore needs, by their path in the backup (`token`, `pki/ca.crt`…).
    pub files: BTreeMap<String, Vec<u8>>,
}

/// The files besides the snapshot a backup of distribution `d` must hold.
fn required_files(d: Distribution) -> Vec<String> {
    match d {
        Distribution::K3s => vec!["token".to_string()],
        Distribution::Kubeadm => kubeadm::backup::required_files(),
    }
}

/// Reads a backup directory and checks every file against SHA256SUMS, before anything else.
pub fn verify(dir: &Path) -> Result<Verified, BackupError> {
    let bad = |why: String| BackupError::NotABackup { dir: dir.to_path_buf(), why };
    let json = std::fs::read(dir.join("backup.json")).map_err(|e| bad(format!("backup.json: {e}")))?;
    let manifest: Manifest = serde_json::from_slice(&json).map_err(|e| bad(format!("backup.json: {e}")))?;
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).map_err(|e| bad(format!("SHA256SUMS: {e}")))?;
    let mut files = BTreeMap::new();
    for want in std::iter::once(manifest.snapshot.clone()).chain(required_files(manifest.distribution)) {
        let line = sums.lines().find(|l| l.split_whitespace().nth(1) == Some(want.as_str()));
        let Some(sum) = line.and_then(|l| l.split_whitespace().next()) else {
            return Err(bad(format!("SHA256SUMS lists no {want}")));
        };
        let file = dir.join(&want);
        let content = std::fs::read(&file).map_err(local(&file))?;
        let got = hex::encode(Sha256::digest(&content));
        if got != sum {
            return Err(BackupError::Checksum { file, want: sum.to_string(), got });
        }
        files.insert(want, content);
    }
    let snapshot = files.remove(&manifest.snapshot).unwrap_or_default();
    let token = files.get("token").map(|t| String::from_utf8_lossy(t).trim().to_string()).unwrap_or_default();
    Ok(Verified { dir: dir.to_path_buf(), manifest, snapshot, token, files })
}

/// What a restore does, in the order it does it (printed before and while doing it).
pub fn restore_plan(cluster: &Cluster, backup: &Verified) -> Vec<String> {
    let servers: Vec<&str> =
        cluster.hosts().filter(|h| h.role.value == Role::Server).map(|h| h.name.value.as_str()).collect();
    match backup.manifest.distribution {
        Distribution::K3s => k3s_restore_plan(&servers, backup),
        Distribution::Kubeadm => {
            let agents: Vec<&str> =
                cluster.hosts().filter(|h| h.role.value == Role::Agent).map(|h| h.name.value.as_str()).collect();
            kubeadm::backup::restore_plan(&servers, &agents, backup)
        }
    }
}

fn k3s_restore_plan(servers: &[&str], backup: &Verified) -> Vec<String> {
    let (first, others) = servers.split_first().map_or(("?", &[][..]), |(f, o)| (*f, o));
    let mut steps = vec![
        format!("copy snapshot {} to {first}", backup.manifest.snapshot),
        format!("stop k3s on {}", servers.join(", ")),
        format!("{first}: k3s server --cluster-reset --cluster-reset-restore-path=… (with the backup's token)"),
    ];
    if others.is_empty() {
        steps.push(format!("start k3s on {first}"));
    } else {
        steps.push(format!("remove the datastore (/var/lib/rancher/k3s/server/db) of {}", others.join(", ")));
        steps.push(format!("start k3s on {first}, then on {} so they rejoin", others.join(", ")));
    }
    steps.push("wait until every node is Ready".to_string());
    steps
}

/// The restore itself (the distribution's documented procedure) once every server answers;
/// `say` reports each step as it starts (step 0: a note).
pub async fn restore(fleet: &Fleet, backup: &Verified, say: &dyn Fn(usize, &str)) -> Result<(), BackupError> {
    if backup.manifest.cluster != fleet.cluster.name() {
        return Err(BackupError::OtherCluster {
            backup: backup.manifest.cluster.clone(),
            cluster: fleet.cluster.name().to_string(),
            file: fleet.cluster.file.clone(),
        });
    }
    if backup.manifest.distribution != fleet.cluster.distribution() {
        return Err(BackupError::OtherDistribution {
            backup: backup.manifest.distribution,
            cluster: fleet.cluster.distribution(),
            file: fleet.cluster.file.clone(),
        });
    }
    let mut servers = Vec::new();
    for node in fleet.nodes.iter().filter(|n| n.role() == Role::Server) {
        let host = node.host.as_ref().filter(|_| node.ok()).ok_or(BackupError::Unreachable(node.name().into()))?;
        servers.push((node, host));
    }
    if servers.is_empty() {
        return Err(BackupError::NoServer(
            crate::distro::unit_name(fleet.cluster.distribution(), Role::Server),
            "the cluster file lists none".into(),
        ));
    }
    let steps = restore_plan(&fleet.cluster, backup);
    match backup.manifest.distribution {
        Distribution::K3s => restore_k3s(fleet, backup, &servers, &steps, say).await,
        Distribution::Kubeadm => kubeadm::backup::restore(fleet, backup, &servers, &steps, say).await,
    }
}

/// k3s's procedure: `--cluster-reset` from the snapshot on the first server, the others'
/// datastores removed so they rejoin it.
async fn restore_k3s(
    fleet: &Fleet,
    backup: &Verified,
    servers: &[(&Node, &Host)],
    steps: &[String],
    say: &dyn Fn(usize, &str),
) -> Result<(), BackupError> {
    let (first, first_host) = servers[0];
    let r = |e: String| BackupError::Remote(e);
    let e = |e: crate::remote::RemoteError| BackupError::Remote(e.to_string());

    let mut at = 0;
    let mut next = || {
        at += 1;
        say(at, &steps[at - 1]);
    };
    next();
    let snapshot = format!("{}/{}", k3s::SNAPSHOTS, backup.manifest.snapshot);
    first_host.ensure_file(&snapshot, &backup.snapshot, Some(0o600)).await.map_err(e)?;
    let token_file = format!("{}/pikube-restore-token", k3s::SERVER_DB.trim_end_matches("/db"));
    first_host.ensure_file(&token_file, format!("{}\n", backup.token).as_bytes(), Some(0o600)).await.map_err(e)?;
    next();
    for (node, host) in servers {
        host.apply(format!("stop k3s on {}", node.name()), &Cmd::change("systemctl", &["stop", "k3s"]))
            .await
            .map_err(e)?;
    }
    next();
    let reset = k3s::cluster_reset_restore(first_host, &snapshot, &token_file).await;
    first_host.apply("remove the restore token file", &Cmd::change("rm", &["-f", &token_file])).await.map_err(e)?;
    reset.map_err(|m| r(format!("{}: {m}", first.name())))?;
    if servers.len() > 1 {
        next();
        for (node, host) in &servers[1..] {
            let wipe = Cmd::change_script(format!("rm -rf {}", k3s::SERVER_DB));
            host.apply(format!("remove {} on {} (k3s stopped)", k3s::SERVER_DB, node.name()), &wipe)
                .await
                .map_err(e)?;
        }
    }
    let token_changed = adopt_token(fleet, &backup.token).await?;
    next();
    for (node, host) in servers {
        k3s::start(host, Role::Server, false, "restore").await.map_err(e)?;
        k3s::wait_ready(first_host, host, Role::Server, node.name(), fleet.ready_timeout).await.map_err(r)?;
    }
    next();
    for node in fleet.nodes.iter().filter(|n| n.role() == Role::Agent && n.ok()) {
        let Some(host) = &node.host else { continue };
        k3s::wait_ready(first_host, host, Role::Agent, node.name(), fleet.ready_timeout).await.map_err(r)?;
    }
    // The restored cluster may have another CA than the kubeconfig here (a cluster made anew).
    let (path, changed) = crate::phases::write_kubeconfig(&fleet.cluster, first_host, None).await.map_err(r)?;
    if changed {
        say(0, &format!("rewrote {} (the restored cluster's CA)", path.display()));
    }
    if token_changed {
        say(0, "the cluster token is the backup's again (pikube's copy and every node's config.yaml)");
    }
    Ok(())
}

/// The restored cluster's token is the backup's. When the cluster was made anew since (a new
/// token), pikube's own copy and every node's config.yaml take the backup's again, or the
/// servers would refuse to decrypt their data and the agents could not join.
/// Returns whether the token changed.
async fn adopt_token(fleet: &Fleet, full: &str) -> Result<bool, BackupError> {
    let secret = full.rsplit_once("::server:").map_or(full, |(_, s)| s);
    let path = k3s::token_path(&fleet.cluster);
    if std::fs::read_to_string(&path).is_ok_and(|t| t.trim() == secret) {
        return Ok(false);
    }
    crate::local::write_secret(&path, secret.as_bytes()).map_err(local(&path))?;
    // A joining node's config carries the full token (it pins the CA), the first server the secret.
    let script = format!(
        "set -e; read -r secret; read -r full; f={c}; [ -f $f ] || exit 0; \
         if grep -q '^server:' $f; then t=$full; else t=$secret; fi; export t; tmp=$(mktemp {c}.XXXXXX); \
         awk '/^token: /{{print \"token: \\\"\" ENVIRON[\"t\"] \"\\\"\"; next}} {{print}}' $f > $tmp; chmod 600 $tmp; mv $tmp $f",
        c = k3s::CONFIG
    );
    for node in fleet.nodes.iter().filter(|n| n.role() != Role::Loadbalancer && n.ok()) {
        let Some(host) = &node.host else { continue };
        let cmd = Cmd::change_script(script.clone()).stdin(format!("{secret}\n{full}\n").into_bytes());
        host.apply(format!("set the backup's token in {}", k3s::CONFIG), &cmd)
            .await
            .map_err(|e| BackupError::Remote(e.to_string()))?;
        if node.role() == Role::Agent {
            k3s::start(host, Role::Agent, true, "the cluster token changed")
                .await
                .map_err(|e| BackupError::Remote(e.to_string()))?;
        }
    }
    Ok(true)
}

/// Before `up` changes the version of a running cluster: a snapshot into the backups, or in
/// `plan` the note that one will be taken. A cluster on sqlite, or with no server running, is
/// upgraded without one (said so); a snapshot that fails stops the upgrade on every node.
pub async fn before_upgrade(fleet: &Fleet) {
    let Some(version) = fleet.cluster.version() else { return };
    let d = fleet.cluster.distribution();
    let changes = fleet
        .nodes
        .iter()
        .filter(|n| n.ok() && n.role() != Role::Loadbalancer)
        .any(|n| n.facts().and_then(|f| crate::distro::installed_version(d, &f)).is_some_and(|v| v != version));
    if !changes {
        return;
    }
    if fleet.mode == Mode::DryRun {
        if let Ok((_, host)) = snapshot_server(fleet).await {
            host.record(format!(
                "etcd snapshot before the upgrade to {version}, into {}",
                root(&fleet.cluster).display()
            ));
        }
        return;
    }
    match take(fleet, "pre-upgrade").await {
        Ok(t) => crate::progress::note(&format!("pre-upgrade snapshot: {}", t.dir.display())),
        Err(BackupError::Sqlite(s)) => crate::progress::note(&format!(
            "no pre-upgrade snapshot: {s} runs k3s on sqlite (etcd snapshots need etcd)"
        )),
        // Nothing runs to take it from; the upgrade may be what brings k3s back.
        Err(BackupError::NoServer(unit, _)) => {
            crate::progress::note(&format!("no pre-upgrade snapshot: no server runs {unit}"))
        }
        Err(e) => {
            for n in fleet.nodes.iter().filter(|n| n.role() != Role::Loadbalancer) {
                n.fail(format!("not upgraded: the pre-upgrade snapshot failed: {e}"));
            }
        }
    }
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// (year, month, day, hour, minute, second) in UTC.
fn civil(secs: u64) -> (i64, i64, i64, u64, u64, u64) {
    let z = (secs / 86400) as i64 + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let rem = secs % 86400;
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

fn rfc3339(secs: u64) -> String {
    let (y, m, d, h, min, s) = civil(secs);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}Z")
}

/// A directory name that sorts by time: `20261201T171940Z`.
pub(crate) fn stamp(secs: u64) -> String {
    let (y, m, d, h, min, s) = civil(secs);
    format!("{y:04}{m:02}{d:02}T{h:02}{min:02}{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_and_sort() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(stamp(1_709_251_199), "20240229T235959Z");
        assert!(stamp(1_700_000_000) < stamp(1_700_000_001));
    }

    #[test]
    fn a_written_backup_verifies_and_a_changed_byte_is_refused() {
        let dir = std::env::temp_dir().join(format!("pikube-backup-{}", std::process::id())).join("b");
        let m = Manifest {
            cluster: "c".into(),
            distribution: Distribution::K3s,
            created: rfc3339(0),
            reason: "manual".into(),
            server: "n1".into(),
            version: None,
            snapshot: "pikube-n1-1".into(),
            size: 3,
        };
        write(&dir, &m, b"abc", &[("token".into(), b"K10ab::server:s3cret\n".to_vec())]).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&dir), mode(&dir.join("pikube-n1-1")), mode(&dir.join("token"))), (0o700, 0o600, 0o600));
        let v = verify(&dir).unwrap();
        assert_eq!((v.snapshot.as_slice(), v.token.as_str()), (&b"abc"[..], "K10ab::server:s3cret"));
        std::fs::write(dir.join("pikube-n1-1"), b"abd").unwrap();
        let e = verify(&dir).err().unwrap();
        assert!(matches!(e, BackupError::Checksum { .. }), "{e}");
        std::fs::remove_file(dir.join("backup.json")).unwrap();
        assert!(verify(&dir).err().unwrap().to_string().contains("not a pikube backup"));
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_kubeadm_backup_keeps_its_pki_secret_and_needs_all_of_it() {
        let dir = std::env::temp_dir().join(format!("pikube-backup-kadm-{}", std::process::id())).join("b");
        let m = Manifest {
            cluster: "c".into(),
            distribution: Distribution::Kubeadm,
            created: rfc3339(0),
            reason: "manual".into(),
            server: "n1".into(),
            version: Some("v1.34.4".into()),
            snapshot: "pikube-n1-1".into(),
            size: 3,
        };
        let pki: Secrets = kubeadm::backup::required_files().into_iter().map(|f| (f.clone(), f.into_bytes())).collect();
        write(&dir, &m, b"abc", &pki).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            (mode(&dir.join("pki")), mode(&dir.join("pki/etcd")), mode(&dir.join("pki/etcd/ca.key"))),
            (0o700, 0o700, 0o600)
        );
        let v = verify(&dir).unwrap();
        assert_eq!((v.files.len(), v.files["pki/sa.key"].as_slice(), v.token.as_str()), (8, &b"pki/sa.key"[..], ""));
        let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
        std::fs::write(
            dir.join("SHA256SUMS"),
            sums.lines().filter(|l| !l.ends_with(" pki/ca.key")).collect::<Vec<_>>().join("\n"),
        )
        .unwrap();
        assert!(verify(&dir).err().unwrap().to_string().contains("SHA256SUMS lists no pki/ca.key"));
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }
}
