//! Faults during an incremental run. Faults the client recovers from
//! (503s, truncated chunks, an expired session) leave a correct cache; the
//! others (the apply's backend terminated, floe SIGKILLed) leave rows and
//! watermark exactly as they were, no session behind, the failure
//! recorded, and the next run brings the cache to the source.

use std::time::Duration;

use emulator::EmulatorConfig;
use tokio_postgres::Client;

use crate::incremental::*;
use crate::support::*;

/// The emulator cutting results into chunks of 100 rows, so a window of a
/// few hundred changed rows is downloaded in chunks (where faults strike).
fn chunked() -> EmulatorConfig {
    EmulatorConfig {
        chunk_rows: 100,
        ..EmulatorConfig::new(grid_dir(), "floe", "pw")
    }
}

/// Updates the first 600 transformers (a value and the geometry) and
/// deletes the next 20.
fn changes() -> Vec<String> {
    vec![
        "UPDATE TRANSFORMERS SET LOAD_PCT = 7.5, LAT = LAT + 0.001 WHERE TRANSFORMER_ID IN \
         (SELECT TRANSFORMER_ID FROM TRANSFORMERS ORDER BY TRANSFORMER_ID LIMIT 600)"
            .into(),
        "DELETE FROM TRANSFORMERS WHERE TRANSFORMER_ID IN \
         (SELECT TRANSFORMER_ID FROM TRANSFORMERS ORDER BY TRANSFORMER_ID LIMIT 20 OFFSET 600)"
            .into(),
    ]
}

/// What a failed incremental run must leave: the rows and watermark as
/// they were, no floe session, the failure recorded with `cause`.
async fn assert_untouched(
    client: &Client,
    before: &(i64, String),
    watermark: Option<i64>,
    cause: &str,
) {
    assert_eq!(&fingerprint(client, TARGET).await, before);
    assert_eq!(watermark_of(client).await, watermark);
    assert_eq!(floe_sessions(client).await, 0, "a floe session was left");
    let temp: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname IN ('floe_upserts', 'floe_deleted')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(temp, 0, "temporary tables outlive their session");
    let row = client
        .query_one(
            "SELECT status, mode, coalesce(error, '') FROM floe.sync_runs WHERE target = $1 \
             ORDER BY started_at DESC LIMIT 1",
            &[&TARGET],
        )
        .await
        .unwrap();
    let (status, mode, error): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((status.as_str(), mode.as_str()), ("failed", "incremental"));
    assert!(
        error.contains(cause),
        "sync_runs error {error:?} lacks {cause:?}"
    );
}

/// The shipped config pointed at an emulator on `port`, and floe's client
/// logged in to it with change tracking on TRANSFORMERS.
async fn tracking(
    port: u16,
) -> (
    schemas::config::Config,
    pipeline::source::snowflake::SnowflakeSession,
) {
    let mut config = shipped_config();
    config.snowflake = emulator_login(port, "floe", "pw");
    let s = pipeline::source::snowflake::SnowflakeSession::login(&config.snowflake)
        .await
        .unwrap();
    s.execute("ALTER TABLE TRANSFORMERS SET CHANGE_TRACKING = TRUE")
        .await
        .unwrap();
    (config, s)
}

