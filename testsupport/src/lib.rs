//! Test support for edgeplane's integration tests, benches and developer tasks.
//!
//! Always available (rustls is the only dependency):
//! * [`tls`]: [`tls::TrustAnyCert`], the one certificate verifier that trusts any server.
//! * [`ready`]: the `ready http=IP:PORT admin=IP:PORT …` line parser and [`ready::strip_ansi`].
//! * [`metrics`]: a parser for the Prometheus text format of `/metrics`.
//! * [`process`]: describing how a child process ended.
//! * [`poll`]: waiting for a condition, running many cases to the end.
//!
//! With the `harness` feature, the black-box harness for the `edgeplane` binary:
//! * [`server`]: [`server::ServerBuilder`] writes a config and tier directories into a scratch
//!   directory on the build's disk, starts `edgeplane serve`, and waits for the ready line;
//!   [`server::Server`] owns the process (killed on drop, a test fails if it died under it).
//!   The binary's path comes from the caller: `env!("CARGO_BIN_EXE_edgeplane")`, which Cargo
//!   sets only for the `edgeplane` package's own integration tests and only after building
//!   that binary for them, so a test can never run a stale or missing binary.
//! * [`client`]: a raw HTTP/1.1 client over `TcpStream` and one over rustls, curl and ureq.
//! * [`ranges`]: assertions on 200/206/416 range responses.
//! * [`content`]: deterministic test content and byte-exact comparison.
//! * [`origin`]: an HTTP origin that counts requests and misbehaves on command (pull-through).
//! * [`pki`]: a test CA and server certificates made with the `openssl` CLI.
//! * [`scratch`]: scratch directories under the target directory.
//!
//! With `xdp`: [`xdp`], loading the XDP filter or skipping, pin directories, veth pairs.
//! With `bird`: [`bird`], network namespaces with BIRD 2 and GoBGP routers.
//! With `postgres`: [`pg`], a real PostgreSQL server in a temporary directory.
//!
//! A test file usually starts with `use edgeplane_test_support::prelude::*;`.
#![warn(missing_docs)]

use std::time::Duration;

pub mod metrics;
pub mod poll;
pub mod process;
pub mod ready;
pub mod tls;

#[cfg(feature = "harness")]
pub mod client;
#[cfg(feature = "harness")]
pub mod content;
#[cfg(feature = "harness")]
pub mod moto;
#[cfg(feature = "harness")]
pub mod origin;
#[cfg(feature = "postgres")]
pub mod pg;
#[cfg(feature = "harness")]
pub mod pki;
#[cfg(feature = "harness")]
pub mod ranges;
#[cfg(feature = "harness")]
pub mod scratch;
#[cfg(feature = "harness")]
pub mod server;

#[cfg(feature = "bird")]
pub mod bird;
#[cfg(feature = "xdp")]
pub mod xdp;

/// How long a server may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Read/write timeout on every client socket: only a guard against hangs.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// How long polling loops (metrics, reloads, connection slots) wait before giving up.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(15);

/// A loopback TCP port free right now (the kernel's pick), for servers the tests start by port
/// (moto_server, PostgreSQL, the control service).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// What most integration tests use: the harness, its clients and assertions.
#[cfg(feature = "harness")]
pub mod prelude {
    pub use crate::client::{
        curl, read_http_response, request_head, ureq_agent, ureq_request, Closed, Conn, CurlResult,
        Response, TlsConn,
    };
    pub use crate::content::{assert_bytes_eq, pattern, sha256_hex, Rng};
    pub use crate::metrics::{Metrics, Sample};
    pub use crate::origin::{DigestHeader, Origin, OriginRequest};
    pub use crate::pki::{pki, tls_client, Pki, PkiCert};
    pub use crate::poll::{check_all, poll, poll_within};
    pub use crate::process::describe_status;
    pub use crate::ranges::{assert_full, assert_partial, assert_unsatisfiable};
    pub use crate::ready::{parse_ready, strip_ansi, Ready};
    pub use crate::scratch::{temp_dir, write_file};
    pub use crate::server::{canary_data, run_to_exit, Server, ServerBuilder, CANARY, CANARY_LEN};
    pub use crate::tls::tls_client_any_cert;
    pub use crate::{free_port, IO_TIMEOUT, POLL_TIMEOUT, READY_TIMEOUT};
}
