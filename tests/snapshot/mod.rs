//! The one way this package's snapshot files (tests/golden, tests/cluster_files,
//! tests/inventories) are compared and rewritten. Test binaries include it with `#[path]`.

use std::ffi::OsStr;
use std::path::Path;

/// What `PIKUBE_UPDATE_SNAPSHOTS` asks for: unset compares, exactly `1` rewrites, anything else
/// (`0`, empty, `yes`) is refused rather than silently taken for either.
pub fn bless_mode(value: Option<&OsStr>) -> Result<bool, String> {
    match value.map(|v| v.to_str()) {
        None => Ok(false),
        Some(Some("1")) => Ok(true),
        Some(v) => Err(format!(
            "PIKUBE_UPDATE_SNAPSHOTS={:?}: set it to 1 to rewrite the snapshots, or unset it to compare them",
            v.unwrap_or("(not UTF-8)")
        )),
    }
}

/// Whether this run rewrites snapshots (see [`bless_mode`]); panics on another value.
pub fn blessing() -> bool {
    bless_mode(std::env::var_os("PIKUBE_UPDATE_SNAPSHOTS").as_deref()).unwrap_or_else(|e| panic!("{e}"))
}

/// Compares `got` with the snapshot at `path`: `Err` with both texts when they differ. When
/// blessing, a differing (or missing) snapshot is rewritten instead and the rewrite announced
/// as `BLESSED: <path>` (scripts/test counts these lines), so a bless is never silent.
pub fn compare(path: &Path, got: &str) -> Result<(), String> {
    let bless = blessing();
    let want = std::fs::read_to_string(path).unwrap_or_default();
    if want == got {
        return Ok(());
    }
    let shown = path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(path).display();
    if bless {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("snapshot dir");
        }
        std::fs::write(path, got).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        let line = format!("BLESSED: {shown}\n");
        // Straight to the stderr handle, as skip! does: libtest captures eprintln!.
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        return Ok(());
    }
    Err(format!("{shown}:\n--- want\n{want}--- got\n{got}"))
}
