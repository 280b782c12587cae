//! What a run says about each table: the report (CLI text and JSON) and the
//! run id that names it everywhere.

use serde::Serialize;

use super::stages::Stages;
use crate::incremental::{Changes, Fallback, Window};
use crate::postgres::runs::{RunMode, RunStatus};

/// What happened to one table, in the shape the incumbent procedure returned.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// `success`, `failed` or `cancelled`.
    pub status: RunStatus,
    /// The Postgres table.
    pub table: String,
    /// The config's name for it.
    pub name: String,
    /// How the table was loaded in the end: `full`, `incremental` or `replay`.
    pub mode: RunMode,
    /// Why an incremental run did a full refresh instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Fallback>,
    /// Source rows read: every row in a full refresh, the changed keys' rows in an incremental run.
    pub rows_synced: u64,
    /// Rows in the target after the run (on failure: what the untouched target holds, if known).
    pub final_count: Option<u64>,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Geometries set to NULL under `on_invalid_geometry = "null"`.
    #[serde(skip_serializing_if = "is_zero")]
    pub invalid_geometries: u64,
    /// Where the complete snapshot of what was read went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Where the time went (a successful full refresh).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stages: Option<Stages>,
    /// What a successful incremental run applied.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub changes: Option<ChangesReport>,
}

/// An incremental run's changes, as reports spell them.
#[derive(Debug, Clone, Serialize)]
pub struct ChangesReport {
    pub rows_inserted: u64,
    pub rows_updated: u64,
    pub rows_deleted: u64,
    pub window: WindowReport,
    /// The apply transaction alone, in seconds.
    pub apply_seconds: f64,
}

/// A window's bounds in Snowflake's time (UTC, RFC 3339, to the nanosecond).
#[derive(Debug, Clone, Serialize)]
pub struct WindowReport {
    pub start: String,
    pub end: String,
}

impl ChangesReport {
    pub fn new(c: &Changes, apply_seconds: f64) -> ChangesReport {
        ChangesReport {
            rows_inserted: c.inserted,
            rows_updated: c.updated,
            rows_deleted: c.deleted,
            window: WindowReport::new(&c.window),
            apply_seconds,
        }
    }
}

impl WindowReport {
    pub fn new(w: &Window) -> WindowReport {
        let at = |ns| {
            chrono::DateTime::from_timestamp_nanos(ns)
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
        };
        WindowReport {
            start: at(w.start_ns),
            end: at(w.end_ns),
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A sortable, unique-enough run id: `20261124T023301Z-3f9a` (UTC to the
/// second, then 16 bits that differ between processes and instants).
pub fn new_run_id() -> String {
    run_id_at(chrono::Utc::now(), std::process::id())
}

fn run_id_at(now: chrono::DateTime<chrono::Utc>, pid: u32) -> String {
    let tag = (now.timestamp_subsec_nanos() ^ pid.rotate_left(16)) & 0xffff;
    format!("{}-{tag:04x}", now.format("%Y%m%dT%H%M%SZ"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn run_ids_are_utc_to_the_second_and_sort_by_time() {
        let at = |y, mo, d, h, mi, s| chrono::Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap();
        let a = run_id_at(at(2024, 2, 29, 23, 59, 59), 7);
        let b = run_id_at(at(2024, 3, 1, 0, 0, 0), 7);
        assert!(a.starts_with("20240229T235959Z-"), "{a}");
        assert!(b.starts_with("20240301T000000Z-"), "{b}");
        assert_eq!(a.len(), "20240229T235959Z-0000".len());
        assert!(a < b);
        assert!(new_run_id().starts_with(&chrono::Utc::now().format("%Y").to_string()));
    }
}
