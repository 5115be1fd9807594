//! The line `edgeplane serve` prints on stderr once it accepts connections:
//! `ready http=IP:PORT admin=IP:PORT [https=IP:PORT] [cores=N]`.

use std::net::SocketAddr;

/// The addresses and core count from a ready line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    /// `http=`: the HTTP listener.
    pub http: SocketAddr,
    /// `admin=`: the admin listener (`/metrics`, `/reload`, …).
    pub admin: SocketAddr,
    /// `https=`: the HTTPS listener, when the server has one.
    pub https: Option<SocketAddr>,
    /// `cores=`, if it was there.
    pub cores: Option<u32>,
}

/// Parses a line containing `ready http=IP:PORT admin=IP:PORT [https=IP:PORT] [cores=N]`,
/// tolerating a log prefix, ANSI colours and quoted values; `None` for any other line, or when
/// `http=` or `admin=` is missing or not an address.
pub fn parse_ready(line: &str) -> Option<Ready> {
    let line = strip_ansi(line);
    let rest = &line[line.find("ready")? + "ready".len()..];
    let (mut http, mut admin, mut https, mut cores) = (None, None, None, None);
    for token in rest.split_whitespace() {
        let Some((key, value)) = token.split_once('=') else {
            continue;
        };
        let value = value.trim_matches(|c| c == '"' || c == ',' || c == ';');
        match key {
            "http" => http = value.parse().ok(),
            "admin" => admin = value.parse().ok(),
            "https" => https = value.parse().ok(),
            "cores" => cores = value.parse().ok(),
            _ => {}
        }
    }
    Some(Ready {
        http: http?,
        admin: admin?,
        https,
        cores,
    })
}

/// Removes ANSI escape sequences (CSI `ESC [ … final`, and any other `ESC x`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_variants() {
        let r = parse_ready("ready http=127.0.0.1:41234 admin=127.0.0.1:41235 cores=2").unwrap();
        assert_eq!(r.http.port(), 41234);
        assert_eq!(r.admin.port(), 41235);
        assert_eq!(r.cores, Some(2));
        let line = strip_ansi(
            "2026 \x1b[32mINFO\x1b[0m edgeplane: ready http=\"127.0.0.1:1\" admin=127.0.0.1:2",
        );
        assert_eq!(parse_ready(&line).unwrap().admin.port(), 2);
        assert!(parse_ready("listening http=127.0.0.1:1 admin=127.0.0.1:2").is_none());
        assert!(parse_ready("ready http=127.0.0.1:1").is_none());
    }

    #[test]
    fn ready_line_plain() {
        let r = parse_ready("ready http=127.0.0.1:41234 admin=127.0.0.1:41235 cores=2").unwrap();
        assert_eq!(r.http, "127.0.0.1:41234".parse().unwrap());
        assert_eq!(r.admin, "127.0.0.1:41235".parse().unwrap());
        assert_eq!(r.https, None);
        assert_eq!(r.cores, Some(2));
    }

    #[test]
    fn ready_line_in_a_log_line() {
        let line = "2026-01-01T00:00:00Z  INFO edgeplane: \x1b[3mready\x1b[0m \
                    http=\"[::1]:8080\" \x1b[2madmin\x1b[0m=127.0.0.1:9090";
        let r = parse_ready(line).unwrap();
        assert_eq!(r.http, "[::1]:8080".parse().unwrap());
        assert_eq!(r.admin.port(), 9090);
        assert_eq!(r.cores, None);
    }

    #[test]
    fn ready_line_with_https() {
        let r = parse_ready("ready http=127.0.0.1:1 admin=127.0.0.1:2 https=127.0.0.1:3 cores=1")
            .unwrap();
        assert_eq!(r.https, Some("127.0.0.1:3".parse().unwrap()));
    }

    #[test]
    fn not_a_ready_line() {
        assert_eq!(parse_ready("listening http=127.0.0.1:1"), None);
        assert_eq!(parse_ready("ready http=127.0.0.1:1"), None);
        assert_eq!(parse_ready("ready http=nonsense admin=127.0.0.1:2"), None);
    }

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(strip_ansi("\x1b[32m INFO\x1b[0m x"), " INFO x");
    }
}
