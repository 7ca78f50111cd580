//! STAND-IN etcd snapshots: `k3s etcd-snapshot save` and `k3s server --cluster-reset
//! [--cluster-reset-restore-path=FILE]`, following docs.k3s.io/cli/etcd-snapshot.
//! A snapshot is a faithful copy of the replicated state (objects keep their UIDs and
//! resourceVersions) plus the bootstrap data (the cluster CA), which is encrypted with the
//! server token as in real k3s: restoring needs the token of the cluster that took it.

use crate::cli::{self, Opts};
use crate::cluster::State;
use crate::net::{self, Ca, Trust};
use crate::util::{fatal, log};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The snapshot file's contents.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    /// Marks the file as a stand-in snapshot (never a real etcd snapshot).
    standin: String,
    state: State,
    /// The CA JSON, XOR-ed with a keystream derived from the token password (hex).
    bootstrap: String,
    salt: String,
    /// Proves the token without revealing it: sha256("check" + salt + password).
    check: String,
}

fn keystream(password: &str, salt: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 0u64;
    while out.len() < len {
        let block = net::sha256_hex(format!("{password}/{salt}/{i}").as_bytes());
        out.extend((0..32).map(|k| u8::from_str_radix(&block[2 * k..2 * k + 2], 16).unwrap_or(0)));
        i += 1;
    }
    out.truncate(len);
    out
}

