use std::process::ExitCode;

use anyhow::{Context, Result};
use pipeline::postgres::{runs, state};

use crate::output::OutputFormat;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: super::TargetArgs,
    /// Only these tables (config name or Postgres table); repeatable. Default: all recorded.
    #[arg(long = "table")]
    tables: Vec<String>,
    /// Runs shown per table, newest first.
    #[arg(long, default_value_t = 5)]
    last: i64,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
}

/// `floe status`: each table's watermark and lag from `floe.sync_state`,
/// then the last runs per table from `floe.sync_runs`.
pub async fn run(args: Args) -> Result<ExitCode> {
    let (config, target) = args.common.resolve()?;
    // Config names and Postgres names both select; resolve config names to targets.
    let tables: Vec<String> = args
        .tables
        .iter()
        .flat_map(|t| match config.find_table(t) {
            Some((name, tc)) => vec![name.to_string(), format!("{}.{}", target.schema, tc.target)],
            None => vec![t.clone()],
        })
        .collect();
    let session = target
        .connect(
            &pipeline::postgres::application_name(&["status"]),
            &config.load,
        )
        .await
        .context("connecting to the target")?;
    let records = runs::last_runs(&session.client, &tables, args.last.max(1))
        .await
        .context("reading floe.sync_runs")?;
    let states = state::list(&session.client, &tables)
        .await
        .context("reading floe.sync_state")?;
    // The schedule `floe watch` keeps for each table (from the config).
    let now = chrono::Utc::now();
    let schedules: Vec<Schedule> = states
        .iter()
        .map(|s| match config.schedule(&s.table) {
            Ok(sch) => Schedule {
                full_refresh: sch.full_refresh().map(str::to_string),
                timezone: sch.timezone().name().to_string(),
                next_full_refresh: sch.next_full_after(now),
                incremental_every_seconds: sch.incremental_every.map(|d| d.as_secs()),
            },
            Err(_) => Schedule::default(),
        })
        .collect();
    match args.output {
        OutputFormat::Json => {
            let tables: Vec<serde_json::Value> = states
                .iter()
                .zip(&schedules)
                .map(|(s, sch)| {
                    let mut v = serde_json::to_value(s)?;
                    v["schedule"] = serde_json::to_value(sch)?;
                    Ok(v)
                })
                .collect::<Result<_, serde_json::Error>>()?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "tables": tables,
                    "runs": records,
                }))?
            )
        }
        OutputFormat::Text => {
            if !states.is_empty() {
                println!(
                    "{:<34} {:<28} {:>10} {:<21}  {:<22} {:>6}",
                    "target",
                    "watermark (UTC)",
                    "lag",
                    "last full refresh",
                    "next full (watch)",
                    "every"
                );
                for (s, sch) in states.iter().zip(&schedules) {
                    println!(
                        "{:<34} {:<28} {:>10} {:<21}  {:<22} {:>6}",
                        s.target,
                        s.watermark.as_deref().unwrap_or("- (not from Snowflake)"),
                        s.lag_seconds
                            .map(|l| format!("{l:.1}s"))
                            .unwrap_or_else(|| "-".into()),
                        s.last_full_refresh,
                        sch.next_full_refresh
                            .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                            .unwrap_or_else(|| "off".into()),
                        sch.incremental_every_seconds
                            .map(|n| format!("{n}s"))
                            .unwrap_or_else(|| "off".into()),
                    );
                }
                println!();
            }
            if records.is_empty() {
                println!("no runs recorded in {} yet", target.display());
            } else {
                println!(
                    "{:<12} {:<11} {:<34} {:<22} {:<21} {:>8} {:>10} {:>11}  error",
                    "status",
                    "mode",
                    "target",
                    "run",
                    "started (UTC)",
                    "seconds",
                    "rows_read",
                    "final_count"
                );
            }
            for r in &records {
                let n = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
                println!(
                    "{:<12} {:<11} {:<34} {:<22} {:<21} {:>8} {:>10} {:>11}  {}",
                    r.status,
                    match &r.reason {
                        Some(reason) => format!("{}({reason})", r.mode),
                        None => r.mode.clone(),
                    },
                    r.target,
                    r.run_id,
                    r.started_at,
                    r.seconds
                        .map(|s| format!("{s:.2}"))
                        .unwrap_or_else(|| "-".into()),
                    n(r.rows_read),
                    n(r.final_count),
                    r.error
                        .as_deref()
                        .unwrap_or("")
                        .lines()
                        .next()
                        .unwrap_or("")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A table's `floe watch` schedule, as `floe status` shows it.
#[derive(Debug, Default, serde::Serialize)]
struct Schedule {
    full_refresh: Option<String>,
    timezone: String,
    next_full_refresh: Option<chrono::DateTime<chrono::Utc>>,
    incremental_every_seconds: Option<u64>,
}
