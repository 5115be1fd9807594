//! `edgeplane cloud serve` through the CLI entry point: it serves, and exits 0 on SIGTERM.
//! Its own test binary, since it signals its own process.

use std::net::TcpListener;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use clap::Parser;
use edgeplane_control::cloud::cli::{main as cloud_main, CloudArgs};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    cloud: CloudArgs,
}

#[test]
fn serve_until_sigterm() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("edgeplane-cloud-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("cloud.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nadmin_token = \"a\"\nstate_dir = \"{}\"\n[origin]\nendpoint = \"http://127.0.0.1:9\"\nbucket = \"b\"\nallow_http = true\naccess_key_id = \"t\"\nsecret_access_key = \"t\"\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    let args = Cli::try_parse_from(["x", "serve", "--config", config.to_str().unwrap()])
        .unwrap()
        .cloud;
    let server = std::thread::spawn(move || cloud_main(args));

    // Wait for /healthz.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{port}/healthz")])
            .output()
            .expect("curl");
        if out.status.success() {
            assert_eq!(out.stdout, b"ok\n");
            break;
        }
        assert!(Instant::now() < deadline, "serve did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(server.join().unwrap(), ExitCode::SUCCESS);
    // The default store: SQLite in state_dir.
    assert!(dir.join("state/control.db").is_file());

    // A bad config fails with exit 1.
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nadmin_tokn = \"a\"\n").unwrap();
    let args = Cli::try_parse_from(["x", "serve", "--config", config.to_str().unwrap()])
        .unwrap()
        .cloud;
    assert_eq!(cloud_main(args), ExitCode::FAILURE);
    std::fs::remove_dir_all(&dir).unwrap();
}
