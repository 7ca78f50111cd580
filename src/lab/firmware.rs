//! Raspberry Pi emulation for Pi-like nodes: the boot partition files a fresh image has, and
//! what the Pi firmware and kernel make of them at every boot (model, kernel command line,
//! memory cgroup on/off).
//!
//! Inside a node the result shows at:
//! - `/sys/firmware/devicetree/base/model` (NUL-terminated, like the real file),
//! - `/proc/cmdline` = firmware prefix + the node's cmdline.txt,
//! - `/proc/cgroups`, whose `memory` line has enabled `0` unless the command line has
//!   `cgroup_enable=memory` (Raspberry Pi kernels disable the memory controller by default),
//! - `/sys/devices/platform/soc/soc:firmware/get_throttled` (the firmware driver's file: the
//!   get_throttled bits in hex) and `/sys/class/thermal/thermal_zone0/temp` (millidegrees),
//!   which `pikube lab pi NODE --throttled … --temp …` sets while the node runs.
//!
//! nspawn resolves the source of a bind onto `/proc` inside the container, so the generated
//! files are first bound to `/run/pikube-firmware` and the `/proc` binds take them from there.

use std::fs;
use std::path::{Path, PathBuf};

use miette::{IntoDiagnostic, Result, WrapErr};
use sha2::{Digest, Sha256};

use super::state::PiLayout;

/// Where the generated files are visible inside a node (a tmpfs, so nothing lands on its disk).
const IN_NODE: &str = "/run/pikube-firmware";

pub fn model(layout: PiLayout) -> &'static str {
    match layout {
        PiLayout::Bookworm => "Raspberry Pi 4 Model B Rev 1.4",
        PiLayout::Legacy => "Raspberry Pi 3 Model B Plus Rev 1.3",
    }
}

fn compatible(layout: PiLayout) -> &'static str {
    match layout {
        PiLayout::Bookworm => "raspberrypi,4-model-b\0brcm,bcm2711\0",
        PiLayout::Legacy => "raspberrypi,3-model-b-plus\0brcm,bcm2837\0",
    }
}

/// What the firmware puts in front of cmdline.txt (board-specific driver parameters).
fn firmware_prefix(layout: PiLayout, serial: &str) -> String {
    let mac = format!("{}:{}:{}", &serial[10..12], &serial[12..14], &serial[14..16]);
    match layout {
        PiLayout::Bookworm => format!(
            "coherent_pool=1M 8250.nr_uarts=0 snd_bcm2835.enable_headphones=0 \
             snd_bcm2835.enable_hdmi=1 bcm2708_fb.fbwidth=0 bcm2708_fb.fbheight=0 \
             bcm2708_fb.fbdepth=16 bcm2708_fb.fbswap=1 smsc95xx.macaddr=DC:A6:32:{mac} \
             vc_mem.mem_base=0x3ec00000 vc_mem.mem_size=0x40000000"
        ),
        PiLayout::Legacy => format!(
            "coherent_pool=1M 8250.nr_uarts=0 snd_bcm2835.enable_headphones=0 \
             snd_bcm2835.enable_hdmi=1 bcm2708_fb.fbwidth=656 bcm2708_fb.fbheight=416 \
             bcm2708_fb.fbswap=1 smsc95xx.macaddr=B8:27:EB:{mac} \
             vc_mem.mem_base=0x3ec00000 vc_mem.mem_size=0x40000000"
        ),
    }
}

/// The firmware driver's get_throttled file and the SoC thermal zone, below the node's
/// firmware dir (bound over `/sys/devices/platform` and `/sys/class/thermal`).
const THROTTLED: &str = "platform/soc/soc:firmware/get_throttled";
const TEMP: &str = "thermal/thermal_zone0/temp";
/// A healthy idle Pi: nothing throttled, 48.3 °C.
const DEFAULT_READINGS: (u32, f64) = (0, 48.3);

