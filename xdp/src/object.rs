//! The eBPF object `build.rs` compiled from `ebpf/edgeplane-ebpf`, embedded in the binary.

/// The object file, aligned for parsing in place. Empty when the data plane was built without
/// the eBPF toolchain (see `build.rs`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/edgeplane.bpf.o"));

/// This binary was built without its eBPF programs.
#[derive(Debug, thiserror::Error)]
#[error(
    "this edgeplane was built without its eBPF programs (the nightly toolchain was missing at \
     build time): run `bash scripts/setup.sh` and rebuild"
)]
pub struct ObjectMissing;

/// The embedded eBPF object.
pub fn object() -> Result<&'static [u8], ObjectMissing> {
    if OBJECT.is_empty() {
        Err(ObjectMissing)
    } else {
        Ok(OBJECT)
    }
}
