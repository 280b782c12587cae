//! `floe run --incremental` against the emulator over HTTP and real PostGIS:
//! windows applied in place equal the source, every fallback does a full
//! refresh and says why, and refusals leave rows and watermark as they were.

use std::sync::atomic::AtomicU64;

use emulator::{Emulator, EmulatorConfig};
use pipeline::postgres::Target;
use pipeline::run::{new_run_id, run_table, RunOptions, TableReport};
use pipeline::source::snowflake::SnowflakeSession;
use schemas::config::Config;
use tokio_postgres::Client;

use crate::support::*;

pub(crate) const TABLE: &str = "transformers";
pub(crate) const TARGET: &str = "public.transformers_cache";

/// An emulator with change tracking on TRANSFORMERS, floe's client logged
/// in to it (for DML), the shipped config pointing at it, and a database
/// the table was fully loaded into.
pub(crate) struct Setup {
    pub(crate) emulator: Emulator,
    pub(crate) s: SnowflakeSession,
    pub(crate) config: Config,
    pub(crate) url: String,
    pub(crate) client: Client,
}

async fn setup(db: &str) -> Setup {
    setup_with(db, EmulatorConfig::new(grid_dir(), "floe", "pw")).await
}

/// [`setup`] with the emulator configured as given.
pub(crate) async fn setup_with(db: &str, emulator: EmulatorConfig) -> Setup {
    let emulator = Emulator::start(emulator).await.expect("emulator starts");
    let mut config = shipped_config();
    config.snowflake = emulator_login(emulator.port(), "floe", "pw");
    let s = SnowflakeSession::login(&config.snowflake)
        .await
        .expect("login");
    s.execute("ALTER TABLE TRANSFORMERS SET CHANGE_TRACKING = TRUE")
        .await
        .unwrap();
    let url = fresh_db(db).await;
    let client = connect(&url).await;
    assert_success(&run(&config, TABLE, &url, None).await);
    Setup {
        emulator,
        s,
        config,
        url,
        client,
    }
}

pub(crate) async fn incremental(config: &Config, url: &str, allow_shrink: bool) -> TableReport {
    let target = Target::resolve(&config.target.with_url(url)).expect("target");
    let options = RunOptions {
        run_id: new_run_id(),
        incremental: true,
        allow_shrink,
        ..Default::default()
    };
    run_table(config, TABLE, &target, &options, &AtomicU64::new(0)).await
}

