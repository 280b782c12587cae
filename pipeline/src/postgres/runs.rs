//! `floe.sync_runs`: one row per table per run, in the target database, so
//! an operator can see what every run did with one query (or `floe status`).
//!
//! Each write is a single autocommit statement on its own connection: the
//! record never waits on the load, and a crash leaves the row `running`,
//! which the next run of that table (once it holds the table's lock) marks
//! `abandoned`.

use serde::Serialize;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::incremental::{Changes, Fallback};

/// How a run stands or ended, as `sync_runs.status`, reports and JSON spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Success,
    Failed,
    Cancelled,
    /// A `running` row whose process died (found by the table's next run).
    Abandoned,
    /// Another floe process held the table, so this one did nothing (only
    /// `floe watch` skips; never kept in `sync_runs`).
    Skipped,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Success => "success",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Abandoned => "abandoned",
            RunStatus::Skipped => "skipped",
        }
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl PartialEq<&str> for RunStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// How a run loads its table, as `sync_runs.mode` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    /// Everything read from the source into a staged table, swapped in.
    Full,
    /// A full refresh from a snapshot instead of the source.
    Replay,
    /// A window of the source's changes applied in place.
    Incremental,
}

impl RunMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RunMode::Full => "full",
            RunMode::Replay => "replay",
            RunMode::Incremental => "incremental",
        }
    }
}

/// Creates the `floe` schema and the table if missing.
const CREATE_SQL: &str = "\
CREATE SCHEMA IF NOT EXISTS floe;
CREATE TABLE IF NOT EXISTS floe.sync_runs (
    run_id       text        NOT NULL,
    table_name   text        NOT NULL,
    target       text        NOT NULL,
    mode         text        NOT NULL,
    source       text,
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at  timestamptz,
    rows_read    bigint,
    rows_written bigint,
    final_count  bigint,
    checksum     text,
    status       text        NOT NULL
        CHECK (status IN ('running', 'success', 'failed', 'cancelled', 'abandoned')),
    error        text,
    reason        text,
    rows_inserted bigint,
    rows_updated  bigint,
    rows_deleted  bigint,
    window_start  timestamptz,
    window_end    timestamptz,
    PRIMARY KEY (run_id, table_name)
);
CREATE INDEX IF NOT EXISTS sync_runs_target_started ON floe.sync_runs (target, started_at DESC);";

/// Columns added with incremental runs (added to an older table).
const ADDED_COLUMNS: &[(&str, &str)] = &[
    ("reason", "text"),
    ("rows_inserted", "bigint"),
    ("rows_updated", "bigint"),
    ("rows_deleted", "bigint"),
    ("window_start", "timestamptz"),
    ("window_end", "timestamptz"),
];

/// Creates the bookkeeping table, tolerating a concurrent run doing the same.
pub async fn ensure(client: &Client) -> Result<(), tokio_postgres::Error> {
    super::ensure_table(client, "floe.sync_runs", CREATE_SQL, ADDED_COLUMNS).await
}

/// Records that `run_id` started loading `target` (schema-qualified).
pub async fn start(
    client: &Client,
    run_id: &str,
    table: &str,
    target: &str,
    mode: RunMode,
    source: &str,
) -> Result<(), tokio_postgres::Error> {
    let mode = mode.as_str();
    client
        .query_typed(
            "INSERT INTO floe.sync_runs (run_id, table_name, target, mode, source, status) \
             VALUES ($1, $2, $3, $4, $5, 'running')",
            &[
                (&run_id, Type::TEXT),
                (&table, Type::TEXT),
                (&target, Type::TEXT),
                (&mode, Type::TEXT),
                (&source, Type::TEXT),
            ],
        )
        .await
        .map(drop)
}

/// Marks other runs of `target` still `running` as `abandoned`. Call while
/// holding the target's advisory lock: no live run can then be loading it.
pub async fn mark_abandoned(
    client: &Client,
    target: &str,
    run_id: &str,
) -> Result<u64, tokio_postgres::Error> {
    let marked = client
        .query_typed(
            "UPDATE floe.sync_runs SET status = 'abandoned', finished_at = clock_timestamp(), \
             error = coalesce(error, 'the run ended without recording a result (crash or kill); found by run ' || $2) \
             WHERE target = $1 AND status = 'running' AND run_id <> $2 RETURNING run_id",
            &[(&target, Type::TEXT), (&run_id, Type::TEXT)],
        )
        .await?;
    Ok(marked.len() as u64)
}

/// How a run ended, as recorded.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    pub status: RunStatus,
    /// How the run loaded in the end (an incremental run that fell back is `full`).
    pub mode: RunMode,
    /// Why an incremental run became a full refresh.
    pub reason: Option<Fallback>,
    /// What an incremental run applied.
    pub changes: Option<&'a Changes>,
    pub source: Option<&'a str>,
    pub rows_read: Option<u64>,
    pub rows_written: Option<u64>,
    pub final_count: Option<u64>,
    pub checksum: Option<&'a str>,
    pub error: Option<&'a str>,
}

