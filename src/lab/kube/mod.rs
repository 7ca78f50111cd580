//! `pikube lab kubernetes`: upstream Kubernetes built from source (Go modules from the module
//! proxy), its images and an airgap directory in the layout users mirror from upstream:
//!
//! ```text
//! <dir>/<version>/bin/linux/<arch>/{kubeadm,kubelet,kubectl}{,.sha256}
//! <dir>/<version>/images/<arch>.tar      every image, one OCI archive for `ctr images import`
//! <dir>/<version>/cni/kube-flannel.yml   flannel's own manifest, naming the images built here
//! <dir>/<version>/cni/kube-flannel.yml.sha256   its sha256: it differs from flannel's in one line
//! <dir>/<version>/BUILD.json             versions, sizes and step times of the build
//! ```
//!
//! `<dir>` is a cache entry keyed by version and recipe ([recipe::key], which hashes this module's
//! code too); a warm call returns it.

mod build;
mod images;
mod oci;
mod recipe;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use miette::{miette, IntoDiagnostic, Result, WrapErr};

use super::base::CacheLock;
use super::state::Arch;
use super::util::run;
use build::{KubeadmImages, Work};

/// Parent of the cache entries.
pub const CACHE_DIR: &str = "/var/cache/pikube/kubernetes";

#[derive(Debug, clap::Args)]
pub struct KubeArgs {
    /// Kubernetes release (a `k8s.io/kubernetes` module version).
    #[arg(long, default_value = "v1.34.4")]
    pub version: String,
    /// Architecture to build for (only the host's, amd64, so far).
    #[arg(long, value_enum, default_value = "amd64")]
    pub arch: Arch,
    /// Parent directory of the cache entries.
    #[arg(long, value_name = "DIR", default_value = CACHE_DIR)]
    pub cache: PathBuf,
}

/// Builds what is missing and prints the airgap directory on the last line.
pub fn command(args: KubeArgs) -> Result<()> {
    let started = Instant::now();
    let dir = ensure(&args.version, args.arch, &args.cache)?;
    let record = fs::read_to_string(dir.join(&args.version).join("BUILD.json")).into_diagnostic()?;
    let record: serde_json::Value = serde_json::from_str(&record).into_diagnostic()?;
    print!("{}", summary(&record));
    println!("ready in {:.1?}", started.elapsed());
    println!("{}", dir.display());
    Ok(())
}

/// What the cache entry holds: binary and archive sizes, images, and how long its build took.
fn summary(record: &serde_json::Value) -> String {
    let megabytes = |v: &serde_json::Value| format!("{:.1} MB", v.as_f64().unwrap_or(0.0) / 1e6);
    let mut text = String::from("binaries:");
    for (name, size) in record["binaries"].as_object().into_iter().flatten() {
        text.push_str(&format!(" {name} {},", megabytes(size)));
    }
    text.pop();
    let images: Vec<&str> =
        record["images"].as_array().into_iter().flatten().filter_map(|i| i["name"].as_str()).collect();
    text.push_str(&format!(
        "\nimage archive: {} with {} images: {}\nbuilt in {}s (Go {}, build date {})\n",
        megabytes(&record["archive_bytes"]),
        images.len(),
        images.join(" "),
        record["total_seconds"],
        record["go"].as_str().unwrap_or("?"),
        record["build_date"].as_str().unwrap_or("?"),
    ));
    text
}

