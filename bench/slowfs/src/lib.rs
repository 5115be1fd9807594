//! slowfs: a slow "HDD" tier for tests and benchmarks.
//!
//! A FUSE filesystem that mirrors a source directory read-only and sleeps a fixed delay before
//! every read that reaches it. The kernel page cache stays on, so only cold pages pay the delay:
//! a second read of the same pages is served from memory without reaching slowfs. Concurrent cold
//! reads each take about one delay; they do not queue behind one another.
//!
//! ```no_run
//! use std::time::Duration;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! if let Some(why) = slowfs::mount_unavailable_reason() {
//!     eprintln!("skipped: {why}");
//!     return Ok(());
//! }
//! let mount = slowfs::mount("/srv/src".as_ref(), "/mnt/slow".as_ref(), Duration::from_millis(8))?;
//! let _ = std::fs::read("/mnt/slow/title.mp4")?; // cold: ≈ 8 ms per FUSE read request
//! slowfs::evict("/mnt/slow/title.mp4".as_ref())?; // cold again
//! drop(mount); // unmounts
//! # Ok(()) }
//! ```
//!
//! Mounting needs `/dev/fuse` and root (the mount is made with mount(2) directly; no libfuse or
//! fusermount is needed). It never writes to the source.

mod fs;
mod mount;
mod pagecache;

pub use mount::{mount, mount_unavailable_reason, MountError, MountGuard};
pub use pagecache::{drop_all_caches, evict, residency, Residency};
