//! Connect + facts: reach every host of the cluster (bounded parallelism) and gather its facts.
//! A host that fails is kept with its error, so the others go on and the report names it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use futures::stream::{self, StreamExt};

use crate::config::{Cluster, HostSpec, Role, SecretSource};
use crate::facts::{self, HostFacts};
use crate::remote::{Host, Journal, Mode, Secret};
use crate::ssh::config::{resolve, SshConfig, Wanted};
use crate::ssh::{Session, Target};

/// One host of the run.
pub struct Node {
    pub spec: HostSpec,
    pub target: Target,
    /// Connected host; None when connecting failed.
    pub host: Option<Host>,
    pub facts: Mutex<Option<HostFacts>>,
    /// First error this host hit; later phases skip it.
    pub failed: Mutex<Option<String>>,
    /// Set by a phase that changed something only a reboot makes live.
    pub needs_reboot: AtomicBool,
    /// Set when the k3s binary changed, so a running k3s must restart to use it.
    pub k3s_binary_changed: AtomicBool,
}

impl Node {
    pub fn name(&self) -> &str {
        &self.spec.name.value
    }
    pub fn fail(&self, why: String) {
        let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            crate::progress::failed(self.name(), &why);
            *f = Some(why);
        }
    }
    /// Forgets the host's error (a dead host that `down` removed on purpose).
    pub fn clear_failure(&self) {
        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
    pub fn failure(&self) -> Option<String> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub fn ok(&self) -> bool {
        self.failure().is_none() && self.host.is_some()
    }
    pub fn facts(&self) -> Option<HostFacts> {
        self.facts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub fn want_reboot(&self) {
        self.needs_reboot.store(true, Ordering::SeqCst);
    }
    pub fn wants_reboot(&self) -> bool {
        self.needs_reboot.load(Ordering::SeqCst)
    }
    pub fn role(&self) -> Role {
        self.spec.role.value
    }
    pub fn set_facts(&self, f: HostFacts) {
        *self.facts.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }
}

pub struct Fleet {
    pub cluster: Cluster,
    pub nodes: Vec<Node>,
    pub journal: Journal,
    pub mode: Mode,
    pub parallel: usize,
    /// How long a rebooted host may take to answer SSH again.
    pub reboot_timeout: Duration,
    /// How long k3s nodes may take to become Ready.
    pub ready_timeout: Duration,
    /// How long draining a node before its upgrade may take; None: upgrades do not drain.
    pub drain_timeout: Option<Duration>,
    /// Nodes restarted onto a new k3s binary, in the order they go (shown by `plan`).
    pub upgrade_order: Mutex<Vec<String>>,
    /// The cluster's join token, once a phase has asked for it (see `k3s::token`).
    pub token: tokio::sync::OnceCell<String>,
    /// The full `K10…` join token, once a server that runs the cluster has shown it (see `k3s::join_token`).
    pub join_token: std::sync::OnceLock<String>,
    /// `--new-cluster`: the first server may initialise although servers did not answer or this
    /// machine shows an earlier cluster (see `phases::init_guard`).
    pub new_cluster: bool,
}

impl Fleet {
    /// Resolves SSH targets, connects to every host and gathers facts.
    pub async fn connect(cluster: Cluster, mode: Mode, parallel: usize) -> miette::Result<Fleet> {
        let ssh_config = SshConfig::load_default().map_err(|e| miette::miette!("{e}"))?;
        let mut planned = Vec::new();
        for spec in cluster.hosts() {
            let target = target_for(&cluster, spec, &ssh_config).map_err(|e| {
                miette::miette!(help = "check the host's ssh settings and ~/.ssh/config", "{}: {e}", spec.name.value)
            })?;
            let sudo = sudo_password(&cluster, spec)?;
            planned.push((spec.clone(), target, sudo));
        }
        let journal = Journal::default();
        let parallel = parallel.max(1);
        let nodes = stream::iter(planned)
            .map(|(spec, target, sudo)| {
                let journal = journal.clone();
                async move {
                    crate::progress::host_phase(&spec.name.value, "connect");
                    let (host, failed) = match Session::connect(&target).await {
                        Ok(session) => {
                            let h = Host::new(spec.name.value.clone(), session, &target.user, sudo, mode, journal);
                            (Some(h), None)
                        }
                        Err(e) => {
                            crate::progress::failed(&spec.name.value, &e.to_string());
                            (None, Some(e.to_string()))
                        }
                    };
                    let node = Node {
                        spec,
                        target,
                        host,
                        facts: Mutex::new(None),
                        failed: Mutex::new(failed),
                        needs_reboot: AtomicBool::new(false),
                        k3s_binary_changed: AtomicBool::new(false),
                    };
                    if let Some(h) = &node.host {
                        crate::progress::host_phase(&h.name, "facts");
                        match facts::gather(h).await {
                            Ok(f) => node.set_facts(f),
                            Err(e) => node.fail(e.to_string()),
                        }
                    }
                    node
                }
            })
            .buffered(parallel)
            .collect::<Vec<_>>()
            .await;
        Ok(Fleet {
            cluster,
            nodes,
            journal,
            mode,
            parallel,
            reboot_timeout: Duration::from_secs(300),
            ready_timeout: Duration::from_secs(300),
            drain_timeout: Some(Duration::from_secs(300)),
            upgrade_order: Mutex::new(Vec::new()),
            token: tokio::sync::OnceCell::new(),
            join_token: std::sync::OnceLock::new(),
            new_cluster: false,
        })
    }

    /// Runs `f` on every healthy node, at most `parallel` at a time; an error marks that node
    /// failed and the others carry on.
    pub async fn each<'a, F, Fut>(&'a self, f: F)
    where
        F: Fn(&'a Node, &'a Host) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        // A plain loop (not stream combinators) keeps the future provably Send for BoxFuture.
        let permits = tokio::sync::Semaphore::new(self.parallel);
        let mut tasks = Vec::new();
        for node in &self.nodes {
            let Some(host) = node.host.as_ref().filter(|_| node.ok()) else { continue };
            let work = f(node, host);
            let permits = &permits;
            tasks.push(async move {
                let _permit = permits.acquire().await;
                if let Err(e) = work.await {
                    node.fail(e);
                }
            });
        }
        futures::future::join_all(tasks).await;
    }

    /// Healthy nodes with `role`, in cluster-file order.
    pub fn healthy(&self, role: Role) -> impl Iterator<Item = (&Node, &Host)> {
        self.nodes.iter().filter(move |n| n.role() == role && n.ok()).filter_map(|n| n.host.as_ref().map(|h| (n, h)))
    }

    pub fn failures(&self) -> Vec<(&str, String)> {
        self.nodes.iter().filter_map(|n| n.failure().map(|f| (n.name(), f))).collect()
    }

    pub async fn close(&self) {
        for n in &self.nodes {
            if let Some(h) = &n.host {
                h.session().close().await;
            }
        }
    }
}

