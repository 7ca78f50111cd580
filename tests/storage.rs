//! `hosts[].storage` on lab nodes with a second disk (`lab up --extra-disk`: a sparse file on a
//! loop device, passed into the node, with udev's /dev/disk links kept by the lab): the data
//! directories move onto it, mounted by UUID; the mounts come back after a reboot; a second
//! `up` changes nothing; a disk that is not empty, or that holds the running system, is refused
//! in preflight with nothing changed; `down` empties what Kubernetes kept there and leaves the
//! disk mounted.
//!
//! k3s runs as the stand-in (standin/k3s, a labelled test double); kubeadm is real upstream
//! Kubernetes built by `pikube lab kubernetes`, whose containerd keeps its images on the disk.

mod common;

use std::time::{Duration, Instant};

use common::{lab_kubernetes, section, standin_artifacts, stdout, text, wait_for, Lab};

const DISK: &str = "/dev/disk/by-id/usb-pikube_lab_disk_node1-0:0";

/// The lab's cluster file with `storage:` on node1, written next to it; its path.
fn with_storage(lab: &Lab) -> String {
    let file = lab.cluster_file();
    let text = std::fs::read_to_string(&file).unwrap();
    let host = "    role: server\n";
    assert!(text.contains(host), "the lab's cluster file changed shape:\n{text}");
    let path = lab.dir().join("storage.yaml");
    std::fs::write(&path, text.replacen(host, &format!("{host}    storage:\n      device: {DISK}\n"), 1)).unwrap();
    path.to_str().unwrap().to_string()
}

