//! Developer tasks for edgeplane: `cargo xtask ci | demo | bench`.

mod bench;
mod catalog;
mod ci;
mod demo;
mod server;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Developer tasks for edgeplane")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// fmt --check, clippy -D warnings and the workspace tests, in that order.
    Ci,
    /// Build edgeplane, serve a small demo catalog and fetch from it with curl.
    Demo,
    /// Compare edgeplane with nginx (sendfile) under wrk: throughput and server CPU per GiB.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Ci => ci::run(),
        Task::Demo => demo::run(),
        Task::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
