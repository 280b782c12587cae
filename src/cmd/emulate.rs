use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use emulator::{Emulator, EmulatorConfig, Faults, User};

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
    /// Its RSA public key (PEM, as `ALTER USER ... SET RSA_PUBLIC_KEY` takes), for key-pair (JWT) login.
    #[arg(long)]
    public_key: Option<PathBuf>,
    /// An OAuth access token that logs in as the user.
    #[arg(long, env = "FLOE_EMULATOR_OAUTH_TOKEN", hide_env_values = true)]
    oauth_token: Option<String>,
    /// Milliseconds added to every chunk download (cloud storage's latency).
    #[arg(long, default_value_t = 0)]
    chunk_latency_ms: u64,
    /// Seconds a session token lives before the client must renew it.
    #[arg(long, default_value_t = emulator::SESSION_VALIDITY.as_secs())]
    session_validity: u64,
    /// Arm a fault: chunk-503[=N], slow-chunk-ms=MS, slow-chunks=N, truncated-chunk[=N],
    /// expire-session, expire-master, long-query-secs=S, login-failure[=N], query-error=CODE. Repeatable;
    /// also settable at runtime with `POST /floe/faults`.
    #[arg(long = "fault", value_name = "NAME[=VALUE]")]
    faults: Vec<String>,
    /// Change traffic on a grid table: ROWS_PER_SEC changed rows a second (≈70% updates with
    /// geometry, 20% inserts, 10% deletes), one commit every 100 ms. Repeatable.
    #[arg(long = "mutate", value_name = "TABLE=ROWS_PER_SEC", value_parser = parse_mutate)]
    mutate: Vec<(String, u32)>,
}

fn parse_mutate(s: &str) -> std::result::Result<(String, u32), String> {
    let (table, rate) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: write TABLE=ROWS_PER_SEC, e.g. TOPOLOGY=100"))?;
    let rate: u32 = rate
        .trim()
        .parse()
        .map_err(|_| format!("`{s}`: ROWS_PER_SEC must be a whole number"))?;
    Ok((table.trim().to_string(), rate))
}

pub async fn run(args: Args) -> Result<ExitCode> {
    let mut faults = Faults::default();
    for f in &args.faults {
        faults.set_arg(f).map_err(anyhow::Error::msg)?;
    }
    let rsa_public_key = match &args.public_key {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the public key {}", path.display()))?,
        ),
        None => None,
    };
    let emulator = Emulator::start(EmulatorConfig {
        data_dir: args.data,
        port: args.port,
        chunk_rows: args.chunk_rows,
        users: vec![User {
            name: args.user.clone(),
            password: Some(args.password),
            rsa_public_key,
            oauth_token: args.oauth_token,
        }],
        session_validity: std::time::Duration::from_secs(args.session_validity.max(1)),
        faults,
        chunk_latency: std::time::Duration::from_millis(args.chunk_latency_ms),
    })
    .await
    .context("starting the Snowflake emulator")?;
    for (table, rows_per_sec) in &args.mutate {
        emulator.mutate(table, *rows_per_sec)?;
    }
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
