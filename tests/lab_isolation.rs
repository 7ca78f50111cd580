//! Lab tests run at the same time (several test binaries at once, several tests per binary), so
//! every lab a test brings up must have a name and a 10.77.<octet>.0/24 subnet no other test uses.
//! This reads the test sources and fails on a clash, naming both places.

use std::collections::BTreeMap;
use std::path::Path;

/// One `Lab::up(…)` call: where it is, the lab's name and its subnet's third octet.
#[derive(Debug, PartialEq)]
struct LabSite {
    at: String,
    name: String,
    octet: Option<u8>,
}

/// Finds every `Lab::up(` call in `text` (tests/common's `Lab::up(name, octet, args)` and
/// lab_nodes' `Lab::up(name, &["--subnet", "10.77.N.0/24", …])`).
fn lab_sites(file: &str, text: &str) -> Vec<LabSite> {
    let mut sites = Vec::new();
    for (start, _) in text.match_indices("Lab::up(") {
        let call = call_text(&text[start + "Lab::up(".len()..]);
        let line = text[..start].matches('\n').count() + 1;
        let at = format!("{file}:{line}");
        let Some(name) = literals(call).into_iter().next() else {
            panic!("{at}: Lab::up without a literal lab name; use one so this check can see it");
        };
        let after_name = call[call.find('"').unwrap() + name.len() + 2..].trim_start();
        let first_arg: String =
            after_name.trim_start_matches(',').trim_start().chars().take_while(char::is_ascii_digit).collect();
        let octet = first_arg
            .parse()
            .ok()
            .or_else(|| literals(call).iter().find_map(|l| l.strip_prefix("10.77.")?.split('.').next()?.parse().ok()));
        sites.push(LabSite { at, name, octet });
    }
    sites
}

/// The runner's own labs in scripts/test (`lab up --name NAME --subnet 10.77.N.0/24`).
fn runner_sites(file: &str, text: &str) -> Vec<LabSite> {
    let mut sites = Vec::new();
    for (start, _) in text.match_indices("lab up --name ") {
        let line = text[..start].matches('\n').count() + 1;
        let mut words = text[start + "lab up --name ".len()..].split_whitespace();
        let name = words.next().unwrap_or_default().to_string();
        let octet = (words.next() == Some("--subnet"))
            .then(|| words.next())
            .flatten()
            .and_then(|s| s.strip_prefix("10.77.")?.split('.').next()?.parse().ok());
        sites.push(LabSite { at: format!("{file}:{line}"), name, octet });
    }
    sites
}

/// The arguments of a call: `rest` up to the `)` that closes it.
fn call_text(rest: &str) -> &str {
    let mut depth = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return &rest[..i],
            ')' => depth -= 1,
            _ => {}
        }
    }
    rest
}

/// The string literals (without escapes, which lab names and subnets do not have) in `code`.
fn literals(code: &str) -> Vec<String> {
    code.split('"').skip(1).step_by(2).map(str::to_string).collect()
}

/// Every name or octet used by more than one site, as readable lines.
fn clashes(sites: &[LabSite]) -> Vec<String> {
    let mut by_name: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut by_octet: BTreeMap<u8, Vec<&str>> = BTreeMap::new();
    for s in sites {
        by_name.entry(&s.name).or_default().push(&s.at);
        if let Some(o) = s.octet {
            by_octet.entry(o).or_default().push(&s.at);
        }
    }
    let names = by_name
        .iter()
        .filter(|(_, at)| at.len() > 1)
        .map(|(n, at)| format!("lab name {n:?} is used at {}", at.join(", ")));
    let octets = by_octet
        .iter()
        .filter(|(_, at)| at.len() > 1)
        .map(|(o, at)| format!("subnet 10.77.{o}.0/24 is used at {}", at.join(", ")));
    names.chain(octets).collect()
}

#[test]
fn every_lab_has_its_own_name_and_subnet() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut sites = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("read tests/") {
        let path = entry.expect("tests/ entry").path();
        if path.extension().is_some_and(|e| e == "rs") && path.file_name() != Some("lab_isolation.rs".as_ref()) {
            let text = std::fs::read_to_string(&path).expect("read test source");
            sites.extend(lab_sites(&path.file_name().unwrap().to_string_lossy(), &text));
        }
    }
    let runner =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test")).expect("read scripts/test");
    let own = runner_sites("scripts/test", &runner);
    assert!(!own.is_empty(), "scripts/test builds the lab fixtures with a lab of its own; none found");
    sites.extend(own);
    // The lab tests of host_prep, k3s_cluster and lab_nodes: finding none means the check is blind.
    assert!(sites.len() >= 10, "found only {} Lab::up calls: {sites:#?}", sites.len());
    let unaddressed: Vec<_> = sites.iter().filter(|s| s.octet.is_none()).collect();
    assert!(
        unaddressed.is_empty(),
        "labs without their own subnet (the default one would be shared): {unaddressed:#?}"
    );
    let found = clashes(&sites);
    assert!(found.is_empty(), "labs that collide when tests run in parallel:\n{}", found.join("\n"));
}

#[test]
fn clashes_are_found_in_both_call_styles() {
    let a = "let lab = Lab::up(\"k3s-ha\", 42, &[\"--nodes\", \"3\", x.to_str().unwrap()]);\n";
    let b = "fn t() {\n    let lab = Lab::up(\n        \"k3s-ha\",\n        &[\"--nodes\", \"2\", \"--subnet\", \"10.77.42.0/24\"],\n    );\n}\n";
    let c = "prebuild() {\n  target/debug/pikube lab up --name k3s-ha --subnet 10.77.42.0/24 --nodes 1 >log\n}\n";
    let sites: Vec<_> =
        lab_sites("a.rs", a).into_iter().chain(lab_sites("b.rs", b)).chain(runner_sites("c.sh", c)).collect();
    assert_eq!(
        sites,
        [
            LabSite { at: "a.rs:1".into(), name: "k3s-ha".into(), octet: Some(42) },
            LabSite { at: "b.rs:2".into(), name: "k3s-ha".into(), octet: Some(42) },
            LabSite { at: "c.sh:2".into(), name: "k3s-ha".into(), octet: Some(42) },
        ]
    );
    assert_eq!(
        clashes(&sites),
        [
            "lab name \"k3s-ha\" is used at a.rs:1, b.rs:2, c.sh:2",
            "subnet 10.77.42.0/24 is used at a.rs:1, b.rs:2, c.sh:2"
        ]
    );
}