/// Runs `up`, which must fail on node1 in preflight with `message`, having changed nothing.
fn refused_in_preflight(lab: &Lab, file: &str, message: &str) {
    let out = lab.pikube(&["up", "-f", file]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let node1 = section(&stdout(&out), "node1");
    eprintln!("{node1}");
    assert!(node1.contains("error: preflight: storage device ") && node1.contains(message), "{}", text(&out));
    assert!(!node1.contains("[prepare hosts]") && !node1.contains("[storage]"), "nothing may change:\n{node1}");
    let untouched = "test \"$(hostname)\" = debian && ! test -e /etc/systemd/system/var-lib-pikube-storage.mount \
                     && ! test -e /usr/local/bin/k3s && ! test -e /usr/local/bin/kubeadm";
    assert!(lab.ssh("node1", untouched).0, "node1 was changed by a refused up");
}

/// The refusals, each on the lab's real disk: holding /boot (the system disk), then holding
/// a file system; wiped afterwards, as the fix says.
fn refusals(lab: &Lab, file: &str) {
    lab.sh("node1", &format!("mkfs.ext4 -q {DISK} && mkdir -p /boot && mount {DISK} /boot"));
    refused_in_preflight(lab, file, "is the system disk");
    lab.sh("node1", "umount /boot");
    refused_in_preflight(lab, file, "is not empty: ext4");
    // `check` finds the same, before any `up`.
    let check = lab.pikube(&["check", "-f", file]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(stdout(&check).contains(&format!("{DISK} (/dev/loop")), "{}", text(&check));
    assert!(stdout(&check).contains(") is not empty: ext4"), "{}", text(&check));
    lab.sh("node1", &format!("wipefs -a {DISK}"));
}

/// The file system's UUID, after checking every data directory is a bind mount from it and
/// pikube's unit mounts it by that UUID.
fn mounted_by_uuid(lab: &Lab, dirs: &[&str]) -> String {
    let uuid = lab.sh("node1", &format!("blkid -p -s UUID -o value {DISK}"));
    assert_eq!(uuid.len(), 36, "no file system on the disk: {uuid:?}");
    let unit = lab.sh("node1", "cat /etc/systemd/system/var-lib-pikube-storage.mount");
    assert!(unit.contains(&format!("What=/dev/disk/by-uuid/{uuid}\n")) && unit.contains("nofail"), "{unit}");
    let dev = lab.sh("node1", &format!("readlink -f {DISK}"));
    assert_eq!(lab.sh("node1", &format!("readlink -f /dev/disk/by-uuid/{uuid}")), dev);
    for dir in dirs {
        let found = lab.sh("node1", &format!("findmnt -n -o SOURCE,FSTYPE --mountpoint {dir}"));
        let on_disk = dir.rsplit('/').next().unwrap();
        assert_eq!(found.split_whitespace().collect::<Vec<_>>(), [&format!("{dev}[/{on_disk}]"), "ext4"], "{dir}");
    }
    uuid
}

/// Reboots node1 the way the lab does (nspawn exits 133 and boots it again).
fn reboot(lab: &Lab) {
    let boot_id = lab.sh("node1", "cat /proc/sys/kernel/random/boot_id");
    let _ = lab.ssh("node1", "systemctl reboot");
    wait_for("node1 back after its reboot", Duration::from_secs(180), Duration::from_secs(2), || {
        let (ok, now) = lab.ssh("node1", "cat /proc/sys/kernel/random/boot_id");
        (ok && now.trim() != boot_id).then_some(()).ok_or(now)
    });
}

/// A second `up` changes nothing on node1.
fn no_changes(lab: &Lab, file: &str) {
    let out = lab.pikube(&["up", "-f", file]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("Up: no changes; "), "{}", text(&out));
}

#[test]
fn k3s_keeps_its_data_dir_and_kubelets_on_the_extra_disk() {
    require_lab!();
    let artifacts = standin_artifacts();
    let lab = Lab::up(
        "stor-k3s",
        160,
        &["--nodes", "1", "--k3s-artifacts", artifacts.to_str().unwrap(), "--extra-disk", "1024"],
    );
    let file = with_storage(&lab);
    refusals(&lab, &file);

    let plan = lab.pikube(&["plan", "-f", &file]);
    for line in [
        &format!("[storage] format {DISK} (/dev/loop"),
        "[storage] create /etc/systemd/system/k3s.service.d/pikube-storage.conf",
        "[storage] bind /var/lib/rancher, /var/lib/kubelet onto the data disk, at every boot",
    ] {
        assert!(stdout(&plan).contains(line), "plan lacks {line:?}:\n{}", text(&plan));
    }
    let started = Instant::now();
    let out = lab.pikube(&["up", "-f", &file]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("up: {:.1?}\n{}", started.elapsed(), stdout(&out));
    let uuid = mounted_by_uuid(&lab, &["/var/lib/rancher", "/var/lib/kubelet"]);
    // k3s's datastore is on the disk, not on the node's own (the SD card).
    let state = "/var/lib/rancher/k3s/server/db/standin-state.json";
    wait_for("k3s's state written", Duration::from_secs(60), Duration::from_secs(1), || {
        lab.ssh(
            "node1",
            &format!("test -s /var/lib/pikube/storage/rancher/k3s/server/db/standin-state.json && test -s {state}"),
        )
        .0
        .then_some(())
        .ok_or(String::new())
    });
    eprintln!("{}", lab.sh("node1", "df -h /var/lib/rancher /var/lib/kubelet /"));
    no_changes(&lab, &file);

    reboot(&lab);
    assert_eq!(mounted_by_uuid(&lab, &["/var/lib/rancher", "/var/lib/kubelet"]), uuid);
    wait_for("k3s running again, from the disk", Duration::from_secs(120), Duration::from_secs(2), || {
        let (ok, out) = lab.ssh("node1", "systemctl is-active k3s && k3s kubectl get nodes --no-headers");
        (ok && out.contains(" Ready ")).then_some(()).ok_or(out)
    });
    no_changes(&lab, &file);

    // `down` removes k3s and its data, which on this host is on the disk; the disk stays.
    let out = lab.pikube(&["down", "-f", &file, "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    let left = lab.sh(
        "node1",
        "ls -A /var/lib/kubelet /var/lib/pikube/storage/rancher; findmnt -n -o TARGET --mountpoint /var/lib/kubelet",
    );
    assert_eq!(left, "/var/lib/kubelet:\n\n/var/lib/pikube/storage/rancher:\n/var/lib/kubelet", "{left}");
}

/// A pod that runs on the single (control-plane) node, from the lab's image archive.
const PROBE_POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: probe
spec:
  tolerations:
  - {key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}
  containers:
  - name: probe
    image: pikube.local/probe:1
    imagePullPolicy: Never
    command: [sh, -c, 'echo probe started; exec sleep 3600']
";

#[test]
fn kubeadm_keeps_containerds_images_and_kubelets_data_on_the_extra_disk() {
    require_lab!();
    const VERSION: &str = "v1.34.4";
    let dir = lab_kubernetes(VERSION);
    let lab = Lab::up("stor-kadm", 161, &["--nodes", "1", "--kubeadm", dir.to_str().unwrap(), "--extra-disk", "16384"]);
    let file = with_storage(&lab);
    refusals(&lab, &file);

    let started = Instant::now();
    let out = lab.pikube(&["up", "-f", &file]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("up: {:.1?}\n{}", started.elapsed(), stdout(&out));
    let dirs = ["/var/lib/containerd", "/var/lib/kubelet"];
    let uuid = mounted_by_uuid(&lab, &dirs);
    let kubectl = dir.join(VERSION).join("bin/linux/amd64/kubectl");
    lab.kubectl_apply(&kubectl, PROBE_POD);
    wait_for("the probe pod Running", Duration::from_secs(240), Duration::from_secs(3), || {
        let out = stdout(&lab.kubectl(&kubectl, &["get", "pod", "probe", "-o", "jsonpath={.status.phase}"]));
        (out.trim() == "Running").then_some(()).ok_or(out)
    });
    // The images and the running pods' root file systems live on the disk.
    let images =
        lab.sh("node1", "du -sm /var/lib/pikube/storage/containerd/io.containerd.content.v1.content | cut -f1");
    assert!(images.parse::<u64>().unwrap() > 50, "{images} MiB of image content on the disk");
    let rootfs = lab.sh(
        "node1",
        "grep -c 'upperdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs' /proc/self/mountinfo",
    );
    assert!(rootfs.parse::<u64>().unwrap() >= 2, "{rootfs} container root file systems on the disk");
    eprintln!(
        "{}",
        lab.sh("node1", "df -h /var/lib/containerd /var/lib/kubelet /; findmnt -R /var/lib/pikube/storage")
    );
    no_changes(&lab, &file);

    reboot(&lab);
    assert_eq!(mounted_by_uuid(&lab, &dirs), uuid);
    wait_for("the API and the node back after the reboot", Duration::from_secs(300), Duration::from_secs(5), || {
        let out = stdout(&lab.kubectl(&kubectl, &["get", "nodes", "--no-headers"]));
        out.contains(" Ready ").then_some(()).ok_or(out)
    });
    no_changes(&lab, &file);

    // `down` resets kubeadm (kubelet's state goes); containerd and its images stay, as always.
    let out = lab.pikube(&["down", "-f", &file, "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    let left = lab.sh(
        "node1",
        "ls -A /var/lib/kubelet; for d in /var/lib/kubelet /var/lib/containerd; do findmnt -n -o TARGET --mountpoint $d; done",
    );
    assert_eq!(left, "/var/lib/kubelet\n/var/lib/containerd", "{left}");
}
