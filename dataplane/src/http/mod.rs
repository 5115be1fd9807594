//! HTTP/1.1 for range serving, without I/O: one connection's decisions ([`connection`]: bytes and
//! `now` in, actions out), request heads in ([`request`]), response decisions and heads out
//! ([`response`]), byte-range arithmetic ([`range`]), media types ([`mime`]).
//!
//! The runtime feeds bytes in and writes bytes out; everything here is deterministic and unit
//! tested, the way `quinn-proto` is split from its sockets.

pub mod connection;
pub mod mime;
pub mod range;
pub mod request;
pub mod response;

/// Every status the data plane sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// 200
    Ok,
    /// 204 (CORS preflight)
    NoContent,
    /// 206
    PartialContent,
    /// 304
    NotModified,
    /// 400
    BadRequest,
    /// 403
    Forbidden,
    /// 404
    NotFound,
    /// 405
    MethodNotAllowed,
    /// 408
    RequestTimeout,
    /// 413 (a request with a body)
    PayloadTooLarge,
    /// 414
    UriTooLong,
    /// 416
    RangeNotSatisfiable,
    /// 431
    RequestHeaderFieldsTooLarge,
    /// 500
    InternalServerError,
    /// 502 (pull-through: the upstream failed)
    BadGateway,
    /// 503 (over a connection cap, or a tier is down)
    ServiceUnavailable,
    /// 504 (pull-through: the upstream timed out)
    GatewayTimeout,
    /// 505
    HttpVersionNotSupported,
}

impl Status {
    /// All statuses, in the order metrics are kept.
    pub const ALL: [Status; 18] = [
        Status::Ok,
        Status::NoContent,
        Status::PartialContent,
        Status::NotModified,
        Status::BadRequest,
        Status::Forbidden,
        Status::NotFound,
        Status::MethodNotAllowed,
        Status::RequestTimeout,
        Status::PayloadTooLarge,
        Status::UriTooLong,
        Status::RangeNotSatisfiable,
        Status::RequestHeaderFieldsTooLarge,
        Status::InternalServerError,
        Status::BadGateway,
        Status::ServiceUnavailable,
        Status::GatewayTimeout,
        Status::HttpVersionNotSupported,
    ];

    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::NoContent => 204,
            Status::PartialContent => 206,
            Status::NotModified => 304,
            Status::BadRequest => 400,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::PayloadTooLarge => 413,
            Status::UriTooLong => 414,
            Status::RangeNotSatisfiable => 416,
            Status::RequestHeaderFieldsTooLarge => 431,
            Status::InternalServerError => 500,
            Status::BadGateway => 502,
            Status::ServiceUnavailable => 503,
            Status::GatewayTimeout => 504,
            Status::HttpVersionNotSupported => 505,
        }
    }

    /// Position in [`Status::ALL`], for per-status counters.
    pub fn index(self) -> usize {
        Status::ALL
            .iter()
            .position(|&s| s == self)
            .unwrap_or_default()
    }

    /// The status line, without the trailing CRLF.
    pub fn line(self) -> &'static str {
        match self {
            Status::Ok => "HTTP/1.1 200 OK",
            Status::NoContent => "HTTP/1.1 204 No Content",
            Status::PartialContent => "HTTP/1.1 206 Partial Content",
            Status::NotModified => "HTTP/1.1 304 Not Modified",
            Status::BadRequest => "HTTP/1.1 400 Bad Request",
            Status::Forbidden => "HTTP/1.1 403 Forbidden",
            Status::NotFound => "HTTP/1.1 404 Not Found",
            Status::MethodNotAllowed => "HTTP/1.1 405 Method Not Allowed",
            Status::RequestTimeout => "HTTP/1.1 408 Request Timeout",
            Status::PayloadTooLarge => "HTTP/1.1 413 Content Too Large",
            Status::UriTooLong => "HTTP/1.1 414 URI Too Long",
            Status::RangeNotSatisfiable => "HTTP/1.1 416 Range Not Satisfiable",
            Status::RequestHeaderFieldsTooLarge => "HTTP/1.1 431 Request Header Fields Too Large",
            Status::InternalServerError => "HTTP/1.1 500 Internal Server Error",
            Status::BadGateway => "HTTP/1.1 502 Bad Gateway",
            Status::ServiceUnavailable => "HTTP/1.1 503 Service Unavailable",
            Status::GatewayTimeout => "HTTP/1.1 504 Gateway Timeout",
            Status::HttpVersionNotSupported => "HTTP/1.1 505 HTTP Version Not Supported",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Status;

    #[test]
    fn index_matches_all() {
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
            assert!(s.line().contains(&s.code().to_string()));
        }
    }
}
