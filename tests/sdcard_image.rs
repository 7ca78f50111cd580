//! `pikube image prepare` on real images built with sfdisk/mkfs.vfat/mtools, checked with
//! independent tools (mtools, fsck.vfat, cloud-init, crypt(3) via perl).

mod sdcard_support;

use std::path::Path;
use std::process::Command;

use sdcard_support::*;

fn prepare(
    input: &Path,
    out: &Path,
    cluster: &Path,
    node: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut args = vec![
        "image",
        "prepare",
        "--image",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "-f",
        cluster.to_str().unwrap(),
        "--node",
        node,
    ];
    args.extend_from_slice(extra);
    pikube(&args, env)
}

fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "pikube failed:\n{}", text(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn count(hay: &str, needle: &str) -> usize {
    hay.split_whitespace().filter(|t| *t == needle).count()
}

fn assert_cmdline_once(img: &Path, first_run: bool) {
    let cmdline = mread(img, "cmdline.txt").expect("cmdline.txt");
    assert_eq!(cmdline.trim_end().lines().count(), 1, "cmdline.txt must stay one line: {cmdline:?}");
    for flag in ["cgroup_enable=cpuset", "cgroup_enable=memory", "cgroup_memory=1"] {
        assert_eq!(count(&cmdline, flag), 1, "{flag} once in {cmdline:?}");
    }
    let run = count(&cmdline, "systemd.run=/boot/firmware/firstrun.sh");
    assert_eq!(run, usize::from(first_run), "first-run token count in {cmdline:?}");
    if first_run {
        // firstrun.sh cuts from " systemd.run" on: the cgroup flags must come before it.
        let cut = cmdline.find(" systemd.run").unwrap();
        assert!(cmdline[..cut].contains("cgroup_memory=1"));
    }
}

fn assert_fsck_clean(img: &Path) {
    let out = fsck_boot(img);
    assert!(out.status.success(), "fsck.vfat -n found problems:\n{}", text(&out));
    let all = text(&out);
    assert!(!all.to_lowercase().contains("dirty"), "dirty bit left set:\n{all}");
}

fn root_partition_sha(img: &Path) -> String {
    sha_range(img, 100352 * 512, 1 << 20)
}

#[test]
fn bookworm_mbr_gets_userconf_and_firstrun() {
    require!(image false, "mtype", "fsck.vfat", "ssh-keygen", "sha256sum", "perl");
    let dir = tempdir("img-bookworm");
    let input = build_image(&dir, "bookworm.img", Table::Mbr, Style::Bookworm);
    let cluster = cluster(&dir, THREE_HOSTS);
    let out_img = dir.join("rasp01.img");
    let secret = "Correct-Horse-Battery-9";
    let out = prepare(
        &input,
        &out_img,
        &cluster,
        "rasp01",
        &["--password-env", "PIKUBE_TEST_PW"],
        &[("PIKUBE_TEST_PW", secret)],
    );
    let stdout = ok(&out);
    assert!(stdout.contains("MBR partition table"), "{stdout}");
    assert!(stdout.contains("Raspberry Pi OS first run"), "{stdout}");
    assert!(!text(&out).contains(secret), "the password was printed");

    assert_eq!(mread(&out_img, "ssh").as_deref(), Some(""), "empty ssh file");
    let userconf = mread(&out_img, "userconf.txt").expect("userconf.txt");
    let (user, hash) = userconf.trim().split_once(':').expect("user:hash");
    assert_eq!(user, "pi");
    assert!(hash.starts_with("$6$"), "{hash}");
    assert!(!userconf.contains(secret));
    // crypt(3) (through perl, on every Debian) must accept the hash for the password, and
    // reject another one: the check cannot pass by doing nothing.
    let crypt_matches = |pw: &str| {
        let out = sh(Command::new("perl").args([
            "-e",
            "print crypt($ARGV[0], $ARGV[1]) eq $ARGV[1] ? 'match' : 'mismatch'",
            pw,
            hash,
        ]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(crypt_matches(secret), "match", "crypt(3) rejects the userconf.txt hash");
    assert_eq!(crypt_matches("wrong-password"), "mismatch");
    let firstrun = mread(&out_img, "firstrun.sh").expect("firstrun.sh");
    assert!(firstrun.starts_with("#!/bin/bash"));
    assert!(firstrun.contains("NEW_HOSTNAME='rasp01'"), "{firstrun}");
    assert!(firstrun.contains(&public_key(&dir)), "authorized key in firstrun.sh");
    assert!(firstrun.contains("PasswordAuthentication no"));
    assert!(firstrun.contains("role=%s") && firstrun.contains("'server'"));
    let syntax = Command::new("bash").arg("-n").arg("-c").arg(&firstrun).output().unwrap();
    assert!(syntax.status.success(), "firstrun.sh is not valid bash:\n{}", text(&syntax));
    assert_eq!(mread(&out_img, "user-data"), None, "no cloud-init seed on a Bookworm image");
    assert_cmdline_once(&out_img, true);
    assert_fsck_clean(&out_img);
    assert_eq!(root_partition_sha(&input), root_partition_sha(&out_img), "root partition changed");

    // Without --password-env: a random password, only its hash on the card, nothing printed.
    let out2_img = dir.join("rasp02.img");
    let out2 = prepare(&input, &out2_img, &cluster, "rasp02", &[], &[]);
    let stdout2 = ok(&out2);
    assert!(!stdout2.to_lowercase().contains("password:"), "{stdout2}");
    let userconf2 = mread(&out2_img, "userconf.txt").unwrap();
    assert!(userconf2.starts_with("pi:$6$") && userconf2 != userconf);
}

#[test]
fn ubuntu_gpt_gets_valid_cloud_init() {
    require!(image false, "mtype", "fsck.vfat", "ssh-keygen", "sha256sum", "cloud-init");
    let dir = tempdir("img-ubuntu");
    let input = build_image(&dir, "ubuntu.img", Table::Gpt, Style::Ubuntu);
    let cluster = cluster(&dir, THREE_HOSTS);
    let out_img = dir.join("rasp02.img");
    let psk = "wifi-Secret-4711";
    let out = prepare(
        &input,
        &out_img,
        &cluster,
        "rasp02",
        &[
            "--static",
            "10.0.0.0/24",
            "--gateway",
            "10.0.0.1",
            "--dns",
            "10.0.0.53",
            "--wifi-ssid",
            "Home Net",
            "--wifi-psk-env",
            "PIKUBE_TEST_PSK",
            "--wifi-country",
            "de",
        ],
        &[("PIKUBE_TEST_PSK", psk)],
    );
    let stdout = ok(&out);
    assert!(stdout.contains("GPT partition table"), "{stdout}");
    assert!(stdout.contains("cloud-init NoCloud"), "{stdout}");
    assert!(!text(&out).contains(psk), "the Wi-Fi passphrase was printed");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&out_img).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "an image holding secrets must be private");

    let user_data = mread(&out_img, "user-data").expect("user-data");
    assert!(user_data.starts_with("#cloud-config\n"), "{user_data}");
    assert!(user_data.contains("hostname: \"rasp02\""));
    assert!(user_data.contains("ssh_pwauth: false"));
    assert!(user_data.contains(&public_key(&dir)));
    let ud = dir.join("user-data.yaml");
    std::fs::write(&ud, &user_data).unwrap();
    let schema = Command::new("cloud-init").arg("schema").arg("--config-file").arg(&ud).output().unwrap();
    assert!(schema.status.success(), "cloud-init schema rejects user-data:\n{}", text(&schema));
    assert!(String::from_utf8_lossy(&schema.stdout).contains("Valid cloud-config"), "{}", text(&schema));

    let meta = mread(&out_img, "meta-data").expect("meta-data");
    assert!(
        meta.contains("local-hostname: \"rasp02\"") && meta.contains("instance-id: \"pikube-lab-rasp02-"),
        "{meta}"
    );

    // network-config through cloud-init's own v2 parser and netplan renderer.
    let nc = mread(&out_img, "network-config").expect("network-config");
    let nc_file = dir.join("network-config.yaml");
    std::fs::write(&nc_file, &nc).unwrap();
    let rendered = dir.join("net-out");
    let conv = Command::new("cloud-init")
        .args(["devel", "net-convert", "--kind", "yaml", "--output-kind", "netplan", "-D", "ubuntu", "--network-data"])
        .arg(&nc_file)
        .arg("-d")
        .arg(&rendered)
        .output()
        .unwrap();
    assert!(conv.status.success(), "cloud-init cannot parse network-config:\n{}", text(&conv));
    let netplan = std::fs::read_to_string(rendered.join("etc/netplan/50-cloud-init.yaml")).unwrap();
    for want in ["10.0.0.12/24", "10.0.0.1", "10.0.0.53", "Home Net", "regulatory-domain: DE"] {
        assert!(netplan.contains(want), "{want} missing from rendered netplan:\n{netplan}");
    }
    assert_cmdline_once(&out_img, false);
    assert_eq!(mread(&out_img, "firstrun.sh"), None);
    assert_fsck_clean(&out_img);
}

#[test]
fn preparing_twice_keeps_cmdline_flags_once() {
    require!(image false, "mtype", "fsck.vfat", "ssh-keygen");
    let dir = tempdir("img-twice");
    let cluster = cluster(&dir, THREE_HOSTS);
    for (style, table, first_run) in [(Style::Bookworm, Table::Gpt, true), (Style::Ubuntu, Table::Mbr, false)] {
        let input = build_image(&dir, &format!("{style:?}.img"), table, style);
        let once = dir.join(format!("{style:?}-once.img"));
        let twice = dir.join(format!("{style:?}-twice.img"));
        ok(&prepare(&input, &once, &cluster, "rasp01", &[], &[]));
        // The customised output as the next input: a re-prepared (or re-flashed) card.
        let out = prepare(&once, &twice, &cluster, "rasp03", &[], &[]);
        let stdout = ok(&out);
        let expected = if first_run { "Raspberry Pi OS first run" } else { "cloud-init NoCloud" };
        assert!(stdout.contains(expected), "{style:?}: {stdout}");
        assert_cmdline_once(&twice, first_run);
        assert_fsck_clean(&twice);
        let name_file = if first_run { "firstrun.sh" } else { "user-data" };
        assert!(mread(&twice, name_file).unwrap().contains("rasp03"));
    }
}

#[test]
fn compressed_inputs_stream_to_the_same_image() {
    require!(image false, "mtype", "fsck.vfat", "ssh-keygen", "sha256sum", "xz", "gzip", "zip");
    let dir = tempdir("img-compressed");
    let raw = build_image(&dir, "pi.img", Table::Mbr, Style::Bookworm);
    let cluster = cluster(&dir, THREE_HOSTS);
    sh(Command::new("xz").args(["-k", "-1", "-T1"]).arg(&raw));
    sh(Command::new("gzip").args(["-k", "-1"]).arg(&raw));
    sh(Command::new("zip").args(["-q", "-j", "-1"]).arg(dir.join("pi.zip")).arg(&raw));
    let want_root = root_partition_sha(&raw);
    for (input, format) in [("pi.img.xz", "xz-compressed"), ("pi.img.gz", "gzip-compressed"), ("pi.zip", "zip archive")]
    {
        let out_img = dir.join(format!("{input}.out.img"));
        let out = prepare(&dir.join(input), &out_img, &cluster, "rasp02", &[], &[]);
        let stdout = ok(&out);
        assert!(stdout.contains(format), "{input}: {stdout}");
        assert_eq!(std::fs::metadata(&out_img).unwrap().len(), IMAGE_MIB << 20, "{input}: size");
        assert_eq!(sha_range(&out_img, 0, 446), sha_range(&raw, 0, 446), "{input}: boot code");
        assert_eq!(root_partition_sha(&out_img), want_root, "{input}: root partition");
        assert!(mread(&out_img, "firstrun.sh").unwrap().contains("rasp02"));
        assert_fsck_clean(&out_img);
    }
}

#[test]
fn all_hosts_get_their_own_image() {
    require!(image false, "mtype", "ssh-keygen", "gzip");
    let dir = tempdir("img-all");
    let raw = build_image(&dir, "pi.img", Table::Gpt, Style::Ubuntu);
    sh(Command::new("gzip").args(["-1"]).arg(&raw));
    let cluster = cluster(&dir, THREE_HOSTS);
    let out_dir = dir.join("cards");
    let out = pikube(
        &[
            "image",
            "prepare",
            "--image",
            dir.join("pi.img.gz").to_str().unwrap(),
            "--all",
            "--out-dir",
            out_dir.to_str().unwrap(),
            "-f",
            cluster.to_str().unwrap(),
        ],
        &[],
    );
    ok(&out);
    for (host, role) in [("rasp01", "server"), ("rasp02", "agent"), ("rasp03", "agent")] {
        let img = out_dir.join(format!("{host}.img"));
        let ud = mread(&img, "user-data").unwrap_or_else(|| panic!("{host}.img has no user-data"));
        assert!(ud.contains(&format!("hostname: \"{host}\"")), "{ud}");
        assert!(ud.contains(&format!("role={role}")), "{ud}");
    }
}

#[test]
fn images_that_cannot_be_customised_are_refused_clearly() {
    require!(image false, "ssh-keygen", "zip", "xz");
    let dir = tempdir("img-refuse");
    let cluster = cluster(&dir, THREE_HOSTS);
    let expect_err = |input: &Path, extra: &[&str], env: &[(&str, &str)], want: &str| {
        let out_img = dir.join("out.img");
        let out = prepare(input, &out_img, &cluster, "rasp01", extra, env);
        assert!(!out.status.success(), "{} should be refused:\n{}", input.display(), text(&out));
        let err = String::from_utf8_lossy(&out.stderr).replace('\n', " ").replace("│", "");
        let err = err.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(err.contains(want), "expected `{want}` in:\n{err}");
        assert!(!out_img.exists(), "a failed prepare must not leave {}", out_img.display());
    };

    // Garbage: no partition table at all.
    let garbage = dir.join("garbage.img");
    std::fs::write(&garbage, vec![0x5au8; 1 << 20]).unwrap();
    expect_err(&garbage, &[], &[], "no partition table");

    // A partition table without any FAT partition.
    let linux_only = dir.join("linux-only.img");
    std::fs::File::create(&linux_only).unwrap().set_len(8 << 20).unwrap();
    let mut sf = Command::new("sfdisk")
        .arg("-q")
        .arg(&linux_only)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(sf.stdin.as_mut().unwrap(), b"label: dos\nstart=2048, type=83\n").unwrap();
    assert!(sf.wait().unwrap().success());
    expect_err(&linux_only, &[], &[], "no FAT partition");

    // A FAT partition that is not a Pi boot partition (no config.txt).
    let no_config = build_image(&dir, "no-config.img", Table::Mbr, Style::Bookworm);
    sh(Command::new("mdel")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{BOOT_OFFSET}", no_config.display()))
        .arg("::config.txt"));
    expect_err(&no_config, &[], &[], "no config.txt");

    // Secrets must come from set environment variables, named in the error.
    let good = build_image(&dir, "good.img", Table::Mbr, Style::Bookworm);
    expect_err(&good, &["--password-env", "PIKUBE_TEST_UNSET_VAR"], &[], "PIKUBE_TEST_UNSET_VAR");
    expect_err(&good, &["--static", "192.168.7.0/24", "--gateway", "192.168.7.1"], &[], "outside --static");

    // A truncated download: the decompressor's error, and no half-written output.
    let xz = dir.join("good.img.xz");
    sh(Command::new("xz").args(["-k", "-1", "-T1"]).arg(&good));
    let data = std::fs::read(&xz).unwrap();
    let cut = dir.join("cut.img.xz");
    std::fs::write(&cut, &data[..data.len() / 2]).unwrap();
    expect_err(&cut, &[], &[], "cannot read the image");

    // A zip archive with two images is ambiguous.
    let z = dir.join("two.zip");
    sh(Command::new("zip").args(["-q", "-j"]).arg(&z).arg(&good).arg(&no_config));
    expect_err(&z, &[], &[], "exactly one .img");
}

#[test]
fn devices_are_refused_as_output() {
    require!(image true, "ssh-keygen", "losetup", "mknod", "sha256sum");
    let dir = tempdir("img-device-out");
    let input = build_image(&dir, "pi.img", Table::Mbr, Style::Bookworm);
    let cluster = cluster(&dir, THREE_HOSTS);
    // A loop device standing in for an SD card (or the system disk), with known contents.
    let backing = dir.join("card.bin");
    std::fs::write(&backing, vec![0x42u8; 8 << 20]).unwrap();
    let before = sha_range(&backing, 0, 8 << 20);
    let lo = String::from_utf8(sh(Command::new("losetup").args(["-f", "--show"]).arg(&backing)).stdout)
        .unwrap()
        .trim()
        .to_string();
    let detach = Detach(lo.clone());
    // A character device of our own (null's numbers), so no system node is put at risk.
    let null = dir.join("null");
    sh(Command::new("mknod").arg(&null).args(["c", "1", "3"]));
    for out in [Path::new(&lo), null.as_path()] {
        let result = prepare(&input, out, &cluster, "rasp01", &[], &[]);
        assert!(!result.status.success(), "{}: {}", out.display(), text(&result));
        let err = String::from_utf8_lossy(&result.stderr).replace('│', " ");
        let err = err.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(err.contains("is not a regular file"), "{err}");
        assert!(err.contains("pikube flash --image"), "{err}");
    }
    let meta = std::fs::metadata(&null).expect("the device node must not be removed");
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(&meta.file_type()));
    drop(detach);
    assert_eq!(sha_range(&backing, 0, 8 << 20), before, "the loop device was written");
}

/// Detaches a loop device when the test ends, also on panic.
struct Detach(String);

impl Drop for Detach {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// The `runcmd` step of a card's user-data, read with a YAML parser.
fn runcmd_script(user_data: &str) -> String {
    let doc: serde_json::Value = serde_saphyr::from_str(user_data).expect("user-data is YAML");
    let steps = doc["runcmd"].as_array().expect("user-data has a runcmd list");
    assert_eq!(steps.len(), 1, "{user_data}");
    steps[0].as_str().expect("a shell string").to_string()
}

/// cloud-init's schema check of a user-data file.
fn assert_valid_cloud_config(dir: &Path, user_data: &str) {
    let file = dir.join("check-user-data.yaml");
    std::fs::write(&file, user_data).unwrap();
    let out = Command::new("cloud-init").args(["schema", "--config-file"]).arg(&file).output().unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Valid cloud-config"),
        "cloud-init schema rejects:\n{user_data}\n{}",
        text(&out)
    );
}

#[test]
fn cloud_init_seed_is_scrubbed_after_first_boot() {
    require!(image true, "mtype", "ssh-keygen", "cloud-init", "unshare", "mount");
    let dir = tempdir("img-scrub");
    let input = build_image(&dir, "ubuntu.img", Table::Mbr, Style::Ubuntu);
    let cluster = cluster(&dir, THREE_HOSTS);
    let out_img = dir.join("rasp02.img");
    let (pw, psk) = ("Scrub-Me-Password-1", "scrub-me-wifi-psk-2");
    let out = prepare(
        &input,
        &out_img,
        &cluster,
        "rasp02",
        &[
            "--password-env",
            "PIKUBE_TEST_PW",
            "--static",
            "10.0.0.0/24",
            "--gateway",
            "10.0.0.1",
            "--wifi-ssid",
            "Home Net",
            "--wifi-psk-env",
            "PIKUBE_TEST_PSK",
            "--wifi-country",
            "de",
        ],
        &[("PIKUBE_TEST_PW", pw), ("PIKUBE_TEST_PSK", psk)],
    );
    ok(&out);
    // The card as prepared: the secrets are there (cloud-init needs them once) and so is the
    // scrub step, in a user-data cloud-init accepts.
    let seed = dir.join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    let mut original = Vec::new();
    for name in ["user-data", "meta-data", "network-config"] {
        let content = mread(&out_img, name).unwrap_or_else(|| panic!("{name} on the card"));
        std::fs::write(seed.join(name), &content).unwrap();
        original.push(content);
    }
    let hash = original[0]
        .lines()
        .find_map(|l| l.trim().strip_prefix("passwd: "))
        .expect("the password hash is in the first-boot user-data")
        .trim_matches('"')
        .to_string();
    assert!(hash.starts_with("$6$"), "{hash}");
    assert!(original[2].contains(psk), "{}", original[2]);
    assert_valid_cloud_config(&dir, &original[0]);
    let script = runcmd_script(&original[0]);
    assert!(script.contains("/boot/firmware /boot"), "{script}");

    // First boot: the runcmd step, run by sh with the seed where the Pi mounts it (/boot here:
    // a bind mount in a mount namespace of this test's own).
    let script_file = dir.join("runcmd.sh");
    std::fs::write(&script_file, &script).unwrap();
    let first_boot = || {
        sh(Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind \"$1\" /boot && sh -e \"$2\"")
            .arg("sh")
            .arg(&seed)
            .arg(&script_file));
    };
    first_boot();
    let read = |name: &str| std::fs::read_to_string(seed.join(name)).unwrap();
    let (ud, nc) = (read("user-data"), read("network-config"));
    for secret in [hash.as_str(), pw, psk] {
        assert!(!ud.contains(secret) && !nc.contains(secret), "{secret} left:\n{ud}\n{nc}");
    }
    // Later boots: meta-data (the instance-id) is untouched, so nothing per-instance re-runs;
    // what cloud-init re-reads every boot is still valid and still names the host.
    assert_eq!(read("meta-data"), original[1]);
    assert!(ud.contains("hostname: \"rasp02\"") && !ud.contains("runcmd"), "{ud}");
    assert_valid_cloud_config(&dir, &ud);
    let rendered = dir.join("net-out");
    let conv = Command::new("cloud-init")
        .args(["devel", "net-convert", "--kind", "yaml", "--output-kind", "netplan"])
        .args(["-D", "ubuntu", "--network-data"])
        .arg(seed.join("network-config"))
        .arg("-d")
        .arg(&rendered)
        .output()
        .unwrap();
    assert!(conv.status.success(), "scrubbed network-config:\n{nc}\n{}", text(&conv));
    let netplan = std::fs::read_to_string(rendered.join("etc/netplan/50-cloud-init.yaml")).unwrap();
    assert!(netplan.contains("10.0.0.12/24") && !netplan.contains("wifis"), "{netplan}");
    // A second run (the seed no longer carries the marker) changes nothing.
    first_boot();
    assert_eq!((read("user-data"), read("network-config")), (ud, nc));
    assert!(std::fs::read_dir(&seed)
        .unwrap()
        .all(|e| { !e.unwrap().file_name().to_string_lossy().ends_with("pikube-tmp") }));
}
