//! The cached Debian base tree every node's disk is layered on.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use miette::{miette, IntoDiagnostic, Result, WrapErr};

use super::state::{Arch, CACHE_DIR};
use super::util::{run, run_logged};

pub const SUITE: &str = "bookworm";
/// The Debian mirror base trees are bootstrapped from and that nodes' sources name, as on a
/// real host (nodes cannot reach it; pikube's `packages.mirror` redirects them).
pub const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
const PACKAGES: &str = "systemd-sysv,dbus,openssh-server,iproute2,iputils-ping,netbase,sudo,\
                        ca-certificates,curl,procps,kmod,perl-base";

pub fn path(arch: Arch) -> PathBuf {
    Path::new(CACHE_DIR).join(format!("base-{SUITE}-{}", arch.debian()))
}

/// An exclusive lock on a cache entry, so concurrent `lab up`s build it once; released on drop.
pub struct CacheLock {
    _file: fs::File,
}

impl CacheLock {
    pub fn acquire(name: &str) -> Result<CacheLock> {
        fs::create_dir_all(CACHE_DIR).into_diagnostic().wrap_err_with(|| format!("creating {CACHE_DIR}"))?;
        let path = Path::new(CACHE_DIR).join(format!("{name}.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .into_diagnostic()
            .wrap_err_with(|| format!("opening {}", path.display()))?;
        file.lock().into_diagnostic().wrap_err_with(|| format!("locking {}", path.display()))?;
        Ok(CacheLock { _file: file })
    }
}

/// Returns the base tree, building it first if the cache has none.
pub fn ensure(arch: Arch) -> Result<PathBuf> {
    let done = path(arch);
    if done.is_dir() {
        return Ok(done);
    }
    let _lock = CacheLock::acquire(&format!("base-{SUITE}-{}", arch.debian()))?;
    // Another `lab up` may have finished it while we waited for the lock.
    if done.is_dir() {
        return Ok(done);
    }
    let tmp = done.with_extension("tmp");
    let log = done.with_extension("log");
    if tmp.exists() {
        // Left by an interrupted build; we hold the lock, so nobody else is using it.
        fs::remove_dir_all(&tmp).into_diagnostic().wrap_err_with(|| format!("removing stale {}", tmp.display()))?;
    }
    println!(
        "building the {SUITE}/{} base tree (once; debootstrap, {}) — log: {}",
        arch.debian(),
        match arch {
            Arch::Amd64 => "about a minute",
            Arch::Arm64 => "about 8 minutes under qemu-user",
        },
        log.display()
    );
    let started = Instant::now();
    let _ = fs::remove_file(&log);
    run_logged(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--arch={}", arch.debian()))
            .arg(format!("--include={PACKAGES}"))
            .arg(SUITE)
            .arg(&tmp)
            .arg(DEBIAN_MIRROR),
        &log,
    )
    .wrap_err("debootstrap of the lab base tree failed")?;
    fix_up(&tmp, arch, &log).wrap_err("preparing the lab base tree")?;
    fs::rename(&tmp, &done).into_diagnostic().wrap_err_with(|| format!("moving {} into place", tmp.display()))?;
    println!("base tree ready in {:.0?}: {}", started.elapsed(), done.display());
    Ok(done)
}

/// Turns a fresh debootstrap into a "fresh image": no identity of its own (machine id, host
/// keys come per node), networkd for the static lab address, key-only root and a `pi` user with
/// the default password and password-protected sudo, like a fresh Raspberry Pi image.
fn fix_up(root: &Path, arch: Arch, log: &Path) -> Result<()> {
    let chroot = |args: &[&str]| run_logged(Command::new("chroot").arg(root).args(args), log);
    match arch {
        Arch::Amd64 => chroot(&["systemctl", "enable", "systemd-networkd.service"])?,
        // Under qemu-user, networkd dies on an unsupported netlink protocol (the lab configures
        // arm64 nodes' eth0 from outside instead), and units with credentials fail to set them
        // up; clearing LoadCredential= lets them run.
        Arch::Arm64 => {
            for unit in
                ["systemd-sysusers.service", "systemd-tmpfiles-setup.service", "systemd-tmpfiles-setup-dev.service"]
            {
                let dir = root.join("etc/systemd/system").join(format!("{unit}.d"));
                fs::create_dir_all(&dir).into_diagnostic()?;
                fs::write(dir.join("pikube-lab-qemu-user.conf"), "[Service]\nLoadCredential=\n").into_diagnostic()?;
            }
        }
    }
    chroot(&["passwd", "--lock", "root"])?;
    chroot(&["useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", "pi"])?;
    let mut chpasswd = Command::new("chroot")
        .arg(root)
        .arg("chpasswd")
        .stdin(Stdio::piped())
        .spawn()
        .into_diagnostic()
        .wrap_err("running chpasswd in the base tree")?;
    chpasswd
        .stdin
        .take()
        .ok_or_else(|| miette!("chpasswd has no stdin"))?
        .write_all(b"pi:raspberry\n")
        .into_diagnostic()?;
    if !chpasswd.wait().into_diagnostic()?.success() {
        return Err(miette!("setting the pi user's password in the base tree failed"));
    }
    chroot(&["apt-get", "clean"])?;

    let write = |rel: &str, contents: &str| {
        let path = root.join(rel);
        fs::write(&path, contents).into_diagnostic().wrap_err_with(|| format!("writing {}", path.display()))
    };
    // Empty, not missing: systemd then takes nspawn's --uuid as this boot's machine id.
    write("etc/machine-id", "")?;
    let dbus_id = root.join("var/lib/dbus/machine-id");
    let _ = fs::remove_file(&dbus_id);
    std::os::unix::fs::symlink("/etc/machine-id", &dbus_id)
        .into_diagnostic()
        .wrap_err("linking the D-Bus machine id")?;
    for entry in fs::read_dir(root.join("etc/ssh")).into_diagnostic()? {
        let path = entry.into_diagnostic()?.path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("ssh_host_")) {
            fs::remove_file(&path).into_diagnostic()?;
        }
    }
    // Each node gets one ed25519 host key; naming it keeps sshd from complaining about the rest.
    write(
        "etc/ssh/sshd_config.d/pikube-lab.conf",
        "PermitRootLogin prohibit-password\nHostKey /etc/ssh/ssh_host_ed25519_key\n",
    )?;
    write("etc/hostname", "debian\n")?;
    write("etc/hosts", &hosts("debian"))?;
    // Package lists from the build would be stale and point at a mirror nodes cannot reach.
    run(Command::new("find").arg(root.join("var/lib/apt/lists")).args(["-maxdepth", "1", "-type", "f", "-delete"]))?;
    Ok(())
}

/// /etc/hosts as Debian and Raspberry Pi OS images write it.
pub fn hosts(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n\
         ff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n\n127.0.1.1\t{hostname}\n"
    )
}
