//! Many generators as one: workers and a coordinator on loopback against the test range server.
//!
//! - two workers and a coordinator send exactly the requests one process sends at the same
//!   open-loop rate (same count, same bytes; latency is not compared: it is timing);
//! - a worker killed mid-run makes the report invalid, naming the worker;
//! - a worker and a coordinator of different protocol versions refuse each other.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

mod common;
use common::{serve, SIZE};
use edgeplane_load::remote::{serve as serve_worker, WorkerOptions, PROTOCOL_VERSION};
use edgeplane_load::{
    run, run_distributed, Config, Distributed, Live, Object, RangeClass, Target, Validation,
    Workload,
};

fn config(addr: SocketAddr, rate: f64, duration: Duration) -> Config {
    Config {
        target: Target::parse(&format!("http://{addr}")).unwrap(),
        threads: 2,
        cpus: Vec::new(),
        connections: 8,
        duration,
        rate: Some(rate),
        request_timeout: Duration::from_secs(5),
        workload: Workload::Ranges(vec![RangeClass {
            name: "hot".into(),
            weight: 1.0,
            objects: ["a.bin", "b.bin", "c.bin"]
                .iter()
                .map(|n| Object {
                    name: (*n).into(),
                    size: SIZE,
                })
                .collect(),
            zipf_s: 1.0,
            min_len: 4096,
            max_len: 65_536,
            align: 4096,
        }]),
        validation: Validation::Full,
        ca: None,
        sni: None,
        seed: 7,
        max_requests: None,
    }
}

/// An in-process worker serving one coordinator; returns its address.
fn worker_thread() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        serve_worker(
            listener,
            &WorkerOptions {
                threads: Some(1),
                cpus: Vec::new(),
            },
            true,
        )
        .unwrap()
    });
    addr
}

/// A worker process (the `edgeplane-load worker` binary); returns it and its address.
fn worker_process() -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgeplane-load"))
        .args([
            "worker",
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "1",
            "--once",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    (child, addr)
}

#[test]
fn two_workers_send_what_one_process_sends() {
    let server = serve(false);
    let cfg = config(server, 400.0, Duration::from_millis(1500));
    let one = run(&cfg, Arc::new(Live::default())).unwrap();
    let dist = Distributed {
        workers: vec![worker_thread(), worker_thread()],
        threads_per_worker: None,
        start_delay: None,
    };
    let mut lines = Vec::new();
    let two = run_distributed(&cfg, &dist, Arc::new(Live::default()), |l| {
        lines.push(l.to_owned())
    })
    .unwrap();
    assert!(two.valid, "{}", two.summary());
    assert_eq!(one.errors_total, 0, "{}", one.summary());
    assert_eq!(two.errors_total, 0, "{}", two.summary());
    // The open-loop schedule sends request i at i / rate: 600 requests are due in 1.5 s at 400/s,
    // whoever sends them; each connection keeps its random stream, so the ranges are the same.
    assert_eq!(one.requests, 600, "{}", one.summary());
    assert_eq!(two.requests, one.requests, "{}", two.summary());
    assert_eq!(two.body_bytes, one.body_bytes);
    assert_eq!(two.bytes, one.bytes);
    assert_eq!(two.connections, one.connections);
    assert_eq!(two.classes[0].requests, one.classes[0].requests);
    // Each worker drove half of the connections and sent its share; the shares add up.
    assert_eq!(two.workers.len(), 2);
    for w in &two.workers {
        assert!(w.finished, "{w:?}");
        assert_eq!(w.connections, 4, "{w:?}");
        assert_eq!(w.requests, 300, "{w:?}");
    }
    assert_eq!(two.workers.iter().map(|w| w.bytes).sum::<u64>(), two.bytes);
    let per_second: u64 = two.timeseries.iter().map(|s| s.requests).sum();
    assert!(per_second <= two.requests && per_second > 0);
    assert!(two.generator_cpu_s > 0.0);
    assert!(!lines.is_empty(), "no progress line");
    assert!(
        lines[0].contains("Gbps") && lines[0].contains("p99"),
        "{lines:?}"
    );
}

#[test]
fn a_killed_worker_invalidates_the_run() {
    let server = serve(false);
    let cfg = config(server, 200.0, Duration::from_secs(4));
    let (mut victim, victim_addr) = worker_process();
    let (mut survivor, survivor_addr) = worker_process();
    let pid = victim.id();
    let killer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(2000));
        victim.kill().unwrap();
        victim.wait().unwrap();
    });
    let dist = Distributed {
        workers: vec![victim_addr.clone(), survivor_addr.clone()],
        threads_per_worker: None,
        start_delay: None,
    };
    let report = run_distributed(&cfg, &dist, Arc::new(Live::default()), |_| {}).unwrap();
    killer.join().unwrap();
    assert!(survivor.wait().unwrap().success());
    assert!(
        !report.valid,
        "worker {pid} was killed: {}",
        report.summary()
    );
    assert_eq!(
        report.invalid_reasons.len(),
        1,
        "{:?}",
        report.invalid_reasons
    );
    assert!(
        report.invalid_reasons[0].contains(&victim_addr)
            && report.invalid_reasons[0].contains("lost"),
        "{:?}",
        report.invalid_reasons
    );
    assert!(report.summary().contains("INVALID"));
    let (lost, done) = (&report.workers[0], &report.workers[1]);
    assert!(!lost.finished && done.finished, "{:?}", report.workers);
    // The totals hold the survivor's counts only.
    assert_eq!(report.requests, done.requests);
    assert!(done.requests > 0);
}

#[test]
fn a_worker_of_another_version_is_refused() {
    // Coordinator of another version → worker: one refusal line, then the worker hangs up.
    let addr = worker_thread();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(
        format!(
            "{{\"hello\":{{\"protocol\":{},\"software\":\"9.9.9\"}}}}\n",
            PROTOCOL_VERSION + 1
        )
        .as_bytes(),
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("{\"refused\"") && line.contains("version mismatch"),
        "{line}"
    );
    line.clear();
    assert_eq!(
        reader.read_line(&mut line).unwrap(),
        0,
        "then closed: {line}"
    );

    // Worker of another version → the coordinator stops before sending any load.
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_addr = fake.local_addr().unwrap().to_string();
    thread::spawn(move || {
        let (s, _) = fake.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut hello = String::new();
        r.read_line(&mut hello).unwrap();
        let mut w = s;
        w.write_all(
            format!(
                "{{\"hello\":{{\"protocol\":{},\"software\":\"9.9.9\"}}}}\n",
                PROTOCOL_VERSION + 1
            )
            .as_bytes(),
        )
        .unwrap();
    });
    let cfg = config(serve(false), 100.0, Duration::from_millis(500));
    let dist = Distributed {
        workers: vec![fake_addr.clone()],
        threads_per_worker: None,
        start_delay: None,
    };
    let err = run_distributed(&cfg, &dist, Arc::new(Live::default()), |_| {}).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&fake_addr) && msg.contains("version mismatch"),
        "{msg}"
    );
}
