//! k3s STAND-IN: the small part of the Kubernetes API that a real `kubectl` (1.20 … 1.33)
//! needs for `version`, `cluster-info`, `get --raw /readyz`, `get nodes [-o wide|json]`,
//! `get node NAME`, `cordon`/`uncordon` (PATCH), listing applied objects (pods by
//! `spec.nodeName`, as `kubectl drain` lists them) and the Eviction API. Discovery is
//! the legacy (non-aggregated) form, which clients accept as a fallback. NOT Kubernetes.

use crate::cluster::{self, NodeRec, VERSION};
use crate::net::Request;
use crate::server::{j, push, status_err, Resp, Srv};
use crate::util::{human_age, now_unix};
use serde_json::{json, Value};
use std::sync::Arc;

/// (group, version, resource, kind, namespaced, short names, verbs)
type Res =
    (&'static str, &'static str, &'static str, &'static str, bool, &'static [&'static str], &'static [&'static str]);
const GET_LIST: &[&str] = &["get", "list"];
const RESOURCES: &[Res] = &[
    ("", "v1", "nodes", "Node", false, &["no"], &["delete", "get", "list", "patch"]),
    ("", "v1", "namespaces", "Namespace", false, &["ns"], GET_LIST),
    ("", "v1", "configmaps", "ConfigMap", true, &["cm"], &["create", "delete", "get", "list"]),
    ("", "v1", "secrets", "Secret", true, &[], GET_LIST),
    ("", "v1", "services", "Service", true, &["svc"], GET_LIST),
    ("", "v1", "serviceaccounts", "ServiceAccount", true, &["sa"], GET_LIST),
    ("", "v1", "pods", "Pod", true, &["po"], GET_LIST),
    ("apps", "v1", "deployments", "Deployment", true, &["deploy"], GET_LIST),
    ("apps", "v1", "daemonsets", "DaemonSet", true, &["ds"], GET_LIST),
    ("apps", "v1", "statefulsets", "StatefulSet", true, &["sts"], GET_LIST),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", true, &["pdb"], GET_LIST),
];
const GROUPS: &[&str] = &["apps", "policy"];

fn gv(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

fn resource_list(group: &str, version: &str) -> Option<Value> {
    let rs: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.0 == group && r.1 == version)
        .map(|r| {
            let singular = r.3.to_ascii_lowercase();
            let mut v = json!({"name": r.2, "singularName": singular, "namespaced": r.4, "kind": r.3, "verbs": r.6});
            if !r.5.is_empty() {
                v["shortNames"] = json!(r.5);
            }
            v
        })
        .chain((group.is_empty() && version == "v1").then(|| {
            // `kubectl drain` looks for this subresource to learn the Eviction API's version.
            json!({"name": "pods/eviction", "singularName": "", "namespaced": true, "group": "policy",
                "version": "v1", "kind": "Eviction", "verbs": ["create"]})
        }))
        .collect();
    (!rs.is_empty()).then(
        || json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv(group, version), "resources": rs}),
    )
}

fn group_json(g: &str) -> Value {
    let v = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
    json!({"name": g, "versions": [v.clone()], "preferredVersion": v})
}

fn version_json() -> Value {
    let v = VERSION.trim_start_matches('v');
    let mut it = v.split('.');
    let (major, minor) = (it.next().unwrap_or("1"), it.next().unwrap_or("0"));
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    json!({
        "major": major, "minor": minor, "gitVersion": VERSION, "gitCommit": "standin0000000000000000000000000000000000",
        "gitTreeState": "clean", "buildDate": "2024-12-01T00:00:00Z", "goVersion": "go1.22.9", "compiler": "gc",
        "platform": format!("linux/{arch}")
    })
}

fn wants_table(req: &Request) -> bool {
    req.header("accept").is_some_and(|a| a.contains("as=Table"))
}

fn col(name: &str, ty: &str, format: &str, priority: u8, desc: &str) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": desc, "priority": priority})
}

fn partial(meta: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta})
}

