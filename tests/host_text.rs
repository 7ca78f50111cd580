//! Host-provided text on the operator's terminal, from real lab nodes: os-release, hostname and
//! machine-id carrying escape sequences and multi-byte characters are shown escaped, and
//! shortening them never panics.

mod common;

use common::*;

#[test]
fn hostile_host_text_is_shown_escaped_and_never_panics() {
    require_lab!();
    let lab = Lab::up("tsd-term", 85, &["--nodes", "2", "--pi", "bookworm"]);
    let file = lab.cluster_file();
    let file = file.to_str().unwrap();
    // A cloned card whose machine-id has a multi-byte character across byte 12 (`check` shows
    // its first 12 characters; slicing 12 bytes used to panic).
    for n in ["node1", "node2"] {
        lab.sh(n, r"printf 'abcdefghijk\303\251xyz\n' > /etc/machine-id");
    }
    // An os-release that would clear the operator's screen if printed as it is.
    lab.sh("node1", r#"rm -f /etc/os-release && printf 'ID=evil\nPRETTY_NAME="Evil\033[2J\rOS"\n' > /etc/os-release"#);
    let out = lab.pikube(&["check", "-f", file]);
    // Exit 1 (error findings), not 101 (a panic).
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let shown = stdout(&out);
    assert!(!shown.contains('\x1b') && !shown.contains('\r'), "raw control characters: {shown:?}");
    assert!(shown.contains(r"Evil\u{1b}[2J\rOS is not Debian"), "{shown}");
    assert!(shown.contains("machine-id abcdefghijké is also on"), "{shown}");

    // A hostname with an escape sequence, quoted in plan's change line for the host.
    lab.sh("node2", "tr -d - < /proc/sys/kernel/random/uuid > /etc/machine-id");
    // sethostname(2) itself: the hostname tool refuses such names, the kernel does not.
    lab.sh(
        "node2",
        r#"perl -e '$n = "evil\e[2Jx"; $nr = { x86_64 => 170, aarch64 => 161 }->{(POSIX::uname())[4]};
                    syscall($nr, $n, length $n) == 0 or die "sethostname: $!"' -MPOSIX"#,
    );
    let out = lab.pikube(&["plan", "-f", file]);
    let shown = stdout(&out);
    assert!(!shown.contains('\x1b'), "raw escape in plan: {}", text(&out));
    assert!(shown.contains(r"set hostname evil\u{1b}[2Jx → node2"), "{}", text(&out));
}
