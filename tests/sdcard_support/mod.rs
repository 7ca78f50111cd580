//! Shared helpers for the sdcard tests: real images built with sfdisk, mkfs.vfat and mtools.
#![allow(dead_code)] // each test binary uses a different part of it

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

#[path = "../skip/mod.rs"]
mod skip;

pub const BIN: &str = env!("CARGO_BIN_EXE_pikube");
/// The boot partition starts at sector 2048 in every test image.
pub const BOOT_OFFSET: u64 = 2048 * 512;
pub const BOOT_KIB: u64 = 48 * 1024;
pub const IMAGE_MIB: u64 = 100;

pub const BOOKWORM_CMDLINE: &str = "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot";
pub const UBUNTU_CMDLINE: &str =
    "console=serial0,115200 dwc_otg.lpm_enable=0 console=tty1 root=LABEL=writable rootfstype=ext4 rootwait fixrtc quiet splash";

fn have(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// Why a test needing `tools` (and maybe root) cannot run here; None when it can.
pub fn unavailable(tools: &[&str], root: bool) -> Option<String> {
    if root && !is_root() {
        return Some("needs root (loop devices, network namespaces)".into());
    }
    tools
        .iter()
        .find(|t| !have(t))
        .map(|t| format!("{t} is not installed (apt-get install -y dosfstools mtools fdisk xz-utils zip cloud-init openssh-server iproute2 btrfs-progs)"))
}

/// The tools [`build_image`] runs; tests that build an image say `require!(image …)`.
pub const IMAGE_TOOLS: [&str; 3] = ["sfdisk", "mkfs.vfat", "mcopy"];

#[macro_export]
macro_rules! require {
    (image $root:expr $(, $tool:expr)*) => {
        require!($root, sdcard_support::IMAGE_TOOLS[0], sdcard_support::IMAGE_TOOLS[1], sdcard_support::IMAGE_TOOLS[2] $(, $tool)*)
    };
    ($root:expr, $($tool:expr),*) => {
        if let Some(why) = sdcard_support::unavailable(&[$($tool),*], $root) {
            $crate::skip!(return "{why}");
        }
    };
}

pub fn text(o: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs a helper tool and panics with its output on failure.
pub fn sh(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    out
}

/// `pikube ARGS` with no stdin (as CI runs it).
pub fn pikube(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run pikube")
}

/// A scratch directory removed when the test ends, also when it panics.
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn tempdir(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("pikube-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create temp dir");
    TempDir(d)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Table {
    Mbr,
    Gpt,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Style {
    /// Raspberry Pi OS Bookworm: cmdline.txt, config.txt, no cloud-init.
    Bookworm,
    /// Ubuntu for Pi: cloud-init seed files on the boot partition.
    Ubuntu,
}

/// Builds a 100 MiB image: FAT32 boot partition (48 MiB at sector 2048) and a Linux partition
/// filled with a recognisable pattern.
pub fn build_image(dir: &Path, name: &str, table: Table, style: Style) -> PathBuf {
    let img = dir.join(name);
    let f = std::fs::File::create(&img).expect("create image");
    f.set_len(IMAGE_MIB << 20).expect("size image");
    drop(f);
    let script = match table {
        Table::Mbr => "label: dos\nstart=2048, size=98304, type=c\nstart=100352, type=83\n",
        Table::Gpt => "label: gpt\nstart=2048, size=98304, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\nstart=100352, size=100000, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
    };
    let mut sfdisk = Command::new("sfdisk")
        .args(["-q", img.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("run sfdisk");
    std::io::Write::write_all(sfdisk.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    assert!(sfdisk.wait().unwrap().success(), "sfdisk failed");
    sh(Command::new("mkfs.vfat").args([
        "-F",
        "32",
        "-n",
        "BOOTFS",
        "--offset",
        "2048",
        img.to_str().unwrap(),
        &BOOT_KIB.to_string(),
    ]));
    let files = dir.join(format!("{name}.files"));
    std::fs::create_dir_all(&files).unwrap();
    let (cmdline, extra): (&str, &[(&str, &str)]) = match style {
        Style::Bookworm => (BOOKWORM_CMDLINE, &[("issue.txt", "Raspberry Pi reference 2024-11-19\n")]),
        Style::Ubuntu => (
            UBUNTU_CMDLINE,
            &[
                ("user-data", "#cloud-config\nhostname: ubuntu\n"),
                ("meta-data", "instance-id: ubuntu\n"),
                ("network-config", "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n    optional: true\n"),
            ],
        ),
    };
    let mut names = vec![("cmdline.txt", format!("{cmdline}\n")), ("config.txt", "arm_64bit=1\n".to_string())];
    names.extend(extra.iter().map(|(n, c)| (*n, c.to_string())));
    let mut mcopy = Command::new("mcopy");
    mcopy.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(format!("{}@@{BOOT_OFFSET}", img.display()));
    for (n, c) in &names {
        let p = files.join(n);
        std::fs::write(&p, c).unwrap();
        mcopy.arg(p);
    }
    sh(mcopy.arg("::"));
    // A pattern in the root partition, to prove it passes through untouched.
    let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.seek(SeekFrom::Start(100352 * 512)).unwrap();
    let pattern: Vec<u8> = (0..1 << 20).map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::io::Write::write_all(&mut f, &pattern).unwrap();
    img
}

/// A boot-partition file's content, read with mtools (independent of pikube's FAT code).
pub fn mread(img: &Path, name: &str) -> Option<String> {
    let out = Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{BOOT_OFFSET}", img.display()))
        .arg(format!("::{name}"))
        .output()
        .expect("run mtype");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `fsck.vfat -n` on the boot partition, copied out (fsck.vfat has no offset option).
pub fn fsck_boot(img: &Path) -> Output {
    let part = img.with_extension("boot.fsck");
    let mut data = vec![0u8; (BOOT_KIB * 1024) as usize];
    let mut f = std::fs::File::open(img).unwrap();
    f.seek(SeekFrom::Start(BOOT_OFFSET)).unwrap();
    f.read_exact(&mut data).unwrap();
    std::fs::write(&part, &data).unwrap();
    let out = Command::new("fsck.vfat").arg("-n").arg(&part).output().expect("run fsck.vfat");
    let _ = std::fs::remove_file(&part);
    out
}

/// SHA-256 of `len` bytes at `offset` (via sha256sum, not pikube's hashing).
pub fn sha_range(path: &Path, offset: u64, len: u64) -> String {
    let mut data = vec![0u8; len as usize];
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut data).unwrap();
    let tmp = path.with_extension(format!("range-{offset}"));
    std::fs::write(&tmp, &data).unwrap();
    let out = sh(Command::new("sha256sum").arg(&tmp));
    let _ = std::fs::remove_file(&tmp);
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_string()
}

/// A cluster file with an SSH key pair next to it.
pub fn cluster(dir: &Path, body_hosts: &str) -> PathBuf {
    let key = dir.join("id_test");
    if !key.exists() {
        sh(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "pikube-test", "-f"]).arg(&key));
    }
    let file = dir.join("cluster.yaml");
    let text = format!(
        "# test cluster: comments must survive edits\nname: lab\nssh:\n  user: pi\n  key: ./id_test\nhosts:\n{body_hosts}"
    );
    std::fs::write(&file, text).unwrap();
    file
}

pub const THREE_HOSTS: &str = "  - name: rasp01\n    address: 10.0.0.11\n    role: server\n  - name: rasp02\n    address: 10.0.0.12\n    role: agent\n  - name: rasp03\n    address: 10.0.0.13\n    role: agent\n";

pub fn public_key(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("id_test.pub")).unwrap().trim().to_string()
}
