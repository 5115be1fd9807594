//! Response decisions and heads: which status, which bytes, which headers.
//!
//! [`plan`] applies RFC 9110's conditional and range rules to a request and an object's
//! metadata; the `write_*` functions render heads into a reused buffer. The body itself is never
//! touched here: the runtime sends it with `sendfile`.

use super::range::{self, RangeHeader, Resolved};
use super::request::{Method, Request};
use super::Status;

/// What the planner needs to know about an object.
#[derive(Debug, Clone, Copy)]
pub struct ObjectMeta<'a> {
    /// Length in bytes.
    pub size: u64,
    /// Strong entity tag, quoted (`"…"`).
    pub etag: &'a str,
    /// `Last-Modified` as an IMF-fixdate.
    pub last_modified: &'a str,
    /// Pre-rendered header lines that never change for this object (type, validators,
    /// `Accept-Ranges`), each ending in CRLF.
    pub fixed_headers: &'a [u8],
}

/// The decision for one request on an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Status to send.
    pub status: Status,
    /// Bytes of the object to send: `(start, len)`; `None` for 304/416 and for HEAD.
    pub body: Option<(u64, u64)>,
    /// `Content-Length` value.
    pub content_length: u64,
    /// `Content-Range` to send, if any.
    pub content_range: Option<ContentRange>,
}

/// A `Content-Range` header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentRange {
    /// `bytes start-end/total`
    Bytes {
        /// First byte.
        start: u64,
        /// Length.
        len: u64,
        /// Object size.
        total: u64,
    },
    /// `bytes */total` (with 416)
    Unsatisfied {
        /// Object size.
        total: u64,
    },
}

/// Decides the response to a GET or HEAD of an existing object.
pub fn plan(req: &Request<'_>, obj: &ObjectMeta<'_>, path_range: Option<range::RangeSpec>) -> Plan {
    if let Some(inm) = req.if_none_match {
        if etag_list_matches(inm, obj.etag) {
            return Plan {
                status: Status::NotModified,
                body: None,
                content_length: 0,
                content_range: None,
            };
        }
    }
    // The path form is the URL itself, so If-Range cannot turn it into a whole-object response.
    let spec = match path_range {
        Some(spec) => Some(spec),
        None => match req.range.map(range::parse_header) {
            Some(RangeHeader::Single(spec)) if if_range_allows(req.if_range, obj) => Some(spec),
            _ => None,
        },
    };
    let head = req.method == Method::Head;
    match spec.map(|s| range::resolve(s, obj.size)) {
        None => Plan {
            status: Status::Ok,
            body: (!head && obj.size > 0).then_some((0, obj.size)),
            content_length: obj.size,
            content_range: None,
        },
        Some(Resolved::Partial { start, len }) => Plan {
            status: Status::PartialContent,
            body: (!head).then_some((start, len)),
            content_length: len,
            content_range: Some(ContentRange::Bytes {
                start,
                len,
                total: obj.size,
            }),
        },
        Some(Resolved::Unsatisfiable) => Plan {
            status: Status::RangeNotSatisfiable,
            body: None,
            content_length: 0,
            content_range: Some(ContentRange::Unsatisfied { total: obj.size }),
        },
    }
}

/// `If-Range`: the range applies only if the validator still matches (strong comparison).
fn if_range_allows(if_range: Option<&[u8]>, obj: &ObjectMeta<'_>) -> bool {
    let Some(v) = if_range else { return true };
    let v = v.trim_ascii();
    if v.starts_with(b"\"") {
        v == obj.etag.as_bytes()
    } else if v.starts_with(b"W/") {
        false
    } else {
        v == obj.last_modified.as_bytes()
    }
}

/// `If-None-Match`: `*` or a list of tags, compared weakly (RFC 9110 §13.1.2).
fn etag_list_matches(list: &[u8], etag: &str) -> bool {
    let list = list.trim_ascii();
    if list == b"*" {
        return true;
    }
    list.split(|&b| b == b',').any(|tag| {
        let tag = tag.trim_ascii();
        let tag = tag.strip_prefix(b"W/").unwrap_or(tag);
        tag == etag.as_bytes()
    })
}

