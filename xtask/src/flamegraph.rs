//! `cargo xtask flamegraph`: one server under the bench's load (same catalog, config, pinning and
//! wrk script as `cargo xtask bench`), sampled with `perf record -e cpu-clock --call-graph
//! dwarf`, folded and drawn with inferno, plus the top functions by self time on the terminal.
//!
//! Why DWARF call graphs: the `profiling` build inlines almost all of edgeplane (fat LTO, one
//! codegen unit) into glommio's task poll, so frame-pointer stacks show
//! `glommio::task::raw::RawTask::run` and little else, even when built with
//! `-C force-frame-pointers=yes`; the perf in Debian bookworm (no libbfd) does not expand inlined
//! frames for them. perf's DWARF unwinder (libdw) does: `edgeplane_dataplane::runtime::sys::sendfile` ←
//! `send_body` ← `edgeplane_dataplane::runtime::conn::Io::answer` ← `Io::run` and so on. See
//! docs/benchmarking.md.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use inferno::collapse::perf::{Folder, Options as CollapseOptions};
use inferno::collapse::Collapse;
use inferno::flamegraph::color::MultiPalette;
use inferno::flamegraph::{self, Options as FlamegraphOptions, Palette};

use crate::testbed::{
    check_cpus, log_wrk_result, Readiness, Rig, ScenarioName, ServerKind, Target, CLIENT_CPU,
    SERVER_CPU,
};
use crate::util::{display_command, edgeplane_bin_or_build, find_program, git_revision, header};

/// Release plus full debug info (root Cargo.toml).
const PROFILE: &str = "profiling";
/// wrk -c, as in the bench's default.
const CONNECTIONS: u32 = 64;
/// Samples per second; not a multiple of common timer rates, so sampling does not lock step
/// with periodic work.
const FREQUENCY: u32 = 999;
/// Seconds of load before perf starts, so the profile covers steady state only.
const LEAD_IN_S: u32 = 2;
/// How many functions the terminal summary lists.
const TOP: usize = 15;
/// Suffix inferno gives kernel frames (`annotate_kernel`).
const KERNEL_SUFFIX: &str = "_[k]";

#[derive(clap::Args)]
pub(crate) struct FlamegraphArgs {
    /// Which range size wrk requests.
    #[arg(long, value_enum, default_value_t = ScenarioName::K64)]
    scenario: ScenarioName,
    /// Seconds perf records (under load throughout).
    #[arg(long, default_value_t = 10)]
    duration: u32,
    /// Which server to profile.
    #[arg(long, value_enum, default_value_t = ServerKind::Edgeplane)]
    server: ServerKind,
    /// Use this edgeplane binary instead of building one with the `profiling` profile (e.g. a
    /// release build made beforehand).
    #[arg(long)]
    edgeplane_bin: Option<PathBuf>,
    /// edgeplane's `io.readiness` (default: the server's own, `auto`): `legacy` is glommio's
    /// one-shot poll per read, `multishot` one poll per connection.
    #[arg(long, value_enum)]
    readiness: Option<Readiness>,
    /// Record nothing: print the self-time summary and readiness share of an earlier run's
    /// `stacks.folded`.
    #[arg(long, value_name = "STACKS_FOLDED")]
    from_folded: Option<PathBuf>,
}

