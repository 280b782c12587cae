//! A Flight source that stops sending: the run fails at `[flight]
//! read_timeout` instead of holding the table's lock (and so every later
//! run) for as long as the server stays silent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// A TCP relay to `server` that passes at most `budget` bytes back to the
/// client per connection, then goes silent with the connection open: a
/// server (or a network) that stalls mid-stream.
async fn stalling_relay(server: std::net::SocketAddr, budget: Arc<AtomicUsize>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = TcpStream::connect(server).await.unwrap();
            let allowed = budget.load(Ordering::SeqCst);
            let (mut cr, mut cw) = client.into_split();
            let (mut ur, mut uw) = upstream.into_split();
            tokio::spawn(async move { tokio::io::copy(&mut cr, &mut uw).await });
            tokio::spawn(async move {
                let mut sent = 0usize;
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match ur.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let n = n.min(allowed.saturating_sub(sent));
                    if n == 0 {
                        // Silent from here on, holding the connection.
                        tokio::time::sleep(Duration::from_secs(3_600)).await;
                        break;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    sent += n;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flight_server_that_stalls_mid_stream_fails_the_run_at_read_timeout_and_frees_the_table()
{
    // GIVEN a points cache loaded from parquet, its read kept as a snapshot,
    // served over Flight through a relay that can stall
    let url = fresh_db("flight_stall").await;
    let client = connect(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("points.parquet");
    points_parquet(&file, 200_000, None);
    let snapshots = dir.path().join("snapshots");
    let location =
        pipeline::snapshot::Location::parse(snapshots.to_str().unwrap()).expect("location");
    let mut config = parquet_config(&file, "points_cache", POINTS);
    let target = pipeline::postgres::Target::resolve(&config.target.with_url(&url)).unwrap();
    let options = pipeline::run::RunOptions {
        run_id: pipeline::run::new_run_id(),
        snapshots: Some(pipeline::run::SnapshotPlan {
            location: location.clone(),
            options: Default::default(),
        }),
        ..Default::default()
    };
    let r = pipeline::run::run_table(
        &config,
        "t",
        &target,
        &options,
        &std::sync::atomic::AtomicU64::new(0),
    )
    .await;
    assert_success(&r);
    let before = fingerprint(&client, "points_cache").await;
    let listener = pipeline::flight::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let server = listener.local_addr().unwrap();
    tokio::spawn(pipeline::flight::serve_on(
        location,
        listener,
        8_192,
        std::future::pending(),
    ));
    let budget = Arc::new(AtomicUsize::new(usize::MAX));
    let relay = stalling_relay(server, Arc::clone(&budget)).await;
    let table = config.tables.get_mut("t").unwrap();
    table.parquet = None;
    table.flight = Some(format!("flight://127.0.0.1:{relay}/t@latest"));
    config.flight.read_timeout = Duration::from_secs(2);
    assert_success(&run(&config, "t", &url, None).await);
    assert_eq!(fingerprint(&client, "points_cache").await, before);

    // WHEN the server goes silent 2 MiB into the stream (a few batches in)
    budget.store(2 << 20, Ordering::SeqCst);
    let started = Instant::now();
    let r = run(&config, "t", &url, None).await;

    // THEN the run fails at the read timeout, naming the source and the setting
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(r.status, "failed");
    let e = r.error.unwrap();
    assert!(
        e.contains(&format!("flight://127.0.0.1:{relay}/t@latest"))
            && e.contains("stalled")
            && e.contains("[flight] read_timeout"),
        "{e}"
    );
    assert_eq!(fingerprint(&client, "points_cache").await, before);
    assert_eq!(floe_idle_in_transaction(&client).await, 0);
    assert_eq!(newest_run_status(&client).await, "failed");

    // AND the table is free: the next run (the server well again) loads it.
    budget.store(usize::MAX, Ordering::SeqCst);
    assert_success(&run(&config, "t", &url, None).await);
    assert_eq!(fingerprint(&client, "points_cache").await, before);
    assert!(staging_tables(&client).await.is_empty());
}
