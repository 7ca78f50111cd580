//! The lab package mirror: a partial, unsigned Debian repository with what pikube installs on
//! nodes, because nodes have no route to a real mirror.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use miette::{IntoDiagnostic, Result, WrapErr};

use super::base::{self, CacheLock, DEBIAN_MIRROR, SUITE};
use super::state::{Arch, CACHE_DIR};
use super::util::{run, run_logged, write_atomic};

/// What pikube installs on nodes; their dependencies (and recommends, as a plain
/// `apt-get install` pulls them) that the base tree lacks come along.
const PACKAGES: &[&str] = &[
    "haproxy",
    "keepalived",
    "containerd",
    "etcd-server",
    "etcd-client",
    "dphys-swapfile",
    // Real k3s brings its own iptables; the k3s stand-in cannot, so lab tests of the teardown
    // install this one to let it leave the KUBE-/CNI-/FLANNEL rules real k3s leaves.
    "iptables",
    // CNI plugins (bridge, host-local, portmap, loopback) for real Kubernetes on lab nodes.
    "containernetworking-plugins",
];

/// The mirror root; it is served so that `<url>/debian` maps to `<root>/debian`. The name
/// carries a digest of PACKAGES: a cached mirror built from another list is not this one.
pub fn root(arch: Arch) -> PathBuf {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(PACKAGES.join(" ").as_bytes()));
    Path::new(CACHE_DIR).join(format!("mirror-{}-{}", arch.debian(), &digest[..8]))
}

/// Returns the mirror root, downloading and indexing the packages first if the cache has none.
pub fn ensure(arch: Arch) -> Result<PathBuf> {
    let done = root(arch);
    let built = || done.join("debian/dists").join(SUITE).join("Release").is_file();
    if built() {
        return Ok(done);
    }
    let _lock = CacheLock::acquire(&format!("mirror-{}", arch.debian()))?;
    // Another `lab up` may have built it while we waited for the lock.
    if built() {
        return Ok(done);
    }
    let tmp = done.with_extension("tmp");
    let log = done.with_extension("log");
    for stale in [&tmp, &done] {
        if stale.exists() {
            fs::remove_dir_all(stale)
                .into_diagnostic()
                .wrap_err_with(|| format!("removing stale {}", stale.display()))?;
        }
    }
    let _ = fs::remove_file(&log);
    println!("building the lab package mirror for {} (once) — log: {}", arch.debian(), log.display());
    let started = Instant::now();
    let apt = tmp.join("apt");
    let archives = download(arch, &apt, &log).wrap_err("downloading packages for the lab mirror")?;
    index(arch, &archives, &tmp.join("debian"), &log).wrap_err("indexing the lab mirror")?;
    fs::remove_dir_all(&apt).into_diagnostic()?;
    fs::rename(&tmp, &done).into_diagnostic().wrap_err_with(|| format!("moving {} into place", tmp.display()))?;
    println!("package mirror ready in {:.0?}: {}", started.elapsed(), done.display());
    Ok(done)
}