/// Kills floe's sessions of the table once one of them runs `COPY`; true if it did.
fn terminate_copy(url: &str) -> tokio::task::JoinHandle<bool> {
    let url = url.to_string();
    tokio::spawn(async move {
        let client = connect(&url).await;
        for _ in 0..200 {
            let n: i64 = client
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = current_database() \
                     AND application_name LIKE 'floe/transformers_cache/%' AND query LIKE 'COPY%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if n > 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_faults_and_an_expired_session_while_reading_the_window_are_recovered() {
    let t = setup_with("incr_fault_chunks", chunked()).await;
    t.dml(&changes()).await;
    let renewals = t.emulator.stats().renewals;
    t.emulator.inject(|f| {
        f.chunk_503 = 2;
        f.truncated_chunk = 1;
        f.expire_session = true;
    });
    let r = incremental(&t.config, &t.url, false).await;
    assert_eq!(assert_incremental(&r), (0, 600, 20), "{r:?}");
    let mut left = (u32::MAX, u32::MAX);
    t.emulator
        .inject(|f| left = (f.chunk_503, f.truncated_chunk));
    assert_eq!(left, (0, 0), "every chunk fault fired");
    assert!(
        t.emulator.stats().renewals > renewals,
        "the session was renewed"
    );
    t.assert_equals_source("incr_fault_chunks_ref").await;
    t.s.logout().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apply_s_backend_terminated_mid_copy_leaves_rows_and_watermark() {
    let t = setup_with("incr_fault_terminate", chunked()).await;
    let before = fingerprint(&t.client, TARGET).await;
    let watermark = t.watermark().await;
    t.dml(&changes()).await;
    // A chunk that takes 3 s: the COPY into the temporary table is open, waiting.
    hold_next_copy(&t.emulator);
    let killer = terminate_copy(&t.url);
    let r = incremental(&t.config, &t.url, false).await;
    assert!(killer.await.unwrap(), "never saw floe's COPY");
    assert_eq!(r.status, "failed", "{r:?}");
    assert!(r.error.as_deref().unwrap().contains("COPY"), "{r:?}");
    assert_untouched(&t.client, &before, watermark, "COPY").await;

    // The next run reads the same window again and applies it.
    let r = incremental(&t.config, &t.url, false).await;
    assert_eq!(assert_incremental(&r), (0, 600, 20), "{r:?}");
    t.assert_equals_source("incr_fault_terminate_ref").await;
    t.s.logout().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floe_sigkilled_mid_window_leaves_rows_and_watermark_and_the_next_run_catches_up() {
    let (_emulator, port) = emulator_process(
        grid_dir(),
        &[
            "--port",
            "0",
            "--user",
            "floe",
            "--password",
            "pw",
            "--chunk-rows",
            "100",
        ],
        &[],
    );
    let (config, s) = tracking(port).await;
    let url = fresh_db("incr_fault_kill").await;
    let client = connect(&url).await;
    assert_success(&run(&config, TABLE, &url, None).await);
    let before = fingerprint(&client, TARGET).await;
    let watermark = watermark_of(&client).await;
    for sql in changes() {
        s.execute(&sql).await.unwrap();
    }
    set_fault(
        port,
        serde_json::json!({"slow_chunk_ms": 3000, "slow_chunks": 1}),
    )
    .await;

    let mut child = floe_command()
        .args([
            "run",
            "--incremental",
            "--table",
            TABLE,
            "--no-snapshot",
            "--target",
            &url,
        ])
        .envs(snowflake_env(port, "floe", "pw"))
        .env_remove("FLOE_TARGET_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut killed = false;
    for _ in 0..400 {
        if floe_copying(&client).await {
            child.kill().unwrap();
            killed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = child.wait();
    assert!(killed, "never saw floe's COPY");

    assert_eq!(fingerprint(&client, TARGET).await, before);
    assert_eq!(watermark_of(&client).await, watermark);
    assert_eq!(
        floe_sessions(&client).await,
        0,
        "the server ends a dead floe's sessions"
    );
    // The next run: the dead one's record marked abandoned, the window applied.
    let r = crate::incremental::incremental(&config, &url, false).await;
    assert_eq!(assert_incremental(&r), (0, 600, 20), "{r:?}");
    let statuses: Vec<String> = client
        .query(
            "SELECT status FROM floe.sync_runs WHERE target = $1 ORDER BY started_at",
            &[&TARGET],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(statuses, ["success", "abandoned", "success"]);
    let reference = fresh_db("incr_fault_kill_ref").await;
    assert_success(&run(&config, TABLE, &reference, None).await);
    assert_eq!(
        fingerprint(&client, TARGET).await,
        fingerprint(&connect(&reference).await, TARGET).await
    );
    s.logout().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarting_mid_window_leaves_rows_and_watermark() {
    // A cluster of its own: restarting the shared one would hit other tests.
    let mut cluster = tokio::task::spawn_blocking(pipeline::cluster::EphemeralCluster::start)
        .await
        .unwrap()
        .expect("a second cluster");
    cluster.stop_when_process_exits().unwrap();
    let url = cluster.url();
    let emulator = emulator::Emulator::start(chunked()).await.unwrap();
    let (config, s) = tracking(emulator.port()).await;
    assert_success(&run(&config, TABLE, &url, None).await);
    let (before, watermark) = {
        let client = connect(&url).await;
        (
            fingerprint(&client, TARGET).await,
            watermark_of(&client).await,
        )
    };
    for sql in changes() {
        s.execute(&sql).await.unwrap();
    }
    // A chunk that takes 3 s holds floe inside its COPY; the server restarts then.
    hold_next_copy(&emulator);
    let restart = {
        let url = url.clone();
        tokio::spawn(async move {
            let client = connect(&url).await;
            for _ in 0..200 {
                if floe_copying(&client).await {
                    drop(client);
                    // The cluster comes back out of the task: dropping it would stop it.
                    return Some(
                        tokio::task::spawn_blocking(move || {
                            cluster.restart().expect("restart");
                            cluster
                        })
                        .await
                        .unwrap(),
                    );
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            None
        })
    };
    let r = crate::incremental::incremental(&config, &url, false).await;
    let _cluster = restart.await.unwrap().expect("never saw floe's COPY");
    assert_eq!(r.status, "failed", "{r:?}");
    let client = connect(&url).await;
    assert_untouched(&client, &before, watermark, "COPY").await;
    let r = crate::incremental::incremental(&config, &url, false).await;
    assert_eq!(assert_incremental(&r), (0, 600, 20), "{r:?}");
    s.logout().await;
}

/// `POST /floe/faults` to an emulator process.
async fn set_fault(port: u16, faults: serde_json::Value) {
    let answer = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/floe/faults"))
        .json(&faults)
        .send()
        .await
        .expect("fault request");
    assert!(answer.status().is_success(), "{answer:?}");
}
