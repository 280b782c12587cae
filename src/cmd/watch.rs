//! `floe watch`: run the schedule (daily full refresh, on-change
//! incremental sync) until SIGTERM/SIGINT, serving `/metrics`, `/healthz`
//! and `/status`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use pipeline::run::{Cancel, TableReport};
use pipeline::watch::Watch;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: super::TargetArgs,
    /// Only these tables (config, Postgres or Snowflake name); repeatable. Default: all.
    #[arg(long = "table")]
    tables: Vec<String>,
    /// Address for /metrics, /healthz and /status, overriding `watch.listen` (port 0: any free port).
    #[arg(long)]
    listen: Option<String>,
    /// Where to snapshot what each run read, overriding the config's `snapshot_dir`.
    #[arg(long, env = "FLOE_SNAPSHOT_DIR")]
    snapshot_dir: Option<String>,
    /// Do not snapshot the runs.
    #[arg(long)]
    no_snapshot: bool,
}

pub async fn run(args: Args) -> Result<ExitCode> {
    let (config, target) = args.common.resolve()?;
    let tables = super::select_tables(&config, &args.tables)?;
    let snapshots = match args.no_snapshot || !config.snapshots.enabled {
        true => None,
        false => Some(super::snapshot_plan(&config, args.snapshot_dir.as_deref())?),
    };
    let watch = Watch::new(&config, &tables, target, snapshots)?;
    let listen = args.listen.as_deref().unwrap_or(&config.watch.listen);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (watch.listen or --listen)"))?;
    let addr = listener.local_addr()?;
    println!(
        "floe watch: {} table(s); metrics http://{addr}/metrics, health http://{addr}/healthz, status http://{addr}/status",
        tables.len()
    );
    let (stopper, stop) = Cancel::new();
    tokio::spawn(async move {
        wait_for_signal().await;
        eprintln!(
            "floe watch: stopping (no new runs; running loads get watch.drain_timeout to finish)"
        );
        stopper.cancel();
    });
    let mut reports = watch.reports();
    let printer = tokio::spawn(async move {
        while let Ok(r) = reports.recv().await {
            println!("{}", line(&r));
        }
    });
    let (_, served) = tokio::join!(
        watch.run(stop.clone()),
        pipeline::watch::serve(&watch, listener, stop)
    );
    printer.abort();
    served.context("serving /metrics")?;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM or SIGINT (Ctrl-C).
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// One line per finished run: what it applied and how far behind it left the table.
pub fn line(r: &TableReport) -> String {
    let now = chrono::Utc::now();
    let what = match (&r.changes, &r.error) {
        (_, Some(e)) => format!("FAILED: {e}"),
        (Some(c), None) => {
            let lag = chrono::DateTime::parse_from_rfc3339(&c.window.end)
                .map(|end| (now - end.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1e3)
                .map(|s| format!(", lag {s:.1}s"))
                .unwrap_or_default();
            format!(
                "+{} inserted, ~{} updated, -{} deleted{lag}",
                c.rows_inserted, c.rows_updated, c.rows_deleted
            )
        }
        (None, None) => format!(
            "{} rows{}",
            r.final_count.unwrap_or(r.rows_synced),
            r.reason
                .map(|f| format!(" (instead of incremental: {f})"))
                .unwrap_or_default()
        ),
    };
    format!(
        "{}  {:<24} {:<11} {:<9} {what}  ({:.2}s)",
        now.format("%H:%M:%S"),
        r.name,
        r.mode.as_str(),
        r.status,
        r.seconds
    )
}
