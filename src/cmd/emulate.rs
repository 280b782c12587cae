use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use emulator::{Emulator, EmulatorConfig};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory of `<SNOWFLAKE_TABLE>.parquet` files to serve (e.g. from `floe generate`).
    #[arg(long)]
    data: PathBuf,
    /// Port on 127.0.0.1 (default: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Rows per result chunk.
    #[arg(long, default_value_t = 10_000)]
    chunk_rows: usize,
    /// The user that may log in.
    #[arg(long, default_value = "floe")]
    user: String,
    /// Its password.
    #[arg(
        long,
        env = "SNOWFLAKE_PASSWORD",
        hide_env_values = true,
        default_value = "floe"
    )]
    password: String,
}

pub async fn run(args: Args) -> Result<ExitCode> {
    let emulator = Emulator::start(EmulatorConfig {
        data_dir: args.data,
        port: args.port,
        chunk_rows: args.chunk_rows,
        users: vec![(args.user.clone(), args.password)],
    })
    .await
    .context("starting the Snowflake emulator")?;
    // The server must outlive whoever reads this banner: a closed stdout is not an error.
    let banner = format!(
        "Snowflake emulator listening on {}\ntables: {}\nconnect with: SNOWFLAKE_PROTOCOL=http SNOWFLAKE_HOST=127.0.0.1 SNOWFLAKE_PORT={} SNOWFLAKE_ACCOUNT=emulator SNOWFLAKE_USER={}\n",
        emulator.url(),
        emulator.tables().join(", "),
        emulator.port(),
        args.user
    );
    let mut out = std::io::stdout();
    let _ = out.write_all(banner.as_bytes()).and_then(|_| out.flush());
    tokio::select! {
        _ = emulator.wait() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(ExitCode::SUCCESS)
}