pub fn target_for(cluster: &Cluster, spec: &HostSpec, ssh_config: &SshConfig) -> Result<Target, String> {
    let s = cluster.ssh_for(spec);
    let wanted = Wanted {
        user: s.user,
        port: s.port,
        identity_file: s.key.map(|k| cluster.resolve_path(&k)),
        known_hosts: s.known_hosts.map(|k| cluster.resolve_path(&k)),
        host_key_policy: s.host_key_policy.unwrap_or_default(),
        proxy_jump: s.bastion,
        connect_timeout: Duration::from_secs(s.connect_timeout.unwrap_or(10)),
        use_agent: s.agent.unwrap_or(true),
    };
    resolve(&spec.name.value, spec.address(), &wanted, ssh_config)
}

fn sudo_password(cluster: &Cluster, spec: &HostSpec) -> miette::Result<Option<Secret>> {
    let Some(src) = cluster.ssh_for(spec).sudo_password else { return Ok(None) };
    let value = match &src {
        SecretSource::Env(var) => std::env::var(var).map_err(|_| {
            miette::miette!(
                help = format!("export {var}=… before running pikube, or change ssh.sudo_password"),
                "{}: sudo password variable {var} is not set",
                spec.name.value
            )
        })?,
        SecretSource::File(p) => {
            let path = cluster.resolve_path(p);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                miette::miette!("{}: cannot read sudo password file {}: {e}", spec.name.value, path.display())
            })?;
            text.lines().next().unwrap_or("").to_string()
        }
    };
    if let Some(why) = unusable_sudo_password(&value) {
        miette::bail!(help = "set the password alone, on one line", "{}: the sudo password {why}", spec.name.value);
    }
    Ok(Some(Secret::new(value)))
}

/// sudo reads the password up to the first line break: what follows would reach the command.
fn unusable_sudo_password(value: &str) -> Option<&'static str> {
    value.contains(['\n', '\r']).then_some("holds a line break (sudo reads one line; the rest would reach the command)")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_sudo_password_is_one_line() {
        assert_eq!(super::unusable_sudo_password("raspberry"), None);
        assert!(super::unusable_sudo_password("rasp\nberry").is_some());
        assert!(super::unusable_sudo_password("raspberry\r").is_some());
    }
}
