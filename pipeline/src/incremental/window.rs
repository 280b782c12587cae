//! Reading a window of change data from Snowflake: its end is Snowflake's
//! own clock (never floe's), its start the table's watermark; the deleted
//! keys come from the `CHANGES` clause, the upserted rows from the source
//! table as it was at the window's end.
//!
//! Only key columns are ever read from `CHANGES` (Snowflake may refuse
//! change data with geospatial columns); the rows themselves are read by
//! time travel and go through the table's own transform, so their geometry
//! is built exactly as in a full refresh. Windows share their boundary
//! points, so applying a change twice must be (and is) harmless: deleting
//! keys and upserting the rows as they are at the window's end.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, TimestampNanosecondType};
use futures::TryStreamExt;

use crate::source::snowflake::{SnowflakeError, SnowflakeSession};

/// `[start, end]` in ns since the epoch (UTC), as Snowflake's clock gave them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start_ns: i64,
    pub end_ns: i64,
}

/// A point in time as `AT(TIMESTAMP => …)` takes it.
pub fn timestamp_literal(ns: i64) -> String {
    let t = chrono::DateTime::from_timestamp_nanos(ns);
    format!(
        "'{}'::TIMESTAMP_TZ",
        t.format("%Y-%m-%d %H:%M:%S%.9f +0000")
    )
}

/// Snowflake's `CURRENT_TIMESTAMP()`, in ns since the epoch.
pub async fn snowflake_now(session: &SnowflakeSession) -> Result<i64, SnowflakeError> {
    Ok(snowflake_clock(session, None).await?.0)
}

/// Snowflake's clock and, when `changes_from` is given, that object's
/// change token (`SYSTEM$LAST_CHANGE_COMMIT_TIME`), read in one statement
/// so the token is no later than the time.
pub async fn snowflake_clock(
    session: &SnowflakeSession,
    changes_from: Option<&str>,
) -> Result<(i64, Option<String>), SnowflakeError> {
    let sql = match changes_from {
        Some(object) => format!(
            "SELECT CURRENT_TIMESTAMP() AS NOW, SYSTEM$LAST_CHANGE_COMMIT_TIME('{}') AS TOKEN",
            object.replace('\'', "''")
        ),
        None => "SELECT CURRENT_TIMESTAMP() AS NOW".to_string(),
    };
    let result = session.query(&sql).await?;
    let batches: Vec<_> = session.stream(result).try_collect().await?;
    let batch = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .ok_or_else(|| SnowflakeError::Decode("CURRENT_TIMESTAMP() returned no row".into()))?;
    let ns = arrow::compute::cast(
        batch.column(0),
        &DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, None),
    )
    .map_err(|e| SnowflakeError::Decode(format!("CURRENT_TIMESTAMP(): {e}")))?;
    let ns = ns.as_primitive::<TimestampNanosecondType>();
    if ns.is_null(0) {
        return Err(SnowflakeError::Decode("CURRENT_TIMESTAMP() is NULL".into()));
    }
    let token = match batch.num_columns() {
        2 if !batch.column(1).is_null(0) => Some(
            arrow::util::display::array_value_to_string(batch.column(1), 0)
                .map_err(|e| SnowflakeError::Decode(format!("change token: {e}")))?,
        ),
        _ => None,
    };
    Ok((ns.value(0), token))
}

/// `object`'s change token alone (`SYSTEM$LAST_CHANGE_COMMIT_TIME`): a
/// metadata lookup no warehouse runs, which is how `floe watch` asks an
/// idle table whether anything changed.
pub async fn change_token(
    session: &SnowflakeSession,
    object: &str,
) -> Result<Option<String>, SnowflakeError> {
    let sql = format!(
        "SELECT SYSTEM$LAST_CHANGE_COMMIT_TIME('{}') AS TOKEN",
        object.replace('\'', "''")
    );
    let result = session.query(&sql).await?;
    let batches: Vec<_> = session.stream(result).try_collect().await?;
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Err(SnowflakeError::Decode(
            "the change token query returned no row".into(),
        ));
    };
    if batch.column(0).is_null(0) {
        return Ok(None);
    }
    arrow::util::display::array_value_to_string(batch.column(0), 0)
        .map(Some)
        .map_err(|e| SnowflakeError::Decode(format!("change token: {e}")))
}

/// Snowflake's spelling of a key column: the config's lower-case name,
/// upper-cased as Snowflake folds an unquoted identifier.
fn column(key: &str) -> String {
    key.to_uppercase()
}

