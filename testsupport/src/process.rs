//! Child processes.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

/// How a process ended, for messages: `exit code N`, `killed by signal N`, or `still running`
/// for `None`.
pub fn describe_status(status: Option<ExitStatus>) -> String {
    match status {
        None => "still running".to_owned(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => s.to_string(),
        },
    }
}

/// Waits up to `timeout` for `child` to exit, polling every 20 ms. On exit the child is
/// reaped and taken (`*child` becomes `None`) and its status returned; `None` if it is still
/// running after `timeout`, or there was no child.
pub fn wait_exit(child: &mut Option<Child>, timeout: Duration) -> Option<ExitStatus> {
    let running = child.as_mut()?;
    let deadline = Instant::now() + timeout;
    loop {
        match running.try_wait() {
            Ok(Some(status)) => {
                *child = None;
                return Some(status);
            }
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// Kills `child` (SIGKILL) and reaps it, if there is one; `*child` becomes `None`.
pub fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Calls `each` with every line read from `pipe` (a child's stdout or stderr), its newline
/// included, until EOF or a read error; lines need not be UTF-8.
pub fn for_each_line(pipe: impl Read, mut each: impl FnMut(&[u8])) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => each(&buf),
        }
    }
}
