//! Cluster state held by servers: nodes (with heartbeat-derived readiness) and applied
//! manifest documents.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// Set at build time like real k3s (which takes it from `-ldflags -X …version.Version`):
/// `STANDIN_K3S_VERSION=v1.31.5+k3s1 cargo build` makes a second release for upgrade tests.
pub const VERSION: &str = match option_env!("STANDIN_K3S_VERSION") {
    Some(v) => v,
    None => "v1.31.4+k3s1",
};
/// A node is NotReady after this long without a heartbeat: kube-controller-manager's
/// `--node-monitor-grace-period` (40s in the Kubernetes k3s v1.31 embeds).
pub const GRACE: Duration = Duration::from_secs(40);
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// The label k3s gives servers that run an etcd member (pkg/etcd: EtcdRoleLabel).
pub const ETCD_ROLE: &str = "node-role.kubernetes.io/etcd";

/// Why etcd refuses to remove a member, as etcd says it (server/etcdserver): without quorum no
/// write is possible at all, and with `--strict-reconfig-check` (on in k3s) a removal must
/// leave a quorum of started members. `members` and `started` count the member to remove.
pub fn member_removal_refused(members: usize, started: usize, target_started: bool) -> Option<&'static str> {
    if started < members / 2 + 1 {
        return Some("etcdserver: request timed out");
    }
    let left = members - 1;
    let started_left = started - usize::from(target_started);
    (left == 0 || started_left < left / 2 + 1)
        .then_some("etcdserver: re-configuration failed due to not enough started members")
}

/// What a node sends on registration / heartbeat.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct NodeReg {
    pub name: String,
    pub internal_ip: String,
    #[serde(default)]
    pub external_ip: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<String>,
    pub os_image: String,
    pub kernel: String,
    pub arch: String,
    /// The kubelet version of this node's own binary (nodes differ during a rolling upgrade).
    #[serde(default)]
    pub version: String,
    /// The node password (real k3s: `/etc/rancher/node/password`, sent on registration); only
    /// its hash is kept, never the password itself.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub password: String,
}

/// Why a registration or heartbeat is refused.
#[derive(Debug, PartialEq)]
pub enum Refused {
    /// A status update for a node that does not exist (deleted).
    NotFound,
    /// The node name is known with another password (real k3s: pkg/nodepassword).
    PasswordRejected,
}

/// What real k3s's agent logs when the server refuses its node password.
pub const PASSWORD_REJECTED: &str = "Node password rejected, duplicate hostname or contents of '/etc/rancher/node/password' may not match server node-passwd entry, try enabling a unique node name with the --with-node-id flag";

/// The `<node>.node-password.k3s` secret of kube-system: the hash of a node's password.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PasswordRec {
    pub hash: String,
    /// creation time, unix seconds
    pub created: u64,
    pub updated: u64,
    #[serde(default)]
    pub deleted: bool,
}

/// The secret's name for a node, as pkg/nodepassword names it.
pub fn password_secret(node: &str) -> String {
    format!("{}.node-password.k3s", node.to_ascii_lowercase())
}

impl NodeReg {
    pub fn kubelet_version(&self) -> &str {
        if self.version.is_empty() {
            VERSION
        } else {
            &self.version
        }
    }
}

