//! Whether the first server may initialise a cluster. A first server without cluster data
//! initialises only when nothing suggests the cluster already exists elsewhere: every other
//! server answered (none holds it) and this machine keeps no trace of an earlier cluster of
//! this name. Otherwise a reflashed first server, with the others off the network, would make
//! a new CA: a second cluster behind the same endpoint. `up --new-cluster` says the old
//! cluster is really gone (or, for a brand-new cluster, that a server still booting holds
//! nothing).

use std::path::Path;

use crate::config::{Cluster, Distribution, Role};
use crate::fleet::Fleet;

/// Written by a whole `down`: backups taken before it are of a cluster that is gone.
const TORN_DOWN: &str = "torn-down";

/// What a decision to initialise the cluster on `first` rests on.
#[derive(Debug, Default)]
pub struct InitCheck<'a> {
    pub first: &'a str,
    /// The other servers pikube could not ask whether they hold the cluster, with why.
    pub unavailable: Vec<(&'a str, String)>,
    /// Local files showing this cluster was made before.
    pub made_before: Vec<String>,
    /// `--new-cluster`: the user says no earlier cluster needs keeping.
    pub new_cluster: bool,
}

impl<'a> InitCheck<'a> {
    /// The check for `first` in this run.
    pub fn of(fleet: &'a Fleet, first: &'a str) -> InitCheck<'a> {
        let unavailable = fleet
            .nodes
            .iter()
            .filter(|n| n.role() == Role::Server && n.name() != first && !n.ok())
            .map(|n| (n.name(), n.failure().unwrap_or_else(|| "not connected".into())))
            .collect();
        InitCheck { first, unavailable, made_before: made_before(&fleet.cluster), new_cluster: fleet.new_cluster }
    }

    /// Why the first server must not initialise a cluster now; None when it may.
    pub fn refusal(&self) -> Option<String> {
        if self.new_cluster || (self.unavailable.is_empty() && self.made_before.is_empty()) {
            return None;
        }
        let mut why = format!("refusing to initialise a new cluster on {}: it holds no cluster data, and", self.first);
        let names: Vec<&str> = self.unavailable.iter().map(|(n, _)| *n).collect();
        for (name, reason) in &self.unavailable {
            why.push_str(&format!("\n  - {name} did not answer, so it may hold the cluster ({reason})"));
        }
        if !self.made_before.is_empty() {
            why.push_str(&format!(
                "\n  - this machine shows the cluster was made before: {}",
                self.made_before.join(", ")
            ));
        }
        why.push_str(
            "\n  initialising now would make a new CA and a second cluster behind the same endpoint; \
             servers holding the old one would not join it",
        );
        let back = if names.is_empty() {
            "if a server still holds the cluster, make it reachable and run `pikube up` again".to_string()
        } else {
            format!(
                "bring {} back and run `pikube up` again ({} then joins the cluster they hold)",
                names.join(", "),
                self.first
            )
        };
        why.push_str(&format!(
            "\n  hint: {back}; if the old cluster is really gone (or this is a new cluster and a server is still \
             booting), run `pikube up --new-cluster`"
        ));
        Some(why)
    }
}

/// The traces this machine keeps of a cluster that existed: the fetched kubeconfig, k3s's
/// join token, and backups taken since the last whole `down`.
pub fn made_before(cluster: &Cluster) -> Vec<String> {
    let base = cluster.resolve_path(Path::new(""));
    let shown = |p: &Path| p.strip_prefix(&base).unwrap_or(p).display().to_string();
    let mut found = Vec::new();
    let kubeconfig = cluster.kubeconfig_path();
    if kubeconfig.is_file() {
        found.push(shown(&kubeconfig));
    }
    let token = crate::k3s::token_path(cluster);
    let has_token = std::fs::read_to_string(&token).is_ok_and(|t| !t.trim().is_empty());
    if cluster.distribution() == Distribution::K3s && has_token {
        found.push(shown(&token));
    }
    let down = std::fs::read_to_string(cluster.state_dir().join(TORN_DOWN)).unwrap_or_default();
    let since_down = crate::backup::list(cluster)
        .iter()
        .filter(|d| d.file_name().and_then(|n| n.to_str()).and_then(|n| n.get(..16)).is_some_and(|t| t > down.trim()))
        .count();
    if since_down > 0 {
        found.push(format!("{since_down} backup(s) in {}", shown(&crate::backup::root(cluster))));
    }
    found
}

