//! `cargo xtask testssl`: a testssl.sh scan (`--fast`) of edgeplane's HTTPS listener on
//! loopback (the userspace rustls path on a kernel without the `tls` module; the handshake is
//! rustls's either way), failing on any finding of severity MEDIUM or above that is not in
//! [`ACCEPTED`], each of which says why it is not a problem of the server.
//!
//! The certificate comes from a throwaway CA made here with the `openssl` CLI (handed to
//! testssl with `--add-ca`), valid for a year, so the scan judges the server rather than a
//! self-signed test certificate. A separate step rather than a `cargo test` because the scan
//! takes a minute or more of wall time; `cargo xtask ci` runs it after the tests. The JSON
//! report and testssl's output go to `<target>/testssl/`.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::server::Server;
use crate::util::{cargo, find_program, header, run_checked, target_dir};

/// Findings of MEDIUM or above that are accepted, by testssl id, with the reason.
pub(crate) const ACCEPTED: &[(&str, &str)] = &[
    (
        "cert_revocation",
        "a property of the certificate, not of the server: the throwaway test CA publishes \
         no CRL or OCSP responder; an operator's CA-issued certificate carries those URIs",
    ),
    (
        "security_headers",
        "browser document headers (CSP, X-Frame-Options, ...) protect HTML pages rendered in a \
         browser; edgeplane serves opaque media byte ranges, never HTML, sets no cookies and runs \
         no scripts, so testssl's \"none present\" is not a weakness here",
    ),
];

const SEVERE: &[&str] = &["MEDIUM", "HIGH", "CRITICAL"];

/// `binary`: the edgeplane to scan (default: `cargo build -p edgeplane`, debug).
pub(crate) fn run(binary: Option<&std::path::Path>) -> Result<()> {
    let started = Instant::now();
    let testssl = find_program("testssl").context("install testssl.sh (scripts/setup.sh)")?;
    let bin = match binary {
        Some(b) => b.to_path_buf(),
        None => {
            header("cargo build -p edgeplane");
            run_checked(cargo().args(["build", "-p", "edgeplane"]))?;
            target_dir().join("debug/edgeplane")
        }
    };
    let dir = target_dir().join("testssl");
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(dir.join("flash"))?;
    fs::write(dir.join("flash/video.bin"), vec![0x5a; 1 << 20])?;

    // A CA and a leaf certificate for edgeplane.test (ECDSA P-256, as the docs recommend).
    let openssl = |args: &[&str]| {
        run_checked(
            Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
        )
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "730",
        "-subj",
        "/CN=edgeplane testssl CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ])?;
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=edgeplane.test",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ])?;
    fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:edgeplane.test\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "365",
        "-extfile",
        "leaf.ext",
        "-out",
        "server.pem",
    ])?;
    let config = dir.join("edgeplane.toml");
    fs::write(
        &config,
        format!(
            "# Written by `cargo xtask testssl`.\ncores = 1\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n\
             [https]\nlisten = \"127.0.0.1:0\"\ncert = \"{0}/server.pem\"\nkey = \"{0}/server.key\"\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n[signing]\nenabled = false\n\n\
             [[tier]]\nname = \"flash\"\nkind = \"flash\"\npath = \"{0}/flash\"\n",
            dir.display()
        ),
    )?;
    let mut cmd = Command::new(&bin);
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .env("NO_COLOR", "1");
    let mut server = Server::spawn("edgeplane", cmd, &dir.join("edgeplane.log"))?;
    let port: u16 = server.wait_for_line("its ready line", Duration::from_secs(30), |line| {
        let https = line
            .split_whitespace()
            .find_map(|t| t.strip_prefix("https="))?;
        https.rsplit(':').next()?.parse().ok()
    })?;

    let json = dir.join("testssl.json");
    header(&format!("testssl --fast against 127.0.0.1:{port}"));
    let out = Command::new(&testssl)
        .args(["--fast", "--quiet", "--color", "0", "--warnings", "off"])
        .args(["--ip", "127.0.0.1", "--add-ca"])
        .arg(dir.join("ca.pem"))
        .arg("--jsonfile")
        .arg(&json)
        .arg(format!("https://edgeplane.test:{port}/video.bin"))
        .output()
        .context("run testssl")?;
    fs::write(dir.join("testssl.txt"), &out.stdout)?;
    server.stop_expect_success()?;
    let report: Value = serde_json::from_str(
        &fs::read_to_string(&json)
            .with_context(|| format!("testssl wrote no {}", json.display()))?,
    )?;
    let findings = report.as_array().context("testssl JSON is not an array")?;
    ensure!(
        findings.iter().any(|f| f["id"] == "TLS1_3"),
        "testssl did not scan the protocols (see {})",
        dir.join("testssl.txt").display()
    );
    let mut failed = Vec::new();
    for f in findings {
        let (id, severity, finding) = (
            f["id"].as_str().unwrap_or("?"),
            f["severity"].as_str().unwrap_or("?"),
            f["finding"].as_str().unwrap_or(""),
        );
        if !SEVERE.contains(&severity) && severity != "LOW" {
            continue;
        }
        match ACCEPTED.iter().find(|(a, _)| *a == id) {
            Some((_, why)) => eprintln!("testssl: {severity} {id}: {finding} — accepted: {why}"),
            None if SEVERE.contains(&severity) => {
                eprintln!("testssl: {severity} {id}: {finding} — FAIL");
                failed.push(format!("{severity} {id}: {finding}"));
            }
            None => eprintln!("testssl: {severity} {id}: {finding}"),
        }
    }
    eprintln!(
        "testssl: {} findings, scan and checks took {:.0} s; report: {}",
        findings.len(),
        started.elapsed().as_secs_f64(),
        json.display()
    );
    if !failed.is_empty() {
        bail!(
            "testssl found {} problem(s) of severity MEDIUM or above:\n{}",
            failed.len(),
            failed.join("\n")
        );
    }
    Ok(())
}
