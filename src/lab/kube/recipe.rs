//! The texts the Kubernetes build generates (wrapper go.mod files, CoreDNS's main, linker flags)
//! and the recipe key that names the cache entry. Pure functions, so tests pin them.

use sha2::{Digest, Sha256};

/// Bump when what the build takes from outside this module's code changes (the host's Debian
/// packages, the module proxy's answers): the code itself is part of the key ([BUILD_SOURCES]).
pub const RECIPE_VERSION: &str = "3";
/// This module's sources, whose code decides every step of the build (which modules, how images
/// are laid out, what goes into the archive).
const BUILD_SOURCES: [&str; 5] = [
    include_str!("mod.rs"),
    include_str!("build.rs"),
    include_str!("images.rs"),
    include_str!("oci.rs"),
    include_str!("recipe.rs"),
];
/// flannel: the newest release the Go proxy serves; its kube-flannel.yml names the images.
pub const FLANNEL: &str = "v0.28.10";
/// flannel's go.mod wants a tencentcloud VPC SDK version (for its Tencent Cloud backend, unused
/// here) that the module proxy refuses (403 "not available"); the release it does serve builds.
pub const FLANNEL_REPLACES: &[(&str, &str)] =
    &[("github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc", "v1.3.75")];
/// The flannel CNI plugin's own repository (flannel-io/cni-plugin) is not a Go module the proxy
/// serves; the same plugin lived in containernetworking/plugins (plugins/meta/flannel) up to
/// v0.9.1, which it does serve.
pub const CNI_PLUGINS: &str = "v0.9.1";
/// Debian packages (the host's bookworm) that go into images: busybox for `cp`/`sh` in the
/// flannel CNI and probe images, iptables with its library closure for kube-proxy and flannel.
pub const DEBS: &[&str] = &[
    "busybox-static",
    "iptables",
    "libip4tc2",
    "libip6tc2",
    "libxtables12",
    "libnftnl11",
    "libmnl0",
    "libnetfilter-conntrack3",
    "libnfnetlink0",
    "libc6",
];
/// The CoreDNS plugins kubeadm's Corefile uses (plus log, hosts and whoami, which are cheap),
/// as (directive, package under github.com/coredns/coredns/plugin/).
pub const COREDNS_PLUGINS: &[(&str, &str)] = &[
    ("reload", "reload"),
    ("ready", "ready"),
    ("health", "health"),
    ("prometheus", "metrics"),
    ("errors", "errors"),
    ("log", "log"),
    ("loadbalance", "loadbalance"),
    ("cache", "cache"),
    ("hosts", "hosts"),
    ("kubernetes", "kubernetes"),
    ("loop", "loop"),
    ("forward", "forward"),
    ("whoami", "whoami"),
];
/// The upstream Kubernetes commands built from `k8s.io/kubernetes/cmd/<name>`.
pub const KUBE_COMMANDS: &[&str] =
    &["kubeadm", "kubelet", "kubectl", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"];

/// Staging modules (`k8s.io/<name>`) from kubernetes' own go.mod: its `replace` lines pointing
/// into `./staging/`. Their published versions are `v0.<minor>.<patch>`.
pub fn staging_modules(kubernetes_go_mod: &str) -> Vec<String> {
    let mut names: Vec<String> = kubernetes_go_mod
        .lines()
        .filter_map(|line| {
            let (module, target) = line.trim().trim_start_matches("replace ").split_once("=>")?;
            target.trim().starts_with("./staging/").then(|| module.trim().to_string())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// `v1.34.4` -> (`1`, `34`, `4`).
pub fn split_version(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.strip_prefix('v')?.split('.');
    let numbers = (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    parts.next().is_none().then_some(numbers)
}

/// The wrapper module for kubernetes: `go install mod@version` refuses modules with replace
/// directives, so this module requires kubernetes and maps each staging module to its release.
pub fn kubernetes_go_mod(version: &str, staging: &[String]) -> String {
    let (_, minor, patch) = split_version(version).unwrap_or_default();
    let mut text = format!("module pikube.local/kubernetes\n\ngo 1.24.0\n\nrequire k8s.io/kubernetes {version}\n");
    if !staging.is_empty() {
        text.push_str("\nreplace (\n");
        for module in staging {
            text.push_str(&format!("\t{module} => {module} v0.{minor}.{patch}\n"));
        }
        text.push_str(")\n");
    }
    text
}

/// A wrapper module requiring `modules` (path, version) at exactly those versions, with
/// `replaces` (path, version) pinning dependencies.
pub fn wrapper_go_mod(name: &str, modules: &[(&str, &str)], replaces: &[(&str, &str)]) -> String {
    let mut text = format!("module pikube.local/{name}\n\ngo 1.24.0\n\nrequire (\n");
    for (path, version) in modules {
        text.push_str(&format!("\t{path} {version}\n"));
    }
    text.push_str(")\n");
    for (path, version) in replaces {
        text.push_str(&format!("\nreplace {path} => {path} {version}\n"));
    }
    text
}

/// CoreDNS's main with only [COREDNS_PLUGINS]: its documented compile-time plugin selection
/// (plugin.cfg + `go generate` writes the same two things: the imports, and
/// `dnsserver.Directives` in the order of CoreDNS's own list).
pub fn coredns_main() -> String {
    let mut imports = String::new();
    let mut sorted: Vec<&str> = COREDNS_PLUGINS.iter().map(|(_, package)| *package).collect();
    sorted.sort();
    for package in sorted {
        imports.push_str(&format!("\t_ \"github.com/coredns/coredns/plugin/{package}\"\n"));
    }
    let directives: Vec<String> =
        COREDNS_PLUGINS.iter().map(|(directive, _)| format!("\t\"{directive}\",\n")).collect();
    format!(
        "// Generated by pikube: CoreDNS with the plugins kubeadm's Corefile uses.\npackage main\n\nimport (\n\
         \t\"github.com/coredns/coredns/core/dnsserver\"\n\t\"github.com/coredns/coredns/coremain\"\n\n{imports})\n\n\
         func init() {{\n\tdnsserver.Directives = []string{{\n{}\t}}\n}}\n\nfunc main() {{\n\tcoremain.Run()\n}}\n",
        directives.concat()
    )
}

/// The version variables upstream's hack/lib/version.sh sets, in both packages that carry them;
/// without them kubeadm asks for images tagged with a placeholder version.
pub fn kubernetes_ldflags(version: &str, build_date: &str, commit: Option<&str>) -> String {
    let (major, minor, _) = split_version(version).unwrap_or_default();
    let mut flags = String::from("-s -w");
    for package in ["k8s.io/client-go/pkg/version", "k8s.io/component-base/version"] {
        flags.push_str(&format!(
            " -X {package}.buildDate={build_date} -X {package}.gitTreeState=clean -X {package}.gitVersion={version} \
             -X {package}.gitMajor={major} -X {package}.gitMinor={minor}"
        ));
        if let Some(commit) = commit {
            flags.push_str(&format!(" -X {package}.gitCommit={commit}"));
        }
    }
    flags
}

/// flannel's Makefile sets its version the same way, and on amd64 links statically with cgo
/// (its UDP backend is C there; without cgo flanneld does not compile).
pub fn flannel_ldflags() -> String {
    format!("-s -w -X github.com/flannel-io/flannel/pkg/version.Version={FLANNEL} -extldflags \"-static\"")
}

/// The code of a source file as the cache key sees it: without its unit tests, comments,
/// indentation and blank lines, so rewording a comment or reformatting keeps the cached build
/// and a change to the code makes a new one.
fn code_of(source: &str) -> String {
    let code = source.split("\n#[cfg(test)]\nmod tests").next().unwrap_or(source);
    code.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// [BUILD_SOURCES]' code, as the key hashes it.
fn build_code() -> String {
    BUILD_SOURCES.map(code_of).join("\n--\n")
}

/// The cache key: everything that decides the output, hashed; 8 hex digits name the entry.
pub fn key(version: &str, arch: &str, go_version: &str) -> String {
    key_with(version, arch, go_version, &build_code())
}

fn key_with(version: &str, arch: &str, go_version: &str, code: &str) -> String {
    let recipe = [
        RECIPE_VERSION,
        code,
        version,
        arch,
        go_version.trim(),
        FLANNEL,
        CNI_PLUGINS,
        &DEBS.join(","),
        &KUBE_COMMANDS.join(","),
        &kubernetes_go_mod(version, &["k8s.io/example".to_string()]),
        &kubernetes_ldflags(version, "DATE", Some("COMMIT")),
        &coredns_main(),
        &flannel_ldflags(),
        &wrapper_go_mod("flannel", &[("github.com/flannel-io/flannel", FLANNEL)], FLANNEL_REPLACES),
    ]
    .join("\n--\n");
    hex::encode(Sha256::digest(recipe.as_bytes()))[..8].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBE_GO_MOD: &str = "module k8s.io/kubernetes\n\nrequire (\n\tk8s.io/api v0.0.0\n)\n\n\
        replace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n\tk8s.io/kubelet => ./staging/src/k8s.io/kubelet\n)\n\
        replace k8s.io/kms => ./staging/src/k8s.io/kms\nreplace github.com/x/y => github.com/x/y v1.0.0\n";

    #[test]
    fn staging_modules_are_the_replaces_into_staging() {
        assert_eq!(staging_modules(KUBE_GO_MOD), ["k8s.io/api", "k8s.io/kms", "k8s.io/kubelet"]);
    }

    #[test]
    fn kubernetes_wrapper_maps_staging_to_v0_releases() {
        let text = kubernetes_go_mod("v1.34.4", &staging_modules(KUBE_GO_MOD));
        assert_eq!(
            text,
            "module pikube.local/kubernetes\n\ngo 1.24.0\n\nrequire k8s.io/kubernetes v1.34.4\n\nreplace (\n\
             \tk8s.io/api => k8s.io/api v0.34.4\n\tk8s.io/kms => k8s.io/kms v0.34.4\n\
             \tk8s.io/kubelet => k8s.io/kubelet v0.34.4\n)\n"
        );
    }

    #[test]
    fn wrappers_require_exact_versions_and_pin_replaces() {
        let text =
            wrapper_go_mod("flannel", &[("github.com/flannel-io/flannel", "v0.28.10")], &[("example.com/x", "v1.0.0")]);
        assert_eq!(
            text,
            "module pikube.local/flannel\n\ngo 1.24.0\n\nrequire (\n\tgithub.com/flannel-io/flannel v0.28.10\n)\n\n\
             replace example.com/x => example.com/x v1.0.0\n"
        );
    }

    #[test]
    fn versions_split_or_refuse() {
        assert_eq!(split_version("v1.34.4"), Some((1, 34, 4)));
        assert_eq!(split_version("1.34.4"), None);
        assert_eq!(split_version("v1.34"), None);
        assert_eq!(split_version("v1.34.4.1"), None);
    }

    #[test]
    fn ldflags_set_both_version_packages() {
        let flags = kubernetes_ldflags("v1.34.4", "2026-02-10T12:53:36Z", None);
        for package in ["k8s.io/client-go/pkg/version", "k8s.io/component-base/version"] {
            assert!(flags.contains(&format!("-X {package}.gitVersion=v1.34.4")), "{flags}");
            assert!(flags.contains(&format!("-X {package}.gitMajor=1 -X {package}.gitMinor=34")), "{flags}");
            assert!(flags.contains(&format!("-X {package}.buildDate=2026-02-10T12:53:36Z")), "{flags}");
        }
        assert!(!flags.contains("gitCommit"));
        assert!(
            kubernetes_ldflags("v1.34.4", "D", Some("abc")).contains("-X k8s.io/component-base/version.gitCommit=abc")
        );
    }

    #[test]
    fn coredns_main_registers_kubeadms_plugins_in_coredns_order() {
        let text = coredns_main();
        assert!(text.contains("\t_ \"github.com/coredns/coredns/plugin/metrics\"\n"), "{text}");
        assert!(text.contains("dnsserver.Directives = []string{\n\t\"reload\",\n\t\"ready\",\n"), "{text}");
        assert!(text.contains("func main() {\n\tcoremain.Run()\n}\n"), "{text}");
        // CoreDNS's own order (core/dnsserver/zdirectives.go), of which ours is a subsequence.
        let upstream = [
            "reload",
            "ready",
            "health",
            "prometheus",
            "errors",
            "log",
            "loadbalance",
            "cache",
            "hosts",
            "kubernetes",
            "loop",
            "forward",
            "whoami",
        ];
        let ours: Vec<&str> = COREDNS_PLUGINS.iter().map(|(d, _)| *d).collect();
        assert_eq!(ours, upstream);
    }

    #[test]
    fn the_key_follows_the_build_code_not_its_comments() {
        let code =
            code_of("//! doc\nfn step() {\n    // why\n    run(\"go build\");\n}\n\n#[cfg(test)]\nmod tests {}\n");
        assert_eq!(code, "fn step() {\nrun(\"go build\");\n}");
        let reworded = code_of("//! other doc\n  fn step() {\n\n    // another why\n        run(\"go build\");\n}\n");
        assert_eq!(reworded, code, "comments, blank lines and indentation are not the build");
        let base = key_with("v1.34.4", "amd64", "go1.26.8", &code);
        assert_eq!(base, key_with("v1.34.4", "amd64", "go1.26.8", &reworded));
        assert_ne!(base, key_with("v1.34.4", "amd64", "go1.26.8", &code.replace("go build", "go build -trimpath")));
    }

    #[test]
    fn every_file_of_the_build_is_in_the_key() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lab/kube");
        for entry in std::fs::read_dir(&dir).expect("src/lab/kube") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("source");
            assert!(BUILD_SOURCES.contains(&text.as_str()), "{} is not in BUILD_SOURCES", path.display());
        }
    }

    #[test]
    fn the_key_changes_with_version_and_toolchain() {
        let base = key("v1.34.4", "amd64", "go1.26.8");
        assert_eq!(base.len(), 8);
        assert_eq!(base, key("v1.34.4", "amd64", "go1.26.8\n"));
        assert_ne!(base, key("v1.34.5", "amd64", "go1.26.8"));
        assert_ne!(base, key("v1.34.4", "amd64", "go1.26.9"));
        assert_ne!(base, key("v1.34.4", "arm64", "go1.26.8"));
    }
}