/// After a whole `down`: the backups so far are of a cluster that is gone, so they no longer
/// stop a new one (they stay, for `pikube restore`).
pub fn record_torn_down(cluster: &Cluster) -> std::io::Result<()> {
    let stamp = crate::backup::stamp(crate::backup::now());
    crate::local::write_secret(&cluster.state_dir().join(TORN_DOWN), format!("{stamp}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(dir: &Path, distribution: &str) -> Cluster {
        let yaml = format!(
            "name: lab\nkubernetes:\n  distribution: {distribution}\n  endpoint: {{mode: vip, address: 10.0.0.10}}\n\
             hosts:\n  - {{name: n1, address: 10.0.0.1, role: server}}\n  - {{name: n2, address: 10.0.0.2, role: server}}\n  \
             - {{name: n3, address: 10.0.0.3, role: server}}\n"
        );
        let path = dir.join("cluster.yaml");
        std::fs::write(&path, &yaml).unwrap();
        Cluster::parse(&path, &yaml).unwrap_or_else(|e| panic!("{}", e.plain()))
    }

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("pikube-init-guard-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_new_cluster_with_every_server_answering_initialises() {
        let check = InitCheck { first: "n1", ..Default::default() };
        assert_eq!(check.refusal(), None);
    }

    #[test]
    fn unreachable_servers_stop_the_init_unless_the_user_says_the_cluster_is_new() {
        let unreachable = |new_cluster| InitCheck {
            first: "n1",
            unavailable: vec![("n2", "cannot reach n2 at 10.0.0.2:22".into()), ("n3", "timed out".into())],
            made_before: vec![],
            new_cluster,
        };
        let why = unreachable(false).refusal().expect("refused");
        assert!(why.starts_with("refusing to initialise a new cluster on n1: it holds no cluster data"), "{why}");
        assert!(
            why.contains("n2 did not answer, so it may hold the cluster (cannot reach n2 at 10.0.0.2:22)"),
            "{why}"
        );
        assert!(why.contains("n3 did not answer"), "{why}");
        assert!(why.contains("a new CA and a second cluster behind the same endpoint"), "{why}");
        assert!(why.contains("hint: bring n2, n3 back and run `pikube up` again (n1 then joins"), "{why}");
        assert!(why.contains("run `pikube up --new-cluster`"), "{why}");
        assert_eq!(unreachable(true).refusal(), None);
    }

    #[test]
    fn local_traces_of_the_cluster_stop_the_init_for_both_distributions() {
        for distribution in ["k3s", "kubeadm"] {
            let dir = temp(distribution);
            let c = cluster(&dir, distribution);
            assert!(made_before(&c).is_empty(), "{distribution}: nothing yet");
            crate::local::write_secret(&c.kubeconfig_path(), b"apiVersion: v1\n").unwrap();
            crate::local::write_secret(&crate::k3s::token_path(&c), b"secret\n").unwrap();
            let backup = crate::backup::root(&c).join("20000101T000000Z");
            std::fs::create_dir_all(&backup).unwrap();
            std::fs::write(backup.join("backup.json"), "{}").unwrap();
            let found = made_before(&c);
            let mut want = vec!["build/lab-config.yml".to_string()];
            // kubeadm clusters keep no join token here (an old one only made a VRRP password).
            if distribution == "k3s" {
                want.push(".pikube/lab/token".into());
            }
            want.push("1 backup(s) in backups/lab".into());
            assert_eq!(found, want, "{distribution}");
            let check = InitCheck { first: "n1", made_before: found, ..Default::default() };
            let why = check.refusal().expect("refused");
            assert!(why.contains("this machine shows the cluster was made before: build/lab-config.yml"), "{why}");
            assert!(why.contains("hint: if a server still holds the cluster, make it reachable"), "{why}");
            // A whole `down` removes the kubeconfig and token and marks the backups as of the old cluster.
            std::fs::remove_file(c.kubeconfig_path()).unwrap();
            std::fs::remove_file(crate::k3s::token_path(&c)).unwrap();
            record_torn_down(&c).unwrap();
            assert!(made_before(&c).is_empty(), "{distribution}: {:?}", made_before(&c));
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