/// Returns the cache entry for `version`, building it first if the cache has none.
pub fn ensure(version: &str, arch: Arch, cache: &Path) -> Result<PathBuf> {
    recipe::split_version(version).ok_or_else(|| miette!("--version {version:?}: expected a release like v1.34.4"))?;
    if arch != Arch::Amd64 {
        return Err(miette!("--arch {}: only amd64 is built so far (pause, the image userlands and the check runs need the host's arch)", arch.debian()));
    }
    let go_version = run(Command::new("go").args(["env", "GOVERSION"]))
        .wrap_err("pikube lab kubernetes builds with the host's Go toolchain (`go` on PATH)")?;
    let key = recipe::key(version, arch.debian(), &go_version);
    let entry = format!("{version}-{key}");
    let done = cache.join(&entry);
    let built = || done.join(version).join("BUILD.json").is_file();
    if built() {
        images::vouch_for_manifest(&done.join(version))?;
        return Ok(done);
    }
    let _lock = CacheLock::acquire(&format!("kubernetes-{version}-{key}"))?;
    // Another caller may have built it while we waited for the lock.
    if built() {
        images::vouch_for_manifest(&done.join(version))?;
        return Ok(done);
    }
    // Named in full: the version's dots would make with_extension cut the name.
    let tmp = cache.join(format!("{entry}.tmp"));
    let log = cache.join(format!("{entry}.log"));
    if tmp.exists() {
        // Left by an interrupted build; we hold the lock, so nobody else is using it.
        fs::remove_dir_all(&tmp).into_diagnostic().wrap_err_with(|| format!("removing stale {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).into_diagnostic().wrap_err_with(|| format!("creating {}", tmp.display()))?;
    let _ = fs::remove_file(&log);
    println!("building Kubernetes {version} for {} from source (once) — log: {}", arch.debian(), log.display());
    let work = Work { dir: tmp.join("work"), log: log.clone(), arch: arch.debian() };
    let record = build_all(&work, version, go_version.trim(), &tmp).map_err(|err| with_log_tail(err, &log))?;
    fs::remove_dir_all(&work.dir).into_diagnostic()?;
    let text = serde_json::to_string_pretty(&record).into_diagnostic()?;
    write_file(&tmp.join(version).join("BUILD.json"), format!("{text}\n").as_bytes(), 0o644)?;
    images::vouch_for_manifest(&tmp.join(version))?;
    fs::rename(&tmp, &done).into_diagnostic().wrap_err_with(|| format!("moving {} into place", tmp.display()))?;
    Ok(done)
}

/// Times each step and prints it as it finishes.
struct Steps {
    started: Instant,
    done: Vec<serde_json::Value>,
}

impl Steps {
    fn run<T>(&mut self, name: &str, step: impl FnOnce() -> Result<T>) -> Result<T> {
        let started = Instant::now();
        let out = step().wrap_err_with(|| format!("step `{name}`"))?;
        let seconds = started.elapsed().as_secs_f64();
        println!("  {name}: {seconds:.1}s");
        self.done.push(serde_json::json!({"step": name, "seconds": (seconds * 10.0).round() / 10.0}));
        Ok(out)
    }
}

/// Every step, in order; returns the build record.
fn build_all(work: &Work, version: &str, go_version: &str, out: &Path) -> Result<serde_json::Value> {
    let mut steps = Steps { started: Instant::now(), done: Vec::new() };
    let kubernetes = steps.run("kubernetes (7 commands)", || {
        let module = work.download("k8s.io/kubernetes", version)?;
        let go_mod = fs::read_to_string(module.dir.join("go.mod")).into_diagnostic()?;
        work.module(
            "kubernetes",
            &[("go.mod", &recipe::kubernetes_go_mod(version, &recipe::staging_modules(&go_mod)))],
        )?;
        let packages: Vec<String> =
            recipe::KUBE_COMMANDS.iter().map(|c| format!("k8s.io/kubernetes/cmd/{c}")).collect();
        let packages: Vec<&str> = packages.iter().map(String::as_str).collect();
        let ldflags = recipe::kubernetes_ldflags(version, &module.time, module.commit.as_deref());
        work.go_build("kubernetes", &ldflags, "", &packages)?;
        Ok(module)
    })?;
    let listed =
        run(Command::new(work.bin("kubeadm")).args(["config", "images", "list", "--kubernetes-version", version]))?;
    let wanted = KubeadmImages::parse(&listed)?;
    let etcd = wanted.etcd_version()?;
    let coredns = wanted.tag("coredns")?.to_string();
    steps.run(&format!("etcd {etcd}"), || {
        let modules = [
            ("go.etcd.io/etcd/server/v3", etcd.as_str()),
            ("go.etcd.io/etcd/etcdctl/v3", etcd.as_str()),
            ("go.etcd.io/etcd/etcdutl/v3", etcd.as_str()),
        ];
        work.module("etcd", &[("go.mod", &recipe::wrapper_go_mod("etcd", &modules, &[]))])?;
        // The server module's root package is etcd's own main (it calls etcdmain.Main). etcdutl
        // restores snapshots (etcdctl lost `snapshot restore` in 3.6), as in upstream's image.
        let packages = ["go.etcd.io/etcd/server/v3", "go.etcd.io/etcd/etcdctl/v3", "go.etcd.io/etcd/etcdutl/v3"];
        work.go_build("etcd", "-s -w", "", &packages)?;
        work.rename("server", "etcd")
    })?;
    steps.run(&format!("coredns {coredns}"), || {
        let modules = [("github.com/coredns/coredns", coredns.as_str())];
        work.module(
            "coredns",
            &[("go.mod", &recipe::wrapper_go_mod("coredns", &modules, &[])), ("main.go", &recipe::coredns_main())],
        )?;
        work.go_build("coredns", "-s -w", "coredns", &["."])
    })?;
    let flannel = steps.run(&format!("flannel {}", recipe::FLANNEL), || {
        let module = work.download("github.com/flannel-io/flannel", recipe::FLANNEL)?;
        let modules = [("github.com/flannel-io/flannel", recipe::FLANNEL)];
        work.module("flannel", &[("go.mod", &recipe::wrapper_go_mod("flannel", &modules, recipe::FLANNEL_REPLACES))])?;
        let packages = ["github.com/flannel-io/flannel", "github.com/flannel-io/flannel/cmd/install_conf"];
        work.go_build_cgo("flannel", &recipe::flannel_ldflags(), "", &packages)?;
        work.rename("flannel", "flanneld")?;
        work.rename("install_conf", "install-conf")?;
        let plugins = [("github.com/containernetworking/plugins", recipe::CNI_PLUGINS)];
        work.module("cni", &[("go.mod", &recipe::wrapper_go_mod("cni", &plugins, &[]))])?;
        work.go_build("cni", "-s -w", "flannel-cni", &["github.com/containernetworking/plugins/plugins/meta/flannel"])?;
        Ok(module)
    })?;
    steps.run("pause", || work.pause(&kubernetes.dir, wanted.tag("pause")?))?;
    let debs = steps.run("debian packages", || {
        let busybox = work.debs("busybox", &recipe::DEBS[..1])?;
        let iptables = work.debs("iptables", &recipe::DEBS[1..])?;
        build::check_iptables(&iptables.0, &work.log)?;
        Ok((busybox, iptables))
    })?;
    let release = out.join(version);
    let layout = steps.run("images and airgap layout", || {
        // flannel's own manifest: the images built here carry the names it uses. One change, see
        // `images::cni_version_for_plugin`.
        let manifest = fs::read_to_string(flannel.dir.join("Documentation/kube-flannel.yml")).into_diagnostic()?;
        let manifest = images::cni_version_for_plugin(&manifest)?;
        let set = images::all(work, &wanted, &manifest, &debs.0 .0, &debs.1 .0)?;
        images::layout(work, &release, &set, &manifest)
    })?;
    let mut record = layout;
    record["version"] = version.into();
    record["arch"] = work.arch.into();
    record["go"] = go_version.into();
    record["modules"] = serde_json::json!({
        "k8s.io/kubernetes": version,
        "go.etcd.io/etcd/server/v3": etcd,
        "github.com/coredns/coredns": coredns,
        "github.com/flannel-io/flannel": recipe::FLANNEL,
        "github.com/containernetworking/plugins": recipe::CNI_PLUGINS,
    });
    record["build_date"] = kubernetes.time.into();
    record["debs"] = serde_json::json!([debs.0 .1, debs.1 .1].concat());
    record["steps"] = serde_json::json!(steps.done);
    record["total_seconds"] = (steps.started.elapsed().as_secs_f64().round()).into();
    Ok(record)
}

/// A failed build's error, with the end of its log (the go/gcc/apt output that says why).
fn with_log_tail(err: miette::Report, log: &Path) -> miette::Report {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(25)..].join("\n");
    err.wrap_err(format!("building Kubernetes failed; last lines of {}:\n{tail}", log.display()))
}

/// Writes a file (and its parent directories) with `mode`.
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).into_diagnostic().wrap_err_with(|| format!("creating {}", parent.display()))?;
    }
    super::util::write_atomic(path, contents, mode)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_summary_shows_sizes_images_and_build_time() {
        let record = serde_json::json!({
            "binaries": {"kubeadm": 74_494_114, "pause": 690_920},
            "images": [{"name": "registry.k8s.io/pause:3.10.1"}, {"name": "pikube.local/probe:1"}],
            "archive_bytes": 189_883_904,
            "total_seconds": 153.0,
            "go": "go1.26.8",
            "build_date": "2026-02-10T12:53:36Z",
        });
        assert_eq!(
            super::summary(&record),
            "binaries: kubeadm 74.5 MB, pause 0.7 MB\nimage archive: 189.9 MB with 2 images: \
             registry.k8s.io/pause:3.10.1 pikube.local/probe:1\nbuilt in 153.0s (Go go1.26.8, build date 2026-02-10T12:53:36Z)\n"
        );
    }
}
