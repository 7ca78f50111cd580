//! The one way a test of this package skips. Test binaries reach it through `common` or
//! `sdcard_support` (which include this file), or with `mod skip;`.

/// Prints `SKIP: <test>: <reason>` for the running test. scripts/test counts these lines, and in
/// strict mode (CI) any of them fails the run, so a test that cannot run never passes silently.
/// `skip!(return "…")` also ends the test; without `return` the test goes on without the part
/// that needed what is missing.
#[macro_export]
macro_rules! skip {
    (return $($why:tt)+) => {{
        $crate::skip!($($why)+);
        return;
    }};
    ($($why:tt)+) => {{
        // libtest runs each test on a thread named after it.
        let test = std::thread::current().name().unwrap_or("?").to_string();
        let line = format!("SKIP: {test}: {}\n", format_args!($($why)+));
        // Straight to the stderr handle: the test harness captures eprintln!, and a skip must show.
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    }};
}
