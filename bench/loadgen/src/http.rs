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
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ErrorKind::Protocol),
    };
    if resp.code != Some(206) {
        return Err(ErrorKind::Status);
    }
    let (mut content_length, mut content_range, mut close) = (None, None, false);
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value).map_err(|_| ErrorKind::Protocol)?;
        if h.name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| ErrorKind::Protocol)?,
            );
        } else if h.name.eq_ignore_ascii_case("content-range") {
            content_range = Some(value.trim().to_owned());
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = value.trim().eq_ignore_ascii_case("close");
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ErrorKind::Protocol);
        }
    }
    let content_length = content_length.ok_or(ErrorKind::Protocol)?;
    if content_length != last - first + 1 {
        return Err(ErrorKind::Length);
    }
    let range = content_range.ok_or(ErrorKind::Protocol)?;
    let want = format!("bytes {first}-{last}/");
    if !range.starts_with(&want) {
        return Err(ErrorKind::Protocol);
    }
    Ok(Some(Head {
        len,
        content_length,
        close,
    }))
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
    fn request_bytes() {
        let r = range_request("h:80", "", "a.bin", 0, 65535);
        assert_eq!(
            r,
            b"GET /a.bin HTTP/1.1\r\nHost: h:80\r\nUser-Agent: edgeplane-load\r\n\
              Range: bytes=0-65535\r\n\r\n"
        );
    }
}
