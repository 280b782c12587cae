//! `floe bench --incremental`: what an incremental run costs by the size of
//! its window, against a full refresh of the same table in the same run.
//! The changes are made in the emulator between runs (70% updates that move
//! the geometry, 20% inserts, 10% deletes), then `floe run --incremental`
//! runs as a child process, timed from start (login included) to exit.

use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use pipeline::source::snowflake::SnowflakeSession;
use schemas::config::{Config, SnowflakeConfig};
use serde::Serialize;

use super::bench::{measure, Args, Sample, Spread};
use crate::output::OutputFormat;

/// Changed rows per window measured.
const WINDOWS: [u64; 3] = [100, 1_000, 10_000];
/// Goal: 1,000 changes applied in at most this many seconds.
const GOAL_1000_SECONDS: f64 = 1.0;
/// Goal: 10,000 changes in under this share of a full refresh.
const GOAL_10000_SHARE: f64 = 0.1;
/// The generator's first topology key (ids are consecutive from it).
const FIRST_ID: u64 = 1_000_000;

/// What the bench needs from `floe bench`'s set-up.
pub struct Bench<'a> {
    pub args: &'a Args,
    pub config: &'a Config,
    pub name: &'a str,
    pub snowflake_table: &'a str,
    pub url: &'a str,
    pub password: &'a str,
    pub port: u16,
}

#[derive(Debug, Serialize)]
struct Report {
    table: String,
    rows: u64,
    repeats: usize,
    cpus: usize,
    profile: &'static str,
    full_refresh: Measured,
    windows: Vec<Window>,
}

#[derive(Debug, Serialize)]
struct Measured {
    seconds: Spread,
    peak_rss_bytes: u64,
}

#[derive(Debug, Serialize)]
struct Window {
    changes: u64,
    /// `floe run --incremental`, process start to exit.
    seconds: Spread,
    /// The apply transaction alone.
    apply_seconds: Spread,
    peak_rss_bytes: u64,
    /// Of the last run: (inserted, updated, deleted).
    applied: (u64, u64, u64),
    /// Median seconds over the full refresh's median.
    share_of_full_refresh: f64,
    goal: Option<String>,
    goal_met: Option<bool>,
}

impl Bench<'_> {
    pub async fn run(&self) -> Result<ExitCode> {
        if self.snowflake_table != "FLUX_OPS_CENTER_TOPOLOGY" {
            bail!("floe bench --incremental makes its changes in the topology table; use --table topology");
        }
        let (session, rows) = self.tracked().await?;

        eprintln!("full refreshes through the emulator (the baseline) ...");
        let mut full = Vec::new();
        for _ in 0..self.args.repeats {
            full.push(measure(&mut self.floe_run(false))?);
        }
        let full_median = Spread::of(&full.iter().map(|s| s.seconds).collect::<Vec<_>>()).median;

        let mut cursor = 0u64;
        let mut windows = Vec::new();
        for changes in WINDOWS {
            let mut samples = Vec::new();
            for _ in 0..self.args.repeats {
                self.change(&session, changes, cursor).await?;
                cursor += changes;
                let s = measure(&mut self.floe_run(true))?;
                if s.report["mode"] != "incremental" {
                    bail!("the run was not incremental: {}", s.report);
                }
                samples.push(s);
            }
            eprintln!("{changes} changes: done");
            windows.push(window(changes, &samples, full_median));
        }
        session.logout().await;
        let report = Report {
            table: self.name.to_string(),
            rows,
            repeats: self.args.repeats,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            profile: if cfg!(debug_assertions) {
                "dev"
            } else {
                "release"
            },
            full_refresh: Measured {
                seconds: Spread::of(&full.iter().map(|s| s.seconds).collect::<Vec<_>>()),
                peak_rss_bytes: full.iter().map(|s| s.peak_rss).max().unwrap_or(0),
            },
            windows,
        };
        match self.args.output {
            OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            OutputFormat::Text => print_text(&report),
        }
        Ok(ExitCode::SUCCESS)
    }

    /// A session on the emulator with change tracking on the table, and its row count.
    pub(super) async fn tracked(&self) -> Result<(SnowflakeSession, u64)> {
        let session = SnowflakeSession::login(&self.snowflake_config())
            .await
            .context("logging in to the emulator")?;
        session
            .execute(&format!(
                "ALTER TABLE {} SET CHANGE_TRACKING = TRUE",
                self.snowflake_table
            ))
            .await?;
        let rows = self.count(&session).await?;
        Ok((session, rows))
    }

    pub(super) fn snowflake_config(&self) -> SnowflakeConfig {
        SnowflakeConfig {
            account: Some("emulator".into()),
            user: Some("floe".into()),
            password: Some(self.password.to_string().into()),
            host: Some("127.0.0.1".into()),
            port: Some(self.port),
            protocol: Some("http".into()),
            ..self.config.snowflake.clone()
        }
    }

    pub(super) async fn count(&self, session: &SnowflakeSession) -> Result<u64> {
        let result = session
            .query(&format!("SELECT COUNT(*) FROM {}", self.snowflake_table))
            .await?;
        let batches: Vec<arrow::record_batch::RecordBatch> =
            futures::TryStreamExt::try_collect(session.stream(result)).await?;
        let batch = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .context("COUNT(*) returned no row")?;
        Ok(arrow::util::display::array_value_to_string(batch.column(0), 0)?.parse()?)
    }

    /// `changes` rows changed in the source from key `FIRST_ID + cursor` on:
    /// 70% updated (both ends of the line moved), 10% deleted, 20% inserted
    /// (copies of the next rows under new keys).
    async fn change(&self, session: &SnowflakeSession, changes: u64, cursor: u64) -> Result<()> {
        let t = self.snowflake_table;
        let updates = changes * 7 / 10;
        let deletes = changes / 10;
        let inserts = changes - updates - deletes;
        let a = FIRST_ID + cursor;
        let (b, c) = (a + updates, a + updates + deletes);
        for sql in [
            format!(
                "UPDATE {t} SET FROM_LATITUDE = FROM_LATITUDE + 0.0001, TO_LONGITUDE = TO_LONGITUDE - 0.0001 \
                 WHERE CONNECTION_ID >= {a} AND CONNECTION_ID < {b}"
            ),
            format!("DELETE FROM {t} WHERE CONNECTION_ID >= {b} AND CONNECTION_ID < {c}"),
            format!(
                "INSERT INTO {t} SELECT CONNECTION_ID + 500000000, FROM_ASSET_ID, TO_ASSET_ID, \
                 FROM_ASSET_TYPE, TO_ASSET_TYPE, CIRCUIT_ID, FEEDER_ID, SUBSTATION_ID, PHASE, VOLTAGE_KV, \
                 FROM_LATITUDE, FROM_LONGITUDE, TO_LATITUDE, TO_LONGITUDE, LENGTH_M, IS_ENERGIZED, \
                 INSTALLED_DATE, UPDATED_AT, ATTRIBUTES FROM {t} \
                 WHERE CONNECTION_ID >= {c} AND CONNECTION_ID < {}",
                c + inserts
            ),
        ] {
            session
                .execute(&sql)
                .await
                .with_context(|| format!("changing the source: {sql}"))?;
        }
        Ok(())
    }

    pub(super) fn floe_run(&self, incremental: bool) -> Command {
        let mut c = Command::new(std::env::current_exe().unwrap_or_else(|_| "floe".into()));
        c.arg("run");
        if let Some(p) = &self.args.config {
            c.arg("--config").arg(p);
        }
        c.args([
            "--table",
            self.name,
            "--target",
            self.url,
            "--no-snapshot",
            "--output",
            "json",
        ]);
        if incremental {
            c.arg("--incremental");
        } else {
            c.arg("--allow-shrink");
        }
        c.envs([
            ("SNOWFLAKE_ACCOUNT", "emulator".to_string()),
            ("SNOWFLAKE_USER", "floe".into()),
            ("SNOWFLAKE_PASSWORD", self.password.to_string()),
            ("SNOWFLAKE_HOST", "127.0.0.1".into()),
            ("SNOWFLAKE_PORT", self.port.to_string()),
            ("SNOWFLAKE_PROTOCOL", "http".into()),
        ]);
        c.env_remove("FLOE_TARGET_URL");
        c
    }
}

