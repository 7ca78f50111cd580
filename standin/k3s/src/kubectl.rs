//! `k3s kubectl` subset: get nodes / get KIND [NAME] / delete node / drain / cordon /
//! uncordon / apply -f / version. Talks to the server named in the kubeconfig
//! (`--kubeconfig`, $KUBECONFIG, else /etc/rancher/k3s/k3s.yaml, like `k3s kubectl`).

use crate::cluster;
use crate::net::{self, Trust};
use crate::util::{self, human_age, table};
use serde_json::{json, Value};

struct Kube {
    url: String,
    ca: String,
    token: String,
    /// client certificate + key (PEM) from client-certificate(-data) / client-key(-data)
    ident: Option<net::Identity>,
}

/// `<key>-data` (base64) or `<key>` (a file path) from a kubeconfig user or cluster.
fn data_or_file(v: &Value, key: &str) -> Result<Option<String>, String> {
    if let Some(b) = v.get(format!("{key}-data")).and_then(Value::as_str) {
        let raw = util::b64dec(b).ok_or(format!("error: bad {key}-data"))?;
        return Ok(Some(String::from_utf8(raw).map_err(|e| e.to_string())?));
    }
    match v.get(key).and_then(Value::as_str) {
        Some(f) => std::fs::read_to_string(f).map(Some).map_err(|e| format!("error: unable to read {key} {f}: {e}")),
        None => Ok(None),
    }
}

fn load_kubeconfig(path: &str) -> Result<Kube, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("error: stat {path}: {e}"))?;
    let v: Value =
        serde_saphyr::from_str(&text).map_err(|e| format!("error: error loading config file \"{path}\": {e}"))?;
    let cluster = v.pointer("/clusters/0/cluster").ok_or("error: no clusters in kubeconfig")?;
    let url = cluster.get("server").and_then(Value::as_str).ok_or("error: no server in kubeconfig")?.to_string();
    let ca = data_or_file(cluster, "certificate-authority")?.ok_or("error: no certificate-authority-data")?;
    let user = v.pointer("/users/0/user").cloned().unwrap_or(Value::Null);
    let token = user.get("token").and_then(Value::as_str).unwrap_or("").to_string();
    let ident = match (data_or_file(&user, "client-certificate")?, data_or_file(&user, "client-key")?) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err("error: client-certificate and client-key must be given together".into()),
    };
    Ok(Kube { url, ca, token, ident })
}

impl Kube {
    async fn call(&self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Value), String> {
        let bearer = (!self.token.is_empty()).then_some(self.token.as_str());
        let r =
            net::request_as(&self.url, &Trust::Ca(self.ca.clone()), self.ident.as_ref(), method, path, bearer, body)
                .await
                .map_err(|e| {
                    let hp = self.url.trim_start_matches("https://").trim_end_matches('/');
                    if e.contains("refused") || e.contains("dial tcp") {
                        format!(
                            "The connection to the server {hp} was refused - did you specify the right host or port?"
                        )
                    } else {
                        format!("Unable to connect to the server: {e}")
                    }
                })?;
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if r.status == 401 {
            return Err("error: You must be logged in to the server (Unauthorized)".into());
        }
        Ok((r.status, v))
    }
}

fn server_error(v: &Value) -> String {
    let reason = v.get("reason").and_then(Value::as_str).unwrap_or("InternalError");
    let msg = v.get("message").and_then(Value::as_str).unwrap_or("unknown error");
    format!("Error from server ({reason}): {msg}")
}

struct Args {
    positional: Vec<String>,
    output: Option<String>,
    kubeconfig: Option<String>,
    files: Vec<String>,
    flags: Vec<String>,
}

