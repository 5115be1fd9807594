//! A bad config makes `edgeplane serve` exit quickly with code 2 and exactly one stderr line
//! `edgeplane: config error: <key>: <what>`: no panic, no backtrace.

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use edgeplane_test_support::prelude::*;

/// The binary under test (Cargo builds it for these tests).
const BIN: &str = env!("CARGO_BIN_EXE_edgeplane");

const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

fn good_config(tier_path: &Path) -> String {
    format!(
        "cores = 1\n[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [signing]\nenabled = false\n\
         [[tier]]\nname = \"flash\"\nkind = \"flash\"\npath = \"{}\"\n",
        tier_path.display()
    )
}

/// Runs `serve` with `config` and returns stderr, after the common checks.
#[track_caller]
fn expect_config_error(config: &str, must_contain: &[&str]) -> String {
    let dir = temp_dir();
    let path = dir.path().join("edgeplane.toml");
    fs::write(&path, config).unwrap();
    expect_config_error_for(&path, must_contain, config)
}

#[track_caller]
fn expect_config_error_for(path: &Path, must_contain: &[&str], shown: &str) -> String {
    let (status, stdout, stderr) = run_to_exit(
        BIN,
        &["serve", "--config", path.to_str().unwrap()],
        EXIT_TIMEOUT,
    );
    let context =
        format!("config:\n{shown}\nstatus: {status}\nstdout: {stdout:?}\nstderr: {stderr:?}");
    assert_eq!(status.code(), Some(2), "want exit code 2; {context}");
    assert_no_panic(&stderr, &context);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want exactly one stderr line; {context}");
    let line = lines[0];
    assert!(
        line.starts_with("edgeplane: config error: "),
        "the line must start with `edgeplane: config error: `; {context}"
    );
    for needle in must_contain {
        assert!(
            line.contains(needle),
            "the error line should name {needle:?}; {context}"
        );
    }
    assert!(
        !stdout.contains("ready"),
        "a failed start must not print a ready line; {context}"
    );
    line.to_owned()
}

#[track_caller]
fn assert_no_panic(stderr: &str, context: &str) {
    for bad in [
        "panicked",
        "stack backtrace",
        "RUST_BACKTRACE",
        "thread 'main'",
    ] {
        assert!(!stderr.contains(bad), "stderr contains {bad:?}; {context}");
    }
}

#[test]
fn the_good_config_used_below_starts() {
    // Guards the other tests: their configs differ from this one in one thing only.
    let dir = temp_dir();
    let tier = dir.path().join("flash");
    fs::create_dir(&tier).unwrap();
    let path = dir.path().join("edgeplane.toml");
    fs::write(&path, good_config(&tier)).unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--config", path.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let ready = loop {
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) if parse_ready(&strip_ansi(&line)).is_some() => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "the baseline config did not start; stderr: {seen:?}");
}

#[test]
fn missing_tier_path() {
    let dir = temp_dir();
    let missing = dir.path().join("no-such-dir");
    let line = expect_config_error(&good_config(&missing), &["tier"]);
    assert!(
        line.contains(missing.to_str().unwrap()),
        "the error should name the missing path {missing:?}: {line:?}"
    );
}

#[test]
fn tier_path_is_a_file() {
    let dir = temp_dir();
    let file = dir.path().join("a-file");
    fs::write(&file, b"x").unwrap();
    let line = expect_config_error(&good_config(&file), &["tier"]);
    assert!(line.contains(file.to_str().unwrap()), "{line:?}");
}

#[test]
fn unknown_tier_kind() {
    let dir = temp_dir();
    let config = good_config(dir.path()).replace("kind = \"flash\"", "kind = \"tape\"");
    expect_config_error(&config, &["kind"]);
}

#[test]
fn bad_toml() {
    let dir = temp_dir();
    for (name, config) in [
        (
            "unclosed array",
            format!("{}\ncores = [\n", good_config(dir.path())),
        ),
        ("garbage", "this is = = not toml\n[[[\n".to_owned()),
        (
            "unterminated string",
            good_config(dir.path()).replace(
                "listen = \"127.0.0.1:0\"\n[admin]",
                "listen = \"127.0.0.1:0\n[admin]",
            ),
        ),
    ] {
        let line = expect_config_error(&config, &[]);
        assert!(
            line.len() > "edgeplane: config error: ".len(),
            "{name}: {line:?}"
        );
    }
}