/// A node record. All stamps are wall-clock unix milliseconds (servers share a clock in the
/// lab), so replicas can merge them: `updated` orders writes (last writer wins) and
/// `last_seen` (newest heartbeat wins) gives readiness.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct NodeRec {
    pub reg: NodeReg,
    /// creation time, unix seconds
    pub created: u64,
    pub last_seen: u64,
    pub unschedulable: bool,
    /// When `unschedulable` was last set: it merges on its own, so a restarted server that
    /// re-registers its node from a state saved before a cordon reached it does not undo the
    /// cordon (a kubelet restart never touches spec.unschedulable).
    #[serde(default)]
    pub cordoned_at: u64,
    pub updated: u64,
    /// tombstone: a deleted node stays deleted when replicas merge
    #[serde(default)]
    pub deleted: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ObjRec {
    pub applied: Value,
    pub created: u64,
    pub uid: String,
    #[serde(default)]
    pub updated: u64,
    /// tombstone (a deleted or evicted object): stays deleted when replicas merge
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// The whole replicated state (STAND-IN multi-master replication instead of etcd): every
/// server holds all of it, pushes each write to its peers and pulls peers every second.
/// The same type is the wire form (`/v1-standin/state`, `/v1-standin/merge`) and the
/// on-disk form (`<data-dir>/server/db/standin-state.json`).
#[derive(Default, Serialize, Deserialize, Clone, Debug)]
pub struct State {
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeRec>,
    /// key: "<group>/<Kind>/<namespace>/<name>"
    #[serde(default)]
    pub objects: BTreeMap<String, ObjRec>,
    /// server URL → unix ms it was (re)registered as a member
    #[serde(default)]
    pub members: BTreeMap<String, u64>,
    /// server URL → unix ms it was removed (tombstone: newer than its `members` stamp means
    /// removed, so a removed member stays removed when replicas merge)
    #[serde(default)]
    pub removed_members: BTreeMap<String, u64>,
    /// node name → its node-password secret (tombstones kept, as for nodes)
    #[serde(default)]
    pub node_passwords: BTreeMap<String, PasswordRec>,
    /// bumped on every change (drives persistence); not replicated
    #[serde(skip)]
    pub gen: u64,
}

impl State {
    fn stamp_after(prev: u64) -> u64 {
        crate::util::now_ms().max(prev + 1)
    }

    /// Registration (`register`) creates the node; a plain status update for a node that
    /// was deleted is refused, as a running kubelet does not re-register a deleted Node.
    /// Registration checks the node password as k3s does: the first one for a name is kept
    /// (hashed), a different one later is refused until the secret is deleted.
    /// Returns Ok(true) when the node was created.
    pub fn heartbeat(&mut self, mut reg: NodeReg, register: bool) -> Result<bool, Refused> {
        let password = std::mem::take(&mut reg.password);
        if register {
            self.ensure_password(&reg.name, &password)?;
        }
        let now = crate::util::now_ms();
        self.gen += 1;
        match self.nodes.get_mut(&reg.name) {
            Some(n) if !n.deleted => {
                n.last_seen = n.last_seen.max(now);
                // Like a kubelet, labels and taints count only when the Node is created;
                // later changes go through the API (`kubectl label/taint`).
                reg.labels = n.reg.labels.clone();
                reg.taints = n.reg.taints.clone();
                if register || n.reg != reg {
                    n.reg = reg;
                    n.updated = Self::stamp_after(n.updated);
                }
                Ok(false)
            }
            _ if !register => Err(Refused::NotFound),
            old => {
                let updated = Self::stamp_after(old.map(|o| o.updated).unwrap_or(0));
                let name = reg.name.clone();
                self.nodes.insert(
                    name,
                    NodeRec {
                        reg,
                        created: crate::util::now_unix(),
                        last_seen: now,
                        unschedulable: false,
                        cordoned_at: updated,
                        updated,
                        deleted: false,
                    },
                );
                Ok(true)
            }
        }
    }

    /// pkg/nodepassword's Ensure: verify against the stored hash, or store it when none.
    fn ensure_password(&mut self, name: &str, password: &str) -> Result<(), Refused> {
        let hash = crate::net::sha256_hex(password.as_bytes());
        match self.node_passwords.get(name) {
            Some(p) if !p.deleted && p.hash == hash => Ok(()),
            Some(p) if !p.deleted => Err(Refused::PasswordRejected),
            old => {
                let updated = Self::stamp_after(old.map(|o| o.updated).unwrap_or(0));
                let rec = PasswordRec { hash, created: crate::util::now_unix(), updated, deleted: false };
                self.node_passwords.insert(name.to_string(), rec);
                self.gen += 1;
                Ok(())
            }
        }
    }

    /// Deletes a node's node-password secret (tombstone). False when there is none.
    pub fn delete_password(&mut self, name: &str) -> bool {
        match self.node_passwords.get_mut(name) {
            Some(p) if !p.deleted => {
                p.deleted = true;
                p.updated = Self::stamp_after(p.updated);
                self.gen += 1;
                true
            }
            _ => false,
        }
    }

    /// The node-password secrets as the API shows them (kube-system Secrets holding a hash).
    pub fn password_secrets(&self) -> Vec<Value> {
        self.node_passwords
            .iter()
            .filter(|(_, p)| !p.deleted)
            .map(|(n, p)| {
                json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "immutable": true,
                    "metadata": {"name": password_secret(n), "namespace": "kube-system",
                        "creationTimestamp": crate::util::rfc3339(p.created), "resourceVersion": p.updated.to_string()},
                    "data": {"hash": crate::util::b64enc(p.hash.as_bytes())}})
            })
            .collect()
    }

    pub fn node(&self, name: &str) -> Option<&NodeRec> {
        self.nodes.get(name).filter(|n| !n.deleted)
    }

    pub fn live_nodes(&self) -> impl Iterator<Item = &NodeRec> {
        self.nodes.values().filter(|n| !n.deleted)
    }

    /// Delete a node (leaves a tombstone). Returns false when there is no such node.
    pub fn delete_node(&mut self, name: &str) -> bool {
        match self.nodes.get_mut(name) {
            Some(n) if !n.deleted => {
                n.deleted = true;
                n.updated = Self::stamp_after(n.updated);
                self.gen += 1;
                // k3s's node controller deletes the node's password secret with the Node.
                self.delete_password(name);
                true
            }
            _ => false,
        }
    }

    /// Cordon/uncordon. Returns Some(changed), None when there is no such node.
    pub fn cordon(&mut self, name: &str, want: bool) -> Option<bool> {
        let n = self.nodes.get_mut(name).filter(|n| !n.deleted)?;
        let changed = n.unschedulable != want;
        if changed {
            n.unschedulable = want;
            n.updated = Self::stamp_after(n.updated);
            n.cordoned_at = n.updated;
            self.gen += 1;
        }
        Some(changed)
    }

    /// `kubectl label`: value None removes the key. Returns Some(changed), None for no node.
    pub fn label(
        &mut self,
        name: &str,
        want: &BTreeMap<String, Option<String>>,
        overwrite: bool,
    ) -> Option<Result<bool, String>> {
        let n = self.nodes.get_mut(name).filter(|n| !n.deleted)?;
        let mut labels = n.reg.labels.clone();
        for (k, v) in want {
            match v {
                Some(v) => {
                    if let Some(old) = labels.get(k).filter(|old| *old != v) {
                        if !overwrite {
                            return Some(Err(format!(
                                "error: '{k}' already has a value ({old}), and --overwrite is false"
                            )));
                        }
                    }
                    labels.insert(k.clone(), v.clone());
                }
                None => {
                    labels.remove(k);
                }
            }
        }
        Some(Ok(self.set_node_meta(name, Some(labels), None)))
    }

    /// `kubectl taint`: add `key[=value]:Effect`, remove `key[:Effect]-`.
    pub fn taint(
        &mut self,
        name: &str,
        add: &[String],
        remove: &[String],
        overwrite: bool,
    ) -> Option<Result<bool, String>> {
        let n = self.nodes.get(name).filter(|n| !n.deleted)?;
        let key_effect = |t: &str| -> (String, String) {
            let (kv, effect) = t.rsplit_once(':').unwrap_or((t, ""));
            (kv.split_once('=').map_or(kv, |(k, _)| k).to_string(), effect.to_string())
        };
        let mut taints = n.reg.taints.clone();
        for t in remove {
            let (k, e) = key_effect(t);
            taints.retain(|x| {
                let (xk, xe) = key_effect(x);
                !(xk == k && (e.is_empty() || xe == e))
            });
        }
        for t in add {
            let (k, e) = key_effect(t);
            if let Some(pos) = taints.iter().position(|x| key_effect(x) == (k.clone(), e.clone())) {
                if taints[pos] != *t && !overwrite {
                    return Some(Err(format!(
                        "error: node {name} already has {k} taint(s) with same effect(s) and --overwrite is false"
                    )));
                }
                taints[pos] = t.clone();
            } else {
                taints.push(t.clone());
            }
        }
        Some(Ok(self.set_node_meta(name, None, Some(taints))))
    }

    fn set_node_meta(
        &mut self,
        name: &str,
        labels: Option<BTreeMap<String, String>>,
        taints: Option<Vec<String>>,
    ) -> bool {
        let Some(n) = self.nodes.get_mut(name) else { return false };
        let before = (n.reg.labels.clone(), n.reg.taints.clone());
        if let Some(l) = labels {
            n.reg.labels = l;
        }
        if let Some(t) = taints {
            n.reg.taints = t;
        }
        let changed = before != (n.reg.labels.clone(), n.reg.taints.clone());
        if changed {
            n.updated = Self::stamp_after(n.updated);
            self.gen += 1;
        }
        changed
    }

    pub fn add_member(&mut self, url: &str) {
        let prev = self.members.get(url).copied().unwrap_or(0).max(self.removed_members.get(url).copied().unwrap_or(0));
        self.members.insert(url.to_string(), Self::stamp_after(prev));
        self.gen += 1;
    }

    /// Whether `url` is a member now (added and not removed since).
    pub fn is_member(&self, url: &str) -> bool {
        self.members.get(url).is_some_and(|added| self.removed_members.get(url).is_none_or(|r| r < added))
    }

    /// The current members' URLs.
    pub fn live_members(&self) -> Vec<String> {
        self.members.keys().filter(|u| self.is_member(u)).cloned().collect()
    }

    /// The member a node runs (real k3s: the Node's `etcd.k3s.cattle.io/node-address`
    /// annotation names it): an `etcd`-labelled node whose InternalIP is a member URL's host.
    pub fn member_of_node(&self, name: &str) -> Option<String> {
        let node = self.node(name)?;
        if !node.reg.labels.contains_key(ETCD_ROLE) {
            return None;
        }
        let ip = &node.reg.internal_ip;
        self.live_members().into_iter().find(|u| crate::util::url_host(u) == Some(ip.as_str()))
    }

    /// Removes a member (real: etcd MemberRemove), leaving a tombstone.
    pub fn remove_member(&mut self, url: &str) {
        let added = self.members.get(url).copied().unwrap_or(0);
        self.removed_members.insert(url.to_string(), Self::stamp_after(added));
        self.gen += 1;
    }

    /// A copy holding only the named node / object / member (what a write pushes to peers).
    pub fn part(&self, node: Option<&str>, object: Option<&str>, member: Option<&str>) -> State {
        let mut p = State::default();
        if let Some(n) = node.and_then(|n| self.nodes.get_key_value(n)) {
            p.nodes.insert(n.0.clone(), n.1.clone());
        }
        if let Some(n) = node.and_then(|n| self.node_passwords.get_key_value(n)) {
            p.node_passwords.insert(n.0.clone(), n.1.clone());
        }
        if let Some(o) = object.and_then(|o| self.objects.get_key_value(o)) {
            p.objects.insert(o.0.clone(), o.1.clone());
        }
        if let Some(m) = member.and_then(|m| self.members.get_key_value(m)) {
            p.members.insert(m.0.clone(), *m.1);
        }
        if let Some(m) = member.and_then(|m| self.removed_members.get_key_value(m)) {
            p.removed_members.insert(m.0.clone(), *m.1);
        }
        p
    }

    /// Merge a peer's (full or partial) state: last writer wins per record by `updated`,
    /// tombstones included; `last_seen` takes the newest heartbeat. Returns true on change.
    pub fn merge(&mut self, other: State) -> bool {
        let mut changed = false;
        for (k, r) in other.nodes {
            match self.nodes.get_mut(&k) {
                None => {
                    self.nodes.insert(k, r);
                    changed = true;
                }
                Some(l) if r.updated > l.updated => {
                    let seen = l.last_seen.max(r.last_seen);
                    let cordon = (l.cordoned_at > r.cordoned_at).then_some((l.unschedulable, l.cordoned_at));
                    *l = r;
                    l.last_seen = seen;
                    if let Some((u, at)) = cordon {
                        (l.unschedulable, l.cordoned_at) = (u, at);
                    }
                    changed = true;
                }
                Some(l) => {
                    if r.last_seen > l.last_seen {
                        l.last_seen = r.last_seen;
                        changed = true;
                    }
                    if r.cordoned_at > l.cordoned_at {
                        (l.unschedulable, l.cordoned_at) = (r.unschedulable, r.cordoned_at);
                        changed = true;
                    }
                }
            }
        }
        for (k, r) in other.objects {
            match self.objects.get(&k) {
                Some(l) if l.updated >= r.updated => {}
                _ => {
                    self.objects.insert(k, r);
                    changed = true;
                }
            }
        }
        for (k, r) in other.node_passwords {
            match self.node_passwords.get(&k) {
                Some(l) if l.updated >= r.updated => {}
                _ => {
                    self.node_passwords.insert(k, r);
                    changed = true;
                }
            }
        }
        for (k, t) in other.members {
            match self.members.get(&k) {
                Some(l) if *l >= t => {}
                _ => {
                    self.members.insert(k, t);
                    changed = true;
                }
            }
        }
        for (k, t) in other.removed_members {
            if self.removed_members.get(&k).is_none_or(|l| *l < t) {
                self.removed_members.insert(k, t);
                changed = true;
            }
        }
        if changed {
            self.gen += 1;
        }
        changed
    }

    pub fn node_list(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "NodeList",
            "items": self.live_nodes().map(node_json).collect::<Vec<_>>(),
            "metadata": {"resourceVersion": self.resource_version()}
        })
    }

    /// A resourceVersion-like string: the newest write stamp.
    pub fn resource_version(&self) -> String {
        let n = self.nodes.values().map(|n| n.updated).max().unwrap_or(0);
        let o = self.objects.values().map(|o| o.updated).max().unwrap_or(0);
        n.max(o).to_string()
    }

    /// Applied objects that are not deleted (key, record).
    pub fn live_objects(&self) -> impl Iterator<Item = (&String, &ObjRec)> {
        self.objects.iter().filter(|(_, o)| !o.deleted)
    }

    /// The Eviction API (`POST …/pods/NAME/eviction`): a pod is deleted unless a
    /// PodDisruptionBudget selecting it would drop below what it allows. Returns the pod's
    /// node. The stand-in's pods are always Running and Ready, so every selected pod counts
    /// as healthy and the desired count is the number selected.
    pub fn evict(&mut self, ns: &str, name: &str) -> Result<String, Evict> {
        let key = format!("/Pod/{ns}/{name}");
        let pod = self.objects.get(&key).filter(|o| !o.deleted).ok_or(Evict::NotFound)?.applied.clone();
        let labels = pod.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
        let prefix = format!("policy/PodDisruptionBudget/{ns}/");
        let budgets: Vec<&Value> = self
            .live_objects()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, o)| &o.applied)
            .filter(|b| selects(b, &labels))
            .collect();
        if budgets.len() > 1 {
            return Err(Evict::Misconfigured(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."
                    .into(),
            ));
        }
        if let Some(b) = budgets.first() {
            let healthy = self
                .live_objects()
                .filter(|(k, _)| k.starts_with(&format!("/Pod/{ns}/")))
                .filter(|(_, o)| selects(b, o.applied.pointer("/metadata/labels").unwrap_or(&json!({}))))
                .count() as u64;
            let bname = b.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
            let need = budget_min(b, healthy).map_err(Evict::Misconfigured)?;
            if healthy <= need {
                return Err(Evict::Blocked(format!(
                    "The disruption budget {bname} needs {need} healthy pods and has {healthy} currently"
                )));
            }
        }
        let o = self.objects.get_mut(&key).ok_or(Evict::NotFound)?;
        o.deleted = true;
        o.updated = Self::stamp_after(o.updated);
        self.gen += 1;
        Ok(pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("").to_string())
    }

    /// Store a manifest document; returns (store key, display name, created|configured|unchanged).
    pub fn apply(&mut self, doc: Value) -> Result<(String, String, &'static str), String> {
        let (key, display) = object_key(&doc)?;
        let res = match self.objects.get_mut(&key).filter(|o| !o.deleted) {
            Some(o) if o.applied == doc => "unchanged",
            Some(o) => {
                o.applied = doc;
                o.updated = Self::stamp_after(o.updated);
                "configured"
            }
            None => {
                let prev = self.objects.get(&key).map_or(0, |o| o.updated);
                let rec = ObjRec {
                    applied: doc,
                    created: crate::util::now_unix(),
                    uid: uuid(),
                    updated: Self::stamp_after(prev),
                    deleted: false,
                };
                self.objects.insert(key.clone(), rec);
                "created"
            }
        };
        if res != "unchanged" {
            self.gen += 1;
        }
        Ok((key, display, res))
    }
}

