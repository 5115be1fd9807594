//! Body validation end to end: a tiny HTTP server serving the catalog pattern, honest or with
//! one byte flipped in every response. The generator must count the flipped bodies as content
//! errors, and nothing else.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use edgeplane_load::pattern::Pattern;
use edgeplane_load::{run, Config, Live, Object, RangeClass, Target, Validation, Workload};

const SIZE: u64 = 1 << 20;

/// Serves `GET /<name>` with `Range: bytes=a-b` from the pattern; `flip` flips one byte in the
/// middle of every body. One thread per connection.
fn serve(flip: bool) -> SocketAddr {
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

fn config(addr: SocketAddr, validation: Validation) -> Config {
    Config {
        target: Target::parse(&format!("http://{addr}")).unwrap(),
        threads: 2,
        cpus: Vec::new(),
        connections: 4,
        duration: Duration::from_millis(700),
        rate: None,
        request_timeout: Duration::from_secs(5),
        workload: Workload::Ranges(vec![RangeClass {
            name: "hot".into(),
            weight: 1.0,
            objects: vec![
                Object {
                    name: "a.bin".into(),
                    size: SIZE,
                },
                Object {
                    name: "b.bin".into(),
                    size: SIZE,
                },
            ],
            zipf_s: 0.0,
            min_len: 4096,
            max_len: 65_536,
            align: 1,
        }]),
        validation,
        ca: None,
        sni: None,
        seed: 3,
        max_requests: None,
    }
}

#[test]
fn honest_server_has_no_errors() {
    let report = run(
        &config(serve(false), Validation::Full),
        Arc::new(Live::default()),
    )
    .unwrap();
    assert!(report.requests > 10, "{}", report.summary());
    assert_eq!(report.errors_total, 0, "{}", report.summary());
    assert!(report.body_bytes >= report.requests * 4096);
}

#[test]
fn one_flipped_byte_is_a_content_error() {
    let live = Arc::new(Live::default());
    let report = run(&config(serve(true), Validation::Full), Arc::clone(&live)).unwrap();
    assert_eq!(report.requests, 0, "{}", report.summary());
    assert!(
        report.errors["content"].as_u64().unwrap() > 10,
        "{}",
        report.summary()
    );
    assert_eq!(
        report.errors_total,
        report.errors["content"].as_u64().unwrap()
    );
    // Length-only validation does not look at the bytes: the same server passes.
    let report = run(&config(serve(true), Validation::Length), live).unwrap();
    assert!(
        report.requests > 10 && report.errors_total == 0,
        "{}",
        report.summary()
    );
}
