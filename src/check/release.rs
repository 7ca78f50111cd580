//! What the pinned Kubernetes release asks of the hosts, judged from their facts before `up`
//! changes anything: the etcd kubeadm moves a cluster to, containerd's own support matrix,
//! kubelet's refusal of cgroup v1, the architectures upstream builds for, and the VXLAN module
//! flannel needs. Each rule names where its facts come from.

use super::Severity;
use crate::artifacts::ArtifactError;
use crate::config::{Cluster, Cni, Distribution};
use crate::distro::kubeadm::upgrade::parse;
use crate::facts::{Arch, HostFacts};

type Version = (u64, u64, u64);

/// The codes of the rules below.
pub(super) const CODES: [&str; 5] = ["etcd-upgrade-path", "arm32", "vxlan-missing", "cgroup-v1", "containerd-version"];

/// One finding for a host: severity, code, message, fix.
pub(super) type Rule = (Severity, &'static str, String, String);

/// kubeadm's stacked etcd per Kubernetes minor release: `SupportedEtcdVersion` of kubeadm
/// v1.34.4 (cmd/kubeadm/app/constants/constants.go). Other minors get the nearest entry, as
/// kubeadm's `EtcdSupportedVersion` does.
const KUBEADM_ETCD: [(u64, &str); 4] = [(31, "3.5.24-0"), (32, "3.5.24-0"), (33, "3.5.24-0"), (34, "3.6.5-0")];

/// The oldest etcd that may move to 3.6: older members can bring removed members back as
/// "zombies" that stop the cluster (etcd.io/blog/2025/zombie_members_upgrade; 3.5.20 fixed
/// the related "too many learner member" failure).
const ETCD_BEFORE_3_6: Version = (3, 5, 26);

/// containerd's recommended versions per Kubernetes minor release ("Kubernetes Support" in
/// containerd's RELEASES.md as of 2026-08; 1.31 from the table before it): each line from
/// the given patch on. A newer line than the newest listed is fine too.
const CONTAINERD_MATRIX: [(u64, &[Version]); 6] = [
    (31, &[(2, 1, 0), (2, 0, 0), (1, 7, 20), (1, 6, 34)]),
    (32, &[(2, 1, 0), (2, 0, 1), (1, 7, 24), (1, 6, 36)]),
    (33, &[(2, 1, 0), (2, 0, 4), (1, 7, 24), (1, 6, 36)]),
    (34, &[(2, 1, 3), (2, 0, 6), (1, 7, 28), (1, 6, 39)]),
    (35, &[(2, 2, 0), (2, 1, 5), (1, 7, 28)]),
    (36, &[(2, 3, 0), (2, 2, 0)]),
];

/// The first minor release whose kubelet does not start on cgroup v1 unless told to
/// (`failCgroupV1` defaults to true: kubernetes/kubernetes#134298, KEP-5573).
const CGROUP_V2_FROM: u64 = 35;
/// The first minor release without containerd 1.x (v1.35 was its last; containerd's matrix
/// lists only 2.x for 1.36).
const CONTAINERD_2_FROM: u64 = 36;

/// Why kubeadm must not move the servers' etcd to the one it runs for `want` yet: a server
/// still runs an etcd 3.5 older than 3.5.26 (`servers`: name and etcd image). Once a server
/// runs 3.6 the move has begun, and finishing it is the way forward.
pub(super) fn etcd_refusal(want: &str, servers: &[(&str, &str)]) -> Option<(String, String)> {
    let minor = parse(want)?.1;
    let target = kubeadm_etcd(minor);
    if parse(target).is_none_or(|t| (t.0, t.1) < (3, 6)) {
        return None;
    }
    let running: Vec<(&str, Version)> =
        servers.iter().filter_map(|(name, image)| Some((*name, parse(image.rsplit_once(':')?.1)?))).collect();
    if running.iter().any(|(_, v)| (v.0, v.1) >= (3, 6)) {
        return None;
    }
    let old: Vec<&(&str, Version)> = running.iter().filter(|(_, v)| *v < ETCD_BEFORE_3_6).collect();
    let (_, oldest) = old.iter().min_by_key(|(_, v)| *v)?;
    let names: Vec<&str> = old.iter().map(|(n, _)| *n).collect();
    let (safe, oldest) = (dotted(ETCD_BEFORE_3_6), dotted(*oldest));
    Some((
        format!(
            "kubeadm v1.{minor} moves etcd to {target}, but {} run(s) etcd {oldest}: etcd must be on v{safe} or later \
             before 3.6, or members removed earlier can come back as \"zombie\" members and stop the cluster \
             (etcd.io/blog/2025/zombie_members_upgrade)",
            names.join(", ")
        ),
        format!(
            "first move etcd to {safe} on the release the cluster runs: set `etcd.local.imageTag: {safe}-0` in the \
             kube-system/kubeadm-config ConfigMap, run `kubeadm upgrade apply <running version>` on the first server \
             and `kubeadm upgrade node` on the others (air-gapped: import the image first), wait until every member \
             is healthy, take imageTag out again, then pin {want}"
        ),
    ))
}

/// The etcd image tag kubeadm runs for a minor release.
fn kubeadm_etcd(minor: u64) -> &'static str {
    KUBEADM_ETCD.iter().min_by_key(|(m, _)| m.abs_diff(minor)).map_or("", |(_, tag)| tag)
}

