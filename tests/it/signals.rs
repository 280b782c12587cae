//! Signals at each stage of a full refresh. SIGTERM: floe stops the
//! server's work (not waiting for a COPY or an index build to end), exits
//! 143, and leaves the target as it was, no session behind, the run
//! recorded as cancelled, and the next run clean. SIGKILL: the server ends
//! the work itself, the target stays, and the next run records the killed
//! runs as abandoned and drops what they staged.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::support::*;

const TARGET: &str = "topology_connections_cache";

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// Waits (at most 60 s) until `sql` counts something.
async fn until(client: &Client, sql: &str) -> bool {
    for _ in 0..6_000 {
        if count(client, sql).await > 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// floe's sessions in this database, once closed ones have gone.
async fn floe_sessions(client: &Client) -> i64 {
    let mut n = -1;
    for _ in 0..200 {
        n = count(
            client,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name LIKE 'floe/%'",
        )
        .await;
        if n == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    n
}

/// A database `db` whose topology cache holds the grid, and 600,000
/// topology rows (enough that each stage lasts seconds) to load over it:
/// the rows, the database, a session and the cache's fingerprint.
async fn loaded(db: &str, seed: u64) -> (tempfile::TempDir, String, Client, (i64, String)) {
    let data = tempfile::tempdir().unwrap();
    emulator::generate::generate(&emulator::generate::GenerateOptions {
        out: data.path().to_path_buf(),
        tables: vec![&schemas::datasets::TOPOLOGY],
        rows: Some(600_000),
        seed,
    })
    .unwrap();
    let url = fresh_db(db).await;
    assert_success(&run(&shipped_config(), "topology", &url, Some(grid_dir())).await);
    let client = connect(&url).await;
    let before = fingerprint(&client, TARGET).await;
    (data, url, client, before)
}

/// `floe run` of the topology from `data`, once it has reached `stage` (a
/// query counting something once floe is there).
async fn floe_at(
    url: &str,
    data: &std::path::Path,
    client: &Client,
    stage: &str,
) -> std::process::Child {
    let child = floe_command()
        .args([
            "run",
            "--table",
            "topology",
            "--no-snapshot",
            "--target",
            url,
            "--parquet",
        ])
        .arg(data)
        .env_remove("FLOE_TARGET_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(until(client, stage).await, "floe never reached: {stage}");
    child
}

fn signal(child: &std::process::Child, name: &str) {
    let kill = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
}

const AT_COPY: &str = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' AND query LIKE 'COPY %'";
const AT_GIST: &str = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' AND query LIKE 'CREATE INDEX % USING gist%'";

/// Waits for the swap to queue behind a reader holding the table.
fn at_swap() -> String {
    format!("SELECT count(*) FROM pg_locks WHERE relation = '{TARGET}'::regclass AND NOT granted")
}

/// Starts `floe run` of the topology from `data`, waits for `stage`, sends
/// SIGTERM and checks what a stop must leave. Returns how long floe took
/// to exit.
async fn terminate_during(
    url: &str,
    data: &std::path::Path,
    client: &Client,
    stage: &str,
    before: &(i64, String),
) -> Duration {
    let child = floe_at(url, data, client, stage).await;
    signal(&child, "TERM");
    let sent = Instant::now();
    let o = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let took = sent.elapsed();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(143),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("cancelled"), "{out}");
    // Nothing of floe's is left on the server: no statement still running
    // for a client that has gone, no session idle in transaction.
    assert_eq!(
        floe_sessions(client).await,
        0,
        "after SIGTERM during: {stage}"
    );
    assert_eq!(
        count(client, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'CREATE %INDEX%' AND state = 'active'").await,
        0
    );
    assert_eq!(&fingerprint(client, TARGET).await, before);
    assert!(staging_tables(client).await.is_empty());
    assert_eq!(newest_run_status(client).await, "cancelled");
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_the_copy_the_index_build_and_the_swap_stops_the_server_s_work_and_keeps_the_target(
) {
    let (data, url, client, before) = loaded("signals", 3).await;
    let config = shipped_config();

    terminate_during(&url, data.path(), &client, AT_COPY, &before).await;
    let took = terminate_during(&url, data.path(), &client, AT_GIST, &before).await;
    assert!(
        took < Duration::from_secs(5),
        "floe stopped the GiST build rather than waiting for it: {took:?}"
    );

    // The swap: a report holds the table, so floe's swap keeps retrying.
    let reader = connect(&url).await;
    reader
        .batch_execute(&format!("BEGIN; SELECT count(*) FROM {TARGET}"))
        .await
        .unwrap();
    terminate_during(&url, data.path(), &client, &at_swap(), &before).await;
    reader.batch_execute("COMMIT").await.unwrap();

    // The next run is clean.
    let r = run(&config, "topology", &url, Some(data.path())).await;
    assert_success(&r);
    assert_eq!(r.final_count, Some(600_000));
}

/// SIGKILL at `stage`: floe can neither cancel nor record anything, so the
/// server must end its work (a COPY loses its client; an index build or a
/// lock wait ends, sooner with `client_connection_check_interval`) and the
/// target stay as it was.
async fn kill_during(
    url: &str,
    data: &std::path::Path,
    client: &Client,
    stage: &str,
    before: &(i64, String),
) {
    let child = floe_at(url, data, client, stage).await;
    signal(&child, "KILL");
    let o = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(o.status.signal(), Some(9));
    let mut left = -1;
    for _ in 0..5 {
        left = floe_sessions(client).await;
        if left == 0 {
            break;
        }
    }
    assert_eq!(left, 0, "floe's sessions outlived it at: {stage}");
    assert_eq!(&fingerprint(client, TARGET).await, before);
    assert_eq!(
        newest_run_status(client).await,
        "running",
        "nobody was left to record the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_the_copy_the_index_build_and_the_swap_leaves_the_target_and_no_work_behind()
{
    let (data, url, client, before) = loaded("sigkill", 5).await;
    let config = shipped_config();

    kill_during(&url, data.path(), &client, AT_COPY, &before).await;
    kill_during(&url, data.path(), &client, AT_GIST, &before).await;
    assert_eq!(
        count(&client, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'CREATE %INDEX%' AND state = 'active'").await,
        0
    );
    let reader = connect(&url).await;
    reader
        .batch_execute(&format!("BEGIN; SELECT count(*) FROM {TARGET}"))
        .await
        .unwrap();
    kill_during(&url, data.path(), &client, &at_swap(), &before).await;
    reader.batch_execute("COMMIT").await.unwrap();
    // What the killed runs left (their staging tables) is the next run's
    // to clean up; their records say they were abandoned.
    assert!(!staging_tables(&client).await.is_empty());

    let r = run(&config, "topology", &url, Some(data.path())).await;
    assert_success(&r);
    assert_eq!(r.final_count, Some(600_000));
    assert!(staging_tables(&client).await.is_empty());
    let statuses: Vec<String> = client
        .query("SELECT status FROM floe.sync_runs ORDER BY started_at", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        statuses,
        ["success", "abandoned", "abandoned", "abandoned", "success"]
    );
}
