//! A real S3-compatible server for the tests: `moto_server` (installed by scripts/setup.sh),
//! started on a port of the caller's choosing and killed on drop. moto takes any credentials
//! and, by default, does not check SigV4 signatures, so a well-formed `Authorization` header is
//! enough for its API (and a GET without one reads like a public-read bucket).

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::poll::poll_within;

/// A well-formed SigV4 header moto accepts (it does not check the signature).
pub const MOTO_AUTH: &str = "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, \
    SignedHeaders=host, Signature=0000";

/// A running `moto_server`.
pub struct Moto {
    child: Option<Child>,
    port: u16,
}

impl Moto {
    /// Starts `moto_server` on 127.0.0.1:`port` and waits until it listens.
    pub fn start(port: u16) -> Moto {
        let which = Command::new("sh")
            .args(["-c", "command -v moto_server"])
            .output()
            .expect("sh");
        assert!(
            which.status.success(),
            "moto_server is not installed: run scripts/setup.sh (pip install 'moto[server]')"
        );
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start moto_server: {e}"));
        let m = Moto {
            child: Some(child),
            port,
        };
        poll_within("moto_server to listen", Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        m
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Creates `bucket` (S3 `CreateBucket`).
    pub fn create_bucket(&self, bucket: &str) {
        let url = format!("{}/{bucket}", self.url());
        let r = ureq::put(&url).set("Authorization", MOTO_AUTH).call();
        assert!(r.is_ok(), "PUT {url}: {r:?}");
    }

    /// Writes (or replaces) an object (S3 `PutObject`).
    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        self.put_with(bucket, key, body, &[]);
    }

    /// Writes an object with extra request headers (e.g. `x-amz-meta-*` user metadata).
    pub fn put_with(&self, bucket: &str, key: &str, body: &[u8], headers: &[(&str, &str)]) {
        let url = format!("{}/{bucket}/{key}", self.url());
        let mut req = ureq::put(&url).set("Authorization", MOTO_AUTH);
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let r = req.send_bytes(body);
        assert!(r.is_ok(), "PUT {url}: {r:?}");
    }

    /// Reads an object (S3 `GetObject`).
    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let url = format!("{}/{bucket}/{key}", self.url());
        let r = ureq::get(&url)
            .set("Authorization", MOTO_AUTH)
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut r.into_reader(), &mut body).unwrap();
        body
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}
