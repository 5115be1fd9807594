//! `cargo xtask bench --callgrind`: edgeplane (`cores = 1`) under
//! `valgrind --tool=callgrind`, a fixed number of 64 KiB range requests from the load
//! generator, and the instructions the server executed per request, with the top functions.
//! Unlike wall-clock numbers, instruction counts barely move between runs or machines, so a
//! change of a few percent is visible.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use edgeplane_load::{
    Config as LoadConfig, Live, Object, RangeClass, Target as LoadTarget, Validation, Workload,
};
use serde_json::json;

use crate::bench::BenchArgs;
use crate::server::{parse_ready, Server};
use crate::testbed::{edgeplane_config, CatalogSpec, Rig};
use crate::util::{build_edgeplane, display_command, find_program, git_revision, header};

/// Requests before the counters are zeroed (first-touch costs: page faults, lazy init).
const WARMUP_REQUESTS: u64 = 200;
const CONNECTIONS: u64 = 8;

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    let valgrind = find_program("valgrind")?;
    let control = find_program("callgrind_control")?;
    let annotate = find_program("callgrind_annotate")?;
    let bin = build_edgeplane(&args.profile)?;
    let rig = Rig::prepare_with(&CatalogSpec::standard(false), "callgrind-", 64)?;
    let config = rig.run_dir.join("edgeplane.toml");
    fs::write(
        &config,
        edgeplane_config(&rig.catalog, 64, None, None, None),
    )?;
    let out_file = rig.run_dir.join("callgrind.out");
    let mut cmd = Command::new(&valgrind);
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(&bin)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("NO_COLOR", "1");
    header(&format!("starting `{}`", display_command(&cmd)));
    let mut server = Server::spawn(
        "edgeplane (callgrind)",
        cmd,
        &rig.run_dir.join("edgeplane.log"),
    )?;
    let ready = server.wait_for_line(
        "its ready line (`ready http=... admin=...`)",
        Duration::from_secs(180),
        parse_ready,
    )?;
    let pid = server.pid();
    let objects: Vec<Object> = rig
        .files
        .iter()
        .map(|(p, size)| Object {
            name: p.trim_start_matches('/').to_owned(),
            size: *size,
        })
        .collect();
    let load = |requests: u64| -> Result<edgeplane_load::Report> {
        let cfg = LoadConfig {
            target: LoadTarget::parse(&format!("http://{}", ready.http))?,
            threads: 1,
            cpus: Vec::new(),
            connections: CONNECTIONS,
            duration: Duration::from_secs(600),
            rate: None,
            request_timeout: Duration::from_secs(60),
            workload: Workload::Ranges(vec![RangeClass {
                name: "hot".into(),
                weight: 1.0,
                objects: objects.clone(),
                zipf_s: 0.0,
                min_len: 64 << 10,
                max_len: 64 << 10,
                align: 64 << 10,
            }]),
            validation: Validation::Full,
            ca: None,
            sni: None,
            seed: 1,
            max_requests: Some(requests),
        };
        let report = edgeplane_load::run(&cfg, Arc::new(Live::default()))?;
        eprintln!("{}", report.summary());
        if report.errors_total > 0 || report.requests != requests {
            bail!(
                "wanted {requests} good responses, got {} and {} errors",
                report.requests,
                report.errors_total
            );
        }
        Ok(report)
    };
    header(&format!("{WARMUP_REQUESTS} warm-up requests"));
    load(WARMUP_REQUESTS)?;
    // A dump resets the counters: dump 1 is start-up and warm-up, dump 2 the counted requests.
    // (`--zero` instead leaves every cost of the interval attributed to `clone`, the thread's
    // entry, in valgrind 3.19's dumps.)
    callgrind_control(&control, &["--dump"], pid)?;
    let n = args.callgrind_requests;
    header(&format!(
        "{n} counted requests (64 KiB ranges, {CONNECTIONS} connections)"
    ));
    load(n)?;
    callgrind_control(&control, &["--dump"], pid)?;
    server.stop_expect_success()?;
    let dump = rig.run_dir.join("callgrind.out.2");
    let text = fs::read_to_string(&dump).with_context(|| format!("read {}", dump.display()))?;
    let total = total_ir(&text).context("no summary: line in the callgrind dump")?;
    let top = Command::new(&annotate)
        .arg(&dump)
        .output()
        .context("run callgrind_annotate")?;
    fs::write(rig.run_dir.join("callgrind-annotate.txt"), &top.stdout)?;
    // callgrind_annotate 3.19 shows mid-run dumps' costs inclusively (every function under
    // `clone` at 100 %), so self costs are summed from the dump itself.
    let functions = self_costs(&text, 20);
    let per_request = total as f64 / n as f64;
    let mut md = format!(
        "# edgeplane instructions per request (callgrind): {}\n\n\
         - {n} requests of 64 KiB ranges over {CONNECTIONS} keep-alive connections, closed \
         loop, after {WARMUP_REQUESTS} warm-up requests; counters dumped (and so reset) before \
         and after (idle event-loop turns in between are included)\n\
         - edgeplane `cores = 1`, profile `{}`, revision `{}`\n\n\
         **{per_request:.0} instructions per request** ({total} Ir in total)\n\n\
         | Ir | share | Ir/request | function |\n|---:|---:|---:|---|\n",
        rig.run_name(),
        args.profile,
        git_revision()
    );
    for (ir, name) in &functions {
        md += &format!(
            "| {ir} | {:.1}% | {:.0} | `{}` |\n",
            *ir as f64 * 100.0 / total as f64,
            *ir as f64 / n as f64,
            name.replace('|', "\\|")
        );
    }
    println!("\n{md}");
    fs::write(rig.run_dir.join("report.md"), &md)?;
    let json = json!({
        "requests": n,
        "connections": CONNECTIONS,
        "range_bytes": 65536,
        "total_ir": total,
        "ir_per_request": per_request,
        "profile": args.profile,
        "revision": git_revision(),
        "top_functions": functions.iter().map(|(ir, f)| json!({"ir": ir, "function": f})).collect::<Vec<_>>(),
    });
    fs::write(
        rig.run_dir.join("report.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    eprintln!("wrote {}/report.md and report.json", rig.run_dir.display());
    Ok(())
}

fn callgrind_control(control: &Path, args: &[&str], pid: u32) -> Result<()> {
    let out = Command::new(control)
        .args(args)
        .arg(pid.to_string())
        .output()
        .context("run callgrind_control")?;
    if !out.status.success() {
        bail!(
            "callgrind_control {args:?} {pid} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The `summary:` (or `totals:`) line of a callgrind dump: Ir in the dumped interval.
fn total_ir(dump: &str) -> Option<u64> {
    dump.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Self Ir per function from a callgrind dump (events: Ir only), the `n` largest. In the
/// format, `fn=(id) name` starts a function (later just `fn=(id)`); cost lines are
/// `position Ir`; the cost line right after a `calls=` line is the callee's inclusive cost and
/// not the caller's own.
fn self_costs(dump: &str, n: usize) -> Vec<(u64, String)> {
    use std::collections::HashMap;
    let mut names: HashMap<String, String> = HashMap::new();
    let mut costs: HashMap<String, u64> = HashMap::new();
    let (mut current, mut after_calls) = (None::<String>, false);
    for line in dump.lines() {
        if let Some(rest) = line.strip_prefix("fn=") {
            let (id, name) = match rest.split_once(' ') {
                Some((id, name)) => (id.to_owned(), Some(name.to_owned())),
                None => (rest.to_owned(), None),
            };
            if let Some(name) = name {
                names.insert(id.clone(), name);
            }
            current = Some(names.get(&id).cloned().unwrap_or(id));
            after_calls = false;
        } else if line.starts_with("calls=") {
            after_calls = true;
        } else if line.starts_with(|c: char| c.is_ascii_digit() || "+-*".contains(c)) {
            if after_calls {
                after_calls = false;
                continue;
            }
            let ir = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok());
            if let (Some(f), Some(ir)) = (&current, ir) {
                *costs.entry(f.clone()).or_default() += ir;
            }
        } else if let Some(rest) = line.strip_prefix("cfn=") {
            // Define compressed names that appear first as callees.
            if let Some((id, name)) = rest.split_once(' ') {
                names.insert(id.to_owned(), name.to_owned());
            }
        }
    }
    let mut out: Vec<(u64, String)> = costs.into_iter().map(|(f, c)| (c, f)).collect();
    out.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dump_and_annotation() {
        assert_eq!(total_ir("events: Ir\nsummary: 7655902\n"), Some(7_655_902));
        assert_eq!(total_ir("totals: 12\n"), Some(12));
        let dump = "events: Ir\nfn=(1) main\n10 5\ncfn=(2) work\ncalls=3 20\n11 100\n+1 2\n\
                    fn=(2)\n20 60\n+2 40\nfn=(3) idle\n* 7\n";
        let top = self_costs(dump, 5);
        assert_eq!(
            top,
            [
                (100, "work".to_owned()),
                (7, "idle".to_owned()),
                (7, "main".to_owned())
            ]
        );
    }
}
