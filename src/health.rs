//! Host health for `status`: what kills Pi clusters before Kubernetes notices. Per host, one
//! script through `remote` reads the firmware's get_throttled bits (under-voltage, capping,
//! throttling: now and since boot), the SoC temperature, memory (MemAvailable, PSI), the free
//! space of the root file system and of k3s's data, the clock, and on servers the etcd member
//! list and, with kubeadm, the certificates' expiry (the distribution-specific parts: the
//! distribution gives their scripts). `reasons` judges them against the thresholds below
//! (documented in the README).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::distro::kubeadm::certs::{self, Certificates};
use crate::k3s::etcd::{self, Member};
use crate::remote::{quote, Cmd, Host};

/// SoC temperature (°C) from which a host is degraded: Pi firmware starts soft throttling at
/// 80 °C (Pi 3B+ and later) and throttles hard at 85 °C.
pub const HOT_C: f64 = 80.0;
/// Free space under which a file system is degraded, as a share and absolute: kubelet evicts
/// pods below 10% (`nodefs.available<10%`), and a small card with less than 1 GiB left is
/// days from full once logs and images grow.
pub const MIN_FREE_PCT: f64 = 10.0;
pub const MIN_FREE_BYTES: u64 = 1 << 30;
/// MemAvailable share under which a host is degraded (kubelet evicts at 100 MiB; this warns earlier).
pub const MIN_MEM_PCT: f64 = 10.0;
/// PSI `full avg60` (% of time every task stalled on memory) from which a host is thrashing.
pub const MEM_PRESSURE_FULL: f64 = 10.0;
/// Clock offset against this machine (s) from which a host is degraded: TLS and etcd leases
/// break on skewed clocks, and a Pi has no RTC, so a failed NTP sync starts it in the past.
pub const MAX_CLOCK_OFFSET_S: f64 = 2.0;
/// Days left from which a server's certificates make it degraded (kubeadm signs them for a
/// year; `up` renews them earlier, from `kubernetes.renew_certificates_days`).
pub const MIN_CERT_DAYS: u32 = 30;

/// The get_throttled bits (Raspberry Pi firmware): (bit, what, now or since boot).
const THROTTLE_BITS: [(u32, &str); 8] = [
    (0x1, "under-voltage now"),
    (0x2, "ARM frequency capped now"),
    (0x4, "throttled now"),
    (0x8, "soft temperature limit now"),
    (0x10000, "under-voltage since boot"),
    (0x20000, "ARM frequency capped since boot"),
    (0x40000, "throttled since boot"),
    (0x80000, "soft temperature limit since boot"),
];

#[derive(Debug, Clone, Default, Serialize)]
pub struct Health {
    /// get_throttled bits, when the firmware exposes them (a Raspberry Pi).
    pub throttled: Option<u32>,
    /// Decoded `throttled` bits.
    pub throttled_flags: Vec<&'static str>,
    pub soc_temp_c: Option<f64>,
    pub mem_total_kib: u64,
    pub mem_available_kib: u64,
    /// PSI memory `full avg60`, when the kernel has PSI.
    pub memory_pressure: Option<f64>,
    /// The root file system and k3s's data dir when it is another one.
    pub filesystems: Vec<FsSpace>,
    /// Seconds the host's clock is ahead (+) or behind (−) this machine.
    pub clock_offset_secs: f64,
    /// timedatectl's NTPSynchronized, when systemd-timedated answers.
    pub ntp_synchronized: Option<bool>,
    /// The etcd members this server's API lists (servers with embedded etcd only).
    pub etcd_members: Option<Vec<Member>>,
    /// Why a server that must run an etcd member (kubeadm) did not list the members.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_error: Option<String>,
    /// A kubeadm server's certificates and CAs with their expiry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificates: Option<Certificates>,
    /// Why a kubeadm server's certificates could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificates_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FsSpace {
    pub mount: String,
    pub size_bytes: u64,
    pub free_bytes: u64,
}

impl FsSpace {
    pub fn free_pct(&self) -> f64 {
        if self.size_bytes == 0 {
            return 100.0;
        }
        self.free_bytes as f64 * 100.0 / self.size_bytes as f64
    }
}

/// How a host's etcd member list is read (`distro::etcd_probe` says which for a server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdProbe {
    /// Not a server.
    None,
    /// A script printing the member list JSON, where no list only means no etcd (k3s on sqlite).
    Optional(String),
    /// The same, where the server always runs a member (kubeadm): no answer is a fault.
    Required(String),
}