impl Setup {
    pub(crate) async fn dml(&self, statements: &[String]) {
        for sql in statements {
            self.s
                .execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    /// The first `n` transformer ids in the source.
    async fn ids(&self, n: usize) -> Vec<String> {
        let rows = self
            .client
            .query(
                &format!("SELECT transformer_id FROM {TARGET} ORDER BY transformer_id LIMIT {n}"),
                &[],
            )
            .await
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }

    /// Asserts the cache holds exactly what a full refresh of the source
    /// as it is now loads (into a database of its own).
    pub(crate) async fn assert_equals_source(&self, reference_db: &str) {
        let reference = fresh_db(reference_db).await;
        let mut config = self.config.clone();
        config.snapshots.enabled = false;
        assert_success(&run(&config, TABLE, &reference, None).await);
        let expected = fingerprint(&connect(&reference).await, TARGET).await;
        assert_eq!(
            fingerprint(&self.client, TARGET).await,
            expected,
            "the cache equals the source row for row"
        );
    }

    pub(crate) async fn watermark(&self) -> Option<i64> {
        watermark_of(&self.client).await
    }
}

/// A source row copied under a new key: an insert.
fn copy_of(new: &str, from: &str) -> String {
    format!(
        "INSERT INTO TRANSFORMERS SELECT '{new}', KVA_RATING, PHASE, LOAD_PCT, LAT, LON, FEEDER_ID, \
         LAST_READING_AT FROM TRANSFORMERS WHERE TRANSFORMER_ID = '{from}'"
    )
}

/// The table's watermark in `floe.sync_state`, in ns since the epoch.
pub(crate) async fn watermark_of(client: &Client) -> Option<i64> {
    client
        .query_one(
            "SELECT (extract(epoch FROM watermark) * 1e6)::int8 * 1000 FROM floe.sync_state WHERE target = $1",
            &[&TARGET],
        )
        .await
        .unwrap()
        .get(0)
}

/// floe's sessions still connected, once the server has seen the last ones go.
pub(crate) async fn floe_sessions(client: &Client) -> i64 {
    let mut n = 0;
    for _ in 0..50 {
        n = client
            .query_one(
                // This test's database only: the cluster is shared by tests running at once.
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name LIKE 'floe%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    n
}

pub(crate) fn assert_incremental(r: &TableReport) -> (u64, u64, u64) {
    assert_success(r);
    assert_eq!(r.mode.as_str(), "incremental", "{r:?}");
    assert_eq!(r.reason, None);
    let c = r
        .changes
        .as_ref()
        .expect("an incremental run reports its changes");
    (c.rows_inserted, c.rows_updated, c.rows_deleted)
}

fn assert_fell_back(r: &TableReport, reason: &str) {
    assert_success(r);
    assert_eq!(r.mode.as_str(), "full", "{r:?}");
    assert_eq!(r.reason.map(|r| r.as_str()), Some(reason), "{r:?}");
    assert!(r.changes.is_none());
}

#[tokio::test]
async fn a_window_of_updates_inserts_and_deletes_leaves_the_cache_equal_to_the_source() {
    let t = setup("incr_window").await;
    let ids = t.ids(6).await;
    let before_watermark = t.watermark().await.expect("a full refresh records one");
    t.dml(&[
        // Updates: a value, the geometry's coordinates, the key itself.
        format!(
            "UPDATE TRANSFORMERS SET LOAD_PCT = 42.5 WHERE TRANSFORMER_ID = '{}'",
            ids[0]
        ),
        format!(
            "UPDATE TRANSFORMERS SET LAT = 45.5, LON = -93.25 WHERE TRANSFORMER_ID = '{}'",
            ids[1]
        ),
        format!(
            "UPDATE TRANSFORMERS SET TRANSFORMER_ID = 'RENAMED-2' WHERE TRANSFORMER_ID = '{}'",
            ids[2]
        ),
        // A delete, an insert, an insert then delete, an update then delete.
        format!(
            "DELETE FROM TRANSFORMERS WHERE TRANSFORMER_ID = '{}'",
            ids[3]
        ),
        copy_of("NEW-1", &ids[4]),
        copy_of("NEW-2", &ids[4]),
        "DELETE FROM TRANSFORMERS WHERE TRANSFORMER_ID = 'NEW-2'".into(),
        format!(
            "UPDATE TRANSFORMERS SET LOAD_PCT = 1 WHERE TRANSFORMER_ID = '{}'",
            ids[5]
        ),
        format!(
            "DELETE FROM TRANSFORMERS WHERE TRANSFORMER_ID = '{}'",
            ids[5]
        ),
    ])
    .await;

    let r = incremental(&t.config, &t.url, false).await;
    // Inserted: RENAMED-2, NEW-1; updated: ids 0 and 1; deleted: ids 2, 3, 5.
    assert_eq!(assert_incremental(&r), (2, 2, 3), "{r:?}");
    assert_eq!(r.final_count, Some(GRID_ROWS - 1));
    t.assert_equals_source("incr_window_ref").await;
    let geom: String = t
        .client
        .query_one(
            "SELECT st_astext(geom) FROM transformers_cache WHERE transformer_id = $1",
            &[&ids[1]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        geom, "POINT(-93.25 45.5)",
        "geometry built by the table's transform"
    );

    // The watermark moved to the window's end, recorded with the run.
    let w = t.watermark().await.unwrap();
    assert!(w > before_watermark);
    let row = t
        .client
        .query_one(
            "SELECT mode, status, rows_inserted, rows_updated, rows_deleted, final_count, \
                    (extract(epoch FROM window_start) * 1e6)::int8 * 1000, \
                    (extract(epoch FROM window_end) * 1e6)::int8 * 1000, rows_written \
             FROM floe.sync_runs WHERE target = $1 ORDER BY started_at DESC LIMIT 1",
            &[&TARGET],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "incremental");
    assert_eq!(row.get::<_, String>(1), "success");
    let counts: (i64, i64, i64) = (row.get(2), row.get(3), row.get(4));
    assert_eq!(counts, (2, 2, 3));
    assert_eq!(row.get::<_, i64>(5), (GRID_ROWS - 1) as i64);
    assert_eq!(row.get::<_, i64>(6), before_watermark);
    assert_eq!(row.get::<_, i64>(7), w);
    assert_eq!(
        row.get::<_, i64>(8),
        4,
        "rows written: the inserted and the updated"
    );

    // Nothing changed since: an empty window, applied as such.
    let again = incremental(&t.config, &t.url, false).await;
    assert_eq!(assert_incremental(&again), (0, 0, 0));
    t.assert_equals_source("incr_window_ref").await;
    assert!(t.watermark().await.unwrap() >= w);
    t.s.logout().await;
}

#[tokio::test]
async fn each_reason_an_incremental_run_is_impossible_gives_a_full_refresh_that_says_why() {
    let t = setup("incr_fallbacks").await;
    let change = |n: u32| {
        format!(
            "UPDATE TRANSFORMERS SET LOAD_PCT = {n} WHERE TRANSFORMER_ID = \
             (SELECT MIN(TRANSFORMER_ID) FROM TRANSFORMERS)"
        )
    };

    // No watermark: a database floe never loaded from Snowflake.
    let other = fresh_db("incr_fallbacks_new").await;
    assert_fell_back(&incremental(&t.config, &other, false).await, "no_watermark");

    // The target dropped, or altered behind floe's back.
    t.client
        .batch_execute("DROP TABLE transformers_cache")
        .await
        .unwrap();
    assert_fell_back(
        &incremental(&t.config, &t.url, false).await,
        "target_missing",
    );
    t.client
        .batch_execute("ALTER TABLE transformers_cache DROP COLUMN phase")
        .await
        .unwrap();
    assert_fell_back(&incremental(&t.config, &t.url, false).await, "target_shape");
    t.assert_equals_source("incr_fallbacks_ref").await;

    // A row the source does not have: the applied count is not Snowflake's.
    t.client
        .batch_execute(
            "INSERT INTO transformers_cache SELECT 'STRAY', kva_rating, phase, load_pct, lat, lon, \
             feeder_id, last_reading_at, geom FROM transformers_cache LIMIT 1",
        )
        .await
        .unwrap();
    t.dml(&[change(1)]).await;
    assert_fell_back(&incremental(&t.config, &t.url, false).await, "verification");
    t.assert_equals_source("incr_fallbacks_ref").await;

    // The source's columns are not those the last load recorded.
    t.client
        .batch_execute("UPDATE floe.sync_state SET source_fingerprint = 'other columns'")
        .await
        .unwrap();
    assert_fell_back(
        &incremental(&t.config, &t.url, false).await,
        "source_changed",
    );

    // Change tracking off for part of the window (091930).
    t.dml(&[
        "ALTER TABLE TRANSFORMERS SET CHANGE_TRACKING = FALSE".into(),
        change(2),
        "ALTER TABLE TRANSFORMERS SET CHANGE_TRACKING = TRUE".into(),
    ])
    .await;
    assert_fell_back(
        &incremental(&t.config, &t.url, false).await,
        "change_tracking",
    );

    // The watermark older than time travel keeps (000707).
    t.dml(&[
        "ALTER TABLE TRANSFORMERS SET DATA_RETENTION_TIME_IN_DAYS = 0".into(),
        change(3),
    ])
    .await;
    assert_fell_back(&incremental(&t.config, &t.url, false).await, "time_travel");
    t.assert_equals_source("incr_fallbacks_ref").await;

    let reasons: Vec<(String, Option<String>)> = t
        .client
        .query(
            "SELECT mode, reason FROM floe.sync_runs WHERE target = $1 AND status = 'success' \
             ORDER BY started_at",
            &[&TARGET],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let recorded: Vec<Option<&str>> = reasons.iter().map(|(_, r)| r.as_deref()).collect();
    assert_eq!(
        recorded,
        [
            None,
            Some("target_missing"),
            Some("target_shape"),
            Some("verification"),
            Some("source_changed"),
            Some("change_tracking"),
            Some("time_travel")
        ]
    );
    assert!(reasons.iter().all(|(mode, _)| mode == "full"));
    t.s.logout().await;
}

#[tokio::test]
async fn a_duplicate_key_or_a_window_emptying_the_table_is_refused_and_nothing_is_applied() {
    let t = setup("incr_refused").await;
    let ids = t.ids(1).await;
    let before = fingerprint(&t.client, TARGET).await;
    let watermark = t.watermark().await;
    t.dml(&[format!(
        "INSERT INTO TRANSFORMERS SELECT TRANSFORMER_ID, KVA_RATING, PHASE, LOAD_PCT, LAT, LON, \
         FEEDER_ID, LAST_READING_AT FROM TRANSFORMERS WHERE TRANSFORMER_ID = '{}'",
        ids[0]
    )])
    .await;
    let r = incremental(&t.config, &t.url, false).await;
    assert_eq!(r.status, "failed", "{r:?}");
    let e = r.error.unwrap();
    assert!(
        e.contains("transformers") && e.contains(&format!("(transformer_id) = ({})", ids[0])),
        "{e}"
    );
    assert_eq!(fingerprint(&t.client, TARGET).await, before);
    assert_eq!(t.watermark().await, watermark);

    // Every row deleted at the source (with the duplicate gone too).
    t.dml(&["DELETE FROM TRANSFORMERS".into()]).await;
    let r = incremental(&t.config, &t.url, false).await;
    assert_eq!(r.status, "failed", "{r:?}");
    assert!(
        r.error.as_deref().unwrap().contains("--allow-shrink"),
        "{r:?}"
    );
    assert_eq!(fingerprint(&t.client, TARGET).await, before);
    assert_eq!(t.watermark().await, watermark);
    assert_eq!(r.final_count, Some(GRID_ROWS));

    // Nothing left open: every floe session (and its temporary tables) gone.
    assert_eq!(floe_sessions(&t.client).await, 0);

    // The operator says the source really is empty.
    let r = incremental(&t.config, &t.url, true).await;
    assert_eq!(assert_incremental(&r), (0, 0, GRID_ROWS), "{r:?}");
    assert_eq!(fingerprint(&t.client, TARGET).await.0, 0);
    t.s.logout().await;
}

#[tokio::test]
async fn a_null_upserted_where_the_cache_is_not_null_is_named_and_nothing_is_applied() {
    let t = setup("incr_not_null").await;
    let ids = t.ids(2).await;
    // GIVEN a column the source has filled everywhere, which a DBA then
    // made NOT NULL in the cache
    t.dml(&["UPDATE TRANSFORMERS SET LOAD_PCT = 50 WHERE LOAD_PCT IS NULL".into()])
        .await;
    assert_success(&incremental(&t.config, &t.url, false).await);
    t.client
        .batch_execute(&format!(
            "ALTER TABLE {TARGET} ALTER COLUMN load_pct SET NOT NULL"
        ))
        .await
        .unwrap();
    let before = fingerprint(&t.client, TARGET).await;
    let watermark = t.watermark().await;

    // WHEN the window updates a row to a NULL there
    t.dml(&[format!(
        "UPDATE TRANSFORMERS SET LOAD_PCT = NULL WHERE TRANSFORMER_ID = '{}'",
        ids[1]
    )])
    .await;
    let r = incremental(&t.config, &t.url, false).await;

    // THEN the run fails naming table, column and key; nothing is applied
    assert_eq!(r.status, "failed", "{r:?}");
    let e = r.error.unwrap();
    for name in [
        "transformers_cache",
        "column load_pct",
        &format!("transformer_id={}", ids[1]),
        "NOT NULL",
    ] {
        assert!(e.contains(name), "{name:?} is not named in: {e}");
    }
    assert_eq!(fingerprint(&t.client, TARGET).await, before);
    assert_eq!(t.watermark().await, watermark);
    assert_eq!(floe_sessions(&t.client).await, 0);

    // AND once the source has a value there again, the next run applies
    t.dml(&[format!(
        "UPDATE TRANSFORMERS SET LOAD_PCT = 61.5 WHERE TRANSFORMER_ID = '{}'",
        ids[1]
    )])
    .await;
    let r = incremental(&t.config, &t.url, false).await;
    assert_eq!(assert_incremental(&r), (0, 1, 0), "{r:?}");
    t.assert_equals_source("incr_not_null_reference").await;
    t.s.logout().await;
}

#[tokio::test]
async fn incremental_and_full_runs_of_one_table_share_its_lock() {
    let t = setup("incr_lock").await;
    // Another holder of the table's lock: both kinds of run stand aside.
    let holder = connect(&t.url).await;
    holder
        .execute(
            "SELECT pg_advisory_lock(hashtextextended('floe:public.transformers_cache', 0))",
            &[],
        )
        .await
        .unwrap();
    let inc = incremental(&t.config, &t.url, false).await;
    let full = run(&t.config, TABLE, &t.url, None).await;
    for r in [&inc, &full] {
        assert_eq!(r.status, "failed", "{r:?}");
        assert!(
            r.error.as_deref().unwrap().contains("another floe run"),
            "{r:?}"
        );
    }
    drop(holder);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    // Started together: each either ran alone or stood aside.
    t.dml(&["DELETE FROM TRANSFORMERS WHERE TRANSFORMER_ID = (SELECT MIN(TRANSFORMER_ID) FROM TRANSFORMERS)".into()])
        .await;
    let (inc, full) = tokio::join!(
        incremental(&t.config, &t.url, false),
        run(&t.config, TABLE, &t.url, None)
    );
    for r in [&inc, &full] {
        assert!(
            r.status == "success" || r.error.as_deref().unwrap().contains("another floe run"),
            "{r:?}"
        );
    }
    assert!(inc.status == "success" || full.status == "success");
    t.assert_equals_source("incr_lock_ref").await;
    t.s.logout().await;
}

#[tokio::test]
async fn tables_that_can_never_be_incremental_are_config_errors_naming_table_and_cause() {
    let url = fresh_db("incr_config").await;
    // A parquet source.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.parquet");
    let batch = arrow::record_batch::RecordBatch::try_from_iter(vec![(
        "id",
        std::sync::Arc::new(arrow::array::Int64Array::from(vec![1, 2])) as arrow::array::ArrayRef,
    )])
    .unwrap();
    write_parquet(&path, &[batch]);
    let config = parquet_config(&path, "t_cache", "primary_key = [\"id\"]\n");
    let target = Target::resolve(&config.target.with_url(&url)).unwrap();
    let options = RunOptions {
        run_id: new_run_id(),
        incremental: true,
        ..Default::default()
    };
    let name = config.tables.keys().next().unwrap().clone();
    let r = run_table(&config, &name, &target, &options, &AtomicU64::new(0)).await;
    assert_eq!(r.status, "failed");
    let e = r.error.unwrap();
    assert!(
        e.contains(&name) && e.contains("cannot be loaded incrementally") && e.contains("parquet"),
        "{e}"
    );

    // A transform that is not row by row, on a Snowflake table (found
    // from the plan once the window's rows arrive).
    let t = setup("incr_config_sf").await;
    let mut config = t.config.clone();
    config.tables.get_mut(TABLE).unwrap().transform = Some(
        "SELECT transformer_id, max(load_pct) AS load_pct FROM source GROUP BY transformer_id"
            .into(),
    );
    config.tables.get_mut(TABLE).unwrap().columns.clear();
    config.tables.get_mut(TABLE).unwrap().indexes.clear();
    let r = incremental(&config, &t.url, false).await;
    assert_eq!(r.status, "failed", "{r:?}");
    let e = r.error.unwrap();
    assert!(
        e.contains("transformers") && e.contains("not row by row") && e.contains("aggregate"),
        "{e}"
    );
    t.s.logout().await;
}

#[tokio::test]
async fn a_table_with_a_geospatial_column_syncs_through_a_view_of_its_keys() {
    let emulator = Emulator::start(EmulatorConfig::new(grid_dir(), "floe", "pw"))
        .await
        .expect("emulator starts");
    let mut config = shipped_config();
    config.snowflake = emulator_login(emulator.port(), "floe", "pw");
    let s = SnowflakeSession::login(&config.snowflake).await.unwrap();
    for sql in [
        "CREATE VIEW VEGETATION_KEYS AS SELECT ZONE_ID FROM VEGETATION_RISK_ZONES",
        "ALTER VIEW VEGETATION_KEYS SET CHANGE_TRACKING = TRUE",
    ] {
        s.execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let url = fresh_db("incr_view").await;
    let client = connect(&url).await;
    let target = Target::resolve(&config.target.with_url(&url)).unwrap();
    let vegetation = |config: &Config| {
        let options = RunOptions {
            run_id: new_run_id(),
            incremental: true,
            ..Default::default()
        };
        let (config, target) = (config.clone(), target.clone());
        async move { run_table(&config, "vegetation", &target, &options, &AtomicU64::new(0)).await }
    };
    assert_success(&run(&config, "vegetation", &url, None).await);
    let zones: Vec<i64> = client
        .query(
            "SELECT zone_id FROM vegetation_cache ORDER BY zone_id LIMIT 3",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for sql in [
        format!(
            "UPDATE VEGETATION_RISK_ZONES SET RISK_SCORE = 99.5 WHERE ZONE_ID = {}",
            zones[0]
        ),
        format!(
            "DELETE FROM VEGETATION_RISK_ZONES WHERE ZONE_ID = {}",
            zones[1]
        ),
        format!(
            "INSERT INTO VEGETATION_RISK_ZONES SELECT ZONE_ID + 900000000, SPECIES, RISK_SCORE, \
             LAST_TRIMMED, CANOPY FROM VEGETATION_RISK_ZONES WHERE ZONE_ID = {}",
            zones[2]
        ),
    ] {
        s.execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    // Change data of the table itself is refused (it has a GEOGRAPHY column).
    let r = vegetation(&config).await;
    assert_eq!(r.status, "failed", "{r:?}");
    assert!(r.error.as_deref().unwrap().contains("geospatial"), "{r:?}");

    // Through the view of its keys: the window applies, geometry built by the transform.
    config.tables.get_mut("vegetation").unwrap().changes_from = Some("VEGETATION_KEYS".into());
    let r = vegetation(&config).await;
    assert_eq!(assert_incremental(&r), (1, 1, 1), "{r:?}");
    let reference = fresh_db("incr_view_ref").await;
    assert_success(&run(&config, "vegetation", &reference, None).await);
    assert_eq!(
        fingerprint(&client, "vegetation_cache").await,
        fingerprint(&connect(&reference).await, "vegetation_cache").await
    );
    let token: Option<String> = client
        .query_one(
            "SELECT change_token FROM floe.sync_state WHERE target = 'public.vegetation_cache'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let now: String = {
        let result = s
            .query("SELECT SYSTEM$LAST_CHANGE_COMMIT_TIME('VEGETATION_RISK_ZONES')")
            .await
            .unwrap();
        let batches: Vec<arrow::record_batch::RecordBatch> =
            futures::TryStreamExt::try_collect(s.stream(result))
                .await
                .unwrap();
        arrow::util::display::array_value_to_string(batches[0].column(0), 0).unwrap()
    };
    assert_eq!(
        token.as_deref(),
        Some(now.as_str()),
        "the view's token is its table's"
    );
    s.logout().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_an_incremental_run_rebuilds_the_cache_it_left_and_prune_keeps_its_chain() {
    let t = setup("incr_replay").await;
    let snapshots = tempfile::tempdir().unwrap();
    let floe_in = |args: &[&str], snapshot_dir: bool| {
        let mut c = floe_command();
        c.args(args)
            .args(["--target", &t.url])
            .envs(snowflake_env(t.emulator.port(), "floe", "pw"))
            .env_remove("FLOE_TARGET_URL");
        match snapshot_dir {
            true => c.env("FLOE_SNAPSHOT_DIR", snapshots.path()),
            false => c.env_remove("FLOE_SNAPSHOT_DIR"),
        };
        c.output().unwrap()
    };
    let floe = |args: &[&str]| floe_in(args, true);
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let snapshots_cmd = |args: &[&str]| {
        ok(floe_command()
            .arg("snapshots")
            .args(args)
            .args(["--output", "json"])
            .env("FLOE_SNAPSHOT_DIR", snapshots.path())
            .output()
            .unwrap())
    };
    let run_of = |report: &serde_json::Value| {
        let url = report[0]["snapshot"].as_str().expect("a snapshot");
        url.rsplit('/').next().unwrap().to_string()
    };
    let full = |ok_report: serde_json::Value| run_of(&ok_report);

    let f1 = full(ok(floe(&["run", "--table", TABLE, "--output", "json"])));
    let state_f1 = fingerprint(&t.client, TARGET).await;
    let ids = t.ids(6).await;
    // Window 1: a value and a geometry updated, a delete, an insert.
    t.dml(&[
        format!(
            "UPDATE TRANSFORMERS SET LOAD_PCT = 42.5 WHERE TRANSFORMER_ID = '{}'",
            ids[0]
        ),
        format!(
            "UPDATE TRANSFORMERS SET LAT = 45.5, LON = -93.25 WHERE TRANSFORMER_ID = '{}'",
            ids[1]
        ),
        format!(
            "DELETE FROM TRANSFORMERS WHERE TRANSFORMER_ID = '{}'",
            ids[2]
        ),
        copy_of("NEW-1", &ids[3]),
    ])
    .await;
    let inc = |snapshot_dir: bool| {
        let report = ok(floe_in(
            &["run", "--incremental", "--table", TABLE, "--output", "json"],
            snapshot_dir,
        ));
        assert_eq!(report[0]["mode"], "incremental", "{report}");
        report
    };
    let c1 = run_of(&inc(true));
    let (state_c1, watermark_c1) = (fingerprint(&t.client, TARGET).await, t.watermark().await);
    // Window 2: the same key updated again, window 1's insert deleted, the
    // key itself changed, another insert.
    t.dml(&[
        format!(
            "UPDATE TRANSFORMERS SET LOAD_PCT = 7 WHERE TRANSFORMER_ID = '{}'",
            ids[0]
        ),
        "DELETE FROM TRANSFORMERS WHERE TRANSFORMER_ID = 'NEW-1'".into(),
        format!(
            "UPDATE TRANSFORMERS SET TRANSFORMER_ID = 'RENAMED-4' WHERE TRANSFORMER_ID = '{}'",
            ids[4]
        ),
        copy_of("NEW-2", &ids[5]),
    ])
    .await;
    let c2 = run_of(&inc(true));
    let (state_c2, watermark_c2) = (fingerprint(&t.client, TARGET).await, t.watermark().await);
    assert_ne!(state_c1, state_c2);

    // The change set keeps the window, the count and the key.
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            snapshots
                .path()
                .join("transformers")
                .join(&c1)
                .join("manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["kind"], "changes");
    assert_eq!(
        manifest["changes"]["keys"],
        serde_json::json!(["TRANSFORMER_ID"])
    );
    assert_eq!(manifest["changes"]["final_count"], GRID_ROWS);
    // `latest` is the last state loaded: the newest change set.
    let shown = snapshots_cmd(&["show", "transformers@latest"]);
    assert_eq!(shown["run_id"], c2.as_str(), "{shown}");

    // Back to the full snapshot by name, then forward again: each replay
    // equals the cache as that run left it, watermark included.
    ok(floe(&["replay", &format!("transformers@{f1}")]));
    assert_eq!(fingerprint(&t.client, TARGET).await, state_f1);
    let dry = ok(floe(&[
        "replay",
        "transformers@latest",
        "--dry-run",
        "--output",
        "json",
    ]));
    assert_eq!(
        (dry["change_sets"].as_u64(), dry["snapshot_rows"].as_u64()),
        (Some(2), Some(GRID_ROWS)),
        "{dry}"
    );
    let replayed = ok(floe(&["replay", "transformers@latest", "--output", "json"]));
    assert_eq!(replayed[0]["mode"], "replay", "{replayed}");
    assert_eq!(fingerprint(&t.client, TARGET).await, state_c2);
    assert_eq!(t.watermark().await, watermark_c2);
    ok(floe(&["replay", &format!("transformers@{c1}")]));
    assert_eq!(fingerprint(&t.client, TARGET).await, state_c1);
    assert_eq!(t.watermark().await, watermark_c1);

    // A full refresh, then the state after window 1 restored again and
    // caught up: that incremental run continues the older full snapshot.
    let f2 = full(ok(floe(&["run", "--table", TABLE, "--output", "json"])));
    ok(floe(&["replay", &format!("transformers@{c1}")]));
    let c3 = run_of(&inc(true));
    t.assert_equals_source("incr_replay_ref").await;
    let state_c3 = fingerprint(&t.client, TARGET).await;
    // Prune keeps what the newest change set's chain needs (the older
    // full snapshot and window 1's change set), not the chain nobody continues.
    let decided = snapshots_cmd(&["prune", "--keep", "1", "--dry-run"]);
    let action = |run: &str| {
        decided
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["run_id"] == run)
            .map(|d| d["action"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{run} in {decided}"))
    };
    assert_eq!(
        [
            f1.as_str(),
            c1.as_str(),
            c2.as_str(),
            f2.as_str(),
            c3.as_str()
        ]
        .map(action),
        ["keep", "keep", "would delete", "keep", "keep"].map(String::from),
        "{decided}"
    );
    snapshots_cmd(&["prune", "--keep", "1"]);
    ok(floe(&["replay", &format!("transformers@{f2}")]));
    ok(floe(&["replay", "transformers@latest"]));
    assert_eq!(fingerprint(&t.client, TARGET).await, state_c3);
    // Flight serves `latest` as that state too: loaded from it, another
    // database holds the same rows.
    let flight_addr = {
        use std::io::BufRead;
        let mut child = floe_command()
            .args(["serve-flight", "--port", "0", "--snapshots"])
            .arg(snapshots.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut banner = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut banner)
            .unwrap();
        (
            KillOnDrop(child),
            banner.trim().rsplit("grpc://").next().unwrap().to_string(),
        )
    };
    let mut via_flight = t.config.clone();
    via_flight.snapshots.enabled = false;
    via_flight.tables.get_mut(TABLE).unwrap().flight =
        Some(format!("flight://{}/transformers@latest", flight_addr.1));
    let flight_db = fresh_db("incr_replay_flight").await;
    assert_success(&run(&via_flight, TABLE, &flight_db, None).await);
    assert_eq!(
        fingerprint(&connect(&flight_db).await, TARGET).await,
        state_c3
    );
    drop(flight_addr);

    // A chain missing a link is refused, naming the gap; the cache stays.
    std::fs::rename(
        snapshots.path().join("transformers").join(&c1),
        snapshots.path().join("c1-moved-away"),
    )
    .unwrap();
    let broken = floe(&["replay", &format!("transformers@{c3}")]);
    assert!(!broken.status.success());
    let e = String::from_utf8_lossy(&broken.stderr);
    assert!(
        e.contains(&format!("transformers@{c3}")) && e.contains("ends where its window starts"),
        "{e}"
    );
    assert_eq!(fingerprint(&t.client, TARGET).await, state_c3);
    std::fs::rename(
        snapshots.path().join("c1-moved-away"),
        snapshots.path().join("transformers").join(&c1),
    )
    .unwrap();

    // An incremental run that keeps no change set: `latest` is then an
    // older state, refused unless named.
    t.dml(&[format!(
        "DELETE FROM TRANSFORMERS WHERE TRANSFORMER_ID = '{}'",
        ids[5]
    )])
    .await;
    inc(false);
    let latest = floe(&["replay", "transformers@latest"]);
    assert!(!latest.status.success());
    let e = String::from_utf8_lossy(&latest.stderr);
    assert!(
        e.contains("not the latest state") && e.contains(&format!("transformers@{c3}")),
        "{e}"
    );
    assert_eq!(fingerprint(&t.client, TARGET).await.0, GRID_ROWS as i64 - 1);
    t.s.logout().await;
}

#[tokio::test]
async fn an_apply_takes_only_row_locks_so_an_open_reader_never_waits_for_it_nor_it_for_the_reader()
{
    let mut t = setup("incr_readers").await;
    // A lock_timeout short enough that any table lock a reader holds would fail the run.
    t.config.load.lock_timeout = std::time::Duration::from_millis(200);
    let ids = t.ids(2).await;
    t.dml(&[
        format!(
            "UPDATE TRANSFORMERS SET LOAD_PCT = 3.5 WHERE TRANSFORMER_ID = '{}'",
            ids[0]
        ),
        format!(
            "DELETE FROM TRANSFORMERS WHERE TRANSFORMER_ID = '{}'",
            ids[1]
        ),
    ])
    .await;
    // A map reader in the middle of a transaction: it holds its table lock
    // (ACCESS SHARE) and a snapshot of the table as it was.
    let reader = connect(&t.url).await;
    reader
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let seen: i64 = reader
        .query_one("SELECT count(*) FROM transformers_cache", &[])
        .await
        .unwrap()
        .get(0);
    let r = incremental(&t.config, &t.url, false).await;
    assert_eq!(assert_incremental(&r), (0, 1, 1), "{r:?}");
    // The reader still sees one whole state: the one it started with.
    let again: i64 = reader
        .query_one("SELECT count(*) FROM transformers_cache", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, seen);
    reader.batch_execute("COMMIT").await.unwrap();
    let after: i64 = reader
        .query_one("SELECT count(*) FROM transformers_cache", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(after, seen - 1, "a new statement sees the whole window");
    t.s.logout().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_that_falls_back_leaves_the_full_refresh_s_snapshot_not_a_change_set() {
    let t = setup("incr_fallback_snapshot").await;
    let snapshots = tempfile::tempdir().unwrap();
    let floe = |args: &[&str]| {
        floe_command()
            .args(args)
            .args(["--target", &t.url, "--output", "json"])
            .envs(snowflake_env(t.emulator.port(), "floe", "pw"))
            .env("FLOE_SNAPSHOT_DIR", snapshots.path())
            .env_remove("FLOE_TARGET_URL")
            .output()
            .unwrap()
    };
    // A stray row in the cache: the applied window fails verification.
    t.client
        .batch_execute(
            "INSERT INTO transformers_cache SELECT 'STRAY', kva_rating, phase, load_pct, lat, lon, \
             feeder_id, last_reading_at, geom FROM transformers_cache LIMIT 1",
        )
        .await
        .unwrap();
    t.dml(&["UPDATE TRANSFORMERS SET LOAD_PCT = 1 WHERE TRANSFORMER_ID = (SELECT MIN(TRANSFORMER_ID) FROM TRANSFORMERS)".into()])
        .await;
    let out = floe(&["run", "--incremental", "--table", TABLE]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report[0]["mode"], "full", "{report}");
    assert_eq!(report[0]["reason"], "verification", "{report}");
    let url = report[0]["snapshot"]
        .as_str()
        .expect("the full refresh's snapshot");
    let run = url.rsplit('/').next().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            snapshots
                .path()
                .join("transformers")
                .join(run)
                .join("manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["kind"], "full", "{manifest}");
    assert_eq!(manifest["status"], "complete");
    assert_eq!(
        manifest["rows"], GRID_ROWS,
        "every row, no change set mixed in"
    );
    t.s.logout().await;
}
