//! Atomicity of the full refresh: readers see the old or the new table,
//! never an empty or partial one; a failure midway changes nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::support::*;

#[tokio::test]
async fn readers_only_ever_see_the_old_or_the_new_table() {
    let url = fresh_db("atomic_swap").await;
    let config = shipped_config();
    assert_success(&run(&config, "topology", &url, Some(grid_dir())).await);

    let bigger = tempfile::tempdir().unwrap();
    let new_rows = GRID_ROWS + 13_000;
    emulator::generate::generate(&emulator::generate::GenerateOptions {
        out: bigger.path().to_path_buf(),
        tables: vec![&schemas::datasets::TOPOLOGY],
        rows: Some(new_rows),
        seed: 7,
    })
    .unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (url, done) = (url.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            let client = connect(&url).await;
            let mut seen = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let n: i64 = client
                    .query_one("SELECT count(*) FROM topology_connections_cache", &[])
                    .await
                    .expect("a reader never gets an error during the refresh")
                    .get(0);
                seen.push(n as u64);
            }
            seen
        })
    };
    let report = run(&config, "topology", &url, Some(bigger.path())).await;
    done.store(true, Ordering::Relaxed);
    let seen = reader.await.unwrap();
    assert_success(&report);
    assert!(
        seen.len() >= 5,
        "the reader ran only {} queries during the refresh",
        seen.len()
    );
    assert!(
        seen.iter().all(|n| *n == GRID_ROWS || *n == new_rows),
        "reader saw counts other than old/new: {seen:?}"
    );
    assert_eq!(
        seen.first(),
        Some(&GRID_ROWS),
        "the old table stays readable while the new one loads"
    );
    let client = connect(&url).await;
    let (n, _) = fingerprint(&client, "topology_connections_cache").await;
    assert_eq!(n as u64, new_rows);
    assert!(staging_tables(&client).await.is_empty());
}

