//! The emulator's change tracking over real HTTP, read by floe's Snowflake
//! client: DML answers, table versions by commit time, `CHANGES` as the
//! net delta, the change token, and Snowflake's two errors.

use std::collections::BTreeSet;

use arrow::record_batch::RecordBatch;
use arrow::util::display::array_value_to_string;
use emulator::{Emulator, EmulatorConfig};
use futures::TryStreamExt;
use pipeline::source::snowflake::{SnowflakeError, SnowflakeSession};

use crate::support::*;

async fn session() -> (Emulator, SnowflakeSession) {
    let emulator = Emulator::start(EmulatorConfig::new(grid_dir(), "floe", "pw"))
        .await
        .expect("emulator starts");
    let config = emulator_login(emulator.port(), "floe", "pw");
    let session = SnowflakeSession::login(&config).await.expect("login");
    (emulator, session)
}

/// Every row of the answer as text.
async fn rows(s: &SnowflakeSession, sql: &str) -> Result<Vec<Vec<String>>, SnowflakeError> {
    let result = s.query(sql).await?;
    let batches: Vec<RecordBatch> = s.stream(result).try_collect().await?;
    let mut out = Vec::new();
    for b in &batches {
        for r in 0..b.num_rows() {
            out.push(
                b.columns()
                    .iter()
                    .map(|c| array_value_to_string(c, r).unwrap())
                    .collect(),
            );
        }
    }
    Ok(out)
}

