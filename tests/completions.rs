//! `pikube completions SHELL`: each shell's script, produced by the real binary, names the
//! subcommands; bash (always installed) parses it, zsh and fish do too where installed.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_pikube");

const SUBCOMMANDS: &[&str] =
    &["init", "schema", "check", "plan", "up", "status", "certs", "kubeconfig", "down", "lab", "completions"];

fn script(shell: &str) -> String {
    let out = Command::new(BIN).args(["completions", shell]).output().expect("run pikube completions");
    assert!(out.status.success(), "completions {shell}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 script")
}

/// Checks that `shell` accepts `script` without running it (`-n`: parse only); false when that
/// shell is not installed.
fn syntax_checked(shell: &str, script: &str) -> bool {
    let path = std::env::temp_dir().join(format!("pikube-completion-{}.{shell}", std::process::id()));
    std::fs::write(&path, script).expect("write the script");
    let out = Command::new(shell).arg("-n").arg(&path).output();
    let _ = std::fs::remove_file(&path);
    let Ok(out) = out else { return false };
    assert!(out.status.success(), "{shell} -n rejects the script: {}", String::from_utf8_lossy(&out.stderr));
    true
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
    assert!(syntax_checked("bash", &script("bash")), "bash is always installed");
    // zsh and fish are checked where installed (the syntax is theirs; bash above is required).
    for shell in ["zsh", "fish"] {
        syntax_checked(shell, &script(shell));
    }
}

#[test]
fn an_unknown_shell_is_refused_with_the_choices() {
    let out = Command::new(BIN).args(["completions", "tcsh"]).output().expect("run pikube completions");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bash") && err.contains("zsh") && err.contains("fish"), "{err}");
}