/// Parses get_throttled bits as `vcgencmd` prints them (`0x50005`) or plain hex.
pub fn parse_throttled(s: &str) -> std::result::Result<u32, String> {
    let hex = s.trim().trim_start_matches("throttled=");
    let hex = hex.strip_prefix("0x").unwrap_or(hex);
    u32::from_str_radix(hex, 16).map_err(|_| format!("{s:?} is not hex bits like 0x50005"))
}

/// The node's current emulated readings: (get_throttled bits, SoC °C).
pub fn readings(dir: &Path) -> (u32, f64) {
    let throttled = fs::read_to_string(dir.join(THROTTLED)).ok().and_then(|s| parse_throttled(&s).ok());
    let temp = fs::read_to_string(dir.join(TEMP)).ok().and_then(|s| s.trim().parse::<f64>().ok()).map(|m| m / 1000.0);
    (throttled.unwrap_or(DEFAULT_READINGS.0), temp.unwrap_or(DEFAULT_READINGS.1))
}

/// Writes the readings the firmware and thermal drivers report (each replaced atomically, so a
/// reader in the node never sees half a value); None keeps the current one.
pub fn set_readings(dir: &Path, throttled: Option<u32>, temp: Option<f64>) -> Result<()> {
    let (now_throttled, now_temp) = readings(dir);
    let files = [
        (dir.join(THROTTLED), format!("{:x}\n", throttled.unwrap_or(now_throttled))),
        (dir.join(TEMP), format!("{}\n", (temp.unwrap_or(now_temp) * 1000.0).round() as i64)),
        (dir.join("thermal/thermal_zone0/type"), "cpu-thermal\n".to_string()),
    ];
    for (path, contents) in files {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).into_diagnostic()?;
        }
        super::util::write_atomic(&path, contents.as_bytes(), 0o444)?;
    }
    Ok(())
}

/// A stable per-node board serial (16 hex digits), also the source of PARTUUID and MAC.
fn serial(seed: &str) -> String {
    hex::encode(&Sha256::digest(seed.as_bytes())[..8])
}