pub(crate) fn run(args: &FlamegraphArgs) -> Result<()> {
    if let Some(path) = &args.from_folded {
        let folded =
            fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        println!("{}", SelfTimes::from_folded(&folded).report(TOP));
        println!("{}", Shares::from_folded(&folded).report());
        return Ok(());
    }
    if args.duration == 0 {
        bail!("--duration must be at least 1");
    }
    if args.server != ServerKind::Edgeplane
        && (args.edgeplane_bin.is_some() || args.readiness.is_some())
    {
        bail!("--edgeplane-bin and --readiness apply to --server edgeplane only");
    }
    check_cpus()?;
    let perf = check_perf()?;
    let nginx = match args.server {
        ServerKind::Nginx => Some(find_program("nginx")?),
        ServerKind::Edgeplane | ServerKind::Limit => None,
    };
    let bin = match args.server {
        ServerKind::Edgeplane => Some(edgeplane_bin_or_build(
            args.edgeplane_bin.as_deref(),
            PROFILE,
        )?),
        ServerKind::Nginx | ServerKind::Limit => None,
    };
    let mut rig = Rig::prepare("flamegraph-", CONNECTIONS)?;
    rig.readiness = args.readiness;
    let mut target = match (&bin, &nginx) {
        (Some(bin), _) => {
            let target = rig.start_edgeplane(bin)?;
            // The path the server chose, as it logged it once at start.
            let log = fs::read_to_string(rig.run_dir.join("edgeplane.log")).unwrap_or_default();
            if let Some(line) = log.lines().find(|l| l.contains("socket readiness:")) {
                eprintln!("{}", line.trim());
            }
            target
        }
        (None, Some(nginx)) => rig.start_nginx(nginx)?,
        (None, None) => unreachable!("one server is chosen"),
    };
    let scenario = args.scenario.scenario();
    let script = rig.write_wrk_script(scenario)?;
    let perf_data = rig.run_dir.join("perf.data");

    header(&format!(
        "{}: {} ranges, wrk -t1 -c{CONNECTIONS} on CPU {CLIENT_CPU}; perf records {} s \
         after {LEAD_IN_S} s of load",
        target.name(),
        scenario.name,
        args.duration
    ));
    let wrk_seconds = LEAD_IN_S + args.duration + 1;
    let wrk_log = rig.run_dir.join(format!("wrk-{}.txt", scenario.name));
    let mut wrk_cmd = rig.wrk_command(&script, &target, wrk_seconds);
    let mut wrk = spawn_logged(&mut wrk_cmd, &wrk_log)?;
    let recorded = record(&perf, &rig, &target, &perf_data, args.duration);
    if recorded.is_err() {
        // Do not wait out the load for nothing.
        let _ = wrk.kill();
    }
    let wrk_status = wrk.wait().context("wait for wrk")?;
    target.server.check_running()?;
    recorded?;
    let wrk_output = fs::read_to_string(&wrk_log).unwrap_or_default();
    if !wrk_status.success() {
        bail!(
            "`{}` failed ({wrk_status}):\n{wrk_output}",
            display_command(&wrk_cmd)
        );
    }
    let load = log_wrk_result(&wrk_cmd, &wrk_output, &wrk_log)?;
    eprintln!(
        "wrk: {:.0} req/s, {:.2} GB/s, p50 {:.2} ms, p99 {:.2} ms over its {wrk_seconds} s, {} s \
         of them recorded (perf costs CPU; use `cargo xtask bench` for numbers); errors: {} \
         socket, {} status",
        load.req_s(),
        load.gb_s(),
        load.p50_ms,
        load.p99_ms,
        args.duration,
        load.errors.socket(),
        load.errors.status
    );

    header("stopping the server");
    let name = match args.readiness {
        Some(r) => format!(
            "{} (io.readiness = {})",
            target.name(),
            r.setting().as_str()
        ),
        None => target.name().to_owned(),
    };
    target.shut_down()?;

    header("perf script | inferno-collapse-perf");
    let folded = collapse(&perf, &perf_data, &rig.run_dir.join("perf-script.log"))?;
    if folded.trim().is_empty() {
        bail!(
            "perf recorded no samples of {name}; see {}",
            rig.run_dir.join("perf-record.log").display()
        );
    }
    let folded_path = rig.run_dir.join("stacks.folded");
    fs::write(&folded_path, &folded)?;

    let times = SelfTimes::from_folded(&folded);
    let svg = rig.run_dir.join("flamegraph.svg");
    let mut opts = FlamegraphOptions::default();
    opts.title = format!(
        "{name}: {} ranges, wrk -t1 -c{CONNECTIONS}, {} s",
        scenario.name, args.duration
    );
    opts.subtitle = Some(format!(
        "perf record -e cpu-clock -F {FREQUENCY} --call-graph dwarf; {} samples; {}",
        times.total,
        match git_revision() {
            r if r.is_empty() => "unknown revision".to_owned(),
            r => format!("revision {r}"),
        }
    ));
    opts.colors = Palette::Multi(MultiPalette::Rust);
    opts.count_name = "samples".to_owned();
    let writer =
        BufWriter::new(File::create(&svg).with_context(|| format!("create {}", svg.display()))?);
    flamegraph::from_lines(&mut opts, folded.lines(), writer)
        .with_context(|| format!("render {}", svg.display()))?;

    println!("\n{}", times.report(TOP));
    println!("{}", Shares::from_folded(&folded).report());
    eprintln!("flame graph: {}", svg.display());
    eprintln!("folded stacks: {}", folded_path.display());
    eprintln!(
        "perf data: {} (`perf report -i {} --no-children`)",
        perf_data.display(),
        perf_data.display()
    );
    Ok(())
}

