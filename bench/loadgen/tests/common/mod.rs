//! A tiny HTTP range server for the integration tests: serves the catalog pattern over
//! loopback, honest or with one byte flipped in every body.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::thread;

use edgeplane_load::pattern::Pattern;

pub(crate) const SIZE: u64 = 1 << 20;

/// Serves `GET /<name>` with `Range: bytes=a-b` from the pattern; `flip` flips one byte in the
/// middle of every body. One thread per connection.
pub(crate) fn serve(flip: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut out = stream;
                loop {
                    let (mut path, mut range) = (String::new(), None);
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some(rest) = l.strip_prefix("GET ") {
                            path = rest
                                .split(' ')
                                .next()
                                .unwrap()
                                .trim_start_matches('/')
                                .to_owned();
                        } else if let Some(r) = l.strip_prefix("Range: bytes=") {
                            let (a, b) = r.split_once('-').unwrap();
                            range = Some((a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()));
                        }
                    }
                    let (first, last) = range.unwrap();
                    let mut body = vec![0u8; (last - first + 1) as usize];
                    Pattern::for_name(&path).fill(first, &mut body);
                    if flip {
                        let mid = body.len() / 2;
                        body[mid] ^= 0x20;
                    }
                    let head = format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n\
                         Content-Range: bytes {first}-{last}/{SIZE}\r\n\r\n",
                        body.len()
                    );
                    if out.write_all(head.as_bytes()).is_err() || out.write_all(&body).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}