fn node_row(n: &NodeRec) -> Value {
    let js = cluster::node_json(n);
    let r = &n.reg;
    let age = human_age(now_unix().saturating_sub(n.created));
    json!({
        "cells": [r.name, cluster::node_status(n), cluster::roles(&r.labels), age, r.kubelet_version(),
                  r.internal_ip, r.external_ip.clone().unwrap_or_else(|| "<none>".into()), r.os_image, r.kernel,
                  "containerd://standin"],
        "object": partial(&js["metadata"]),
    })
}

fn node_table(rows: Vec<Value>, rv: String) -> Value {
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
        "columnDefinitions": [
            col("Name", "string", "name", 0, "Name must be unique within a namespace."),
            col("Status", "string", "", 0, "The status of the node"),
            col("Roles", "string", "", 0, "The roles of the node"),
            col("Age", "string", "", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
            col("Version", "string", "", 0, "Kubelet Version reported by the node."),
            col("Internal-IP", "string", "", 1, "List of addresses reachable to the node."),
            col("External-IP", "string", "", 1, "List of addresses reachable to the node."),
            col("OS-Image", "string", "", 1, "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
            col("Kernel-Version", "string", "", 1, "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
            col("Container-Runtime", "string", "", 1, "Container runtime version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
        ],
        "rows": rows,
    })
}

fn obj_table(objs: &[Value], rv: String) -> Value {
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let name = o["metadata"]["name"].as_str().unwrap_or("");
            let ts = o["metadata"]["creationTimestamp"].as_str().unwrap_or("");
            let age =
                crate::kubectl::parse_rfc3339(ts).map(|t| human_age(now_unix().saturating_sub(t))).unwrap_or_default();
            json!({"cells": [name, age], "object": partial(&o["metadata"])})
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
        "columnDefinitions": [
            col("Name", "string", "name", 0, "Name must be unique within a namespace."),
            col("Age", "string", "", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
        ],
        "rows": rows,
    })
}

fn not_found(res: &str, name: &str) -> Resp {
    let mut r = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{res} \"{name}\" not found"), "reason": "NotFound",
        "details": {"name": name, "kind": res}, "code": 404});
    if let Some((_, g)) = res.split_once('.') {
        r["details"]["group"] = json!(g);
    }
    j(404, r)
}

/// Apply a (strategic-)merge or JSON patch that sets `spec.unschedulable`.
fn unschedulable_from_patch(body: &[u8]) -> Option<bool> {
    let v: Value = serde_json::from_slice(body).ok()?;
    if let Some(ops) = v.as_array() {
        return ops
            .iter()
            .find(|o| o["path"] == "/spec/unschedulable")
            .map(|o| o["op"] != "remove" && o["value"] == true);
    }
    let spec = v.get("spec")?.as_object()?;
    spec.get("unschedulable").map(|u| u == &Value::Bool(true))
}