/// Split kubectl args. `allowed` = verb-specific flags (long names without --).
fn parse(verb: &str, args: &[String], allowed: &[&str]) -> Result<Args, String> {
    let mut a = Args { positional: vec![], output: None, kubeconfig: None, files: vec![], flags: vec![] };
    let mut i = 0;
    while i < args.len() {
        let s = &args[i];
        let take = |i: &mut usize, inline: Option<&str>| -> Result<String, String> {
            if let Some(v) = inline {
                return Ok(v.to_string());
            }
            *i += 1;
            args.get(*i).cloned().ok_or_else(|| format!("error: flag needs an argument: {s}"))
        };
        if let Some(body) = s.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            match name {
                "kubeconfig" => a.kubeconfig = Some(take(&mut i, inline)?),
                "output" => a.output = Some(take(&mut i, inline)?),
                "filename" if allowed.contains(&"filename") => a.files.push(take(&mut i, inline)?),
                "namespace" | "context" | "server" | "request-timeout" => {
                    take(&mut i, inline)?;
                }
                n if allowed.contains(&n) => {
                    let needs_value = matches!(
                        n,
                        "timeout"
                            | "grace-period"
                            | "pod-selector"
                            | "selector"
                            | "chunk-size"
                            | "skip-wait-for-delete-timeout"
                            | "field-manager"
                    );
                    let v = if needs_value { take(&mut i, inline)? } else { inline.unwrap_or("true").to_string() };
                    a.flags.push(format!("{n}={v}"));
                }
                _ => return Err(format!("error: unknown flag: --{name}\nSee 'kubectl {verb} --help' for usage.")),
            }
        } else if s.starts_with('-') && s.len() > 1 {
            let (name, inline) = (&s[1..2], if s.len() > 2 { Some(s[2..].trim_start_matches('=')) } else { None });
            match name {
                "o" => a.output = Some(take(&mut i, inline)?),
                "f" if allowed.contains(&"filename") => a.files.push(take(&mut i, inline)?),
                "n" => {
                    take(&mut i, inline)?;
                }
                "A" if verb == "get" => {}
                _ => {
                    return Err(format!(
                        "error: unknown shorthand flag: '{name}' in {s}\nSee 'kubectl {verb} --help' for usage."
                    ))
                }
            }
        } else {
            a.positional.push(s.clone());
        }
        i += 1;
    }
    Ok(a)
}