async fn one(s: &SnowflakeSession, sql: &str) -> String {
    rows(s, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"))[0][0].clone()
}

/// Snowflake's clock, as a literal AT/END can take.
async fn now(s: &SnowflakeSession) -> String {
    let t = one(s, "SELECT CURRENT_TIMESTAMP()").await;
    format!("'{t}'::TIMESTAMP_TZ")
}

fn code(e: SnowflakeError) -> String {
    match e {
        SnowflakeError::Query { code, .. } => code,
        other => panic!("not a Snowflake error: {other}"),
    }
}

#[tokio::test]
async fn dml_commits_versions_that_time_travel_and_changes_read_back() {
    let (_emulator, s) = session().await;
    let ids = rows(
        &s,
        "SELECT TRANSFORMER_ID FROM TRANSFORMERS ORDER BY TRANSFORMER_ID LIMIT 4",
    )
    .await
    .unwrap();
    let id = |i: usize| ids[i][0].clone();
    let before: u64 = one(&s, "SELECT COUNT(*) FROM TRANSFORMERS")
        .await
        .parse()
        .unwrap();
    let token0: i128 = one(&s, "SELECT SYSTEM$LAST_CHANGE_COMMIT_TIME('TRANSFORMERS')")
        .await
        .parse()
        .unwrap();
    s.execute("ALTER TABLE TRANSFORMERS SET CHANGE_TRACKING = TRUE")
        .await
        .unwrap();
    let t0 = now(&s).await;

    // An update (of a value and of the key itself), a delete, an insert,
    // and an insert deleted again inside the window. (DML answers come as
    // JSON, which floe's client does not read; the official connector's
    // conformance test checks their row counts.)
    for sql in [
        format!("UPDATE TRANSFORMERS SET LOAD_PCT = 99.5 WHERE TRANSFORMER_ID = '{}'", id(0)),
        format!("UPDATE TRANSFORMERS SET TRANSFORMER_ID = 'RENAMED' WHERE TRANSFORMER_ID = '{}'", id(1)),
        format!("DELETE FROM TRANSFORMERS WHERE TRANSFORMER_ID = '{}'", id(2)),
        "INSERT INTO TRANSFORMERS SELECT 'NEW-1', KVA_RATING, PHASE, LOAD_PCT, LAT, LON, FEEDER_ID, \
         LAST_READING_AT FROM TRANSFORMERS WHERE TRANSFORMER_ID = 'RENAMED'"
            .to_string(),
        format!(
            "INSERT INTO TRANSFORMERS SELECT 'GONE', KVA_RATING, PHASE, LOAD_PCT, LAT, LON, FEEDER_ID, \
             LAST_READING_AT FROM TRANSFORMERS WHERE TRANSFORMER_ID = '{}'",
            id(3)
        ),
        "DELETE FROM TRANSFORMERS WHERE TRANSFORMER_ID = 'GONE'".to_string(),
    ] {
        s.execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let t1 = now(&s).await;

    // The current table and both versions by time travel.
    let after: u64 = one(&s, "SELECT COUNT(*) FROM TRANSFORMERS")
        .await
        .parse()
        .unwrap();
    assert_eq!(after, before);
    assert_eq!(
        one(
            &s,
            &format!("SELECT COUNT(*) FROM TRANSFORMERS AT(TIMESTAMP => {t0})")
        )
        .await,
        before.to_string()
    );
    assert_eq!(
        one(
            &s,
            &format!("SELECT LOAD_PCT FROM TRANSFORMERS AT(TIMESTAMP => {t1}) WHERE TRANSFORMER_ID = '{}'", id(0))
        )
        .await,
        "99.5"
    );
    assert_ne!(
        one(
            &s,
            &format!("SELECT LOAD_PCT FROM TRANSFORMERS AT(TIMESTAMP => {t0}) WHERE TRANSFORMER_ID = '{}'", id(0))
        )
        .await,
        "99.5"
    );

    // The net delta: the key change is a delete of the old key and an
    // insert of the new one; the insert deleted again is absent.
    let changes: BTreeSet<(String, String, String)> = rows(
        &s,
        &format!(
            "SELECT TRANSFORMER_ID, METADATA$ACTION, METADATA$ISUPDATE FROM TRANSFORMERS \
             CHANGES(INFORMATION => DEFAULT) AT(TIMESTAMP => {t0}) END(TIMESTAMP => {t1})"
        ),
    )
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
    .collect();
    let expected: BTreeSet<(String, String, String)> = [
        (id(0), "DELETE", "true"),
        (id(0), "INSERT", "true"),
        (id(1), "DELETE", "true"),
        ("RENAMED".to_string(), "INSERT", "true"),
        (id(2), "DELETE", "false"),
        ("NEW-1".to_string(), "INSERT", "false"),
    ]
    .into_iter()
    .map(|(k, a, u)| (k, a.to_string(), u.to_string()))
    .collect();
    assert_eq!(changes, expected);

    // The note's read: the current rows of the keys inserted in the window.
    let upserted = rows(
        &s,
        &format!(
            "SELECT s.TRANSFORMER_ID FROM TRANSFORMERS AT(TIMESTAMP => {t1}) s WHERE s.TRANSFORMER_ID IN \
             (SELECT TRANSFORMER_ID FROM TRANSFORMERS CHANGES(INFORMATION => DEFAULT) \
              AT(TIMESTAMP => {t0}) END(TIMESTAMP => {t1}) WHERE METADATA$ACTION = 'INSERT') ORDER BY 1"
        ),
    )
    .await
    .unwrap();
    let mut want = vec![id(0), "NEW-1".to_string(), "RENAMED".to_string()];
    want.sort();
    assert_eq!(
        upserted
            .into_iter()
            .map(|r| r[0].clone())
            .collect::<Vec<_>>(),
        want
    );

    // The change token moved.
    let token1: i128 = one(&s, "SELECT SYSTEM$LAST_CHANGE_COMMIT_TIME('TRANSFORMERS')")
        .await
        .parse()
        .unwrap();
    assert!(token1 > token0, "{token0} -> {token1}");
    s.logout().await;
}

#[tokio::test]
async fn outside_time_travel_or_change_tracking_snowflake_s_errors_come_back() {
    let (_emulator, s) = session().await;
    let t0 = now(&s).await;
    s.execute("DELETE FROM FLUX_OPS_CENTER_ASSETS WHERE ASSET_ID IN (SELECT ASSET_ID FROM FLUX_OPS_CENTER_ASSETS LIMIT 1)")
        .await
        .unwrap();
    let t1 = now(&s).await;
    // Tracking was never switched on: 091930.
    let e = rows(
        &s,
        &format!("SELECT ASSET_ID FROM FLUX_OPS_CENTER_ASSETS CHANGES(INFORMATION => DEFAULT) AT(TIMESTAMP => {t0}) END(TIMESTAMP => {t1})"),
    )
    .await
    .unwrap_err();
    assert_eq!(code(e), "091930");
    // The change token of a table that is not there: 002003.
    let e = rows(&s, "SELECT SYSTEM$LAST_CHANGE_COMMIT_TIME('NO_SUCH_TABLE')")
        .await
        .unwrap_err();
    assert_eq!(code(e), "002003");
    // Before the table existed: 000707.
    let e = rows(&s, "SELECT COUNT(*) FROM FLUX_OPS_CENTER_ASSETS AT(TIMESTAMP => '2001-01-01 00:00:00 +0000'::TIMESTAMP_TZ)")
        .await
        .unwrap_err();
    assert_eq!(code(e), "000707");
    // No retention: yesterday's version is gone, now's is readable.
    s.execute("ALTER TABLE FLUX_OPS_CENTER_ASSETS SET DATA_RETENTION_TIME_IN_DAYS = 0")
        .await
        .unwrap();
    let e = rows(
        &s,
        &format!("SELECT COUNT(*) FROM FLUX_OPS_CENTER_ASSETS AT(TIMESTAMP => {t0})"),
    )
    .await
    .unwrap_err();
    assert_eq!(code(e), "000707");
    // Change data of a table with a geospatial column is refused.
    s.execute("ALTER TABLE VEGETATION_RISK_ZONES SET CHANGE_TRACKING = TRUE")
        .await
        .unwrap();
    let t2 = now(&s).await;
    let e = rows(
        &s,
        &format!("SELECT ZONE_ID FROM VEGETATION_RISK_ZONES CHANGES(INFORMATION => DEFAULT) AT(TIMESTAMP => {t2})"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, SnowflakeError::Query { ref message, .. } if message.contains("geospatial")),
        "{e}"
    );
    s.logout().await;
}

#[tokio::test]
async fn change_traffic_is_mostly_updates_with_new_geometry_some_inserts_and_deletes() {
    let (emulator, s) = session().await;
    s.execute("ALTER TABLE TRANSFORMERS SET CHANGE_TRACKING = TRUE")
        .await
        .unwrap();
    let before: i64 = one(&s, "SELECT COUNT(*) FROM TRANSFORMERS")
        .await
        .parse()
        .unwrap();
    let t0 = now(&s).await;
    assert!(emulator.mutate("NO_SUCH_TABLE", 10).is_err());
    emulator.mutate("transformers", 2_000).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let t1 = now(&s).await;
    let changes = rows(
        &s,
        &format!(
            "SELECT TRANSFORMER_ID, METADATA$ACTION, METADATA$ISUPDATE FROM TRANSFORMERS \
             CHANGES(INFORMATION => DEFAULT) AT(TIMESTAMP => {t0}) END(TIMESTAMP => {t1})"
        ),
    )
    .await
    .unwrap();
    let count = |action: &str, update: &str| {
        changes
            .iter()
            .filter(|r| r[1] == action && r[2] == update)
            .count()
    };
    let (updated, inserted, deleted) = (
        count("INSERT", "true"),
        count("INSERT", "false"),
        count("DELETE", "false"),
    );
    assert_eq!(
        count("DELETE", "true"),
        updated,
        "an update is a DELETE and an INSERT"
    );
    let total = (updated + inserted + deleted) as f64;
    assert!(
        total >= 1_000.0,
        "about 2,000 rows a second for over a second: {total}"
    );
    for (share, want) in [(updated, 0.7), (inserted, 0.2), (deleted, 0.1)] {
        assert!(
            (share as f64 / total - want).abs() < 0.06,
            "{updated} updated, {inserted} inserted, {deleted} deleted"
        );
    }
    // An updated row has new coordinates (its geometry moved), same key.
    let key = &changes
        .iter()
        .find(|r| r[1] == "INSERT" && r[2] == "true")
        .unwrap()[0];
    let at = |t: &str| {
        format!(
            "SELECT LAT, LON FROM TRANSFORMERS AT(TIMESTAMP => {t}) WHERE TRANSFORMER_ID = '{key}'"
        )
    };
    assert_ne!(
        rows(&s, &at(&t0)).await.unwrap(),
        rows(&s, &at(&t1)).await.unwrap()
    );
    // The current table is the old one plus inserts minus deletes (at t1).
    let at_t1: i64 = one(
        &s,
        &format!("SELECT COUNT(*) FROM TRANSFORMERS AT(TIMESTAMP => {t1})"),
    )
    .await
    .parse()
    .unwrap();
    assert_eq!(at_t1, before + inserted as i64 - deleted as i64);
    s.logout().await;
}

#[tokio::test]
async fn a_window_reads_the_deleted_keys_the_upserted_rows_and_the_count_at_its_end() {
    use pipeline::incremental::window::{
        count_sql, deleted_keys_sql, snowflake_now, source_at, upserted_rows_sql, Window,
    };
    let (_emulator, s) = session().await;
    s.execute("ALTER TABLE TRANSFORMERS SET CHANGE_TRACKING = TRUE")
        .await
        .unwrap();
    let ids: Vec<String> = rows(
        &s,
        "SELECT TRANSFORMER_ID FROM TRANSFORMERS ORDER BY TRANSFORMER_ID LIMIT 3",
    )
    .await
    .unwrap()
    .into_iter()
    .map(|r| r[0].clone())
    .collect();
    let before = one(&s, "SELECT COUNT(*) FROM TRANSFORMERS").await;
    let start = snowflake_now(&s).await.unwrap();
    for sql in [
        format!("UPDATE TRANSFORMERS SET LOAD_PCT = 42.5 WHERE TRANSFORMER_ID = '{}'", ids[0]),
        format!("UPDATE TRANSFORMERS SET TRANSFORMER_ID = 'RENAMED' WHERE TRANSFORMER_ID = '{}'", ids[1]),
        format!("DELETE FROM TRANSFORMERS WHERE TRANSFORMER_ID = '{}'", ids[2]),
        format!(
            "INSERT INTO TRANSFORMERS SELECT 'NEW-1', KVA_RATING, PHASE, LOAD_PCT, LAT, LON, FEEDER_ID, \
             LAST_READING_AT FROM TRANSFORMERS WHERE TRANSFORMER_ID = '{}'",
            ids[0]
        ),
    ] {
        s.execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let end = snowflake_now(&s).await.unwrap();
    assert!(end > start);
    let w = Window {
        start_ns: start,
        end_ns: end,
    };
    let keys = vec!["transformer_id".to_string()];

    let deleted: BTreeSet<String> = rows(&s, &deleted_keys_sql("TRANSFORMERS", &keys, &w))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(deleted, ids.iter().cloned().collect::<BTreeSet<_>>());

    let upserted = rows(
        &s,
        &upserted_rows_sql(
            &source_at(Some("TRANSFORMERS"), None, &w),
            "TRANSFORMERS",
            &keys,
            &w,
        ),
    )
    .await
    .unwrap();
    let upserted_keys: BTreeSet<String> = upserted.iter().map(|r| r[0].clone()).collect();
    assert_eq!(
        upserted_keys,
        [ids[0].clone(), "NEW-1".into(), "RENAMED".into()].into()
    );
    let row0 = upserted.iter().find(|r| r[0] == ids[0]).unwrap();
    assert_eq!(
        row0[3], "42.5",
        "whole rows as they are at the window's end: {row0:?}"
    );
    assert_eq!(row0.len(), 8, "every column of the source: {row0:?}");

    assert_eq!(
        one(&s, &count_sql(&source_at(Some("TRANSFORMERS"), None, &w))).await,
        before
    );

    // A window that ends where it starts holds nothing.
    let empty = Window {
        start_ns: start,
        end_ns: start,
    };
    assert!(rows(&s, &deleted_keys_sql("TRANSFORMERS", &keys, &empty))
        .await
        .unwrap()
        .is_empty());
    assert!(rows(
        &s,
        &upserted_rows_sql(
            &source_at(Some("TRANSFORMERS"), None, &empty),
            "TRANSFORMERS",
            &keys,
            &empty
        )
    )
    .await
    .unwrap()
    .is_empty());
    s.logout().await;
}

/// The table's watermark in `floe.sync_state`, in ns since the epoch (`None`: cleared).
async fn watermark(client: &tokio_postgres::Client, target: &str) -> Option<i64> {
    client
        .query_one(
            "SELECT (extract(epoch FROM watermark) * 1e6)::int8 * 1000 FROM floe.sync_state WHERE target = $1",
            &[&target],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_full_refresh_records_snowflake_s_time_before_its_read_and_parquet_clears_it() {
    use pipeline::incremental::window::snowflake_now;
    let (emulator, s) = session().await;
    let url = fresh_db("watermark").await;
    let client = connect(&url).await;
    let mut config = shipped_config();
    config.snowflake = emulator_login(emulator.port(), "floe", "pw");
    let target = "public.transformers_cache";

    // Through Snowflake: the watermark is Snowflake's clock between the
    // moment before the run and the moment after it.
    let before = snowflake_now(&s).await.unwrap();
    assert_success(&run(&config, "transformers", &url, None).await);
    let after = snowflake_now(&s).await.unwrap();
    let w = watermark(&client, target).await.expect("a watermark");
    // Postgres keeps microseconds.
    assert!(
        before / 1000 * 1000 <= w && w <= after,
        "{before} <= {w} <= {after}"
    );

    // A failed run leaves rows and watermark as they were.
    config.tables.get_mut("transformers").unwrap().transform =
        Some("SELECT transformer_id, st_point(lon, 1000.0, 4326) AS geom FROM source".into());
    let failed = run(&config, "transformers", &url, None).await;
    assert_eq!(failed.status, "failed", "{failed:?}");
    assert_eq!(watermark(&client, target).await, Some(w));

    // From parquet there is no Snowflake time: cleared, so an incremental
    // run would have to start from a full refresh.
    let config = shipped_config();
    assert_success(&run(&config, "transformers", &url, Some(grid_dir())).await);
    assert_eq!(watermark(&client, target).await, None);
    let runs: i64 = client
        .query_one("SELECT count(*) FROM floe.sync_state", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 1, "one row per target");
    s.logout().await;
}
