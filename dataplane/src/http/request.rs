//! Request heads: bytes in, a [`Request`] or the precise 4xx/5xx out. Built on `httparse`.
//!
//! Sans-IO: the connection layer hands in whatever bytes it has buffered and gets back either a
//! complete request (and how many bytes it used, so pipelined requests follow), "need more", or
//! an error status. Nothing here allocates per request or can panic on any input.

use super::range::{self, RangeSpec};
use super::Status;

/// Methods we serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `OPTIONS` (CORS preflight)
    Options,
}

/// What the request target names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// `/<id>` or `/<id>/range/<first>-<last>`, each optionally behind `/tok/<token>`.
    Object {
        /// The content id (validated).
        id: &'a str,
        /// The range from the path form, if used.
        path_range: Option<RangeSpec>,
        /// The query string after `?` (without it), as sent; `None` without `?`. Carries the
        /// signed-URL parameters (`exp`, `pfx`, `kid`, `sig`).
        query: Option<&'a str>,
        /// The per-title token of the `/tok/<token>/<id>` form (unchecked here); when present
        /// it is what is verified and the query is ignored.
        token: Option<&'a str>,
    },
    /// `*` (only meaningful for OPTIONS).
    Asterisk,
    /// A path that cannot name an object: 404.
    NotFound,
}

/// A parsed request head; borrows the connection's read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The method.
    pub method: Method,
    /// What it asks for.
    pub target: Target<'a>,
    /// The path form's range was malformed (`/id/range/9-1`): 400.
    pub bad_path_range: bool,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// HTTP/1.0 (responses then say `Connection: keep-alive` explicitly when kept open).
    pub http10: bool,
    /// `Range` value.
    pub range: Option<&'a [u8]>,
    /// `If-Range` value.
    pub if_range: Option<&'a [u8]>,
    /// `If-None-Match` value.
    pub if_none_match: Option<&'a [u8]>,
    /// An `Origin` header was sent (CORS headers are added).
    pub has_origin: bool,
    /// `Access-Control-Request-Headers` of a preflight.
    pub acr_headers: Option<&'a [u8]>,
}

/// Result of looking at buffered bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A complete head of `len` bytes.
    Complete {
        /// The request.
        request: Request<'a>,
        /// Bytes of the buffer it used.
        len: usize,
    },
    /// The head is not complete yet.
    Partial,
    /// The request is refused; the connection is closed after the error response.
    Error(Status),
}

/// Size limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest head in bytes.
    pub max_header_bytes: usize,
    /// Most header lines (at most [`MAX_HEADERS`]).
    pub max_headers: usize,
    /// Longest request target.
    pub max_uri_bytes: usize,
}

/// Hard upper bound on header lines (the stack array httparse fills).
pub const MAX_HEADERS: usize = 128;

/// Parses the head at the start of `buf`.
pub fn parse<'a>(buf: &'a [u8], limits: &Limits) -> Parsed<'a> {
    // Tolerate empty lines before a request (RFC 9112 §2.2), e.g. a stray CRLF after a body.
    let skip = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let max_headers = limits.max_headers.min(MAX_HEADERS);
    let mut req = httparse::Request::new(&mut headers[..max_headers]);
    let len = match req.parse(&buf[skip..]) {
        Ok(httparse::Status::Complete(n)) => skip + n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= limits.max_header_bytes {
                Parsed::Error(too_large(&buf[skip..], limits))
            } else if request_line_too_long(&buf[skip..], limits) {
                Parsed::Error(Status::UriTooLong)
            } else {
                Parsed::Partial
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Error(Status::RequestHeaderFieldsTooLarge)
        }
        Err(httparse::Error::Version) => return Parsed::Error(version_error(&buf[skip..])),
        Err(_) => return Parsed::Error(Status::BadRequest),
    };
    if len > limits.max_header_bytes {
        return Parsed::Error(too_large(&buf[skip..], limits));
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Error(Status::BadRequest);
    };
    if path.len() > limits.max_uri_bytes {
        return Parsed::Error(Status::UriTooLong);
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "OPTIONS" => Method::Options,
        m if m
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_') =>
        {
            return Parsed::Error(Status::MethodNotAllowed)
        }
        _ => return Parsed::Error(Status::BadRequest),
    };

    let http10 = version == 0;
    let mut keep_alive = !http10;
    let mut host = false;
    let mut out = Request {
        method,
        target: Target::NotFound,
        bad_path_range: false,
        keep_alive,
        http10,
        range: None,
        if_range: None,
        if_none_match: None,
        has_origin: false,
        acr_headers: None,
        // Filled in below.
    };
    let mut content_length: Option<&[u8]> = None;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                if host {
                    return Parsed::Error(Status::BadRequest);
                }
                host = true;
            }
            5 if name.eq_ignore_ascii_case(b"range") => out.range = Some(value),
            6 if name.eq_ignore_ascii_case(b"origin") => out.has_origin = true,
            8 if name.eq_ignore_ascii_case(b"if-range") => out.if_range = Some(value),
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                        keep_alive = true;
                    }
                }
            }
            13 if name.eq_ignore_ascii_case(b"if-none-match") => out.if_none_match = Some(value),
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                if content_length.is_some_and(|v| v != value) {
                    return Parsed::Error(Status::BadRequest);
                }
                content_length = Some(value);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                // We take no request bodies; the framing of what follows is unknowable to us.
                return Parsed::Error(Status::PayloadTooLarge);
            }
            30 if name.eq_ignore_ascii_case(b"access-control-request-headers") => {
                out.acr_headers = Some(value);
            }
            _ => {}
        }
    }
    if let Some(cl) = content_length {
        match std::str::from_utf8(cl.trim_ascii())
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .map(str::parse::<u64>)
        {
            Some(Ok(0)) => {}
            Some(Ok(_)) | Some(Err(_)) => return Parsed::Error(Status::PayloadTooLarge),
            None => return Parsed::Error(Status::BadRequest),
        }
    }
    if !http10 && !host {
        // RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without Host.
        return Parsed::Error(Status::BadRequest);
    }
    out.keep_alive = keep_alive;
    match route(path) {
        Route::Target(t) => out.target = t,
        Route::BadRange => out.bad_path_range = true,
        Route::Invalid => return Parsed::Error(Status::BadRequest),
    }
    Parsed::Complete { request: out, len }
}