/// Runs `script` (with a bound) so that its output, or else its error's last lines, lands in
/// section `name` or `name_error`.
fn bounded(name: &str, script: &str, secs: u32) -> String {
    format!(
        "e=$(mktemp); if out=$(timeout {secs} sh -c {} 2>\"$e\"); then sec {name}; printf '%s\\n' \"$out\"; \
         else sec {name}_error; tail -n 2 \"$e\"; fi; rm -f \"$e\"",
        quote(script)
    )
}

fn script(probe: &EtcdProbe, certs: Option<&str>) -> String {
    let etcd = match probe {
        EtcdProbe::None => String::new(),
        EtcdProbe::Optional(s) => s.clone(),
        EtcdProbe::Required(s) => format!(
            "if out=$(timeout 20 sh -c {} 2>&1); then printf '%s\\n' \"$out\"; else sec etcd_error; printf '%s\\n' \"$out\" | tail -n 2; fi",
            quote(s)
        ),
    };
    format!(
        r#"LC_ALL=C; export LC_ALL
sec() {{ echo "@@$1"; }}
sec now; date +%s.%N
sec throttled; f=/sys/devices/platform/soc/soc:firmware/get_throttled
if [ -r "$f" ]; then cat "$f"; elif command -v vcgencmd >/dev/null 2>&1; then vcgencmd get_throttled; fi
sec temp; cat /sys/class/thermal/thermal_zone0/temp 2>/dev/null
sec meminfo; grep -E '^(MemTotal|MemAvailable):' /proc/meminfo
sec psi_memory; cat /proc/pressure/memory 2>/dev/null
sec df; for d in / /var/lib/rancher; do [ -d "$d" ] && df -P -B1 "$d" | tail -n +2; done
sec ntp; timedatectl show -p NTPSynchronized --value 2>/dev/null
sec etcd; {etcd}
echo
{certs}
sec now2; date +%s.%N
sec end
"#,
        certs = certs.map(|c| bounded("certs", c, 60)).unwrap_or_default(),
    )
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Reads a host's health in one round trip; `certs` prints a kubeadm server's certificates.
pub async fn gather(host: &Host, etcd: &EtcdProbe, certs: Option<&str>) -> Result<Health, String> {
    let before = now();
    let cmd = Cmd::read_script(script(etcd, certs)).timeout(Duration::from_secs(90));
    let out = host.run_ok(&cmd).await.map_err(|e| e.to_string())?;
    let after = now();
    parse(&out, (before + after) / 2.0).ok_or_else(|| format!("{}: unexpected health output", host.name))
}

fn parse(out: &str, local_mid: f64) -> Option<Health> {
    let mut sections: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut current = None;
    for line in out.lines() {
        if let Some(name) = line.strip_prefix("@@") {
            current = Some(name.trim());
            sections.entry(name.trim()).or_default();
        } else if let Some(c) = current {
            sections.entry(c).or_default().push(line);
        }
    }
    sections.get("end")?;
    let first = |k: &str| sections.get(k).and_then(|v| v.first()).map(|s| s.trim()).filter(|s| !s.is_empty());
    let throttled = first("throttled").and_then(|s| {
        let hex = s.trim_start_matches("throttled=");
        u32::from_str_radix(hex.strip_prefix("0x").unwrap_or(hex), 16).ok()
    });
    let meminfo = |key: &str| {
        sections.get("meminfo")?.iter().find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
    };
    let mut filesystems: Vec<FsSpace> = Vec::new();
    for l in sections.get("df").into_iter().flatten() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let [_, size, _, free, _, mount] = f[..] {
            let fs =
                FsSpace { mount: mount.to_string(), size_bytes: size.parse().ok()?, free_bytes: free.parse().ok()? };
            if !filesystems.iter().any(|x| x.mount == fs.mount) {
                filesystems.push(fs);
            }
        }
    }
    Some(Health {
        throttled,
        throttled_flags: THROTTLE_BITS
            .iter()
            .filter(|(b, _)| throttled.is_some_and(|t| t & b != 0))
            .map(|x| x.1)
            .collect(),
        soc_temp_c: first("temp").and_then(|t| t.parse::<f64>().ok()).map(|m| m / 1000.0),
        mem_total_kib: meminfo("MemTotal:").unwrap_or(0),
        mem_available_kib: meminfo("MemAvailable:").unwrap_or(0),
        memory_pressure: sections.get("psi_memory").and_then(|v| {
            v.iter().find_map(|l| {
                l.strip_prefix("full ")?.split_whitespace().find_map(|w| w.strip_prefix("avg60=")?.parse().ok())
            })
        }),
        filesystems,
        // The host's clock at the middle of the script, as `local_mid` is of the round trip:
        // the etcd member list can take seconds.
        clock_offset_secs: {
            let start = first("now")?.parse::<f64>().ok()?;
            (start + first("now2").and_then(|e| e.parse::<f64>().ok()).unwrap_or(start)) / 2.0 - local_mid
        },
        ntp_synchronized: first("ntp").map(|s| s == "yes"),
        etcd_members: sections.get("etcd").and_then(|v| etcd::parse(&v.join("\n"))).filter(|m| !m.is_empty()),
        etcd_error: error(sections.get("etcd_error")),
        certificates: sections.get("certs").and_then(|v| Certificates::parse(&v.join("\n")).ok().flatten()),
        certificates_error: error(sections.get("certs_error"))
            .or_else(|| sections.get("certs").and_then(|v| Certificates::parse(&v.join("\n")).err())),
    })
}

