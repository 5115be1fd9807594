//! slowfs on a real FUSE mount: byte-exact mirror, cold reads pay the delay, warm reads do not
//! reach the filesystem, concurrent cold reads overlap, unmount on drop.
//! Skips (with the reason printed) where FUSE mounts cannot be made: no /dev/fuse, not root.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{symlink, FileExt};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

const DELAY: Duration = Duration::from_millis(20);
const CHUNK: usize = 64 * 1024;
const FILE_LEN: usize = 16 * 1024 * 1024;

fn skip_reason() -> Option<String> {
    let why = slowfs::mount_unavailable_reason()?;
    eprintln!("SKIPPED: {why}");
    Some(why)
}

/// Deterministic bytes that differ at every offset (xorshift), so a misplaced chunk is caught.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn is_mounted(mountpoint: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    let wanted = mountpoint.to_str().expect("utf-8 temp path");
    mounts
        .lines()
        .any(|line| line.split(' ').nth(1) == Some(wanted))
}

#[test]
fn mirror_is_byte_exact_read_only_and_unmounts_on_drop() {
    if skip_reason().is_some() {
        return;
    }
    let source = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let data = pattern(300_000, 7);
    fs::write(source.path().join("a.bin"), &data).unwrap();
    fs::create_dir(source.path().join("sub")).unwrap();
    fs::write(source.path().join("sub/b.txt"), b"hello").unwrap();
    symlink("a.bin", source.path().join("link")).unwrap();

    let mount = slowfs::mount(source.path(), mnt.path(), Duration::from_millis(1)).unwrap();
    let mountpoint = mount.mountpoint().to_owned();
    assert!(is_mounted(&mountpoint));

    let mut names: Vec<String> = fs::read_dir(&mountpoint)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a.bin", "link", "sub"]);
    assert_eq!(fs::read(mountpoint.join("a.bin")).unwrap(), data);
    assert_eq!(fs::read(mountpoint.join("sub/b.txt")).unwrap(), b"hello");
    assert_eq!(
        fs::read_link(mountpoint.join("link")).unwrap(),
        Path::new("a.bin")
    );
    assert_eq!(fs::read(mountpoint.join("link")).unwrap(), data);
    assert!(fs::metadata(mountpoint.join("missing")).is_err());

    let write = fs::OpenOptions::new()
        .write(true)
        .open(mountpoint.join("a.bin"));
    assert!(write.is_err(), "the mirror must be read-only");
    assert!(fs::write(mountpoint.join("new"), b"x").is_err());
    assert!(mount.reads() > 0);

    drop(mount);
    assert!(!is_mounted(&mountpoint), "still mounted after drop");
    assert_eq!(
        fs::read(source.path().join("a.bin")).unwrap(),
        data,
        "source changed"
    );
}

#[test]
fn cold_reads_pay_the_delay_warm_reads_do_not_reach_the_filesystem() {
    if skip_reason().is_some() {
        return;
    }
    let source = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let data = pattern(FILE_LEN, 11);
    fs::write(source.path().join("big.bin"), &data).unwrap();
    let mount = slowfs::mount(source.path(), mnt.path(), DELAY).unwrap();
    let path = mount.mountpoint().join("big.bin");

    slowfs::evict(&path).unwrap();
    let cold = slowfs::residency(&path).unwrap();
    assert_eq!(cold.total_pages, FILE_LEN.div_ceil(4096));
    assert_eq!(cold.resident_pages, 0, "evict left pages cached");

    let file = File::open(&path).unwrap();
    let mut buf = vec![0u8; CHUNK];
    let offset = 40 * CHUNK;
    let reads_before = mount.reads();
    let start = Instant::now();
    file.read_exact_at(&mut buf, offset as u64).unwrap();
    let cold_time = start.elapsed();
    assert_eq!(buf, data[offset..offset + CHUNK]);
    assert!(
        mount.reads() > reads_before,
        "cold read did not reach slowfs"
    );
    assert!(cold_time >= DELAY, "cold read took {cold_time:?} < delay");
    assert!(slowfs::residency(&path).unwrap().resident_pages >= CHUNK / 4096);

    // Warm, even through a new open (FOPEN_KEEP_CACHE): served from the page cache.
    let reads_before = mount.reads();
    let start = Instant::now();
    let again = File::open(&path).unwrap();
    again.read_exact_at(&mut buf, offset as u64).unwrap();
    let warm_time = start.elapsed();
    assert_eq!(buf, data[offset..offset + CHUNK]);
    assert_eq!(mount.reads(), reads_before, "warm read reached slowfs");
    eprintln!("64 KiB read with {DELAY:?} delay: cold {cold_time:?}, warm {warm_time:?}");

    // Evict makes it cold again.
    slowfs::evict(&path).unwrap();
    let reads_before = mount.reads();
    file.read_exact_at(&mut buf, offset as u64).unwrap();
    assert!(
        mount.reads() > reads_before,
        "evicted read did not reach slowfs"
    );

    // A whole sequential read is still byte-exact.
    let mut whole = Vec::new();
    File::open(&path).unwrap().read_to_end(&mut whole).unwrap();
    assert!(whole == data, "sequential read differs from the source");
}

#[test]
fn concurrent_cold_reads_overlap() {
    if skip_reason().is_some() {
        return;
    }
    const READERS: usize = 32;
    let source = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let data = pattern(FILE_LEN, 13);
    fs::write(source.path().join("big.bin"), &data).unwrap();
    let mount = slowfs::mount(source.path(), mnt.path(), DELAY).unwrap();
    let path = mount.mountpoint().join("big.bin");
    slowfs::evict(&path).unwrap();

    let file = File::open(&path).unwrap();
    let start = Instant::now();
    thread::scope(|s| {
        for i in 0..READERS {
            let (file, data) = (&file, &data);
            s.spawn(move || {
                // Every 4th chunk, so readahead of one read does not warm another's.
                let offset = i * 4 * CHUNK;
                let mut buf = vec![0u8; CHUNK];
                file.read_exact_at(&mut buf, offset as u64).unwrap();
                assert!(buf == data[offset..offset + CHUNK], "chunk {i} differs");
            });
        }
    });
    let wall = start.elapsed();
    eprintln!(
        "{READERS} concurrent cold 64 KiB reads, delay {DELAY:?}: {wall:?} \
         ({} FUSE reads, peak {} in flight)",
        mount.reads(),
        mount.peak_concurrent_reads()
    );
    // Serialized they would take READERS × DELAY; allow a quarter of that for scheduling noise
    // on a small machine. A ratio to the delay, not an absolute time.
    assert!(
        wall < DELAY * (READERS as u32) / 4,
        "{READERS} concurrent cold reads took {wall:?}: they were serialized"
    );
    assert!(mount.peak_concurrent_reads() >= 4);
}
