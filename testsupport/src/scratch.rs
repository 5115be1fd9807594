//! Scratch directories and files on the build's disk.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tempfile::TempDir;

/// A new temporary directory (removed on drop) under [`target_tmp_dir`]: on the same disk as
/// the build, not tmpfs, so sparse files and page-cache eviction behave as on a real tier.
pub fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("edgeplane-it-")
        .tempdir_in(target_tmp_dir())
        .unwrap_or_else(|e| {
            panic!(
                "create a temporary directory under {}: {e}",
                target_tmp_dir().display()
            )
        })
}

/// `<target dir>/tmp`, what Cargo calls `CARGO_TARGET_TMPDIR` when it builds integration
/// tests: `$CARGO_TARGET_TMPDIR` when set at run time, else `tmp` in the nearest directory
/// above the running executable that holds Cargo's `CACHEDIR.TAG` (the target directory:
/// test executables live in `<target>/<profile>/deps/`). Created if missing.
pub fn target_tmp_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = match std::env::var_os("CARGO_TARGET_TMPDIR") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let exe = std::env::current_exe().expect("the path of the running executable");
                let target = exe
                    .ancestors()
                    .find(|d| d.join("CACHEDIR.TAG").is_file())
                    .unwrap_or_else(|| {
                        panic!(
                            "{} is not inside a Cargo target directory (no CACHEDIR.TAG \
                             above it); set CARGO_TARGET_TMPDIR",
                            exe.display()
                        )
                    });
                target.join("tmp")
            }
        };
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        dir
    })
}

/// Writes `path` with `data` and fsyncs it.
pub fn write_file(path: &Path, data: &[u8]) {
    let mut f = fs::File::create(path).unwrap_or_else(|e| panic!("create {path:?}: {e}"));
    f.write_all(data).expect("write test file");
    f.sync_all().expect("fsync test file");
}
