//! Rows/s from the Snowflake emulator into plain Arrow batches (no sink),
//! at 1, 2, 4 and 8 concurrent chunk downloads, for the topology table.
//!
//! `cargo bench --bench snowflake_fetch` (set `FLOE_BENCH_ROWS`, default
//! 2,000,000; `FLOE_BENCH_CHUNK_ROWS`, default 20,000). Each setting runs
//! `FLOE_BENCH_REPEATS` times (default 5), interleaved so drift on a noisy
//! machine hits all settings alike; the median is reported with min–max and
//! the ratio to one download measured in the same run. Only the download
//! and decode are timed: the emulator builds the whole result before it
//! answers the query, and that is the emulator's cost, not floe's. Runs at
//! 0 ms and at `FLOE_BENCH_LATENCY_MS` (default 50) of added latency per
//! chunk, which is what cloud storage costs and what parallel downloads hide.

use std::time::Instant;

use emulator::{Emulator, EmulatorConfig};
use futures::TryStreamExt;
use pipeline::source::snowflake::SnowflakeSession;
use schemas::config::SnowflakeConfig;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rows = env_or("FLOE_BENCH_ROWS", 2_000_000);
    let chunk_rows = env_or("FLOE_BENCH_CHUNK_ROWS", 20_000) as usize;
    let repeats = env_or("FLOE_BENCH_REPEATS", 5).max(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let topology = schemas::datasets::find("topology").expect("topology dataset");
    emulator::generate::write_table(
        topology,
        rows,
        42,
        &dir.path()
            .join(format!("{}.parquet", topology.snowflake_table)),
    )
    .expect("generate");
    let latency = env_or("FLOE_BENCH_LATENCY_MS", 50);
    for latency_ms in [0, latency] {
        let emulator = Emulator::start(EmulatorConfig {
            chunk_rows,
            chunk_latency: std::time::Duration::from_millis(latency_ms),
            ..EmulatorConfig::new(dir.path(), "bench", "bench")
        })
        .await
        .expect("emulator");
        measure(
            &emulator,
            topology.snowflake_table,
            rows,
            chunk_rows,
            repeats,
            latency_ms,
        )
        .await;
    }
}

async fn measure(
    emulator: &Emulator,
    table: &str,
    rows: u64,
    chunk_rows: usize,
    repeats: u64,
    latency_ms: u64,
) {
    let settings = [1usize, 2, 4, 8];
    let mut seconds: Vec<Vec<f64>> = vec![Vec::new(); settings.len()];
    for _ in 0..repeats {
        for (i, &prefetch) in settings.iter().enumerate() {
            let config = SnowflakeConfig {
                account: Some("emulator".into()),
                user: Some("bench".into()),
                password: Some("bench".into()),
                host: Some("127.0.0.1".into()),
                port: Some(emulator.port()),
                protocol: Some("http".into()),
                prefetch_threads: prefetch,
                ..Default::default()
            };
            let session = SnowflakeSession::login(&config).await.expect("login");
            let result = session
                .query(&format!("SELECT * FROM {table}"))
                .await
                .expect("query");
            let started = Instant::now();
            let mut stream = session.stream(result);
            let mut got = 0u64;
            while let Some(batch) = stream.try_next().await.expect("batch") {
                got += batch.num_rows() as u64;
            }
            seconds[i].push(started.elapsed().as_secs_f64());
            assert_eq!(got, rows);
            session.logout().await;
        }
    }
    println!(
        "snowflake_fetch: {rows} topology rows, {chunk_rows} rows/chunk, {latency_ms} ms chunk latency, {repeats} runs each (median, min–max)"
    );
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = median(&mut seconds[0].clone());
    for (i, &prefetch) in settings.iter().enumerate() {
        let v = &mut seconds[i];
        let m = median(v);
        println!(
            "  {prefetch} download(s): {:>9.0} rows/s  {m:.2} s ({:.2}–{:.2})  ×{:.2} vs 1",
            rows as f64 / m,
            v[0],
            v[v.len() - 1],
            base / m
        );
    }
}
