//! `floe watch` against the emulator over HTTP and real PostGIS: changed
//! tables reach Postgres within a few intervals, idle ones cost only
//! change-token checks, failures stay with their table, `/metrics` parses
//! and agrees with `sync_runs`, `/healthz` follows Postgres, replicas
//! share the tables, SIGTERM drains.

use std::sync::Arc;
use std::time::{Duration, Instant};

use emulator::{Emulator, EmulatorConfig};
use pipeline::postgres::Target;
use pipeline::run::Cancel;
use pipeline::source::snowflake::SnowflakeSession;
use pipeline::watch::Watch;
use schemas::config::Config;
use tokio_postgres::Client;

use crate::incremental::floe_sessions;
use crate::support::*;

const TABLE: &str = "transformers";
const TARGET: &str = "public.transformers_cache";

/// A watcher running in this process, serving on a free port.
struct Running {
    watch: Arc<Watch>,
    addr: std::net::SocketAddr,
    stopper: pipeline::run::Canceller,
    task: tokio::task::JoinHandle<()>,
}

async fn start(config: &Config, tables: &[&str], url: &str) -> Running {
    let target = Target::resolve(&config.target.with_url(url)).expect("target");
    let tables: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    let watch = Arc::new(Watch::new(config, &tables, target, None).expect("watch"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stopper, stop) = Cancel::new();
    let w = Arc::clone(&watch);
    let task = tokio::spawn(async move {
        let (_, served) = tokio::join!(
            w.run(stop.clone()),
            pipeline::watch::serve(&w, listener, stop)
        );
        served.expect("serving");
    });
    Running {
        watch,
        addr,
        stopper,
        task,
    }
}

impl Running {
    async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{path}", self.addr))
            .await
            .expect("the watcher answers");
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn stop(self) {
        self.stopper.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("stops within the drain timeout")
            .unwrap();
    }

    /// Waits until `ok` holds for the status, or panics with it.
    async fn until(&self, what: &str, within: Duration, ok: impl Fn(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            let status = serde_json::to_value(self.watch.status()).unwrap();
            if ok(&status) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {status:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The shipped config on the emulator, watching every second, no full
/// refresh on a schedule, no snapshots.
async fn watched(emulator: &Emulator) -> (Config, SnowflakeSession) {
    let mut config = shipped_config();
    config.snowflake = emulator_login(emulator.port(), "floe", "pw");
    config.snapshots.enabled = false;
    config.watch.full_refresh = "off".into();
    config.watch.incremental_every = "1s".into();
    let s = SnowflakeSession::login(&config.snowflake)
        .await
        .expect("login");
    s.execute("ALTER TABLE TRANSFORMERS SET CHANGE_TRACKING = TRUE")
        .await
        .unwrap();
    (config, s)
}

/// The Prometheus project's OpenMetrics parser (strict): every sample as
/// (name, labels, value); a malformed exposition fails the test.
fn parse_metrics(text: &str) -> Vec<(String, serde_json::Map<String, serde_json::Value>, f64)> {
    use std::io::Write;
    let mut child = std::process::Command::new(python())
        .args([
            "-c",
            "import sys, json\n\
             from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
             out = [[s.name, s.labels, s.value] for f in text_string_to_metric_families(sys.stdin.read()) for s in f.samples]\n\
             print(json.dumps(out))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "not valid OpenMetrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<(String, serde_json::Map<String, serde_json::Value>, f64)>>(
        &out.stdout,
    )
    .unwrap()
}

fn sample(
    samples: &[(String, serde_json::Map<String, serde_json::Value>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).and_then(|x| x.as_str()) == Some(v))
        })
        .map(|(_, _, v)| *v)
}

async fn cache_equals_source(client: &Client, reference: &Client) -> bool {
    fingerprint(client, TARGET).await == fingerprint(reference, TARGET).await
}

/// A full refresh of the source as it is now into `db` (on the shared cluster).
async fn reference(config: &Config, db: &str) -> Client {
    let url = fresh_db(db).await;
    assert_success(&run(config, TABLE, &url, None).await);
    connect(&url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_syncs_a_changed_table_within_three_intervals_and_asks_an_idle_one_only_for_its_token(
) {
    // A cluster of its own: it is stopped below to see /healthz follow it.
    let mut cluster = tokio::task::spawn_blocking(pipeline::cluster::EphemeralCluster::start)
        .await
        .unwrap()
        .expect("a cluster of its own");
    cluster.stop_when_process_exits().unwrap();
    let url = cluster.url();
    let emulator = Emulator::start(EmulatorConfig::new(grid_dir(), "floe", "pw"))
        .await
        .unwrap();
    let (config, s) = watched(&emulator).await;
    let client = connect(&url).await;
    let since: String = client
        .query_one("SELECT now()::text", &[])
        .await
        .unwrap()
        .get(0);
    let w = start(&config, &[TABLE], &url).await;

    // Never loaded: the first tick loads it (a full refresh: no watermark yet).
    w.until("the first load", Duration::from_secs(120), |s| {
        s["tables"][0]["state"] == "ok" && s["tables"][0]["last_run"]["status"] == "success"
    })
    .await;
    let first = serde_json::to_value(w.watch.status()).unwrap();
    assert_eq!(first["tables"][0]["last_run"]["mode"], "full", "{first:#}");
    assert_eq!(
        first["tables"][0]["last_run"]["reason"], "no_watermark",
        "{first:#}"
    );

    // Idle: every statement Snowflake sees is a change-token check.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = emulator.stats();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = emulator.stats();
    let (queries, metadata) = (
        after.queries - before.queries,
        after.metadata_queries - before.metadata_queries,
    );
    assert!(metadata >= 2, "a check per interval: {metadata} in 3 s");
    assert_eq!(queries, metadata, "an idle table costs no warehouse query");
    assert_eq!(after.logins, before.logins, "one session kept across ticks");
    let idle = serde_json::to_value(w.watch.status()).unwrap();
    let lag = idle["tables"][0]["lag_seconds"].as_f64().unwrap();
    assert!(
        lag < 2.5,
        "an idle table that is current does not lag: {lag} s"
    );

    // A change reaches Postgres within three 1 s intervals.
    let id: String = client
        .query_one(&format!("SELECT min(transformer_id) FROM {TARGET}"), &[])
        .await
        .unwrap()
        .get(0);
    s.execute(&format!(
        "UPDATE TRANSFORMERS SET LOAD_PCT = 12.5 WHERE TRANSFORMER_ID = '{id}'"
    ))
    .await
    .unwrap();
    s.execute("DELETE FROM TRANSFORMERS WHERE TRANSFORMER_ID = (SELECT MAX(TRANSFORMER_ID) FROM TRANSFORMERS)")
        .await
        .unwrap();
    let changed = Instant::now();
    let logins = emulator.stats().logins;
    let expected = reference(&config, "watch_ref").await;
    let reached = loop {
        if cache_equals_source(&client, &expected).await {
            break changed.elapsed();
        }
        assert!(
            changed.elapsed() < Duration::from_secs(10),
            "the change never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        reached <= Duration::from_secs(3),
        "arrived after {reached:?}"
    );
    assert_eq!(
        emulator.stats().logins,
        logins + 1,
        "the window is read on the watcher's kept session (the one login is the reference load's)"
    );
    w.until("the window recorded", Duration::from_secs(5), |s| {
        s["tables"][0]["last_run"]["mode"] == "incremental"
    })
    .await;
    let status = serde_json::to_value(w.watch.status()).unwrap();
    let t = &status["tables"][0];
    assert_eq!(
        (
            t["last_run"]["rows_updated"].as_u64(),
            t["last_run"]["rows_deleted"].as_u64()
        ),
        (Some(1), Some(1)),
        "{t:#}"
    );
    assert!(t["lag_seconds"].as_f64().unwrap() < 10.0, "{t:#}");
    assert_eq!(t["incremental_every_seconds"], 1);
    assert_eq!(t["full_refresh"], serde_json::Value::Null);

    // /metrics parses, and says what sync_runs says.
    let (code, text) = w.get("/metrics").await;
    assert_eq!(code, 200);
    let samples = parse_metrics(&text);
    let runs = client
        .query(
            "SELECT mode, status, count(*), coalesce(sum(rows_inserted), 0)::int8, \
             coalesce(sum(rows_updated), 0)::int8, coalesce(sum(rows_deleted), 0)::int8 \
             FROM floe.sync_runs WHERE table_name = $1 AND started_at >= $2::text::timestamptz GROUP BY mode, status",
            &[&TABLE, &since],
        )
        .await
        .unwrap();
    assert!(!runs.is_empty());
    for r in &runs {
        let (mode, status): (String, String) = (r.get(0), r.get(1));
        let n: i64 = r.get(2);
        assert_eq!(
            sample(
                &samples,
                "floe_runs_total",
                &[("table", TABLE), ("mode", &mode), ("status", &status)]
            ),
            Some(n as f64),
            "{mode}/{status}"
        );
        if mode == "incremental" && status == "success" {
            for (i, kind) in [(3, "inserted"), (4, "updated"), (5, "deleted")] {
                let rows: i64 = r.get(i);
                assert_eq!(
                    sample(
                        &samples,
                        "floe_rows_applied_total",
                        &[("table", TABLE), ("kind", kind)]
                    ),
                    Some(rows as f64),
                    "{kind}"
                );
            }
        }
    }
    let lag = sample(&samples, "floe_table_lag_seconds", &[("table", TABLE)]).expect("lag");
    assert!((0.0..10.0).contains(&lag), "{lag}");
    assert_eq!(
        sample(
            &samples,
            "floe_table_consecutive_failures",
            &[("table", TABLE)]
        ),
        Some(0.0)
    );
    assert!(sample(&samples, "floe_snowflake_logins_total", &[]).unwrap() >= 1.0);
    assert!(sample(&samples, "floe_change_checks_total", &[]).unwrap() >= 2.0);
    assert!(samples
        .iter()
        .any(|(n, l, _)| n == "floe_run_duration_seconds_count"
            && l.get("table").and_then(|t| t.as_str()) == Some(TABLE)));

    // /healthz follows Postgres: 503 (saying why) while it is down, 200 again after.
    assert_eq!(w.get("/healthz").await.0, 200);
    drop(client);
    let mut cluster = tokio::task::spawn_blocking(move || {
        cluster.stop().expect("stop");
        cluster
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let down = loop {
        let (code, body) = w.get("/healthz").await;
        if code == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "still {code} with Postgres down");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(down.contains("Postgres"), "{down}");
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.start_again().expect("start again");
        cluster
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while w.get("/healthz").await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not healthy again after Postgres came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    w.stop().await;
    // Stopped: no session of floe's is left, in Postgres or in Snowflake
    // (the one left there is this test's own).
    let client = connect(&cluster.url()).await;
    assert_eq!(floe_sessions(&client).await, 0);
    assert_eq!(emulator.stats().live_sessions, 1);
    s.logout().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_table_backs_off_alone_while_the_others_keep_syncing() {
    let url = fresh_db("watch_failing").await;
    let emulator = Emulator::start(EmulatorConfig::new(grid_dir(), "floe", "pw"))
        .await
        .unwrap();
    let (mut config, s) = watched(&emulator).await;
    let mut broken = config.tables[TABLE].clone();
    broken.target = "broken_cache".into();
    broken.transform = Some("SELECT no_such_column FROM source".into());
    config.tables.insert("broken".into(), broken);
    let client = connect(&url).await;
    let w = start(&config, &[TABLE, "broken"], &url).await;
    w.until(
        "transformers loaded, broken failing twice",
        Duration::from_secs(120),
        |s| {
            let t = |name: &str| {
                s["tables"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|t| t["table"] == name)
                    .cloned()
                    .unwrap()
            };
            t(TABLE)["state"] == "ok"
                && t("broken")["state"] == "failing"
                && t("broken")["consecutive_failures"].as_u64() >= Some(2)
        },
    )
    .await;
    s.execute("DELETE FROM TRANSFORMERS WHERE TRANSFORMER_ID = (SELECT MIN(TRANSFORMER_ID) FROM TRANSFORMERS)")
        .await
        .unwrap();
    let changed = Instant::now();
    let expected = reference(&config, "watch_failing_ref").await;
    while !cache_equals_source(&client, &expected).await {
        assert!(
            changed.elapsed() < Duration::from_secs(10),
            "the healthy table fell behind"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = serde_json::to_value(w.watch.status()).unwrap();
    let broken = status["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "broken")
        .unwrap();
    assert!(
        broken["last_run"]["error"]
            .as_str()
            .unwrap()
            .contains("no_such_column"),
        "{broken:#}"
    );
    // The backoff keeps its retries apart (1 s, 2 s, ... capped at 1 s here).
    let failed: i64 = client
        .query_one(
            "SELECT count(*) FROM floe.sync_runs WHERE table_name = 'broken' AND status = 'failed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(failed >= 2);
    w.stop().await;
    assert_eq!(floe_sessions(&client).await, 0);
    s.logout().await;
}

/// `floe watch` as a process on `url`, the shipped config plus `[watch]`.
fn watch_process(
    dir: &std::path::Path,
    port: u16,
    url: &str,
    watch: &str,
    tables: &[&str],
) -> KillOnDrop {
    let shipped =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("floe.toml"))
            .unwrap();
    // The shipped [watch] block gives way to the test's.
    let shipped = match shipped.find("\n[watch]") {
        Some(i) => {
            let end = shipped[i + 1..]
                .find("\n\n")
                .map_or(shipped.len(), |j| i + 1 + j);
            format!("{}{}", &shipped[..i], &shipped[end..])
        }
        None => shipped,
    };
    let path = dir.join(format!("watch-{}.toml", rand_suffix()));
    std::fs::write(
        &path,
        format!("{shipped}\n[watch]\nfull_refresh = \"off\"\nlisten = \"127.0.0.1:0\"\n{watch}\n"),
    )
    .unwrap();
    let mut cmd = floe_command();
    cmd.arg("watch")
        .arg("--config")
        .arg(&path)
        .args(["--target", url, "--no-snapshot"])
        .envs(snowflake_env(port, "floe", "pw"))
        .env_remove("FLOE_TARGET_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for t in tables {
        cmd.args(["--table", t]);
    }
    KillOnDrop(cmd.spawn().unwrap())
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn signal(child: &std::process::Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// Waits for the process to exit, at most `within`.
fn exit_within(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "still running after {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// No two runs of one table overlap in `sync_runs`.
async fn assert_no_overlap(client: &Client) {
    let rows = client
        .query(
            "SELECT table_name, run_id, started_at::text, finished_at::text, status FROM floe.sync_runs \
             WHERE started_at IS NOT NULL ORDER BY table_name, started_at",
            &[],
        )
        .await
        .unwrap();
    let mut last: Option<(String, String, Option<String>)> = None;
    for r in &rows {
        let (table, run, started, finished): (String, String, String, Option<String>) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        if let Some((t, prev, Some(prev_finished))) = &last {
            if *t == table {
                assert!(started >= *prev_finished, "{table}: run {run} started at {started}, before {prev} finished at {prev_finished}");
            }
        }
        last = Some((table, run, finished));
    }
}

/// Waits until every table's cache equals a full refresh of the source as it is now.
async fn in_sync(
    config: &Config,
    tables: &[&str],
    client: &Client,
    reference: &Client,
    reference_url: &str,
) {
    for t in tables {
        assert_success(&run(config, t, reference_url, None).await);
    }
    let target = |t: &str| format!("public.{}", config.tables[t].target);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut same = true;
        for t in tables {
            let exists: bool = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&target(t)])
                .await
                .unwrap()
                .get(0);
            same = same
                && exists
                && fingerprint(client, &target(t)).await
                    == fingerprint(reference, &target(t)).await;
        }
        if same {
            return;
        }
        assert!(Instant::now() < deadline, "the caches never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until a session of floe's is loading the transformers' cache.
async fn loading(client: &Client) {
    for _ in 0..400 {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name LIKE 'floe/transformers_cache/%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the load never started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_tables_without_overlap_and_one_survives_the_other_killed() {
    let url = fresh_db("watch_replicas").await;
    let reference_url = fresh_db("watch_replicas_ref").await;
    let emulator = Emulator::start(EmulatorConfig::new(grid_dir(), "floe", "pw"))
        .await
        .unwrap();
    let (mut config, s) = watched(&emulator).await;
    s.execute("ALTER TABLE FLUX_OPS_CENTER_ASSETS SET CHANGE_TRACKING = TRUE")
        .await
        .unwrap();
    config.snapshots.enabled = false;
    let dir = tempfile::tempdir().unwrap();
    let tables = [TABLE, "assets"];
    let mut a = watch_process(
        dir.path(),
        emulator.port(),
        &url,
        "incremental_every = \"1s\"",
        &tables,
    );
    let mut b = watch_process(
        dir.path(),
        emulator.port(),
        &url,
        "incremental_every = \"1s\"",
        &tables,
    );
    let client = connect(&url).await;
    let reference = connect(&reference_url).await;
    let churn = |round: u32| {
        let s = &s;
        async move {
            for i in 0..6 {
                s.execute(&format!(
                    "UPDATE TRANSFORMERS SET LOAD_PCT = {} WHERE TRANSFORMER_ID = (SELECT MIN(TRANSFORMER_ID) FROM TRANSFORMERS)",
                    round * 10 + i
                ))
                .await
                .unwrap();
                s.execute(&format!(
                    "UPDATE FLUX_OPS_CENTER_ASSETS SET STATUS = 'r{round}-{i}' WHERE ASSET_ID = (SELECT MIN(ASSET_ID) FROM FLUX_OPS_CENTER_ASSETS)"
                ))
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        }
    };
    in_sync(&config, &tables, &client, &reference, &reference_url).await;
    churn(1).await;
    in_sync(&config, &tables, &client, &reference, &reference_url).await;
    assert_no_overlap(&client).await;
    let failed: i64 = client
        .query_one(
            "SELECT count(*) FROM floe.sync_runs WHERE status <> 'success'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        failed, 0,
        "a table held by the other replica is skipped, not failed"
    );

    // One replica killed outright: the other keeps every table in sync.
    signal(&a.0, "-KILL");
    exit_within(&mut a.0, Duration::from_secs(10));
    churn(2).await;
    in_sync(&config, &tables, &client, &reference, &reference_url).await;
    assert_no_overlap(&client).await;

    // SIGTERM: exit 0, nothing left connected.
    signal(&b.0, "-TERM");
    assert!(exit_within(&mut b.0, Duration::from_secs(40)).success());
    assert_eq!(floe_sessions(&client).await, 0);
    s.logout().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_load_finishes_it_within_the_drain_timeout_or_rolls_it_back() {
    let emulator = Emulator::start(EmulatorConfig {
        chunk_rows: 1000,
        ..EmulatorConfig::new(grid_dir(), "floe", "pw")
    })
    .await
    .unwrap();
    let (_, s) = watched(&emulator).await;
    let dir = tempfile::tempdir().unwrap();
    for (db, drain, finishes) in [
        ("watch_drain_ok", "30s", true),
        ("watch_drain_cut", "1s", false),
    ] {
        let url = fresh_db(db).await;
        let client = connect(&url).await;
        // The first load (never loaded: a full refresh) is held up by slow chunks.
        emulator.inject(|f| {
            f.slow_chunk_ms = 2_500;
            f.slow_chunks = 2;
        });
        let mut w = watch_process(
            dir.path(),
            emulator.port(),
            &url,
            &format!("incremental_every = \"1s\"\ndrain_timeout = \"{drain}\""),
            &[TABLE],
        );
        loading(&client).await;
        signal(&w.0, "-TERM");
        let status = exit_within(&mut w.0, Duration::from_secs(60));
        assert!(status.success(), "{db}: {status:?}");
        let recorded: Vec<String> = client
            .query(
                "SELECT status FROM floe.sync_runs WHERE table_name = $1",
                &[&TABLE],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let exists: bool = client
            .query_one(
                "SELECT to_regclass('public.transformers_cache') IS NOT NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if finishes {
            assert_eq!(recorded, ["success"], "{db}");
            assert_eq!(fingerprint(&client, TARGET).await.0, GRID_ROWS as i64);
        } else {
            assert_eq!(recorded, ["cancelled"], "{db}");
            assert!(!exists, "{db}: a cancelled first load leaves no table");
        }
        assert!(staging_tables(&client).await.is_empty(), "{db}");
        assert_eq!(floe_sessions(&client).await, 0, "{db}");
    }
    s.logout().await;
}

#[tokio::test]
async fn a_cancel_request_stops_a_statement_the_server_is_busy_with() {
    // What a drained load's clean-up relies on: an index build (here a
    // sleep) does not finish first.
    let url = fresh_db("watch_cancel_request").await;
    let target = Target::resolve(&shipped_config().target.with_url(&url)).unwrap();
    let session = target
        .connect("floe/test/cancel", &shipped_config().load)
        .await
        .unwrap();
    let client = Arc::clone(&session.client);
    let busy = tokio::spawn(async move { client.batch_execute("SELECT pg_sleep(60)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    session.cancel_running().await;
    let result = tokio::time::timeout(Duration::from_secs(10), busy)
        .await
        .expect("stopped well before the minute")
        .unwrap();
    let e = result.expect_err("cancelled");
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{e}"
    );
    assert!(asked.elapsed() < Duration::from_secs(10));
}
