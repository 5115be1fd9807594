//! Operating a running data plane: SIGHUP/`POST /reload` re-read the config file, `edgeplane
//! drain` stops it gracefully, `[process] user` drops root after start-up.

use std::io::Read;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use edgeplane_test_support::prelude::*;
use edgeplane_test_support::xdp::{is_root, skip};

/// The binary under test (Cargo builds it for these tests).
const BIN: &str = env!("CARGO_BIN_EXE_edgeplane");

fn config_path(server: &Server) -> std::path::PathBuf {
    server.root().join("edgeplane.toml")
}

/// `POST /reload` on the admin listener: status and body.
fn post_reload(server: &Server) -> (u16, String) {
    let r = server.post_reload();
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

fn cors_header(server: &Server) -> Option<String> {
    server
        .get(
            &format!("/{CANARY}"),
            &[("Origin", "https://player.example")],
        )
        .header("access-control-allow-origin")
        .map(str::to_owned)
}

/// SIGHUP re-reads the config: live keys apply (cors, a new tier, a timeout), keys that need a
/// restart keep their running value with one line each; a bad file keeps the running config
/// and `POST /reload` answers 500 naming the key.
#[test]
fn sighup_rereads_the_config_file() {
    let server = ServerBuilder::new(BIN).start();
    assert_eq!(cors_header(&server).as_deref(), Some("*"));
    let path = config_path(&server);
    let original = std::fs::read_to_string(&path).unwrap();

    // A tier added at the end, CORS off, and a listener change that needs a restart.
    let extra = server.root().join("tier-extra");
    std::fs::create_dir_all(&extra).unwrap();
    write_file(&extra.join("added.bin"), b"from the added tier");
    let mut text = original.replace(
        "[http]\nlisten = \"127.0.0.1:0\"\n",
        "[http]\nlisten = \"127.0.0.1:1\"\ncors = false\n",
    );
    assert_ne!(text, original, "the harness's [http] section changed shape");
    text.push_str(&format!(
        "\n[[tier]]\nname = \"extra\"\nkind = \"storage\"\npath = \"{}\"\n",
        extra.display()
    ));
    std::fs::write(&path, &text).unwrap();
    server.signal("HUP");
    poll("CORS to be turned off by SIGHUP", || {
        cors_header(&server).is_none().then_some(())
    });
    // The config is swapped in before the rescan of the new tier list finishes: poll.
    let r = poll("the object on the tier added by reload", || {
        let r = server.get("/added.bin", &[]);
        (r.status == 200).then_some(r)
    });
    assert_eq!(r.body, b"from the added tier");
    poll("the restart line", || {
        server
            .output()
            .contains("http.listen changed: restart to apply")
            .then_some(())
    });
    // Still listening where it started.
    server.assert_serving("after a reload that changed http.listen");
    let m = server.metrics();
    assert_eq!(
        m.sum(
            "edgeplane_tier_up",
            &[("tier", "extra"), ("kind", "storage")]
        ),
        1.0
    );
    assert_eq!(
        m.sum("edgeplane_config_reloads_total", &[("result", "ok")]),
        1.0
    );

    // POST /reload says the same.
    let (status, body) = post_reload(&server);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("config: reloaded\n"), "{body}");
    assert!(
        body.contains("config: http.listen changed: restart to apply\n"),
        "{body}"
    );

    // A bad file: the running config stays, 500 naming the key.
    let bad = text.replace(&extra.display().to_string(), "/nonexistent/edgeplane-tier");
    std::fs::write(&path, &bad).unwrap();
    let (status, body) = post_reload(&server);
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("config: NOT reloaded, the running config stays in effect: config error: tier[1].path: /nonexistent/edgeplane-tier: does not exist"),
        "{body}"
    );
    assert_eq!(server.get("/added.bin", &[]).status, 200);
    assert!(cors_header(&server).is_none());
    let m = server.metrics();
    assert_eq!(
        m.sum("edgeplane_config_reloads_total", &[("result", "failed")]),
        1.0
    );
    assert!(server.output().contains(
        "config not reloaded, the running config stays in effect: config error: tier[1].path"
    ));

    // Back to the original: CORS on again, the added tier gone.
    std::fs::write(&path, &original).unwrap();
    let (status, body) = post_reload(&server);
    assert_eq!(status, 200, "{body}");
    assert_eq!(cors_header(&server).as_deref(), Some("*"));
    assert_eq!(server.get("/added.bin", &[]).status, 404);
}

