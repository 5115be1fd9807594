//! Content ids: the names of objects, which are also their file names inside a tier directory.
//!
//! An id is `[A-Za-z0-9._-]{1,200}` and does not start with `.`, so it can never name a parent
//! directory, a hidden temporary file (fill writes `.tmp-*`) or a path with a separator. A request
//! path is only ever looked up in the catalog as an id, never joined onto a directory unchecked.

/// Longest accepted content id, in bytes.
pub use edgeplane_api::MAX_CONTENT_ID_LEN as MAX_LEN;

/// Whether `id` is a valid content id. The rule is part of the control API (the agent and the
/// control service check ids with the same function), so it lives in `edgeplane-api`.
pub use edgeplane_api::valid_content_id as is_valid;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_segment_names() {
        for id in ["a", "title1-1080p-seg0001.m4s", "master.m3u8", "x_y.Z-9"] {
            assert!(is_valid(id), "{id}");
        }
        assert!(is_valid(&"a".repeat(MAX_LEN)));
    }

    #[test]
    fn rejects_paths_and_hidden_names() {
        for id in [
            "", ".", "..", ".tmp-abc", "a/b", "../etc", "a\\b", "a b", "a%2e", "ü", "a\0",
        ] {
            assert!(!is_valid(id), "{id:?}");
        }
        assert!(!is_valid(&"a".repeat(MAX_LEN + 1)));
    }
}
