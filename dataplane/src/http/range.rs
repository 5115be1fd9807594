//! Byte ranges: the `Range` header (RFC 9110 §14) and the `/<id>/range/<first>-<last>` path form.
//!
//! Pure arithmetic, no I/O. Decisions, also documented in `docs/http.md`:
//! - One range per request. A header with several ranges (`bytes=0-1,5-9`) is ignored and the
//!   whole representation is sent with 200, which RFC 9110 §14.2 permits; video players ask for
//!   one range at a time, and multipart/byteranges would defeat `sendfile`.
//! - A syntactically invalid header, or a unit other than `bytes`, is ignored (200), as §14.2 says.
//! - A range whose first byte is at or past the end is unsatisfiable (416).

/// One range as the client wrote it, before it meets a length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `first-last`, inclusive.
    FromTo(u64, u64),
    /// `first-`: to the end.
    From(u64),
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

/// What a `Range` header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeHeader {
    /// Exactly one range.
    Single(RangeSpec),
    /// Several ranges: served as a whole (200) by our rule.
    Multiple,
    /// Not a byte-range header we understand: ignored, as RFC 9110 requires.
    Ignored,
}

/// A range resolved against the representation's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// Bytes `start..start+len` (206).
    Partial {
        /// First byte.
        start: u64,
        /// Number of bytes, at least 1.
        len: u64,
    },
    /// No byte of the range exists (416).
    Unsatisfiable,
}

/// Parses a `Range` header value.
pub fn parse_header(value: &[u8]) -> RangeHeader {
    let value = trim(value);
    let Some(set) = strip_prefix_ignore_case(value, b"bytes=") else {
        return RangeHeader::Ignored;
    };
    let mut specs = set
        .split(|&b| b == b',')
        .map(trim)
        .filter(|s| !s.is_empty());
    let Some(first) = specs.next() else {
        return RangeHeader::Ignored;
    };
    let Some(spec) = parse_spec(first) else {
        return RangeHeader::Ignored;
    };
    match specs.next() {
        None => RangeHeader::Single(spec),
        Some(_) => RangeHeader::Multiple,
    }
}

/// Parses the `<first>-<last>` of the path form; both bounds are required and `first <= last`.
pub fn parse_path_range(text: &str) -> Option<RangeSpec> {
    let (a, b) = text.split_once('-')?;
    let (first, last) = (parse_u64(a.as_bytes())?, parse_u64(b.as_bytes())?);
    (first <= last).then_some(RangeSpec::FromTo(first, last))
}

fn parse_spec(spec: &[u8]) -> Option<RangeSpec> {
    let dash = spec.iter().position(|&b| b == b'-')?;
    let (a, b) = (trim(&spec[..dash]), trim(&spec[dash + 1..]));
    match (a.is_empty(), b.is_empty()) {
        (true, true) => None,
        (true, false) => Some(RangeSpec::Suffix(parse_u64(b)?)),
        (false, true) => Some(RangeSpec::From(parse_u64(a)?)),
        (false, false) => {
            let (first, last) = (parse_u64(a)?, parse_u64(b)?);
            (first <= last).then_some(RangeSpec::FromTo(first, last))
        }
    }
}

/// Resolves `spec` against a representation of `len` bytes.
pub fn resolve(spec: RangeSpec, len: u64) -> Resolved {
    let (start, end_inclusive) = match spec {
        RangeSpec::FromTo(first, last) => (first, last.min(len.saturating_sub(1))),
        RangeSpec::From(first) => (first, len.saturating_sub(1)),
        RangeSpec::Suffix(n) => {
            if n == 0 {
                return Resolved::Unsatisfiable;
            }
            (len.saturating_sub(n), len.saturating_sub(1))
        }
    };
    if len == 0 || start >= len {
        return Resolved::Unsatisfiable;
    }
    Resolved::Partial {
        start,
        len: end_inclusive - start + 1,
    }
}

