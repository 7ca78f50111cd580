//! Cluster state held by servers: nodes (with heartbeat-derived readiness) and applied
//! manifest documents.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub const VERSION: &str = "v1.31.4+k3s1";
/// A node is NotReady after this long without a heartbeat (real: node-monitor-grace-period 40s;
/// shortened for tests).
pub const GRACE: Duration = Duration::from_secs(10);
pub const HEARTBEAT: Duration = Duration::from_secs(2);

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
}

#[derive(Clone, Debug)]
pub struct NodeRec {
    pub reg: NodeReg,
    pub created: u64,
    pub last_seen: Instant,
    pub unschedulable: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ObjRec {
    pub applied: Value,
    pub created: u64,
    pub uid: String,
}

#[derive(Default)]
pub struct State {
    pub nodes: BTreeMap<String, NodeRec>,
    /// key: "<group>/<Kind>/<namespace>/<name>"
    pub objects: BTreeMap<String, ObjRec>,
}

/// Wire form of the state for replication to joined servers.
#[derive(Serialize, Deserialize)]
pub struct Export {
    pub nodes: Vec<(NodeReg, u64, u64, bool)>, // reg, created, seen_ago_ms, unschedulable
    pub objects: BTreeMap<String, ObjRec>,
}

impl State {
    /// Registration (`register`) creates the node; a plain status update for a node that
    /// was deleted is refused, as a running kubelet does not re-register a deleted Node.
    /// Returns Ok(true) when the node was created.
    pub fn heartbeat(&mut self, reg: NodeReg, register: bool) -> Result<bool, ()> {
        let now = Instant::now();
        match self.nodes.get_mut(&reg.name) {
            Some(n) => {
                n.reg = reg;
                n.last_seen = now;
                Ok(false)
            }
            None if !register => Err(()),
            None => {
                let name = reg.name.clone();
                self.nodes.insert(
                    name,
                    NodeRec { reg, created: crate::util::now_unix(), last_seen: now, unschedulable: false },
                );
                Ok(true)
            }
        }
    }

    pub fn export(&self) -> Export {
        Export {
            nodes: self
                .nodes
                .values()
                .map(|n| (n.reg.clone(), n.created, n.last_seen.elapsed().as_millis() as u64, n.unschedulable))
                .collect(),
            objects: self.objects.clone(),
        }
    }

    pub fn import(&mut self, e: Export) {
        let now = Instant::now();
        self.nodes = e
            .nodes
            .into_iter()
            .map(|(reg, created, ago, unsched)| {
                let last_seen = now.checked_sub(Duration::from_millis(ago)).unwrap_or(now);
                (reg.name.clone(), NodeRec { reg, created, last_seen, unschedulable: unsched })
            })
            .collect();
        self.objects = e.objects;
    }

    pub fn node_list(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": self.nodes.values().map(node_json).collect::<Vec<_>>(),
            "metadata": {"resourceVersion": ""}
        })
    }

    /// Store a manifest document; returns created|configured|unchanged.
    pub fn apply(&mut self, doc: Value) -> Result<(String, &'static str), String> {
        let (key, display) = object_key(&doc)?;
        let res = match self.objects.get_mut(&key) {
            Some(o) if o.applied == doc => "unchanged",
            Some(o) => {
                o.applied = doc;
                "configured"
            }
            None => {
                self.objects.insert(
                    key,
                    ObjRec { applied: doc, created: crate::util::now_unix(), uid: uuid() },
                );
                "created"
            }
        };
        Ok((display, res))
    }
}

fn uuid() -> String {
    let h = crate::net::random_hex(16);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

const CLUSTER_SCOPED: &[&str] = &[
    "Namespace", "Node", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "StorageClass", "PersistentVolume", "PriorityClass", "APIService", "IngressClass",
    "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "CSIDriver", "RuntimeClass",
];

/// (store key, kubectl display name like `deployment.apps/web`)
pub fn object_key(doc: &Value) -> Result<(String, String), String> {
    let api = doc.get("apiVersion").and_then(Value::as_str).ok_or("error: error validating data: apiVersion not set")?;
    let kind = doc.get("kind").and_then(Value::as_str).ok_or("error: error validating data: kind not set")?;
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .ok_or("error: resource name may not be empty")?;
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
        ("deploy", "deployment"), ("svc", "service"), ("cm", "configmap"), ("ns", "namespace"),
        ("ds", "daemonset"), ("sts", "statefulset"), ("po", "pod"), ("sa", "serviceaccount"),
        ("ing", "ingress"), ("pvc", "persistentvolumeclaim"), ("pv", "persistentvolume"),
        ("crd", "customresourcedefinition"), ("no", "node"), ("secret", "secret"),
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
        m.insert("resourceVersion".into(), json!("1"));
    }
    d
}

pub fn ready(n: &NodeRec) -> bool {
    n.last_seen.elapsed() < GRACE
}

pub fn roles(labels: &BTreeMap<String, String>) -> String {
    let r: Vec<&str> = labels
        .keys()
        .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
        .filter(|r| !r.is_empty())
        .collect();
    if r.is_empty() { "<none>".into() } else { r.join(",") }
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
        },
        "spec": spec,
        "status": {
            "addresses": addrs,
            "conditions": [cond],
            "nodeInfo": {
                "architecture": r.arch,
                "containerRuntimeVersion": "containerd://standin",
                "kernelVersion": r.kernel,
                "kubeProxyVersion": VERSION,
                "kubeletVersion": VERSION,
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
        assert_eq!(s.apply(d.clone()).unwrap(), ("deployment.apps/web".into(), "created"));
        assert_eq!(s.apply(d.clone()).unwrap().1, "unchanged");
        let mut d2 = d.clone();
        d2["spec"] = json!({"replicas": 2});
        assert_eq!(s.apply(d2).unwrap().1, "configured");
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}});
        assert_eq!(s.apply(ns).unwrap().0, "namespace/x");
        assert!(s.apply(json!({"kind": "X"})).is_err());
        assert!(kind_matches("deploy", "Deployment", "apps"));
        assert!(kind_matches("deployments.apps", "Deployment", "apps"));
        assert!(!kind_matches("deployments.extensions", "Deployment", "apps"));
        assert!(kind_matches("ingresses", "Ingress", "networking.k8s.io"));
        assert!(kind_matches("networkpolicies", "NetworkPolicy", "networking.k8s.io"));
    }
}
