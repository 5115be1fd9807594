//! Starting a server process, waiting until it is ready, and stopping it again.
//!
//! A [`Server`] owns the child process: its stdout and stderr go to a log file (stderr lines are
//! also handed to the waiting code), and dropping it stops the process, so a task that fails
//! half-way never leaves a server running.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::util::display_command;
pub(crate) use edgeplane_test_support::process::describe_status;
pub(crate) use edgeplane_test_support::ready::{parse_ready, strip_ansi, Ready};

/// How long a stopping server gets before it is killed.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Server {
    name: String,
    child: Option<Child>,
    stderr_lines: Receiver<String>,
    log_path: PathBuf,
}

impl Server {
    /// Spawns `cmd` with stdin closed and stdout/stderr appended to `log_path`.
    pub(crate) fn spawn(name: &str, mut cmd: Command, log_path: &Path) -> Result<Self> {
        let log = File::create(log_path)
            .with_context(|| format!("create log file {}", log_path.display()))?;
        let log = Arc::new(Mutex::new(log));
        let shown = display_command(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start {name}: `{shown}`"))?;
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            forward_lines(out, Arc::clone(&log), None);
        }
        if let Some(err) = child.stderr.take() {
            forward_lines(err, log, Some(tx));
        }
        eprintln!(
            "started {name} (pid {}), log: {}",
            child.id(),
            log_path.display()
        );
        Ok(Server {
            name: name.to_owned(),
            child: Some(child),
            stderr_lines: rx,
            log_path: log_path.to_owned(),
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits for a stderr line for which `wanted` returns `Some`.
    pub(crate) fn wait_for_line<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut wanted: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(found) = wanted(&line) {
                        return Ok(found);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.check_running()?;
                    bail!(
                        "{} did not print {what} within {} s{}",
                        self.name,
                        timeout.as_secs(),
                        self.log_tail_note()
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // stderr closed: the process is exiting or has exited.
                    let status = self.wait_exit(Duration::from_secs(2));
                    bail!(
                        "{} closed stderr before printing {what} ({}){}",
                        self.name,
                        describe_status(status),
                        self.log_tail_note()
                    );
                }
            }
        }
    }

    /// Waits until `addr` accepts TCP connections.
    pub(crate) fn wait_for_port(&mut self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} is not accepting connections on {addr} after {} s{}",
                    self.name,
                    timeout.as_secs(),
                    self.log_tail_note()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fails if the process has exited.
    pub(crate) fn check_running(&mut self) -> Result<()> {
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("{} was already stopped", self.name))?;
        if let Some(status) = child.try_wait()? {
            self.child = None;
            bail!(
                "{} exited unexpectedly ({}){}",
                self.name,
                describe_status(Some(status)),
                self.log_tail_note()
            );
        }
        Ok(())
    }

    /// Sends `signal` and waits for the process to exit; kills it after `timeout`.
    /// Returns the exit status; an error if it had to be killed.
    pub(crate) fn stop(&mut self, signal: libc::c_int, timeout: Duration) -> Result<ExitStatus> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} was already stopped", self.name);
        };
        if child.try_wait()?.is_none() {
            send_signal(child.id(), signal)?;
        }
        match self.wait_exit(timeout) {
            Some(status) => Ok(status),
            None => {
                self.kill();
                bail!(
                    "{} did not exit within {} s of signal {signal}; killed it",
                    self.name,
                    timeout.as_secs()
                )
            }
        }
    }

    /// Like [`Server::stop`] with SIGTERM, and fails unless the exit status is 0.
    pub(crate) fn stop_expect_success(&mut self) -> Result<()> {
        let status = self.stop(libc::SIGTERM, STOP_TIMEOUT)?;
        if !status.success() {
            bail!(
                "{} did not exit cleanly after SIGTERM ({}){}",
                self.name,
                describe_status(Some(status)),
                self.log_tail_note()
            );
        }
        eprintln!("{} exited with status 0 after SIGTERM", self.name);
        Ok(())
    }

    /// Waits up to `timeout` for the exit; `None` if it is still running (or was never waited).
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        edgeplane_test_support::process::wait_exit(&mut self.child, timeout)
    }

    fn kill(&mut self) {
        edgeplane_test_support::process::kill(&mut self.child);
    }

    /// The last lines of the log, for error messages.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let text = fs::read(&self.log_path).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn log_tail_note(&self) -> String {
        let tail = self.log_tail(20);
        if tail.is_empty() {
            format!("; log {} is empty", self.log_path.display())
        } else {
            format!(
                "; last lines of {}:\n{}",
                self.log_path.display(),
                indent(&tail)
            )
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        eprintln!("stopping {} (pid {})", self.name, self.pid());
        if self.stop(libc::SIGTERM, Duration::from_secs(5)).is_err() {
            self.kill();
        }
    }
}

/// Starts `edgeplane serve --config CONFIG` (under `taskset -c CPUS` if `pin` is given) and
/// waits for its ready line.
pub(crate) fn start_edgeplane(
    bin: &Path,
    config: &Path,
    log_path: &Path,
    pin: Option<&str>,
    timeout: Duration,
) -> Result<(Server, Ready)> {
    let mut cmd = match pin {
        Some(cpus) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(cpus).arg(bin);
            cmd
        }
        None => Command::new(bin),
    };
    cmd.arg("serve").arg("--config").arg(config);
    // Plain text on stderr, whatever the logging library's defaults are.
    cmd.env("NO_COLOR", "1");
    let mut server = Server::spawn("edgeplane", cmd, log_path)?;
    let ready = server.wait_for_line(
        "its ready line (`ready http=... admin=...`)",
        timeout,
        parse_ready,
    )?;
    eprintln!(
        "edgeplane ready: http={} admin={} cores={}",
        ready.http,
        ready.admin,
        ready.cores.map_or("?".to_owned(), |c| c.to_string())
    );
    Ok((server, ready))
}

pub(crate) fn send_signal(pid: u32, signal: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours. The pid is our own
    // child's, which we have not reaped yet, so it cannot have been reused.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("kill({pid}, {signal})"));
    }
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Copies lines from `pipe` to `log`; with `tx`, also sends them (ANSI-stripped) to the waiter.
fn forward_lines(
    pipe: impl Read + Send + 'static,
    log: Arc<Mutex<File>>,
    tx: Option<Sender<String>>,
) {
    thread::spawn(move || {
        edgeplane_test_support::process::for_each_line(pipe, |buf| {
            if let Ok(mut log) = log.lock() {
                let _ = log.write_all(buf);
            }
            if let Some(tx) = &tx {
                let line = String::from_utf8_lossy(buf);
                let _ = tx.send(strip_ansi(line.trim_end()));
            }
        });
    });
}