/// Writes the boot partition of a fresh Pi image into a node's tree: a single-line cmdline.txt
/// without cgroup flags (so pikube has them to add) and a stock config.txt.
pub fn write_boot_files(tree: &Path, layout: PiLayout, seed: &str) -> Result<()> {
    let boot = tree.join(layout.boot_dir());
    fs::create_dir_all(&boot).into_diagnostic()?;
    let partuuid = &serial(seed)[..8];
    let cmdline = format!(
        "console=serial0,115200 console=tty1 root=PARTUUID={partuuid}-02 rootfstype=ext4 \
         fsck.repair=yes rootwait quiet\n"
    );
    let config = match layout {
        PiLayout::Bookworm => CONFIG_BOOKWORM,
        PiLayout::Legacy => CONFIG_LEGACY,
    };
    for (name, contents) in [("cmdline.txt", cmdline.as_str()), ("config.txt", config)] {
        let path = boot.join(name);
        fs::write(&path, contents).into_diagnostic().wrap_err_with(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Emulates one firmware boot: reads cmdline.txt from the node's disk as it is now, writes the
/// model, command line and cgroup table into `out`, and returns the nspawn arguments that make
/// them visible inside the node.
pub fn prepare_boot(tree: &Path, layout: PiLayout, seed: &str, out: &Path) -> Result<Vec<String>> {
    let boot = tree.join(layout.boot_dir());
    let config = fs::read_to_string(boot.join("config.txt")).unwrap_or_default();
    // Like the firmware: only the first line counts, and a missing file boots with no arguments.
    let user = fs::read_to_string(boot.join(cmdline_file(&config)))
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_default();
    let serial = serial(seed);
    let cmdline = format!("{} {user}\n", firmware_prefix(layout, &serial));
    let host_cgroups =
        fs::read_to_string("/proc/cgroups").into_diagnostic().wrap_err("reading the host's /proc/cgroups")?;

    let dt = out.join("sys/devicetree/base");
    fs::create_dir_all(&dt).into_diagnostic().wrap_err_with(|| format!("creating {}", dt.display()))?;
    let files: [(PathBuf, String); 5] = [
        (dt.join("model"), format!("{}\0", model(layout))),
        (dt.join("compatible"), compatible(layout).to_string()),
        (dt.join("serial-number"), format!("{serial}\0")),
        (out.join("cmdline"), cmdline.clone()),
        (out.join("cgroups"), cgroups_table(&host_cgroups, memory_enabled(&cmdline))),
    ];
    for (path, contents) in files {
        fs::write(&path, contents).into_diagnostic().wrap_err_with(|| format!("writing {}", path.display()))?;
    }
    // Readings set with `lab pi` survive reboots, like a weak power supply does.
    set_readings(out, None, None)?;
    Ok(vec![
        format!("--bind-ro={}:{IN_NODE}", out.display()),
        format!("--bind-ro={IN_NODE}/cmdline:/proc/cmdline"),
        format!("--bind-ro={IN_NODE}/cgroups:/proc/cgroups"),
        format!("--bind-ro={}:/sys/firmware", out.join("sys").display()),
    ])
}

/// Where the firmware and thermal readings show in a node: (below IN_NODE, real path).
/// nspawn mounts `/sys/devices` and `/sys/class` after its `--bind`s, hiding binds below them,
/// so these are bound from inside the node's mount namespace once it runs (`bind_sysfs`).
const SYSFS_BINDS: [(&str, &str); 2] = [("platform", "/sys/devices/platform"), ("thermal", "/sys/class/thermal")];

/// Binds the emulated readings over their real sysfs paths inside a booting node: waits for
/// nspawn's child to become the node's systemd (its mounts are done by then), then mounts
/// from inside that mount namespace. Failures are logged to the console: the node still runs.
pub fn bind_sysfs(nspawn: u32) {
    let init = (0..300).find_map(|_| {
        let found = super::util::children(nspawn).into_iter().find(|(_, comm)| comm == "systemd").map(|(p, _)| p);
        if found.is_none() {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        found
    });
    let Some(init) = init else {
        eprintln!("pikube-lab: the node's systemd did not start; firmware readings not bound");
        return;
    };
    for (from, to) in SYSFS_BINDS {
        let ok = std::process::Command::new("nsenter")
            .args(["--target", &init.to_string(), "--mount", "--", "mount", "--bind", "-o", "ro"])
            .arg(format!("{IN_NODE}/{from}"))
            .arg(to)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("pikube-lab: could not bind {IN_NODE}/{from} over {to} in the node");
        }
    }
}

/// The command line file config.txt names with `cmdline=` (the firmware's default is
/// cmdline.txt). Only unconditional lines count here: before any `[filter]` section or under
/// `[all]`. A name that is not a plain file name is ignored, so a node cannot make the lab
/// read a file outside its boot partition.
fn cmdline_file(config: &str) -> &str {
    let mut file = "cmdline.txt";
    let mut unconditional = true;
    for line in config.lines().map(str::trim) {
        if line.starts_with('[') {
            unconditional = line == "[all]";
        } else if let Some(name) = line.strip_prefix("cmdline=").filter(|_| unconditional) {
            if !name.is_empty() && !name.contains('/') && name != ".." {
                file = name;
            }
        }
    }
    file
}

/// Whether a Raspberry Pi kernel would enable the memory controller: off by default, and the
/// last `cgroup_enable=`/`cgroup_disable=` naming `memory` wins.
fn memory_enabled(cmdline: &str) -> bool {
    let mut enabled = false;
    for word in cmdline.split_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        if value.split(',').any(|c| c == "memory") {
            match key {
                "cgroup_enable" => enabled = true,
                "cgroup_disable" => enabled = false,
                _ => {}
            }
        }
    }
    enabled
}

/// The host's /proc/cgroups with the `memory` line's enabled column set.
fn cgroups_table(host: &str, memory: bool) -> String {
    host.lines()
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            if cols.first() == Some(&"memory") && cols.len() == 4 {
                format!("{}\t{}\t{}\t{}\n", cols[0], cols[1], cols[2], u8::from(memory))
            } else {
                format!("{line}\n")
            }
        })
        .collect()
}

