//! The build steps: Go modules through the host's `go` (module proxy), pause through the host's
//! gcc, Debian packages for image userlands through the host's apt.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use miette::{miette, IntoDiagnostic, Result, WrapErr};

use crate::lab::util::{run, run_logged};

/// Where one build works: wrapper modules under `src/`, binaries under `bin/`, packages under
/// `debs/`; everything goes to `log`.
pub struct Work {
    pub dir: PathBuf,
    pub log: PathBuf,
    pub arch: &'static str,
}

/// A module the Go proxy served: where its source is, and the release's commit time (the
/// reproducible build date) and commit hash when the proxy records them.
pub struct Module {
    pub dir: PathBuf,
    pub time: String,
    pub commit: Option<String>,
}

impl Work {
    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.join("bin").join(name)
    }

    fn go(&self, module: &str, cgo: bool, args: &[&str]) -> Result<()> {
        let dir = self.dir.join("src").join(module);
        run_logged(
            Command::new("nice")
                .args(["-n", "10", "go"])
                .args(args)
                .current_dir(&dir)
                .env("CGO_ENABLED", if cgo { "1" } else { "0" })
                .env("GOOS", "linux")
                .env("GOARCH", self.arch)
                // The wrapper modules carry no go.sum: the go command records what it fetched.
                .env("GOFLAGS", "-mod=mod -buildvcs=false"),
            &self.log,
        )
    }

    /// Writes a wrapper module's files under `src/<module>/`.
    pub fn module(&self, module: &str, files: &[(&str, &str)]) -> Result<()> {
        let dir = self.dir.join("src").join(module);
        fs::create_dir_all(&dir).into_diagnostic()?;
        for (name, text) in files {
            fs::write(dir.join(name), text).into_diagnostic().wrap_err_with(|| format!("writing {module}/{name}"))?;
        }
        Ok(())
    }

    /// `go build` of `packages` in wrapper module `module`; with several packages the binaries
    /// land in bin/ under their package names, in one invocation so shared packages build once.
    pub fn go_build(&self, module: &str, ldflags: &str, output: &str, packages: &[&str]) -> Result<()> {
        let out = self.dir.join("bin").join(output);
        let out = out.to_string_lossy();
        let mut args = vec!["build", "-trimpath", "-ldflags", ldflags, "-o", &out];
        args.extend_from_slice(packages);
        self.go(module, false, &args)
    }

    /// [Work::go_build] with cgo, linked statically; pure-Go DNS and user lookups keep glibc's
    /// NSS (which a static binary cannot load) out.
    pub fn go_build_cgo(&self, module: &str, ldflags: &str, output: &str, packages: &[&str]) -> Result<()> {
        let out = self.dir.join("bin").join(output);
        let out = out.to_string_lossy();
        let mut args = vec!["build", "-trimpath", "-tags", "netgo,osusergo", "-ldflags", ldflags, "-o", &out];
        args.extend_from_slice(packages);
        self.go(module, true, &args)
    }

    /// Downloads `path@version` through the module proxy.
    pub fn download(&self, path: &str, version: &str) -> Result<Module> {
        let dir = self.dir.join("src/download");
        fs::create_dir_all(&dir).into_diagnostic()?;
        let out = run(Command::new("go")
            .args(["mod", "download", "-json", &format!("{path}@{version}")])
            .current_dir(&dir)
            .env("GOFLAGS", "-mod=mod"))
        .wrap_err_with(|| format!("downloading the Go module {path}@{version}"))?;
        let info: serde_json::Value = serde_json::from_str(&out).into_diagnostic()?;
        let field = |name: &str| info.get(name).and_then(|v| v.as_str()).map(str::to_string);
        let dir = field("Dir").ok_or_else(|| miette!("`go mod download` named no directory for {path}@{version}"))?;
        let release: serde_json::Value = field("Info")
            .and_then(|file| fs::read_to_string(file).ok())
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        let time = release.get("Time").and_then(|v| v.as_str()).unwrap_or("1970-01-01T00:00:00Z").to_string();
        let commit = info.pointer("/Origin/Hash").and_then(|v| v.as_str()).map(str::to_string);
        Ok(Module { dir: PathBuf::from(dir), time, commit })
    }

    /// Moves `bin/<from>` to `bin/<to>` (Go names binaries after their package).
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        fs::rename(self.bin(from), self.bin(to)).into_diagnostic().wrap_err_with(|| format!("renaming bin/{from}"))
    }

    /// The real pause, as upstream's build/pause/Makefile compiles it: static, size-optimised.
    pub fn pause(&self, kubernetes: &Path, tag: &str) -> Result<()> {
        let source = kubernetes.join("build/pause/linux/pause.c");
        run_logged(
            Command::new("gcc")
                .args(["-Os", "-Wall", "-Werror", "-static", &format!("-DVERSION=v{tag}-pikube"), "-o"])
                .arg(self.bin("pause"))
                .arg(&source),
            &self.log,
        )
        .wrap_err("compiling pause (needs gcc and libc6-dev)")?;
        run_logged(Command::new("strip").arg(self.bin("pause")), &self.log)
    }

    /// Downloads `packages` with the host's apt (bookworm, like the nodes) and unpacks them
    /// into `debs/<into>/`; returns that root and the .deb file names (name_version_arch).
    pub fn debs(&self, into: &str, packages: &[&str]) -> Result<(PathBuf, Vec<String>)> {
        let download = self.dir.join("debs/download").join(into);
        let root = self.dir.join("debs").join(into);
        fs::create_dir_all(&download).into_diagnostic()?;
        let mut cmd = Command::new("apt-get");
        cmd.arg("download").current_dir(&download);
        for package in packages {
            cmd.arg(format!("{package}:{}", self.arch));
        }
        run_logged(&mut cmd, &self.log)
            .wrap_err("downloading Debian packages for the images (apt-get update first?)")?;
        let mut names = Vec::new();
        for item in fs::read_dir(&download).into_diagnostic()? {
            let path = item.into_diagnostic()?.path();
            run_logged(Command::new("dpkg-deb").arg("-x").arg(&path).arg(&root), &self.log)?;
            names.push(path.file_name().unwrap_or_default().to_string_lossy().replace("%3a", ":"));
        }
        names.sort();
        Ok((root, names))
    }
}