/// Why an eviction was refused (the API answers 404, 429 and 500).
#[derive(Debug, PartialEq)]
pub enum Evict {
    NotFound,
    /// A PodDisruptionBudget allows no more disruptions now.
    Blocked(String),
    /// The budgets cannot be evaluated (several select the pod, an unsupported field).
    Misconfigured(String),
}

/// Whether a PodDisruptionBudget's `spec.selector.matchLabels` selects these labels. An empty
/// selector selects every pod of the namespace (policy/v1).
fn selects(budget: &Value, labels: &Value) -> bool {
    let sel = budget.pointer("/spec/selector/matchLabels").and_then(Value::as_object);
    sel.into_iter().flatten().all(|(k, v)| labels.get(k) == Some(v))
}

/// How many of `healthy` selected pods must stay: `minAvailable`, or all but `maxUnavailable`
/// (integers or percentages, rounded up as the disruption controller does).
fn budget_min(budget: &Value, healthy: u64) -> Result<u64, String> {
    let spec = budget.get("spec").cloned().unwrap_or(json!({}));
    if spec.pointer("/selector/matchExpressions").is_some() {
        return Err("STAND-IN: PodDisruptionBudget matchExpressions are not supported".into());
    }
    let count = |v: &Value| -> Result<u64, String> {
        match (v.as_u64(), v.as_str().and_then(|s| s.strip_suffix('%')).and_then(|p| p.parse::<u64>().ok())) {
            (Some(n), _) => Ok(n),
            (None, Some(pct)) => Ok((pct * healthy).div_ceil(100)),
            _ => Err(format!("invalid PodDisruptionBudget value {v}")),
        }
    };
    match (spec.get("minAvailable"), spec.get("maxUnavailable")) {
        (Some(min), None) => count(min),
        (None, Some(max)) => Ok(healthy.saturating_sub(count(max)?)),
        (None, None) => Ok(0),
        (Some(_), Some(_)) => Err("minAvailable and maxUnavailable cannot both be set".into()),
    }
}

