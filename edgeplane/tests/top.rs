//! `edgeplane top` in a real terminal: run in a tmux pane against a running data plane, its
//! screen shows the traffic driven at it; `q` quits with status 0.
//!
//! Needs tmux (scripts/setup.sh installs it); a missing tmux fails the test.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeplane_test_support::prelude::*;

/// The binary under test (Cargo builds it for these tests).
const BIN: &str = env!("CARGO_BIN_EXE_edgeplane");

struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "top"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn alive(&self) -> bool {
        self.cmd()
            .args(["has-session", "-t", "top"])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

/// Polls the pane until `pred` holds; panics with the last screen.
fn wait_screen(tmux: &Tmux, what: &str, mut pred: impl FnMut(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let screen = tmux.screen();
        if pred(&screen) {
            return screen;
        }
        assert!(
            Instant::now() < deadline,
            "edgeplane top: {what}; screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The number before ` req/s` on the Traffic line.
fn req_per_s(screen: &str) -> Option<f64> {
    let line = screen.lines().find(|l| l.starts_with("Traffic"))?;
    let before = line.split(" req/s").next()?;
    before.split_whitespace().last()?.parse().ok()
}

#[test]
fn top_shows_live_traffic_in_tmux_and_quits_on_q() {
    let server = ServerBuilder::new(BIN)
        .tier("hdd", "storage")
        .file("hdd", "tail.bin", &[7u8; 5000])
        .start();
    for _ in 0..5 {
        assert_eq!(server.get("/missing.bin", &[]).status, 404);
    }
    let dir = temp_dir();
    let status_file = dir.path().join("exit");
    let tmux = Tmux {
        socket: format!("edgeplane-test-{}", std::process::id()),
    };
    let script = format!(
        "{BIN} top --admin {} --interval-ms 250; echo exit=$? > {}",
        server.admin,
        status_file.display()
    );
    let out = tmux
        .cmd()
        .args(["new-session", "-d", "-s", "top", "-x", "160", "-y", "50"])
        .arg(&script)
        .env("TERM", "xterm-256color")
        .output()
        .expect("tmux (run scripts/setup.sh)");
    assert!(
        out.status.success(),
        "tmux new-session: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let screen = wait_screen(&tmux, "the first frame", |s| s.contains("edgeplane top"));
    assert!(
        screen.contains(&format!("admin {}", server.admin)),
        "{screen}"
    );
    assert!(screen.contains("serving"), "{screen}");

    // Traffic while top watches: requests per second appear.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let url = server.url(&format!("/{CANARY}"));
        std::thread::spawn(move || {
            let agent = ureq::AgentBuilder::new().build();
            while !stop.load(Ordering::Relaxed) {
                let _ = agent.get(&url).call().map(|r| r.into_string());
            }
        })
    };
    let screen = wait_screen(&tmux, "requests per second under load", |s| {
        req_per_s(s).is_some_and(|r| r > 1.0)
    });
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    // The tiers, with their objects; the 404s in the totals; no XDP, no agent.
    let flash = screen
        .lines()
        .find(|l| l.starts_with("flash "))
        .unwrap_or_else(|| panic!("no flash tier row:\n{screen}"));
    assert_eq!(
        flash.split_whitespace().take(5).collect::<Vec<_>>(),
        [
            "flash",
            "flash",
            "up",
            flash.split_whitespace().nth(3).unwrap(),
            "1"
        ],
        "{flash}"
    );
    let hdd = screen
        .lines()
        .find(|l| l.starts_with("hdd "))
        .unwrap_or_else(|| panic!("no hdd tier row:\n{screen}"));
    assert!(hdd.contains("storage  up"), "{hdd}");
    assert!(hdd.contains("5.0 KB"), "{hdd}");
    assert!(screen.contains("Totals    4xx 5  5xx 0"), "{screen}");
    assert!(screen.contains("Signing   OFF"), "{screen}");
    assert!(screen.contains("XDP       not configured"), "{screen}");
    assert!(screen.contains("Fill      no agent"), "{screen}");

    // Once the load stops, the rate falls back to zero.
    wait_screen(&tmux, "req/s back to 0", |s| req_per_s(s) == Some(0.0));

    let sent = tmux
        .cmd()
        .args(["send-keys", "-t", "top", "q"])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux.alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!tmux.alive(), "still running after q:\n{}", tmux.screen());
    let status = std::fs::read_to_string(&status_file).unwrap_or_default();
    assert_eq!(status.trim(), "exit=0");
}

/// An unreachable data plane is shown as such, not a crash.
#[test]
fn top_says_when_the_data_plane_is_unreachable() {
    let tmux = Tmux {
        socket: format!("edgeplane-test-{}-down", std::process::id()),
    };
    let out = tmux
        .cmd()
        .args(["new-session", "-d", "-s", "top", "-x", "160", "-y", "50"])
        .arg(format!("{BIN} top --admin 127.0.0.1:1 --interval-ms 200"))
        .output()
        .expect("tmux (run scripts/setup.sh)");
    assert!(out.status.success());
    let screen = wait_screen(&tmux, "the unreachable state", |s| {
        s.contains("UNREACHABLE")
    });
    assert!(
        screen.contains("error: http://127.0.0.1:1/metrics:"),
        "{screen}"
    );
    let _ = tmux.cmd().args(["send-keys", "-t", "top", "q"]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux.alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!tmux.alive(), "still running after q");
}
