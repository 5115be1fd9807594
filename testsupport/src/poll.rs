//! Waiting for conditions, and running many cases to the end.

use std::thread;
use std::time::{Duration, Instant};

use crate::POLL_TIMEOUT;

/// Runs `one` for every case, and fails at the end naming all the cases that failed (each
/// case's own panic message is printed as it happens), so one bad case does not hide others.
#[track_caller]
pub fn check_all<T>(cases: impl IntoIterator<Item = (String, T)>, mut one: impl FnMut(&str, T)) {
    let mut failed = Vec::new();
    for (name, case) in cases {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| one(&name, case)));
        if r.is_err() {
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "failed cases: {failed:#?}");
}

/// Polls `f` until it returns `Some`, panicking with `what` after [`POLL_TIMEOUT`].
#[track_caller]
pub fn poll<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll_within(what, POLL_TIMEOUT, f)
}

/// Polls `f` every 50 ms until it returns `Some`, panicking with `what` after `limit`.
#[track_caller]
pub fn poll_within<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("gave up after {} s waiting for {what}", limit.as_secs());
        }
        thread::sleep(Duration::from_millis(50));
    }
}
