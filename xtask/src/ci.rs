//! `cargo xtask ci`: the checks CI runs, in order; stops at the first failure.

use anyhow::Result;

use crate::util::{cargo, header, run_checked};

pub(crate) fn run() -> Result<()> {
    let steps: [&[&str]; 3] = [
        &["fmt", "--all", "--", "--check"],
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &["test", "--workspace"],
    ];
    for args in steps {
        header(&format!("cargo {}", args.join(" ")));
        run_checked(cargo().args(args))?;
    }
    header("ci: all steps passed");
    Ok(())
}