fn window(changes: u64, samples: &[Sample], full_median: f64) -> Window {
    let seconds = Spread::of(&samples.iter().map(|s| s.seconds).collect::<Vec<_>>());
    let apply = Spread::of(
        &samples
            .iter()
            .map(|s| s.report["apply_seconds"].as_f64().unwrap_or(f64::NAN))
            .collect::<Vec<_>>(),
    );
    let last = samples.last().map(|s| &s.report);
    let n = |k: &str| last.and_then(|r| r[k].as_u64()).unwrap_or(0);
    let share = seconds.median / full_median;
    let (goal, goal_met) = match changes {
        1_000 => (
            Some(format!("≤ {GOAL_1000_SECONDS} s")),
            Some(seconds.median <= GOAL_1000_SECONDS),
        ),
        10_000 => (
            Some(format!("< {GOAL_10000_SHARE} of a full refresh")),
            Some(share < GOAL_10000_SHARE),
        ),
        _ => (None, None),
    };
    Window {
        changes,
        seconds,
        apply_seconds: apply,
        peak_rss_bytes: samples.iter().map(|s| s.peak_rss).max().unwrap_or(0),
        applied: (n("rows_inserted"), n("rows_updated"), n("rows_deleted")),
        share_of_full_refresh: share,
        goal,
        goal_met,
    }
}

fn print_text(r: &Report) {
    println!(
        "{}: {} rows; {} repeats, {} CPUs, {} build",
        r.table, r.rows, r.repeats, r.cpus, r.profile
    );
    println!(
        "full refresh through the emulator: median {:.2} s ({:.2}–{:.2}), peak RSS {} MiB",
        r.full_refresh.seconds.median,
        r.full_refresh.seconds.min,
        r.full_refresh.seconds.max,
        r.full_refresh.peak_rss_bytes >> 20
    );
    println!(
        "{:>8} {:>9} {:>15} {:>9} {:>9} {:>8} {:>18}  goal",
        "changes", "median s", "min–max s", "apply s", "peak RSS", "of full", "ins/upd/del"
    );
    for w in &r.windows {
        let goal = match (&w.goal, w.goal_met) {
            (Some(g), Some(true)) => format!("{g} met"),
            (Some(g), _) => format!("{g} NOT met"),
            _ => String::new(),
        };
        println!(
            "{:>8} {:>9.3} {:>7.3}–{:<7.3} {:>9.3} {:>5} MiB {:>7.1}% {:>18}  {goal}",
            w.changes,
            w.seconds.median,
            w.seconds.min,
            w.seconds.max,
            w.apply_seconds.median,
            w.peak_rss_bytes >> 20,
            w.share_of_full_refresh * 100.0,
            format!("{}/{}/{}", w.applied.0, w.applied.1, w.applied.2)
        );
    }
}
