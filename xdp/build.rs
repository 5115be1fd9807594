//! Builds the eBPF programs (`ebpf/edgeplane-ebpf`) and leaves the object in
//! `$OUT_DIR/edgeplane.bpf.o`, which `src/xdp/object.rs` embeds.
//!
//! The route (docs/xdp.md, "Build"): the pinned nightly compiles the programs crate for
//! `bpfel-unknown-none` (`-Z build-std=core`) as a staticlib with fat LTO and writes the whole
//! program as one LLVM bitcode module; `llc` from the same nightly's `llvm-tools` component turns
//! it into the BPF object. No bpf-linker, no system LLVM: everything comes from rustup.
//!
//! When the toolchain is missing (a machine that has not run `scripts/setup.sh`) the object is
//! left empty with a warning, and the data plane reports "built without eBPF programs" if the
//! config asks for XDP. `EDGEPLANE_REQUIRE_EBPF=1` (set by `cargo xtask ci`) turns that into a
//! build error, so CI never passes by skipping.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "bpfel-unknown-none";

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let ebpf = manifest.join("../ebpf");
    let programs = ebpf.join("edgeplane-ebpf");
    let object = out_dir.join("edgeplane.bpf.o");

    for path in [
        programs.join("src"),
        programs.join("Cargo.toml"),
        programs.join("Cargo.lock"),
        programs.join("rust-toolchain.toml"),
        ebpf.join("edgeplane-ebpf-types/src"),
        ebpf.join("edgeplane-ebpf-types/Cargo.toml"),
    ] {
        println!("cargo::rerun-if-changed={}", path.display());
    }
    println!("cargo::rerun-if-env-changed=EDGEPLANE_REQUIRE_EBPF");
    println!("cargo::rerun-if-env-changed=EDGEPLANE_EBPF_OBJECT");

    // A prebuilt object (e.g. from another machine) instead of building one.
    if let Some(prebuilt) = env::var_os("EDGEPLANE_EBPF_OBJECT") {
        println!("cargo::rerun-if-changed={}", Path::new(&prebuilt).display());
        fs::copy(&prebuilt, &object).expect("EDGEPLANE_EBPF_OBJECT: cannot copy");
        return;
    }

    let required = env::var("EDGEPLANE_REQUIRE_EBPF").is_ok_and(|v| v == "1");
    let toolchain = match toolchain_channel(&programs.join("rust-toolchain.toml")) {
        Ok(t) => t,
        Err(e) => fail(&e),
    };
    match find_tools(&toolchain) {
        Ok(llc) => {
            // The inner build's own target directory, next to this profile's (target/debug/ebpf),
            // shared by build, clippy and test so the nightly build runs once per profile.
            let target_dir = profile_dir(&out_dir).join("ebpf");
            let bitcode = target_dir.join("edgeplane-ebpf.bc");
            if let Err(e) = compile(&toolchain, &programs, &target_dir, &bitcode) {
                fail(&e);
            }
            if let Err(e) = lower(&llc, &bitcode, &object) {
                fail(&e);
            }
        }
        Err(missing) if !required => {
            println!(
                "cargo::warning=building without the eBPF programs ({missing}); \
                 `bash scripts/setup.sh` installs them; XDP will be unavailable"
            );
            fs::write(&object, b"").expect("cannot write OUT_DIR");
        }
        Err(missing) => fail(&format!(
            "{missing}; run `bash scripts/setup.sh` (EDGEPLANE_REQUIRE_EBPF=1 is set)"
        )),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("edgeplane eBPF build: {message}");
    std::process::exit(1);
}

/// `channel = "…"` from `rust-toolchain.toml`.
fn toolchain_channel(file: &Path) -> Result<String, String> {
    let text =
        fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
        .next()
        .ok_or_else(|| format!("{}: no channel", file.display()))
}

/// The pinned nightly with `rust-src`, and its `llc`; or what is missing.
fn find_tools(toolchain: &str) -> Result<PathBuf, String> {
    let sysroot = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        // A missing toolchain is reported, not silently downloaded in the middle of a build.
        .env("RUSTUP_AUTO_INSTALL", "0")
        .output()
        .map_err(|e| format!("rustup not found ({e})"))?;
    if !sysroot.status.success() {
        return Err(format!("toolchain {toolchain} is not installed"));
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Err(format!(
            "toolchain {toolchain} lacks the rust-src component"
        ));
    }
    let host = env::var("HOST").expect("set by cargo");
    let llc = sysroot.join("lib/rustlib").join(host).join("bin/llc");
    if !llc.is_file() {
        return Err(format!(
            "toolchain {toolchain} lacks the llvm-tools component (llc)"
        ));
    }
    Ok(llc)
}

/// `target/<profile>` from `target/<profile>/build/<pkg>-<hash>/out`.
fn profile_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .nth(3)
        .map_or_else(|| out_dir.to_path_buf(), Path::to_path_buf)
}

/// Compiles the programs crate to one bitcode module.
fn compile(
    toolchain: &str,
    programs: &Path,
    target_dir: &Path,
    bitcode: &Path,
) -> Result<(), String> {
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        toolchain,
        "cargo",
        "rustc",
        "--quiet",
        "--locked",
        "--release",
    ])
    .args(["--target", TARGET, "-Z", "build-std=core"])
    .arg("--manifest-path")
    .arg(programs.join("Cargo.toml"))
    .arg("--target-dir")
    .arg(target_dir)
    .arg("--")
    // `link` keeps cargo's own output (the archive) so cargo's freshness check holds;
    // `llvm-bc` is the one module llc lowers.
    .arg(format!("--emit=link,llvm-bc={}", bitcode.display()))
    .current_dir(programs);
    scrub_env(&mut cmd);
    // Every crate (core included) for BPF ISA v3: 32-bit jumps and ALU (Linux 5.1+).
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-cpu=v3");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run rustup: {e}"))?;
    if !status.success() {
        return Err(format!("cargo rustc for {TARGET} failed ({status})"));
    }
    Ok(())
}

/// Lowers the bitcode to a BPF ELF object.
fn lower(llc: &Path, bitcode: &Path, object: &Path) -> Result<(), String> {
    let status = Command::new(llc)
        .args(["-march=bpfel", "-mcpu=v3", "-O3", "-filetype=obj"])
        .arg(bitcode)
        .arg("-o")
        .arg(object)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", llc.display()))?;
    if !status.success() {
        return Err(format!("llc failed ({status})"));
    }
    Ok(())
}

/// Removes what the outer cargo set for this build script, so the inner cargo sees the
/// environment a user's shell would give it (its own toolchain, target and flags).
fn scrub_env(cmd: &mut Command) {
    const KEEP: [&str; 5] = [
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
    ];
    const DROP: [&str; 17] = [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_LINKER",
        "RUSTDOC",
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTUP_TOOLCHAIN",
        "TARGET",
        "HOST",
        "OUT_DIR",
        "PROFILE",
        "OPT_LEVEL",
        "DEBUG",
        "NUM_JOBS",
        "MAKEFLAGS",
        "MFLAGS",
    ];
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let cargo_var = key.starts_with("CARGO_") && !KEEP.iter().any(|k| key.starts_with(k));
        if cargo_var
            || DROP.contains(&key)
            || key.starts_with("DEP_")
            || key.starts_with("CLIPPY_")
            || key.starts_with("__CARGO")
        {
            cmd.env_remove(key);
        }
    }
}