const CONFIG_BOOKWORM: &str = "\
# For more options and information see
# http://rptl.io/configtxt
# Some settings may impact device functionality. See link above for details

# Uncomment some or all of these to enable the optional hardware interfaces
#dtparam=i2c_arm=on
#dtparam=i2s=on
#dtparam=spi=on

# Enable audio (loads snd_bcm2835)
dtparam=audio=on

# Automatically load overlays for detected cameras
camera_auto_detect=1

# Automatically load overlays for detected DSI displays
display_auto_detect=1

# Automatically load initramfs files, if found
auto_initramfs=1

# Enable DRM VC4 V3D driver
dtoverlay=vc4-kms-v3d
max_framebuffers=2

# Don't have the firmware create an initial video= setting in cmdline.txt.
# Use the kernel's default instead.
disable_fw_kms_setup=1

# Run in 64-bit mode
arm_64bit=1

# Disable compensation for displays with overscan
disable_overscan=1

# Run as fast as firmware / board allows
arm_boost=1

[cm4]
# Enable host mode on the 2711 built-in XHCI USB controller.
# This line should be removed if the legacy DWC2 controller is required
# (e.g. for USB device mode) or if USB support is not required.
otg_mode=1

[all]
";

const CONFIG_LEGACY: &str = "\
# For more options and information see
# http://rpf.io/configtxt
# Some settings may impact device functionality. See link above for details

# uncomment to force a specific HDMI mode (this will force VGA)
#hdmi_group=1
#hdmi_mode=1

# Uncomment some or all of these to enable the optional hardware interfaces
#dtparam=i2c_arm=on
#dtparam=i2s=on
#dtparam=spi=on

# Enable audio (loads snd_bcm2835)
dtparam=audio=on

[pi4]
# Enable DRM VC4 V3D driver on top of the dispmanx display stack
dtoverlay=vc4-fkms-v3d
max_framebuffers=2

[all]
#dtoverlay=vc4-fkms-v3d
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_cgroup_follows_the_command_line() {
        assert!(!memory_enabled("console=tty1 quiet"));
        assert!(memory_enabled("quiet cgroup_enable=cpuset,memory cgroup_memory=1"));
        assert!(!memory_enabled("cgroup_enable=memory cgroup_disable=memory"));
    }

    #[test]
    fn config_txt_can_name_another_command_line_file() {
        assert_eq!(cmdline_file(CONFIG_BOOKWORM), "cmdline.txt");
        assert_eq!(cmdline_file("cmdline=custom.txt\n"), "custom.txt");
        let later = format!("{CONFIG_BOOKWORM}cmdline=custom.txt\n");
        assert_eq!(cmdline_file(&later), "custom.txt", "after the final [all]");
        assert_eq!(cmdline_file("[cm4]\ncmdline=cm4.txt\n[all]\n"), "cmdline.txt", "other boards only");
        assert_eq!(cmdline_file("cmdline=../../etc/shadow\n"), "cmdline.txt");
    }

    #[test]
    fn cgroups_table_sets_only_the_memory_column() {
        let host = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t1\t1\t1\nmemory\t4\t14\t1\n";
        assert_eq!(
            cgroups_table(host, false),
            "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t1\t1\t1\nmemory\t4\t14\t0\n"
        );
        assert!(cgroups_table(host, true).ends_with("memory\t4\t14\t1\n"));
    }

    #[test]
    fn readings_round_trip_and_survive_a_partial_update() {
        let dir = std::env::temp_dir().join(format!("pikube-fw-test-{}", std::process::id()));
        assert_eq!(readings(&dir), DEFAULT_READINGS);
        set_readings(&dir, Some(0x50005), None).unwrap();
        set_readings(&dir, None, Some(85.0)).unwrap();
        assert_eq!(readings(&dir), (0x50005, 85.0));
        assert_eq!(fs::read_to_string(dir.join(THROTTLED)).unwrap(), "50005\n", "the driver prints %x");
        assert_eq!(parse_throttled("throttled=0x80008"), Ok(0x80008));
        fs::remove_dir_all(&dir).unwrap();
    }
}