pub async fn run(args: &[String]) -> i32 {
    match run_inner(args).await {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

async fn run_inner(args: &[String]) -> Result<String, String> {
    // global flags before the verb
    let mut idx = 0;
    let mut pre = vec![];
    while idx < args.len() && args[idx].starts_with('-') {
        pre.push(args[idx].clone());
        if !args[idx].contains('=') && matches!(args[idx].as_str(), "--kubeconfig" | "-n" | "--namespace") {
            idx += 1;
            if let Some(v) = args.get(idx) {
                pre.push(v.clone());
            }
        }
        idx += 1;
    }
    let Some(verb) = args.get(idx).cloned() else {
        return Ok("kubectl controls the Kubernetes cluster manager (k3s STAND-IN subset: get, delete, drain, cordon, uncordon, label, taint, apply, version).\n".into());
    };
    let mut rest = pre;
    rest.extend(args[idx + 1..].iter().cloned());
    let allowed: &[&str] = match verb.as_str() {
        "get" => &["all-namespaces", "show-labels", "no-headers", "ignore-not-found"],
        "delete" => &["ignore-not-found", "wait", "now", "force", "grace-period", "timeout"],
        "drain" => &["ignore-daemonsets", "delete-emptydir-data", "delete-local-data", "force", "timeout", "grace-period", "disable-eviction", "pod-selector", "selector", "skip-wait-for-delete-timeout", "dry-run", "chunk-size"],
        "cordon" | "uncordon" => &["dry-run", "selector"],
        "label" | "taint" => &["overwrite", "dry-run"],
        "apply" => &["filename", "server-side", "force-conflicts", "field-manager", "validate"],
        "version" => &["client"],
        other => return Err(format!("error: unknown command \"{other}\" for \"kubectl\"\n\nDid you mean this?\n\tget\n\nRun 'kubectl --help' for usage.")),
    };
    let a = parse(&verb, &rest, allowed)?;
    if verb == "version" && a.flags.iter().any(|f| f.starts_with("client=")) {
        return Ok(format!("Client Version: {}\nKustomize Version: (standin)\n", cluster::VERSION));
    }
    let kc_path = a
        .kubeconfig
        .clone()
        .or_else(|| std::env::var("KUBECONFIG").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "/etc/rancher/k3s/k3s.yaml".into());
    let kube = load_kubeconfig(&kc_path)?;
    match verb.as_str() {
        "version" => Ok(format!("Client Version: {v}\nServer Version: {v}\n", v = cluster::VERSION)),
        "get" => get(&kube, &a).await,
        "delete" => {
            let (kind, names) = a
                .positional
                .split_first()
                .ok_or("error: You must provide one or more resources by argument or filename.")?;
            let node = cluster::kind_matches(kind, "Node", "");
            if !node && !cluster::kind_matches(kind, "Secret", "") {
                return Err(format!(
                    "error: STAND-IN kubectl can only delete nodes and node-password secrets, not {kind:?}"
                ));
            }
            if names.is_empty() {
                return Err("error: resource(s) were provided, but no name was specified".into());
            }
            let ignore = a.flags.iter().any(|f| f == "ignore-not-found=true");
            let mut out = String::new();
            for n in names {
                let (path, what) = if node {
                    (format!("/api/v1/nodes/{n}"), "node")
                } else {
                    (format!("/api/v1/namespaces/kube-system/secrets/{n}"), "secret")
                };
                let (code, v) = kube.call("DELETE", &path, b"").await?;
                match code {
                    200 => out.push_str(&format!("{what} \"{n}\" deleted\n")),
                    404 if ignore => {}
                    _ => {
                        print!("{out}");
                        return Err(server_error(&v));
                    }
                }
            }
            Ok(out)
        }
        "cordon" | "uncordon" => {
            let n = a.positional.first().ok_or(format!("error: USAGE: {verb} NODE [flags]"))?;
            let (code, v) = kube
                .call(
                    "POST",
                    &format!("/v1-standin/cordon/{n}"),
                    json!({"unschedulable": verb == "cordon"}).to_string().as_bytes(),
                )
                .await?;
            if code != 200 {
                return Err(server_error(&v));
            }
            let changed = v.get("changed").and_then(Value::as_bool).unwrap_or(true);
            Ok(format!("node/{n} {}\n", if changed { format!("{verb}ed") } else { format!("already {verb}ed") }))
        }
        "label" | "taint" => {
            let (kind, rest) = a.positional.split_first().ok_or(format!("error: USAGE: {verb} node NAME ..."))?;
            if !cluster::kind_matches(kind, "Node", "") {
                return Err(format!("error: STAND-IN kubectl can only {verb} nodes, not {kind:?}"));
            }
            let (n, changes) =
                rest.split_first().ok_or("error: resource(s) were provided, but no name was specified")?;
            if changes.is_empty() {
                return Err(format!("error: at least one {verb} update is required"));
            }
            let overwrite = a.flags.iter().any(|f| f == "overwrite=true");
            let body = if verb == "label" {
                let mut labels = serde_json::Map::new();
                for c in changes {
                    match (c.split_once('='), c.strip_suffix('-')) {
                        (Some((k, v)), _) => {
                            crate::cli::validate_label(c)?;
                            labels.insert(k.to_string(), json!(v));
                        }
                        (None, Some(k)) => {
                            labels.insert(k.to_string(), Value::Null);
                        }
                        _ => return Err(format!("error: invalid label spec: {c}")),
                    }
                }
                json!({"labels": labels, "overwrite": overwrite})
            } else {
                let (mut add, mut remove) = (vec![], vec![]);
                for c in changes {
                    match c.strip_suffix('-') {
                        Some(r) => remove.push(r.to_string()),
                        None => {
                            crate::cli::validate_taint(c)?;
                            add.push(c.clone());
                        }
                    }
                }
                json!({"add": add, "remove": remove, "overwrite": overwrite})
            };
            let (code, v) = kube.call("POST", &format!("/v1-standin/{verb}/{n}"), body.to_string().as_bytes()).await?;
            if code != 200 {
                return Err(server_error(&v));
            }
            let changed = v.get("changed").and_then(Value::as_bool).unwrap_or(true);
            let done = if verb == "label" { "labeled" } else { "tainted" };
            Ok(format!("node/{n} {}{done}\n", if changed { "" } else { "not " }))
        }
        "drain" => drain(&kube, &a).await,
        "apply" => {
            if a.files.is_empty() {
                return Err("error: must specify one of -f and -k".into());
            }
            let mut out = String::new();
            for f in &a.files {
                let text = if f == "-" {
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|e| e.to_string())?;
                    s
                } else {
                    std::fs::read_to_string(f).map_err(|_| format!("error: the path \"{f}\" does not exist"))?
                };
                let docs: Vec<Value> =
                    serde_saphyr::from_multiple(&text).map_err(|e| format!("error: error parsing {f}: {e}"))?;
                for d in docs.into_iter().filter(|d| !d.is_null()) {
                    let items = if d.get("kind").and_then(Value::as_str) == Some("List") {
                        d.get("items").and_then(Value::as_array).cloned().unwrap_or_default()
                    } else {
                        vec![d]
                    };
                    for item in items {
                        cluster::object_key(&item)?;
                        let (code, v) =
                            kube.call("POST", "/v1-standin/apply", &serde_json::to_vec(&item).unwrap()).await?;
                        if code != 200 {
                            print!("{out}");
                            return Err(server_error(&v));
                        }
                        out.push_str(&format!(
                            "{} {}\n",
                            v["name"].as_str().unwrap_or("?"),
                            v["result"].as_str().unwrap_or("?")
                        ));
                    }
                }
            }
            Ok(out)
        }
        _ => unreachable!(),
    }
}

/// `kubectl drain` as the real client does it, through the API: cordon (PATCH), list the
/// node's pods (`fieldSelector=spec.nodeName=…`), refuse what the flags do not allow, evict
/// each through the Eviction API (retrying every 5s while a PodDisruptionBudget says 429),
/// wait until they are gone, all within `--timeout` (0: no limit).
async fn drain(kube: &Kube, a: &Args) -> Result<String, String> {
    let n = a.positional.first().ok_or("error: USAGE: drain NODE [flags]")?;
    let flag = |f: &str| a.flags.iter().find_map(|x| x.strip_prefix(&format!("{f}="))).map(str::to_string);
    let on = |f: &str| flag(f).as_deref() == Some("true");
    let timeout = match flag("timeout") {
        Some(t) => parse_duration(&t)
            .ok_or(format!("error: invalid argument \"{t}\" for \"--timeout\" flag: time: invalid duration \"{t}\""))?,
        None => std::time::Duration::ZERO,
    };
    let (code, v) = kube.call("GET", &format!("/api/v1/nodes/{n}"), b"").await?;
    if code != 200 {
        return Err(server_error(&v));
    }
    if v.pointer("/spec/unschedulable") == Some(&json!(true)) {
        println!("node/{n} already cordoned");
    } else {
        let (code, v) =
            kube.call("PATCH", &format!("/api/v1/nodes/{n}"), br#"{"spec":{"unschedulable":true}}"#).await?;
        if code != 200 {
            return Err(server_error(&v));
        }
        println!("node/{n} cordoned");
    }
    let (code, v) = kube.call("GET", &format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{n}"), b"").await?;
    if code != 200 {
        return Err(server_error(&v));
    }
    let pods = v["items"].as_array().cloned().unwrap_or_default();
    let (evict, refused) = drain_filter(
        &pods,
        on("ignore-daemonsets"),
        on("force"),
        on("delete-emptydir-data") || on("delete-local-data"),
    );
    if !refused.is_empty() {
        return Err(format!(
            "error: unable to drain node \"{n}\" due to error: {e}, continuing command...\nThere are pending nodes to be drained:\n {n}\n{e}",
            e = refused.join(", ")
        ));
    }
    let started = std::time::Instant::now();
    for (ns, pod) in &evict {
        if let Err(e) = evict_one(kube, ns, pod, started, timeout).await {
            println!("There are pending pods in node \"{n}\" when an error occurred: {e}\npod/{pod}");
            return Err(format!(
                "error: unable to drain node \"{n}\" due to error: {e}, continuing command...\nThere are pending nodes to be drained:\n {n}\n{e}"
            ));
        }
        println!("pod/{pod} evicted");
    }
    Ok(format!("node/{n} drained\n"))
}

/// Splits a node's pods into (namespace, name) to evict and the reasons drain refuses, as
/// kubectl's filters do: mirror pods are skipped; DaemonSet pods need --ignore-daemonsets, pods
/// without a controller --force, pods with emptyDir volumes --delete-emptydir-data.
fn drain_filter(pods: &[Value], ignore_ds: bool, force: bool, emptydir: bool) -> (Vec<(String, String)>, Vec<String>) {
    let (mut evict, mut refused) = (vec![], vec![]);
    for p in pods {
        let id = |k: &str| p.pointer(&format!("/metadata/{k}")).and_then(Value::as_str).unwrap_or("").to_string();
        let (ns, name) = (id("namespace"), id("name"));
        if p.pointer("/metadata/annotations/kubernetes.io~1config.mirror").is_some() {
            continue;
        }
        let owners = p.pointer("/metadata/ownerReferences").and_then(Value::as_array).cloned().unwrap_or_default();
        let controller = owners.iter().find(|o| o["controller"] == true);
        if controller.is_some_and(|c| c["kind"] == "DaemonSet") {
            if ignore_ds {
                eprintln!("Warning: ignoring DaemonSet-managed Pods: {ns}/{name}");
            } else {
                refused.push(format!(
                    "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): {ns}/{name}"
                ));
            }
            continue;
        }
        if controller.is_none() && !force {
            refused
                .push(format!("cannot delete Pods that declare no controller (use --force to override): {ns}/{name}"));
            continue;
        }
        let vols = p.pointer("/spec/volumes").and_then(Value::as_array).cloned().unwrap_or_default();
        if vols.iter().any(|v| v.get("emptyDir").is_some()) && !emptydir {
            refused.push(format!(
                "cannot delete Pods with local storage (use --delete-emptydir-data to override): {ns}/{name}"
            ));
            continue;
        }
        evict.push((ns, name));
    }
    (evict, refused)
}

/// One eviction, retried every 5s while refused with 429 (each attempt says so, as kubectl's
/// does), then waited for until the pod is gone.
async fn evict_one(
    kube: &Kube,
    ns: &str,
    pod: &str,
    started: std::time::Instant,
    timeout: std::time::Duration,
) -> Result<(), String> {
    let body = json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": ns}});
    let late = || !timeout.is_zero() && started.elapsed() >= timeout;
    let global = || format!("global timeout reached: {}s", timeout.as_secs());
    loop {
        println!("evicting pod {ns}/{pod}");
        let (code, v) = kube
            .call("POST", &format!("/api/v1/namespaces/{ns}/pods/{pod}/eviction"), body.to_string().as_bytes())
            .await?;
        match code {
            200 | 201 | 404 => break,
            429 => {
                if late() {
                    return Err(format!("error when evicting pods/\"{pod}\" -n \"{ns}\": {}", global()));
                }
                let msg = v["message"].as_str().unwrap_or("");
                eprintln!("error when evicting pods/\"{pod}\" -n \"{ns}\" (will retry after 5s): {msg}");
                let left = if timeout.is_zero() {
                    std::time::Duration::from_secs(5)
                } else {
                    timeout.saturating_sub(started.elapsed())
                };
                tokio::time::sleep(left.min(std::time::Duration::from_secs(5))).await;
            }
            _ => return Err(format!("error when evicting pods/\"{pod}\" -n \"{ns}\": {}", server_error(&v))),
        }
    }
    loop {
        let (code, _) = kube.call("GET", &format!("/api/v1/namespaces/{ns}/pods/{pod}"), b"").await?;
        if code == 404 {
            return Ok(());
        }
        if late() {
            return Err(format!(
                "error when waiting for pod \"{pod}\" in namespace \"{ns}\" to terminate: {}",
                global()
            ));
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// A Go duration as kubectl takes it (`90s`, `5m`, `1h30m`, `0`).
fn parse_duration(s: &str) -> Option<std::time::Duration> {
    if s == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let (mut total, mut num) = (0f64, String::new());
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        if c == 'm' && chars.peek() == Some(&'s') {
            unit.push(chars.next()?);
        }
        let v: f64 = num.parse().ok()?;
        num.clear();
        total += v * match unit.as_str() {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        any = true;
    }
    (any && num.is_empty()).then(|| std::time::Duration::from_secs_f64(total))
}

fn node_status(n: &Value) -> String {
    let ready = n
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready").map(|c| c["status"] == "True"));
    let mut s = if ready == Some(true) { "Ready".to_string() } else { "NotReady".to_string() };
    if n.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        s.push_str(",SchedulingDisabled");
    }
    s
}

fn age_of(v: &Value) -> String {
    let ts = v.pointer("/metadata/creationTimestamp").and_then(Value::as_str).unwrap_or("");
    let secs = parse_rfc3339(ts).map(|t| util::now_unix().saturating_sub(t)).unwrap_or(0);
    human_age(secs)
}

pub fn parse_rfc3339(s: &str) -> Option<u64> {
    // YYYY-MM-DDTHH:MM:SSZ
    let y: i64 = s.get(0..4)?.parse().ok()?;
    let m: i64 = s.get(5..7)?.parse().ok()?;
    let d: i64 = s.get(8..10)?.parse().ok()?;
    let hh: u64 = s.get(11..13)?.parse().ok()?;
    let mm: u64 = s.get(14..16)?.parse().ok()?;
    let ss: u64 = s.get(17..19)?.parse().ok()?;
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days as u64 * 86400 + hh * 3600 + mm * 60 + ss)
}

async fn get(kube: &Kube, a: &Args) -> Result<String, String> {
    let kind = a.positional.first().ok_or("You must specify the type of resource to get. Use \"kubectl api-resources\" for a complete list of supported resources.\n\nerror: Required resource not specified.")?;
    let name = a.positional.get(1);
    let out = a.output.as_deref().unwrap_or("");
    if !matches!(out, "" | "wide" | "json" | "name") {
        return Err(format!("error: unable to match a printer suitable for the output format \"{out}\", allowed formats are: json,name,wide (STAND-IN subset)"));
    }
    let no_headers = a.flags.iter().any(|f| f == "no-headers=true");
    if cluster::kind_matches(kind, "Node", "") {
        let (code, v) = match name {
            Some(n) => kube.call("GET", &format!("/api/v1/nodes/{n}"), b"").await?,
            None => kube.call("GET", "/api/v1/nodes", b"").await?,
        };
        // As kubectl: a named object that is not there prints nothing, in every format.
        if code == 404 && a.flags.iter().any(|f| f == "ignore-not-found=true") {
            return Ok(String::new());
        }
        if code != 200 {
            return Err(server_error(&v));
        }
        if out == "json" {
            return Ok(serde_json::to_string_pretty(&v).unwrap() + "\n");
        }
        let items = match name {
            Some(_) => vec![v],
            None => v["items"].as_array().cloned().unwrap_or_default(),
        };
        if out == "name" {
            return Ok(items
                .iter()
                .map(|n| format!("node/{}\n", n["metadata"]["name"].as_str().unwrap_or("")))
                .collect());
        }
        if items.is_empty() {
            eprintln!("No resources found");
            return Ok(String::new());
        }
        let mut rows = vec![];
        if !no_headers {
            let mut h: Vec<String> =
                ["NAME", "STATUS", "ROLES", "AGE", "VERSION"].iter().map(|s| s.to_string()).collect();
            if out == "wide" {
                h.extend(
                    ["INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"]
                        .iter()
                        .map(|s| s.to_string()),
                );
            }
            rows.push(h);
        }
        for n in &items {
            let labels: std::collections::BTreeMap<String, String> =
                serde_json::from_value(n["metadata"]["labels"].clone()).unwrap_or_default();
            let mut r = vec![
                n["metadata"]["name"].as_str().unwrap_or("").to_string(),
                node_status(n),
                cluster::roles(&labels),
                age_of(n),
                n["status"]["nodeInfo"]["kubeletVersion"].as_str().unwrap_or("").to_string(),
            ];
            if out == "wide" {
                let addr = |t: &str| {
                    n["status"]["addresses"]
                        .as_array()
                        .and_then(|a| a.iter().find(|x| x["type"] == t))
                        .and_then(|x| x["address"].as_str())
                        .unwrap_or("<none>")
                        .to_string()
                };
                r.push(addr("InternalIP"));
                r.push(addr("ExternalIP"));
                for k in ["osImage", "kernelVersion", "containerRuntimeVersion"] {
                    r.push(n["status"]["nodeInfo"][k].as_str().unwrap_or("").to_string());
                }
            }
            rows.push(r);
        }
        return Ok(table(&rows));
    }
    // applied objects
    let (code, v) = kube.call("GET", "/v1-standin/objects", b"").await?;
    if code != 200 {
        return Err(server_error(&v));
    }
    let all = v["items"].as_array().cloned().unwrap_or_default();
    let matching: Vec<&Value> = all
        .iter()
        .filter(|it| {
            let key = it["key"].as_str().unwrap_or("");
            let mut p = key.splitn(4, '/');
            let (g, k) = (p.next().unwrap_or(""), p.next().unwrap_or(""));
            cluster::kind_matches(kind, k, g)
                && name.is_none_or(|n| it["object"]["metadata"]["name"].as_str() == Some(n.as_str()))
        })
        .map(|it| &it["object"])
        .collect();
    if let Some(n) = name {
        let Some(obj) = matching.first() else {
            if a.flags.iter().any(|f| f == "ignore-not-found=true") {
                return Ok(String::new());
            }
            let res = kind.to_ascii_lowercase();
            let res = if res.ends_with('s') { res } else { res + "s" };
            return Err(format!("Error from server (NotFound): {res} \"{n}\" not found"));
        };
        return match out {
            "json" => Ok(serde_json::to_string_pretty(obj).unwrap() + "\n"),
            "name" => Ok(format!("{}\n", display_name(obj))),
            _ => Ok(table(&[vec!["NAME".into(), "AGE".into()], vec![n.clone(), age_of(obj)]])),
        };
    }
    match out {
        "json" => Ok(serde_json::to_string_pretty(
            &json!({"apiVersion": "v1", "kind": "List", "items": matching, "metadata": {"resourceVersion": ""}}),
        )
        .unwrap()
            + "\n"),
        "name" => Ok(matching.iter().map(|o| format!("{}\n", display_name(o))).collect()),
        _ => {
            if matching.is_empty() {
                eprintln!("No resources found in default namespace.");
                return Ok(String::new());
            }
            let mut rows = vec![vec!["NAME".to_string(), "AGE".to_string()]];
            for o in matching {
                rows.push(vec![o["metadata"]["name"].as_str().unwrap_or("").into(), age_of(o)]);
            }
            Ok(table(&rows))
        }
    }
}

fn display_name(o: &Value) -> String {
    cluster::object_key(o).map(|(_, d)| d).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }
    #[test]
    fn kubectl_flag_strictness() {
        let a = parse(
            "drain",
            &s(&["n1", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=60s", "--force"]),
            &["ignore-daemonsets", "delete-emptydir-data", "force", "timeout"],
        )
        .unwrap();
        assert_eq!(a.positional, s(&["n1"]));
        assert!(a.flags.contains(&"timeout=60s".to_string()));
        let e = parse("drain", &s(&["n1", "--bogus"]), &["force"]).err().unwrap();
        assert!(e.starts_with("error: unknown flag: --bogus"));
        let a = parse("get", &s(&["nodes", "-o", "wide"]), &[]).unwrap();
        assert_eq!(a.output.as_deref(), Some("wide"));
        let a = parse("get", &s(&["nodes", "-ojson"]), &[]).unwrap();
        assert_eq!(a.output.as_deref(), Some("json"));
        assert_eq!(parse_duration("60s"), Some(std::time::Duration::from_secs(60)));
        assert_eq!(parse_duration("1m30s"), Some(std::time::Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Some(std::time::Duration::ZERO));
        assert!(parse_duration("60").is_none() && parse_duration("abc").is_none());
    }
    #[tokio::test(flavor = "current_thread")]
    async fn unknown_verb() {
        let e = run_inner(&s(&["foo"])).await.unwrap_err();
        assert!(e.starts_with("error: unknown command \"foo\" for \"kubectl\""));
    }
    #[test]
    fn rfc_roundtrip() {
        assert_eq!(parse_rfc3339(&util::rfc3339(1_700_000_000)), Some(1_700_000_000));
    }
}
