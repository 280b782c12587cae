//! `floe bench --watch`: how far behind Snowflake `floe watch` keeps the
//! cache under steady change, and what it costs when nothing changes.
//!
//! `floe watch` runs as a child process (its CPU and RSS are its own). The
//! bench commits changes in the emulator at a steady rate: each commit
//! updates a few topology rows (moving their geometry) and tags them with a
//! marker; a Postgres poller (a primary-key lookup every 50 ms) notes when
//! each commit's marker becomes visible in the cache. Lag = visible − the
//! commit's return. Then an idle phase counts the warehouse queries the
//! emulator saw (every statement that is not a metadata lookup).

use std::collections::VecDeque;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use schemas::config::SnowflakeConfig;
use serde::Serialize;

use super::bench::KillOnDrop;
use super::bench_incremental::Bench;
use crate::output::OutputFormat;

/// The generator's first topology key.
const FIRST_ID: u64 = 1_000_000;
/// Commits a second; the rate in rows is spread over them.
const COMMITS_PER_SEC: u64 = 10;

/// What `--watch` is told beyond `floe bench`'s own arguments.
#[derive(Debug, Clone)]
pub struct WatchBench {
    pub interval: String,
    pub minutes: u64,
    pub idle_minutes: u64,
    pub rows_per_sec: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    table: String,
    rows: u64,
    interval: String,
    rows_per_sec: u64,
    minutes: u64,
    profile: &'static str,
    cpus: usize,
    commits: usize,
    /// Changed rows a second actually committed (the emulator may not keep up).
    achieved_rows_per_sec: f64,
    lag_seconds: Lag,
    /// p99 lag ≤ interval + 2 s.
    lag_goal_met: bool,
    /// (minute, floe's CPU share of one core over the minute, RSS in MiB at its end).
    per_minute: Vec<(u64, f64, u64)>,
    /// RSS at the last minute within 10% of minute 2.
    rss_goal_met: Option<bool>,
    idle_minutes: u64,
    idle_change_checks: u64,
    idle_warehouse_queries: u64,
}

