//! `Range` (and `If-Range`) values: the parser against a plain reference of RFC 9110 §14.1.2
//! for one range, resolved against several lengths. A single range the reference accepts must
//! parse to the same spec and resolve to the same bytes; no input may panic or give a range
//! outside the object.
#![no_main]

use edgeplane_dataplane::http::range::{self, RangeHeader, RangeSpec, Resolved};
use libfuzzer_sys::fuzz_target;

const SIZES: [u64; 6] = [0, 1, 2, 100, 1 << 20, u64::MAX];

fuzz_target!(|data: &[u8]| {
    let parsed = range::parse_header(data);
    if let Some(spec) = reference_single(data) {
        assert_eq!(
            parsed,
            RangeHeader::Single(spec),
            "{:?}",
            String::from_utf8_lossy(data)
        );
    }
    if let RangeHeader::Single(spec) = parsed {
        for size in SIZES {
            let got = range::resolve(spec, size);
            assert_eq!(got, reference_resolve(spec, size), "{spec:?} of {size}");
            if let Resolved::Partial { start, len } = got {
                assert!(len >= 1 && start.checked_add(len).is_some_and(|e| e <= size));
            }
        }
    }
});

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` with optional whitespace around the value, a
/// case-insensitive unit and at most 19 digits per number (what fits a u64 with room), else
/// `None` (which the reference does not judge: several ranges, other units, junk).
fn reference_single(v: &[u8]) -> Option<RangeSpec> {
    let s = std::str::from_utf8(v).ok()?.trim_matches([' ', '\t']);
    let unit = s.get(..6)?;
    if !unit.eq_ignore_ascii_case("bytes=") {
        return None;
    }
    let set = s[6..].trim_matches([' ', '\t']);
    if set.contains(',') {
        return None;
    }
    let (a, b) = set.split_once('-')?;
    let (a, b) = (a.trim_matches([' ', '\t']), b.trim_matches([' ', '\t']));
    let num = |t: &str| -> Option<u64> {
        (!t.is_empty() && t.len() <= 19 && t.bytes().all(|c| c.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    match (a.is_empty(), b.is_empty()) {
        (false, false) => {
            let (a, b) = (num(a)?, num(b)?);
            (a <= b).then_some(RangeSpec::FromTo(a, b))
        }
        (false, true) => Some(RangeSpec::From(num(a)?)),
        (true, false) => {
            let n = num(b)?;
            (n > 0).then_some(RangeSpec::Suffix(n))
        }
        (true, true) => None,
    }
}

fn reference_resolve(spec: RangeSpec, size: u64) -> Resolved {
    let (start, last) = match spec {
        RangeSpec::FromTo(a, b) => (a, b.min(size.saturating_sub(1))),
        RangeSpec::From(a) => (a, size.saturating_sub(1)),
        RangeSpec::Suffix(n) => (size.saturating_sub(n), size.saturating_sub(1)),
    };
    if size == 0 || start >= size || (matches!(spec, RangeSpec::Suffix(0))) {
        Resolved::Unsatisfiable
    } else {
        Resolved::Partial {
            start,
            len: last - start + 1,
        }
    }
}