#[test]
fn missing_config_file() {
    let dir = temp_dir();
    let path = dir.path().join("does-not-exist.toml");
    let line = expect_config_error_for(&path, &[], "(no such file)");
    assert!(
        line.contains(path.to_str().unwrap()),
        "the error should name the config path: {line:?}"
    );
}

#[test]
fn wrongly_typed_value() {
    let dir = temp_dir();
    let config = format!(
        "{}\n[limits]\nmax_headers = \"lots\"\n",
        good_config(dir.path())
    );
    expect_config_error(&config, &["max_headers"]);
}

#[test]
fn negative_limit() {
    let dir = temp_dir();
    let config = format!(
        "{}\n[limits]\nmax_header_bytes = -1\n",
        good_config(dir.path())
    );
    expect_config_error(&config, &["max_header_bytes"]);
}

#[test]
fn bad_listen_address() {
    let dir = temp_dir();
    let config = good_config(dir.path()).replacen(
        "listen = \"127.0.0.1:0\"",
        "listen = \"not-an-address\"",
        1,
    );
    expect_config_error(&config, &["listen"]);
}

#[test]
fn tier_without_path() {
    let dir = temp_dir();
    let config = good_config(dir.path());
    let config: String = config
        .lines()
        .filter(|l| !l.starts_with("path ="))
        .map(|l| format!("{l}\n"))
        .collect();
    expect_config_error(&config, &["path"]);
}

/// Not a config error, but the same rule of conduct: a port that is taken makes the server
/// exit non-zero with an `edgeplane:` line that names the address, without panicking.
#[test]
fn port_in_use() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = temp_dir();
    let config = good_config(dir.path()).replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{addr}\""),
        1,
    );
    let path = dir.path().join("edgeplane.toml");
    fs::write(&path, &config).unwrap();
    let (status, _stdout, stderr) = run_to_exit(
        BIN,
        &["serve", "--config", path.to_str().unwrap()],
        EXIT_TIMEOUT,
    );
    let context = format!("status {status}, stderr {stderr:?}");
    assert!(!status.success(), "{context}");
    assert!(status.code().is_some(), "killed by a signal? {context}");
    assert_no_panic(&stderr, &context);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("edgeplane:") && l.contains(&addr.port().to_string())),
        "want an `edgeplane:` line naming {addr}; {context}"
    );
    drop(taken);
}

#[test]
fn command_line_errors_do_not_panic() {
    for args in [
        vec![],
        vec!["serve"],
        vec!["frobnicate"],
        vec!["serve", "--config"],
    ] {
        let (status, _out, err) = run_to_exit(BIN, &args, EXIT_TIMEOUT);
        let context = format!("edgeplane {args:?}: status {status}, stderr {err:?}");
        assert!(!status.success(), "{context}");
        assert!(status.code().is_some(), "{context}");
        assert_no_panic(&err, &context);
    }
}

/// Too little lockable memory for glommio's io_uring buffers: exit non-zero with one line that
/// says which limit and what to change, before any executor starts (run under `prlimit`, which
/// may lower a limit without privileges).
#[test]
fn too_little_locked_memory() {
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP too_little_locked_memory: prlimit (util-linux) is not installed");
        return;
    }
    let dir = temp_dir();
    let config = good_config(dir.path()).replacen("cores = 1", "cores = 2", 1);
    let path = dir.path().join("edgeplane.toml");
    fs::write(&path, &config).unwrap();
    let out = std::process::Command::new("prlimit")
        .args(["--memlock=200000:200000", BIN, "serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!("status {}, stderr {stderr:?}", out.status);
    assert_eq!(out.status.code(), Some(1), "{context}");
    assert_no_panic(&stderr, &context);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("edgeplane: RLIMIT_MEMLOCK"))
        .unwrap_or_else(|| panic!("no RLIMIT_MEMLOCK line; {context}"));
    for needle in ["195 KiB", "2 executors", "LimitMEMLOCK=", "cores"] {
        assert!(
            line.contains(needle),
            "the line should say {needle:?}: {line}"
        );
    }
    assert!(!stderr.contains("ready http="), "{context}");
}