/// What the cluster's distribution and the pinned release `want` ask of one server or agent.
pub(super) fn host_rules(cluster: &Cluster, want: Option<&str>, name: &str, f: &HostFacts) -> Vec<Rule> {
    let kubeadm = cluster.distribution() == Distribution::Kubeadm;
    let mut out = Vec::new();
    if kubeadm && f.arch == Arch::Armv7 {
        let model = f.pi_model.as_deref().unwrap_or("armv7");
        let e = ArtifactError::NoArm32;
        out.push((Severity::Error, "arm32", format!("{name} runs 32-bit arm ({model}): {e}"), e.hint()));
    }
    out.extend(vxlan(cluster, f));
    let Some(want) = want.and_then(parse).filter(|_| kubeadm) else { return out };
    out.extend(cgroup(want, f));
    out.extend(containerd(want, f));
    out
}

/// flannel (k3s's built-in network, kubeadm's default CNI) runs VXLAN; without the module its
/// pods crash-loop and every node stays NotReady. Ubuntu's Raspberry Pi kernels ship it in a
/// package of its own (k3s docs, "Enabling vxlan for Ubuntu 21.10+ on Raspberry Pi").
fn vxlan(cluster: &Cluster, f: &HostFacts) -> Option<Rule> {
    let flannel = cluster.distribution() == Distribution::K3s || cluster.spec.kubernetes.cni == Cni::Flannel;
    if !flannel || f.vxlan {
        return None;
    }
    let fix = if f.os_id == "ubuntu" && f.kernel.ends_with("-raspi") {
        "run `sudo apt install linux-modules-extra-raspi` and reboot: Ubuntu's Raspberry Pi kernels keep vxlan in that package"
    } else {
        "install the package with the kernel's extra modules (vxlan) and reboot; with kubeadm, `cni: none` and a pod network without VXLAN also works"
    };
    let message = format!(
        "the kernel {} has no vxlan module: flannel cannot create its VXLAN interface, so pods get no network",
        f.kernel
    );
    Some((Severity::Error, "vxlan-missing", message, fix.into()))
}

/// kubelet from v1.35 on does not start on a host without the unified cgroup hierarchy.
fn cgroup(want: Version, f: &HostFacts) -> Option<Rule> {
    if (want.0, want.1) < (1, CGROUP_V2_FROM) || f.cgroup_v2 {
        return None;
    }
    let message = format!(
        "cgroup v1 (/sys/fs/cgroup is not the unified hierarchy): kubelet v{}.{} does not start there \
         (failCgroupV1 is true by default since v1.35)",
        want.0, want.1
    );
    let fix = if f.kernel_cmdline.contains("systemd.unified_cgroup_hierarchy=0") {
        "remove systemd.unified_cgroup_hierarchy=0 from the kernel command line (cmdline.txt on a Pi) and reboot, or stay on v1.34.x"
    } else {
        "boot with cgroup v2 (the default of Raspberry Pi OS Bookworm, Debian 11 and Ubuntu 21.10 onwards), or stay on v1.34.x"
    };
    Some((Severity::Error, "cgroup-v1", message, fix.into()))
}