fn changes(object: &str, w: &Window) -> String {
    format!(
        "{object} CHANGES(INFORMATION => DEFAULT) AT(TIMESTAMP => {}) END(TIMESTAMP => {})",
        timestamp_literal(w.start_ns),
        timestamp_literal(w.end_ns)
    )
}

/// The keys deleted in the window (an update deletes its old row, so an
/// updated key is here too, and is upserted again).
pub fn deleted_keys_sql(changes_from: &str, keys: &[String], w: &Window) -> String {
    let cols: Vec<String> = keys.iter().map(|k| column(k)).collect();
    format!(
        "SELECT DISTINCT {} FROM {} WHERE METADATA$ACTION = 'DELETE'",
        cols.join(", "),
        changes(changes_from, w)
    )
}

/// The source as of the window's end, as a `FROM` item: the table (or
/// view) `AT` the end; a custom `query` cannot be read `AT` a point, so it
/// is read as it is now (a change committed after the end is applied now
/// and again, harmlessly, by the next window).
pub fn source_at(snowflake_table: Option<&str>, query: Option<&str>, w: &Window) -> String {
    match (query, snowflake_table) {
        (Some(q), _) => format!("({q})"),
        (None, Some(t)) => format!("{t} AT(TIMESTAMP => {})", timestamp_literal(w.end_ns)),
        (None, None) => String::new(),
    }
}

/// The source's rows (`source`: a [`source_at`] item) whose keys were
/// inserted (or updated) in the window.
pub fn upserted_rows_sql(source: &str, changes_from: &str, keys: &[String], w: &Window) -> String {
    let matches: Vec<String> = keys
        .iter()
        .map(|k| format!("c.{0} = s.{0}", column(k)))
        .collect();
    format!(
        "SELECT s.* FROM {source} s WHERE EXISTS \
         (SELECT 1 FROM {} c WHERE c.METADATA$ACTION = 'INSERT' AND {})",
        changes(changes_from, w),
        matches.join(" AND ")
    )
}

/// The source's row count (`source`: a [`source_at`] item): what the
/// applied table must hold.
pub fn count_sql(source: &str) -> String {
    format!("SELECT COUNT(*) AS N FROM {source} s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_in_time_are_written_as_snowflake_reads_them() {
        assert_eq!(
            timestamp_literal(1_764_648_000_123_456_789),
            "'2025-12-02 04:00:00.123456789 +0000'::TIMESTAMP_TZ"
        );
    }

    #[test]
    fn only_key_columns_are_read_from_change_data() {
        let w = Window {
            start_ns: 0,
            end_ns: 1_000_000_000,
        };
        let keys = vec!["circuit_id".to_string(), "connection_id".to_string()];
        let deleted = deleted_keys_sql("TOPO", &keys, &w);
        assert!(
            deleted.starts_with("SELECT DISTINCT CIRCUIT_ID, CONNECTION_ID FROM TOPO CHANGES"),
            "{deleted}"
        );
        assert!(deleted.contains("METADATA$ACTION = 'DELETE'"), "{deleted}");
        let upserted =
            upserted_rows_sql(&source_at(Some("TOPO"), None, &w), "TOPO_KEYS", &keys, &w);
        assert!(
            upserted.starts_with("SELECT s.* FROM TOPO AT(TIMESTAMP => '1970-01-01 00:00:01"),
            "{upserted}"
        );
        assert!(
            upserted.contains("FROM TOPO_KEYS CHANGES(INFORMATION => DEFAULT)"),
            "{upserted}"
        );
        assert!(
            upserted.contains("c.CIRCUIT_ID = s.CIRCUIT_ID AND c.CONNECTION_ID = s.CONNECTION_ID"),
            "{upserted}"
        );
        assert!(
            !upserted.contains("c.*"),
            "never every column of the change data: {upserted}"
        );
    }

    #[test]
    fn a_table_is_read_at_the_window_s_end_and_a_custom_query_as_it_is() {
        let w = Window {
            start_ns: 0,
            end_ns: 1_000_000_000,
        };
        assert_eq!(
            source_at(Some("TOPO"), None, &w),
            "TOPO AT(TIMESTAMP => '1970-01-01 00:00:01.000000000 +0000'::TIMESTAMP_TZ)"
        );
        assert_eq!(
            source_at(Some("TOPO"), Some("SELECT * FROM TOPO WHERE X"), &w),
            "(SELECT * FROM TOPO WHERE X)"
        );
        assert_eq!(
            count_sql(&source_at(Some("T"), None, &w)),
            "SELECT COUNT(*) AS N FROM T AT(TIMESTAMP => '1970-01-01 00:00:01.000000000 +0000'::TIMESTAMP_TZ) s"
        );
    }
}
