//! cloud-init NoCloud seed files (`user-data`, `meta-data`, `network-config`) for images that
//! boot with cloud-init (Ubuntu, HypriotOS, newer Raspberry Pi OS).

use super::node::{Network, NodeConfig};

/// A YAML double-quoted scalar: JSON string syntax is valid YAML and escapes everything needed.
fn q(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

pub fn user_data(n: &NodeConfig) -> String {
    let mut y = String::from("#cloud-config\n");
    y += &format!(
        "# Written by pikube: node {} (role {}) of cluster {}.\n",
        n.hostname,
        n.role.as_str(),
        n.cluster
    );
    y += &format!("hostname: {}\n", q(&n.hostname));
    y += "preserve_hostname: false\n";
    y += "manage_etc_hosts: true\n";
    // Keys only: pikube logs in with the cluster's SSH key.
    y += "ssh_pwauth: false\n";
    y += "disable_root: true\n";
    y += "users:\n";
    y += &format!("  - name: {}\n", q(&n.user));
    y += "    groups: [adm, sudo]\n";
    y += "    shell: /bin/bash\n";
    // The password is random unless given, so sudo must not ask for it.
    y += "    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n";
    if n.password_given {
        y += "    lock_passwd: false\n";
        y += &format!("    passwd: {}\n", q(&n.password_hash));
    } else {
        y += "    lock_passwd: true\n";
    }
    y += "    ssh_authorized_keys:\n";
    y += &format!("      - {}\n", q(&n.authorized_key));
    // Later pikube phases and humans can tell which cluster/role the card was made for.
    y += "write_files:\n";
    y += "  - path: /etc/pikube/node\n";
    y += "    permissions: \"0644\"\n";
    y += &format!(
        "    content: {}\n",
        q(&format!(
            "cluster={}\nrole={}\n",
            n.cluster,
            n.role.as_str()
        ))
    );
    y
}

pub fn meta_data(n: &NodeConfig) -> String {
    format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        q(&format!(
            "pikube-{}-{}-{}",
            n.cluster,
            n.hostname,
            n.fingerprint()
        )),
        q(&n.hostname)
    )
}

/// Netplan v2, as Ubuntu's own Pi images ship it (`eth0`, optional so boot does not wait).
pub fn network_config(n: &NodeConfig) -> String {
    let mut y = String::from("version: 2\nethernets:\n  eth0:\n    optional: true\n");
    match &n.network {
        Network::Dhcp => y += "    dhcp4: true\n",
        Network::Static {
            address,
            prefix,
            gateway,
            dns,
        } => {
            y += "    dhcp4: false\n";
            y += &format!("    addresses: [{}]\n", q(&format!("{address}/{prefix}")));
            y += &format!(
                "    routes:\n      - to: default\n        via: {}\n",
                q(&gateway.to_string())
            );
            let dns: Vec<String> = dns.iter().map(|d| q(&d.to_string())).collect();
            y += &format!("    nameservers:\n      addresses: [{}]\n", dns.join(", "));
        }
    }
    if let Some(w) = &n.wifi {
        y += "wifis:\n  wlan0:\n    optional: true\n    dhcp4: true\n";
        y += &format!("    regulatory-domain: {}\n", q(&w.country));
        y += "    access-points:\n";
        y += &format!("      {}:\n        password: {}\n", q(&w.ssid), q(&w.psk));
    }
    y
}