/// The last lines of a failed probe (`no answer` when it said nothing).
fn error(lines: Option<&Vec<&str>>) -> Option<String> {
    lines.map(|v| match v.join(" ").trim() {
        "" => "no answer".to_string(),
        e => e.to_string(),
    })
}

impl Health {
    /// Why this host is degraded (empty: healthy). `own_ips` are the host's addresses, to find
    /// its own etcd member.
    pub fn reasons(&self, server: bool, own_ips: &[&str]) -> Vec<String> {
        let mut why = Vec::new();
        if let Some(t) = self.throttled.filter(|t| *t != 0) {
            why.push(format!(
                "{} (get_throttled 0x{t:x}: check the power supply and cooling)",
                self.throttled_flags.join(", ")
            ));
        }
        if let Some(c) = self.soc_temp_c.filter(|c| *c >= HOT_C) {
            why.push(format!("SoC {c:.1} °C (≥ {HOT_C} °C: the firmware throttles at 85 °C)"));
        }
        if self.mem_total_kib > 0 {
            let pct = self.mem_available_kib as f64 * 100.0 / self.mem_total_kib as f64;
            if pct < MIN_MEM_PCT {
                why.push(format!(
                    "memory: {} MiB available ({pct:.0}% < {MIN_MEM_PCT}%)",
                    self.mem_available_kib / 1024
                ));
            }
        }
        if let Some(p) = self.memory_pressure.filter(|p| *p >= MEM_PRESSURE_FULL) {
            why.push(format!("memory pressure: all tasks stalled {p:.0}% of the last minute (PSI full avg60)"));
        }
        for fs in &self.filesystems {
            if fs.free_pct() < MIN_FREE_PCT || fs.free_bytes < MIN_FREE_BYTES {
                why.push(format!(
                    "{} nearly full: {} free of {} ({:.0}%)",
                    fs.mount,
                    bytes(fs.free_bytes),
                    bytes(fs.size_bytes),
                    fs.free_pct()
                ));
            }
        }
        if self.clock_offset_secs.abs() >= MAX_CLOCK_OFFSET_S {
            let (dir, ntp) = (if self.clock_offset_secs > 0.0 { "ahead of" } else { "behind" }, self.ntp_synchronized);
            let ntp = if ntp == Some(false) { "; NTP is not synchronized" } else { "" };
            why.push(format!("clock {:.1}s {dir} this machine{ntp}", self.clock_offset_secs.abs()));
        }
        if let (true, Some(e)) = (server, &self.etcd_error) {
            why.push(format!("etcd member list failed: {e}"));
        }
        if let (true, Some(members)) = (server, &self.etcd_members) {
            if !members.iter().any(|m| own_ips.contains(&m.host.as_str())) {
                why.push(format!("not an etcd member (members: {})", names(members)));
            }
        }
        if let Some(e) = &self.certificates_error {
            why.push(format!("certificates not read: {e}"));
        }
        if let Some(c) = &self.certificates {
            why.extend(certs::reasons(c, MIN_CERT_DAYS));
        }
        why
    }
}