/// Per-response context the head writer needs besides the plan.
#[derive(Debug, Clone, Copy)]
pub struct HeadContext<'a> {
    /// IMF-fixdate for `Date`.
    pub date: &'a [u8],
    /// Add CORS response headers (the request had `Origin` and CORS is on).
    pub cors: bool,
    /// Whether the connection stays open.
    pub keep_alive: bool,
    /// The request was HTTP/1.0 (then keep-alive is announced explicitly).
    pub http10: bool,
}

const CORS_HEADERS: &[u8] = b"Access-Control-Allow-Origin: *\r\n\
Access-Control-Expose-Headers: Content-Range, Content-Length, Accept-Ranges, ETag\r\n\
Timing-Allow-Origin: *\r\n";

/// Renders the fixed per-object header lines stored in [`ObjectMeta::fixed_headers`].
pub fn render_fixed_headers(content_type: &str, etag: &str, last_modified: &str) -> Vec<u8> {
    format!(
        "Content-Type: {content_type}\r\nAccept-Ranges: bytes\r\nETag: {etag}\r\nLast-Modified: {last_modified}\r\n"
    )
    .into_bytes()
}

/// Writes the head for a planned object response into `out` (cleared first).
pub fn write_object_head(
    out: &mut Vec<u8>,
    plan: &Plan,
    obj: &ObjectMeta<'_>,
    ctx: &HeadContext<'_>,
) {
    out.clear();
    start(out, plan.status, ctx);
    if plan.status == Status::NotModified {
        // RFC 9110 §15.4.5: send the validators, not the representation metadata.
        out.extend_from_slice(b"ETag: ");
        out.extend_from_slice(obj.etag.as_bytes());
        out.extend_from_slice(b"\r\n");
    } else if plan.status == Status::RangeNotSatisfiable {
        out.extend_from_slice(b"Accept-Ranges: bytes\r\n");
    } else {
        out.extend_from_slice(obj.fixed_headers);
    }
    if plan.status != Status::NotModified {
        number_header(out, b"Content-Length: ", plan.content_length);
    }
    match plan.content_range {
        Some(ContentRange::Bytes { start, len, total }) => {
            let mut b = itoa::Buffer::new();
            out.extend_from_slice(b"Content-Range: bytes ");
            out.extend_from_slice(b.format(start).as_bytes());
            out.push(b'-');
            out.extend_from_slice(b.format(start + len - 1).as_bytes());
            out.push(b'/');
            out.extend_from_slice(b.format(total).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Some(ContentRange::Unsatisfied { total }) => {
            number_header(out, b"Content-Range: bytes */", total);
        }
        None => {}
    }
    finish(out, ctx);
}

/// Writes a complete error (or other bodyless-object) response: head plus a short text body,
/// omitted for HEAD. `extra` is added verbatim (lines ending in CRLF).
pub fn write_error(
    out: &mut Vec<u8>,
    status: Status,
    ctx: &HeadContext<'_>,
    head: bool,
    extra: &[u8],
) {
    out.clear();
    start(out, status, ctx);
    out.extend_from_slice(extra);
    let line = status.line();
    let body = &line.as_bytes()["HTTP/1.1 ".len()..];
    out.extend_from_slice(b"Content-Type: text/plain\r\n");
    number_header(out, b"Content-Length: ", body.len() as u64 + 1);
    finish(out, ctx);
    if !head {
        out.extend_from_slice(body);
        out.push(b'\n');
    }
}

/// Writes the answer to `OPTIONS` (a CORS preflight when the request had `Origin`).
pub fn write_options(out: &mut Vec<u8>, req: &Request<'_>, ctx: &HeadContext<'_>) {
    out.clear();
    start(out, Status::NoContent, ctx);
    out.extend_from_slice(b"Allow: GET, HEAD, OPTIONS\r\n");
    if ctx.cors {
        out.extend_from_slice(
            b"Access-Control-Allow-Methods: GET, HEAD, OPTIONS\r\nAccess-Control-Max-Age: 86400\r\n",
        );
        out.extend_from_slice(b"Access-Control-Allow-Headers: ");
        match req.acr_headers.filter(|v| is_token_list(v)) {
            Some(v) => out.extend_from_slice(v.trim_ascii()),
            None => out.extend_from_slice(b"Range, If-Range, If-None-Match"),
        }
        out.extend_from_slice(b"\r\n");
    }
    finish(out, ctx);
}

/// Only header names and commas may be echoed back (no CR/LF injection).
fn is_token_list(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 512
        && v.iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b',' | b' '))
}

