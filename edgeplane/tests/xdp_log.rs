//! aya-log from the eBPF programs: with the `edgeplane_ebpf` target enabled at debug, a
//! malformed frame produces a debug line that reaches the process's logger; with it off the
//! level compiled into the program is 0 and nothing is formatted at all.
//!
//! Its own test binary: it installs a global `tracing` subscriber and a global `log` logger.
//! Needs root (CAP_BPF); skips otherwise.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgeplane_xdp::frame::{tcp_flags, Frame};
use edgeplane_xdp::{Counter, FilterSettings, LoadOptions};
use tracing_subscriber::layer::SubscriberExt as _;

struct Capture(Arc<Mutex<Vec<String>>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{} {}: {}", record.level(), record.target(), record.args());
        self.0.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

#[test]
fn ebpf_debug_lines_reach_the_log() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    log::set_boxed_logger(Box::new(Capture(lines.clone()))).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let subscriber = tracing_subscriber::registry().with(tracing_subscriber::EnvFilter::new(
        "off,edgeplane_ebpf=debug",
    ));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let Some(mut filter) = edgeplane_test_support::xdp::load(
        "ebpf_debug_lines_reach_the_log",
        &LoadOptions::default(),
    ) else {
        return;
    };
    filter
        .configure(&FilterSettings {
            enforce: true,
            serving_ports: vec![80],
            ..FilterSettings::default()
        })
        .unwrap();
    let mut frame = Frame::tcp(
        "192.0.2.1".parse().unwrap(),
        1,
        "192.0.2.2".parse().unwrap(),
        80,
        tcp_flags::SYN,
    )
    .build();
    frame.truncate(30);
    let run = filter.test_run(&frame, 1).unwrap();
    assert_eq!(
        run.action, 1,
        "a malformed frame is dropped in enforce mode"
    );
    assert_eq!(
        filter.counters().read().unwrap()[Counter::MalformedDropped as usize],
        1
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("malformed frame of 30 bytes"));
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no aya-log line arrived: {:?}",
            lines.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let all = lines.lock().unwrap().clone();
    let line = all
        .iter()
        .find(|l| l.contains("malformed frame of 30 bytes"))
        .unwrap();
    assert!(line.starts_with("DEBUG edgeplane_ebpf"), "{line}");
}