/// Records the end of a run.
pub async fn finish(
    client: &Client,
    run_id: &str,
    table: &str,
    outcome: &Outcome<'_>,
) -> Result<(), tokio_postgres::Error> {
    let n = |v: Option<u64>| v.map(|v| v as i64);
    let status = outcome.status.as_str();
    let changes = outcome.changes;
    let count = |f: fn(&Changes) -> u64| changes.map(|c| f(c) as i64);
    let point = |f: fn(&Changes) -> i64| changes.map(f);
    client
        .query_typed(
            "UPDATE floe.sync_runs SET status = $3, finished_at = clock_timestamp(), \
             source = coalesce($4, source), rows_read = $5, rows_written = $6, final_count = $7, \
             checksum = $8, error = $9, mode = $10, reason = $11, rows_inserted = $12, \
             rows_updated = $13, rows_deleted = $14, \
             window_start = to_timestamp($15::numeric / 1e9), \
             window_end = to_timestamp($16::numeric / 1e9) \
             WHERE run_id = $1 AND table_name = $2",
            &[
                (&run_id, Type::TEXT),
                (&table, Type::TEXT),
                (&status, Type::TEXT),
                (&outcome.source, Type::TEXT),
                (&n(outcome.rows_read), Type::INT8),
                (&n(outcome.rows_written), Type::INT8),
                (&n(outcome.final_count), Type::INT8),
                (&outcome.checksum, Type::TEXT),
                (&outcome.error, Type::TEXT),
                (&outcome.mode.as_str(), Type::TEXT),
                (&outcome.reason.map(Fallback::as_str), Type::TEXT),
                (&count(|c| c.inserted), Type::INT8),
                (&count(|c| c.updated), Type::INT8),
                (&count(|c| c.deleted), Type::INT8),
                (&point(|c| c.window.start_ns), Type::INT8),
                (&point(|c| c.window.end_ns), Type::INT8),
            ],
        )
        .await
        .map(drop)
}

/// The latest successful incremental run of config table `table` that
/// started after run `run_id` did (`None`: none, or `run_id` unrecorded).
pub async fn incremental_since(
    client: &Client,
    table: &str,
    run_id: &str,
) -> Result<Option<String>, tokio_postgres::Error> {
    if !super::table_exists(client, "floe.sync_runs").await? {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT i.run_id FROM floe.sync_runs i JOIN floe.sync_runs r \
               ON r.run_id = $2 AND r.table_name = $1 AND i.target = r.target \
             WHERE i.table_name = $1 AND i.mode = 'incremental' AND i.status = 'success' \
               AND i.started_at > r.started_at \
             ORDER BY i.started_at DESC LIMIT 1",
            &[&table, &run_id],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// One recorded run, as `floe status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub run_id: String,
    pub table: String,
    pub target: String,
    pub mode: String,
    pub source: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub seconds: Option<f64>,
    pub rows_read: Option<i64>,
    pub rows_written: Option<i64>,
    pub final_count: Option<i64>,
    pub checksum: Option<String>,
    pub status: String,
    pub error: Option<String>,
    /// Why an incremental run became a full refresh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_inserted: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_updated: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_deleted: Option<i64>,
    /// The window of changes an incremental run applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<RecordedWindow>,
}

/// An applied window's bounds (UTC, RFC 3339, to the microsecond).
#[derive(Debug, Clone, Serialize)]
pub struct RecordedWindow {
    pub start: String,
    pub end: String,
}

/// The last `per_table` runs of every table (or of the tables named), newest first.
pub async fn last_runs(
    client: &Client,
    tables: &[String],
    per_table: i64,
) -> Result<Vec<RunRecord>, tokio_postgres::Error> {
    if !super::table_exists(client, "floe.sync_runs").await? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT run_id, table_name, target, mode, source, \
                    to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                    to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                    extract(epoch FROM finished_at - started_at)::float8, \
                    rows_read, rows_written, final_count, checksum, status, error, \
                    reason, rows_inserted, rows_updated, rows_deleted, \
                    to_char(window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
                    to_char(window_end AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
             FROM (SELECT *, row_number() OVER (PARTITION BY target ORDER BY started_at DESC) AS n \
                   FROM floe.sync_runs \
                   WHERE cardinality($1::text[]) = 0 OR table_name = ANY($1) OR target = ANY($1)) r \
             WHERE n <= $2 ORDER BY table_name, started_at DESC",
            &[&tables, &per_table],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| RunRecord {
            run_id: r.get(0),
            table: r.get(1),
            target: r.get(2),
            mode: r.get(3),
            source: r.get(4),
            started_at: r.get(5),
            finished_at: r.get(6),
            seconds: r.get(7),
            rows_read: r.get(8),
            rows_written: r.get(9),
            final_count: r.get(10),
            checksum: r.get(11),
            status: r.get(12),
            error: r.get(13),
            reason: r.get(14),
            rows_inserted: r.get(15),
            rows_updated: r.get(16),
            rows_deleted: r.get(17),
            window: match (r.get(18), r.get(19)) {
                (Some(start), Some(end)) => Some(RecordedWindow { start, end }),
                _ => None,
            },
        })
        .collect())
}