enum Route<'a> {
    Target(Target<'a>),
    BadRange,
    Invalid,
}

fn route(target: &str) -> Route<'_> {
    if target == "*" {
        return Route::Target(Target::Asterisk);
    }
    let Some(path) = origin_path(target) else {
        // Authority-form (CONNECT) and anything else that is not a path.
        return Route::Invalid;
    };
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut parts = path.split('/');
    let mut id = parts.next().unwrap_or("");
    let mut token = None;
    // `/tok/<token>/<id>…`: a per-title token as a path segment. `/tok/range/…` stays the path
    // range of an object named `tok` (a token always holds `~`, so is never `range`).
    if id == TOKEN_SEGMENT {
        let mut ahead = parts.clone();
        if let Some(t) = ahead.next().filter(|&t| t != "range") {
            token = Some(t);
            id = ahead.next().unwrap_or("");
            parts = ahead;
        }
    }
    if !crate::content_id::is_valid(id) {
        return Route::Target(Target::NotFound);
    }
    match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => Route::Target(Target::Object {
            id,
            path_range: None,
            query,
            token,
        }),
        (Some("range"), Some(r), None) => match range::parse_path_range(r) {
            Some(spec) => Route::Target(Target::Object {
                id,
                path_range: Some(spec),
                query,
                token,
            }),
            None => Route::BadRange,
        },
        _ => Route::Target(Target::NotFound),
    }
}

/// The first path segment of the per-title token form `/tok/<token>/<id>`.
pub const TOKEN_SEGMENT: &str = "tok";

/// The path of an origin-form target (`/a`), or of an absolute-form one
/// (`http://host:port/a`), which RFC 9112 §3.2.2 says a server must accept. Without its
/// leading `/`.
fn origin_path(target: &str) -> Option<&str> {
    if let Some(path) = target.strip_prefix('/') {
        return Some(path);
    }
    // Compared as bytes: the target may hold any UTF-8 (httparse passes bytes >= 0x80), and a
    // `str` slice at a length that falls inside a character would panic the executor.
    let scheme_len = ["http://", "https://"]
        .iter()
        .find(|s| {
            target
                .as_bytes()
                .get(..s.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(s.as_bytes()))
        })?
        .len();
    let rest = &target[scheme_len..];
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => Some(&rest[i + 1..]),
        _ => Some(""),
    }
}

/// The head is over the byte limit: 414 when it is the request line that is too long.
fn too_large(buf: &[u8], limits: &Limits) -> Status {
    if request_line_too_long(buf, limits) {
        Status::UriTooLong
    } else {
        Status::RequestHeaderFieldsTooLarge
    }
}

/// Whether the (possibly unfinished) request line is already longer than a method, the longest
/// allowed target and a version could make it.
fn request_line_too_long(buf: &[u8], limits: &Limits) -> bool {
    let line_len = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    line_len > limits.max_uri_bytes + 32
}

