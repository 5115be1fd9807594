//! A real PostgreSQL server for tests: Debian's `postgresql` package (scripts/setup.sh installs
//! it), `initdb` into a temporary directory and `pg_ctl start` on a free loopback port, stopped
//! and removed on drop. PostgreSQL refuses to run as root, so as root (CI) the server runs as
//! `nobody` through `runuser`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where Debian puts the server binaries.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running PostgreSQL server; stopped (immediate mode) and its directory removed on drop.
pub struct PgServer {
    dir: tempfile::TempDir,
    port: u16,
    as_nobody: bool,
}

fn bin(name: &str) -> PathBuf {
    Path::new(PG_BIN).join(name)
}

impl PgServer {
    /// Initializes a cluster (trust auth, superuser `edgeplane`) and starts it.
    #[track_caller]
    pub fn start() -> PgServer {
        assert!(
            bin("initdb").exists(),
            "{} not found: this test needs PostgreSQL 15 (apt-get install postgresql; scripts/setup.sh does)",
            bin("initdb").display()
        );
        // SAFETY: geteuid has no preconditions.
        let as_nobody = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::Builder::new()
            .prefix("edgeplane-pg-")
            .tempdir_in(std::env::temp_dir())
            .expect("temp dir");
        let port = crate::free_port();
        let pg = PgServer {
            dir,
            port,
            as_nobody,
        };
        if as_nobody {
            let ok = Command::new("chown")
                .args(["nobody:nogroup", pg.dir.path().to_str().unwrap()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown nobody {}", pg.dir.path().display());
        }
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "edgeplane",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        pg.ctl_start();
        pg
    }

    fn opts(&self) -> String {
        format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on",
            self.port,
            self.dir.path().display()
        )
    }

    #[track_caller]
    fn ctl_start(&self) {
        let log = self.dir.path().join("log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &self.opts(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Restarts the server (`pg_ctl restart -m fast`: open connections are closed), waiting
    /// until it accepts connections again.
    #[track_caller]
    pub fn restart(&self) {
        self.stop();
        self.ctl_start();
    }

    /// Stops the server (`pg_ctl stop -m fast`); [`PgServer::start_again`] starts it.
    #[track_caller]
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "fast", "-w", "-t", "60", "stop"],
        );
    }

    /// Starts a server stopped with [`PgServer::stop`].
    #[track_caller]
    pub fn start_again(&self) {
        self.ctl_start();
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    #[track_caller]
    fn run(&self, tool: &str, args: &[&str]) {
        let path = bin(tool);
        let mut cmd = if self.as_nobody {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates database `name`; its URL.
    #[track_caller]
    pub fn create_database(&self, name: &str) -> String {
        self.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "edgeplane",
                name,
            ],
        );
        self.url(name)
    }

    /// `postgres://edgeplane@127.0.0.1:PORT/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://edgeplane@127.0.0.1:{}/{db}", self.port)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.data();
        let path = bin("pg_ctl");
        let mut cmd = if self.as_nobody {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let _ = cmd
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
