//! Raspberry Pi OS (Bookworm) without cloud-init: the files rpi-imager writes. `ssh` enables
//! sshd, `userconf.txt` creates the user, and `firstrun.sh` (run once through `systemd.run=` on
//! the kernel command line, then removed) does the rest.

use super::node::{Network, NodeConfig};

pub const FIRSTRUN: &str = "firstrun.sh";
/// The kernel command line tokens rpi-imager uses; firstrun.sh strips them again after its run.
pub const RUN_TOKENS: [&str; 3] = [
    "systemd.run=/boot/firmware/firstrun.sh",
    "systemd.run_success_action=reboot",
    "systemd.unit=kernel-command-line.target",
];

pub fn is_run_token(t: &str) -> bool {
    t.starts_with("systemd.run") || t == "systemd.unit=kernel-command-line.target"
}

pub fn userconf(n: &NodeConfig) -> String {
    format!("{}:{}\n", n.user, n.password_hash)
}

/// A single-quoted shell word.
fn sq(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub fn firstrun(n: &NodeConfig) -> String {
    let host = sq(&n.hostname);
    let user = sq(&n.user);
    let key = sq(&n.authorized_key);
    let hash = sq(&n.password_hash);
    let mut s = format!(
        r#"#!/bin/bash
# Written by pikube: first boot of node {hostname} (role {role}) of cluster {cluster}.
# Runs once from the kernel command line, then removes itself (it may hold secrets).
set +e

NEW_HOSTNAME={host}
NEW_USER={user}
AUTHORIZED_KEY={key}
PASSWORD_HASH={hash}

CURRENT_HOSTNAME=$(tr -d " \t\n\r" </etc/hostname)
if [ -f /usr/lib/raspberrypi-sys-mods/imager_custom ]; then
   /usr/lib/raspberrypi-sys-mods/imager_custom set_hostname "$NEW_HOSTNAME"
else
   echo "$NEW_HOSTNAME" >/etc/hostname
   sed -i "s/127.0.1.1.*$CURRENT_HOSTNAME/127.0.1.1\t$NEW_HOSTNAME/g" /etc/hosts
fi

FIRSTUSER=$(getent passwd 1000 | cut -d: -f1)
if [ -f /usr/lib/userconf-pi/userconf ]; then
   /usr/lib/userconf-pi/userconf "$NEW_USER" "$PASSWORD_HASH"
else
   echo "$FIRSTUSER:$PASSWORD_HASH" | chpasswd -e
   if [ -n "$FIRSTUSER" ] && [ "$FIRSTUSER" != "$NEW_USER" ]; then
      usermod -l "$NEW_USER" "$FIRSTUSER"
      usermod -m -d "/home/$NEW_USER" "$NEW_USER"
      groupmod -n "$NEW_USER" "$FIRSTUSER"
   fi
fi
rm -f /boot/firmware/userconf.txt
HOME_DIR=$(getent passwd "$NEW_USER" | cut -d: -f6)
install -o "$NEW_USER" -g "$NEW_USER" -m 700 -d "$HOME_DIR/.ssh"
printf '%s\n' "$AUTHORIZED_KEY" >"$HOME_DIR/.ssh/authorized_keys"
chown "$NEW_USER:$NEW_USER" "$HOME_DIR/.ssh/authorized_keys"
chmod 600 "$HOME_DIR/.ssh/authorized_keys"
# pikube drives the node with sudo; the password is unknown to it.
echo "$NEW_USER ALL=(ALL) NOPASSWD:ALL" >/etc/sudoers.d/010_pikube-nopasswd
chmod 440 /etc/sudoers.d/010_pikube-nopasswd
install -d -m 755 /etc/ssh/sshd_config.d
printf 'PasswordAuthentication no\nKbdInteractiveAuthentication no\n' >/etc/ssh/sshd_config.d/10-pikube.conf
systemctl enable ssh

install -d -m 755 /etc/pikube
printf 'cluster=%s\nrole=%s\n' {cluster_q} {role_q} >/etc/pikube/node
"#,
        hostname = n.hostname,
        role = n.role.as_str(),
        cluster = n.cluster.replace('\n', " "),
        cluster_q = sq(&n.cluster),
        role_q = sq(n.role.as_str()),
    );
    if let Network::Static { address, prefix, gateway, dns } = &n.network {
        let dns: Vec<String> = dns.iter().map(|d| format!("{d};")).collect();
        s += &format!(
            r#"
# Static address for NetworkManager (Bookworm's network stack).
install -d -m 755 /etc/NetworkManager/system-connections
cat >/etc/NetworkManager/system-connections/pikube-eth0.nmconnection <<'NMEOF'
[connection]
id=pikube-eth0
type=ethernet
interface-name=eth0
autoconnect=true

[ipv4]
method=manual
address1={address}/{prefix},{gateway}
dns={dns}

[ipv6]
method=auto
NMEOF
chmod 600 /etc/NetworkManager/system-connections/pikube-eth0.nmconnection
"#,
            dns = dns.concat()
        );
    }
    if let Some(w) = &n.wifi {
        let ssid = sq(&w.ssid);
        let psk = sq(&w.psk);
        let country = sq(&w.country);
        s += &format!(
            r#"
WIFI_SSID={ssid}
WIFI_PSK={psk}
WIFI_COUNTRY={country}
if [ -f /usr/lib/raspberrypi-sys-mods/imager_custom ]; then
   /usr/lib/raspberrypi-sys-mods/imager_custom set_wlan "$WIFI_SSID" "$WIFI_PSK" "$WIFI_COUNTRY"
else
   install -d -m 755 /etc/NetworkManager/system-connections
   umask 077
   cat >/etc/NetworkManager/system-connections/pikube-wifi.nmconnection <<NMEOF
[connection]
id=pikube-wifi
type=wifi
interface-name=wlan0
autoconnect=true

[wifi]
mode=infrastructure
ssid=$WIFI_SSID

[wifi-security]
key-mgmt=wpa-psk
psk=$WIFI_PSK

[ipv4]
method=auto
NMEOF
   chmod 600 /etc/NetworkManager/system-connections/pikube-wifi.nmconnection
   command -v raspi-config >/dev/null && raspi-config nonint do_wifi_country "$WIFI_COUNTRY"
   rfkill unblock wifi
fi
"#
        );
    }
    s += r#"
rm -f /boot/firmware/firstrun.sh
sed -i 's| systemd.run.*||g' /boot/firmware/cmdline.txt
exit 0
"#;
    s
}
