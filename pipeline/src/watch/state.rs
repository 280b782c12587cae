//! What `floe watch` knows and says: each table's schedule, last run and
//! lag (`/status`), and whether the process is healthy (`/healthz`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use super::{Shared, Stored, TableState};
use crate::run::TableReport;

/// How long the scheduler may go without a beat, or Postgres and Snowflake
/// without a successful contact, before `/healthz` says 503: a few of the
/// slowest regular contacts (the state read every 15 s).
const STALE_AFTER_SECONDS: i64 = 60;

/// The last contacts, for `/healthz`.
#[derive(Debug, Clone, Default)]
pub struct Health {
    scheduler: Option<DateTime<Utc>>,
    postgres_ok: Option<DateTime<Utc>>,
    /// The last contact failed: why (cleared by the next success).
    postgres_error: Option<String>,
    snowflake_ok: Option<DateTime<Utc>>,
    snowflake_error: Option<String>,
}

impl Health {
    pub(super) fn scheduler_beat(&mut self, now: DateTime<Utc>) {
        self.scheduler = Some(now);
    }

    pub(super) fn postgres_ok(&mut self, now: DateTime<Utc>) {
        self.postgres_ok = Some(now);
        self.postgres_error = None;
    }

    pub(super) fn postgres_failed(&mut self, _now: DateTime<Utc>, error: String) {
        self.postgres_error = Some(error);
    }

    pub(super) fn snowflake_ok(&mut self, now: DateTime<Utc>) {
        self.snowflake_ok = Some(now);
        self.snowflake_error = None;
    }

    pub(super) fn snowflake_failed(&mut self, _now: DateTime<Utc>, error: String) {
        self.snowflake_error = Some(error);
    }

    /// `Ok` while healthy, else every reason it is not.
    pub fn verdict(&self, now: DateTime<Utc>) -> Result<(), Vec<String>> {
        let stale = |t: Option<DateTime<Utc>>| {
            t.is_none_or(|t| (now - t).num_seconds() > STALE_AFTER_SECONDS)
        };
        let mut reasons = Vec::new();
        if stale(self.scheduler) {
            reasons.push("the scheduler has not run for a minute".to_string());
        }
        match (&self.postgres_error, stale(self.postgres_ok)) {
            (Some(e), _) => reasons.push(format!("Postgres: {e}")),
            (None, true) => {
                reasons.push("no successful contact with Postgres in the last minute".into())
            }
            _ => {}
        }
        if let Some(e) = &self.snowflake_error {
            reasons.push(format!("Snowflake: {e}"));
        }
        match reasons.is_empty() {
            true => Ok(()),
            false => Err(reasons),
        }
    }
}

/// A table's last finished run, as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LastRun {
    pub mode: String,
    pub status: String,
    pub finished_at: DateTime<Utc>,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_inserted: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_updated: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_deleted: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl LastRun {
    pub(super) fn of(r: &TableReport, now: DateTime<Utc>) -> LastRun {
        LastRun {
            mode: r.mode.as_str().to_string(),
            status: r.status.as_str().to_string(),
            finished_at: now,
            seconds: r.seconds,
            reason: r.reason.map(|f| f.as_str().to_string()),
            rows_inserted: r.changes.as_ref().map(|c| c.rows_inserted),
            rows_updated: r.changes.as_ref().map(|c| c.rows_updated),
            rows_deleted: r.changes.as_ref().map(|c| c.rows_deleted),
            final_count: r.final_count,
            error: r.error.clone(),
        }
    }
}

/// One table in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    pub table: String,
    pub target: String,
    /// `ok`, `failing` (its last run failed) or `never_run` (never loaded).
    pub state: &'static str,
    /// `full` or `incremental` while queued or running.
    pub running: Option<String>,
    pub full_refresh: Option<String>,
    pub timezone: String,
    /// Seconds, or `None` when incremental runs are off.
    pub incremental_every_seconds: Option<u64>,
    pub next_full_refresh: Option<DateTime<Utc>>,
    pub next_incremental: Option<DateTime<Utc>>,
    pub watermark: Option<DateTime<Utc>>,
    pub lag_seconds: Option<f64>,
    pub last_full_refresh: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    pub consecutive_failures: u32,
    pub last_run: Option<LastRun>,
}

/// `/status`: the process and every table.
#[derive(Debug, Clone, Serialize)]
pub struct WatchStatus {
    pub healthy: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    pub max_concurrent_tables: usize,
    pub change_checks: u64,
    pub tables: Vec<TableStatus>,
}

impl TableStatus {
    fn of(name: &str, t: &TableState, now: DateTime<Utc>) -> TableStatus {
        let state = match (&t.last_run, &t.stored) {
            (Some(r), _) if r.status != "success" => "failing",
            (None, None) => "never_run",
            _ if t.consecutive_failures > 0 => "failing",
            _ => "ok",
        };
        TableStatus {
            table: name.to_string(),
            target: t.target.clone(),
            state,
            running: t.running.as_ref().map(|(mode, full)| {
                match full.load(std::sync::atomic::Ordering::Acquire) {
                    true => "full".to_string(),
                    false => mode.as_str().to_string(),
                }
            }),
            full_refresh: t.schedule.full_refresh().map(str::to_string),
            timezone: t.schedule.timezone().name().to_string(),
            incremental_every_seconds: t.schedule.incremental_every.map(|d| d.as_secs()),
            next_full_refresh: t.schedule.next_full_after(now),
            next_incremental: t.next_incremental,
            watermark: t.stored.as_ref().and_then(|s| s.watermark),
            lag_seconds: t.lag_seconds(now),
            last_full_refresh: t.stored.as_ref().map(|s| s.last_full_refresh),
            last_success: t.last_success,
            consecutive_failures: t.consecutive_failures,
            last_run: t.last_run.clone(),
        }
    }
}

impl Shared {
    pub(crate) fn status(&self, now: DateTime<Utc>) -> WatchStatus {
        let verdict = super::lock(&self.health).verdict(now);
        WatchStatus {
            healthy: verdict.is_ok(),
            problems: verdict.err().unwrap_or_default(),
            max_concurrent_tables: self.max_concurrent,
            change_checks: self.change_checks(),
            tables: self
                .tables_now()
                .iter()
                .map(|(name, t)| TableStatus::of(name, t, now))
                .collect(),
        }
    }

    pub(crate) fn health(&self, now: DateTime<Utc>) -> Result<(), Vec<String>> {
        super::lock(&self.health).verdict(now)
    }
}

/// Every `floe.sync_state` row by target (none if the table does not exist yet).
pub(super) async fn read_stored(
    client: &Client,
) -> Result<HashMap<String, Stored>, tokio_postgres::Error> {
    let exists: bool = client
        .query_one("SELECT to_regclass('floe.sync_state') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(HashMap::new());
    }
    let rows = client
        .query(
            "SELECT target, (extract(epoch FROM watermark) * 1e6)::int8, \
             (extract(epoch FROM last_full_refresh) * 1e6)::int8, change_token FROM floe.sync_state",
            &[],
        )
        .await?;
    let at = |us: i64| DateTime::from_timestamp_micros(us);
    Ok(rows
        .iter()
        .filter_map(|r| {
            let last_full: i64 = r.get(2);
            Some((
                r.get::<_, String>(0),
                Stored {
                    watermark: r.get::<_, Option<i64>>(1).and_then(at),
                    last_full_refresh: at(last_full)?,
                    change_token: r.get(3),
                },
            ))
        })
        .collect())
}
