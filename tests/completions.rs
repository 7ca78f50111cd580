//! `pikube completions SHELL`: each shell's script, produced by the real binary, names the
//! subcommands; bash, zsh and fish parse it (scripts/test installs zsh and fish; a missing one
//! is a visible SKIP, which fails a strict run).

use std::process::Command;

mod skip;

const BIN: &str = env!("CARGO_BIN_EXE_pikube");

const SUBCOMMANDS: &[&str] =
    &["init", "schema", "check", "plan", "up", "status", "certs", "kubeconfig", "down", "lab", "completions"];

fn script(shell: &str) -> String {
    let out = Command::new(BIN).args(["completions", shell]).output().expect("run pikube completions");
    assert!(out.status.success(), "completions {shell}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 script")
}

/// Checks that `shell` accepts `script` without running it (`-n`: parse only); skips, saying
/// so, when that shell is not installed.
fn syntax_check(shell: &str, script: &str) {
    let path = std::env::temp_dir().join(format!("pikube-completion-{}.{shell}", std::process::id()));
    std::fs::write(&path, script).expect("write the script");
    let out = Command::new(shell).arg("-n").arg(&path).output();
    let _ = std::fs::remove_file(&path);
    let out = match out {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            skip!(return "{shell} is not installed (scripts/test installs it): its script's syntax is not checked")
        }
        Err(e) => panic!("running {shell} -n: {e}"),
    };
    assert!(out.status.success(), "{shell} -n rejects the script: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn each_shell_gets_a_script_naming_the_subcommands() {
    for (shell, names_one, flag) in [
        ("bash", (|s: &str, c: &str| s.contains(&format!("pikube,{c})"))) as fn(&str, &str) -> bool, "--"),
        ("zsh", |s, c| s.contains(&format!("'{c}:")), "--"),
        ("fish", |s, c| s.contains(&format!("-a \"{c}\"")), "-l "),
    ] {
        let text = script(shell);
        for c in SUBCOMMANDS {
            assert!(names_one(&text, c), "the {shell} script does not offer `{c}`:\n{text}");
        }
        // Flags of a subcommand are completed too.
        for f in ["reboot-timeout", "plain", "json"] {
            assert!(text.contains(&format!("{flag}{f}")), "{shell}: no `{flag}{f}`:\n{text}");
        }
    }
    for shell in ["bash", "zsh", "fish"] {
        syntax_check(shell, &script(shell));
    }
}

#[test]
fn an_unknown_shell_is_refused_with_the_choices() {
    let out = Command::new(BIN).args(["completions", "tcsh"]).output().expect("run pikube completions");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bash") && err.contains("zsh") && err.contains("fish"), "{err}");
}
