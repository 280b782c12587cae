//! `floe`: keeps PostGIS caches in sync with Snowflake, Arrow all the way.

mod cmd;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Arrow-native streaming ETL that mirrors Snowflake tables into PostGIS.
#[derive(Debug, Parser)]
#[command(name = "floe", version, about, long_about = None)]
struct Cli {
    /// More log output (-v: info, -vv: debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate the grid tables as parquet, shaped like decoded Snowflake results.
    Generate(cmd::generate::Args),
    /// Refresh PostGIS cache tables: read, transform, COPY into staging, verify, swap.
    Run(cmd::run::Args),
    /// Run the schedule as a service: daily full refresh, on-change incremental sync, /metrics.
    Watch(cmd::watch::Args),
    /// Generate data, serve it from the Snowflake emulator, load every table into a throwaway PostGIS, query it.
    Demo(cmd::demo::Args),
    /// Serve parquet files over the Snowflake connector protocol (for development and tests).
    EmulateSnowflake(cmd::emulate::Args),
    /// Show the last recorded runs per table (floe.sync_runs in the target).
    Status(cmd::status::Args),
    /// Load a table from a run's snapshot (no Snowflake): SNAPSHOT dir/URL, TABLE@RUN_ID or TABLE@latest.
    Replay(cmd::replay::Args),
    /// List, show, verify and prune run snapshots.
    Snapshots(cmd::snapshots::Args),
    /// Serve snapshots as Arrow Flight streams (ticket: table@run-id).
    ServeFlight(cmd::serve_flight::Args),
    /// Measure floe against Postgres's own ceiling (pre-encoded COPY), alternating runs: rows/s, MB/s, peak RSS, ratios, time by stage.
    Bench(cmd::bench::Args),
    /// Check the target: timeouts, PostGIS, sessions idle in transaction, cache tables vs their last run, staging leftovers, lock waits.
    Doctor(cmd::doctor::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Generate(args) => cmd::generate::run(args),
            Command::Run(args) => cmd::run::run(args).await,
            Command::Watch(args) => cmd::watch::run(args).await,
            Command::Demo(args) => cmd::demo::run(args).await,
            Command::EmulateSnowflake(args) => cmd::emulate::run(args).await,
            Command::Status(args) => cmd::status::run(args).await,
            Command::Doctor(args) => cmd::doctor::run(args).await,
            Command::Replay(args) => cmd::replay::run(args).await,
            Command::Bench(args) => cmd::bench::run(args).await,
            Command::Snapshots(args) => cmd::snapshots::run(args).await,
            Command::ServeFlight(args) => cmd::serve_flight::run(args).await,
        }
    });
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    };
    // The command has finished its work and its output (stdout is flushed
    // as the process exits). Its runtime's idle threads are not waited for:
    // each would trim its heap on the way out, a millisecond or more at the
    // end of a one-table run (BENCHMARKS.md).
    runtime.shutdown_background();
    code
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