pub async fn handle(srv: &Arc<Srv>, req: &Request, path: &str) -> Resp {
    let seg: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let m = req.method.as_str();
    match (m, seg.as_slice()) {
        ("GET", ["version"]) => return j(200, version_json()),
        ("GET", ["readyz" | "livez" | "healthz", ..]) => return (200, "text/plain; charset=utf-8", b"ok".to_vec()),
        ("GET", ["api"]) => {
            let addr = srv.self_url.trim_start_matches("https://").to_string();
            return j(
                200,
                json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}]}),
            );
        }
        ("GET", ["apis"]) => {
            return j(
                200,
                json!({"kind": "APIGroupList", "apiVersion": "v1",
                "groups": GROUPS.iter().map(|g| group_json(g)).collect::<Vec<_>>()}),
            );
        }
        ("GET", ["apis", g]) if GROUPS.contains(g) => {
            let mut v = group_json(g);
            v["kind"] = json!("APIGroup");
            v["apiVersion"] = json!("v1");
            return j(200, v);
        }
        ("GET", ["api", "v1"]) => return j(200, resource_list("", "v1").unwrap()),
        ("GET", ["apis", g, v]) => {
            return match resource_list(g, v) {
                Some(l) => j(200, l),
                None => status_err(404, "NotFound", "the server could not find the requested resource"),
            }
        }
        _ => {}
    }
    // resource paths: /api/v1/... or /apis/G/V/...
    let (group, version, rest) = match seg.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return status_err(404, "NotFound", "the server could not find the requested resource"),
    };
    let (ns, res, name) = match rest {
        [r] => (None, *r, None),
        ["namespaces", ns, r] => (Some(*ns), *r, None),
        ["namespaces", ns, r, n] => (Some(*ns), *r, Some(*n)),
        ["namespaces", ns, "pods", n, "eviction"] if group.is_empty() && m == "POST" => {
            return evict(srv, ns, n, &req.body).await;
        }
        [r, n] => (None, *r, Some(*n)),
        _ => return status_err(404, "NotFound", "the server could not find the requested resource"),
    };
    let Some(rdef) = RESOURCES.iter().find(|r| r.0 == group && r.1 == version && r.2 == res) else {
        return status_err(404, "NotFound", "the server could not find the requested resource");
    };
    let qualified = if group.is_empty() { res.to_string() } else { format!("{res}.{group}") };
    let table = wants_table(req);

    if res == "nodes" {
        return match (m, name) {
            ("GET", None) => {
                let st = srv.state.lock().unwrap();
                if table {
                    j(200, node_table(st.live_nodes().map(node_row).collect(), st.resource_version()))
                } else {
                    j(200, st.node_list())
                }
            }
            ("GET", Some(n)) => {
                let st = srv.state.lock().unwrap();
                match st.node(n) {
                    Some(rec) if table => j(200, node_table(vec![node_row(rec)], rec.updated.to_string())),
                    Some(rec) => j(200, cluster::node_json(rec)),
                    None => not_found("nodes", n),
                }
            }
            ("DELETE", Some(n)) => {
                // k3s's etcd member controller removes a deleted server's member (its finalizer
                // holds the Node until etcd agrees; here a delete etcd would refuse is refused).
                let member = srv.state.lock().unwrap().member_of_node(n);
                if let Some(url) = &member {
                    let members = srv.state.lock().unwrap().live_members();
                    let started = srv.started(&members).await;
                    let target = members.iter().zip(&started).any(|(m, s)| m == url && *s);
                    let count = started.iter().filter(|s| **s).count();
                    if let Some(why) = cluster::member_removal_refused(members.len(), count, target) {
                        return status_err(500, "InternalError", why);
                    }
                }
                let (ok, part) = {
                    let mut st = srv.state.lock().unwrap();
                    let ok = st.delete_node(n);
                    if let Some(url) = member.as_deref().filter(|_| ok) {
                        st.remove_member(url);
                        crate::util::log("info", &format!("Removed etcd member {url} of deleted node {n}"));
                    }
                    let mut part = st.part(Some(n), None, member.as_deref());
                    part.members.clear();
                    (ok, part)
                };
                if !ok {
                    return not_found("nodes", n);
                }
                push(srv, part, true).await;
                j(
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": n, "kind": "nodes", "uid": ""}}),
                )
            }
            ("PATCH", Some(n)) => {
                let want = unschedulable_from_patch(&req.body);
                let (found, part, obj) = {
                    let mut st = srv.state.lock().unwrap();
                    let found = match want {
                        Some(w) => st.cordon(n, w).is_some(),
                        None => st.node(n).is_some(),
                    };
                    let obj = st.node(n).map(cluster::node_json);
                    (found, st.part(Some(n), None, None), obj)
                };
                if !found {
                    return not_found("nodes", n);
                }
                push(srv, part, true).await;
                j(200, obj.unwrap_or(Value::Null))
            }
            _ => status_err(
                405,
                "MethodNotAllowed",
                &format!("STAND-IN: {m} on nodes is not supported by the k3s stand-in"),
            ),
        };
    }
    if let ("DELETE", "secrets", Some("kube-system"), Some(n)) = (m, res, ns, name) {
        return delete_password_secret(srv, n).await;
    }
    if res == "configmaps" && matches!(m, "POST" | "DELETE") {
        return write_object(srv, req, rdef, ns.unwrap_or("default"), name).await;
    }
    if m != "GET" {
        return status_err(
            405,
            "MethodNotAllowed",
            &format!("STAND-IN: {m} on {qualified} is not supported by the k3s stand-in (use k3s kubectl apply)"),
        );
    }
    let fields = match field_selector(req, res) {
        Ok(f) => f,
        Err(e) => return status_err(400, "BadRequest", &e),
    };
    let st = srv.state.lock().unwrap();
    let kind = rdef.3;
    let items: Vec<Value> = st
        .live_objects()
        .filter(|(k, _)| {
            let mut p = k.splitn(4, '/');
            let (g, kd, n_s) = (p.next().unwrap_or(""), p.next().unwrap_or(""), p.next().unwrap_or(""));
            g == group && kd == kind && ns.is_none_or(|want| !rdef.4 || want == n_s)
        })
        .filter(|(_, o)| !o.deleted)
        .map(|(_, o)| {
            let mut v = cluster::object_json(o);
            if rdef.4 && v["metadata"]["namespace"].is_null() {
                v["metadata"]["namespace"] = json!("default");
            }
            v
        })
        .chain(st.password_secrets().into_iter().filter(|_| kind == "Secret" && ns.is_none_or(|n| n == "kube-system")))
        .filter(|v| name.is_none_or(|n| v["metadata"]["name"].as_str() == Some(n)))
        .filter(|v| fields.iter().all(|(path, want)| v.pointer(path).and_then(Value::as_str).unwrap_or("") == want))
        .collect();
    let rv = st.resource_version();
    match name {
        Some(n) => match items.into_iter().next() {
            Some(o) if table => j(200, obj_table(&[o], rv)),
            Some(o) => j(200, o),
            None => not_found(&qualified, n),
        },
        None if table => j(200, obj_table(&items, rv)),
        None => j(
            200,
            json!({"apiVersion": gv(group, version), "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": rv}, "items": items}),
        ),
    }
}

