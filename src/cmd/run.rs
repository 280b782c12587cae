use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use pipeline::run::{new_run_id, Cancel, RunOptions};

use crate::output::{run_tables, OutputFormat};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: super::TargetArgs,
    /// Only these tables (config, Postgres or Snowflake name); repeatable. Default: all.
    #[arg(long = "table")]
    tables: Vec<String>,
    /// Read every table from DIR/<SNOWFLAKE_TABLE>.parquet instead of its configured source.
    #[arg(long, conflicts_with = "incremental")]
    parquet: Option<PathBuf>,
    /// Apply each table's changes in Snowflake since its last load, in
    /// place; a full refresh where that is impossible (the report says why).
    #[arg(long)]
    incremental: bool,
    /// Let a refresh shrink a table by more than `load.max_shrink`, or empty it.
    #[arg(long)]
    allow_shrink: bool,
    /// Where to snapshot what each table read (directory or URL), overriding the config's `snapshot_dir`.
    #[arg(long, env = "FLOE_SNAPSHOT_DIR")]
    snapshot_dir: Option<String>,
    /// Do not snapshot this run.
    #[arg(long)]
    no_snapshot: bool,
    /// Parallel COPY sessions per table, overriding `load.copy_streams`.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=schemas::config::MAX_COPY_STREAMS as i64))]
    copy_streams: Option<u16>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
}

pub async fn run(args: Args) -> Result<ExitCode> {
    let (mut config, target) = args.common.resolve()?;
    if let Some(n) = args.copy_streams {
        config.load.copy_streams = n.into();
    }
    let tables = super::select_tables(&config, &args.tables)?;
    let (canceller, cancel) = Cancel::new();
    let signal = super::on_interrupt(canceller);
    let options = RunOptions {
        run_id: new_run_id(),
        parquet_dir: args.parquet,
        cancel,
        allow_shrink: args.allow_shrink,
        snapshots: match args.no_snapshot || !config.snapshots.enabled {
            true => None,
            false => Some(super::snapshot_plan(&config, args.snapshot_dir.as_deref())?),
        },
        replay: None,
        incremental: args.incremental,
        skip_if_busy: false,
        snowflake: None,
    };
    let reports = run_tables(&config, &tables, &target, &options, args.output).await;
    Ok(signal.exit_status(&reports))
}