/// `POST /reload?rescan=0` (the agent's, for new signing keys or prefixes) applies the config
/// without rebuilding the catalog, unless the reload changed the tiers; a plain `POST /reload`
/// and SIGHUP still rescan.
#[test]
fn reload_without_rescan_keeps_the_catalog_unless_the_tiers_change() {
    let server = ServerBuilder::new(BIN).start();
    let path = config_path(&server);
    let original = std::fs::read_to_string(&path).unwrap();
    let generation = |s: &Server| s.metrics().sum("edgeplane_catalog_generation", &[]);
    let admin = |p: &str| {
        let r = server.admin_post(p);
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    };
    let g0 = generation(&server);

    // A live key changes (CORS off); the catalog is not rebuilt.
    let text = original.replace(
        "[http]\nlisten = \"127.0.0.1:0\"\n",
        "[http]\nlisten = \"127.0.0.1:0\"\ncors = false\n",
    );
    assert_ne!(text, original, "the harness's [http] section changed shape");
    std::fs::write(&path, &text).unwrap();
    let (status, body) = admin("/reload?rescan=0");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("config: reloaded\n"), "{body}");
    assert!(
        body.contains(&format!(
            "catalog: not rescanned (tiers unchanged), generation {g0} with 1 objects\n"
        )),
        "{body}"
    );
    assert!(cors_header(&server).is_none(), "the live key applied");
    assert_eq!(generation(&server), g0);
    // The tier watch keeps the catalog current meanwhile.
    let dir = server.tier_dir("flash");
    write_file(&dir.join("watched.bin"), b"seen by the watch");
    poll("the watch to serve a new file", || {
        (server.get("/watched.bin", &[]).status == 200).then_some(())
    });
    assert_eq!(generation(&server), g0);

    // A tier added: rescanned, even with rescan=0.
    let extra = server.root().join("tier-extra");
    std::fs::create_dir_all(&extra).unwrap();
    write_file(&extra.join("added.bin"), b"from the added tier");
    let with_tier = format!(
        "{text}\n[[tier]]\nname = \"extra\"\nkind = \"storage\"\npath = \"{}\"\n",
        extra.display()
    );
    std::fs::write(&path, &with_tier).unwrap();
    let (status, body) = admin("/reload?rescan=0");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("reloaded: generation"), "{body}");
    assert!(generation(&server) > g0);
    assert_eq!(server.get("/added.bin", &[]).body, b"from the added tier");

    // A plain reload always rescans; so does rescan=1.
    for p in ["/reload", "/reload?rescan=1"] {
        let g = generation(&server);
        let (status, body) = admin(p);
        assert_eq!(status, 200, "{p}: {body}");
        assert!(body.contains("reloaded: generation"), "{p}: {body}");
        assert_eq!(generation(&server), g + 1.0, "{p}");
    }
    // Anything else is refused and changes nothing.
    let g = generation(&server);
    for bad in ["/reload?rescan=no", "/reload?scan=0"] {
        let (status, body) = admin(bad);
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("rescan=0 or rescan=1") || body.contains("must be 0 or 1"));
    }
    assert_eq!(generation(&server), g);
}

/// A limit changed by reload applies to new connections without a restart.
#[test]
fn reload_applies_new_limits() {
    let server = ServerBuilder::new(BIN).start();
    let path = config_path(&server);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text = text.replace("\n[[tier]]", "\n[limits]\nmax_uri_bytes = 64\n\n[[tier]]");
    std::fs::write(&path, &text).unwrap();
    let long = format!("/{}", "a".repeat(100));
    assert_eq!(server.get(&long, &[]).status, 404);
    let (status, body) = post_reload(&server);
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.get(&long, &[]).status, 414);
}