/// Fails with one line unless perf is installed and may record kernel and user stacks of our
/// own processes. Returns perf's path.
fn check_perf() -> Result<PathBuf> {
    let perf = find_program("perf")
        .map_err(|_| anyhow!("perf is not installed; run `bash scripts/setup.sh` (linux-perf)"))?;
    let paranoid_path = "/proc/sys/kernel/perf_event_paranoid";
    let paranoid = fs::read_to_string(paranoid_path)
        .map_err(|_| anyhow!("this kernel has no perf events ({paranoid_path} does not exist)"))?;
    let level: i32 = paranoid.trim().parse().unwrap_or(i32::MAX);
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && level > 1 {
        bail!(
            "perf may not sample kernel stacks: kernel.perf_event_paranoid is {} (needs 1 or \
             less when not root); run as root or `sudo sysctl kernel.perf_event_paranoid=1`",
            paranoid.trim()
        );
    }
    // The paranoid level is not the only gate (containers, seccomp, missing PMU drivers): try.
    let probe = std::env::temp_dir().join(format!("xtask-perf-probe-{}.data", std::process::id()));
    let output = Command::new(&perf)
        .args(["record", "-q", "-e", "cpu-clock", "-F"])
        .arg(FREQUENCY.to_string())
        .args(["--call-graph", "dwarf", "-o"])
        .arg(&probe)
        .args(["--", "true"])
        .output();
    let _ = fs::remove_file(&probe);
    let output = output.with_context(|| format!("could not run {}", perf.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && *l != "Error:")
            .unwrap_or("no message");
        bail!("perf cannot record here ({}): {reason}", output.status);
    }
    Ok(perf)
}

