//! Assertions on range responses: 206 with exact headers and body, a whole 200, a 416.

use crate::client::Response;
use crate::content::assert_bytes_eq;

/// Asserts a 206 for bytes `first..=last` of `data`, with exact headers and body.
#[track_caller]
pub fn assert_partial(r: &Response, data: &[u8], first: u64, last: u64, what: &str) {
    let len = data.len() as u64;
    assert_eq!(
        r.status, 206,
        "{what}: want 206 for {first}-{last}/{len}: {r:?}"
    );
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes {first}-{last}/{len}").as_str()),
        "{what}: Content-Range: {r:?}"
    );
    assert_eq!(
        r.content_length(),
        Some(last - first + 1),
        "{what}: Content-Length: {r:?}"
    );
    assert_bytes_eq(
        &r.body,
        &data[first as usize..=last as usize],
        &format!("{what} ({first}-{last})"),
    );
}

/// Asserts a 200 with the whole of `data` and no Content-Range.
#[track_caller]
pub fn assert_full(r: &Response, data: &[u8], what: &str) {
    assert_eq!(
        r.status, 200,
        "{what}: want 200 with the whole object: {r:?}"
    );
    assert_eq!(
        r.content_length(),
        Some(data.len() as u64),
        "{what}: Content-Length: {r:?}"
    );
    assert_eq!(
        r.header("content-range"),
        None,
        "{what}: a 200 must not carry Content-Range: {r:?}"
    );
    assert_bytes_eq(&r.body, data, what);
}

/// Asserts a 416 with `Content-Range: bytes */LEN`.
#[track_caller]
pub fn assert_unsatisfiable(r: &Response, len: u64, what: &str) {
    assert_eq!(r.status, 416, "{what}: want 416: {r:?}");
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{len}").as_str()),
        "{what}: 416 needs Content-Range: bytes */{len}: {r:?}"
    );
}
