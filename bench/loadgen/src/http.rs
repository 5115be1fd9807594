//! The client side of HTTP/1.1 range requests, sans IO: the request bytes and the checks on a
//! response head.

use crate::stats::ErrorKind;

/// `GET /<name>` for bytes `first ..= last`.
pub fn range_request(host: &str, prefix: &str, name: &str, first: u64, last: u64) -> Vec<u8> {
    format!(
        "GET {prefix}/{name} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: edgeplane-load\r\n\
         Range: bytes={first}-{last}\r\n\r\n"
    )
    .into_bytes()
}

/// `GET <path>` of a whole object (the steered player: one object per segment).
pub fn get_request(host: &str, path: &str, close: bool) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: edgeplane-load\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes()
}

/// What the head of a whole-object response says.
#[derive(Debug, PartialEq, Eq)]
pub struct GetHead {
    /// Bytes of the head, up to and including the blank line.
    pub len: usize,
    pub status: u16,
    /// None: the body runs to the end of the connection.
    pub content_length: Option<u64>,
    pub close: bool,
    /// `Location` (redirects).
    pub location: Option<String>,
}

/// Parses the head of a response to [`get_request`]. `Ok(None)`: incomplete, read more.
/// Chunked bodies are refused (the servers here send a length).
pub fn parse_get_head(buf: &[u8]) -> Result<Option<GetHead>, ErrorKind> {
    let Some(r) = parse_response(buf, |_| Ok(()))? else {
        return Ok(None);
    };
    Ok(Some(GetHead {
        len: r.len,
        status: r.status,
        content_length: r.content_length,
        close: r.close || r.content_length.is_none(),
        location: r.location,
    }))
}

/// What a valid response head says.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    /// Bytes of the head, up to and including the blank line.
    pub len: usize,
    pub content_length: u64,
    /// The server will close the connection after this response.
    pub close: bool,
}

/// Parses a response head for a request of bytes `first ..= last`. `Ok(None)`: incomplete,
/// read more. Checks: status 206, `Content-Length` equal to the range's length, and
/// `Content-Range: bytes first-last/…`.
pub fn parse_head(buf: &[u8], first: u64, last: u64) -> Result<Option<Head>, ErrorKind> {
    let status = |code| {
        if code == 206 {
            Ok(())
        } else {
            Err(ErrorKind::Status)
        }
    };
    let Some(r) = parse_response(buf, status)? else {
        return Ok(None);
    };
    let content_length = r.content_length.ok_or(ErrorKind::Protocol)?;
    if content_length != last - first + 1 {
        return Err(ErrorKind::Length);
    }
    let range = r.content_range.ok_or(ErrorKind::Protocol)?;
    let want = format!("bytes {first}-{last}/");
    if !range.starts_with(&want) {
        return Err(ErrorKind::Protocol);
    }
    Ok(Some(Head {
        len: r.len,
        content_length,
        close: r.close,
    }))
}

/// The fields of a response head both parsers read.
struct Response {
    len: usize,
    status: u16,
    content_length: Option<u64>,
    content_range: Option<String>,
    close: bool,
    location: Option<String>,
}

/// Parses a response head (`Ok(None)`: incomplete); `accept` checks the status before the
/// headers are read. A `Transfer-Encoding` (chunked) or an unreadable header is a protocol error.
fn parse_response(
    buf: &[u8],
    accept: impl Fn(u16) -> Result<(), ErrorKind>,
) -> Result<Option<Response>, ErrorKind> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ErrorKind::Protocol),
    };
    let status = resp.code.ok_or(ErrorKind::Protocol)?;
    accept(status)?;
    let mut r = Response {
        len,
        status,
        content_length: None,
        content_range: None,
        close: false,
        location: None,
    };
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value).map_err(|_| ErrorKind::Protocol)?;
        let value = value.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            r.content_length = Some(value.parse::<u64>().map_err(|_| ErrorKind::Protocol)?);
        } else if h.name.eq_ignore_ascii_case("content-range") {
            r.content_range = Some(value.to_owned());
        } else if h.name.eq_ignore_ascii_case("connection") {
            r.close = value.eq_ignore_ascii_case("close");
        } else if h.name.eq_ignore_ascii_case("location") {
            r.location = Some(value.to_owned());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ErrorKind::Protocol);
        }
    }
    Ok(Some(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\n\
                        Content-Range: bytes 5-14/100\r\n\r\nbody";

    #[test]
    fn good_head() {
        let head = parse_head(OK, 5, 14).unwrap().unwrap();
        assert_eq!(head.content_length, 10);
        assert_eq!(head.len, OK.len() - 4);
        assert!(!head.close);
        assert_eq!(parse_head(&OK[..20], 5, 14), Ok(None));
    }

    #[test]
    fn bad_heads() {
        assert_eq!(parse_head(OK, 5, 15), Err(ErrorKind::Length));
        assert_eq!(
            parse_head(OK, 4, 13),
            Err(ErrorKind::Protocol),
            "wrong Content-Range"
        );
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
        assert_eq!(parse_head(full, 5, 14), Err(ErrorKind::Status));
        let no_len = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 5-14/100\r\n\r\n";
        assert_eq!(parse_head(no_len, 5, 14), Err(ErrorKind::Protocol));
        assert_eq!(
            parse_head(b"garbage\r\n\r\n", 5, 14),
            Err(ErrorKind::Protocol)
        );
        let close = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\n\
                      Content-Range: bytes 5-14/100\r\nConnection: close\r\n\r\n";
        assert!(parse_head(close, 5, 14).unwrap().unwrap().close);
    }

    #[test]
    fn whole_object_heads() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nbody";
        let h = parse_get_head(ok).unwrap().unwrap();
        assert_eq!(
            (h.status, h.content_length, h.close),
            (200, Some(10), false)
        );
        assert_eq!(h.len, ok.len() - 4);
        assert_eq!(parse_get_head(&ok[..10]), Ok(None));
        let moved = b"HTTP/1.1 302 Found\r\nLocation: http://s3:9000/o/a?x=1\r\n\
                      Content-Length: 0\r\n\r\n";
        let h = parse_get_head(moved).unwrap().unwrap();
        assert_eq!(h.status, 302);
        assert_eq!(h.location.as_deref(), Some("http://s3:9000/o/a?x=1"));
        let no_len = b"HTTP/1.1 200 OK\r\n\r\n";
        assert!(
            parse_get_head(no_len).unwrap().unwrap().close,
            "body to EOF"
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_get_head(chunked), Err(ErrorKind::Protocol));
        assert_eq!(
            get_request("h:80", "/tok/t/a.m4s", true),
            b"GET /tok/t/a.m4s HTTP/1.1\r\nHost: h:80\r\nUser-Agent: edgeplane-load\r\n\
              Connection: close\r\n\r\n"
        );
    }

    #[test]
    fn request_bytes() {
        let r = range_request("h:80", "", "a.bin", 0, 65535);
        assert_eq!(
            r,
            b"GET /a.bin HTTP/1.1\r\nHost: h:80\r\nUser-Agent: edgeplane-load\r\n\
              Range: bytes=0-65535\r\n\r\n"
        );
    }
}