/// The `fieldSelector` query parameter as (JSON pointer, value) pairs. Like the API server, a
/// field the resource cannot be selected by is refused, not ignored.
fn field_selector(req: &Request, res: &str) -> Result<Vec<(String, String)>, String> {
    let query = req.path.split_once('?').map(|(_, q)| q).unwrap_or("");
    let Some(raw) = query.split('&').find_map(|p| p.strip_prefix("fieldSelector=")) else { return Ok(vec![]) };
    let sel = crate::util::url_decode(raw);
    let mut out = vec![];
    for term in sel.split(',').filter(|t| !t.is_empty()) {
        let (field, value) = term
            .split_once("==")
            .or_else(|| term.split_once('='))
            .filter(|(f, _)| !f.ends_with('!'))
            .ok_or_else(|| format!("STAND-IN: only field=value selectors are supported, not {term:?}"))?;
        let path = match (field, res) {
            ("metadata.name", _) => "/metadata/name",
            ("metadata.namespace", _) => "/metadata/namespace",
            ("spec.nodeName", "pods") => "/spec/nodeName",
            _ => return Err(format!("field label not supported: {field}")),
        };
        out.push((path.to_string(), value.to_string()));
    }
    Ok(out)
}

/// `POST /api/v1/namespaces/NS/pods/NAME/eviction` (policy/v1 Eviction): 200 and the pod is
/// deleted, 429 while a PodDisruptionBudget forbids it, 500 when budgets are misconfigured.
async fn evict(srv: &Arc<Srv>, ns: &str, name: &str, body: &[u8]) -> Resp {
    let doc: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if doc["kind"] != "Eviction" || doc.pointer("/metadata/name").and_then(Value::as_str) != Some(name) {
        return status_err(400, "BadRequest", "name in URL does not match name in Eviction object");
    }
    let (r, part) = {
        let mut st = srv.state.lock().unwrap();
        let r = st.evict(ns, name);
        (r, st.part(None, Some(&format!("/Pod/{ns}/{name}")), None))
    };
    match r {
        Ok(node) => {
            crate::util::log("info", &format!("STAND-IN: evicted pod {ns}/{name} from node {node} (Eviction API)"));
            push(srv, part, true).await;
            j(
                200,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200,
                "details": {"name": name, "kind": "pods"}}),
            )
        }
        Err(cluster::Evict::NotFound) => not_found("pods", name),
        Err(cluster::Evict::Blocked(why)) => j(
            429,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 429,
            "reason": "TooManyRequests", "message": "Cannot evict pod as it would violate the pod's disruption budget.",
            "details": {"causes": [{"reason": "DisruptionBudget", "message": why}]}}),
        ),
        Err(cluster::Evict::Misconfigured(why)) => status_err(500, "InternalError", &why),
    }
}

