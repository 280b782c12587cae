//! `floe.sync_state`: one row per target table saying up to which point in
//! Snowflake's time its rows are current — the watermark an incremental run
//! continues from. It is written inside the transaction that makes the rows
//! visible (the swap of a full refresh), so rows and watermark never
//! disagree. A load from parquet or Flight (or a replay) knows no Snowflake
//! time and clears it: the next incremental run must start from a full
//! refresh.

use tokio_postgres::Client;

const CREATE_SQL: &str = "\
CREATE SCHEMA IF NOT EXISTS floe;
CREATE TABLE IF NOT EXISTS floe.sync_state (
    target             text        PRIMARY KEY,
    table_name         text        NOT NULL,
    watermark          timestamptz,
    last_full_refresh  timestamptz NOT NULL,
    run_id             text        NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT clock_timestamp()
)";

/// Creates the state table if missing.
pub async fn ensure(client: &Client) -> Result<(), tokio_postgres::Error> {
    super::ensure_table(client, "floe.sync_state", CREATE_SQL).await
}

/// What a full refresh records as it swaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullRefreshed {
    /// `schema.table` of the target.
    pub target: String,
    /// The config's name for it.
    pub table: String,
    pub run_id: String,
    /// Snowflake's time (ns since the epoch) taken before the read started;
    /// `None` for a source without one.
    pub watermark_ns: Option<i64>,
}

impl FullRefreshed {
    /// The upsert, as one statement of the swap's transaction (literals
    /// quoted: the swap runs as one simple-query batch).
    pub fn upsert_sql(&self) -> String {
        let watermark = match self.watermark_ns {
            Some(ns) => format!("to_timestamp({}::numeric / 1e9)", ns),
            None => "NULL".into(),
        };
        format!(
            "INSERT INTO floe.sync_state (target, table_name, watermark, last_full_refresh, run_id) \
             VALUES ({}, {}, {watermark}, clock_timestamp(), {}) \
             ON CONFLICT (target) DO UPDATE SET table_name = EXCLUDED.table_name, \
             watermark = EXCLUDED.watermark, last_full_refresh = EXCLUDED.last_full_refresh, \
             run_id = EXCLUDED.run_id, updated_at = clock_timestamp()",
            literal(&self.target),
            literal(&self.table),
            literal(&self.run_id)
        )
    }
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
            watermark_ns: Some(1_700_000_000_123_456_789),
        };
        let sql = state.upsert_sql();
        assert!(sql.contains("'public.o''brien'"), "{sql}");
        assert!(
            sql.contains("to_timestamp(1700000000123456789::numeric / 1e9)"),
            "{sql}"
        );
        state.watermark_ns = None;
        assert!(
            state.upsert_sql().contains("'t', NULL, clock_timestamp()"),
            "{}",
            state.upsert_sql()
        );
    }
}
