//! `floe.sync_state`: one row per target table saying up to which point in
//! Snowflake's time its rows are current — the watermark an incremental run
//! continues from — with the source's column fingerprint and change token
//! at that point. It is written inside the transaction that makes the rows
//! visible (a full refresh's swap, an incremental apply), so rows and
//! watermark never disagree. A load from parquet or Flight knows no
//! Snowflake time and clears it (the next incremental run must start from a
//! full refresh); a replay restores what its snapshot's read recorded (or
//! clears it, for a snapshot of parquet or Flight).

use tokio_postgres::{Client, GenericClient};

const CREATE_SQL: &str = "\
CREATE SCHEMA IF NOT EXISTS floe;
CREATE TABLE IF NOT EXISTS floe.sync_state (
    target             text        PRIMARY KEY,
    table_name         text        NOT NULL,
    watermark          timestamptz,
    last_full_refresh  timestamptz NOT NULL,
    run_id             text        NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    source_fingerprint text,
    change_token       text
)";

/// Columns added after the table first shipped (added to an older table).
const ADDED_COLUMNS: &[(&str, &str)] = &[("source_fingerprint", "text"), ("change_token", "text")];

/// Creates the state table if missing (or adds what an older one lacks).
pub async fn ensure(client: &Client) -> Result<(), tokio_postgres::Error> {
    super::ensure_table(client, "floe.sync_state", CREATE_SQL, ADDED_COLUMNS).await
}

/// Where a table's rows stand in Snowflake: the point they are current up
/// to, and what the source looked like then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePoint {
    /// Snowflake's `CURRENT_TIMESTAMP()`, ns since the epoch.
    pub watermark_ns: i64,
    /// The source's columns and types (see `incremental::fingerprint`): a
    /// change means the next incremental run must be a full refresh.
    pub fingerprint: String,
    /// `SYSTEM$LAST_CHANGE_COMMIT_TIME` of the change object at that point,
    /// when known: an unchanged token means nothing to apply.
    pub change_token: Option<String>,
}

/// What a full refresh records as it swaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullRefreshed {
    /// `schema.table` of the target.
    pub target: String,
    /// The config's name for it.
    pub table: String,
    pub run_id: String,
    /// `None` for a source without Snowflake's clock (parquet, Flight, a replay).
    pub point: Option<SourcePoint>,
}

impl FullRefreshed {
    /// The upsert, as one statement of the swap's transaction (literals
    /// quoted: the swap runs as one simple-query batch).
    pub fn upsert_sql(&self) -> String {
        let (watermark, fingerprint, token) = match &self.point {
            Some(p) => (
                format!("to_timestamp({}::numeric / 1e9)", p.watermark_ns),
                literal(&p.fingerprint),
                p.change_token.as_deref().map_or("NULL".into(), literal),
            ),
            None => ("NULL".into(), "NULL".into(), "NULL".into()),
        };
        format!(
            "INSERT INTO floe.sync_state (target, table_name, watermark, last_full_refresh, run_id, source_fingerprint, change_token) \
             VALUES ({}, {}, {watermark}, clock_timestamp(), {}, {fingerprint}, {token}) \
             ON CONFLICT (target) DO UPDATE SET table_name = EXCLUDED.table_name, \
             watermark = EXCLUDED.watermark, last_full_refresh = EXCLUDED.last_full_refresh, \
             run_id = EXCLUDED.run_id, source_fingerprint = EXCLUDED.source_fingerprint, \
             change_token = EXCLUDED.change_token, updated_at = clock_timestamp()",
            literal(&self.target),
            literal(&self.table),
            literal(&self.run_id)
        )
    }
}

/// A table's row, as an incremental run reads it before starting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncState {
    /// `None`: cleared (the last load knew no Snowflake time).
    pub watermark_ns: Option<i64>,
    pub fingerprint: Option<String>,
    pub change_token: Option<String>,
}

