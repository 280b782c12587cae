//! Every run is recorded in `floe.sync_runs`; a crashed run is marked
//! `abandoned` by the next; the shrink guard refuses to replace a table with
//! an empty or much smaller one; `floe status` shows it all.

use crate::support::*;

#[derive(Debug)]
struct Recorded {
    status: String,
    rows_read: Option<i64>,
    final_count: Option<i64>,
    source: Option<String>,
    error: Option<String>,
    finished: bool,
}

async fn recorded(client: &tokio_postgres::Client, target: &str) -> Vec<Recorded> {
    client
        .query(
            "SELECT status, rows_read, final_count, source, error, finished_at IS NOT NULL \
             FROM floe.sync_runs WHERE target = $1 ORDER BY started_at",
            &[&target],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| Recorded {
            status: r.get(0),
            rows_read: r.get(1),
            final_count: r.get(2),
            source: r.get(3),
            error: r.get(4),
            finished: r.get(5),
        })
        .collect()
}

/// A vegetation parquet file of `rows` rows.
fn vegetation(dir: &std::path::Path, rows: u64) -> std::path::PathBuf {
    let d = schemas::datasets::find("vegetation").unwrap();
    let path = dir.join(format!("veg_{rows}.parquet"));
    emulator::generate::write_table(d, rows, 7, &path).unwrap();
    path
}

fn vegetation_config(path: &std::path::Path) -> schemas::config::Config {
    parquet_config(
        path,
        "veg",
        "primary_key = [\"zone_id\"]\ntransform = \"SELECT zone_id, species, to_geography(canopy) AS canopy FROM source\"",
    )
}

#[tokio::test]
async fn every_run_is_recorded_and_the_shrink_guard_keeps_the_old_table() {
    let url = fresh_db("runs_shrink").await;
    let client = connect(&url).await;
    let tmp = tempfile::tempdir().unwrap();
    let full = vegetation(tmp.path(), 2_000);
    let small = vegetation(tmp.path(), 900);
    let empty = vegetation(tmp.path(), 0);

    assert_success(&run(&vegetation_config(&full), "t", &url, None).await);
    let before = fingerprint(&client, "veg").await;

    // Less than half the rows, then none: refused, old table kept.
    for (path, rows) in [(&small, 900), (&empty, 0)] {
        let r = run(&vegetation_config(path), "t", &url, None).await;
        assert_eq!(r.status, "failed", "{rows} rows were swapped in");
        let e = r.error.unwrap();
        assert!(
            e.contains(&format!("refusing to replace 2000 rows with {rows}")),
            "{e}"
        );
        assert!(e.contains("--allow-shrink"), "{e}");
        assert_eq!(r.final_count, Some(2_000));
        assert_eq!(fingerprint(&client, "veg").await, before);
        assert!(staging_tables(&client).await.is_empty());
    }
    // Asked for: the smaller table goes in.
    let target =
        pipeline::postgres::Target::resolve(&vegetation_config(&small).target.with_url(&url))
            .unwrap();
    let options = pipeline::run::RunOptions {
        run_id: pipeline::run::new_run_id(),
        allow_shrink: true,
        ..Default::default()
    };
    let r = pipeline::run::run_table(
        &vegetation_config(&small),
        "t",
        &target,
        &options,
        &std::sync::atomic::AtomicU64::new(0),
    )
    .await;
    assert_success(&r);
    assert_eq!(r.final_count, Some(900));

    let runs = recorded(&client, "public.veg").await;
    let statuses: Vec<&str> = runs.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["success", "failed", "failed", "success"]);
    assert!(runs.iter().all(|r| r.finished));
    assert_eq!(runs[0].rows_read, Some(2_000));
    assert_eq!(runs[0].final_count, Some(2_000));
    assert!(
        runs[0].source.as_deref().unwrap().starts_with("parquet "),
        "{:?}",
        runs[0]
    );
    assert_eq!(
        runs[1].final_count,
        Some(2_000),
        "a refused run records the kept count"
    );
    assert!(runs[1].error.as_deref().unwrap().contains("refusing"));
    assert_eq!(runs[3].final_count, Some(900));
}