impl State {
    /// A live object by store key.
    pub fn object(&self, key: &str) -> Option<&ObjRec> {
        self.objects.get(key).filter(|o| !o.deleted)
    }

    /// API delete: leaves a tombstone. Returns the deleted object, None when there is none.
    pub fn delete_object(&mut self, key: &str) -> Option<ObjRec> {
        let o = self.objects.get_mut(key).filter(|o| !o.deleted)?;
        o.deleted = true;
        o.updated = Self::stamp_after(o.updated);
        let gone = o.clone();
        self.gen += 1;
        Some(gone)
    }
}

fn uuid() -> String {
    let h = crate::net::random_hex(16);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "Node",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "StorageClass",
    "PersistentVolume",
    "PriorityClass",
    "APIService",
    "IngressClass",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "CSIDriver",
    "RuntimeClass",
];

/// (store key, kubectl display name like `deployment.apps/web`)
pub fn object_key(doc: &Value) -> Result<(String, String), String> {
    let api =
        doc.get("apiVersion").and_then(Value::as_str).ok_or("error: error validating data: apiVersion not set")?;
    let kind = doc.get("kind").and_then(Value::as_str).ok_or("error: error validating data: kind not set")?;
    let name = doc.pointer("/metadata/name").and_then(Value::as_str).ok_or("error: resource name may not be empty")?;
    let group = api.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    let ns = if CLUSTER_SCOPED.contains(&kind) {
        ""
    } else {
        doc.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default")
    };
    let lk = kind.to_ascii_lowercase();
    let display = if group.is_empty() { format!("{lk}/{name}") } else { format!("{lk}.{group}/{name}") };
    Ok((format!("{group}/{kind}/{ns}/{name}"), display))
}

