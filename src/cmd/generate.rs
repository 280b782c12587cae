use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use emulator::generate::{generate, GenerateOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to write `<SNOWFLAKE_TABLE>.parquet` files into.
    #[arg(long)]
    out: PathBuf,
    /// Only these tables (floe, Snowflake or Postgres name); repeatable. Default: all.
    #[arg(long = "table")]
    tables: Vec<String>,
    /// Rows per table (default: each table's size from datasets.md).
    #[arg(long)]
    rows: Option<u64>,
    /// Seed: same seed, rows and tables give byte-identical files.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let options = GenerateOptions {
        out: args.out,
        tables: super::select_datasets(&args.tables)?,
        rows: args.rows,
        seed: args.seed,
    };
    let started = Instant::now();
    for g in generate(&options)? {
        println!("{:<22} {:>10} rows  {}", g.table, g.rows, g.path.display());
    }
    eprintln!("generated in {:.1}s", started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}
