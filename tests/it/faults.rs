//! Faults during a run, against a real Postgres and the Snowflake emulator.
//! For each: the target keeps its previous content (count and checksum), no
//! floe session is left idle in transaction, no staging table survives the
//! next run, `sync_runs` records the failure with its cause, and the next
//! run succeeds.

use std::time::Duration;

use emulator::{Emulator, EmulatorConfig};
use schemas::config::Config;
use tokio_postgres::Client;

use crate::support::*;

async fn emulator() -> Emulator {
    Emulator::start(EmulatorConfig {
        chunk_rows: 2_000,
        ..EmulatorConfig::new(grid_dir(), "floe", "pw")
    })
    .await
    .expect("emulator starts")
}

fn config_for(emulator: &Emulator) -> Config {
    let mut config = shipped_config();
    config.snowflake = emulator_login(emulator.port(), "floe", "pw");
    config
}

/// The last recorded run of `target`: status and error.
async fn last_run(client: &Client, target: &str) -> (String, String) {
    let row = client
        .query_one(
            "SELECT status, coalesce(error, '') FROM floe.sync_runs WHERE target = $1 \
             ORDER BY started_at DESC LIMIT 1",
            &[&target],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Everything a fault must leave true, then a clean run.
async fn assert_survived(
    config: &Config,
    url: &str,
    client: &Client,
    before: &(i64, String),
    cause: &str,
) {
    assert_eq!(&fingerprint(client, "transformers_cache").await, before);
    assert_eq!(floe_idle_in_transaction(client).await, 0);
    let (status, error) = last_run(client, "public.transformers_cache").await;
    assert_eq!(status, "failed");
    assert!(
        error.contains(cause),
        "sync_runs error {error:?} lacks {cause:?}"
    );
    let again = run(config, "transformers", url, None).await;
    assert_success(&again);
    assert!(staging_tables(client).await.is_empty());
    assert_eq!(
        last_run(client, "public.transformers_cache").await.0,
        "success"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floe_backend_terminated_mid_copy() {
    let emulator = emulator().await;
    let config = config_for(&emulator);
    let url = fresh_db("fault_terminate").await;
    assert_success(&run(&config, "transformers", &url, None).await);
    let client = connect(&url).await;
    let before = fingerprint(&client, "transformers_cache").await;

    // A chunk that takes 3 s: COPY is open, waiting for data, when the backend dies.
    hold_next_copy(&emulator);
    let killer = {
        let client = connect(&url).await;
        tokio::spawn(async move {
            for _ in 0..100 {
                let n: i64 = client
                    .query_one(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                         WHERE datname = current_database() AND application_name LIKE 'floe/transformers_cache/%' \
                         AND query LIKE 'COPY%'",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if n > 0 {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        })
    };
    let r = run(&config, "transformers", &url, None).await;
    assert!(killer.await.unwrap(), "never saw floe's COPY");
    assert_eq!(r.status, "failed");
    let e = r.error.unwrap();
    assert!(e.contains("COPY"), "{e}");
    assert_survived(&config, &url, &client, &before, "COPY").await;
}

#[tokio::test]
async fn statement_timeout_fires_during_the_index_build() {
    let url = fresh_db("fault_statement_timeout").await;
    let mut config = shipped_config();
    let client = connect(&url).await;
    assert_success(&run(&config, "transformers", &url, Some(grid_dir())).await);
    let before = fingerprint(&client, "transformers_cache").await;
    // Index builds become slow (an event trigger sleeps inside CREATE INDEX).
    client
        .batch_execute(
            "CREATE FUNCTION slow_index() RETURNS event_trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_sleep(3); END $$;
             CREATE EVENT TRIGGER slow_index ON ddl_command_start WHEN TAG IN ('CREATE INDEX')
               EXECUTE FUNCTION slow_index();",
        )
        .await
        .unwrap();
    config.load.statement_timeout = Duration::from_millis(1_500);
    let r = run(&config, "transformers", &url, Some(grid_dir())).await;
    assert_eq!(r.status, "failed", "{r:?}");
    let e = r.error.unwrap();
    // (the key and the GiST index are built at once, on two sessions: both time out)
    assert!(
        (e.contains("building the primary key") || e.contains("building an index"))
            && e.contains("statement timeout"),
        "{e}"
    );
    client
        .batch_execute("DROP EVENT TRIGGER slow_index")
        .await
        .unwrap();
    // (the clean run reads the same parquet)
    assert_eq!(fingerprint(&client, "transformers_cache").await, before);
    assert_eq!(floe_idle_in_transaction(&client).await, 0);
    let (status, error) = last_run(&client, "public.transformers_cache").await;
    assert_eq!(status, "failed");
    assert!(error.contains("statement timeout"), "{error}");
    assert_success(&run(&config, "transformers", &url, Some(grid_dir())).await);
    assert!(staging_tables(&client).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_chunk_is_abandoned_after_read_timeout_and_fetched_again() {
    let emulator = emulator().await;
    let mut config = config_for(&emulator);
    config.snowflake.read_timeout = Duration::from_millis(800);
    let url = fresh_db("fault_stall").await;
    let client = connect(&url).await;
    assert_success(&run(&config, "transformers", &url, None).await);
    let before = fingerprint(&client, "transformers_cache").await;

    // Once: the stalled download is dropped and fetched again.
    let requests = emulator.stats().chunk_requests;
    emulator.inject(|f| {
        f.slow_chunk_ms = 5_000;
        f.slow_chunks = 1;
    });
    let started = std::time::Instant::now();
    assert_success(&run(&config, "transformers", &url, None).await);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited out the stall"
    );
    // 20,000 rows at 2,000 a chunk: 9 downloads, plus the retry.
    assert_eq!(emulator.stats().chunk_requests - requests, 10);
    assert_eq!(fingerprint(&client, "transformers_cache").await, before);

    // Every attempt stalls: a clear failure, the table as it was.
    emulator.inject(|f| {
        f.slow_chunk_ms = 5_000;
        f.slow_chunks = 100;
    });
    let r = run(&config, "transformers", &url, None).await;
    assert_eq!(r.status, "failed");
    let e = r.error.unwrap();
    assert!(e.contains("timed out") && e.contains("attempts"), "{e}");
    emulator.inject(|f| f.slow_chunks = 0);
    assert_survived(&config, &url, &client, &before, "timed out").await;
}

/// Unmounts the tiny filesystem however the test ends.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn the_target_disk_fills_up_during_copy() {
    // A 2 MiB tmpfs as a tablespace where new tables go: the staging table
    // fills it, the existing cache table lives elsewhere. (CI runs as root,
    // which mounting needs.)
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("tiny");
    std::fs::create_dir(&mount).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&mount)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        // Only root can mount the tiny disk (CI runs as root).
        eprintln!("SKIPPED the_target_disk_fills_up_during_copy: mounting a tmpfs needs root");
        return;
    }
    let _mounted = Mounted(mount.clone());
    let pg_dir = mount.join("pg");
    std::fs::create_dir(&pg_dir).unwrap();
    let owner = std::fs::metadata(cluster().data_dir()).unwrap();
    use std::os::unix::fs::MetadataExt;
    std::os::unix::fs::chown(&pg_dir, Some(owner.uid()), Some(owner.gid())).unwrap();

    let url = fresh_db("fault_disk_full").await;
    let client = connect(&url).await;
    let config = shipped_config();
    assert_success(&run(&config, "transformers", &url, Some(grid_dir())).await);
    let before = fingerprint(&client, "transformers_cache").await;
    let admin = connect(&cluster().url()).await;
    admin
        .batch_execute("DROP TABLESPACE IF EXISTS tiny")
        .await
        .unwrap();
    admin
        .batch_execute(&format!(
            "CREATE TABLESPACE tiny LOCATION '{}'",
            pg_dir.display()
        ))
        .await
        .unwrap();
    admin
        .batch_execute("ALTER DATABASE fault_disk_full SET default_tablespace = tiny")
        .await
        .unwrap();
    let r = run(&config, "transformers", &url, Some(grid_dir())).await;
    assert_eq!(r.status, "failed");
    let e = r.error.unwrap();
    assert!(
        e.contains("No space left on device") || e.contains("could not extend"),
        "{e}"
    );
    assert_eq!(fingerprint(&client, "transformers_cache").await, before);
    assert_eq!(floe_idle_in_transaction(&client).await, 0);
    let (status, error) = last_run(&client, "public.transformers_cache").await;
    assert_eq!(status, "failed");
    assert!(
        error.contains("space") || error.contains("extend"),
        "{error}"
    );
    // Space again: the next run succeeds and cleans up.
    admin
        .batch_execute("ALTER DATABASE fault_disk_full RESET default_tablespace")
        .await
        .unwrap();
    assert_success(&run(&config, "transformers", &url, Some(grid_dir())).await);
    assert!(staging_tables(&client).await.is_empty());
    admin.batch_execute("DROP TABLESPACE tiny").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarts_in_the_middle_of_a_run() {
    // A cluster of its own: restarting the shared one would hit other tests.
    let mut cluster = tokio::task::spawn_blocking(pipeline::cluster::EphemeralCluster::start)
        .await
        .unwrap()
        .expect("a second cluster");
    cluster.stop_when_process_exits().unwrap();
    let url = cluster.url();
    let emulator = emulator().await;
    let config = config_for(&emulator);
    assert_success(&run(&config, "transformers", &url, None).await);
    let before = {
        let client = connect(&url).await;
        fingerprint(&client, "transformers_cache").await
    };

    // A chunk that takes 3 s holds floe inside COPY; the server restarts then.
    hold_next_copy(&emulator);
    let restart = {
        let url = url.clone();
        tokio::spawn(async move {
            let client = connect(&url).await;
            for _ in 0..100 {
                if floe_copying(&client).await {
                    drop(client);
                    // The cluster comes back out of the task: dropping it would stop it.
                    let cluster = tokio::task::spawn_blocking(move || {
                        cluster.restart().expect("restart");
                        cluster
                    })
                    .await
                    .unwrap();
                    return Some(cluster);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None
        })
    };
    let r = run(&config, "transformers", &url, None).await;
    assert_eq!(r.status, "failed", "{r:?}");
    let _cluster = restart.await.unwrap().expect("never saw floe's COPY");
    let e = r.error.unwrap();
    assert!(e.contains("COPY"), "{e}");
    // The server is back: the table as it was, the failure recorded, a clean next run.
    let client = connect(&url).await;
    assert_survived(&config, &url, &client, &before, "COPY").await;
}

#[tokio::test]
async fn a_chunk_missing_from_the_result_s_chunk_list_fails_the_run_before_anything_is_loaded() {
    let emulator = emulator().await;
    let config = config_for(&emulator);
    let url = fresh_db("fault_dropped_chunk").await;
    let client = connect(&url).await;
    assert_success(&run(&config, "transformers", &url, None).await);
    let before = fingerprint(&client, "transformers_cache").await;

    // The answer lists one chunk fewer than its `total` counts: staging
    // would hold exactly what floe read, 2,000 rows short of the source.
    emulator.inject(|f| f.dropped_chunk = 1);
    let r = run(&config, "transformers", &url, None).await;
    assert_eq!(r.status, "failed");
    let e = r.error.unwrap();
    assert!(
        e.contains("incomplete")
            && e.contains("Snowflake counts 20000 rows")
            && e.contains("hold 18000"),
        "{e}"
    );
    assert_eq!(r.rows_synced, 0);
    assert_survived(&config, &url, &client, &before, "incomplete").await;
}

#[tokio::test]
async fn a_chunk_that_inflates_a_thousandfold_is_refused_as_a_failed_download() {
    let emulator = emulator().await;
    let config = config_for(&emulator);
    let url = fresh_db("fault_chunk_bomb").await;
    let client = connect(&url).await;
    assert_success(&run(&config, "transformers", &url, None).await);
    let before = fingerprint(&client, "transformers_cache").await;

    // Once: the bomb is refused without inflating it, and fetched again.
    emulator.inject(|f| f.chunk_bomb = 1);
    assert_success(&run(&config, "transformers", &url, None).await);
    assert_eq!(fingerprint(&client, "transformers_cache").await, before);

    // Every attempt: a clear failure, the table as it was.
    emulator.inject(|f| f.chunk_bomb = 100);
    let r = run(&config, "transformers", &url, None).await;
    assert_eq!(r.status, "failed");
    let e = r.error.unwrap();
    assert!(
        e.contains("inflates past its announced size") && e.contains("attempts"),
        "{e}"
    );
    emulator.inject(|f| f.chunk_bomb = 0);
    assert_survived(&config, &url, &client, &before, "inflates past").await;
}

#[tokio::test]
async fn a_query_still_running_at_query_timeout_is_cancelled_on_snowflake_and_fails_the_run() {
    let emulator = emulator().await;
    let mut config = config_for(&emulator);
    let url = fresh_db("fault_query_timeout").await;
    let client = connect(&url).await;
    assert_success(&run(&config, "transformers", &url, None).await);
    let before = fingerprint(&client, "transformers_cache").await;

    // A query that would run for ten minutes, against a 2 s deadline.
    config.snowflake.query_timeout = Duration::from_secs(2);
    emulator.inject(|f| f.long_query_secs = 600);
    let started = std::time::Instant::now();
    let r = run(&config, "transformers", &url, None).await;
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(r.status, "failed");
    let e = r.error.unwrap();
    assert!(
        e.contains("still running after") && e.contains("query_timeout"),
        "{e}"
    );
    let stats = emulator.stats();
    assert!(
        !stats.aborted.is_empty(),
        "the query was left running: {stats:?}"
    );
    assert_eq!(stats.live_sessions, 0, "{stats:?}");
    assert_survived(&config, &url, &client, &before, "query_timeout").await;
}

#[tokio::test]
async fn a_result_column_of_a_type_floe_cannot_read_fails_the_run_naming_the_column() {
    let emulator = emulator().await;
    let config = config_for(&emulator);
    let url = fresh_db("fault_unknown_type").await;
    let client = connect(&url).await;
    assert_success(&run(&config, "transformers", &url, None).await);
    let before = fingerprint(&client, "transformers_cache").await;

    // Snowflake answers with a column of a type floe has no decoding for.
    emulator.inject(|f| f.unknown_type = 1);
    let r = run(&config, "transformers", &url, None).await;
    assert_eq!(r.status, "failed");
    let e = r.error.unwrap();
    assert!(
        e.contains("LAST_READING_AT") && e.contains("`vector` is not supported"),
        "{e}"
    );
    assert_eq!(emulator.stats().live_sessions, 0);
    assert_survived(&config, &url, &client, &before, "vector").await;
}

/// `rows` readings, one of them (`nan_at`, 1-based) NaN.
fn readings_parquet(path: &std::path::Path, rows: i64, nan_at: Option<i64>) {
    use std::sync::Arc;
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("ID", arrow::datatypes::DataType::Int64, false),
        arrow::datatypes::Field::new("READING", arrow::datatypes::DataType::Float64, false),
    ]));
    let ids: Vec<i64> = (1..=rows).collect();
    let readings: Vec<f64> = ids
        .iter()
        .map(|&i| match nan_at {
            Some(row) if row == i => f64::NAN,
            _ => i as f64 / 4.0,
        })
        .collect();
    let batch = arrow::record_batch::RecordBatch::try_new(
        schema,
        vec![
            Arc::new(arrow::array::Int64Array::from(ids)) as arrow::array::ArrayRef,
            Arc::new(arrow::array::Float64Array::from(readings)) as arrow::array::ArrayRef,
        ],
    )
    .unwrap();
    write_parquet(path, &[batch]);
}

#[tokio::test]
async fn a_nan_bound_for_a_numeric_column_fails_the_run_naming_table_column_row_and_value() {
    let url = fresh_db("fault_nan_numeric").await;
    let client = connect(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("readings.parquet");
    let config = parquet_config(
        &file,
        "readings_cache",
        "primary_key = [\"id\"]\ntransform = \"SELECT id, reading FROM source\"\ncolumns = { reading = \"numeric(10,2)\" }",
    );
    readings_parquet(&file, 20_000, None);
    assert_success(&run(&config, "t", &url, None).await);
    let before = fingerprint(&client, "readings_cache").await;

    // Row 12,345 (the second Arrow batch) holds NaN, which numeric(10,2) cannot.
    readings_parquet(&file, 20_000, Some(12_345));
    let r = run(&config, "t", &url, None).await;
    assert_eq!(r.status, "failed");
    let e = r.error.unwrap();
    assert!(
        e.contains("column reading, row 12345, key (id=12345): value NaN")
            && e.contains("cannot be stored in a numeric column"),
        "{e}"
    );
    assert_eq!(fingerprint(&client, "readings_cache").await, before);
    assert_eq!(floe_idle_in_transaction(&client).await, 0);
    let (status, error) = last_run(&client, "public.readings_cache").await;
    assert_eq!(status, "failed");
    assert!(error.contains("value NaN"), "{error}");
    // Fixed at the source: the next run loads it and leaves nothing staged.
    readings_parquet(&file, 20_000, None);
    assert_success(&run(&config, "t", &url, None).await);
    assert!(staging_tables(&client).await.is_empty());
    assert_eq!(fingerprint(&client, "readings_cache").await, before);
}