/// Image names `kubeadm config images list` printed, by component.
pub struct KubeadmImages {
    pub names: Vec<String>,
}

impl KubeadmImages {
    pub fn parse(output: &str) -> Result<KubeadmImages> {
        let names: Vec<String> = output.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
        let images = KubeadmImages { names };
        for component in
            ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "etcd", "coredns", "pause"]
        {
            images.get(component)?;
        }
        if let Some(odd) = images.names.iter().find(|n| !n.contains(':')) {
            return Err(miette!("kubeadm named an image without a tag: {odd}"));
        }
        Ok(images)
    }

    /// The full name of `component`'s image (matched on the last path element of the name).
    pub fn get(&self, component: &str) -> Result<&str> {
        self.names
            .iter()
            .find(|name| name.split(':').next().and_then(|repo| repo.rsplit('/').next()) == Some(component))
            .map(String::as_str)
            .ok_or_else(|| miette!("`kubeadm config images list` named no {component} image: {:?}", self.names))
    }

    pub fn tag(&self, component: &str) -> Result<&str> {
        Ok(self.get(component)?.rsplit_once(':').map(|(_, tag)| tag).unwrap_or_default())
    }

    /// The Go module version for etcd's image tag: `3.6.5-0` -> `v3.6.5`.
    pub fn etcd_version(&self) -> Result<String> {
        let tag = self.tag("etcd")?;
        Ok(format!("v{}", tag.split('-').next().unwrap_or(tag)))
    }
}

/// Checks that the unpacked iptables runs from its own root (its library closure is complete).
pub fn check_iptables(root: &Path, log: &Path) -> Result<()> {
    run_logged(Command::new("chroot").arg(root).args(["/usr/sbin/xtables-nft-multi", "iptables", "--version"]), log)
        .wrap_err("iptables from the unpacked packages does not run: its library closure is incomplete")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "registry.k8s.io/kube-apiserver:v1.34.4\nregistry.k8s.io/kube-controller-manager:v1.34.4\n\
        registry.k8s.io/kube-scheduler:v1.34.4\nregistry.k8s.io/kube-proxy:v1.34.4\nregistry.k8s.io/coredns/coredns:v1.12.1\n\
        registry.k8s.io/pause:3.10.1\nregistry.k8s.io/etcd:3.6.5-0\n";

    #[test]
    fn kubeadm_image_list_names_each_component() {
        let images = KubeadmImages::parse(LIST).unwrap();
        assert_eq!(images.get("coredns").unwrap(), "registry.k8s.io/coredns/coredns:v1.12.1");
        assert_eq!(images.tag("pause").unwrap(), "3.10.1");
        assert_eq!(images.etcd_version().unwrap(), "v3.6.5");
        assert_eq!(images.names.len(), 7);
    }

    #[test]
    fn a_list_missing_a_component_is_refused() {
        let err = KubeadmImages::parse(&LIST.replace("registry.k8s.io/etcd:3.6.5-0\n", "")).err().unwrap();
        assert!(err.to_string().contains("named no etcd image"), "{err}");
    }
}