/// Deleting a `<node>.node-password.k3s` secret, what lets a reflashed node rejoin under its
/// old name. Other secrets cannot be deleted through the stand-in.
async fn delete_password_secret(srv: &Arc<Srv>, secret: &str) -> Resp {
    let Some(node) = secret.strip_suffix(".node-password.k3s") else {
        return status_err(405, "MethodNotAllowed", "STAND-IN: only node-password secrets can be deleted");
    };
    let (ok, part) = {
        let mut st = srv.state.lock().unwrap();
        let ok = st.delete_password(node);
        (ok, st.part(Some(node), None, None))
    };
    if !ok {
        return not_found("secrets", secret);
    }
    push(srv, part, true).await;
    j(
        200,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": secret, "kind": "secrets", "uid": ""}}),
    )
}

/// Create (POST to the collection) or delete (DELETE on a name) an object through the API,
/// as the real kubectl's `create configmap` and `delete configmap` do.
async fn write_object(srv: &Arc<Srv>, req: &Request, rdef: &Res, ns: &str, name: Option<&str>) -> Resp {
    let (kind, res) = (rdef.3, rdef.2);
    let (part, reply) = {
        let mut st = srv.state.lock().unwrap();
        match (req.method.as_str(), name) {
            ("POST", None) => {
                let Ok(mut doc) = serde_json::from_slice::<Value>(&req.body) else {
                    return status_err(400, "BadRequest", "the body of the request was in an unknown format");
                };
                if doc["kind"] != kind {
                    return status_err(
                        400,
                        "BadRequest",
                        &format!("the API version in the data does not match the expected {kind}"),
                    );
                }
                doc["metadata"]["namespace"] = json!(ns);
                if let Some(m) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("creationTimestamp");
                }
                let (key, _) = match cluster::object_key(&doc) {
                    Ok(k) => k,
                    Err(e) => return status_err(422, "Invalid", &e),
                };
                let n = doc["metadata"]["name"].as_str().unwrap_or("").to_string();
                if st.object(&key).is_some() {
                    return j(
                        409,
                        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": format!("{res} \"{n}\" already exists"), "reason": "AlreadyExists",
                        "details": {"name": n, "kind": res}, "code": 409}),
                    );
                }
                if let Err(e) = st.apply(doc) {
                    return status_err(422, "Invalid", &e);
                }
                let obj = st.object(&key).map(cluster::object_json).unwrap_or(Value::Null);
                (st.part(None, Some(&key), None), (201, obj))
            }
            ("DELETE", Some(n)) => {
                let key = format!("{}/{kind}/{ns}/{n}", rdef.0);
                let Some(gone) = st.delete_object(&key) else { return not_found(res, n) };
                let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": n, "kind": res, "uid": gone.uid}});
                (st.part(None, Some(&key), None), (200, status))
            }
            _ => {
                return status_err(
                    405,
                    "MethodNotAllowed",
                    &format!("STAND-IN: {} on {res} is not supported", req.method),
                )
            }
        }
    };
    push(srv, part, true).await;
    j(reply.0, reply.1)
}