/// Does a kubectl resource argument (`deploy`, `deployments.apps`, `configmap` …) name this kind?
pub fn kind_matches(arg: &str, kind: &str, group: &str) -> bool {
    let arg = arg.to_ascii_lowercase();
    let (res, grp) = match arg.split_once('.') {
        Some((r, g)) => (r.to_string(), Some(g.to_string())),
        None => (arg.clone(), None),
    };
    if let Some(g) = grp {
        if g != group {
            return false;
        }
    }
    let k = kind.to_ascii_lowercase();
    let short: &[(&str, &str)] = &[
        ("deploy", "deployment"),
        ("svc", "service"),
        ("cm", "configmap"),
        ("ns", "namespace"),
        ("ds", "daemonset"),
        ("sts", "statefulset"),
        ("po", "pod"),
        ("sa", "serviceaccount"),
        ("ing", "ingress"),
        ("pvc", "persistentvolumeclaim"),
        ("pv", "persistentvolume"),
        ("crd", "customresourcedefinition"),
        ("no", "node"),
        ("secret", "secret"),
    ];
    res == k
        || res == format!("{k}s")
        || res == format!("{k}es")
        || (k.ends_with('y') && res == format!("{}ies", &k[..k.len() - 1]))
        || short.iter().any(|(s, full)| *s == res && *full == k)
}

