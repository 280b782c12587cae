//! `floe snapshots list|show|verify|prune`: what runs kept, and whether it is intact.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use pipeline::snapshot::{self, Location, SnapshotInfo, SnapshotRef};
use schemas::config::Config;
use serde::Serialize;

use crate::output::OutputFormat;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

/// Where the snapshots are: the config's `snapshot_dir`, or `--snapshot-dir`.
#[derive(Debug, clap::Args)]
pub struct Where {
    /// Config file (default: ./floe.toml, else the shipped grid config).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Snapshot directory or URL, overriding the config's `snapshot_dir`.
    #[arg(long, env = "FLOE_SNAPSHOT_DIR")]
    snapshot_dir: Option<String>,
}

impl Where {
    pub fn resolve(&self) -> Result<(Config, Location)> {
        let config = super::load_config(self.config.as_deref())?;
        let location = super::snapshot_location(&config, self.snapshot_dir.as_deref())?;
        Ok((config, location))
    }
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Snapshots with their status, rows and size, newest first per table.
    List {
        #[command(flatten)]
        at: Where,
        /// Only this table (config, Postgres or Snowflake name).
        #[arg(long)]
        table: Option<String>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// One snapshot's manifest.
    Show {
        /// A snapshot directory or URL, TABLE@RUN_ID or TABLE@latest.
        snapshot: String,
        #[command(flatten)]
        at: Where,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Re-read snapshots against their manifests (sizes, SHA-256, row counts, schema). Default: every complete one.
    Verify {
        /// Snapshots (directory or URL, TABLE@RUN_ID, TABLE@latest).
        snapshots: Vec<String>,
        #[command(flatten)]
        at: Where,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Delete old snapshots; the newest complete one of each table is always kept.
    Prune {
        /// Keep the newest N complete snapshots of each table.
        #[arg(long)]
        keep: Option<usize>,
        /// Delete only snapshots older than this (e.g. 30d, 12h).
        #[arg(long, value_parser = schemas::duration::parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Only this table.
        #[arg(long)]
        table: Option<String>,
        /// Print what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        at: Where,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
}

/// `TABLE@RUN_ID`, `TABLE@latest` (table by any of its names), or a
/// snapshot's own directory or URL.
pub async fn resolve(config: &Config, location: &Location, spec: &str) -> Result<SnapshotRef> {
    if let Some((table, run)) = spec.rsplit_once('@') {
        if !table.contains('/') && !run.contains('/') {
            let name = match config.find_table(table) {
                Some((name, _)) => name.to_string(),
                None => table.to_string(),
            };
            return Ok(location.resolve(&name, run).await?);
        }
    }
    Ok(SnapshotRef::at(spec)?)
}

#[derive(Serialize)]
struct Listed {
    table: String,
    run_id: String,
    /// `full`, or `changes` (an incremental run's change set).
    kind: &'static str,
    status: &'static str,
    rows: Option<u64>,
    files: usize,
    bytes: u64,
    started_at: Option<String>,
    finished_at: Option<String>,
    source: Option<snapshot::SnapshotSource>,
    location: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn listed(s: &SnapshotInfo) -> Listed {
    let m = s.manifest.as_ref();
    Listed {
        table: s.table.clone(),
        run_id: s.run_id.clone(),
        kind: s.kind(),
        status: s.status(),
        rows: m.map(|m| m.rows),
        files: s.files,
        bytes: s.bytes,
        started_at: m.map(|m| m.started_at.to_rfc3339()),
        finished_at: m.and_then(|m| m.finished_at).map(|t| t.to_rfc3339()),
        source: m.map(|m| m.source.clone()),
        location: s.snapshot.url(),
        error: m
            .and_then(|m| m.error.clone())
            .or_else(|| s.problem.clone()),
    }
}

pub fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn table_filter(config: &Config, table: Option<&str>) -> Option<String> {
    table.map(|t| match config.find_table(t) {
        Some((name, _)) => name.to_string(),
        None => t.to_string(),
    })
}

pub async fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        Command::List { at, table, output } => {
            let (config, location) = at.resolve()?;
            let only = table_filter(&config, table.as_deref());
            let all: Vec<Listed> = location
                .list()
                .await?
                .iter()
                .filter(|s| only.as_ref().is_none_or(|t| *t == s.table))
                .map(listed)
                .collect();
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&all)?),
                OutputFormat::Text if all.is_empty() => {
                    println!("no snapshots in {}", location.display())
                }
                OutputFormat::Text => {
                    println!(
                        "{:<22} {:<22} {:<8} {:<12} {:>10} {:>5} {:>10}  started",
                        "table", "run_id", "kind", "status", "rows", "files", "size"
                    );
                    for l in &all {
                        println!(
                            "{:<22} {:<22} {:<8} {:<12} {:>10} {:>5} {:>10}  {}",
                            l.table,
                            l.run_id,
                            l.kind,
                            l.status,
                            l.rows.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
                            l.files,
                            human_bytes(l.bytes),
                            l.started_at.as_deref().unwrap_or("-")
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show {
            snapshot,
            at,
            output,
        } => {
            let (config, location) = at.resolve()?;
            let s = resolve(&config, &location, &snapshot).await?;
            let m = s.manifest().await?;
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&m)?),
                OutputFormat::Text => {
                    println!("snapshot  {} ({})", s.name(), s.url());
                    println!("table     {}  run {}", m.table, m.run_id);
                    println!(
                        "status    {:?}{}",
                        m.status,
                        m.error
                            .as_deref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    );
                    println!("source    {}", serde_json::to_string(&m.source)?);
                    println!(
                        "rows      {} in {} files, {}",
                        m.rows,
                        m.files.len(),
                        human_bytes(m.bytes)
                    );
                    println!(
                        "started   {}  finished {}",
                        m.started_at.to_rfc3339(),
                        m.finished_at
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_else(|| "-".into())
                    );
                    println!("floe      {}", m.floe_version);
                    println!("columns");
                    for f in &m.schema {
                        println!("  {}", f.describe());
                    }
                    println!("files");
                    for f in &m.files {
                        println!(
                            "  {}  {:>10} rows  {:>10}  sha256 {}",
                            f.path,
                            f.rows,
                            human_bytes(f.bytes),
                            f.sha256
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            snapshots,
            at,
            output,
        } => {
            let (config, location) = at.resolve()?;
            let refs = if snapshots.is_empty() {
                location
                    .list()
                    .await?
                    .into_iter()
                    // Change sets too: their files are checked the same way.
                    .filter(|s| s.status() == "complete")
                    .map(|s| s.snapshot)
                    .collect()
            } else {
                let mut refs = Vec::new();
                for s in &snapshots {
                    refs.push(resolve(&config, &location, s).await?);
                }
                refs
            };
            #[derive(Serialize)]
            struct Checked {
                snapshot: String,
                ok: bool,
                rows: Option<u64>,
                error: Option<String>,
            }
            let mut results = Vec::new();
            for s in refs {
                let r = snapshot::verify(&s).await;
                results.push(Checked {
                    snapshot: s.name().to_string(),
                    ok: r.is_ok(),
                    rows: r.as_ref().ok().map(|v| v.manifest.rows),
                    error: r.err().map(|e| e.to_string()),
                });
            }
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&results)?),
                OutputFormat::Text => {
                    if results.is_empty() {
                        println!("no complete snapshots in {}", location.display());
                    }
                    for r in &results {
                        match &r.error {
                            None => {
                                println!("ok      {} ({} rows)", r.snapshot, r.rows.unwrap_or(0))
                            }
                            Some(e) => println!("FAILED  {e}"),
                        }
                    }
                }
            }
            Ok(if results.iter().all(|r| r.ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Prune {
            keep,
            older_than,
            table,
            dry_run,
            at,
            output,
        } => {
            if keep.is_none() && older_than.is_none() {
                bail!("say what to keep: --keep N and/or --older-than DURATION");
            }
            let (config, location) = at.resolve()?;
            let only = table_filter(&config, table.as_deref());
            let all: Vec<SnapshotInfo> = location
                .list()
                .await?
                .into_iter()
                .filter(|s| only.as_ref().is_none_or(|t| *t == s.table))
                .collect();
            let decisions = snapshot::plan_prune(all, keep, older_than, chrono::Utc::now());
            #[derive(Serialize)]
            struct Decided {
                table: String,
                run_id: String,
                kind: &'static str,
                status: &'static str,
                bytes: u64,
                action: &'static str,
                reason: &'static str,
            }
            let mut out = Vec::new();
            for d in &decisions {
                let action = match (d.delete, dry_run) {
                    (false, _) => "keep",
                    (true, true) => "would delete",
                    (true, false) => {
                        location.delete(&d.info.snapshot).await?;
                        "deleted"
                    }
                };
                out.push(Decided {
                    table: d.info.table.clone(),
                    run_id: d.info.run_id.clone(),
                    kind: d.info.kind(),
                    status: d.info.status(),
                    bytes: d.info.bytes,
                    action,
                    reason: d.reason,
                });
            }
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&out)?),
                OutputFormat::Text => {
                    for d in &out {
                        println!(
                            "{:<13} {:<22} {:<22} {:<12} {:>10}  {}",
                            d.action,
                            d.table,
                            d.run_id,
                            d.status,
                            human_bytes(d.bytes),
                            d.reason
                        );
                    }
                    let freed: u64 = out
                        .iter()
                        .filter(|d| d.action != "keep")
                        .map(|d| d.bytes)
                        .sum();
                    println!(
                        "{} {} snapshots, {}",
                        if dry_run { "would free" } else { "freed" },
                        out.iter().filter(|d| d.action != "keep").count(),
                        human_bytes(freed)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
