//! `pikube flash` onto regular files and loop devices: read-back verification (including a
//! target corrupted behind pikube's back), the safety refusals, and batch mode.

mod sdcard_support;

use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sdcard_support::*;

/// A loop device detached (and a mount unmounted) when the test ends, even on panic.
struct Loop {
    dev: String,
    mount: Option<PathBuf>,
}

impl Loop {
    fn attach(backing: &Path) -> Loop {
        let out = sh(Command::new("losetup").args(["-f", "--show"]).arg(backing));
        Loop { dev: String::from_utf8_lossy(&out.stdout).trim().to_string(), mount: None }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        if let Some(m) = &self.mount {
            let _ = Command::new("umount").arg(m).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

fn stdout_of(out: &std::process::Output) -> String {
    assert!(out.status.success(), "pikube failed:\n{}", text(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn flat_stderr(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).replace('│', " ");
    err.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn file_sha(path: &Path) -> String {
    let out = sh(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

#[test]
fn flash_xz_to_a_file_verifies_and_customises() {
    require!(image false, "mtype", "fsck.vfat", "ssh-keygen", "sha256sum", "xz");
    let dir = tempdir("flash-file");
    let raw = build_image(&dir, "pi.img", Table::Gpt, Style::Bookworm);
    let raw_sha = file_sha(&raw);
    sh(Command::new("xz").args(["-k", "-1", "-T1"]).arg(&raw));
    let cluster = cluster(&dir, THREE_HOSTS);
    let card = dir.join("card.img");
    let out = pikube(
        &[
            "flash",
            "--image",
            dir.join("pi.img.xz").to_str().unwrap(),
            "--device",
            card.to_str().unwrap(),
            "--node",
            "rasp03",
            "-f",
            cluster.to_str().unwrap(),
        ],
        &[],
    );
    let stdout = stdout_of(&out);
    // The hash pikube verified is the hash of the decompressed image, by sha256sum.
    assert!(stdout.contains(&format!("verified: sha256 {raw_sha}")), "{stdout}");
    assert!(stdout.contains("MB/s"), "{stdout}");
    assert!(stdout.contains("customised for rasp03"), "{stdout}");
    assert!(mread(&card, "firstrun.sh").unwrap().contains("NEW_HOSTNAME='rasp03'"));
    assert_eq!(sha_range(&card, 100352 * 512, 1 << 20), sha_range(&raw, 100352 * 512, 1 << 20));
    let fsck = fsck_boot(&card);
    assert!(fsck.status.success(), "{}", text(&fsck));

    // Existing target, no terminal, no --yes: refused and untouched.
    let before = file_sha(&card);
    let out = pikube(&["flash", "--image", raw.to_str().unwrap(), "--device", card.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(flat_stderr(&out).contains("pass --yes"), "{}", text(&out));
    assert_eq!(file_sha(&card), before, "refused flash changed the target");
}

#[test]
fn flash_to_a_loop_device_verifies() {
    require!(image true, "mtype", "ssh-keygen", "sha256sum", "losetup", "gzip");
    let dir = tempdir("flash-loop");
    let raw = build_image(&dir, "pi.img", Table::Mbr, Style::Ubuntu);
    let raw_sha = file_sha(&raw);
    sh(Command::new("gzip").args(["-k", "-1"]).arg(&raw));
    let backing = dir.join("sdcard.bin");
    std::fs::File::create(&backing).unwrap().set_len(128 << 20).unwrap();
    let lo = Loop::attach(&backing);
    let out = pikube(&["flash", "--image", dir.join("pi.img.gz").to_str().unwrap(), "--device", &lo.dev, "--yes"], &[]);
    let stdout = stdout_of(&out);
    assert!(stdout.contains(&format!("verified: sha256 {raw_sha}")), "{stdout}");
    // Independent check through the device: the first 100 MiB are the image.
    assert_eq!(sha_range(Path::new(&lo.dev), 0, IMAGE_MIB << 20), raw_sha);

    let cluster = cluster(&dir, THREE_HOSTS);
    let out = pikube(
        &[
            "flash",
            "--image",
            raw.to_str().unwrap(),
            "--device",
            &lo.dev,
            "--yes",
            "--node",
            "rasp01",
            "-f",
            cluster.to_str().unwrap(),
        ],
        &[],
    );
    let stdout = stdout_of(&out);
    assert!(stdout.contains("cloud-init NoCloud"), "{stdout}");
    let ud = mread(Path::new(&lo.dev), "user-data").expect("user-data on the card");
    assert!(ud.contains("hostname: \"rasp01\""), "{ud}");
    drop(lo);
}

#[test]
fn corruption_behind_the_writers_back_fails_verification() {
    require!(image false, "ssh-keygen");
    let dir = tempdir("flash-corrupt");
    let raw = build_image(&dir, "pi.img", Table::Mbr, Style::Bookworm);
    let card = dir.join("card.img");
    // A second writer keeps flipping one byte in the target (like a failing card), for as long
    // as pikube runs: whatever pikube wrote there, the medium holds 0xA5 when it reads back.
    let stop = Arc::new(AtomicBool::new(false));
    let corrupter = {
        let (stop, card) = (stop.clone(), card.clone());
        std::thread::spawn(move || {
            let mut flips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&card) {
                    if f.metadata().map(|m| m.len() > 8192).unwrap_or(false) && f.write_at(&[0xa5], 4096).is_ok() {
                        flips += 1;
                    }
                }
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            flips
        })
    };
    std::fs::write(&card, b"").unwrap();
    let out = pikube(&["flash", "--image", raw.to_str().unwrap(), "--device", card.to_str().unwrap(), "--yes"], &[]);
    stop.store(true, Ordering::Relaxed);
    let flips = corrupter.join().unwrap();
    assert!(flips > 0, "the corrupter never ran");
    assert!(!out.status.success(), "corruption not detected:\n{}", text(&out));
    assert!(flat_stderr(&out).contains("verification FAILED"), "{}", text(&out));
}

/// The device node holding `/`, if `/` is on a block device: by its device number, else by
/// the mount source (btrfs and ZFS report anonymous `0:N` numbers).
fn root_device() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let line = info.lines().find(|l| l.split_whitespace().nth(4) == Some("/"))?;
    let dev = line.split_whitespace().nth(2)?;
    let by_number = std::fs::read_to_string(format!("/sys/dev/block/{dev}/uevent")).ok().and_then(|u| {
        let name = u.lines().find_map(|l| l.strip_prefix("DEVNAME="))?;
        Some(PathBuf::from("/dev").join(name))
    });
    let by_source = line.split_once(" - ").and_then(|(_, r)| r.split_whitespace().nth(1)).map(PathBuf::from);
    by_number.into_iter().chain(by_source).find(|p| p.starts_with("/dev") && p.exists())
}

#[test]
fn the_root_disk_is_refused() {
    require!(image false);
    let Some(root) = root_device() else {
        skip!(return "/ is not on a block device here");
    };
    let dir = tempdir("flash-root");
    let raw = build_image(&dir, "pi.img", Table::Mbr, Style::Bookworm);
    // No --yes: even if the check failed, the missing confirmation would stop the write.
    for extra in [&[][..], &["--force"][..]] {
        let mut args = vec!["flash", "--image", raw.to_str().unwrap(), "--device", root.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = pikube(&args, &[]);
        assert!(!out.status.success());
        assert!(flat_stderr(&out).contains("holds the root filesystem"), "{}", text(&out));
    }
}

/// `pikube flash --yes --force IMAGE DEV` chrooted into a root of its own, in a private mount
/// namespace: `mount_root` mounts it at `root`; this machine's /usr, /dev and /sys and a fresh
/// /proc go inside, pikube and the image are bound in.
fn flash_in_own_root(root: &Path, mount_root: &str, image: &Path, dev: &str) -> std::process::Output {
    let script = format!(
        r#"
        set -e
        root=$1 dev=$2 bin=$3 img=$4
        mkdir -p "$root"
        {mount_root}
        mkdir -p "$root/usr" "$root/dev" "$root/sys" "$root/proc"
        for l in bin sbin lib lib64; do [ -L "/$l" ] && ln -s "usr/$l" "$root/$l"; done
        mount --rbind /usr "$root/usr"
        mount --rbind /dev "$root/dev"
        mount --rbind /sys "$root/sys"
        mount -t proc proc "$root/proc"
        touch "$root/pikube" "$root/pi.img"
        mount --bind "$bin" "$root/pikube"
        mount --bind "$img" "$root/pi.img"
        chroot "$root" /pikube flash --image /pi.img --device "$dev" --yes --force
    "#
    );
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script, "sh"])
        .arg(root)
        .arg(dev)
        .arg(BIN)
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `/` on btrfs reports an anonymous `0:N` device number in mountinfo: the disk must still be
/// found (through the mount source) and refused, --force or not.
#[test]
fn a_btrfs_root_disk_is_refused_even_with_force() {
    require!(image true, "losetup", "mkfs.btrfs", "unshare", "chroot", "mount");
    let dir = tempdir("flash-btrfs-root");
    let raw = build_image(&dir, "pi.img", Table::Mbr, Style::Bookworm);
    let backing = dir.join("root.bin");
    std::fs::File::create(&backing).unwrap().set_len(256 << 20).unwrap();
    let lo = Loop::attach(&backing);
    sh(Command::new("mkfs.btrfs").args(["-q", "-f", &lo.dev]));
    // btrfs leaves its first 64 KiB alone (mounting rewrites the superblock after them), where
    // a flash would put the image's MBR.
    let before = sha_range(&backing, 0, 64 << 10);
    let root = dir.join("root");
    let mount_root = format!("mount {} {}", lo.dev, root.display());
    let out = flash_in_own_root(&root, &mount_root, &raw, &lo.dev);
    assert!(!out.status.success(), "flashed the root disk:\n{}", text(&out));
    let err = flat_stderr(&out);
    assert!(err.contains("holds the root filesystem"), "{}", text(&out));
    drop(lo);
    assert_eq!(sha_range(&backing, 0, 64 << 10), before, "the refused flash wrote to the root disk");
}

/// When the disks behind `/` cannot be told (here an overlay, whose layers name no device),
/// no block device is flashed: the list of disks to protect is unknown, not empty.
#[test]
fn an_unknown_root_disk_refuses_every_device() {
    require!(image true, "losetup", "unshare", "chroot", "mount");
    let dir = tempdir("flash-unknown-root");
    let raw = build_image(&dir, "pi.img", Table::Mbr, Style::Bookworm);
    let backing = dir.join("card.bin");
    std::fs::write(&backing, vec![0x5au8; 128 << 20]).unwrap();
    let before = sha_range(&backing, 0, 1 << 20);
    let lo = Loop::attach(&backing);
    let root = dir.join("root");
    for d in ["lower", "upper", "work"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let mount_root = format!(
        "mount -t overlay overlay -o lowerdir={0}/lower,upperdir={0}/upper,workdir={0}/work {1}",
        dir.display(),
        root.display()
    );
    let out = flash_in_own_root(&root, &mount_root, &raw, &lo.dev);
    assert!(!out.status.success(), "flashed with / unknown:\n{}", text(&out));
    let err = flat_stderr(&out);
    assert!(err.contains("cannot tell which disk holds / (overlay from overlay)"), "{}", text(&out));
    drop(lo);
    assert_eq!(sha_range(&backing, 0, 1 << 20), before, "the refused flash wrote");
}

#[test]
fn a_mounted_device_is_refused() {
    require!(image true, "losetup", "mkfs.ext4", "mount");
    let dir = tempdir("flash-mounted");
    let raw = build_image(&dir, "pi.img", Table::Mbr, Style::Bookworm);
    let backing = dir.join("disk.bin");
    std::fs::File::create(&backing).unwrap().set_len(128 << 20).unwrap();
    sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&backing));
    let mut lo = Loop::attach(&backing);
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount").arg(&lo.dev).arg(&mnt).output().unwrap();
    if !mounted.status.success() {
        skip!(return "cannot mount ext4 on a loop device here: {}", text(&mounted));
    }
    lo.mount = Some(mnt.clone());
    // ext4 leaves its first 1 KiB alone (mount and umount rewrite the superblock after it),
    // where a flash would put the image's MBR.
    let before = sha_range(&backing, 0, 1024);
    // --force does not help: a mounted disk is refused, and the kernel's exclusive open would
    // refuse it too (before, --force dropped O_EXCL and wrote over the mounted filesystem).
    for extra in [&[][..], &["--force"][..]] {
        let mut args = vec!["flash", "--image", raw.to_str().unwrap(), "--device", &lo.dev];
        args.push("--yes");
        args.extend_from_slice(extra);
        let out = pikube(&args, &[]);
        assert!(!out.status.success(), "flashed a mounted device ({extra:?}):\n{}", text(&out));
        let err = flat_stderr(&out);
        assert!(err.contains("is mounted at") && err.replace(' ', "").contains(mnt.to_str().unwrap()), "{err}");
        assert!(err.contains("unmount it"), "{err}");
        assert_eq!(sha_range(&backing, 0, 1024), before, "the refused flash ({extra:?}) wrote to the device");
    }
    drop(lo);
    assert_eq!(sha_range(&backing, 0, 1024), before, "the refused flash wrote to the device");
}

#[test]
fn batch_walks_the_hosts_card_by_card() {
    require!(image false, "mtype", "ssh-keygen");
    let dir = tempdir("flash-batch");
    let raw = build_image(&dir, "pi.img", Table::Mbr, Style::Ubuntu);
    let cluster = cluster(&dir, THREE_HOSTS);
    let card = dir.join("card.img");
    let run = |input: &[u8]| {
        let mut child = Command::new(BIN)
            .args([
                "flash",
                "--batch",
                "--yes",
                "--image",
                raw.to_str().unwrap(),
                "--device",
                card.to_str().unwrap(),
                "-f",
                cluster.to_str().unwrap(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(b"\n\n\n");
    let stdout = stdout_of(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for host in ["rasp01", "rasp02", "rasp03"] {
        assert!(stderr.contains(&format!("insert the card for {host}")), "{stderr}");
        assert!(stdout.contains(&format!("card for {host} is ready")), "{stdout}");
    }
    assert!(mread(&card, "user-data").unwrap().contains("hostname: \"rasp03\""));

    // Input ends after the first card: stop, naming the next host.
    let out = run(b"\n");
    assert!(!out.status.success());
    assert!(flat_stderr(&out).contains("stopped before rasp02"), "{}", text(&out));
}

#[test]
fn root_device_lookup_matches_stat() {
    // Guards the root-disk test above against testing the wrong device.
    let Some(root) = root_device() else {
        skip!(return "/ is not on a block device here");
    };
    let meta = std::fs::metadata(&root).unwrap();
    assert!(
        std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()),
        "{} is not a block device",
        root.display()
    );
    let root_dev = std::fs::metadata("/").unwrap().dev();
    // btrfs and ZFS give `/` an anonymous device number (major 0): only the source names it.
    if libc_major(root_dev) != 0 {
        let (maj, min) = (libc_major(meta.rdev()), libc_minor(meta.rdev()));
        let (rmaj, rmin) = (libc_major(root_dev), libc_minor(root_dev));
        assert_eq!((maj, min), (rmaj, rmin), "{} is not the device of /", root.display());
    }
}

fn libc_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)
}

fn libc_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0xff)
}

#[test]
fn a_card_too_small_for_the_image_fails_cleanly() {
    require!(image true, "losetup", "zip");
    let dir = tempdir("flash-small");
    let raw = build_image(&dir, "pi.img", Table::Mbr, Style::Bookworm);
    sh(Command::new("zip").args(["-q", "-j", "-1"]).arg(dir.join("pi.zip")).arg(&raw));
    let backing = dir.join("small.bin");
    std::fs::File::create(&backing).unwrap().set_len(64 << 20).unwrap();
    let lo = Loop::attach(&backing);
    // Raw: the size is known up front. Zip: found out when the device is full, and the
    // decompressing thread must not hang pikube.
    for (input, want) in [("pi.img", "is larger than"), ("pi.zip", "write failed after")] {
        let started = std::time::Instant::now();
        let out = pikube(&["flash", "--image", dir.join(input).to_str().unwrap(), "--device", &lo.dev, "--yes"], &[]);
        assert!(!out.status.success(), "{input}: {}", text(&out));
        assert!(flat_stderr(&out).contains(want), "{input}: {}", text(&out));
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
    }
}

#[test]
fn overwriting_asks_on_a_terminal() {
    require!(image false, "script");
    let dir = tempdir("flash-ask");
    let raw = build_image(&dir, "pi.img", Table::Mbr, Style::Bookworm);
    let card = dir.join("card.img");
    // `script` gives pikube a pseudo-terminal and feeds it our answer.
    let ask = |answer: &str| {
        std::fs::write(&card, b"old card").unwrap();
        let cmd = format!("{BIN} flash --image {} --device {}", raw.display(), card.display());
        let mut child = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(answer.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = ask("no\n");
    assert!(!out.status.success());
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("Type 'yes' to continue") && shown.contains("not confirmed"), "{shown}");
    assert_eq!(std::fs::read(&card).unwrap(), b"old card");
    let out = ask("yes\n");
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("verified: sha256"));
    assert_eq!(std::fs::metadata(&card).unwrap().len(), IMAGE_MIB << 20);
}
