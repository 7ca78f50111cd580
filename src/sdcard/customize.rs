//! Per-node first-boot customisation of a written image or card: find the boot partition,
//! detect what the OS supports, write the files. Shared by `image prepare` and `flash`.

use std::fs::{File, OpenOptions};
use std::path::Path;

use super::cloudinit;
use super::fat::BootFs;
use super::node::NodeConfig;
use super::partition::{self, Table};
use super::rpios;

/// Kernel flags k3s/kubeadm need on Raspberry Pi kernels (memory cgroup is off by default).
pub const CGROUP_FLAGS: [&str; 3] = ["cgroup_enable=cpuset", "cgroup_enable=memory", "cgroup_memory=1"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    CloudInit,
    RpiFirstRun,
}

impl Method {
    pub fn describe(self) -> &'static str {
        match self {
            Method::CloudInit => "cloud-init NoCloud (user-data, meta-data, network-config)",
            Method::RpiFirstRun => "Raspberry Pi OS first run (ssh, userconf.txt, firstrun.sh)",
        }
    }
}

/// What was found and done, for the user.
pub struct Report {
    pub table: Table,
    pub partition: usize,
    pub method: Method,
    pub written: Vec<&'static str>,
}

/// Decides the customisation method from the boot partition's root directory and cmdline.txt.
pub fn detect(names: &[String], cmdline: &str) -> Result<Method, String> {
    let missing: Vec<&str> =
        ["cmdline.txt", "config.txt"].into_iter().filter(|f| !names.iter().any(|n| n == f)).collect();
    if !missing.is_empty() {
        return Err(format!(
            "the boot partition has no {}: not a Raspberry Pi boot partition pikube can customise",
            missing.join(" and no ")
        ));
    }
    let seeds = ["user-data", "meta-data", "network-config"];
    if names.iter().any(|n| seeds.contains(&n.as_str())) || cmdline.contains("ds=nocloud") {
        Ok(Method::CloudInit)
    } else {
        Ok(Method::RpiFirstRun)
    }
}

/// cmdline.txt is one line: add the cgroup flags once, and the first-run tokens (last, because
/// firstrun.sh cuts everything from ` systemd.run` on) when asked.
pub fn edit_cmdline(cmdline: &str, first_run: bool) -> String {
    let line = cmdline.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    let mut tokens: Vec<&str> = line.split_whitespace().filter(|t| !rpios::is_run_token(t)).collect();
    for flag in CGROUP_FLAGS {
        if !tokens.contains(&flag) {
            tokens.push(flag);
        }
    }
    if first_run {
        tokens.extend(rpios::RUN_TOKENS);
    }
    format!("{}\n", tokens.join(" "))
}

fn io_ctx(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Customises the image file or card at `target` for one node.
pub fn apply(target: &Path, node: &NodeConfig) -> Result<Report, String> {
    let shown = target.display().to_string();
    let mut file: File = OpenOptions::new()
        .read(true)
        .write(true)
        .open(target)
        .map_err(|e| format!("cannot open {shown} for writing: {e}"))?;
    let layout = partition::read_layout(&mut file).map_err(|e| format!("{shown}: {e}"))?;
    let part = partition::boot_partition(&mut file, &layout).map_err(|e| format!("{shown}: {e}"))?;
    let fs = BootFs::open(file, &part)
        .map_err(|e| format!("{shown}: boot partition {} is not a readable FAT filesystem: {e}", part.index))?;
    let names = fs.root_names().map_err(io_ctx("cannot list the boot partition"))?;
    let cmdline_raw = fs.read("cmdline.txt").map_err(io_ctx("cannot read cmdline.txt"))?.unwrap_or_default();
    let cmdline = String::from_utf8(cmdline_raw).map_err(|_| "cmdline.txt is not text".to_string())?;
    let method = detect(&names, &cmdline).map_err(|e| format!("{shown}: {e}"))?;
    let mut written = Vec::new();
    let mut put = |name: &'static str, content: &[u8]| -> Result<(), String> {
        fs.write(name, content).map_err(|e| format!("cannot write {name} to the boot partition: {e}"))?;
        written.push(name);
        Ok(())
    };
    match method {
        Method::CloudInit => {
            put("user-data", cloudinit::user_data(node).as_bytes())?;
            put("meta-data", cloudinit::meta_data(node).as_bytes())?;
            put("network-config", cloudinit::network_config(node).as_bytes())?;
            put("cmdline.txt", edit_cmdline(&cmdline, false).as_bytes())?;
        }
        Method::RpiFirstRun => {
            put("ssh", b"")?;
            put("userconf.txt", rpios::userconf(node).as_bytes())?;
            put(rpios::FIRSTRUN, rpios::firstrun(node).as_bytes())?;
            put("cmdline.txt", edit_cmdline(&cmdline, true).as_bytes())?;
        }
    }
    fs.finish().map_err(io_ctx("cannot flush the boot partition"))?;
    Ok(Report { table: layout.table, partition: part.index, method, written })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_edits_are_idempotent_and_keep_run_tokens_last() {
        let base = "console=tty1 root=PARTUUID=1-02 rootwait\n";
        let once = edit_cmdline(base, true);
        assert_eq!(edit_cmdline(&once, true), once);
        assert!(once.ends_with("systemd.unit=kernel-command-line.target\n"));
        assert_eq!(once.matches("cgroup_memory=1").count(), 1);
        // Switching to cloud-init drops the first-run tokens.
        let ci = edit_cmdline(&once, false);
        assert!(!ci.contains("systemd.run"));
        assert_eq!(
            ci,
            "console=tty1 root=PARTUUID=1-02 rootwait cgroup_enable=cpuset cgroup_enable=memory cgroup_memory=1\n"
        );
    }

    #[test]
    fn detection_names_what_is_missing() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let err = detect(&names(&["config.txt"]), "").unwrap_err();
        assert!(err.contains("no cmdline.txt"), "{err}");
        let err = detect(&names(&[]), "").unwrap_err();
        assert!(err.contains("no cmdline.txt and no config.txt"), "{err}");
        assert_eq!(detect(&names(&["cmdline.txt", "config.txt"]), "quiet").unwrap(), Method::RpiFirstRun);
        assert_eq!(detect(&names(&["cmdline.txt", "config.txt"]), "ds=nocloud;s=/boot/").unwrap(), Method::CloudInit);
        assert_eq!(detect(&names(&["cmdline.txt", "config.txt", "user-data"]), "").unwrap(), Method::CloudInit);
    }
}