/// Spawns `cmd` with stdout and stderr going to `log`.
fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<std::process::Child> {
    let out = File::create(log).with_context(|| format!("create {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("could not start `{}`", display_command(cmd)))
}

/// Waits out the lead-in, then records the server's processes for `seconds`.
///
/// perf itself runs pinned to the server's CPU: the one wrk thread is the bottleneck, and perf
/// (copying and writing 8 KiB stacks) next to it on the client CPU halved the request rate
/// (25.6k to 11.7k req/s at 64 KiB), while the server has idle time to spare (24.3k req/s with
/// perf beside it). perf's own CPU time is not in the profile, which covers only the server.
fn record(perf: &Path, rig: &Rig, target: &Target, data: &Path, seconds: u32) -> Result<()> {
    thread::sleep(Duration::from_secs(LEAD_IN_S.into()));
    let pids: Vec<String> = target.pids().iter().map(u32::to_string).collect();
    let mut cmd = Command::new(&rig.taskset);
    cmd.arg("-c")
        .arg(SERVER_CPU)
        .arg(perf)
        .args(["record", "-e", "cpu-clock", "-F"])
        .arg(FREQUENCY.to_string())
        .args(["--call-graph", "dwarf", "-p"])
        .arg(pids.join(","))
        .arg("-o")
        .arg(data)
        .args(["--", "sleep"])
        .arg(seconds.to_string());
    eprintln!("$ {}", display_command(&cmd));
    let out = cmd
        .output()
        .with_context(|| format!("could not run `{}`", display_command(&cmd)))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let log = rig.run_dir.join("perf-record.log");
    fs::write(&log, &text)?;
    eprint!("{text}");
    if !out.status.success() {
        bail!("perf record failed ({}); see {}", out.status, log.display());
    }
    Ok(())
}

/// `perf script` piped into inferno's perf folder; returns the folded stacks. perf's stderr
/// goes to `log`.
fn collapse(perf: &Path, data: &Path, log: &Path) -> Result<String> {
    let stderr = File::create(log).with_context(|| format!("create {}", log.display()))?;
    let mut cmd = Command::new(perf);
    // Without the period field inferno counts each sample once (with it, it would add up
    // cpu-clock's period: nanoseconds).
    cmd.args(["script", "-F", "-period", "-i"]).arg(data);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("could not start `{}`", display_command(&cmd)))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut options = CollapseOptions::default();
    // `_[k]` on kernel frames: the summary splits kernel from user time with it.
    options.annotate_kernel = true;
    let mut folded = Vec::new();
    let collapsed = Folder::from(options).collapse(BufReader::new(stdout), &mut folded);
    let status = child.wait()?;
    collapsed.context("fold perf script's output")?;
    if !status.success() {
        bail!(
            "`{}` failed ({status}); see {}",
            display_command(&cmd),
            log.display()
        );
    }
    let folded = String::from_utf8(folded).context("folded stacks are not UTF-8")?;
    Ok(tidy_stacks(&folded))
}

/// glommio's executor thread body: every stack of edgeplane's serving threads passes through it.
const EXECUTOR_ENTRY: &str = "glommio::executor::LocalExecutorBuilder::spawn::{{closure}}";

/// Makes truncated and complete stacks line up. perf copies 8 KiB of user stack per sample, and
/// glommio's executor frames often fill that before the thread's entry point, so the DWARF
/// unwinder ends many stacks with an `[unknown]` frame just below [`EXECUTOR_ENTRY`], while
/// others reach `clone3`. Stacks through [`EXECUTOR_ENTRY`] start there (the thread start-up
/// frames below it carry no information); other stacks lose leading `[unknown]` frames. Returns
/// the stacks sorted, equal ones merged.
///
/// Also takes the kernel mark off vDSO functions (`__vdso_clock_gettime`): inferno marks every
/// `[...]` module as kernel, but the vDSO runs in user space.
fn tidy_stacks(folded: &str) -> String {
    let mut stacks: BTreeMap<String, u64> = BTreeMap::new();
    for line in folded.lines() {
        let Some((stack, count)) = line.trim().rsplit_once(' ') else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        let frames: Vec<&str> = stack
            .split(';')
            .map(|f| match f.strip_suffix(KERNEL_SUFFIX) {
                Some(name) if name.starts_with("__vdso_") => name,
                _ => f,
            })
            .collect();
        let (comm, rest) = frames
            .split_first()
            .expect("split yields at least one item");
        let start = rest
            .iter()
            .position(|f| *f == EXECUTOR_ENTRY)
            .or_else(|| rest.iter().position(|f| *f != "[unknown]"));
        let stack = match start {
            Some(start) => format!("{comm};{}", rest[start..].join(";")),
            // Nothing but unknown frames: keep them.
            None => frames.join(";"),
        };
        *stacks.entry(stack).or_default() += count;
    }
    let mut out = String::with_capacity(folded.len());
    for (stack, count) in stacks {
        let _ = writeln!(out, "{stack} {count}");
    }
    out
}

/// Samples per function where it was the leaf (on CPU itself), from folded stacks.
#[derive(Debug, PartialEq)]
struct SelfTimes {
    /// Most samples first; ties by name.
    by_function: Vec<(String, u64)>,
    total: u64,
}

impl SelfTimes {
    /// Parses `frame;frame;...;leaf COUNT` lines; lines without a count are skipped.
    fn from_folded(folded: &str) -> SelfTimes {
        let mut counts: HashMap<&str, u64> = HashMap::new();
        let mut total = 0;
        for line in folded.lines() {
            let Some((stack, count)) = line.trim().rsplit_once(' ') else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            let leaf = stack.rsplit(';').next().unwrap_or(stack);
            *counts.entry(leaf).or_default() += count;
            total += count;
        }
        let mut by_function: Vec<(String, u64)> =
            counts.into_iter().map(|(f, n)| (f.to_owned(), n)).collect();
        by_function.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        SelfTimes { by_function, total }
    }

    /// Samples whose leaf is a kernel function.
    fn kernel(&self) -> u64 {
        self.by_function
            .iter()
            .filter(|(f, _)| f.ends_with(KERNEL_SUFFIX))
            .map(|(_, n)| n)
            .sum()
    }

    /// The terminal table: the `top` functions by self time, kernel ones marked `[k]`.
    fn report(&self, top: usize) -> String {
        let pct = |n: u64| 100.0 * n as f64 / self.total.max(1) as f64;
        let mut s = format!(
            "top {top} functions by self time ({} samples; kernel {:.1}%, user {:.1}%)\n\
             \x20     %  samples  function\n",
            self.total,
            pct(self.kernel()),
            pct(self.total - self.kernel())
        );
        for (i, (function, n)) in self.by_function.iter().take(top).enumerate() {
            let name = match function.strip_suffix(KERNEL_SUFFIX) {
                Some(kernel) => format!("{kernel} [k]"),
                None => function.clone(),
            };
            let _ = writeln!(s, "{:>2}. {:5.1}% {:>8}  {name}", i + 1, pct(*n), n);
        }
        s
    }
}

/// Where a sample was, for the readiness share ([`Shares`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Bucket {
    /// Inside `io_uring_enter`: submitting (poll adds, glommio's timers and their
    /// cancellations), reaping, and waiting in the ring.
    IoUringEnter,
    /// io_uring task work (poll completions, `io_poll_task_func`) outside `io_uring_enter`: run
    /// on the way back from another system call or from an interrupt.
    IoUringTaskWork,
    /// A reschedule IPI with no task work under it: how io_uring's task work reaches a thread
    /// that is running in user space (`TWA_SIGNAL`: `task_work_add` kicks the CPU) unless the
    /// ring has `IORING_SETUP_COOP_TASKRUN`; the task work itself runs on the way out
    /// ([`Bucket::IoUringTaskWork`]). The scheduler sends these too, for wake-ups on a busy CPU.
    ReschedIpi,
    /// nginx's readiness: `epoll_wait`, `epoll_pwait`, `epoll_ctl`.
    Epoll,
    /// User-space glommio reactor: arming and consuming sources, the completion queue, waking
    /// the tasks that wait on them.
    Reactor,
    Sendfile,
    /// `recvfrom`, `recvmsg`, `read`, `readv`.
    Recv,
    /// `sendto`, `sendmsg`, `write`, `writev` (the response heads).
    Send,
    /// Any other system call, by name.
    OtherSyscall,
    /// Kernel work in no system call: interrupts, IPIs, page faults, syscall entry and exit.
    OtherKernel,
    /// User space outside glommio's reactor.
    User,
}

