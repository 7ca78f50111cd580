//! cloud-init NoCloud seed files (`user-data`, `meta-data`, `network-config`) for images that
//! boot with cloud-init (Ubuntu, HypriotOS, newer Raspberry Pi OS).

use super::node::{Network, NodeConfig};

/// A YAML double-quoted scalar: JSON string syntax is valid YAML and escapes everything needed.
fn q(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The heredoc delimiter of the scrub step: no line of the YAML pikube writes can equal it
/// (every string in it is JSON-quoted on one line).
const EOF_MARK: &str = "PIKUBE_SCRUB_EOF";

/// The seed's user-data: everything cloud-init needs once, then a `runcmd` step that replaces
/// the seed files on the boot partition with copies without the password hash and Wi-Fi
/// passphrase (the FAT partition is world-readable and the card may leave the Pi). meta-data
/// and its instance-id stay, so later boots see the same instance and re-run nothing.
pub fn user_data(n: &NodeConfig) -> String {
    let mut y = user_data_with(n, true);
    y += &format!("{}\n", seed_marker(n));
    // runcmd runs once per instance, at the end of the first boot (users and network are done).
    y += "runcmd:\n";
    y += &format!("  - {}\n", q(&scrub_script(n)));
    y
}

/// Identifies the unscrubbed seed this card was made with: the scrub step touches no other.
fn seed_marker(n: &NodeConfig) -> String {
    format!("# pikube seed {}", n.fingerprint())
}

/// Rewrites the seed where it is (`/boot/firmware` on Ubuntu and Raspberry Pi OS, `/boot` on
/// older images): a temporary file, then a rename, so a power cut leaves one or the other.
fn scrub_script(n: &NodeConfig) -> String {
    let user_data = user_data_with(n, false);
    let network = network_config_with(n, false);
    format!(
        r#"for d in /boot/firmware /boot; do
  grep -qsxF '{marker}' "$d/user-data" || continue
  cat >"$d/user-data.pikube-tmp" <<'{EOF_MARK}'
{user_data}{EOF_MARK}
  cat >"$d/network-config.pikube-tmp" <<'{EOF_MARK}'
{network}{EOF_MARK}
  sync
  mv -f "$d/user-data.pikube-tmp" "$d/user-data"
  mv -f "$d/network-config.pikube-tmp" "$d/network-config"
  sync
done
"#,
        marker = seed_marker(n),
    )
}

/// user-data, with or without the password hash. The rest stays: cloud-init re-applies the
/// hostname settings on every boot.
fn user_data_with(n: &NodeConfig, secrets: bool) -> String {
    let mut y = String::from("#cloud-config\n");
    y += &format!("# Written by pikube: node {} (role {}) of cluster {}.\n", n.hostname, n.role.as_str(), n.cluster);
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
        if secrets {
            y += &format!("    passwd: {}\n", q(&n.password_hash));
        } else {
            y += "    # passwd: removed from the card after the first boot\n";
        }
    } else {
        y += "    lock_passwd: true\n";
    }
    y += "    ssh_authorized_keys:\n";
    y += &format!("      - {}\n", q(&n.authorized_key));
    // Later pikube phases and humans can tell which cluster/role the card was made for.
    y += "write_files:\n";
    y += "  - path: /etc/pikube/node\n";
    y += "    permissions: \"0644\"\n";
    y += &format!("    content: {}\n", q(&format!("cluster={}\nrole={}\n", n.cluster, n.role.as_str())));
    y
}

pub fn meta_data(n: &NodeConfig) -> String {
    format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        q(&format!("pikube-{}-{}-{}", n.cluster, n.hostname, n.fingerprint())),
        q(&n.hostname)
    )
}

/// Netplan v2, as Ubuntu's own Pi images ship it (`eth0`, optional so boot does not wait).
pub fn network_config(n: &NodeConfig) -> String {
    network_config_with(n, true)
}

/// Without secrets, the Wi-Fi section goes whole: an access point without its passphrase
/// would read as an open network, should the seed ever be applied again.
fn network_config_with(n: &NodeConfig, secrets: bool) -> String {
    let mut y = String::from("version: 2\nethernets:\n  eth0:\n    optional: true\n");
    match &n.network {
        Network::Dhcp => y += "    dhcp4: true\n",
        Network::Static { address, prefix, gateway, dns } => {
            y += "    dhcp4: false\n";
            y += &format!("    addresses: [{}]\n", q(&format!("{address}/{prefix}")));
            y += &format!("    routes:\n      - to: default\n        via: {}\n", q(&gateway.to_string()));
            let dns: Vec<String> = dns.iter().map(|d| q(&d.to_string())).collect();
            y += &format!("    nameservers:\n      addresses: [{}]\n", dns.join(", "));
        }
    }
    if let (Some(w), false) = (&n.wifi, secrets) {
        y += &format!("# Wi-Fi {} was set up on the first boot; its passphrase is not kept here.\n", q(&w.ssid));
    } else if let Some(w) = &n.wifi {
        y += "wifis:\n  wlan0:\n    optional: true\n    dhcp4: true\n";
        y += &format!("    regulatory-domain: {}\n", q(&w.country));
        y += "    access-points:\n";
        y += &format!("      {}:\n        password: {}\n", q(&w.ssid), q(&w.psk));
    }
    y
}
