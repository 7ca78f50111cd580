//! A no-op `up` is fast because it asks each untouched host one thing (its facts) — and it
//! must stay honest: drift made by hand between two runs is found, fixed and verified again
//! from fresh facts, and a change made during the run is re-verified, not judged on the facts
//! from before it.
//!
//! What a host runs is counted on the host itself: root's login shell on the nodes becomes a
//! small wrapper that logs each command sshd hands it, then runs it with /bin/sh.

mod common;

use common::{text, Lab};

const LOG: &str = "/var/log/pikube-commands";

/// Makes `node` log every command it runs over SSH (one line each, start of the script).
fn count_commands(lab: &Lab, node: &str) {
    lab.sh(
        node,
        &format!(
            "printf '%s\\n' '#!/bin/sh' 'printf \"%s\\n\" \"$(printf %s \"$2\" | tr \"\\n\" \" \" | cut -c1-200)\" >> {LOG}' \
             'exec /bin/sh \"$@\"' > /usr/local/bin/logsh && chmod 755 /usr/local/bin/logsh && chsh -s /usr/local/bin/logsh root"
        ),
    );
}

/// pikube's commands on `node` since the last call (pikube wraps each in `sh -c`; the test's
/// own `lab ssh` commands are raw scripts), and a fresh log.
fn pikube_commands(lab: &Lab, node: &str) -> Vec<String> {
    let log = lab.sh(node, &format!("cat {LOG} 2>/dev/null; : > {LOG}"));
    log.lines().filter(|l| l.starts_with("sh -c")).map(str::to_string).collect()
}

fn facts_runs(cmds: &[String]) -> usize {
    cmds.iter().filter(|c| c.contains("sec now")).count()
}

fn up(lab: &Lab) -> String {
    let out = lab.pikube(&["up", "-f", lab.cluster_file().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn noop_up_asks_only_for_facts_and_still_fixes_and_reverifies_drift() {
    require_lab!();
    let lab = Lab::up("tnoop-drift", 26, &["--nodes", "2"]);
    let first = up(&lab);
    assert!(first.contains("node1 (") && first.contains("changed"), "first up converges:\n{first}");
    for node in ["node1", "node2"] {
        count_commands(&lab, node);
        pikube_commands(&lab, node);
    }

    // A converged host: one command (the facts script) and "no changes".
    let noop = up(&lab);
    assert!(noop.contains("Up: no changes; every host already converged and verified."), "{noop}");
    for node in ["node1", "node2"] {
        let cmds = pikube_commands(&lab, node);
        assert_eq!(cmds.len(), 1, "{node}: a no-op up runs only the facts script, ran:\n{}", cmds.join("\n"));
        assert_eq!(facts_runs(&cmds), 1, "{node}: {cmds:?}");
    }

    // Drift by hand on node1 only: a sysctl, /etc/hosts and a deleted module file.
    lab.sh("node1", "sysctl -q -w net.ipv4.ip_forward=0");
    lab.sh("node1", "sed -i '/node2/d' /etc/hosts");
    lab.sh("node1", "rm /etc/modules-load.d/pikube-k8s.conf");
    let fixed = up(&lab);
    let node1 = section(&fixed, "node1");
    for want in ["update /etc/hosts", "create /etc/modules-load.d/pikube-k8s.conf", "apply sysctls net.ipv4.ip_forward"]
    {
        assert!(node1.contains(want), "node1 should show `{want}`:\n{fixed}");
    }
    assert!(section(&fixed, "node2").contains("): no changes"), "{fixed}");
    let cmds = pikube_commands(&lab, "node1");
    assert_eq!(facts_runs(&cmds), 2, "the changed host is verified from fresh facts: {cmds:?}");
    assert_eq!(pikube_commands(&lab, "node2").len(), 1, "the untouched host still needs one command");
    assert_eq!(lab.sh("node1", "sysctl -n net.ipv4.ip_forward"), "1");
    assert!(lab.sh("node1", "cat /etc/hosts").contains("node2"));
    assert!(lab.sh("node1", "cat /etc/modules-load.d/pikube-k8s.conf").contains("br_netfilter"));
    assert!(up(&lab).contains("Up: no changes;"));

    // A change made during the run (a hook that turns forwarding off after host preparation)
    // is caught by verify: the facts from before the change would have passed.
    let file = std::fs::read_to_string(lab.cluster_file()).unwrap();
    let hook = "hooks:\n  hosts:\n    - phase: prepare hosts\n      when: after\n      on: [node2]\n      \
                run: sysctl -q -w net.ipv4.ip_forward=0\n";
    std::fs::write(lab.cluster_file(), format!("{file}{hook}")).unwrap();
    let out = lab.pikube(&["up", "-f", lab.cluster_file().to_str().unwrap()]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "verify must fail node2:\n{}", text(&out));
    assert!(
        section(&report, "node2").contains("verification failed: sysctl net.ipv4.ip_forward is Some(\"0\"), want 1"),
        "{}",
        text(&out)
    );
    assert!(section(&report, "node1").contains("): no changes"), "{report}");
}

/// The report lines of one host: its status line and the indented lines under it.
fn section(report: &str, node: &str) -> String {
    let mut lines = report.lines().skip_while(|l| !l.starts_with(&format!("{node} (")));
    let head = lines.next().unwrap_or_default().to_string();
    lines.take_while(|l| l.starts_with("  ")).fold(head, |acc, l| format!("{acc}\n{l}"))
}