/// Kernel frames of io_uring task work and of its poll requests (arming, waking, completing).
const IO_URING_POLL_PREFIXES: &[&str] = &[
    "io_poll",
    "__io_poll",
    "io_arm_poll_handler",
    "__io_arm_poll_handler",
    "io_apoll",
    "io_async_wake",
    "io_pollfree_wake",
];
/// Task work: io_uring's (`tctx_task_work`), and `task_work_run` itself, whose other users
/// (the deferred `fput` of a closed file) are rare under keep-alive load.
const IO_URING_TASK_WORK_PREFIXES: &[&str] = &[
    "tctx_task_work",
    "io_handle_tw_list",
    "io_run_task_work",
    "task_work_run",
];
/// The interrupt a reschedule IPI enters the kernel through.
const RESCHED_IPI: &str = "asm_sysvec_reschedule_ipi";
/// Prefixes of the kernel's per-system-call entry points (`__x64_sys_sendfile64`,
/// `__do_sys_io_uring_enter`, ...).
const SYSCALL_PREFIXES: &[&str] = &["__x64_sys_", "__do_sys_", "__se_sys_", "__ia32_sys_"];
/// Entry points the kernel inlines its `__x64_sys_` wrapper into.
const INLINED_SYSCALLS: &[(&str, &str)] = &[
    ("do_writev", "writev"),
    ("do_readv", "readv"),
    ("do_epoll_wait", "epoll_wait"),
    ("do_sendfile", "sendfile64"),
];
/// User frames of glommio's reactor (names of inlined frames carry these in their type
/// parameters, e.g. `consume_completion_queue<glommio::sys::uring::SleepableRing>`).
const REACTOR_MARKS: &[&str] = &["glommio::sys::", "glommio::reactor::", "glommio::parking::"];

/// The system call a kernel frame is the entry point of.
fn syscall_name(frame: &str) -> Option<&str> {
    SYSCALL_PREFIXES
        .iter()
        .find_map(|p| frame.strip_prefix(p))
        .or_else(|| {
            INLINED_SYSCALLS
                .iter()
                .find(|(f, _)| *f == frame)
                .map(|(_, name)| *name)
        })
}

/// Classifies one folded stack (root first, kernel frames with [`KERNEL_SUFFIX`]). Rules, first
/// match wins:
/// 1. a kernel frame of io_uring poll or task work ([`IO_URING_POLL_PREFIXES`],
///    [`IO_URING_TASK_WORK_PREFIXES`]): inside `io_uring_enter` → [`Bucket::IoUringEnter`], else
///    [`Bucket::IoUringTaskWork`];
/// 2. the system call (the first kernel frame naming one): `io_uring_enter`, `epoll_*`,
///    `sendfile*`, the receives, the sends, or another;
/// 3. a reschedule IPI ([`RESCHED_IPI`]) → [`Bucket::ReschedIpi`], any other kernel frame →
///    [`Bucket::OtherKernel`];
/// 4. user space: a glommio reactor frame ([`REACTOR_MARKS`]) → [`Bucket::Reactor`], else
///    [`Bucket::User`].
///
/// Also returns the system call's name and whether the stack holds an explicit poll frame
/// (io_uring poll, or an epoll system call).
fn classify(stack: &str) -> (Bucket, Option<&str>, bool) {
    let kernel: Vec<&str> = stack
        .split(';')
        .filter_map(|f| f.strip_suffix(KERNEL_SUFFIX))
        .collect();
    let has = |prefixes: &[&str]| {
        kernel
            .iter()
            .any(|f| prefixes.iter().any(|p| f.starts_with(p)))
    };
    let syscall = kernel.iter().find_map(|f| syscall_name(f));
    let io_uring_poll = has(IO_URING_POLL_PREFIXES);
    let in_enter = syscall == Some("io_uring_enter");
    if io_uring_poll || has(IO_URING_TASK_WORK_PREFIXES) {
        let bucket = if in_enter {
            Bucket::IoUringEnter
        } else {
            Bucket::IoUringTaskWork
        };
        return (bucket, syscall, io_uring_poll);
    }
    let bucket = match syscall {
        Some("io_uring_enter") => Bucket::IoUringEnter,
        Some(s) if s.starts_with("epoll_") => return (Bucket::Epoll, syscall, true),
        Some(s) if s.starts_with("sendfile") => Bucket::Sendfile,
        Some("recvfrom" | "recvmsg" | "recvmmsg" | "read" | "readv") => Bucket::Recv,
        Some("sendto" | "sendmsg" | "sendmmsg" | "write" | "writev") => Bucket::Send,
        Some(_) => Bucket::OtherSyscall,
        None if kernel.contains(&RESCHED_IPI) => Bucket::ReschedIpi,
        None if !kernel.is_empty() => Bucket::OtherKernel,
        None if REACTOR_MARKS.iter().any(|m| stack.contains(m)) => Bucket::Reactor,
        None => Bucket::User,
    };
    (bucket, syscall, false)
}