fn start(out: &mut Vec<u8>, status: Status, ctx: &HeadContext<'_>) {
    out.extend_from_slice(status.line().as_bytes());
    out.extend_from_slice(b"\r\nServer: edgeplane\r\nDate: ");
    out.extend_from_slice(ctx.date);
    out.extend_from_slice(b"\r\n");
    if ctx.cors {
        out.extend_from_slice(CORS_HEADERS);
    }
}

fn finish(out: &mut Vec<u8>, ctx: &HeadContext<'_>) {
    if !ctx.keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if ctx.http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn number_header(out: &mut Vec<u8>, name: &[u8], n: u64) {
    out.extend_from_slice(name);
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{parse, Limits, Parsed, Target};

    const LIMITS: Limits = Limits {
        max_header_bytes: 4096,
        max_headers: 32,
        max_uri_bytes: 1024,
    };
    const ETAG: &str = "\"64-5f\"";
    const LM: &str = "Sun, 22 Nov 2026 03:00:00 GMT";

    fn meta(size: u64, fixed: &[u8]) -> ObjectMeta<'_> {
        ObjectMeta {
            size,
            etag: ETAG,
            last_modified: LM,
            fixed_headers: fixed,
        }
    }

    fn plan_for(raw: &str, size: u64) -> Plan {
        let Parsed::Complete { request, .. } = parse(raw.as_bytes(), &LIMITS) else {
            panic!("not complete: {raw}");
        };
        let Target::Object { path_range, .. } = request.target else {
            panic!("not an object");
        };
        plan(&request, &meta(size, b""), path_range)
    }

    fn get(headers: &str) -> String {
        format!("GET /a.mp4 HTTP/1.1\r\nHost: x\r\n{headers}\r\n")
    }

    #[test]
    fn whole_and_partial() {
        let p = plan_for(&get(""), 100);
        assert_eq!(
            (p.status, p.body, p.content_length),
            (Status::Ok, Some((0, 100)), 100)
        );
        let p = plan_for(&get("Range: bytes=10-19\r\n"), 100);
        assert_eq!(p.status, Status::PartialContent);
        assert_eq!(p.body, Some((10, 10)));
        let p = plan_for(&get("Range: bytes=-1\r\n"), 100);
        assert_eq!(p.body, Some((99, 1)));
        let p = plan_for(
            "HEAD /a.mp4 HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n",
            100,
        );
        assert_eq!(
            (p.status, p.body, p.content_length),
            (Status::PartialContent, None, 10)
        );
        let p = plan_for(&get(""), 0);
        assert_eq!((p.status, p.body, p.content_length), (Status::Ok, None, 0));
    }

    #[test]
    fn unsatisfiable_and_multiple() {
        let p = plan_for(&get("Range: bytes=100-\r\n"), 100);
        assert_eq!(p.status, Status::RangeNotSatisfiable);
        assert_eq!(
            p.content_range,
            Some(ContentRange::Unsatisfied { total: 100 })
        );
        let p = plan_for(&get("Range: bytes=0-1,5-9\r\n"), 100);
        assert_eq!((p.status, p.body), (Status::Ok, Some((0, 100))));
        let p = plan_for(&get("Range: bytes=0-0\r\n"), 0);
        assert_eq!(p.status, Status::RangeNotSatisfiable);
    }

    #[test]
    fn path_form_wins_over_if_range() {
        let raw = "GET /a.mp4/range/0-9 HTTP/1.1\r\nHost: x\r\nIf-Range: \"other\"\r\n\r\n";
        assert_eq!(plan_for(raw, 100).body, Some((0, 10)));
        let raw = "GET /a.mp4/range/200-300 HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(plan_for(raw, 100).status, Status::RangeNotSatisfiable);
    }

    #[test]
    fn conditionals() {
        let p = plan_for(&get(&format!("If-None-Match: {ETAG}\r\n")), 100);
        assert_eq!((p.status, p.body), (Status::NotModified, None));
        let p = plan_for(&get(&format!("If-None-Match: \"x\", W/{ETAG}\r\n")), 100);
        assert_eq!(p.status, Status::NotModified);
        assert_eq!(
            plan_for(&get("If-None-Match: *\r\n"), 100).status,
            Status::NotModified
        );
        assert_eq!(
            plan_for(&get("If-None-Match: \"x\"\r\n"), 100).status,
            Status::Ok
        );

        let hdr = format!("Range: bytes=0-9\r\nIf-Range: {ETAG}\r\n");
        assert_eq!(plan_for(&get(&hdr), 100).status, Status::PartialContent);
        let hdr = "Range: bytes=0-9\r\nIf-Range: \"stale\"\r\n";
        assert_eq!(plan_for(&get(hdr), 100).status, Status::Ok);
        let hdr = format!("Range: bytes=0-9\r\nIf-Range: W/{ETAG}\r\n");
        assert_eq!(
            plan_for(&get(&hdr), 100).status,
            Status::Ok,
            "weak never matches"
        );
        let hdr = format!("Range: bytes=0-9\r\nIf-Range: {LM}\r\n");
        assert_eq!(plan_for(&get(&hdr), 100).status, Status::PartialContent);
        let hdr = "Range: bytes=0-9\r\nIf-Range: Sat, 21 Nov 2026 03:00:00 GMT\r\n";
        assert_eq!(plan_for(&get(hdr), 100).status, Status::Ok);
    }

    #[test]
    fn heads_render() {
        let fixed = render_fixed_headers("video/mp4", ETAG, LM);
        let obj = meta(100, &fixed);
        let ctx = HeadContext {
            date: b"Sun, 22 Nov 2026 03:00:01 GMT",
            cors: true,
            keep_alive: false,
            http10: false,
        };
        let plan = Plan {
            status: Status::PartialContent,
            body: Some((10, 5)),
            content_length: 5,
            content_range: Some(ContentRange::Bytes {
                start: 10,
                len: 5,
                total: 100,
            }),
        };
        let mut out = Vec::new();
        write_object_head(&mut out, &plan, &obj, &ctx);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 206 Partial Content\r\n"));
        for line in [
            "Content-Length: 5\r\n",
            "Content-Range: bytes 10-14/100\r\n",
            "Content-Type: video/mp4\r\n",
            "Accept-Ranges: bytes\r\n",
            "ETag: \"64-5f\"\r\n",
            "Access-Control-Allow-Origin: *\r\n",
            "Connection: close\r\n",
        ] {
            assert!(text.contains(line), "{line:?} missing in {text}");
        }
        assert!(text.ends_with("\r\n\r\n"));
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        assert!(resp.parse(&out).unwrap().is_complete());
        assert_eq!(resp.code, Some(206));

        write_error(&mut out, Status::NotFound, &ctx, false, b"");
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.contains("Content-Length: 14\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n404 Not Found\n"), "{text}");
        write_error(&mut out, Status::NotFound, &ctx, true, b"");
        assert!(out.ends_with(b"\r\n\r\n"));
    }

    #[test]
    fn preflight_does_not_echo_injection() {
        let raw = b"OPTIONS /a HTTP/1.1\r\nHost: x\r\nOrigin: o\r\nAccess-Control-Request-Headers: range, x-a\r\n\r\n";
        let Parsed::Complete { request, .. } = parse(raw, &LIMITS) else {
            panic!()
        };
        let ctx = HeadContext {
            date: b"d",
            cors: true,
            keep_alive: true,
            http10: false,
        };
        let mut out = Vec::new();
        write_options(&mut out, &request, &ctx);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 204"));
        assert!(text.contains("Access-Control-Allow-Headers: range, x-a\r\n"));
        assert!(text.contains("Access-Control-Allow-Methods: GET, HEAD, OPTIONS\r\n"));
        assert!(!is_token_list(b"a\r\nSet-Cookie: x"));
    }
}