/// The state of `target` (`schema.table`); `None` if it has no row (or
/// there is no state table yet).
pub async fn read(
    client: &Client,
    target: &str,
) -> Result<Option<SyncState>, tokio_postgres::Error> {
    if !super::table_exists(client, "floe.sync_state").await? {
        return Ok(None);
    }
    let row = client
        .query_opt(
            // Postgres keeps microseconds: the watermark comes back exactly.
            "SELECT (extract(epoch FROM watermark) * 1e6)::int8 * 1000, source_fingerprint, change_token \
             FROM floe.sync_state WHERE target = $1",
            &[&target],
        )
        .await?;
    Ok(row.map(|r| SyncState {
        watermark_ns: r.get(0),
        fingerprint: r.get(1),
        change_token: r.get(2),
    }))
}

/// The run whose load last set `target`'s row (a full refresh writes its
/// id in its swap's transaction), or `None`.
pub async fn last_run_id(
    client: &Client,
    target: &str,
) -> Result<Option<String>, tokio_postgres::Error> {
    if !super::table_exists(client, "floe.sync_state").await? {
        return Ok(None);
    }
    Ok(client
        .query_opt(
            "SELECT run_id FROM floe.sync_state WHERE target = $1",
            &[&target],
        )
        .await?
        .and_then(|r| r.get(0)))
}

/// Moves `target`'s watermark to `point` after an incremental apply, in
/// the apply's transaction (the last full refresh stays as it was).
pub async fn advance(
    client: &impl GenericClient,
    target: &str,
    run_id: &str,
    point: &SourcePoint,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "UPDATE floe.sync_state SET watermark = to_timestamp($2::int8::numeric / 1e9), \
             source_fingerprint = $3, change_token = $4, run_id = $5, updated_at = clock_timestamp() \
             WHERE target = $1",
            &[
                &target,
                &point.watermark_ns,
                &point.fingerprint,
                &point.change_token,
                &run_id,
            ],
        )
        .await
}

/// A table's state as `floe status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableState {
    pub table: String,
    pub target: String,
    /// Up to when the rows are current in Snowflake's time (UTC, RFC 3339);
    /// `None`: not known (last loaded from parquet or Flight, or replayed from a snapshot of them).
    pub watermark: Option<String>,
    /// Now (the target's clock) minus the watermark, in seconds.
    pub lag_seconds: Option<f64>,
    pub last_full_refresh: String,
    /// The run that last moved the state.
    pub run_id: String,
}

/// Every table's state (or the tables named, by config or Postgres name).
pub async fn list(
    client: &Client,
    tables: &[String],
) -> Result<Vec<TableState>, tokio_postgres::Error> {
    if !super::table_exists(client, "floe.sync_state").await? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT table_name, target, \
                    to_char(watermark AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
                    extract(epoch FROM clock_timestamp() - watermark)::float8, \
                    to_char(last_full_refresh AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), run_id \
             FROM floe.sync_state \
             WHERE cardinality($1::text[]) = 0 OR table_name = ANY($1) OR target = ANY($1) \
             ORDER BY table_name",
            &[&tables],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| TableState {
            table: r.get(0),
            target: r.get(1),
            watermark: r.get(2),
            lag_seconds: r.get(3),
            last_full_refresh: r.get(4),
            run_id: r.get(5),
        })
        .collect())
}

/// A string as a SQL literal (standard_conforming_strings, the default since 9.1).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upsert_quotes_what_it_writes_and_clears_a_missing_watermark() {
        let mut state = FullRefreshed {
            target: "public.o'brien".into(),
            table: "t".into(),
            run_id: "r1".into(),
            point: Some(SourcePoint {
                watermark_ns: 1_700_000_000_123_456_789,
                fingerprint: "ab12".into(),
                change_token: Some("1700000000123000000".into()),
            }),
        };
        let sql = state.upsert_sql();
        assert!(sql.contains("'public.o''brien'"), "{sql}");
        assert!(
            sql.contains("to_timestamp(1700000000123456789::numeric / 1e9)"),
            "{sql}"
        );
        assert!(sql.contains("'ab12', '1700000000123000000')"), "{sql}");
        state.point = None;
        assert!(
            state
                .upsert_sql()
                .contains("'t', NULL, clock_timestamp(), 'r1', NULL, NULL)"),
            "{}",
            state.upsert_sql()
        );
    }
}
