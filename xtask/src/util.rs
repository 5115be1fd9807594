//! Small helpers shared by the tasks: paths, running commands, timestamps.

use std::env;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

/// The workspace root (the parent of xtask/).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The cargo target directory: `$CARGO_TARGET_DIR` if set, else `<root>/target`.
pub(crate) fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// A `cargo` command, using the same cargo that runs us, in the workspace root.
pub(crate) fn cargo() -> Command {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    cmd
}

/// The nightly pinned in `ebpf/edgeplane-ebpf/rust-toolchain.toml`.
pub(crate) fn ebpf_toolchain() -> Result<String> {
    let file = workspace_root().join("ebpf/edgeplane-ebpf/rust-toolchain.toml");
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
        .next()
        .with_context(|| format!("{}: no channel", file.display()))
}

/// Prints a step header.
pub(crate) fn header(text: &str) {
    eprintln!("\n==> {text}");
}

/// Runs `cmd` with inherited stdio and fails unless it exits 0.
pub(crate) fn run_checked(cmd: &mut Command) -> Result<()> {
    let shown = display_command(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// `program arg arg ...` for messages.
pub(crate) fn display_command(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Builds `edgeplane` with the given cargo profile and returns the binary's path.
pub(crate) fn build_edgeplane(profile: &str) -> Result<PathBuf> {
    header(&format!("cargo build --profile {profile} -p edgeplane"));
    run_checked(cargo().args(["build", "--profile", profile, "-p", "edgeplane"]))?;
    // cargo names the output directory of the built-in `dev` profile "debug".
    let dir = if profile == "dev" { "debug" } else { profile };
    let bin = target_dir().join(dir).join("edgeplane");
    if !bin.is_file() {
        bail!("cargo build succeeded but {} does not exist", bin.display());
    }
    Ok(bin)
}

/// The edgeplane binary a task runs: `given` (its `--edgeplane-bin`, e.g. a release build made
/// beforehand) if set, else the one built with `profile`. A given path must be a file.
pub(crate) fn edgeplane_bin_or_build(given: Option<&Path>, profile: &str) -> Result<PathBuf> {
    match given {
        Some(bin) if bin.is_file() => Ok(bin.to_path_buf()),
        Some(bin) => bail!("--edgeplane-bin {}: no such file", bin.display()),
        None => build_edgeplane(profile),
    }
}

/// Finds `name` on PATH, then in the sbin directories (nginx lives in /usr/sbin, which is not on
/// every user's PATH).
pub(crate) fn find_program(name: &str) -> Result<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    let extra = [OsStr::new("/usr/sbin"), OsStr::new("/sbin")];
    let dirs = env::split_paths(&path).chain(extra.iter().map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("`{name}` not found; run `bash scripts/setup.sh` to install the tools")
}

/// `git describe --always --dirty` of the workspace; empty if git cannot tell.
pub(crate) fn git_revision() -> String {
    Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The running kernel's release (`uname -r`); empty if unreadable.
pub(crate) fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// UTC wall-clock time as `YYYYmmddTHHMMSSZ`, for directory names.
pub(crate) fn utc_timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); H. Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The load averages (1, 5 and 15 minutes) from `/proc/loadavg`; empty if it cannot be read.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }
}
