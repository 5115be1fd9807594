//! Deterministic test content: every object's bytes are a function of its name only, so runs
//! are repeatable, a file can be regenerated from its name and length, and the load generator
//! checks any byte from (name, offset) alone (`edgeplane_load::pattern`, which defines it).

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use edgeplane_load::pattern;

/// A length in `[min, max)` picked by `name`, rounded down to a multiple of 188 (MPEG-TS
/// packet size; only so sizes look less synthetic).
pub(crate) fn sized_by_name(name: &str, min: u64, max: u64) -> u64 {
    let len = min + pattern::name_hash(name) % (max - min);
    (len / 188 * 188).max(min)
}

/// Writes `len` bytes of `name`'s content to `dir/name` (via a temporary file and a rename, so
/// a partially written file never has the final name).
pub(crate) fn write_object(dir: &Path, name: &str, len: u64) -> Result<()> {
    pattern::write_object(dir, name, len)
        .with_context(|| format!("write {}", dir.join(name).display()))
}

/// Like [`write_object`], but keeps an existing file of the right length (the content is a
/// function of the name, so a complete file with the final name is already right).
pub(crate) fn ensure_object(dir: &Path, name: &str, len: u64) -> Result<bool> {
    pattern::ensure_object(dir, name, len)
        .with_context(|| format!("write {}", dir.join(name).display()))
}

/// Writes a small text file.
pub(crate) fn write_text(dir: &Path, name: &str, text: &str) -> Result<()> {
    let path = dir.join(name);
    fs::write(&path, text).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_a_function_of_the_name() {
        let dir = std::env::temp_dir().join(format!("xtask-catalog-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        write_object(&dir, "a.bin", 100_003).unwrap();
        let first = fs::read(dir.join("a.bin")).unwrap();
        write_object(&dir, "a.bin", 100_003).unwrap();
        write_object(&dir, "b.bin", 1_000).unwrap();
        assert_eq!(first.len(), 100_003);
        assert_eq!(first, fs::read(dir.join("a.bin")).unwrap());
        assert_ne!(first[..1_000], fs::read(dir.join("b.bin")).unwrap()[..]);
        // The generator can check any slice from (name, offset).
        let p = pattern::Pattern::for_name("a.bin");
        assert_eq!(p.check(12_345, &first[12_345..50_000]), Ok(()));
        assert!(!ensure_object(&dir, "a.bin", 100_003).unwrap());
        assert!(ensure_object(&dir, "a.bin", 10).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sizes_stay_in_bounds() {
        for i in 0..100 {
            let len = sized_by_name(&format!("x{i}"), 1 << 20, 2 << 20);
            assert!((1 << 20..2 << 20).contains(&len));
        }
    }
}