pub fn object_json(o: &ObjRec) -> Value {
    let mut d = o.applied.clone();
    if let Some(m) = d.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("creationTimestamp".into(), json!(crate::util::rfc3339(o.created)));
        m.insert("uid".into(), json!(o.uid));
        m.insert("resourceVersion".into(), json!(o.updated.to_string()));
    }
    d
}

pub fn ready(n: &NodeRec) -> bool {
    crate::util::now_ms().saturating_sub(n.last_seen) < GRACE.as_millis() as u64
}

/// kubectl's STATUS column for a node.
pub fn node_status(n: &NodeRec) -> String {
    let mut s = if ready(n) { "Ready".to_string() } else { "NotReady".to_string() };
    if n.unschedulable {
        s.push_str(",SchedulingDisabled");
    }
    s
}

/// Stable uid for a node record (name + creation time).
pub fn node_uid(n: &NodeRec) -> String {
    let h = crate::net::sha256_hex(format!("{}/{}", n.reg.name, n.created).as_bytes());
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

pub fn roles(labels: &BTreeMap<String, String>) -> String {
    let r: Vec<&str> =
        labels.keys().filter_map(|k| k.strip_prefix("node-role.kubernetes.io/")).filter(|r| !r.is_empty()).collect();
    if r.is_empty() {
        "<none>".into()
    } else {
        r.join(",")
    }
}

pub fn node_json(n: &NodeRec) -> Value {
    let r = &n.reg;
    let ok = ready(n);
    let ts = crate::util::rfc3339(n.created);
    let taints: Vec<Value> = r
        .taints
        .iter()
        .map(|t| {
            let (kv, effect) = t.rsplit_once(':').unwrap_or((t, "NoSchedule"));
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let mut o = json!({"key": k, "effect": effect});
            if !v.is_empty() {
                o["value"] = json!(v);
            }
            o
        })
        .chain(n.unschedulable.then(|| json!({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"})))
        .chain((!ok).then(|| json!({"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"})))
        .collect();
    let mut addrs = vec![json!({"type": "InternalIP", "address": r.internal_ip})];
    if let Some(e) = &r.external_ip {
        addrs.push(json!({"type": "ExternalIP", "address": e}));
    }
    addrs.push(json!({"type": "Hostname", "address": r.name}));
    let cond = if ok {
        json!({"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"})
    } else {
        json!({"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown", "message": "Kubelet stopped posting node status."})
    };
    let mut spec = json!({"podCIDR": "10.42.0.0/24"});
    if !taints.is_empty() {
        spec["taints"] = json!(taints);
    }
    if n.unschedulable {
        spec["unschedulable"] = json!(true);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": r.name,
            "labels": r.labels,
            "annotations": {"k3s.io/internal-ip": r.internal_ip, "k3s.io/hostname": r.name, "k3s.io/standin": "true"},
            "creationTimestamp": ts,
            "uid": node_uid(n),
            "resourceVersion": n.updated.to_string(),
        },
        "spec": spec,
        "status": {
            "addresses": addrs,
            "conditions": [cond],
            "nodeInfo": {
                "architecture": r.arch,
                "containerRuntimeVersion": "containerd://standin",
                "kernelVersion": r.kernel,
                "kubeProxyVersion": r.kubelet_version(),
                "kubeletVersion": r.kubelet_version(),
                "operatingSystem": "linux",
                "osImage": r.os_image,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn apply_results_and_keys() {
        let mut s = State::default();
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}});
        assert_eq!(
            s.apply(d.clone()).unwrap(),
            ("apps/Deployment/default/web".into(), "deployment.apps/web".into(), "created")
        );
        assert_eq!(s.apply(d.clone()).unwrap().2, "unchanged");
        let mut d2 = d.clone();
        d2["spec"] = json!({"replicas": 2});
        assert_eq!(s.apply(d2).unwrap().2, "configured");
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}});
        assert_eq!(s.apply(ns).unwrap().1, "namespace/x");
        assert!(s.apply(json!({"kind": "X"})).is_err());
        assert!(kind_matches("deploy", "Deployment", "apps"));
        assert!(kind_matches("deployments.apps", "Deployment", "apps"));
        assert!(!kind_matches("deployments.extensions", "Deployment", "apps"));
        assert!(kind_matches("ingresses", "Ingress", "networking.k8s.io"));
        assert!(kind_matches("networkpolicies", "NetworkPolicy", "networking.k8s.io"));
    }

    #[test]
    fn labels_and_taints_change_only_through_the_api() {
        let mut st = State::default();
        let mut r = reg("n1");
        r.labels.insert("disk".into(), "ssd".into());
        st.heartbeat(r.clone(), true).unwrap();
        let mut later = r.clone();
        later.labels.insert("disk".into(), "hdd".into());
        st.heartbeat(later, true).unwrap();
        assert_eq!(st.node("n1").unwrap().reg.labels["disk"], "ssd", "a restart does not relabel");
        let want: BTreeMap<String, Option<String>> = [("disk".to_string(), Some("hdd".to_string()))].into();
        assert!(st.label("n1", &want, false).unwrap().is_err(), "needs --overwrite");
        assert_eq!(st.label("n1", &want, true), Some(Ok(true)));
        assert_eq!(st.label("n1", &want, true), Some(Ok(false)));
        assert_eq!(st.taint("n1", &["a=b:NoSchedule".into()], &[], false), Some(Ok(true)));
        assert!(st.taint("n1", &["a=c:NoSchedule".into()], &[], false).unwrap().is_err());
        assert_eq!(st.taint("n1", &[], &["a:NoSchedule".into()], false), Some(Ok(true)));
        assert!(st.node("n1").unwrap().reg.taints.is_empty());
        assert!(st.label("nope", &want, true).is_none());
    }

    #[test]
    fn a_cordon_survives_a_server_re_registering_its_node_from_an_older_state() {
        let mut a = State::default();
        a.heartbeat(reg("s2"), true).unwrap();
        let saved = a.clone(); // s2's own state on disk, saved before the cordon reached it
        std::thread::sleep(Duration::from_millis(3));
        a.cordon("s2", true).unwrap();
        let mut restarted = saved;
        std::thread::sleep(Duration::from_millis(3));
        let mut upgraded = reg("s2");
        upgraded.version = "v1.31.5+k3s1".into();
        restarted.heartbeat(upgraded, true).unwrap();
        a.merge(restarted.clone());
        restarted.merge(a.clone());
        for st in [&a, &restarted] {
            let n = st.node("s2").unwrap();
            assert!(n.unschedulable, "the cordon stays");
            assert_eq!(n.reg.version, "v1.31.5+k3s1", "the newer registration is taken");
        }
    }

    #[test]
    fn eviction_respects_disruption_budgets_and_leaves_a_tombstone() {
        let mut st = State::default();
        let pod = |n: &str| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": n, "labels": {"app": "web"}}, "spec": {"nodeName": "n2"}});
        st.apply(pod("a")).unwrap();
        st.apply(pod("b")).unwrap();
        let pdb = |min: Value| json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "web"}, "spec": {"minAvailable": min, "selector": {"matchLabels": {"app": "web"}}}});
        st.apply(pdb(json!(2))).unwrap();
        assert!(
            matches!(st.evict("default", "a"), Err(Evict::Blocked(m)) if m.contains("needs 2 healthy pods and has 2"))
        );
        st.apply(pdb(json!("50%"))).unwrap();
        assert_eq!(st.evict("default", "a"), Ok("n2".to_string()));
        assert!(matches!(st.evict("default", "b"), Err(Evict::Blocked(_))), "1 of 1 left, 50% rounds up to 1");
        assert_eq!(st.evict("default", "a"), Err(Evict::NotFound));
        // the tombstone wins over the peer's older copy
        let mut peer = State::default();
        peer.objects.insert(
            "/Pod/default/a".into(),
            ObjRec { deleted: false, updated: 1, ..st.objects["/Pod/default/a"].clone() },
        );
        st.merge(peer);
        assert!(st.live_objects().all(|(k, _)| k != "/Pod/default/a"));
        // applied again, it is a new pod
        assert_eq!(st.apply(pod("a")).unwrap().2, "created");
        let mut second = pdb(json!(0));
        second["metadata"]["name"] = json!("other");
        st.apply(second).unwrap();
        assert!(matches!(st.evict("default", "a"), Err(Evict::Misconfigured(_))), "two budgets select it");
    }

    fn reg(name: &str) -> NodeReg {
        NodeReg {
            name: name.into(),
            internal_ip: "127.0.0.1".into(),
            external_ip: None,
            labels: BTreeMap::new(),
            taints: vec![],
            os_image: "x".into(),
            kernel: "k".into(),
            arch: "amd64".into(),
            version: VERSION.into(),
            password: "pw1".into(),
        }
    }

    #[test]
    fn node_password_is_kept_per_name_and_checked_on_registration() {
        let mut st = State::default();
        assert_eq!(st.heartbeat(reg("n1"), true), Ok(true));
        let secrets = st.password_secrets();
        assert_eq!(secrets.len(), 1);
        assert_eq!(secrets[0]["metadata"]["name"], "n1.node-password.k3s");
        assert!(!secrets[0].to_string().contains("pw1"), "only the hash is kept: {}", secrets[0]);
        assert!(st.nodes["n1"].reg.password.is_empty(), "the node record does not keep the password");
        // same password again: a restart
        assert_eq!(st.heartbeat(reg("n1"), true), Ok(false));
        // a reflashed node: new password under the same name
        let other = NodeReg { password: "pw2".into(), ..reg("n1") };
        assert_eq!(st.heartbeat(other.clone(), true), Err(Refused::PasswordRejected));
        assert_eq!(
            st.heartbeat(NodeReg { password: String::new(), ..reg("n1") }, true),
            Err(Refused::PasswordRejected)
        );
        // heartbeats of the running node are not re-checked (k3s checks at registration)
        assert_eq!(st.heartbeat(reg("n1"), false), Ok(false));
        // deleting the secret lets the new password in
        assert!(st.delete_password("n1"));
        assert!(!st.delete_password("n1"));
        assert_eq!(st.heartbeat(other.clone(), true), Ok(false));
        assert_eq!(st.heartbeat(reg("n1"), true), Err(Refused::PasswordRejected));
        // deleting the node deletes its secret too (k3s's node controller)
        assert!(st.delete_node("n1"));
        assert!(st.password_secrets().is_empty());
        assert_eq!(st.heartbeat(reg("n1"), true), Ok(true));
    }

    #[test]
    fn node_passwords_replicate_with_tombstones() {
        let (mut a, mut b) = (State::default(), State::default());
        a.heartbeat(reg("n1"), true).unwrap();
        b.merge(a.part(Some("n1"), None, None));
        let other = NodeReg { password: "pw2".into(), ..reg("n1") };
        assert_eq!(b.heartbeat(other.clone(), true), Err(Refused::PasswordRejected), "a peer checks the same hash");
        a.delete_password("n1");
        b.merge(a.clone());
        assert_eq!(b.heartbeat(other, true), Ok(false));
        a.merge(b.clone());
        assert_eq!(a.heartbeat(reg("n1"), true), Err(Refused::PasswordRejected), "the newest secret wins on both");
    }

    #[test]
    fn merge_is_last_writer_wins_with_tombstones() {
        let (mut a, mut b) = (State::default(), State::default());
        a.heartbeat(reg("n1"), true).unwrap();
        assert!(b.merge(a.clone()));
        assert!(!b.merge(a.clone()), "idempotent");
        // a heartbeat on b only moves last_seen forward
        std::thread::sleep(Duration::from_millis(3));
        b.heartbeat(reg("n1"), false).unwrap();
        let seen_b = b.nodes["n1"].last_seen;
        assert!(a.merge(b.clone()));
        assert_eq!(a.nodes["n1"].last_seen, seen_b);
        // cordon on b, delete on a later: the delete wins everywhere and is not undone
        b.cordon("n1", true).unwrap();
        std::thread::sleep(Duration::from_millis(3));
        assert!(a.delete_node("n1"));
        let (a0, b0) = (a.clone(), b.clone());
        a.merge(b0);
        b.merge(a0);
        assert!(a.node("n1").is_none() && b.node("n1").is_none());
        assert!(b.heartbeat(reg("n1"), false).is_err(), "deleted node does not come back by heartbeat");
        // re-registration resurrects with a newer stamp
        std::thread::sleep(Duration::from_millis(3));
        assert_eq!(b.heartbeat(reg("n1"), true), Ok(true));
        a.merge(b.clone());
        assert!(a.node("n1").is_some());
        // objects and members
        b.apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})).unwrap();
        b.add_member("https://127.0.0.2:6443");
        a.merge(b.clone());
        assert!(a.objects.contains_key("/ConfigMap/default/c"));
        assert!(a.members.contains_key("https://127.0.0.2:6443"));
        let js = serde_json::to_string(&a).unwrap();
        let back: State = serde_json::from_str(&js).unwrap();
        assert_eq!(back.nodes, a.nodes);
    }

    #[test]
    fn a_removed_member_stays_removed_when_replicas_merge() {
        let (mut a, mut b) = (State::default(), State::default());
        a.add_member("https://10.0.0.3:6443");
        b.merge(a.clone());
        a.remove_member("https://10.0.0.3:6443");
        assert!(!a.is_member("https://10.0.0.3:6443"));
        b.merge(a.clone());
        a.merge(b.clone());
        assert!(a.live_members().is_empty() && b.live_members().is_empty());
        b.add_member("https://10.0.0.3:6443");
        a.merge(b);
        assert!(a.is_member("https://10.0.0.3:6443"), "a member added again after its removal is back");
    }

    #[test]
    fn etcd_refuses_removals_that_lose_quorum() {
        assert_eq!(member_removal_refused(3, 2, false), None, "one dead of three: removable");
        assert!(member_removal_refused(3, 1, false).unwrap().contains("timed out"), "two dead of three: no quorum");
        assert!(member_removal_refused(3, 2, true).unwrap().contains("not enough started"), "a live one with one dead");
        assert!(member_removal_refused(1, 1, true).is_some(), "the last member");
        assert_eq!(member_removal_refused(2, 2, true), None);
    }

    #[test]
    fn a_deleted_object_stays_deleted_when_replicas_merge() {
        let (mut a, mut b) = (State::default(), State::default());
        let doc = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        a.apply(doc.clone()).unwrap();
        b.merge(a.clone());
        let uid = a.object("/ConfigMap/default/c").unwrap().uid.clone();
        assert_eq!(object_json(a.object("/ConfigMap/default/c").unwrap())["metadata"]["uid"], json!(uid));
        std::thread::sleep(Duration::from_millis(3));
        assert_eq!(a.delete_object("/ConfigMap/default/c").unwrap().uid, uid);
        assert!(a.delete_object("/ConfigMap/default/c").is_none());
        b.merge(a.clone());
        assert!(b.object("/ConfigMap/default/c").is_none(), "the tombstone replicates");
        // created again: a new object with a new uid
        assert_eq!(b.apply(doc).unwrap().2, "created");
        assert_ne!(b.object("/ConfigMap/default/c").unwrap().uid, uid);
    }
}