/// The hosts' containerd (installed, else what apt would install) against containerd's
/// matrix for the pinned release: outside it a warning, containerd 1.x from v1.36 an error.
fn containerd(want: Version, f: &HostFacts) -> Option<Rule> {
    let (text, source) = match (f.runtimes.get("containerd"), &f.containerd_candidate) {
        (Some(v), _) => (v.as_str(), "installed"),
        (None, Some(c)) => (c.as_str(), "what apt would install"),
        (None, None) => return None,
    };
    let have = containerd_version(text)?;
    let shown = dotted(have);
    if (want.0, want.1) >= (1, CONTAINERD_2_FROM) && have.0 < 2 {
        return Some((
            Severity::Error,
            "containerd-version",
            format!(
                "containerd {shown} ({source}): Kubernetes v{}.{} supports containerd 2.x only (v1.35 was the last release for 1.x)",
                want.0, want.1
            ),
            "install containerd 2.2 or later (an OS release that ships it, or Docker's `containerd.io` package) first, or stay on v1.35.x".into(),
        ));
    }
    let (minor, lines) = CONTAINERD_MATRIX.iter().rev().find(|(m, _)| *m <= want.1).unwrap_or(&CONTAINERD_MATRIX[0]);
    let listed = lines.iter().any(|l| (l.0, l.1) == (have.0, have.1) && have.2 >= l.2);
    let newer = lines.iter().all(|l| (have.0, have.1) > (l.0, l.1));
    if listed || newer {
        return None;
    }
    let wanted: Vec<String> = lines.iter().map(|l| format!("{}+", dotted(*l))).collect();
    Some((
        Severity::Warning,
        "containerd-version",
        format!(
            "containerd {shown} ({source}) is not what containerd recommends for Kubernetes v1.{minor}: {}",
            wanted.join(", ")
        ),
        "move to one of those (a newer OS release or its backports, or Docker's `containerd.io` package); see \"Kubernetes Support\" in containerd's RELEASES.md".into(),
    ))
}

/// `major.minor.patch` from `containerd --version` ("containerd github.com/containerd/containerd
/// 1.6.20~ds1 1.6.20~ds1-1+b1", "containerd containerd.io v1.7.27 05044ec…", "…/containerd/v2
/// v2.1.4 …") or an apt version ("1.6.20~ds1-1+deb12u1").
fn containerd_version(text: &str) -> Option<Version> {
    text.split_whitespace().find_map(|word| {
        let word = word.strip_prefix('v').unwrap_or(word);
        let core: String = word.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
        Some((parts.next()??, parts.next()??, parts.next()??))
    })
}

fn dotted(v: Version) -> String {
    format!("{}.{}.{}", v.0, v.1, v.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_versions_as_the_packages_print_them() {
        for (text, want) in [
            ("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1", (1, 6, 20)),
            ("containerd containerd.io v1.7.27 05044ec0a9a75232cad458027ca83437aae3f4da", (1, 7, 27)),
            (
                "containerd github.com/containerd/containerd/v2 v2.1.4 75cb2b7193e4e490e9fbdc236c0e811ccaba3376",
                (2, 1, 4),
            ),
            ("1.6.20~ds1-1+deb12u1", (1, 6, 20)),
            ("1.7.24-0ubuntu1~24.04.2", (1, 7, 24)),
        ] {
            assert_eq!(containerd_version(text), Some(want), "{text}");
        }
        assert_eq!(containerd_version("containerd unknown"), None);
    }

    #[test]
    fn kubeadm_moves_etcd_to_3_6_with_kubernetes_1_34() {
        assert_eq!(kubeadm_etcd(33), "3.5.24-0");
        assert_eq!(kubeadm_etcd(34), "3.6.5-0");
        assert_eq!(kubeadm_etcd(36), "3.6.5-0", "a newer minor gets the newest entry, as in kubeadm");
        assert_eq!(kubeadm_etcd(29), "3.5.24-0");
    }
}
