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
    fs::write(&config, edgeplane_config(&rig.catalog, 64, None, None))?;
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
    callgrind_control(&control, &["--zero"], pid)?;
    let n = args.callgrind_requests;
    header(&format!(
        "{n} counted requests (64 KiB ranges, {CONNECTIONS} connections)"
    ));
    load(n)?;
    callgrind_control(&control, &["--dump"], pid)?;
    server.stop_expect_success()?;
    let dump = rig.run_dir.join("callgrind.out.1");
    let text = fs::read_to_string(&dump).with_context(|| format!("read {}", dump.display()))?;
    let total = total_ir(&text).context("no summary: line in the callgrind dump")?;
    let top = Command::new(&annotate)
        .arg("--inclusive=no")
        .arg(&dump)
        .output()
        .context("run callgrind_annotate")?;
    let annotated = String::from_utf8_lossy(&top.stdout).into_owned();
    fs::write(rig.run_dir.join("callgrind-annotate.txt"), &annotated)?;
    let functions = top_functions(&annotated, 20);
    let per_request = total as f64 / n as f64;
    let mut md = format!(
        "# edgeplane instructions per request (callgrind): {}\n\n\
         - {n} requests of 64 KiB ranges over {CONNECTIONS} keep-alive connections, closed \
         loop, after {WARMUP_REQUESTS} warm-up requests; counters zeroed before and dumped after \
         (idle event-loop turns in between are included)\n\
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

/// The first `n` function lines of callgrind_annotate: (Ir, `file:function [object]`).
fn top_functions(annotated: &str, n: usize) -> Vec<(u64, String)> {
    annotated
        .lines()
        .filter(|l| !l.contains("PROGRAM TOTALS"))
        .filter_map(|l| {
            let l = l.trim();
            let (num, rest) = l.split_once(' ')?;
            let ir: u64 = num.replace(',', "").parse().ok()?;
            let rest = rest.trim_start();
            // "(12.34%)  file:function [object]"
            let rest = rest.strip_prefix('(').map_or(rest, |r| {
                r.split_once(')').map_or(r, |(_, after)| after.trim_start())
            });
            (!rest.is_empty()).then(|| (ir, rest.to_owned()))
        })
        .take(n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dump_and_annotation() {
        assert_eq!(total_ir("events: Ir\nsummary: 7655902\n"), Some(7_655_902));
        assert_eq!(total_ir("totals: 12\n"), Some(12));
        let ann = "--------\nIr\n--------\n80,616,845 (100.0%)  PROGRAM TOTALS\n\n\
                   3,506,891 ( 4.35%)  ./string/memmove.S:__memcpy_avx [/usr/lib/libc.so.6]\n\
                   1,657,920 ( 2.06%)  cell.rs:core::cell::RefCell<T>::borrow_mut [/e]\n";
        let top = top_functions(ann, 5);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].0, 3_506_891);
        assert_eq!(top[1].1, "cell.rs:core::cell::RefCell<T>::borrow_mut [/e]");
    }
}
