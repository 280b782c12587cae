//! floe's Snowflake client against floe's Snowflake emulator: every grid
//! table comes back exactly as the parquet it was served from, over many
//! chunks; errors keep Snowflake's codes; `floe run` loads through it.

use arrow::record_batch::RecordBatch;
use emulator::{Emulator, EmulatorConfig, User};
use futures::TryStreamExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pipeline::source::snowflake::{SnowflakeError, SnowflakeSession};
use schemas::config::SnowflakeConfig;

use crate::support::*;

const CHUNK_ROWS: usize = 1_500;

async fn emulator() -> Emulator {
    Emulator::start(EmulatorConfig {
        chunk_rows: CHUNK_ROWS,
        users: vec![User {
            name: "floe".into(),
            password: Some("grid-secret".into()),
            rsa_public_key: Some(std::fs::read_to_string(key("rsa_key.pub")).unwrap()),
            oauth_token: Some("oauth-access-token".into()),
        }],
        ..EmulatorConfig::new(grid_dir(), "floe", "grid-secret")
    })
    .await
    .expect("emulator starts")
}

fn key(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

fn client_config(emulator: &Emulator, password: &str) -> SnowflakeConfig {
    SnowflakeConfig {
        account: Some("emulator".into()),
        user: Some("FLOE".into()),
        password: Some(password.into()),
        host: Some("127.0.0.1".into()),
        port: Some(emulator.port()),
        protocol: Some("http".into()),
        prefetch_threads: 3,
        max_buffered_bytes: 8 << 20,
        ..Default::default()
    }
}

fn parquet_table(name: &str) -> RecordBatch {
    let file = std::fs::File::open(grid_dir().join(format!("{name}.parquet"))).unwrap();
    let batches: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect();
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

#[tokio::test]
async fn every_grid_table_reads_back_exactly_over_many_chunks() {
    let emulator = emulator().await;
    let session = SnowflakeSession::login(&client_config(&emulator, "grid-secret"))
        .await
        .unwrap();
    for d in schemas::datasets::ALL {
        let result = session
            .query(&format!("SELECT * FROM {}", d.snowflake_table))
            .await
            .unwrap();
        assert_eq!(result.total, GRID_ROWS, "{}", d.name);
        let schema = result.schema.clone();
        let batches: Vec<RecordBatch> = session.stream(result).try_collect().await.unwrap();
        assert!(
            batches.len() >= 10,
            "{}: only {} chunks",
            d.name,
            batches.len()
        );
        let got = arrow::compute::concat_batches(&schema, &batches).unwrap();
        let want = parquet_table(d.snowflake_table);
        assert_eq!(got.num_rows(), want.num_rows(), "{}", d.name);
        for (i, f) in want.schema().fields().iter().enumerate() {
            assert_eq!(
                got.schema().field(i).data_type(),
                f.data_type(),
                "{}.{}",
                d.name,
                f.name()
            );
            assert_eq!(
                got.column(i).as_ref(),
                want.column(i).as_ref(),
                "{}.{}",
                d.name,
                f.name()
            );
        }
    }
    session.logout().await;
}

#[tokio::test]
async fn login_and_sql_errors_keep_snowflakes_codes() {
    let emulator = emulator().await;
    match SnowflakeSession::login(&client_config(&emulator, "wrong")).await {
        Err(SnowflakeError::Login { code, message }) => {
            assert_eq!(code, "390100");
            assert!(
                message.contains("Incorrect username or password"),
                "{message}"
            );
        }
        other => panic!("expected a login error, got {:?}", other.err()),
    }
    let session = SnowflakeSession::login(&client_config(&emulator, "grid-secret"))
        .await
        .unwrap();
    match session.query("SELECT * FROM NO_SUCH_TABLE").await {
        Err(e @ SnowflakeError::Query { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("002003") && text.contains("42S02") && text.contains("NO_SUCH_TABLE"),
                "{text}"
            );
        }
        other => panic!("expected a query error, got {:?}", other.err()),
    }
}

#[tokio::test]
async fn floe_run_loads_through_the_emulator() {
    let emulator = emulator().await;
    let url = fresh_db("through_emulator").await;
    let mut config = shipped_config();
    config.snowflake = client_config(&emulator, "grid-secret");
    for table in ["topology", "vegetation"] {
        let report = run(&config, table, &url, None).await;
        assert_success(&report);
        assert_eq!(report.final_count, Some(GRID_ROWS));
    }
    // Same content as a load from the parquet files themselves.
    let via_parquet = fresh_db("through_parquet").await;
    assert_success(&run(&config, "topology", &via_parquet, Some(grid_dir())).await);
    let (a, b) = (connect(&url).await, connect(&via_parquet).await);
    assert_eq!(
        fingerprint(&a, "topology_connections_cache").await,
        fingerprint(&b, "topology_connections_cache").await
    );
}

/// Reads a whole table through the client.
async fn read_all(session: &SnowflakeSession, table: &str) -> RecordBatch {
    let result = session
        .query(&format!("SELECT * FROM {table}"))
        .await
        .unwrap();
    let schema = result.schema.clone();
    let batches: Vec<RecordBatch> = session.stream(result).try_collect().await.unwrap();
    arrow::compute::concat_batches(&schema, &batches).unwrap()
}

#[tokio::test]
async fn key_pair_logins_work_encrypted_or_not_and_a_wrong_key_is_refused() {
    let emulator = emulator().await;
    let jwt = |file: &str, passphrase: Option<&str>| SnowflakeConfig {
        password: None,
        authenticator: Some("SNOWFLAKE_JWT".into()),
        private_key_file: Some(key(file)),
        private_key_passphrase: passphrase.map(Into::into),
        ..client_config(&emulator, "unused")
    };
    for (file, pass) in [
        ("rsa_key.p8", None),
        ("rsa_key_aes.p8", Some("floe-test-passphrase")),
        ("rsa_key_des3.p8", Some("floe-test-passphrase")),
    ] {
        let session = SnowflakeSession::login(&jwt(file, pass))
            .await
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let result = session
            .query("SELECT COUNT(*) AS N FROM TRANSFORMERS")
            .await
            .unwrap();
        assert_eq!(result.total, 1, "{file}");
        session.logout().await;
    }
    match SnowflakeSession::login(&jwt("other_key.p8", None)).await {
        Err(SnowflakeError::Login { code, message }) => {
            assert_eq!(code, "390144");
            assert!(message.contains("JWT token is invalid"), "{message}");
        }
        other => panic!("a foreign key logged in: {:?}", other.err()),
    }
    let e = SnowflakeSession::login(&jwt("rsa_key_aes.p8", Some("wrong passphrase")))
        .await
        .err()
        .expect("a wrong passphrase fails");
    assert!(e.to_string().contains("wrong passphrase"), "{e}");
    assert!(!e.to_string().contains("wrong passphrase\""));
    assert_eq!(emulator.stats().live_sessions, 0);
}

#[tokio::test]
async fn oauth_login_works_and_a_bad_token_keeps_snowflakes_code() {
    let emulator = emulator().await;
    let oauth = |token: &str| SnowflakeConfig {
        password: None,
        authenticator: Some("oauth".into()),
        token: Some(token.into()),
        ..client_config(&emulator, "unused")
    };
    let session = SnowflakeSession::login(&oauth("oauth-access-token"))
        .await
        .unwrap();
    assert_eq!(
        read_all(&session, "TRANSFORMERS").await.num_rows() as u64,
        GRID_ROWS
    );
    session.logout().await;
    match SnowflakeSession::login(&oauth("stolen-token")).await {
        Err(SnowflakeError::Login { code, message }) => {
            assert_eq!(code, "390303");
            assert!(!message.contains("stolen-token"), "{message}");
        }
        other => panic!("a bad OAuth token logged in: {:?}", other.err()),
    }
}

#[tokio::test]
async fn an_expired_session_token_is_renewed_and_the_query_replayed() {
    let emulator = emulator().await;
    let session = SnowflakeSession::login(&client_config(&emulator, "grid-secret"))
        .await
        .unwrap();
    emulator.inject(|f| f.expire_session = true);
    let got = read_all(&session, "VEGETATION_RISK_ZONES").await;
    assert_eq!(got.num_rows() as u64, GRID_ROWS);
    let stats = emulator.stats();
    assert_eq!(stats.renewals, 1, "{stats:?}");
    assert_eq!(
        stats.logins, 1,
        "renewal must not need a new login: {stats:?}"
    );
    session.logout().await;
    assert_eq!(
        emulator.stats().live_sessions,
        0,
        "logout used the renewed token"
    );
}

#[tokio::test]
async fn when_the_master_token_is_gone_too_the_client_logs_in_again() {
    let emulator = emulator().await;
    let session = SnowflakeSession::login(&client_config(&emulator, "grid-secret"))
        .await
        .unwrap();
    emulator.inject(|f| {
        f.expire_session = true;
        f.expire_master = true;
    });
    let got = read_all(&session, "TRANSFORMERS").await;
    assert_eq!(got, parquet_table("TRANSFORMERS"));
    let stats = emulator.stats();
    assert_eq!((stats.logins, stats.renewals), (2, 0), "{stats:?}");
    session.logout().await;
    // The expired first session is still on the books; the second was closed.
    assert_eq!(emulator.stats().logouts, 1);
}

#[tokio::test]
async fn a_long_running_query_is_polled_until_its_result_is_ready() {
    let emulator = emulator().await;
    let session = SnowflakeSession::login(&client_config(&emulator, "grid-secret"))
        .await
        .unwrap();
    emulator.inject(|f| f.long_query_secs = 2);
    let started = std::time::Instant::now();
    let got = read_all(&session, "GRID_POWER_LINES").await;
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    assert_eq!(got.num_rows() as u64, GRID_ROWS);
    assert_eq!(got, parquet_table("GRID_POWER_LINES"));
    assert!(emulator.stats().result_polls >= 2, "{:?}", emulator.stats());
}

#[tokio::test]
async fn chunk_faults_are_retried_until_the_result_is_exact() {
    let emulator = emulator().await;
    let session = SnowflakeSession::login(&client_config(&emulator, "grid-secret"))
        .await
        .unwrap();
    let want = parquet_table("FLUX_OPS_CENTER_TOPOLOGY");
    // Each fault on its own, then all at once.
    let faults: [fn(&mut emulator::Faults); 4] = [
        |f| f.chunk_503 = 2,
        |f| f.truncated_chunk = 2,
        |f| {
            f.slow_chunk_ms = 1_500;
            f.slow_chunks = 1;
        },
        |f| {
            f.chunk_503 = 1;
            f.truncated_chunk = 1;
            f.login_failure = 0;
        },
    ];
    for (i, arm) in faults.iter().enumerate() {
        let before = emulator.stats().chunk_requests;
        emulator.inject(arm);
        let got = read_all(&session, "FLUX_OPS_CENTER_TOPOLOGY").await;
        assert_eq!(got, want, "fault set {i}");
        let requests = emulator.stats().chunk_requests - before;
        // 20,000 rows at 1,500 a chunk: 13 downloads, plus one per failed attempt.
        if i != 2 {
            assert!(
                requests > 13,
                "fault set {i}: no retry happened ({requests} requests)"
            );
        }
    }
}

#[tokio::test]
async fn a_transient_login_failure_is_retried_and_query_errors_keep_their_codes() {
    let emulator = emulator().await;
    emulator.inject(|f| f.login_failure = 2);
    let session = SnowflakeSession::login(&client_config(&emulator, "grid-secret"))
        .await
        .expect("two 503s then a good login");
    assert_eq!(emulator.stats().logins, 3);
    for (code, state, words) in [
        ("000606", "57P03", "No active warehouse"),
        ("003001", "42501", "Insufficient privileges"),
    ] {
        emulator.inject(|f| f.query_error = Some(code.into()));
        let e = session
            .query("SELECT * FROM TRANSFORMERS")
            .await
            .err()
            .expect("the injected error");
        let text = e.to_string();
        assert!(
            text.contains(code) && text.contains(state) && text.contains(words),
            "{text}"
        );
    }
}

#[tokio::test]
async fn geography_output_formats_all_load_the_same_geometry() {
    let emulator = emulator().await;
    let mut fingerprints = Vec::new();
    for format in ["GeoJSON", "WKT", "EWKB", "WKB"] {
        let url = fresh_db(&format!("geo_{}", format.to_lowercase())).await;
        let mut config = shipped_config();
        config.snowflake = SnowflakeConfig {
            geography_output_format: Some(format.into()),
            ..client_config(&emulator, "grid-secret")
        };
        let report = run(&config, "vegetation", &url, None).await;
        assert_success(&report);
        let client = connect(&url).await;
        fingerprints.push(fingerprint(&client, "vegetation_cache").await);
    }
    assert!(
        fingerprints.windows(2).all(|w| w[0] == w[1]),
        "{fingerprints:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_aborts_the_snowflake_query_and_keeps_the_target() {
    let emulator = emulator().await;
    let url = fresh_db("cancel_keeps_target").await;
    let mut config = shipped_config();
    config.snowflake = client_config(&emulator, "grid-secret");
    assert_success(&run(&config, "transformers", &url, None).await);
    let client = connect(&url).await;
    let before = fingerprint(&client, "transformers_cache").await;

    // A query Snowflake keeps running; Ctrl-C arrives while floe polls it.
    emulator.inject(|f| f.long_query_secs = 60);
    let (canceller, cancel) = pipeline::run::Cancel::new();
    let target = pipeline::postgres::Target::resolve(&config.target.with_url(&url)).unwrap();
    let options = pipeline::run::RunOptions {
        run_id: pipeline::run::new_run_id(),
        cancel,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let progress = std::sync::atomic::AtomicU64::new(0);
    let run = pipeline::run::run_table(&config, "transformers", &target, &options, &progress);
    let (report, ()) = tokio::join!(run, async {
        tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
        canceller.cancel();
    });
    assert_eq!(report.status, "cancelled", "{report:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert_eq!(report.final_count, Some(GRID_ROWS));
    assert_eq!(fingerprint(&client, "transformers_cache").await, before);
    let stats = emulator.stats();
    assert_eq!(
        stats.aborted.len(),
        1,
        "the query was not aborted: {stats:?}"
    );
    assert_eq!(stats.live_sessions, 0, "{stats:?}");
    assert!(staging_tables(&client).await.is_empty());
}

#[tokio::test]
async fn a_failing_sink_aborts_the_snowflake_query() {
    let emulator = emulator().await;
    let url = fresh_db("sink_failure_aborts").await;
    let mut config = shipped_config();
    config.snowflake = client_config(&emulator, "grid-secret");
    // A transform that breaks on the first row: a feeder id is no WKT.
    let table = config.tables.get_mut("transformers").unwrap();
    table.transform =
        Some("SELECT transformer_id, st_geomfromtext(feeder_id) AS geom FROM source".into());
    table.columns = Default::default();
    let report = run(&config, "transformers", &url, None).await;
    assert_eq!(report.status, "failed");
    let error = report.error.unwrap();
    assert!(error.contains("st_geomfromtext"), "{error}");
    let stats = emulator.stats();
    assert_eq!(stats.aborted.len(), 1, "{stats:?}");
    assert_eq!(stats.live_sessions, 0, "{stats:?}");
}

#[tokio::test]
async fn a_result_fault_during_a_run_leaves_the_target_as_it_was() {
    let emulator = emulator().await;
    let url = fresh_db("fault_keeps_target").await;
    let mut config = shipped_config();
    config.snowflake = client_config(&emulator, "grid-secret");
    assert_success(&run(&config, "vegetation", &url, None).await);
    let client = connect(&url).await;
    let before = fingerprint(&client, "vegetation_cache").await;
    // More 503s than the client's attempts per chunk: the download gives up.
    emulator.inject(|f| f.chunk_503 = 50);
    let report = run(&config, "vegetation", &url, None).await;
    assert_eq!(report.status, "failed");
    let error = report.error.unwrap();
    assert!(error.contains("503"), "{error}");
    assert_eq!(report.final_count, Some(GRID_ROWS));
    assert_eq!(fingerprint(&client, "vegetation_cache").await, before);
    assert!(staging_tables(&client).await.is_empty());
    emulator.inject(|f| f.chunk_503 = 0);
    assert_success(&run(&config, "vegetation", &url, None).await);
}

#[tokio::test]
async fn a_transform_that_fails_to_plan_still_ends_the_snowflake_session() {
    let emulator = emulator().await;
    let url = fresh_db("plan_failure_logs_out").await;
    let mut config = shipped_config();
    config.snowflake = client_config(&emulator, "grid-secret");
    let table = config.tables.get_mut("transformers").unwrap();
    table.transform = Some("SELECT no_such_column FROM source".into());
    let r = run(&config, "transformers", &url, None).await;
    assert_eq!(r.status, "failed");
    assert!(r.error.unwrap().contains("no_such_column"));
    let stats = emulator.stats();
    assert_eq!(
        stats.live_sessions, 0,
        "the session was left open: {stats:?}"
    );
    assert_eq!(stats.aborted.len(), 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_query_over_unchanged_data_is_answered_from_the_persisted_result() {
    // GIVEN an emulator serving its own copy of a grid table
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("TRANSFORMERS.parquet");
    std::fs::copy(grid_dir().join("TRANSFORMERS.parquet"), &file).unwrap();
    let emulator = Emulator::start(EmulatorConfig {
        chunk_rows: CHUNK_ROWS,
        ..EmulatorConfig::new(dir.path(), "floe", "grid-secret")
    })
    .await
    .unwrap();
    let session = SnowflakeSession::login(&client_config(&emulator, "grid-secret"))
        .await
        .unwrap();
    let first = read_all(&session, "TRANSFORMERS").await;
    assert_eq!(emulator.stats().cached_results, 0);

    // WHEN the same query runs again, THEN Snowflake's result cache answers
    // it (USE_CACHED_RESULT is on by default) with the same rows
    assert_eq!(read_all(&session, "TRANSFORMERS").await, first);
    assert_eq!(emulator.stats().cached_results, 1);

    // a session that turns the cache off runs the query again
    session
        .execute("ALTER SESSION SET USE_CACHED_RESULT = FALSE")
        .await
        .unwrap();
    assert_eq!(read_all(&session, "TRANSFORMERS").await, first);
    assert_eq!(emulator.stats().cached_results, 1);
    session
        .execute("ALTER SESSION SET USE_CACHED_RESULT = TRUE")
        .await
        .unwrap();

    // and once the table's data changes, the persisted result is stale
    let fewer = parquet_table("TRANSFORMERS").slice(0, 100);
    write_parquet(&file, std::slice::from_ref(&fewer));
    let changed = read_all(&session, "TRANSFORMERS").await;
    assert_eq!(changed.num_rows(), 100);
    assert_eq!(emulator.stats().cached_results, 1);
}