fn names(members: &[Member]) -> String {
    members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// Bytes as `1.2 GiB` / `340 MiB`.
pub fn bytes(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", n >> 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str =
        "@@now\n1000.2\n@@throttled\n50005\n@@temp\n85012\n@@meminfo\nMemTotal: 1000000 kB\nMemAvailable: 50000 kB\n\
        @@psi_memory\nsome avg10=0.00 avg60=1.00 avg300=0.00 total=1\nfull avg10=0.00 avg60=12.50 avg300=0.00 total=1\n\
        @@df\n/dev/root 268435456 0 20971520 93% /\n/dev/root 268435456 0 20971520 93% /\n@@ntp\nno\n\
        @@etcd\n{\"members\":[{\"name\":\"node1-ab\",\"peerURLs\":[\"https://10.0.0.1:2380\"]}]}\n@@end\n";

    #[test]
    fn every_threshold_gives_a_reason() {
        let h = parse(OUT, 990.0).expect("parses");
        assert_eq!(
            h.throttled_flags,
            ["under-voltage now", "throttled now", "under-voltage since boot", "throttled since boot"]
        );
        assert_eq!(h.filesystems.len(), 1, "one file system listed once");
        let why = h.reasons(true, &["10.0.0.2"]).join("\n");
        for want in [
            "get_throttled 0x50005",
            "SoC 85.0 °C",
            "memory: 48 MiB available",
            "PSI full",
            "/ nearly full: 20 MiB free of 256 MiB (8%)",
            "clock 10.2s ahead of this machine; NTP is not synchronized",
            "not an etcd member (members: node1-ab)",
        ] {
            assert!(why.contains(want), "{want} missing from:\n{why}");
        }
        assert!(h.reasons(true, &["10.0.0.1"]).iter().all(|r| !r.contains("etcd")));
    }

    #[test]
    fn a_kubeadm_servers_certificates_make_it_degraded_within_30_days() {
        let cert = |left: i64| {
            format!(
                r#"{{"certificates":[{{"name":"apiserver","expirationDate":"2026-12-06T17:00:00Z","residualTime":{left},"caName":"ca","missing":false}}],"certificateAuthorities":null}}"#
            )
        };
        let soon = parse(&format!("@@now\n5\n@@certs\n{}\n@@end\n", cert(82_800)), 5.0).unwrap();
        assert_eq!(soon.certificates.as_ref().map(|c| c.certificates.len()), Some(1));
        assert_eq!(
            soon.reasons(true, &[]),
            ["certificates expire within 30 days: apiserver expires in 23 h (`pikube up` renews them; it is due from kubernetes.renew_certificates_days)"]
        );
        let later = parse(&format!("@@now\n5\n@@certs\n{}\n@@end\n", cert(31 * 86_400)), 5.0).unwrap();
        assert!(later.reasons(true, &[]).is_empty());
        let failed = parse("@@now\n5\n@@certs_error\nerror: open /etc/kubernetes/pki/ca.crt\n@@end\n", 5.0).unwrap();
        assert_eq!(failed.reasons(true, &[]), ["certificates not read: error: open /etc/kubernetes/pki/ca.crt"]);
        let garbled = parse("@@now\n5\n@@certs\nnot json\n@@end\n", 5.0).unwrap();
        assert!(garbled.reasons(true, &[])[0].starts_with("certificates not read: unexpected"), "{garbled:?}");
        assert!(parse("@@now\n5\n@@certs\n\n@@end\n", 5.0).unwrap().reasons(true, &[]).is_empty(), "no control plane");
    }

    #[test]
    fn a_bounded_probe_lands_in_its_section_or_its_error_section() {
        let run = |script: &str| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("sec() {{ echo \"@@$1\"; }}\n{}", bounded("certs", script, 5)))
                .output()
                .expect("run sh");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert_eq!(run("echo '{\"a\": 1}'"), "@@certs\n{\"a\": 1}\n");
        assert_eq!(run("echo out; echo 'it failed' >&2; exit 3"), "@@certs_error\nit failed\n");
    }

    #[test]
    fn a_healthy_host_and_a_host_without_pi_files() {
        let out =
            "@@now\n5.0\n@@throttled\n0\n@@temp\n48300\n@@meminfo\nMemTotal: 1000000 kB\nMemAvailable: 700000 kB\n\
                   @@df\n/dev/sda2 34359738368 0 17179869184 50% /\n@@end\n";
        let h = parse(out, 5.0).unwrap();
        assert!(h.reasons(false, &[]).is_empty(), "{:?}", h.reasons(false, &[]));
        let bare = parse("@@now\n5\n@@end\n", 5.0).unwrap();
        assert_eq!((bare.throttled, bare.soc_temp_c, bare.etcd_members.is_none()), (None, None, true));
        assert!(parse("@@now\n5\n", 5.0).is_none(), "cut-off output");
        let slow = parse("@@now\n10\n@@now2\n20\n@@end\n", 15.0).unwrap();
        assert_eq!(slow.clock_offset_secs, 0.0, "a slow script is no clock offset");
        let down = parse("@@now\n5\n@@etcd\n@@etcd_error\nerror: pod etcd-n1 not found\n@@end\n", 5.0).unwrap();
        assert_eq!(down.reasons(true, &[]), ["etcd member list failed: error: pod etcd-n1 not found"]);
        assert!(down.reasons(false, &[]).is_empty());
    }
}
