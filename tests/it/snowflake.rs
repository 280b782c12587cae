//! floe's Snowflake client against floe's Snowflake emulator: every grid
//! table comes back exactly as the parquet it was served from, over many
//! chunks; errors keep Snowflake's codes; `floe run` loads through it.

use arrow::record_batch::RecordBatch;
use emulator::{Emulator, EmulatorConfig};
use futures::TryStreamExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pipeline::snowflake::{SnowflakeError, SnowflakeSession};
use schemas::config::SnowflakeConfig;

use crate::support::*;

const CHUNK_ROWS: usize = 1_500;

async fn emulator() -> Emulator {
    Emulator::start(EmulatorConfig {
        data_dir: grid_dir().to_path_buf(),
        port: 0,
        chunk_rows: CHUNK_ROWS,
        users: vec![("floe".into(), "grid-secret".into())],
    })
    .await
    .expect("emulator starts")
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
