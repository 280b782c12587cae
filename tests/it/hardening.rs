//! Hardening: what floe drops, how it names things, and who runs first.

use std::time::Duration;

use emulator::{Emulator, EmulatorConfig};
use tokio_postgres::Client;

use crate::support::*;

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn only_staging_tables_floe_left_are_dropped_and_no_target_can_look_like_one() {
    // A target that looks like a staging table is refused at config load.
    let e = schemas::config::Config::parse(
        "[tables.t]\nparquet = \"x.parquet\"\ntarget = \"points_cache__floe_x\"\n",
        std::path::Path::new("test.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("target") && e.contains("__floe_"), "{e}");

    let url = fresh_db("orphans_only").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("points.parquet");
    points_parquet(&file, 1_000, None);
    let config = parquet_config(&file, "points_cache", POINTS);
    assert_success(&run(&config, "t", &url, None).await);
    let client = connect(&url).await;
    // A user's backup of the cache, in the staging name's very shape and in
    // another; and what a crashed run left (floe's mark on it).
    client
        .batch_execute(
            "CREATE TABLE points_cache__floe_backup AS SELECT * FROM points_cache; \
             CREATE TABLE points_cache__floe_x_old AS SELECT * FROM points_cache; \
             CREATE TABLE points_cache__floe_dead1234 (id bigint); \
             COMMENT ON TABLE points_cache__floe_dead1234 IS 'floe staging table of run 20261201T000000Z-dead1234'",
        )
        .await
        .unwrap();
    assert_success(&run(&config, "t", &url, None).await);
    assert_eq!(
        staging_tables(&client).await,
        ["points_cache__floe_backup", "points_cache__floe_x_old"],
        "the crashed run's staging table is gone, the user's tables stay"
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM points_cache__floe_backup").await,
        1_000
    );
    // The swapped-in table does not keep the staging table's mark.
    let comment: Option<String> = client
        .query_one(
            "SELECT obj_description('points_cache'::regclass, 'pg_class')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(comment, None);
}

/// A cache in a schema of its own (`target.schema`): the first run makes
/// the schema, the next replaces the table there and drops what a crashed
/// run left there, and nothing lands in `public`.
#[tokio::test]
async fn a_target_schema_of_its_own_is_made_then_loaded_again_dropping_a_crashed_run_s_table() {
    let url = fresh_db("own_schema").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("points.parquet");
    points_parquet(&file, 1_000, None);
    let mut config = parquet_config(&file, "points_cache", POINTS);
    config.target.schema = "grid maps".to_string();
    assert_success(&run(&config, "t", &url, None).await);
    let client = connect(&url).await;
    client
        .batch_execute(
            "CREATE TABLE \"grid maps\".points_cache__floe_dead1234 (id bigint); \
             COMMENT ON TABLE \"grid maps\".points_cache__floe_dead1234 \
               IS 'floe staging table of run 20261201T000000Z-dead1234'",
        )
        .await
        .unwrap();
    assert_success(&run(&config, "t", &url, None).await);
    assert_eq!(
        count(&client, "SELECT count(*) FROM \"grid maps\".points_cache").await,
        1_000
    );
    assert!(
        staging_tables(&client).await.is_empty(),
        "the crashed run's staging table is gone"
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relname LIKE 'points_cache%'"
        )
        .await,
        0,
        "nothing in public"
    );
}

#[tokio::test]
async fn a_target_of_the_longest_allowed_name_with_two_indexes_on_one_column_loads_again_and_again()
{
    let target = "points_cache_with_a_name_as_long_as_floe_permits";
    assert_eq!(target.len(), 48);
    let url = fresh_db("long_names").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("points.parquet");
    points_parquet(&file, 1_000, None);
    let extra = POINTS.replace(
        r#"indexes = [{ columns = ["geom"], method = "gist" }]"#,
        r#"indexes = [{ columns = ["geom"], method = "gist" }, { columns = ["geom"], method = "btree" }, { columns = ["location"], method = "btree" }]"#,
    );
    let config = parquet_config(&file, target, &extra);
    let names = config.tables["t"].index_names();
    assert!(names.iter().all(|n| n.len() <= 63), "{names:?}");
    for _ in 0..2 {
        assert_success(&run(&config, "t", &url, None).await);
    }
    let client = connect(&url).await;
    let indexes: Vec<String> = client
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE tablename = $1 ORDER BY 1",
            &[&target],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut expected = names.clone();
    expected.push(config.tables["t"].pkey_name());
    expected.sort();
    assert_eq!(indexes, expected, "every index under its derived name");
    assert_eq!(indexes.len(), 4);
}

/// What the swap could not carry over is refused before Snowflake is
/// queried. The login is made beside that check (it reads nothing): a
/// refused run logs in and out, runs no query and leaves no session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_run_logs_out_of_snowflake_without_a_query() {
    let emulator = Emulator::start(EmulatorConfig::new(grid_dir(), "floe", "pw"))
        .await
        .expect("emulator starts");
    let mut config = shipped_config();
    config.snowflake = emulator_login(emulator.port(), "floe", "pw");
    let url = fresh_db("refused_login").await;
    let client = connect(&url).await;
    assert_success(&run(&config, "transformers", &url, None).await);
    client
        .batch_execute(
            "CREATE MATERIALIZED VIEW transformer_count AS SELECT count(*) AS n FROM transformers_cache",
        )
        .await
        .unwrap();
    let before = emulator.stats();

    let refused = run(&config, "transformers", &url, None).await;
    let e = refused.error.expect("refused");
    assert!(e.contains("materialized view transformer_count"), "{e}");
    let after = emulator.stats();
    assert_eq!(
        (after.queries, after.metadata_queries),
        (before.queries, before.metadata_queries),
        "no query ran in Snowflake"
    );
    assert_eq!(
        after.logins - before.logins,
        after.logouts - before.logouts,
        "every login was logged out"
    );
    assert_eq!(after.live_sessions, 0);
    assert!(staging_tables(&client).await.is_empty());

    // Allowed to recompute the view, the next run loads.
    config.load.dependent_matviews = schemas::config::DependentMatviews::Refresh;
    assert_success(&run(&config, "transformers", &url, None).await);
}

/// floe watch skips a table another floe is loading. The run's record
/// session connects beside the table's lock, but its `running` row is
/// written only once the lock is held: a skipped run leaves no row, no
/// session, and the table as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_skipped_as_busy_leaves_no_record_no_session_and_the_table() {
    let config = shipped_config();
    let url = fresh_db("busy_skip").await;
    let client = connect(&url).await;
    assert_success(&run(&config, "transformers", &url, Some(grid_dir())).await);
    let loaded: i64 = client
        .query_one("SELECT count(*) FROM transformers_cache", &[])
        .await
        .unwrap()
        .get(0);

    // Another floe's lock on the table (its key, as floe takes it).
    let holder = connect(&url).await;
    holder
        .query_one(
            "SELECT pg_advisory_lock(hashtextextended($1, 0))",
            &[&"floe:public.transformers_cache"],
        )
        .await
        .unwrap();
    let target = pipeline::postgres::Target::resolve(&config.target.with_url(&url)).unwrap();
    let options = pipeline::run::RunOptions {
        run_id: pipeline::run::new_run_id(),
        parquet_dir: Some(grid_dir().to_path_buf()),
        skip_if_busy: true,
        ..Default::default()
    };
    let skipped = pipeline::run::run_table(
        &config,
        "transformers",
        &target,
        &options,
        &std::sync::atomic::AtomicU64::new(0),
    )
    .await;
    assert_eq!(skipped.status, "skipped", "{:?}", skipped.error);
    let rows = |run_id: String| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT count(*) FROM floe.sync_runs WHERE run_id = $1",
                    &[&run_id],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(
        rows(options.run_id.clone()).await,
        0,
        "the skipped run wrote no record"
    );
    assert_eq!(
        crate::incremental::floe_sessions(&client).await,
        0,
        "the skipped run's sessions are gone"
    );
    let kept: i64 = client
        .query_one("SELECT count(*) FROM transformers_cache", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, loaded, "the table as it was");

    // Once the other floe is done, the next run loads and is recorded.
    drop(holder);
    let next = run(&config, "transformers", &url, Some(grid_dir())).await;
    assert_success(&next);
    let statuses = run_statuses(&client, "transformers").await;
    assert_eq!(statuses, ["success", "success"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_of_a_busy_table_fails_at_once_without_touching_snowflake_or_the_first() {
    let emulator = Emulator::start(EmulatorConfig {
        chunk_rows: 2_000,
        ..EmulatorConfig::new(grid_dir(), "floe", "pw")
    })
    .await
    .expect("emulator starts");
    let mut config = shipped_config();
    config.snowflake = emulator_login(emulator.port(), "floe", "pw");
    let url = fresh_db("busy_table").await;
    let client = connect(&url).await;

    // The first run's query keeps running 3 s in Snowflake.
    emulator.inject(|f| f.long_query_secs = 3);
    let first = {
        let (config, url) = (config.clone(), url.clone());
        tokio::spawn(async move { run(&config, "transformers", &url, None).await })
    };
    // Wait until the first run's query is running (floe polls it).
    let mut running = false;
    for _ in 0..1_000 {
        running = emulator.stats().result_polls > 0;
        if running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(running, "the first run's query is running");
    let before = emulator.stats();

    let second = tokio::task::spawn_blocking({
        let url = url.clone();
        let env = snowflake_env(emulator.port(), "floe", "pw");
        move || {
            floe_command()
                .args([
                    "run",
                    "--table",
                    "transformers",
                    "--no-snapshot",
                    "--target",
                    &url,
                ])
                .envs(env)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(!second.status.success(), "{stdout}");
    assert!(stdout.contains("another floe run is loading"), "{stdout}");
    let after = emulator.stats();
    assert_eq!(
        (after.logins, after.queries),
        (before.logins, before.queries),
        "the busy run never reached Snowflake"
    );

    let first = first.await.unwrap();
    assert_success(&first);
    let statuses = run_statuses(&client, "transformers").await;
    assert_eq!(
        statuses,
        ["failed", "success"],
        "the busy run recorded as failed; the first never marked abandoned"
    );
}

#[tokio::test]
async fn a_transform_that_is_not_a_query_is_refused_naming_the_key() {
    let url = fresh_db("transform_not_a_query").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("points.parquet");
    points_parquet(&file, 10, None);
    let outside = dir.path().join("outside.csv");
    for transform in [
        format!(
            "CREATE EXTERNAL TABLE stolen STORED AS CSV LOCATION '{}'",
            file.display()
        ),
        format!("COPY (SELECT * FROM source) TO '{}'", outside.display()),
        "INSERT INTO source VALUES (1, 'x')".to_string(),
        "SET datafusion.execution.batch_size = 1".to_string(),
        "DROP TABLE source".to_string(),
    ] {
        let config = parquet_config(
            &file,
            "points_cache",
            &format!("primary_key = [\"id\"]\ntransform = \"{transform}\""),
        );
        let r = run(&config, "t", &url, None).await;
        let e = r.error.unwrap_or_default();
        assert!(
            e.contains("table t") && e.contains("`transform` must be one query"),
            "{transform}: {e}"
        );
        assert!(!outside.exists(), "{transform} wrote a file");
    }
    let client = connect(&url).await;
    let exists: bool = client
        .query_one("SELECT to_regclass('points_cache') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!exists);
}
