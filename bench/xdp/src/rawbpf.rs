//! The veth bench's packet generator: a two-instruction XDP program (`return XDP_TX`) run by
//! `BPF_PROG_TEST_RUN` in live-frames mode (Linux 5.18+), which transmits every frame out of
//! the interface named in the context. No pktgen module, no userspace copies: the kernel
//! recycles the frames from a page pool. Raw `bpf(2)`, because the program is not worth an
//! object file.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-initialized `union bpf_attr` image of the size we pass; every
    // pointer stored in it refers to memory that outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn put_u32(attr: &mut [u8; 128], at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(attr: &mut [u8; 128], at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// Loads `r0 = XDP_TX; exit`: the generator.
pub(crate) fn load_xdp_tx() -> io::Result<OwnedFd> {
    load_xdp_return(3)
}

/// Loads `r0 = action; exit` (`XDP_PASS` = 2: the empty program, the harness's own cost).
pub(crate) fn load_xdp_return(action: u8) -> io::Result<OwnedFd> {
    // mov64 r0, action; exit
    let insns: [u8; 16] = [0xb7, 0, 0, 0, action, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = c"GPL";
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, BPF_PROG_TYPE_XDP);
    put_u32(&mut attr, 4, 2);
    put_u64(&mut attr, 8, insns.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    attr[48..48 + 7].copy_from_slice(b"xdp_gen");
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Transmits `frames` copies of `frame` out of interface `ifindex` (in the calling thread's
/// network namespace), `batch` at a time; returns the kernel's time for the whole run.
pub(crate) fn transmit(
    prog: RawFd,
    ifindex: u32,
    frame: &[u8],
    frames: u32,
    batch: u32,
) -> io::Result<Duration> {
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, prog as u32);
    put_u32(&mut attr, 8, frame.len() as u32);
    put_u64(&mut attr, 16, frame.as_ptr() as u64);
    put_u32(&mut attr, 32, frames);
    put_u32(&mut attr, 40, ctx.len() as u32);
    put_u64(&mut attr, 48, ctx.as_ptr() as u64);
    put_u32(&mut attr, 64, BPF_F_TEST_XDP_LIVE_FRAMES);
    put_u32(&mut attr, 72, batch);
    let start = std::time::Instant::now();
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(start.elapsed())
}

/// Runs `prog` on `frame` `repeat` times (plain `BPF_PROG_TEST_RUN`); the kernel's average time
/// per run in nanoseconds.
pub(crate) fn time_per_run(prog: RawFd, frame: &[u8], repeat: u32) -> io::Result<u32> {
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, prog as u32);
    put_u32(&mut attr, 8, frame.len() as u32);
    put_u64(&mut attr, 16, frame.as_ptr() as u64);
    put_u32(&mut attr, 32, repeat);
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(u32::from_ne_bytes([attr[36], attr[37], attr[38], attr[39]]))
}