#[tokio::test]
async fn a_killed_run_is_marked_abandoned_by_the_next_and_floe_status_shows_it() {
    // GIVEN a floe run killed (SIGKILL) while Snowflake still runs its query
    let (_emulator, port) = emulator_process(
        grid_dir(),
        &["--user", "etl", "--fault", "long-query-secs=60"],
        &[("SNOWFLAKE_PASSWORD", "pw")],
    );
    let url = fresh_db("runs_abandoned").await;
    let mut child = KillOnDrop(
        floe_command()
            .args(["run", "--table", "transformers", "--target", &url])
            .env_remove("FLOE_TARGET_URL")
            .envs(snowflake_env(port, "etl", "pw"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_for_stats(port, |s| s["result_polls"].as_u64() >= Some(1))
            .await
            .is_some()
    );
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let client = connect(&url).await;
    let runs = recorded(&client, "public.transformers_cache").await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, "running", "{runs:?}");

    // WHEN the next run comes (the fault is used up)
    let o = floe_command()
        .args(["run", "--table", "transformers", "--target", &url])
        .env_remove("FLOE_TARGET_URL")
        .envs(snowflake_env(port, "etl", "pw"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // THEN the killed run is `abandoned`, the new one `success` with its query id
    let runs = recorded(&client, "public.transformers_cache").await;
    let statuses: Vec<&str> = runs.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["abandoned", "success"]);
    assert!(runs[0]
        .error
        .as_deref()
        .unwrap()
        .contains("without recording a result"));
    assert!(
        runs[1]
            .source
            .as_deref()
            .unwrap()
            .starts_with("snowflake query "),
        "{runs:?}"
    );
    assert_eq!(runs[1].final_count, Some(GRID_ROWS as i64));

    // AND floe status shows both, newest first
    let o = floe_command()
        .args([
            "status",
            "--table",
            "transformers",
            "--output",
            "json",
            "--target",
            &url,
        ])
        .env_remove("FLOE_TARGET_URL")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let shown: Vec<&str> = status["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(shown, ["success", "abandoned"]);
    assert_eq!(status["runs"][0]["final_count"], GRID_ROWS);
    // The table's state: loaded from Snowflake, so with a watermark and its lag.
    let state = &status["tables"][0];
    assert_eq!(state["target"], "public.transformers_cache", "{status}");
    assert!(state["watermark"].as_str().is_some(), "{status}");
    assert!(
        state["lag_seconds"].as_f64().is_some_and(|l| l >= 0.0),
        "{status}"
    );
    let o = floe_command()
        .args(["status", "--target", &url])
        .env_remove("FLOE_TARGET_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("abandoned") && text.contains("public.transformers_cache"),
        "{text}"
    );
}

#[tokio::test]
async fn bookkeeping_tables_an_older_floe_made_gain_the_columns_added_since() {
    // GIVEN floe.sync_runs and floe.sync_state as the first floe made them,
    // each with a row of its own
    let url = fresh_db("runs_older_tables").await;
    let client = connect(&url).await;
    client
        .batch_execute(
            "CREATE EXTENSION IF NOT EXISTS postgis; CREATE SCHEMA floe; \
             CREATE TABLE floe.sync_runs (run_id text NOT NULL, table_name text NOT NULL, \
                 target text NOT NULL, mode text NOT NULL, source text, \
                 started_at timestamptz NOT NULL DEFAULT clock_timestamp(), finished_at timestamptz, \
                 rows_read bigint, rows_written bigint, final_count bigint, checksum text, \
                 status text NOT NULL, error text, PRIMARY KEY (run_id, table_name)); \
             INSERT INTO floe.sync_runs (run_id, table_name, target, mode, status, finished_at) \
                 VALUES ('old-run', 'old', 'public.old_cache', 'full', 'success', now()); \
             CREATE TABLE floe.sync_state (target text PRIMARY KEY, table_name text NOT NULL, \
                 watermark timestamptz, last_full_refresh timestamptz NOT NULL, run_id text NOT NULL, \
                 updated_at timestamptz NOT NULL DEFAULT clock_timestamp()); \
             INSERT INTO floe.sync_state (target, table_name, last_full_refresh, run_id) \
                 VALUES ('public.old_cache', 'old', now(), 'old-run')",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("points.parquet");
    points_parquet(&file, 1_000, None);
    let config = parquet_config(&file, "points_cache", POINTS);

    // WHEN a run loads a table
    let r = run(&config, "t", &url, None).await;

    // THEN it succeeds, both tables have every column, and the old rows stay
    assert_success(&r);
    let columns = |table: &'static str| {
        let client = &client;
        async move {
            client
                .query(
                    "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass \
                     AND attnum > 0 AND NOT attisdropped ORDER BY attname",
                    &[&table],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
        }
    };
    let runs = columns("floe.sync_runs").await;
    for added in [
        "reason",
        "rows_inserted",
        "rows_updated",
        "rows_deleted",
        "window_start",
        "window_end",
    ] {
        assert!(runs.iter().any(|c| c == added), "{added} in {runs:?}");
    }
    let state = columns("floe.sync_state").await;
    for added in ["source_fingerprint", "change_token"] {
        assert!(state.iter().any(|c| c == added), "{added} in {state:?}");
    }
    let recorded = recorded(&client, "public.points_cache").await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].status, "success");
    assert_eq!(recorded[0].final_count, Some(1_000));
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM floe.sync_runs WHERE run_id = 'old-run') \
                  + (SELECT count(*) FROM floe.sync_state WHERE run_id = 'old-run'), \
                    (SELECT count(*) FROM floe.sync_state WHERE target = 'public.points_cache')",
            &[],
        )
        .await
        .unwrap();
    let (kept, swapped): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(kept, 2, "the older floe's rows stay");
    assert_eq!(
        swapped, 1,
        "the swap recorded its state in the upgraded table"
    );
}
