//! The tiers' directories as the fill sees them: what is held, crash-safe writes, eviction.
//!
//! A download goes to `<tier>/.tmp-<id>` (hidden: the data plane's catalog skips dotfiles and
//! invalid ids), is fsynced, its sha256 compared with the manifest's, then renamed to
//! `<tier>/<id>` and the directory fsynced. A crash at any point leaves either no object or the
//! whole verified one; leftover temporaries are removed at start.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::fill::Held;

/// Prefix of in-progress downloads.
pub const TMP_PREFIX: &str = ".tmp-";

/// The extended attribute holding an installed object's verified SHA-256 (lowercase hex): set
/// on the temporary before the rename, so the digest and the bytes arrive together.
pub const SHA_XATTR: &str = "user.edgeplane.sha256";

fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

/// The verified SHA-256 recorded on `path`, if any (none on filesystems without user xattrs).
pub fn recorded_sha256(path: &Path) -> Option<String> {
    let c = c_path(path).ok()?;
    let name = std::ffi::CString::new(SHA_XATTR).expect("no NUL");
    let mut buf = [0u8; 64];
    // SAFETY: valid C strings and a buffer of the length given.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n != 64 {
        return None;
    }
    let s = std::str::from_utf8(&buf).ok()?;
    s.bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then(|| s.to_ascii_lowercase())
}

/// Records `sha256` on the open file `fd` (best effort: a filesystem without user xattrs only
/// loses content-version tracking).
fn record_sha256(fd: std::os::fd::RawFd, sha256: &str) {
    let name = std::ffi::CString::new(SHA_XATTR).expect("no NUL");
    // SAFETY: `fd` is an open file of ours; name and value are valid for the call.
    let r = unsafe { libc::fsetxattr(fd, name.as_ptr(), sha256.as_ptr().cast(), sha256.len(), 0) };
    if r != 0 {
        tracing::debug!(
            "agent: cannot record the digest ({}): content versions are checked by size only",
            io::Error::last_os_error()
        );
    }
}

/// SHA-256 of a file's bytes, hex (blocking: reads it all).
pub fn file_sha256(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match f.read(&mut buf)? {
            0 => return Ok(hex::encode(h.finalize())),
            n => h.update(&buf[..n]),
        }
    }
}

pub use edgeplane_api::valid_content_id as valid_id;

/// The data plane's pull-through temporaries (`edgeplane_dataplane::pull::TMP_PREFIX`), in the
/// same tiers: never the agent's to remove.
const PULL_TMP_PREFIX: &str = ".tmp-pull-";

/// Removes the download temporaries (`.tmp-<id>`) a previous run of the agent left in `dir`.
/// Once, at start, before any download: later a temporary is a download in flight (a fill pass,
/// a re-verification or a manifest check may scan the tier meanwhile).
pub fn sweep_temporaries(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(TMP_PREFIX)
            && !name.starts_with(PULL_TMP_PREFIX)
            && entry.file_type()?.is_file()
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Lists a tier's objects: regular files with valid ids (temporaries, whose names start with
/// `.`, are not).
pub fn scan(dir: &Path) -> io::Result<HashMap<String, Held>> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ft = entry.file_type()?;
        if !ft.is_file() || !valid_id(name) {
            continue;
        }
        out.insert(
            name.to_string(),
            Held {
                size: entry.metadata()?.len(),
                sha256: recorded_sha256(&entry.path()),
            },
        );
    }
    Ok(out)
}

