//! `cargo xtask deb`: the Debian package (cargo-deb) from a release build.

use std::process::Command;

use anyhow::{bail, Context, Result};

/// Builds `target/debian/edgeplane_<version>-1_<arch>.deb`.
pub(crate) fn run() -> Result<()> {
    let has_deb = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_deb {
        bail!(
            "cargo-deb is missing: `cargo install cargo-deb --locked` (scripts/setup.sh does it)"
        );
    }
    let status = Command::new("cargo")
        .args(["deb", "-p", "edgeplane"])
        .status()
        .context("running cargo deb")?;
    if !status.success() {
        bail!("cargo deb failed ({status})");
    }
    Ok(())
}