/// The server's samples by what it was doing, for the readiness share: how much of its CPU goes
/// to learning that a socket has bytes (docs/benchmarking.md, "Readiness share").
#[derive(Debug, PartialEq)]
struct Shares {
    by_bucket: BTreeMap<Bucket, u64>,
    /// Samples of [`Bucket::OtherSyscall`] by system call.
    other_syscalls: BTreeMap<String, u64>,
    /// Samples with an explicit poll frame: io_uring poll, or an epoll system call.
    poll_frames: u64,
    total: u64,
}

impl Shares {
    fn from_folded(folded: &str) -> Shares {
        let mut shares = Shares {
            by_bucket: BTreeMap::new(),
            other_syscalls: BTreeMap::new(),
            poll_frames: 0,
            total: 0,
        };
        for line in folded.lines() {
            let Some((stack, count)) = line.trim().rsplit_once(' ') else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            let (bucket, syscall, poll) = classify(stack);
            *shares.by_bucket.entry(bucket).or_default() += count;
            if bucket == Bucket::OtherSyscall {
                let name = syscall.unwrap_or("?").to_owned();
                *shares.other_syscalls.entry(name).or_default() += count;
            }
            shares.poll_frames += if poll { count } else { 0 };
            shares.total += count;
        }
        shares
    }

    fn get(&self, bucket: Bucket) -> u64 {
        self.by_bucket.get(&bucket).copied().unwrap_or(0)
    }

    /// Samples in socket readiness: io_uring (the syscall, its task work and the IPIs that
    /// deliver it), epoll, and glommio's user-space reactor.
    fn readiness(&self) -> u64 {
        [
            Bucket::IoUringEnter,
            Bucket::IoUringTaskWork,
            Bucket::ReschedIpi,
            Bucket::Epoll,
            Bucket::Reactor,
        ]
        .iter()
        .map(|&b| self.get(b))
        .sum()
    }

