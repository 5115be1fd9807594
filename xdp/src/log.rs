//! Debug lines from the eBPF programs (aya-log), forwarded to `tracing` under the target
//! `edgeplane_ebpf::…`. Off unless that target is enabled, e.g.
//! `EDGEPLANE_LOG=info,edgeplane_ebpf=debug`: with the level compiled to 0 the programs skip
//! formatting entirely, and no thread reads the ring buffer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aya::Ebpf;
use edgeplane_ebpf_types::program;

/// The global in the object that aya-log-ebpf checks before formatting anything.
pub(crate) const LEVEL_GLOBAL: &str = "AYA_LOG_LEVEL";

/// aya-log's level (0 = off … 5 = trace) for what `tracing` would print from the programs.
pub(crate) fn ebpf_level() -> u8 {
    use tracing::Level;
    if tracing::enabled!(target: "edgeplane_ebpf", Level::TRACE) {
        5
    } else if tracing::enabled!(target: "edgeplane_ebpf", Level::DEBUG) {
        4
    } else if tracing::enabled!(target: "edgeplane_ebpf", Level::INFO) {
        3
    } else if tracing::enabled!(target: "edgeplane_ebpf", Level::WARN) {
        2
    } else if tracing::enabled!(target: "edgeplane_ebpf", Level::ERROR) {
        1
    } else {
        0
    }
}

/// A thread that drains the programs' log ring buffer; stops when dropped.
#[derive(Debug)]
pub(crate) struct LogPump {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogPump {
    /// Starts reading the logs of the loaded XDP program. `None` (with a warning) if it cannot.
    pub(crate) fn start(ebpf: &mut Ebpf) -> Option<LogPump> {
        let id = ebpf
            .program(program::FILTER)
            .and_then(|p| p.info().ok())
            .map(|info| info.id())?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("edgeplane-ebpf-log".into())
            .spawn(move || {
                let mut logger = match aya_log::EbpfLogger::init_from_id(id) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!("eBPF debug logging unavailable: {e}");
                        return;
                    }
                };
                while !flag.load(Ordering::Relaxed) {
                    logger.flush();
                    std::thread::sleep(Duration::from_millis(100));
                }
                logger.flush();
            })
            .ok()?;
        Some(LogPump {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LogPump {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
