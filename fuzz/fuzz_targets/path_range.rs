//! The `/<id>/range/<first>-<last>` path form, directly and through a whole request head: the
//! two must agree (a parsed range in the path is the request's range; one that does not parse
//! makes the request a 400, never a whole-object 200), `first <= last` always holds, and the
//! bounds are the decimal numbers written (saturating past u64::MAX).
#![no_main]

use edgeplane_dataplane::http::range::{self, RangeSpec};
use edgeplane_dataplane::http::request::{self, Limits, Parsed, Target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let direct = range::parse_path_range(text);
    if let Some(RangeSpec::FromTo(a, b)) = direct {
        assert!(a <= b);
        let (x, y) = text.split_once('-').expect("a dash");
        assert_eq!(a, decimal(x));
        assert_eq!(b, decimal(y));
    } else {
        assert!(
            direct.is_none(),
            "the path form only gives first-last: {direct:?}"
        );
    }
    // Through the request parser, when the text can stand in a request target at all.
    if text
        .bytes()
        .any(|c| !c.is_ascii_graphic() || matches!(c, b'/' | b'?' | b'#' | b'%'))
    {
        return;
    }
    let head = format!("GET /seg-1.m4s/range/{text} HTTP/1.1\r\nHost: x\r\n\r\n");
    let limits = Limits {
        max_header_bytes: 16384,
        max_headers: 16,
        max_uri_bytes: 8192,
    };
    match request::parse(head.as_bytes(), &limits) {
        Parsed::Complete { request: req, .. } => match (direct, req.target) {
            (Some(spec), Target::Object { path_range, .. }) => {
                assert_eq!(path_range, Some(spec));
                assert!(!req.bad_path_range);
            }
            (None, _) => assert!(req.bad_path_range, "{text:?} did not parse yet no 400"),
            (Some(_), other) => panic!("{text:?}: target {other:?}"),
        },
        // httparse refuses some bytes in a target; then there is no request to compare.
        Parsed::Error(_) => {}
        Parsed::Partial => panic!("a complete head was partial"),
    }
});

/// The decimal value of `digits`, saturating.
fn decimal(digits: &str) -> u64 {
    digits.bytes().fold(0u64, |acc, d| {
        acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    })
}