/// `edgeplane drain` with a slow reader mid-response: the response completes byte-exact, new
/// connections are refused, `/metrics` says draining, and the process exits 0 (so does the
/// command, once it has).
#[test]
fn drain_finishes_in_flight_responses_and_exits_zero() {
    const LEN: usize = 24 << 20;
    let data = pattern("drain.mp4", LEN);
    let mut server = ServerBuilder::new(BIN)
        .file("flash", "drain.mp4", &data)
        .start();
    let mut conn = server.connect();
    conn.send(request_head("GET", "/drain.mp4", &[]).as_bytes());
    let head = conn.read_head();
    assert!(head.starts_with("HTTP/1.1 200"), "{head:?}");
    let mut body = vec![0u8; 4096];
    conn.reader.read_exact(&mut body).unwrap();

    let drain = Command::new(BIN)
        .args(["drain", "--admin", &server.admin.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run edgeplane drain");

    server.wait_metrics("edgeplane_draining 1", |m| {
        m.sum("edgeplane_draining", &[]) == 1.0
    });
    assert_eq!(server.admin_get("/healthz").status, 503);
    poll(
        "new connections to be refused during the drain",
        || match TcpStream::connect_timeout(&server.http, Duration::from_secs(1)) {
            Err(_) => Some(()),
            Ok(_) => None,
        },
    );
    assert!(
        server.is_running(),
        "exited before the in-flight response was read"
    );
    // The slow reader takes its time.
    std::thread::sleep(Duration::from_millis(300));
    let mut rest = Vec::new();
    conn.reader.read_to_end(&mut rest).unwrap();
    body.extend_from_slice(&rest);
    assert_eq!(body.len(), LEN, "in-flight body cut short by the drain");
    assert_eq!(sha256_hex(&body), sha256_hex(&data));

    let status = server.wait_exit(Duration::from_secs(15));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit after drain; output:\n{}",
        server.output()
    );
    let out = drain.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "edgeplane drain: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("draining: no new connections"),
        "{stdout}"
    );
    assert!(stdout.contains("edgeplane: drained"), "{stdout}");
}

/// `edgeplane drain` against nothing: one line saying what it tried.
#[test]
fn drain_without_a_data_plane_says_so() {
    let out = Command::new(BIN)
        .args(["drain", "--admin", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("edgeplane: asking the data plane at http://127.0.0.1:1/drain:")
            && err.contains("is `edgeplane serve` running?"),
        "{err}"
    );
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `[process] user = "nobody"`: started as root, the server switches user and group, keeps no
/// capability, and still serves (files are opened after the switch), reloads and drains.
#[test]
fn serve_drops_root_to_process_user() {
    if !is_root() {
        skip("serve_drops_root_to_process_user", "needs root");
        return;
    }
    let builder = ServerBuilder::new(BIN).section("[process]\nuser = \"nobody\"\n");
    // The scratch directory is 0700; the user must reach the tiers and the config.
    use std::os::unix::fs::PermissionsExt;
    let mut dir = builder.root().to_path_buf();
    loop {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode | 0o755)).unwrap();
        if !dir.pop() || dir.as_os_str().len() <= 1 {
            break;
        }
    }
    let tier = builder.tier_dir("flash");
    for entry in std::fs::read_dir(&tier).unwrap() {
        let p = entry.unwrap().path();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut server = builder.start();
    let pid = server.pid();
    assert_eq!(status_field(pid, "Uid"), "65534 65534 65534 65534");
    assert_eq!(status_field(pid, "Gid").split(' ').next(), Some("65534"));
    assert_eq!(status_field(pid, "Groups"), "65534");
    for caps in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(status_field(pid, caps), "0000000000000000", "{caps}");
    }
    // Every thread, not only the main one.
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid = task.unwrap().file_name();
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/task/{}/status", tid.to_string_lossy()))
                .unwrap_or_default();
        if status.is_empty() {
            continue;
        }
        assert!(
            status.contains("Uid:\t65534\t65534\t65534\t65534"),
            "thread {tid:?}: {status}"
        );
        assert!(
            status.contains("CapEff:\t0000000000000000"),
            "thread {tid:?}"
        );
    }
    assert!(
        server.output().contains("dropped root"),
        "{}",
        server.output()
    );
    server.assert_serving("after dropping root");
    let (status, body) = post_reload(&server);
    assert_eq!(status, 200, "{body}");
    server.signal("TERM");
    assert_eq!(
        server
            .wait_exit(Duration::from_secs(15))
            .and_then(|s| s.code()),
        Some(0)
    );
}

/// An unknown user is a start-up error naming the key.
#[test]
fn unknown_process_user_is_refused_at_start() {
    let builder = ServerBuilder::new(BIN).section("[process]\nuser = \"no-such-user-ep\"\n");
    let path = builder.root().join("edgeplane.toml");
    std::fs::write(&path, builder.config_text()).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("edgeplane: config error: process.user: no-such-user-ep: no such user"),
        "{err}"
    );
}