/// Removes an object; a missing one is fine.
pub fn evict(dir: &Path, id: &str) -> io::Result<()> {
    match std::fs::remove_file(dir.join(id)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Bytes the filesystem holding `dir` has in all (for the default capacity).
pub fn filesystem_bytes(dir: &Path) -> io::Result<u64> {
    let c = c_path(dir)?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid C string and `st` a valid out pointer for the call.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs succeeded and filled `st`.
    let st = unsafe { st.assume_init() };
    Ok(st.f_blocks * st.f_frsize)
}

/// An object being written: bytes go to a temporary file and into the hash.
pub struct Incoming {
    tmp: PathBuf,
    dest: PathBuf,
    dir: PathBuf,
    file: tokio::fs::File,
    hash: Sha256,
    len: u64,
}

/// Why a finished download was not installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// Size or sha256 differ from the manifest: the object at the source is not the one
    /// the manifest names.
    #[error("checksum mismatch: got {got_len} bytes sha256 {got}, manifest says {want_len} bytes {want}")]
    Mismatch {
        /// Received sha256.
        got: String,
        /// Received length.
        got_len: u64,
        /// Manifest sha256.
        want: String,
        /// Manifest length.
        want_len: u64,
    },
    /// Writing, syncing or renaming failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl Incoming {
    /// Starts `<dir>/.tmp-<id>` (truncating a leftover).
    pub async fn create(dir: &Path, id: &str) -> io::Result<Incoming> {
        let tmp = dir.join(format!("{TMP_PREFIX}{id}"));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .await?;
        Ok(Incoming {
            dest: dir.join(id),
            dir: dir.to_path_buf(),
            tmp,
            file,
            hash: Sha256::new(),
            len: 0,
        })
    }

    /// Appends bytes.
    pub async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.hash.update(chunk);
        self.len += chunk.len() as u64;
        self.file.write_all(chunk).await
    }

    /// Bytes so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// fsync, verify against the manifest, rename into place, fsync the directory.
    /// On a mismatch the temporary is removed and nothing is installed.
    pub async fn install(mut self, want_sha256: &str, want_len: u64) -> Result<(), InstallError> {
        self.file.flush().await?;
        self.file.sync_all().await?;
        let got = hex::encode(self.hash.finalize_reset());
        if self.len != want_len || !got.eq_ignore_ascii_case(want_sha256) {
            let _ = tokio::fs::remove_file(&self.tmp).await;
            return Err(InstallError::Mismatch {
                got,
                got_len: self.len,
                want: want_sha256.to_string(),
                want_len,
            });
        }
        {
            use std::os::fd::AsRawFd;
            record_sha256(self.file.as_raw_fd(), &got);
        }
        drop(self.file);
        // Over an older version of the object too: the swap is atomic.
        tokio::fs::rename(&self.tmp, &self.dest).await?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
            .await
            .map_err(io::Error::other)??;
        Ok(())
    }

    /// Removes the temporary (a failed download).
    pub async fn abandon(self) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn install_verifies_and_scan_skips_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"segment bytes".repeat(1000);
        let sha = hex::encode(Sha256::digest(&body));
        let mut w = Incoming::create(dir.path(), "a.m4s").await.unwrap();
        w.write(&body[..100]).await.unwrap();
        // Mid-download: only a hidden temporary exists, and a scan removes it.
        assert!(dir.path().join(".tmp-a.m4s").exists());
        assert!(!dir.path().join("a.m4s").exists());
        w.write(&body[100..]).await.unwrap();
        w.install(&sha, body.len() as u64).await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("a.m4s")).unwrap(), body);

        let mut bad = Incoming::create(dir.path(), "b.m4s").await.unwrap();
        bad.write(b"corrupt").await.unwrap();
        let err = bad.install(&sha, 7).await.unwrap_err();
        assert!(matches!(err, InstallError::Mismatch { .. }), "{err}");
        assert!(!dir.path().join("b.m4s").exists());
        assert!(!dir.path().join(".tmp-b.m4s").exists());

        std::fs::write(dir.path().join(".tmp-c"), b"partial").unwrap();
        std::fs::write(dir.path().join(".tmp-pull-d"), b"pulling").unwrap();
        std::fs::write(dir.path().join("not valid"), b"x").unwrap();
        let held = scan(dir.path()).unwrap();
        assert!(dir.path().join(".tmp-c").exists(), "a scan removes nothing");
        assert_eq!(sweep_temporaries(dir.path()).unwrap(), 1);
        assert!(dir.path().join(".tmp-pull-d").exists(), "the data plane's");
        assert_eq!(held.len(), 1);
        assert_eq!(held["a.m4s"].size, body.len() as u64);
        // The verified digest rides on the file (ext4 and tmpfs keep user xattrs).
        assert_eq!(held["a.m4s"].sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(file_sha256(&dir.path().join("a.m4s")).unwrap(), sha);
        // A new version under the same id replaces the old one whole.
        let v2 = b"version two".repeat(10);
        let sha2 = hex::encode(Sha256::digest(&v2));
        let mut w = Incoming::create(dir.path(), "a.m4s").await.unwrap();
        w.write(&v2).await.unwrap();
        w.install(&sha2, v2.len() as u64).await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("a.m4s")).unwrap(), v2);
        assert_eq!(recorded_sha256(&dir.path().join("a.m4s")), Some(sha2));
        assert!(!dir.path().join(".tmp-c").exists());
        evict(dir.path(), "a.m4s").unwrap();
        evict(dir.path(), "a.m4s").unwrap();
        assert!(scan(dir.path()).unwrap().is_empty());
    }
}