fn xor(data: &[u8], key: &[u8]) -> Vec<u8> {
    data.iter().zip(key).map(|(a, b)| a ^ b).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

/// The snapshot directory of a server: `--etcd-snapshot-dir` or `<data-dir>/server/db/snapshots`.
pub fn dir(o: &Opts, data_dir: &Path) -> PathBuf {
    o.get("etcd-snapshot-dir").map(PathBuf::from).unwrap_or_else(|| data_dir.join("server/db/snapshots"))
}

/// Server side of `etcd-snapshot save`: writes `<name>-<node>-<unix time>` (0600) and returns its name.
pub fn save(state: &State, ca: &Ca, password: &str, dir: &Path, name: &str, node: &str) -> Result<String, String> {
    let file_name = format!("{name}-{node}-{}", crate::util::now_unix());
    let salt = net::random_hex(8);
    let ca_json = serde_json::to_vec(ca).map_err(|e| e.to_string())?;
    let snap = Snapshot {
        standin: "k3s STAND-IN etcd snapshot (test double, not etcd)".into(),
        state: state.clone(),
        bootstrap: hex(&xor(&ca_json, &keystream(password, &salt, ca_json.len()))),
        check: net::sha256_hex(format!("check{salt}{password}").as_bytes()),
        salt,
    };
    let bytes = serde_json::to_vec(&snap).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    crate::server::write_atomic(&dir.join(&file_name), &bytes, 0o600)
        .map_err(|e| format!("failed to save snapshot {file_name}: {e}"))?;
    Ok(file_name)
}

/// `k3s etcd-snapshot save [--name N]`: asks the running server (its supervisor API on
/// `--etcd-server`, default https://127.0.0.1:6443) to take the snapshot, authenticated with
/// the server token from `--etcd-token` or `<data-dir>/server/token`, as k3s 1.29+ does.
pub async fn save_command(args: &[String]) -> i32 {
    let (verb, rest) = match args.split_first() {
        Some((v, r)) => (v.as_str(), r),
        None => ("", &[][..]),
    };
    if verb != "save" {
        let msg = match verb {
            "" | "-h" | "--help" => "NAME:\n   k3s etcd-snapshot - Manage etcd snapshots (STAND-IN: only `save` is implemented)\n\nCOMMANDS:\n   save  Trigger an immediate etcd snapshot\n",
            other => fatal(&format!("STAND-IN: `k3s etcd-snapshot {other}` is not implemented by the k3s stand-in")),
        };
        print!("{msg}");
        return 0;
    }
    let o = cli::parse_snapshot_args(rest).unwrap_or_else(|e| {
        eprintln!("Incorrect Usage: {e}\n");
        fatal(&e)
    });
    let data_dir = PathBuf::from(o.get("data-dir").unwrap_or(crate::node::DEFAULT_DATA_DIR));
    let token = match o.get("etcd-token") {
        Some(t) => t.to_string(),
        None => {
            let f = data_dir.join("server/token");
            std::fs::read_to_string(&f)
                .unwrap_or_else(|e| fatal(&format!("open {}: {}", f.display(), crate::server::os_err(&e))))
        }
    };
    let tok = cli::parse_token(&token).unwrap_or_else(|e| fatal(&e));
    let url = o.get("etcd-server").unwrap_or("https://127.0.0.1:6443").to_string();
    let ca = crate::server::fetch_ca(&url, &tok).await.unwrap_or_else(|e| fatal(&e));
    let body = serde_json::json!({"name": o.get("name").unwrap_or("on-demand")}).to_string();
    let r = net::request(&url, &Trust::CaAnyName(ca), "POST", "/db/snapshot", Some(&tok.password), body.as_bytes())
        .await
        .unwrap_or_else(|e| fatal(&format!("Post \"{url}/db/snapshot\": {e}")));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    match r.status {
        200 => {
            log("info", &format!("Snapshot {} saved.", v["name"].as_str().unwrap_or("?")));
            0
        }
        401 => fatal("see server log for details: Unauthorized"),
        _ => fatal(&format!("see server log for details: {}", v["message"].as_str().unwrap_or("unknown error"))),
    }
}

/// `k3s server --cluster-reset [--cluster-reset-restore-path=FILE]` (k3s stopped): the
/// member list becomes this server alone; with a restore path the state is the snapshot's
/// (the old one moved to `db/etcd-old-<time>`). Exits, as real k3s does, asking for a
/// restart without the flag.
pub fn cluster_reset(o: &Opts, data_dir: &Path, port: u16, self_url: &str) -> ! {
    let bind = o.get("bind-address").unwrap_or("0.0.0.0");
    // A k3s still running holds the ports: real k3s's etcd cannot bind them either.
    if let Err(e) = std::net::TcpListener::bind((bind, port)) {
        fatal(&format!(
            "starting kubernetes: preparing server: listen tcp {bind}:{port}: bind: {}",
            crate::server::os_err(&e)
        ));
    }
    let server_dir = data_dir.join("server");
    let state_file = server_dir.join(crate::server::STATE_FILE);
    let mut state: State = match o.get("cluster-reset-restore-path") {
        Some(p) => restore(o, data_dir, &server_dir, &state_file, p),
        None => crate::server::load_json(&state_file)
            .unwrap_or_else(|| fatal(&format!("etcd database not found in {}", server_dir.display()))),
    };
    state.members.clear();
    state.add_member(self_url);
    let bytes = serde_json::to_vec(&state).unwrap_or_default();
    crate::server::write_atomic(&state_file, &bytes, 0o600)
        .unwrap_or_else(|e| fatal(&format!("writing {}: {e}", state_file.display())));
    log("info", "Managed etcd cluster membership has been reset, restart without --cluster-reset flag now. Backup and delete ${datadir}/server/db on each peer etcd server and rejoin the nodes");
    std::process::exit(0)
}

/// The snapshot's bootstrap data (the CA), decrypted with the token password.
fn bootstrap(snap: &Snapshot, password: &str) -> Result<Ca, String> {
    if net::sha256_hex(format!("check{}{password}", snap.salt).as_bytes()) != snap.check {
        return Err("bootstrap data already found and encrypted with different token".into());
    }
    let enc = unhex(&snap.bootstrap).ok_or("corrupt bootstrap data in snapshot")?;
    serde_json::from_slice(&xor(&enc, &keystream(password, &snap.salt, enc.len())))
        .map_err(|e| format!("corrupt bootstrap data in snapshot: {e}"))
}

/// Reads and decrypts the snapshot with the server token, moves the old datastore aside and
/// writes the restored bootstrap data (CA, token files).
fn restore(o: &Opts, data_dir: &Path, server_dir: &Path, state_file: &Path, path: &str) -> State {
    let file = if path.contains('/') { PathBuf::from(path) } else { dir(o, data_dir).join(path) };
    let bytes = std::fs::read(&file).unwrap_or_else(|_| {
        fatal(&format!(
            "starting kubernetes: preparing server: start managed database: etcd: snapshot path does not exist: {path}"
        ))
    });
    let snap: Snapshot = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        fatal(&format!("starting kubernetes: preparing server: start managed database: etcd: failed to restore snapshot {path}: {e}"))
    });
    let token = crate::server::token_value(o, "token", "token-file")
        .or_else(|| std::fs::read_to_string(server_dir.join("token")).ok())
        .unwrap_or_else(|| fatal("starting kubernetes: preparing server: token is required to restore a snapshot"));
    let password = cli::parse_token(&token).unwrap_or_else(|e| fatal(&e)).password;
    let ca =
        bootstrap(&snap, &password).unwrap_or_else(|e| fatal(&format!("starting kubernetes: preparing server: {e}")));
    if state_file.exists() {
        let old = server_dir.join(format!("db/etcd-old-{}", crate::util::now_unix()));
        std::fs::create_dir_all(&old).ok();
        std::fs::rename(state_file, old.join("standin-state.json"))
            .unwrap_or_else(|e| fatal(&format!("moving the old datastore aside: {e}")));
    }
    let old_ca: Option<Ca> = crate::server::load_json(&server_dir.join("tls/standin-ca.json"));
    if old_ca.is_none_or(|c| c.hash() != ca.hash()) {
        // Client certificates of another CA would no longer verify; the next start makes new ones.
        for f in ["tls/client-admin.crt", "tls/client-admin.key"] {
            std::fs::remove_file(server_dir.join(f)).ok();
        }
    }
    crate::server::write_bootstrap(server_dir, &ca, &password);
    log("info", &format!("Restored etcd snapshot {} (STAND-IN: replicated state, not etcd)", file.display()));
    snap.state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_keeps_objects_and_opens_only_with_its_token() {
        let mut st = State::default();
        st.apply(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})).unwrap();
        let ca = Ca::generate();
        let dir = std::env::temp_dir().join(format!("standin-snap-{}", std::process::id()));
        let name = save(&st, &ca, "s3cret", &dir, "on-demand", "n1").unwrap();
        assert!(name.starts_with("on-demand-n1-"), "{name}");
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("s3cret"), "the token is not in the snapshot");
        assert!(!String::from_utf8_lossy(&bytes).contains("BEGIN"), "the CA is encrypted");
        let snap: Snapshot = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(snap.state.objects, st.objects, "uid and resourceVersion stamps are kept");
        assert_eq!(bootstrap(&snap, "s3cret").unwrap().hash(), ca.hash());
        let e = bootstrap(&snap, "other").err().unwrap();
        assert_eq!(e, "bootstrap data already found and encrypted with different token");
        std::fs::remove_dir_all(&dir).ok();
    }
}
