//! Body validation end to end: a tiny HTTP server serving the catalog pattern, honest or with
//! one byte flipped in every response. The generator must count the flipped bodies as content
//! errors, and nothing else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::{serve, SIZE};
use edgeplane_load::{run, Config, Live, Object, RangeClass, Target, Validation, Workload};

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