/// Resolves and downloads with the host's apt against the base tree's dpkg status, in a private
/// apt directory: the closure is exactly what a node lacks, for the node's architecture, without
/// touching the host's apt state or the (shared, read-only) base tree.
fn download(arch: Arch, apt: &Path, log: &Path) -> Result<PathBuf> {
    let etc = apt.join("etc");
    for dir in [
        etc.join("apt.conf.d"),
        etc.join("preferences.d"),
        etc.join("sources.list.d"),
        etc.join("trusted.gpg.d"),
        apt.join("state/lists/partial"),
        apt.join("cache/archives/partial"),
    ] {
        fs::create_dir_all(&dir).into_diagnostic()?;
    }
    fs::write(
        etc.join("sources.list"),
        format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {DEBIAN_MIRROR} {SUITE} main\n"),
    )
    .into_diagnostic()?;
    fs::copy(base::path(arch).join("var/lib/dpkg/status"), apt.join("status"))
        .into_diagnostic()
        .wrap_err("copying the base tree's dpkg status")?;
    let options = [
        format!("Dir::Etc={}", etc.display()),
        format!("Dir::State={}", apt.join("state").display()),
        format!("Dir::State::status={}", apt.join("status").display()),
        format!("Dir::Cache={}", apt.join("cache").display()),
        format!("APT::Architecture={}", arch.debian()),
        format!("APT::Architectures={}", arch.debian()),
        "APT::Install-Recommends=true".to_string(),
        "APT::Sandbox::User=root".to_string(),
        "Debug::NoLocking=true".to_string(),
    ];
    let apt_get = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        for option in &options {
            cmd.arg("-o").arg(option);
        }
        cmd.args(args);
        run_logged(&mut cmd, log)
    };
    apt_get(&["update"])?;
    let mut install = vec!["install", "--download-only", "--yes"];
    install.extend_from_slice(PACKAGES);
    apt_get(&install)?;
    Ok(apt.join("cache/archives"))
}

/// Lays the .debs out as `pool/main/` under Debian's canonical names and writes
/// `dists/<suite>/main/binary-<arch>/Packages{,.gz}` and `dists/<suite>/Release`.
fn index(arch: Arch, archives: &Path, debian: &Path, log: &Path) -> Result<()> {
    let pool = debian.join("pool/main");
    let binary = debian.join("dists").join(SUITE).join("main").join(format!("binary-{}", arch.debian()));
    fs::create_dir_all(&pool).into_diagnostic()?;
    fs::create_dir_all(&binary).into_diagnostic()?;
    for entry in fs::read_dir(archives).into_diagnostic()? {
        let path = entry.into_diagnostic()?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(".deb") {
            fs::rename(&path, pool.join(pool_name(name))).into_diagnostic()?;
        }
    }
    let packages = run(Command::new("dpkg-scanpackages").current_dir(debian).args([
        "--multiversion",
        "--arch",
        arch.debian(),
        "pool",
        "/dev/null",
    ]))?;
    write_atomic(&binary.join("Packages"), packages.as_bytes(), 0o644)?;
    run_logged(Command::new("gzip").args(["-9", "--keep", "--force"]).arg(binary.join("Packages")), log)?;
    let suite_dir = debian.join("dists").join(SUITE);
    let release = run(Command::new("apt-ftparchive")
        .current_dir(&suite_dir)
        .arg("-o")
        .arg("APT::FTPArchive::Release::Origin=pikube-lab")
        .arg("-o")
        .arg("APT::FTPArchive::Release::Label=pikube-lab")
        .arg("-o")
        .arg(format!("APT::FTPArchive::Release::Suite={SUITE}"))
        .arg("-o")
        .arg(format!("APT::FTPArchive::Release::Codename={SUITE}"))
        .arg("-o")
        .arg(format!("APT::FTPArchive::Release::Architectures={}", arch.debian()))
        .arg("-o")
        .arg("APT::FTPArchive::Release::Components=main")
        .args(["release", "."]))?;
    write_atomic(&suite_dir.join("Release"), release.as_bytes(), 0o644)
}

/// apt stores an epoch as `%3a` in file names; the pool uses Debian's epoch-less names so
/// URLs need no escaping.
fn pool_name(name: &str) -> String {
    match name.split_once("%3a") {
        Some((head, tail)) => match head.rsplit_once('_') {
            Some((package, _epoch)) => format!("{package}_{tail}"),
            None => name.to_string(),
        },
        None => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pool_names_drop_the_epoch() {
        assert_eq!(super::pool_name("libssl3_1%3a3.0.15-1_amd64.deb"), "libssl3_3.0.15-1_amd64.deb");
        assert_eq!(super::pool_name("haproxy_2.6.12-1_amd64.deb"), "haproxy_2.6.12-1_amd64.deb");
    }
}