#[derive(Debug, Serialize)]
struct Lag {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Bench<'_> {
    pub async fn run_watch(&self, w: &WatchBench) -> Result<ExitCode> {
        if self.snowflake_table != "FLUX_OPS_CENTER_TOPOLOGY" {
            bail!("floe bench --watch changes the topology table; use --table topology");
        }
        let interval =
            schemas::duration::parse_duration(&w.interval).map_err(anyhow::Error::msg)?;
        let (session, rows) = self.tracked().await?;
        let t = self.snowflake_table;
        eprintln!("loading {rows} rows (a full refresh) ...");
        let full = super::bench::measure(&mut self.floe_run(false))?;
        if full.report["status"] != "success" {
            bail!("the first load failed: {}", full.report);
        }

        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("watch.toml");
        std::fs::write(&config_path, self.watch_config(&w.interval)?)?;
        let mut child = Command::new(std::env::current_exe().unwrap_or_else(|_| "floe".into()));
        child
            .arg("watch")
            .arg("--config")
            .arg(&config_path)
            .args([
                "--table",
                self.name,
                "--target",
                self.url,
                "--no-snapshot",
                "--listen",
                "127.0.0.1:0",
            ])
            .envs(self.snowflake_env())
            .env_remove("FLOE_TARGET_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let watch = KillOnDrop(child.spawn().context("starting floe watch")?);
        let pid = watch.0.id();
        let target = pipeline::postgres::Target::resolve(&self.config.target.with_url(self.url))?;
        let pg = target
            .connect(
                &pipeline::postgres::application_name(&["bench", "lag"]),
                &self.config.load,
            )
            .await?;
        let cache = format!("{}.{}", target.schema, self.config.tables[self.name].target);
        let lookup = pg
            .client
            .prepare(&format!(
                "SELECT circuit_id FROM {cache} WHERE connection_id = $1"
            ))
            .await?;

        eprintln!(
            "floe watch every {}; {} rows/s of changes for {} min ...",
            w.interval, w.rows_per_sec, w.minutes
        );
        let per_commit = (w.rows_per_sec / COMMITS_PER_SEC).max(1);
        let started = Instant::now();
        let run_for = Duration::from_secs(w.minutes * 60);
        let mut pending: VecDeque<(i64, String, Instant)> = VecDeque::new();
        let mut lags = Vec::new();
        let mut per_minute = Vec::new();
        let mut cpu_last = (cpu_ticks(pid), Instant::now());
        let mut next_commit = Instant::now();
        let mut i = 0u64;
        let mut next_poll = Instant::now();
        while started.elapsed() < run_for || !pending.is_empty() {
            if started.elapsed() > run_for + interval * 6 {
                bail!("{} commits never became visible", pending.len());
            }
            let now = Instant::now();
            if started.elapsed() < run_for && now >= next_commit {
                let first = FIRST_ID + i * per_commit;
                let marker = format!("lag-{i}");
                session
                    .execute(&format!(
                        "UPDATE {t} SET CIRCUIT_ID = '{marker}', FROM_LATITUDE = FROM_LATITUDE + 0.0001 \
                         WHERE CONNECTION_ID >= {first} AND CONNECTION_ID < {}",
                        first + per_commit
                    ))
                    .await?;
                pending.push_back((first as i64, marker, Instant::now()));
                i += 1;
                next_commit += Duration::from_millis(1000 / COMMITS_PER_SEC);
            }
            if now >= next_poll {
                while let Some((key, marker, committed)) = pending.front() {
                    let row = pg.client.query_opt(&lookup, &[key]).await?;
                    let seen: Option<String> = row.and_then(|r| r.get(0));
                    if seen.as_deref() != Some(marker.as_str()) {
                        break;
                    }
                    lags.push(committed.elapsed().as_secs_f64());
                    pending.pop_front();
                }
                next_poll = Instant::now() + Duration::from_millis(50);
            }
            let minute = started.elapsed().as_secs() / 60;
            if minute as usize > per_minute.len() && minute <= w.minutes {
                let ticks = cpu_ticks(pid);
                let (t0, at) = cpu_last;
                let share =
                    (ticks.saturating_sub(t0)) as f64 / clock_ticks() / at.elapsed().as_secs_f64();
                per_minute.push((minute, share, rss_mb(pid)));
                eprintln!(
                    "minute {minute}: {} commits visible, floe CPU {:.1}%, RSS {} MiB",
                    lags.len(),
                    share * 100.0,
                    rss_mb(pid)
                );
                cpu_last = (ticks, Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        eprintln!("idle for {} min ...", w.idle_minutes);
        let before = self.emulator_stats().await?;
        tokio::time::sleep(Duration::from_secs(w.idle_minutes * 60)).await;
        let after = self.emulator_stats().await?;
        let n = |s: &serde_json::Value, k: &str| s[k].as_u64().unwrap_or(0);
        let idle_queries = n(&after, "queries") - n(&before, "queries");
        let idle_metadata = n(&after, "metadata_queries") - n(&before, "metadata_queries");
        session.logout().await;
        drop(watch);

        lags.sort_by(f64::total_cmp);
        let q = |p: f64| lags[((lags.len() as f64 - 1.0) * p).round() as usize];
        let lag = Lag {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: q(1.0),
        };
        let rss_goal_met = match (per_minute.get(1), per_minute.last()) {
            (Some(m2), Some(last)) if per_minute.len() > 2 => {
                Some((last.2 as f64) <= m2.2 as f64 * 1.1)
            }
            _ => None,
        };
        let report = Report {
            table: self.name.to_string(),
            rows,
            interval: w.interval.clone(),
            rows_per_sec: per_commit * COMMITS_PER_SEC,
            minutes: w.minutes,
            profile: if cfg!(debug_assertions) {
                "dev"
            } else {
                "release"
            },
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            commits: lags.len(),
            achieved_rows_per_sec: (lags.len() as u64 * per_commit) as f64
                / (w.minutes * 60).max(1) as f64,
            lag_goal_met: lag.p99 <= interval.as_secs_f64() + 2.0,
            lag_seconds: lag,
            per_minute,
            rss_goal_met,
            idle_minutes: w.idle_minutes,
            idle_change_checks: idle_metadata,
            idle_warehouse_queries: idle_queries - idle_metadata,
        };
        match self.args.output {
            OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            OutputFormat::Text => print_text(&report),
        }
        Ok(ExitCode::SUCCESS)
    }

    /// The config file's text with its `[watch]` block replaced: full
    /// refreshes off (the bench measures the on-change sync), `interval`.
    fn watch_config(&self, interval: &str) -> Result<String> {
        let text = match &self.args.config {
            Some(p) => std::fs::read_to_string(p)?,
            None => super::EMBEDDED_CONFIG.to_string(),
        };
        let text = match text.find("\n[watch]") {
            Some(i) => {
                let end = text[i + 1..].find("\n\n").map_or(text.len(), |j| i + 1 + j);
                format!("{}{}", &text[..i], &text[end..])
            }
            None => text,
        };
        Ok(format!(
            "{text}\n[watch]\nfull_refresh = \"off\"\nincremental_every = \"{interval}\"\n"
        ))
    }

    fn snowflake_env(&self) -> Vec<(&'static str, String)> {
        let c: SnowflakeConfig = self.snowflake_config();
        vec![
            ("SNOWFLAKE_ACCOUNT", c.account.unwrap_or_default()),
            ("SNOWFLAKE_USER", c.user.unwrap_or_default()),
            ("SNOWFLAKE_PASSWORD", self.password.to_string()),
            ("SNOWFLAKE_HOST", "127.0.0.1".into()),
            ("SNOWFLAKE_PORT", self.port.to_string()),
            ("SNOWFLAKE_PROTOCOL", "http".into()),
        ]
    }

    async fn emulator_stats(&self) -> Result<serde_json::Value> {
        Ok(
            reqwest::get(format!("http://127.0.0.1:{}/floe/stats", self.port))
                .await?
                .json()
                .await?,
        )
    }
}

/// `utime + stime` of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let f = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    f(11) + f(12)
}

/// `USER_HZ`, the unit of `/proc/<pid>/stat`'s times: 100 on Linux.
fn clock_ticks() -> f64 {
    100.0
}

fn rss_mb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb >> 10)
}

fn print_text(r: &Report) {
    println!(
        "{}: {} rows; floe watch every {}; {} rows/s of changes asked, {:.1} committed, for {} min; {} build, {} CPUs",
        r.table, r.rows, r.interval, r.rows_per_sec, r.achieved_rows_per_sec, r.minutes, r.profile, r.cpus
    );
    println!(
        "lag (commit in the emulator → visible in Postgres) over {} commits: p50 {:.2} s, p90 {:.2} s, p99 {:.2} s, max {:.2} s — goal p99 ≤ interval + 2 s {}",
        r.commits,
        r.lag_seconds.p50,
        r.lag_seconds.p90,
        r.lag_seconds.p99,
        r.lag_seconds.max,
        if r.lag_goal_met { "met" } else { "NOT met" }
    );
    println!("minute  floe CPU  RSS");
    for (m, cpu, rss) in &r.per_minute {
        println!("{m:>6}  {:>7.1}%  {rss} MiB", cpu * 100.0);
    }
    if let Some(met) = r.rss_goal_met {
        println!(
            "RSS at the last minute within 10% of minute 2: {}",
            if met { "met" } else { "NOT met" }
        );
    }
    println!(
        "idle {} min: {} change checks, {} warehouse queries",
        r.idle_minutes, r.idle_change_checks, r.idle_warehouse_queries
    );
}