/// `HTTP/2.0` and friends are well-formed but unsupported (505); anything else is a 400.
fn version_error(buf: &[u8]) -> Status {
    let line = buf
        .split(|&b| b == b'\n')
        .next()
        .unwrap_or(buf)
        .trim_ascii();
    if line.split(|&b| b == b' ').count() != 3 {
        // `GET /a b HTTP/1.1`: a space in the target, not an unknown version.
        return Status::BadRequest;
    }
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or(b"");
    let is_http_version = version.starts_with(b"HTTP/")
        && version[5..]
            .iter()
            .all(|b| b.is_ascii_digit() || *b == b'.')
        && version.len() > 5;
    if is_http_version {
        Status::HttpVersionNotSupported
    } else {
        Status::BadRequest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        max_header_bytes: 1024,
        max_headers: 8,
        max_uri_bytes: 128,
    };

    fn complete(raw: &[u8]) -> (Request<'_>, usize) {
        match parse(raw, &LIMITS) {
            Parsed::Complete { request, len } => (request, len),
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(raw)),
        }
    }

    fn error(raw: &[u8]) -> Status {
        match parse(raw, &LIMITS) {
            Parsed::Error(s) => s,
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(raw)),
        }
    }

    /// Found by the `http_head` fuzz target: a target whose 7th byte is inside a multi-byte
    /// character made the absolute-form check slice a `str` off a character boundary (a panic,
    /// so a crash of the serving process, from one request line).
    #[test]
    fn non_ascii_target_where_a_scheme_would_end() {
        let limits = Limits {
            max_header_bytes: 8192,
            max_headers: 64,
            max_uri_bytes: 2048,
        };
        for target in [
            "http:/\u{4bd}x",
            "https:/\u{4bd}",
            "\u{4bd}\u{4bd}\u{4bd}\u{4bd}",
        ] {
            let head = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
            match parse(head.as_bytes(), &limits) {
                Parsed::Complete { request, .. } => assert_eq!(request.target, Target::NotFound),
                Parsed::Error(status) => assert_eq!(status, Status::BadRequest),
                Parsed::Partial => panic!("{target:?}: partial"),
            }
        }
    }

    #[test]
    fn simple_get() {
        let raw = b"GET /a.m4s HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\nGET";
        let (r, len) = complete(raw);
        assert_eq!(len, raw.len() - 3);
        assert_eq!(r.method, Method::Get);
        assert_eq!(
            r.target,
            Target::Object {
                id: "a.m4s",
                path_range: None,
                query: None,
                token: None,
            }
        );
        assert_eq!(r.range, Some(&b"bytes=0-9"[..]));
        assert!(r.keep_alive);
    }

    #[test]
    fn path_range_and_query() {
        let (r, _) = complete(b"HEAD /v1.mp4/range/10-19?token=abc HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.method, Method::Head);
        assert_eq!(
            r.target,
            Target::Object {
                id: "v1.mp4",
                path_range: Some(RangeSpec::FromTo(10, 19)),
                query: Some("token=abc"),
                token: None,
            }
        );
        let (r, _) = complete(b"GET /v.mp4? HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            r.target,
            Target::Object {
                id: "v.mp4",
                path_range: None,
                query: Some(""),
                token: None,
            }
        );
        let (r, _) = complete(b"GET /v1.mp4/range/19-10 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.bad_path_range);
    }

    #[test]
    fn token_form() {
        let (r, _) =
            complete(b"GET /tok/t7-~9~10.0.0.0_8~k~s/t7-a.m4s HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            r.target,
            Target::Object {
                id: "t7-a.m4s",
                path_range: None,
                query: None,
                token: Some("t7-~9~10.0.0.0_8~k~s"),
            }
        );
        let (r, _) =
            complete(b"GET http://h/tok/T/t7-a.m4s/range/0-9?x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            r.target,
            Target::Object {
                id: "t7-a.m4s",
                path_range: Some(RangeSpec::FromTo(0, 9)),
                query: Some("x=1"),
                token: Some("T"),
            }
        );
        // An empty token is still the token form (refused as unsigned by the access check).
        let (r, _) = complete(b"GET /tok//a HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(matches!(
            r.target,
            Target::Object {
                id: "a",
                token: Some(""),
                ..
            }
        ));
        // An object named `tok`, whole and by path range.
        let (r, _) = complete(b"GET /tok HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(matches!(
            r.target,
            Target::Object {
                id: "tok",
                token: None,
                ..
            }
        ));
        let (r, _) = complete(b"GET /tok/range/0-1 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(matches!(
            r.target,
            Target::Object {
                id: "tok",
                token: None,
                path_range: Some(_),
                ..
            }
        ));
        // No id, an invalid id, extra segments.
        for raw in [
            &b"GET /tok/T HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET /tok/T/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /tok/T/.hidden HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /tok/T/a/b HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert_eq!(complete(raw).0.target, Target::NotFound);
        }
        assert!(
            complete(b"GET /tok/T/a/range/9-1 HTTP/1.1\r\nHost: x\r\n\r\n")
                .0
                .bad_path_range
        );
    }

    #[test]
    fn absolute_form_is_accepted() {
        let (r, _) =
            complete(b"GET http://127.0.0.1:8080/v.mp4/range/0-9 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            r.target,
            Target::Object {
                id: "v.mp4",
                path_range: Some(RangeSpec::FromTo(0, 9)),
                query: None,
                token: None,
            }
        );
        let (r, _) = complete(b"GET HTTPS://h?x HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.target, Target::NotFound);
        assert_eq!(
            error(b"GET h:80 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Status::BadRequest
        );
    }

    #[test]
    fn connection_semantics() {
        assert!(
            !complete(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(!complete(b"GET /a HTTP/1.0\r\n\r\n").0.keep_alive);
        let (r, _) = complete(b"GET /a HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(r.keep_alive && r.http10);
        assert!(
            complete(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n\r\n")
                .0
                .keep_alive
        );
    }

    #[test]
    fn not_found_paths() {
        for p in [
            "/",
            "/../etc/passwd",
            "/%2e%2e/x",
            "/a/b",
            "/.hidden",
            "/a/range/1-2/x",
            "/a/ranges/1-2",
        ] {
            let raw = format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(complete(raw.as_bytes()).0.target, Target::NotFound, "{p}");
        }
    }

    #[test]
    fn error_statuses() {
        assert_eq!(error(b"GARBAGE\r\n\r\n"), Status::BadRequest);
        assert_eq!(
            error(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            Status::BadRequest
        );
        assert_eq!(
            error(b"GET /a HTTP/1.1\r\n\r\n"),
            Status::BadRequest,
            "no Host"
        );
        assert_eq!(
            error(b"GET a HTTP/1.1\r\nHost: x\r\n\r\n"),
            Status::BadRequest
        );
        assert_eq!(
            error(b"POST /a HTTP/1.1\r\nHost: x\r\n\r\n"),
            Status::MethodNotAllowed
        );
        assert_eq!(
            error(b"DELETE /a HTTP/1.1\r\nHost: x\r\n\r\n"),
            Status::MethodNotAllowed
        );
        assert_eq!(
            error(b"GET /a HTTP/2.0\r\nHost: x\r\n\r\n"),
            Status::HttpVersionNotSupported
        );
        assert_eq!(
            error(b"GET /a HTTP/3\r\nHost: x\r\n\r\n"),
            Status::HttpVersionNotSupported
        );
        assert_eq!(
            error(b"GET /a FOO/1.1\r\nHost: x\r\n\r\n"),
            Status::BadRequest
        );
        assert_eq!(
            error(b"GET /a b.bin HTTP/1.1\r\nHost: x\r\n\r\n"),
            Status::BadRequest
        );
        assert_eq!(
            error(b"CONNECT host:443 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Status::MethodNotAllowed
        );
        assert_eq!(
            error(b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"),
            Status::PayloadTooLarge
        );
        assert_eq!(
            error(b"GET /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Status::PayloadTooLarge
        );
        assert_eq!(
            error(b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Status::BadRequest
        );
        assert_eq!(
            error(b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"),
            Status::BadRequest
        );
        assert!(matches!(
            parse(
                b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                &LIMITS
            ),
            Parsed::Complete { .. }
        ));
    }

    #[test]
    fn size_limits() {
        let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(200));
        assert_eq!(error(long_uri.as_bytes()), Status::UriTooLong);
        let unfinished_uri = format!("GET /{}", "a".repeat(300));
        assert_eq!(error(unfinished_uri.as_bytes()), Status::UriTooLong);
        let many: String = (0..9).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET /a HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        assert_eq!(error(raw.as_bytes()), Status::RequestHeaderFieldsTooLarge);
        let big = format!("GET /a HTTP/1.1\r\nHost: x\r\nX: {}\r\n", "v".repeat(1100));
        assert_eq!(error(big.as_bytes()), Status::RequestHeaderFieldsTooLarge);
        assert_eq!(parse(b"GET /a HTTP/1.1\r\nHo", &LIMITS), Parsed::Partial);
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes, &LIMITS);
        }

        #[test]
        fn split_points_agree(cut in 0usize..60) {
            let raw = b"GET /seg.m4s/range/0-99 HTTP/1.1\r\nHost: h\r\nRange: bytes=1-2\r\n\r\n";
            let cut = cut.min(raw.len() - 1);
            prop_assert_eq!(parse(&raw[..cut], &LIMITS), Parsed::Partial);
            let complete = matches!(parse(raw, &LIMITS), Parsed::Complete { .. });
            prop_assert!(complete);
        }
    }
}
