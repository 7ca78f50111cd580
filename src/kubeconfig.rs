//! The user's kubeconfig: k3s writes one for `https://127.0.0.1:6443` with everything named
//! `default`; pikube points it at the cluster's endpoint and names it after the cluster, so it
//! works from any machine and merges into `~/.kube/config` without clobbering other clusters.

use serde_json::{json, Value};

/// Rewrites k3s's kubeconfig for `cluster` at `server_url`.
pub fn from_k3s(remote_yaml: &str, cluster: &str, server_url: &str) -> Result<Value, String> {
    let mut doc: Value =
        serde_saphyr::from_str(remote_yaml).map_err(|e| format!("the server's kubeconfig is not valid YAML: {e}"))?;
    let first = |doc: &Value, list: &str, field: &str| -> Result<Value, String> {
        doc.get(list)
            .and_then(Value::as_array)
            .and_then(|l| l.first())
            .and_then(|e| e.get(field))
            .cloned()
            .ok_or_else(|| format!("the server's kubeconfig has no {list}"))
    };
    let mut cluster_entry = first(&doc, "clusters", "cluster")?;
    cluster_entry["server"] = json!(server_url);
    let user_entry = first(&doc, "users", "user")?;
    doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": cluster, "cluster": cluster_entry}],
        "users": [{"name": cluster, "user": user_entry}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": cluster}}],
        "current-context": cluster,
    });
    Ok(doc)
}

/// Merges `new` into `existing`: entries with the same name are replaced, others kept;
/// the current context becomes the new cluster's.
pub fn merge(existing: Option<Value>, new: &Value) -> Value {
    let Some(mut base) = existing.filter(|v| v.is_object()) else { return new.clone() };
    for list in ["clusters", "users", "contexts"] {
        let incoming = new.get(list).and_then(Value::as_array).cloned().unwrap_or_default();
        let mut entries = base.get(list).and_then(Value::as_array).cloned().unwrap_or_default();
        for e in incoming {
            let name = e.get("name").cloned();
            entries.retain(|x| x.get("name") != name.as_ref());
            entries.push(e);
        }
        base[list] = Value::Array(entries);
    }
    base["current-context"] = new.get("current-context").cloned().unwrap_or(Value::Null);
    for (k, v) in [("apiVersion", "v1"), ("kind", "Config")] {
        if base.get(k).is_none() {
            base[k] = json!(v);
        }
    }
    base
}

pub fn to_yaml(doc: &Value) -> Result<String, String> {
    serde_saphyr::to_string(doc).map_err(|e| format!("cannot write the kubeconfig: {e}"))
}

pub fn parse(text: &str) -> Result<Value, String> {
    serde_saphyr::from_str(text).map_err(|e| format!("not a kubeconfig: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const K3S: &str = "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: Q0E=\n    server: https://127.0.0.1:6443\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\nkind: Config\npreferences: {}\nusers:\n- name: default\n  user:\n    client-certificate-data: Q0VSVA==\n    client-key-data: S0VZ\n";

    #[test]
    fn endpoint_and_names_are_rewritten() {
        let doc = from_k3s(K3S, "pis", "https://10.0.0.5:6443").unwrap();
        assert_eq!(doc["clusters"][0]["cluster"]["server"], "https://10.0.0.5:6443");
        assert_eq!(doc["clusters"][0]["cluster"]["certificate-authority-data"], "Q0E=");
        assert_eq!(doc["users"][0]["user"]["client-key-data"], "S0VZ");
        assert_eq!(doc["current-context"], "pis");
        let back = parse(&to_yaml(&doc).unwrap()).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn merge_replaces_same_names_and_keeps_others() {
        let other = json!({"apiVersion": "v1", "kind": "Config", "clusters": [{"name": "work", "cluster": {"server": "https://w"}}],
            "users": [{"name": "work", "user": {}}], "contexts": [{"name": "work", "context": {"cluster": "work", "user": "work"}}],
            "current-context": "work"});
        let new = from_k3s(K3S, "pis", "https://10.0.0.5:6443").unwrap();
        let once = merge(Some(other), &new);
        let twice = merge(Some(once.clone()), &new);
        assert_eq!(once, twice, "merging again changes nothing");
        assert_eq!(once["clusters"].as_array().unwrap().len(), 2);
        assert_eq!(once["current-context"], "pis");
    }
}