#[tokio::test]
async fn a_failure_midway_leaves_the_old_table_intact() {
    let url = fresh_db("failure_midway").await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.parquet");
    points_parquet(&good, 10_000, None);
    assert_success(
        &run(
            &parquet_config(&good, "points_cache", POINTS),
            "t",
            &url,
            None,
        )
        .await,
    );
    let client = connect(&url).await;
    let before = fingerprint(&client, "points_cache").await;
    assert_eq!(before.0, 10_000);

    // Invalid geometry at row 15000: the first 8192-row batch is already in COPY when it is found.
    let bad_geometry = dir.path().join("bad_geometry.parquet");
    points_parquet(
        &bad_geometry,
        20_000,
        Some((15_000, "{\"type\":\"Point\",\"coordinates\":[oops]}")),
    );
    let r = run(
        &parquet_config(&bad_geometry, "points_cache", POINTS),
        "t",
        &url,
        None,
    )
    .await;
    assert_eq!(r.status, "failed");
    let e = r.error.unwrap();
    assert!(
        e.contains("row 15000") && e.contains("oops") && e.contains("st_geomfromgeojson"),
        "{e}"
    );
    assert_eq!(
        r.final_count,
        Some(10_000),
        "the report says what the untouched target holds"
    );
    assert_eq!(fingerprint(&client, "points_cache").await, before);

    // A NUL byte in text at row 12345, caught by the encoder.
    let nul = dir.path().join("nul.parquet");
    points_parquet(
        &nul,
        20_000,
        Some((12_345, "{\"type\":\"Point\",\"coordinates\":[1,2]}\u{0}")),
    );
    fails_naming(
        &url,
        &client,
        &nul,
        &POINTS.replace("st_geomfromgeojson(location)", "st_point(1.0, 2.0, 4326)"),
        &[
            "points_cache",
            "column location",
            "row 12345",
            "id=12345",
            "NUL",
        ],
    )
    .await;

    // A NULL key at row 12000 (the transform makes it), caught by the
    // encoder in the COPY's second batch.
    let keys = dir.path().join("keys.parquet");
    points_parquet(&keys, 20_000, None);
    fails_naming(
        &url,
        &client,
        &keys,
        &POINTS.replace(
            "SELECT id,",
            "SELECT CASE WHEN id = 12000 THEN NULL ELSE id END AS id,",
        ),
        &["points_cache", "column id", "row 12000", "cannot be NULL"],
    )
    .await;

    // A duplicate primary key, found by Postgres when the key is built after the load.
    let dup_dir = tempfile::tempdir().unwrap();
    points_parquet(&dup_dir.path().join("a.parquet"), 100, None);
    points_parquet(&dup_dir.path().join("b.parquet"), 100, None);
    let glob = format!("{}/*.parquet", dup_dir.path().display());
    let r = run(
        &parquet_config(std::path::Path::new(&glob), "points_cache", POINTS),
        "t",
        &url,
        None,
    )
    .await;
    let e = r.error.unwrap();
    assert!(e.contains("primary key") && e.contains("duplicate"), "{e}");
    assert_eq!(fingerprint(&client, "points_cache").await, before);

    assert!(
        staging_tables(&client).await.is_empty(),
        "failed runs drop their staging tables"
    );
    let idle: i64 = client
        .query_one(
            // This test's database: other tests share the cluster (one holds
            // a reader's transaction open on purpose).
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND state LIKE 'idle in transaction%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(idle, 0, "no session is left idle in transaction");
}

/// Loads `file` through `transform` into `points_cache`: the run must fail
/// with an error naming each of `names`, and leave the table as it was.
async fn fails_naming(
    url: &str,
    client: &tokio_postgres::Client,
    file: &std::path::Path,
    transform: &str,
    names: &[&str],
) {
    let before = fingerprint(client, "points_cache").await;
    let r = run(
        &parquet_config(file, "points_cache", transform),
        "t",
        url,
        None,
    )
    .await;
    let e = r.error.expect("the run fails");
    for name in names {
        assert!(e.contains(name), "{name:?} is not named in: {e}");
    }
    assert_eq!(fingerprint(client, "points_cache").await, before);
}

/// The first batch is made while the staging table is created (beside
/// it, not after): a bad row there must still leave nothing behind.
#[tokio::test]
async fn a_bad_row_in_the_first_batch_keeps_the_old_table_and_leaves_no_staging() {
    let url = fresh_db("bad_first_batch").await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.parquet");
    points_parquet(&good, 3_000, None);
    let config = |path: &std::path::Path| parquet_config(path, "points_cache", POINTS);
    assert_success(&run(&config(&good), "t", &url, None).await);
    let client = connect(&url).await;
    let before = fingerprint(&client, "points_cache").await;

    let bad = dir.path().join("bad_row_7.parquet");
    points_parquet(
        &bad,
        5_000,
        Some((7, "{\"type\":\"Point\",\"coordinates\":[oops]}")),
    );
    let r = run(&config(&bad), "t", &url, None).await;
    assert_eq!(r.status, "failed");
    let e = r.error.unwrap();
    assert!(e.contains("row 7") && e.contains("oops"), "{e}");
    assert_eq!(r.final_count, Some(3_000));
    assert_eq!(fingerprint(&client, "points_cache").await, before);
    assert!(staging_tables(&client).await.is_empty());
    assert_eq!(floe_idle_in_transaction(&client).await, 0);
    assert_eq!(newest_run_status(&client).await, "failed");

    let next = dir.path().join("next.parquet");
    points_parquet(&next, 4_000, None);
    assert_success(&run(&config(&next), "t", &url, None).await);
    assert_eq!(fingerprint(&client, "points_cache").await.0, 4_000);
}

/// After a load Postgres vacuums the new table for its inserts; a swap that
/// only ever waited `swap_lock_wait` (200 ms) never waited long enough
/// (`deadlock_timeout`, 1 s) for Postgres to cancel that autovacuum, so
/// the next refresh failed whenever the vacuum outlasted `lock_timeout`.
#[tokio::test]
async fn an_autovacuum_holding_the_table_gives_way_to_the_swap() {
    // A cluster of its own: the autovacuum launcher's nap is cluster-wide.
    let cluster = tokio::task::spawn_blocking(pipeline::cluster::EphemeralCluster::start)
        .await
        .unwrap()
        .unwrap();
    let url = cluster.url();
    let client = connect(&url).await;
    client
        .batch_execute("ALTER SYSTEM SET autovacuum_naptime = 1")
        .await
        .unwrap();
    client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.parquet");
    points_parquet(&first, 20_000, None);
    let mut config = parquet_config(&first, "points_cache", POINTS);
    config.load.lock_timeout = std::time::Duration::from_secs(3);
    assert_success(&run(&config, "t", &url, None).await);
    // An autovacuum that crawls (100 ms after every page) and starts on
    // any insert; floe carries these settings through the swap.
    client
        .batch_execute(
            "ALTER TABLE points_cache SET (autovacuum_vacuum_insert_threshold = 1, \
             autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_cost_delay = 100, \
             autovacuum_vacuum_cost_limit = 1)",
        )
        .await
        .unwrap();
    let autovacuums = "SELECT count(*) FROM pg_stat_activity \
         WHERE backend_type = 'autovacuum worker' AND query LIKE '%points_cache%'";
    let mut waited = 0;
    while client
        .query_one(autovacuums, &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(
            waited < 300,
            "no autovacuum of points_cache started in 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        waited += 1;
    }

    let second = dir.path().join("second.parquet");
    points_parquet(&second, 21_000, None);
    config = parquet_config(&second, "points_cache", POINTS);
    config.load.lock_timeout = std::time::Duration::from_secs(3);
    let r = run(&config, "t", &url, None).await;
    assert_success(&r);
    assert_eq!(fingerprint(&client, "points_cache").await.0, 21_000);
    assert!(staging_tables(&client).await.is_empty());
    assert_eq!(floe_idle_in_transaction(&client).await, 0);
    let cancelled = std::fs::read_to_string(cluster.data_dir().join("../postgres.log"))
        .unwrap_or_default()
        .contains("canceling autovacuum task");
    assert!(cancelled, "Postgres cancelled the autovacuum for the swap");
}

#[tokio::test]
async fn grants_survive_the_swap_and_invalid_geometry_can_become_null() {
    let url = fresh_db("grants_and_nulls").await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.parquet");
    points_parquet(&good, 1_000, None);
    assert_success(
        &run(
            &parquet_config(&good, "points_cache", POINTS),
            "t",
            &url,
            None,
        )
        .await,
    );
    let client = connect(&url).await;
    client
        .batch_execute("CREATE ROLE map_reader; GRANT SELECT ON points_cache TO map_reader")
        .await
        .unwrap();

    let bad = dir.path().join("bad.parquet");
    points_parquet(&bad, 1_000, Some((10, "not geojson")));
    let lenient = format!("{POINTS}\non_invalid_geometry = \"null\"");
    let r = run(
        &parquet_config(&bad, "points_cache", &lenient),
        "t",
        &url,
        None,
    )
    .await;
    assert_success(&r);
    assert_eq!(r.invalid_geometries, 1);
    let nulls: i64 = client
        .query_one("SELECT count(*) FROM points_cache WHERE geom IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(nulls, 1);
    let can_read: bool = client
        .query_one(
            "SELECT has_table_privilege('map_reader', 'points_cache', 'SELECT')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(can_read, "the replaced table keeps the old table's grants");
}

#[tokio::test]
async fn a_batch_larger_than_the_whole_in_flight_budget_still_goes_through() {
    // GIVEN the smallest budget (1 MiB) and 8192-row batches of polygons that
    // encode to several MiB each, so every frame exceeds the whole budget
    let url = fresh_db("tiny_budget").await;
    let mut config = shipped_config();
    config.load.max_in_flight_bytes = 1 << 20;
    // WHEN the table loads, frames pass one at a time instead of deadlocking
    let report = run(&config, "building_footprints", &url, Some(grid_dir())).await;
    // THEN everything arrives
    assert_success(&report);
    assert_eq!(report.final_count, Some(GRID_ROWS));
}

/// floe's sessions in this test's database, once closed ones have gone (a
/// backend leaves `pg_stat_activity` a moment after its client hangs up).
async fn floe_sessions_left(client: &tokio_postgres::Client) -> i64 {
    let mut n = -1;
    for _ in 0..50 {
        n = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name LIKE 'floe/%'",
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

/// Connects as a named session (so the swap's error can name it).
async fn named_reader(url: &str, application_name: &str) -> tokio_postgres::Client {
    let sep = if url.contains('?') { '&' } else { '?' };
    connect(&format!("{url}{sep}application_name={application_name}")).await
}

#[tokio::test]
async fn a_reader_holding_the_table_through_every_swap_attempt_is_named_and_nothing_changes() {
    let url = fresh_db("swap_blocked").await;
    let mut config = shipped_config();
    config.load.lock_timeout = std::time::Duration::from_secs(1);
    assert_success(&run(&config, "transformers", &url, Some(grid_dir())).await);
    let client = connect(&url).await;
    let before = fingerprint(&client, "transformers_cache").await;

    // A report left open in a transaction on the cache table.
    let reader = named_reader(&url, "map-report").await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM transformers_cache")
        .await
        .unwrap();
    let r = run(&config, "transformers", &url, Some(grid_dir())).await;
    assert_eq!(r.status, "failed");
    let e = r.error.unwrap();
    assert!(
        e.contains("attempts over")
            && e.contains("map-report")
            && e.contains("idle in transaction"),
        "{e}"
    );
    assert!(e.contains("SELECT count(*) FROM transformers_cache"), "{e}");
    assert_eq!(fingerprint(&client, "transformers_cache").await, before);
    assert!(staging_tables(&client).await.is_empty());
    // Every floe session is gone; the reader's transaction was never disturbed.
    assert_eq!(floe_sessions_left(&client).await, 0);
    reader.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn a_reader_holding_the_table_for_seconds_delays_other_readers_only_by_the_short_wait() {
    let url = fresh_db("swap_short_waits").await;
    let config = shipped_config();
    assert_eq!(
        config.load.swap_lock_wait,
        std::time::Duration::from_millis(200)
    );
    assert_success(&run(&config, "transformers", &url, Some(grid_dir())).await);
    // A report holds the table for 5 s from just before the swap: the swap
    // queues behind it, attempt after attempt, within lock_timeout (10 s).
    let reader = named_reader(&url, "long-report").await;
    let monitor = connect(&url).await;
    let hold = tokio::spawn(async move {
        loop {
            let staged: i64 = monitor
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'ANALYZE %transformers_cache__floe_%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if staged > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        reader
            .batch_execute("BEGIN; SELECT count(*) FROM transformers_cache")
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        reader.batch_execute("COMMIT").await.unwrap();
    });
    // Meanwhile the map keeps reading; each query is timed.
    let done = Arc::new(AtomicBool::new(false));
    let probe = {
        let (url, done) = (url.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            let client = connect(&url).await;
            let mut slowest = std::time::Duration::ZERO;
            let mut queries = 0;
            while !done.load(Ordering::Relaxed) {
                let started = std::time::Instant::now();
                client
                    .query_one("SELECT count(*) FROM transformers_cache", &[])
                    .await
                    .unwrap();
                slowest = slowest.max(started.elapsed());
                queries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            (slowest, queries)
        })
    };
    let started = std::time::Instant::now();
    let r = run(&config, "transformers", &url, Some(grid_dir())).await;
    let took = started.elapsed();
    done.store(true, Ordering::Relaxed);
    hold.await.unwrap();
    let (slowest, queries) = probe.await.unwrap();
    assert_success(&r);
    assert!(
        took >= std::time::Duration::from_secs(4),
        "the swap waited for the report: {took:?}"
    );
    assert!(queries > 20, "the map kept reading: {queries} queries");
    assert!(
        slowest < std::time::Duration::from_secs(1),
        "a swap waiting 5 s for a report delayed new readers {slowest:?}, not at most swap_lock_wait (200 ms)"
    );
}

#[tokio::test]
async fn rows_changed_on_their_way_into_staging_fail_the_checksum_and_keep_the_old_table() {
    let url = fresh_db("checksum_mismatch").await;
    let config = shipped_config();
    assert_success(&run(&config, "vegetation", &url, Some(grid_dir())).await);
    let client = connect(&url).await;
    let before = fingerprint(&client, "vegetation_cache").await;
    let recorded: Option<String> = client
        .query_one(
            "SELECT checksum FROM floe.sync_runs WHERE status = 'success'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded.as_deref().map(str::len), Some(16), "{recorded:?}");

    // Something in the database rewrites rows as they are inserted (here: a
    // trigger that an event trigger attaches to every new table). Same count,
    // different content.
    client
        .batch_execute(
            "CREATE FUNCTION tamper() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN NEW.species := upper(NEW.species); RETURN NEW; END $$;
             CREATE FUNCTION attach_tamper() RETURNS event_trigger LANGUAGE plpgsql AS $$
               DECLARE r record;
               BEGIN
                 FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() WHERE command_tag = 'CREATE TABLE' LOOP
                   EXECUTE format('CREATE TRIGGER tamper BEFORE INSERT ON %s FOR EACH ROW EXECUTE FUNCTION tamper()', r.object_identity);
                 END LOOP;
               END $$;
             CREATE EVENT TRIGGER attach_tamper ON ddl_command_end WHEN TAG IN ('CREATE TABLE')
               EXECUTE FUNCTION attach_tamper();",
        )
        .await
        .unwrap();
    let r = run(&config, "vegetation", &url, Some(grid_dir())).await;
    assert_eq!(r.status, "failed");
    let e = r.error.unwrap();
    assert!(
        e.contains("checksum") && e.contains("left unchanged"),
        "{e}"
    );
    assert_eq!(fingerprint(&client, "vegetation_cache").await, before);
    assert!(staging_tables(&client).await.is_empty());

    client
        .batch_execute("DROP EVENT TRIGGER attach_tamper")
        .await
        .unwrap();
    let r = run(&config, "vegetation", &url, Some(grid_dir())).await;
    assert_success(&r);
    // The same data again: the same checksum as the first run.
    let last: Option<String> = client
        .query_one(
            "SELECT checksum FROM floe.sync_runs WHERE status = 'success' ORDER BY finished_at DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(last, recorded);
}

/// The most floe COPY sessions seen at once while `load` runs.
async fn most_copy_sessions_during<F: std::future::Future>(url: &str, load: F) -> (F::Output, i64) {
    let watcher = connect(url).await;
    let done = Arc::new(AtomicBool::new(false));
    let watching = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut most = 0i64;
            while !done.load(Ordering::Relaxed) {
                let n: i64 = watcher
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity \
                         WHERE datname = current_database() AND application_name LIKE 'floe/%' \
                         AND query LIKE 'COPY%' AND state = 'active'",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                most = most.max(n);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            most
        })
    };
    let out = load.await;
    done.store(true, Ordering::Relaxed);
    (out, watching.await.unwrap())
}

async fn last_checksum(client: &tokio_postgres::Client, target: &str) -> String {
    client
        .query_one(
            "SELECT checksum FROM floe.sync_runs WHERE target = $1 AND status = 'success' \
             ORDER BY started_at DESC LIMIT 1",
            &[&target],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_copy_streams_load_the_same_rows_as_one() {
    // GIVEN the topology table loaded through one COPY
    let url = fresh_db("copy_streams").await;
    let client = connect(&url).await;
    let mut config = shipped_config();
    assert_eq!(config.load.copy_streams, 1, "one stream is the default");
    assert_success(&run(&config, "topology", &url, Some(grid_dir())).await);
    let one = fingerprint(&client, "topology_connections_cache").await;
    let one_sum = last_checksum(&client, "public.topology_connections_cache").await;

    // WHEN it loads again through three
    config.load.copy_streams = 3;
    config.load.batch_size = 1024;
    let (report, most) = most_copy_sessions_during(
        &url,
        Box::pin(run(&config, "topology", &url, Some(grid_dir()))),
    )
    .await;

    // THEN three sessions copied at once, and the table holds exactly the same
    // rows, verified by the same checksum
    assert_success(&report);
    assert_eq!(most, 3, "COPY sessions seen at once");
    assert_eq!(report.final_count, Some(GRID_ROWS));
    assert_eq!(
        fingerprint(&client, "topology_connections_cache").await,
        one
    );
    assert_eq!(
        last_checksum(&client, "public.topology_connections_cache").await,
        one_sum
    );
    assert!(staging_tables(&client).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_row_in_one_of_several_copy_streams_keeps_the_old_table() {
    let url = fresh_db("copy_streams_failure").await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.parquet");
    points_parquet(&good, 10_000, None);
    let mut config = parquet_config(&good, "points_cache", POINTS);
    config.load.copy_streams = 4;
    config.load.batch_size = 1000;
    assert_success(&run(&config, "t", &url, None).await);
    let client = connect(&url).await;
    let before = fingerprint(&client, "points_cache").await;

    // Invalid geometry at row 15000: batches before it are already in the streams' COPYs.
    let bad = dir.path().join("bad.parquet");
    points_parquet(
        &bad,
        20_000,
        Some((15_000, "{\"type\":\"Point\",\"coordinates\":[oops]}")),
    );
    let mut config = parquet_config(&bad, "points_cache", POINTS);
    config.load.copy_streams = 4;
    config.load.batch_size = 1000;
    let r = run(&config, "t", &url, None).await;
    assert_eq!(r.status, "failed");
    let e = r.error.unwrap();
    assert!(e.contains("row 15000") && e.contains("oops"), "{e}");
    assert_eq!(fingerprint(&client, "points_cache").await, before);
    assert!(staging_tables(&client).await.is_empty());
    assert_eq!(
        floe_sessions_left(&client).await,
        0,
        "every COPY session is closed"
    );
}

/// What a REPEATABLE READ reader, whose snapshot was taken before a
/// refresh and who reads the cache only after it, counts there.
async fn counted_by_an_earlier_snapshot(copy_streams: usize, db: &str) -> (i64, u64) {
    let url = fresh_db(db).await;
    let mut config = shipped_config();
    config.load.copy_streams = copy_streams;
    assert_success(&run(&config, "transformers", &url, Some(grid_dir())).await);
    let bigger = tempfile::tempdir().unwrap();
    let new_rows = GRID_ROWS + 7;
    emulator::generate::generate(&emulator::generate::GenerateOptions {
        out: bigger.path().to_path_buf(),
        tables: vec![&schemas::datasets::TRANSFORMERS],
        rows: Some(new_rows),
        seed: 11,
    })
    .unwrap();
    let reader = connect(&url).await;
    reader
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .await
        .unwrap();
    assert_success(&run(&config, "transformers", &url, Some(bigger.path())).await);
    let n: i64 = reader
        .query_one("SELECT count(*) FROM transformers_cache", &[])
        .await
        .unwrap()
        .get(0);
    reader.batch_execute("COMMIT").await.unwrap();
    (n, new_rows)
}

#[tokio::test]
async fn a_repeatable_read_reader_whose_snapshot_predates_the_load_sees_the_new_rows() {
    // One COPY stream (the default) writes the rows frozen: visible to every snapshot.
    let (seen, new_rows) = counted_by_an_earlier_snapshot(1, "repeatable_read").await;
    assert_eq!(seen as u64, new_rows, "never an empty table");
}

#[tokio::test]
async fn with_several_copy_streams_an_older_repeatable_read_snapshot_sees_the_new_table_empty() {
    // As README says: FREEZE needs the one COPY session that truncated the
    // table, so rows from parallel streams are not visible to older snapshots.
    let (seen, _) = counted_by_an_earlier_snapshot(2, "repeatable_read_streams").await;
    assert_eq!(seen, 0);
}
