//! `floe serve-flight`: snapshots as Arrow Flight streams.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use anyhow::{anyhow, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Snapshot directory or URL (default: the config's `snapshot_dir`).
    #[arg(long, env = "FLOE_SNAPSHOT_DIR")]
    snapshots: Option<String>,
    /// Config file (default: ./floe.toml, else the shipped grid config).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 50051)]
    port: u16,
    /// Address to listen on. There is no authentication: keep it local or on a trusted network.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
}

pub async fn run(args: Args) -> Result<ExitCode> {
    let config = super::load_config(args.config.as_deref())?;
    let location = super::snapshot_location(&config, args.snapshots.as_deref())?;
    let listener = pipeline::flight::bind(SocketAddr::new(args.bind, args.port))
        .await
        .map_err(|e| anyhow!(e))?;
    let addr = listener.local_addr()?;
    // The first stdout line says where, so scripts and tests can connect.
    println!(
        "serving snapshots from {} on grpc://{addr}",
        location.display()
    );
    eprintln!("tickets are table@run-id or table@latest; Ctrl-C stops");
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    pipeline::flight::serve_on(location, listener, config.load.batch_size, shutdown)
        .await
        .map_err(|e| anyhow!(e))?;
    Ok(ExitCode::SUCCESS)
}
