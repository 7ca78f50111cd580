//! `pikube import ansible`: an Ansible inventory (INI or YAML) → a commented cluster file.
//!
//! Both formats parse into one [`Inventory`] (groups, hosts, vars, each with its source line);
//! `mapping` turns that into a cluster file using the group names of the common playbooks,
//! and the result is validated with pikube's own parser before it is written.

mod ini;
mod mapping;
mod render;
mod yaml;

use std::path::{Path, PathBuf};

use miette::Diagnostic;

use crate::config::Cluster;

/// `pikube import …`
#[derive(Debug, clap::Subcommand)]
pub enum ImportCommand {
    /// Turn an Ansible inventory (INI or YAML) into a commented cluster file.
    Ansible {
        /// The inventory file (`.yml`/`.yaml` is read as YAML, anything else as INI unless it looks like YAML).
        inventory: PathBuf,
        /// Write the cluster file here instead of printing it.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        /// Overwrite the output file if it exists.
        #[arg(long)]
        force: bool,
        /// For an inventory of several clusters (`<name>-master` groups): the one to import.
        /// Otherwise the cluster name to write (default: from the inventory's file name).
        #[arg(long, value_name = "NAME")]
        cluster: Option<String>,
    },
}

/// Why an import failed; each names the inventory file (and line where there is one).
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum ImportError {
    // `error`, not `source`: the message already holds it, and miette would print it twice.
    #[error("cannot read inventory {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{file}:{line}: {message}")]
    #[diagnostic(help("{hint}"))]
    Syntax { file: String, line: u64, message: String, hint: String },
    #[error("{file} holds {} clusters: {}", names.len(), names.join(", "))]
    #[diagnostic(help("import one at a time with --cluster NAME"))]
    SeveralClusters { file: String, names: Vec<String> },
    #[error("{file} has no cluster {name:?}; it holds: {}", names.join(", "))]
    #[diagnostic(help("pass one of those names to --cluster"))]
    UnknownCluster { file: String, name: String, names: Vec<String> },
    #[error("{file}: no host is in a control-plane group")]
    #[diagnostic(help(
        "pikube reads these groups as servers: {}; rename your control-plane group to one of them",
        mapping::SERVER_GROUPS.join(", ")
    ))]
    NoServers { file: String },
    #[error("{0} already exists")]
    #[diagnostic(help("pass --force to overwrite it, or choose another file with -o"))]
    Exists(String),
    #[error("cannot write {path}: {error}")]
    Write { path: String, error: std::io::Error },
    #[error("the cluster file generated from {file} does not validate:\n{errors}\n--- the generated file ---\n{text}")]
    #[diagnostic(help("fix the value in the inventory (each line's comment names where it came from), or write the cluster file by hand"))]
    Invalid { file: String, errors: String, text: String },
}

/// One inventory variable and the line it was set on.
#[derive(Debug, Clone)]
pub struct Var {
    pub key: String,
    pub value: String,
    pub line: u64,
}

#[derive(Debug, Default)]
pub struct Group {
    pub name: String,
    pub line: u64,
    pub hosts: Vec<String>,
    pub children: Vec<String>,
    pub vars: Vec<Var>,
}

#[derive(Debug)]
pub struct Host {
    pub name: String,
    pub line: u64,
    pub vars: Vec<Var>,
}

/// An inventory in either format: groups and hosts in file order.
#[derive(Debug, Default)]
pub struct Inventory {
    pub groups: Vec<Group>,
    pub hosts: Vec<Host>,
}

impl Inventory {
    fn group_mut(&mut self, name: &str, line: u64) -> &mut Group {
        let i = match self.groups.iter().position(|g| g.name == name) {
            Some(i) => i,
            None => {
                self.groups.push(Group { name: name.to_string(), line, ..Group::default() });
                self.groups.len() - 1
            }
        };
        &mut self.groups[i]
    }

    /// Records `host` in `group`; a host listed again (in another group) keeps its first line
    /// and gains the new vars, as in Ansible.
    fn add_host(&mut self, group: &str, name: &str, line: u64, vars: Vec<Var>) {
        let g = self.group_mut(group, line);
        if !g.hosts.iter().any(|h| h == name) {
            g.hosts.push(name.to_string());
        }
        match self.hosts.iter_mut().find(|h| h.name == name) {
            Some(h) => h.vars.extend(vars),
            None => self.hosts.push(Host { name: name.to_string(), line, vars }),
        }
    }

    fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }
}

/// Something of the inventory that has no place in the cluster file, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Unmapped {
    pub line: u64,
    pub what: String,
    pub why: String,
}

pub fn run(command: ImportCommand) -> miette::Result<()> {
    let ImportCommand::Ansible { inventory, output, force, cluster } = command;
    let file = inventory.display().to_string();
    let text = std::fs::read_to_string(&inventory).map_err(|error| ImportError::Read { path: file.clone(), error })?;
    let parsed = if is_yaml(&inventory, &text) { yaml::parse(&file, &text)? } else { ini::parse(&file, &text)? };
    let imported = mapping::map(&file, &parsed, cluster.as_deref(), default_name(&inventory))?;
    let rendered = render::cluster_file(&file, &imported);
    let shown = output.as_ref().map_or("<stdout>".to_string(), |o| o.display().to_string());
    // The command's promise is a file that validates; check it with the same parser `up` uses.
    Cluster::parse(Path::new(&shown), &rendered).map_err(|e| ImportError::Invalid {
        file: file.clone(),
        errors: e.plain(),
        text: rendered.clone(),
    })?;
    match &output {
        Some(path) => write_new(path, &rendered, force)?,
        None => print!("{rendered}"),
    }
    report(&file, &shown, &imported);
    Ok(())
}

/// `create_new` makes "never overwrite" hold even against a file that appears meanwhile.
fn write_new(path: &Path, text: &str, force: bool) -> Result<(), ImportError> {
    use std::io::Write;
    let shown = || path.display().to_string();
    let opened = if force {
        std::fs::File::create(path)
    } else {
        std::fs::OpenOptions::new().write(true).create_new(true).open(path)
    };
    let mut f = opened.map_err(|error| match error.kind() {
        std::io::ErrorKind::AlreadyExists => ImportError::Exists(shown()),
        _ => ImportError::Write { path: shown(), error },
    })?;
    f.write_all(text.as_bytes()).map_err(|error| ImportError::Write { path: shown(), error })
}

/// The summary and the unmapped list go to stderr so stdout stays a clean cluster file.
fn report(file: &str, shown: &str, imported: &mapping::Imported) {
    let roles = |r| imported.hosts.iter().filter(|h| h.role == r).count();
    eprintln!(
        "imported cluster {:?} from {file}: {} server(s), {} agent(s), {} load balancer(s) -> {shown}",
        imported.name,
        roles(crate::config::Role::Server),
        roles(crate::config::Role::Agent),
        roles(crate::config::Role::Loadbalancer),
    );
    if imported.unmapped.is_empty() {
        eprintln!("everything in {file} was mapped");
        return;
    }
    eprintln!("not mapped ({}):", imported.unmapped.len());
    for u in &imported.unmapped {
        eprintln!("  {file}:{}: {}: {}", u.line, u.what, u.why);
    }
}

/// Ansible picks the parser by trying each; the extension, or a first line like `all:`, decides here.
fn is_yaml(path: &Path, text: &str) -> bool {
    if matches!(path.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")) {
        return true;
    }
    let first = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'));
    first.is_some_and(|l| l == "---" || (l.ends_with(':') && !l.starts_with('[')))
}

/// The cluster name and where it came from: the inventory's file name (`homelab.ini` → `homelab`), or
/// for the generic `hosts`/`inventory` its directory's (`inventory/homelab/hosts.yml` → `homelab`).
fn default_name(path: &Path) -> (String, String) {
    let generic = |n: &str| n.is_empty() || ["hosts", "inventory", "inventories", "."].contains(&n);
    let stem = mapping::dns_label(path.file_stem().and_then(|s| s.to_str()).unwrap_or(""));
    if !generic(&stem) {
        return (stem, format!("from the file name {}", path.display()));
    }
    let dir = std::path::absolute(path).ok().and_then(|p| p.parent()?.file_name()?.to_str().map(mapping::dns_label));
    match dir.filter(|d| !generic(d)) {
        Some(d) => (d, format!("from the directory of {}", path.display())),
        None => (
            "cluster".into(),
            "the inventory's file and directory names are generic: rename it here or pass --cluster NAME".into(),
        ),
    }
}
