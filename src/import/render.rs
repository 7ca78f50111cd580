//! The imported cluster as a commented cluster file: every value says which inventory line it came from.

use std::fmt::Write;

use super::mapping::{At, Imported, ImportedHost};

pub fn cluster_file(file: &str, c: &Imported) -> String {
    let from = |at: &At| format!("# from {file}:{}", at.line);
    let mut o = String::new();
    let _ = writeln!(o, "# pikube cluster file imported from {file} by `pikube import ansible`.");
    let _ = writeln!(
        o,
        "# `# from {file}:N` marks where a value came from; what could not be mapped was listed on stderr."
    );
    let _ = writeln!(
        o,
        "# Check it with `pikube check`; every key is described in README.md (\"Cluster file reference\")."
    );
    let _ = writeln!(o, "\nname: {}  # {}", scalar(&c.name), c.name_note);
    let shared: Vec<String> = ssh_lines(c.user.as_ref(), c.port.as_ref(), c.key.as_ref(), &from);
    if !shared.is_empty() {
        let _ = writeln!(o, "\nssh:");
        shared.iter().for_each(|l| o.push_str(&format!("  {l}\n")));
    }
    let _ = writeln!(o, "\nhosts:");
    for h in &c.hosts {
        host(&mut o, h, &from);
    }
    kubernetes(&mut o, c, &from);
    proxy_and_mirrors(&mut o, c, &from);
    o
}

fn host(o: &mut String, h: &ImportedHost, from: &impl Fn(&At) -> String) {
    let renamed = if h.name == h.from.value { String::new() } else { format!(" ({})", h.from.value) };
    let _ = writeln!(o, "  - name: {}  {}{renamed}", scalar(&h.name), from(&h.from));
    // Without ansible_host Ansible connects to the inventory name, and so does pikube.
    let origin = if h.address.value == h.from.value { " (the inventory name)" } else { " (ansible_host)" };
    let _ = writeln!(o, "    address: {}  {}{origin}", scalar(&h.address.value), from(&h.address));
    let _ = writeln!(o, "    role: {}  {} (group {})", h.role.as_str(), from(&h.role_from), h.role_from.value);
    for n in &h.notes {
        let _ = writeln!(o, "    # {n}");
    }
    let own = ssh_lines(h.user.as_ref(), h.port.as_ref(), h.key.as_ref(), from);
    if !own.is_empty() {
        let _ = writeln!(o, "    ssh:");
        own.iter().for_each(|l| o.push_str(&format!("      {l}\n")));
    }
}

fn ssh_lines(user: Option<&At>, port: Option<&At>, key: Option<&At>, from: &impl Fn(&At) -> String) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(u) = user {
        out.push(format!("user: {}  {}", scalar(&u.value), from(u)));
    }
    if let Some(p) = port {
        // mapping only keeps ports that parse as u16, so the number is written bare.
        out.push(format!("port: {}  {}", p.value, from(p)));
    }
    if let Some(k) = key {
        out.push(format!("key: {}  {}", scalar(&k.value), from(k)));
    }
    out
}

fn kubernetes(o: &mut String, c: &Imported, from: &impl Fn(&At) -> String) {
    let _ = writeln!(o, "\nkubernetes:\n  distribution: k3s");
    match c.vars.get("k3s_version") {
        Some(v) => {
            let _ = writeln!(o, "  version: {}  {} (k3s_version)", scalar(&v.value), from(v));
        }
        None => {
            let _ = writeln!(o, "  # version: v1.31.4+k3s1  # the inventory pins no k3s version; without one `up` prepares the hosts only");
        }
    }
    if let Some(e) = &c.endpoint {
        let _ = writeln!(o, "  endpoint:");
        if e.loadbalancer {
            let _ = writeln!(
                o,
                "    mode: loadbalancer  {} (HAProxy on the hosts of group {})",
                from(&e.from),
                e.from.value
            );
        } else {
            let _ = writeln!(o, "    mode: vip  # keepalived on the servers");
        }
        if let Some(v) = &e.vip {
            let _ = writeln!(o, "    address: {}  {} (apiserver_endpoint)", scalar(&v.value), from(v));
        }
    }
}

fn proxy_and_mirrors(o: &mut String, c: &Imported, from: &impl Fn(&At) -> String) {
    let get = |k: &str| c.vars.get(k);
    let http = get("http_proxy").map(|v| (v, "http_proxy")).or(get("proxy_url").map(|v| (v, "proxy_url")));
    let https = get("https_proxy").map(|v| (v, "https_proxy")).or(get("proxy_url").map(|v| (v, "proxy_url")));
    let no_proxy = get("no_proxy");
    if http.is_some() || https.is_some() || no_proxy.is_some() {
        let _ = writeln!(o, "\nproxy:");
        for (key, v) in [("http", http), ("https", https)] {
            if let Some((v, var)) = v {
                let _ = writeln!(o, "  {key}: {}  {} ({var})", scalar(&v.value), from(v));
            }
        }
        if let Some(v) = no_proxy {
            let items: Vec<String> = v.value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(scalar).collect();
            let _ = writeln!(o, "  no_proxy: [{}]  {} (no_proxy)", items.join(", "), from(v));
        }
    }
    if let Some(v) = get("docker_registry_mirror_url") {
        let _ = writeln!(
            o,
            "\nregistry_mirrors:\n  docker.io: [{}]  {} (docker_registry_mirror_url)",
            scalar(&v.value),
            from(v)
        );
    }
}

/// Plain when YAML cannot misread it, else double-quoted (JSON's escaping is valid YAML).
fn scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '/' || c == '.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "._/+-".contains(c))
        && !matches!(s.to_ascii_lowercase().as_str(), "true" | "false" | "yes" | "no" | "on" | "off" | "null")
        && s.parse::<f64>().is_err();
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}
