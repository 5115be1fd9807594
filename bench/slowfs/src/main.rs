//! `slowfs SOURCE MOUNTPOINT --delay-ms N`: mount the slow mirror until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Mirror SOURCE read-only at MOUNTPOINT; every read that reaches the mirror sleeps first.
/// The page cache stays on, so only cold pages are slow. Runs until SIGINT/SIGTERM, then unmounts.
#[derive(Debug, Parser)]
#[command(name = "slowfs", version)]
struct Args {
    /// Directory to mirror.
    source: PathBuf,
    /// Existing empty directory to mount on.
    mountpoint: PathBuf,
    /// Milliseconds each read request sleeps before it is served.
    #[arg(long, default_value_t = 8)]
    delay_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Register before mounting so a signal during start-up still leads to an unmount.
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("slowfs: signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let delay = Duration::from_millis(args.delay_ms);
    let mount = match slowfs::mount(&args.source, &args.mountpoint, delay) {
        Ok(mount) => mount,
        Err(e) => {
            eprintln!("slowfs: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "slowfs: {} mounted at {} (delay {} ms per read); SIGINT/SIGTERM unmounts",
        args.source.display(),
        mount.mountpoint().display(),
        args.delay_ms
    );
    let _ = signals.forever().next();
    let reads = mount.reads();
    let bytes = mount.bytes_read();
    let peak = mount.peak_concurrent_reads();
    match mount.unmount() {
        Ok(()) => {
            eprintln!("slowfs: unmounted; {reads} reads, {bytes} bytes, peak {peak} concurrent");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("slowfs: unmount: {e} (detached lazily)");
            ExitCode::FAILURE
        }
    }
}