    /// The terminal table.
    fn report(&self) -> String {
        let pct = |n: u64| 100.0 * n as f64 / self.total.max(1) as f64;
        let p = |b: Bucket| pct(self.get(b));
        let mut others: Vec<(&String, &u64)> = self.other_syscalls.iter().collect();
        others.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let others = others
            .iter()
            .take(4)
            .map(|(name, n)| format!("{name} {:.1}%", pct(**n)))
            .collect::<Vec<_>>()
            .join(", ");
        let mut s = format!(
            "readiness share ({} samples; docs/benchmarking.md, \"Readiness share\")\n",
            self.total
        );
        let _ = writeln!(
            s,
            "  readiness       {:5.1}%  = io_uring_enter {:.1}% + io_uring task work {:.1}% + \
             reschedule IPIs {:.1}% + epoll {:.1}% + glommio reactor (user) {:.1}%",
            pct(self.readiness()),
            p(Bucket::IoUringEnter),
            p(Bucket::IoUringTaskWork),
            p(Bucket::ReschedIpi),
            p(Bucket::Epoll),
            p(Bucket::Reactor)
        );
        let _ = writeln!(
            s,
            "    poll frames   {:5.1}%  (io_uring poll: io_poll_*, __io_arm_poll_handler, \
             io_apoll_*, io_async_wake; epoll system calls)",
            pct(self.poll_frames)
        );
        for (name, bucket) in [
            ("sendfile", Bucket::Sendfile),
            ("recv", Bucket::Recv),
            ("send", Bucket::Send),
        ] {
            let _ = writeln!(s, "  {name:<15} {:5.1}%", p(bucket));
        }
        let _ = writeln!(
            s,
            "  other syscalls  {:5.1}%  ({})",
            p(Bucket::OtherSyscall),
            if others.is_empty() { "none" } else { &others }
        );
        let _ = writeln!(
            s,
            "  other kernel    {:5.1}%  (other interrupts, faults, syscall entry and exit)",
            p(Bucket::OtherKernel)
        );
        let _ = writeln!(s, "  user space      {:5.1}%", p(Bucket::User));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOLDED: &str = "\
edgeplane-0-1;glommio::executor::run;edgeplane::runtime::conn::Io::run;sendfile;do_sendfile_[k];tcp_sendmsg_[k] 50
edgeplane-0-1;glommio::executor::run;edgeplane::runtime::conn::Io::run;sendfile;do_sendfile_[k] 10
edgeplane-0-1;glommio::executor::run;edgeplane::http::request::route 20
edgeplane-0-1;glommio::executor::run;io_uring_submit;io_submit_sqes_[k] 15
edgeplane-0-1;glommio::executor::run;edgeplane::runtime::conn::Io::run;send;tcp_sendmsg_[k] 5
not a folded line
edgeplane-0-1;glommio::executor::run 0
";

    #[test]
    fn self_time_by_leaf() {
        let t = SelfTimes::from_folded(FOLDED);
        assert_eq!(t.total, 100);
        assert_eq!(
            t.by_function,
            [
                ("tcp_sendmsg_[k]".to_owned(), 55),
                ("edgeplane::http::request::route".to_owned(), 20),
                ("io_submit_sqes_[k]".to_owned(), 15),
                ("do_sendfile_[k]".to_owned(), 10),
                ("glommio::executor::run".to_owned(), 0),
            ]
        );
        assert_eq!(t.kernel(), 80);
    }

    #[test]
    fn self_time_report() {
        let report = SelfTimes::from_folded(FOLDED).report(2);
        let lines: Vec<&str> = report.lines().collect();
        assert_eq!(
            lines[0],
            "top 2 functions by self time (100 samples; kernel 80.0%, user 20.0%)"
        );
        assert_eq!(lines[2], " 1.  55.0%       55  tcp_sendmsg [k]");
        assert_eq!(
            lines[3],
            " 2.  20.0%       20  edgeplane::http::request::route"
        );
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn empty_input() {
        let t = SelfTimes::from_folded("");
        assert_eq!(t.total, 0);
        assert!(t.report(15).contains("0 samples"));
    }

    #[test]
    fn stacks_tidied() {
        let entry = EXECUTOR_ENTRY;
        let folded = format!(
            "edgeplane-0-1;[unknown];{entry};f 3\n\
             edgeplane-0-1;{entry};now;__vdso_clock_gettime_[k] 2\n\
             edgeplane-0-1;clone3;start_thread;{entry};f 2\n\
             edgeplane-0-1;{entry};g 4\n\
             edgeplane-0-1;[unknown];[unknown] 1\n\
             edgeplane-1;[unknown];clone3;read_into_cache 1\n\
             edgeplane-0-1;a;[unknown];b 1\n"
        );
        assert_eq!(
            tidy_stacks(&folded),
            format!(
                "edgeplane-0-1;[unknown];[unknown] 1\n\
                 edgeplane-0-1;a;[unknown];b 1\n\
                 edgeplane-0-1;{entry};f 5\n\
                 edgeplane-0-1;{entry};g 4\n\
                 edgeplane-0-1;{entry};now;__vdso_clock_gettime 2\n\
                 edgeplane-1;clone3;read_into_cache 1\n"
            )
        );
    }

    /// One stack per rule of [`classify`], shaped like real ones (`cargo xtask flamegraph` on
    /// Linux 6.18), with counts that add up to 100.
    const SHARES_FOLDED: &str = "\
edgeplane-0-1;sendfile_body;__GI_sendfile64;entry_SYSCALL_64_after_hwframe_[k];do_syscall_64_[k];__x64_sys_sendfile64_[k];do_sendfile_[k];tcp_sendmsg_[k];__netif_receive_skb_one_core_[k];sock_def_readable_[k];ep_poll_callback_[k] 50
edgeplane-0-1;poll_read<glommio::net::stream::NonBuffered>;io_uring_submit;syscall;entry_SYSCALL_64_after_hwframe_[k];do_syscall_64_[k];__do_sys_io_uring_enter_[k];io_submit_sqes_[k];io_issue_sqe_[k];__io_issue_sqe_[k];io_poll_add_[k];__io_arm_poll_handler_[k];sock_poll_[k] 6
edgeplane-0-1;glommio::sys::uring::Reactor::link_rings_and_sleep;syscall;entry_SYSCALL_64_after_hwframe_[k];do_syscall_64_[k];__do_sys_io_uring_enter_[k];io_cqring_wait_[k];schedule_[k] 4
edgeplane-0-1;__libc_send;entry_SYSCALL_64_after_hwframe_[k];do_syscall_64_[k];exit_to_user_mode_loop_[k];arch_do_signal_or_restart_[k];get_signal_[k];task_work_run_[k];tctx_task_work_[k];tctx_task_work_run_[k];io_handle_tw_list_[k];io_poll_task_func_[k] 3
edgeplane-0-1;consume_completion_queue<glommio::sys::uring::SleepableRing>;glommio::sys::uring::process_one_event 5
edgeplane-0-1;yolo_recv;__libc_recv;entry_SYSCALL_64_after_hwframe_[k];do_syscall_64_[k];__x64_sys_recvfrom_[k];tcp_recvmsg_[k] 4
edgeplane-0-1;__libc_send;entry_SYSCALL_64_after_hwframe_[k];do_syscall_64_[k];__x64_sys_sendto_[k];tcp_sendmsg_[k] 6
nginx;ngx_writev;entry_SYSCALL_64_after_hwframe_[k];do_syscall_64_[k];do_writev_[k];sock_write_iter_[k] 1
nginx;ngx_process_events_and_timers;epoll_wait;entry_SYSCALL_64_after_hwframe_[k];do_syscall_64_[k];__x64_sys_epoll_wait_[k];do_epoll_wait_[k] 2
nginx;ngx_tcp_push;entry_SYSCALL_64_after_hwframe_[k];do_syscall_64_[k];__x64_sys_setsockopt_[k];tcp_push_[k] 3
edgeplane-0-1;ensure_resident;entry_SYSCALL_64_after_hwframe_[k];do_syscall_64_[k];x64_sys_call_[k];__x64_sys_cachestat_[k] 1
edgeplane-0-1;f;asm_sysvec_reschedule_ipi_[k];irqentry_exit_to_user_mode_[k] 2
edgeplane-0-1;f;asm_sysvec_apic_timer_interrupt_[k];sysvec_apic_timer_interrupt_[k] 3
edgeplane-0-1;edgeplane_dataplane::http::request::route 10
";

    #[test]
    fn stacks_classified() {
        let buckets: Vec<(Bucket, Option<&str>, bool)> = SHARES_FOLDED
            .lines()
            .map(|l| classify(l.rsplit_once(' ').unwrap().0))
            .collect();
        assert_eq!(
            buckets,
            [
                // The client's epoll wake-up under the server's sendfile is the client's.
                (Bucket::Sendfile, Some("sendfile64"), false),
                (Bucket::IoUringEnter, Some("io_uring_enter"), true),
                (Bucket::IoUringEnter, Some("io_uring_enter"), false),
                (Bucket::IoUringTaskWork, None, true),
                (Bucket::Reactor, None, false),
                (Bucket::Recv, Some("recvfrom"), false),
                (Bucket::Send, Some("sendto"), false),
                (Bucket::Send, Some("writev"), false),
                (Bucket::Epoll, Some("epoll_wait"), true),
                (Bucket::OtherSyscall, Some("setsockopt"), false),
                (Bucket::OtherSyscall, Some("cachestat"), false),
                (Bucket::ReschedIpi, None, false),
                (Bucket::OtherKernel, None, false),
                (Bucket::User, None, false),
            ]
        );
    }

    #[test]
    fn readiness_share() {
        let shares = Shares::from_folded(SHARES_FOLDED);
        assert_eq!(shares.total, 100);
        // io_uring_enter 10 + task work 3 + IPIs 2 + epoll 2 + reactor 5.
        assert_eq!(shares.readiness(), 22);
        assert_eq!(shares.poll_frames, 6 + 3 + 2);
        let report = shares.report();
        let lines: Vec<&str> = report.lines().collect();
        assert_eq!(
            lines[1],
            "  readiness        22.0%  = io_uring_enter 10.0% + io_uring task work 3.0% + \
             reschedule IPIs 2.0% + epoll 2.0% + glommio reactor (user) 5.0%"
        );
        assert!(lines[2].starts_with("    poll frames    11.0%"), "{report}");
        assert_eq!(lines[3], "  sendfile         50.0%");
        assert_eq!(lines[5], "  send              7.0%");
        assert_eq!(
            lines[6],
            "  other syscalls    4.0%  (setsockopt 3.0%, cachestat 1.0%)"
        );
        assert!(lines[7].starts_with("  other kernel      3.0%"), "{report}");
        assert_eq!(lines[8], "  user space       10.0%");
    }
}