/// Decimal digits only (no sign, no spaces). Values past `u64::MAX` saturate: a huge last
/// byte is clamped to the end like any other, a huge first byte is unsatisfiable.
fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |acc, &d| {
        acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = s.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(a), Some(b)) => &s[a..=b],
        _ => &[],
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            parse_header(b"bytes=0-499"),
            RangeHeader::Single(RangeSpec::FromTo(0, 499))
        );
        assert_eq!(
            parse_header(b"bytes=500-"),
            RangeHeader::Single(RangeSpec::From(500))
        );
        assert_eq!(
            parse_header(b"bytes=-500"),
            RangeHeader::Single(RangeSpec::Suffix(500))
        );
        assert_eq!(
            parse_header(b" Bytes = 1 - 2 ".as_slice()),
            RangeHeader::Ignored,
            "whitespace around '=' is not allowed by the grammar"
        );
        assert_eq!(
            parse_header(b"bytes= 1-2 "),
            RangeHeader::Single(RangeSpec::FromTo(1, 2))
        );
    }

    #[test]
    fn ignores_what_it_does_not_understand() {
        for v in [
            &b""[..],
            b"bytes",
            b"bytes=",
            b"bytes=-",
            b"bytes=5-1",
            b"bytes=a-b",
            b"bytes=1-2-3",
            b"items=0-1",
            b"bytes=+1-2",
        ] {
            assert_eq!(
                parse_header(v),
                RangeHeader::Ignored,
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn huge_numbers_saturate() {
        assert_eq!(
            parse_header(b"bytes=0-18446744073709551615"),
            RangeHeader::Single(RangeSpec::FromTo(0, u64::MAX))
        );
        assert_eq!(
            parse_header(b"bytes=0-99999999999999999999999"),
            RangeHeader::Single(RangeSpec::FromTo(0, u64::MAX))
        );
        let huge_first = parse_header(b"bytes=99999999999999999999-");
        assert_eq!(huge_first, RangeHeader::Single(RangeSpec::From(u64::MAX)));
        assert_eq!(
            resolve(RangeSpec::From(u64::MAX), 10),
            Resolved::Unsatisfiable
        );
        assert_eq!(
            resolve(RangeSpec::Suffix(u64::MAX), 10),
            Resolved::Partial { start: 0, len: 10 }
        );
    }

    #[test]
    fn several_ranges_are_multiple() {
        assert_eq!(parse_header(b"bytes=0-1,5-9"), RangeHeader::Multiple);
        assert_eq!(parse_header(b"bytes=0-1, -5"), RangeHeader::Multiple);
        // Empty list elements are allowed by the grammar and do not make it multiple.
        assert_eq!(
            parse_header(b"bytes=0-1,"),
            RangeHeader::Single(RangeSpec::FromTo(0, 1))
        );
    }

    #[test]
    fn resolves_edges() {
        use Resolved::*;
        assert_eq!(
            resolve(RangeSpec::FromTo(0, 0), 10),
            Partial { start: 0, len: 1 }
        );
        assert_eq!(
            resolve(RangeSpec::FromTo(9, 9), 10),
            Partial { start: 9, len: 1 }
        );
        assert_eq!(
            resolve(RangeSpec::FromTo(5, 100), 10),
            Partial { start: 5, len: 5 }
        );
        assert_eq!(resolve(RangeSpec::FromTo(10, 12), 10), Unsatisfiable);
        assert_eq!(
            resolve(RangeSpec::From(3), 10),
            Partial { start: 3, len: 7 }
        );
        assert_eq!(resolve(RangeSpec::From(10), 10), Unsatisfiable);
        assert_eq!(
            resolve(RangeSpec::Suffix(3), 10),
            Partial { start: 7, len: 3 }
        );
        assert_eq!(
            resolve(RangeSpec::Suffix(30), 10),
            Partial { start: 0, len: 10 }
        );
        assert_eq!(resolve(RangeSpec::Suffix(0), 10), Unsatisfiable);
        assert_eq!(resolve(RangeSpec::Suffix(1), 0), Unsatisfiable);
        assert_eq!(resolve(RangeSpec::From(0), 0), Unsatisfiable);
        let big = 5 << 30;
        assert_eq!(
            resolve(RangeSpec::FromTo(big - 2, u64::MAX - 1), big),
            Partial {
                start: big - 2,
                len: 2
            }
        );
    }

    #[test]
    fn path_form() {
        assert_eq!(parse_path_range("0-99"), Some(RangeSpec::FromTo(0, 99)));
        assert_eq!(parse_path_range("5-5"), Some(RangeSpec::FromTo(5, 5)));
        for bad in ["", "-", "5-", "-5", "9-1", "a-b", "1-2-3", " 1-2"] {
            assert_eq!(parse_path_range(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn resolved_ranges_stay_inside(len in 0u64..1 << 40, a in 0u64..1 << 41, b in 0u64..1 << 41, n in 0u64..1 << 41) {
            for spec in [RangeSpec::FromTo(a.min(b), a.max(b)), RangeSpec::From(a), RangeSpec::Suffix(n)] {
                match resolve(spec, len) {
                    Resolved::Partial { start, len: l } => {
                        prop_assert!(l >= 1);
                        prop_assert!(start + l <= len);
                    }
                    Resolved::Unsatisfiable => {
                        let satisfiable = match spec {
                            RangeSpec::FromTo(f, _) | RangeSpec::From(f) => f < len,
                            RangeSpec::Suffix(n) => n > 0 && len > 0,
                        };
                        prop_assert!(!satisfiable);
                    }
                }
            }
        }

        #[test]
        fn from_to_covers_exactly_what_was_asked(len in 1u64..1 << 40, a in 0u64..1 << 40, extra in 0u64..1 << 20) {
            let first = a % len;
            let last = first + extra;
            let Resolved::Partial { start, len: l } = resolve(RangeSpec::FromTo(first, last), len) else {
                panic!("satisfiable range refused");
            };
            prop_assert_eq!(start, first);
            prop_assert_eq!(start + l - 1, last.min(len - 1));
        }

        #[test]
        fn header_roundtrip(a in 0u64..u64::MAX / 2, d in 0u64..1 << 30) {
            let text = format!("bytes={}-{}", a, a + d);
            prop_assert_eq!(parse_header(text.as_bytes()), RangeHeader::Single(RangeSpec::FromTo(a, a + d)));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_header(&bytes);
            if let Ok(s) = std::str::from_utf8(&bytes) {
                let _ = parse_path_range(s);
            }
        }
    }
}
