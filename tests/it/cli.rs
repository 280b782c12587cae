//! The `floe` binary: what a user sees when something is wrong, and the
//! JSON report's shape.

use std::process::{Command, Output};

use crate::support::*;

fn floe(args: &[&str]) -> Output {
    floe_command()
        .args(args)
        .env_remove("FLOE_TARGET_URL")
        .env("NO_COLOR", "1")
        .output()
        .expect("run floe")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn a_bad_config_says_which_file_table_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[tables.topology]\nparquet = \"x.parquet\"\ntarget = \"t\"\ncolumns = { v = \"numeric(6,9)\" }\n").unwrap();
    let o = floe(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("bad.toml") && e.contains("`topology`") && e.contains("columns.v"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
}

#[test]
fn an_unknown_table_lists_the_known_ones() {
    let o = floe(&["run", "--table", "nope", "--parquet", "/tmp"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("no table `nope`") && e.contains("topology"),
        "{e}"
    );
}

#[test]
fn an_unreachable_target_fails_the_table_with_one_line() {
    let port = pipeline::cluster::free_port().unwrap();
    let o = floe(&[
        "run",
        "--table",
        "FLUX_OPS_CENTER_TOPOLOGY",
        "--parquet",
        grid_dir().to_str().unwrap(),
        "--target",
        &format!("postgres://floe:s3cret-pw@127.0.0.1:{port}/grid"),
        "--output",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let t = &report[0];
    assert_eq!(t["status"], "failed");
    assert_eq!(t["table"], "topology_connections_cache");
    let e = t["error"].as_str().unwrap();
    assert!(
        e.contains("cannot connect to Postgres at postgres://floe@127.0.0.1") && !e.contains('\n'),
        "{e}"
    );
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(!all.contains("s3cret-pw"), "the password leaked: {all}");
}

#[tokio::test]
async fn a_missing_parquet_file_is_named() {
    let url = fresh_db("cli_missing_parquet").await;
    let empty = tempfile::tempdir().unwrap();
    let o = floe(&[
        "run",
        "--table",
        "assets",
        "--target",
        &url,
        "--parquet",
        empty.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("failed")
            && out.contains("parquet file not found")
            && out.contains("FLUX_OPS_CENTER_ASSETS.parquet"),
        "{out}"
    );
}

#[tokio::test]
async fn run_reports_json_per_table_and_accepts_every_table_name() {
    let url = fresh_db("cli_json").await;
    let o = floe(&[
        "run",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/floe.toml"),
        "--table",
        "transformers",
        "--table",
        "TRANSFORMERS",
        "--table",
        "power_lines_cache",
        "--parquet",
        grid_dir().to_str().unwrap(),
        "--target",
        &url,
        "--output",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let tables: Vec<&str> = report
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert_eq!(
        tables,
        vec![
            "transformers_cache",
            "transformers_cache",
            "power_lines_cache"
        ]
    );
    for t in report.as_array().unwrap() {
        assert_eq!(t["status"], "success");
        assert_eq!(t["rows_synced"], GRID_ROWS);
        assert_eq!(t["final_count"], GRID_ROWS);
        assert!(t["seconds"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn generate_is_deterministic() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for d in [&a, &b] {
        let o = floe(&[
            "generate",
            "--out",
            d.path().to_str().unwrap(),
            "--table",
            "assets",
            "--table",
            "GRID_POWER_LINES",
            "--rows",
            "3000",
            "--seed",
            "9",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    for f in ["FLUX_OPS_CENTER_ASSETS.parquet", "GRID_POWER_LINES.parquet"] {
        assert_eq!(
            std::fs::read(a.path().join(f)).unwrap(),
            std::fs::read(b.path().join(f)).unwrap(),
            "{f}"
        );
    }
    assert_eq!(std::fs::read_dir(a.path()).unwrap().count(), 2);
}

/// Kills the child process when the test ends, pass or fail.
#[tokio::test]
async fn floe_run_reads_snowflake_configured_only_by_environment() {
    // GIVEN `floe emulate-snowflake` serving the grid tables in another process
    let (emulator, port) = emulator_process(
        grid_dir(),
        &["--chunk-rows", "2500", "--user", "etl"],
        &[("SNOWFLAKE_PASSWORD", "env-only-secret")],
    );
    let port = port.to_string();

    // WHEN floe run gets its Snowflake connection only from SNOWFLAKE_* variables
    let url = fresh_db("cli_snowflake_env").await;
    let o = floe_command()
        .args([
            "run",
            "--table",
            "TRANSFORMERS",
            "--target",
            &url,
            "--output",
            "json",
        ])
        .env_remove("FLOE_TARGET_URL")
        .envs([
            ("SNOWFLAKE_ACCOUNT", "emulator"),
            ("SNOWFLAKE_USER", "etl"),
            ("SNOWFLAKE_PASSWORD", "env-only-secret"),
            ("SNOWFLAKE_HOST", "127.0.0.1"),
            ("SNOWFLAKE_PORT", port.as_str()),
            ("SNOWFLAKE_PROTOCOL", "http"),
        ])
        .output()
        .unwrap();

    // THEN the table loads from the emulator, and the password is printed nowhere
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(o.status.success(), "{all}");
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report[0]["final_count"], GRID_ROWS);
    assert!(
        !all.contains("env-only-secret"),
        "the password leaked: {all}"
    );
    drop(emulator);
}

#[tokio::test]
async fn sigint_and_sigterm_during_a_snowflake_query_abort_it_roll_back_and_exit_130_143() {
    for (signal, code) in [("-INT", 130), ("-TERM", 143)] {
        // GIVEN an emulator whose next query keeps running for a minute
        let (_emulator, port) = emulator_process(
            grid_dir(),
            &["--user", "etl", "--fault", "long-query-secs=60"],
            &[("SNOWFLAKE_PASSWORD", "pw")],
        );
        let db = format!("cli_signal_{code}");
        let url = fresh_db(&db).await;
        let child = floe_command()
            .args(["run", "--table", "transformers", "--target", &url])
            .env_remove("FLOE_TARGET_URL")
            .envs(snowflake_env(port, "etl", "pw"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // WHEN the signal arrives while floe waits for the query
        let polled = wait_for_stats(port, |s| s["result_polls"].as_u64() >= Some(1)).await;
        assert!(polled.is_some(), "floe never polled the running query");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let o = child.wait_with_output().unwrap();
        // THEN floe exits 128+signal, says it rolled back, and the query was aborted on the server
        assert_eq!(o.status.code(), Some(code), "{signal}: {}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("cancelled"), "{out}");
        let stats = wait_for_stats(port, |s| {
            s["aborted"].as_array().is_some_and(|a| a.len() == 1)
        })
        .await
        .expect("an abort-request reached the server");
        assert_eq!(stats["live_sessions"], 0, "{stats}");
        let client = connect(&url).await;
        assert!(staging_tables(&client).await.is_empty());
        let exists: bool = client
            .query_one("SELECT to_regclass('transformers_cache') IS NOT NULL", &[])
            .await
            .unwrap()
            .get(0);
        assert!(!exists, "a cancelled first load must not create the table");
        let recorded: String = client
            .query_one("SELECT status FROM floe.sync_runs", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(recorded, "cancelled");
    }
}

#[tokio::test]
async fn floe_bench_reports_every_configuration_against_the_ceiling() {
    let url = fresh_db("bench").await;
    let o = floe_command()
        .args([
            "bench",
            "--table",
            "vegetation",
            "--rows",
            "3000",
            "--repeats",
            "2",
            "--copy-streams",
            "2",
            "--target",
            &url,
            "--output",
            "json",
        ])
        .env_remove("FLOE_TARGET_URL")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["rows"], 3000);
    assert_eq!(r["repeats"], 2);
    assert_eq!(r["copy_streams"], 2);
    // the first run through the emulator ran its query; the measured ones
    // were answered from its result cache
    let uncached = &r["emulator_uncached"];
    assert!(
        uncached["query_seconds"].as_f64().unwrap() > 0.0,
        "{uncached}"
    );
    assert!(
        uncached["seconds"].as_f64().unwrap() > uncached["query_seconds"].as_f64().unwrap(),
        "{uncached}"
    );
    assert!(r["encoded_bytes"].as_u64().unwrap() > 3000 * 20);
    let results = r["results"].as_array().unwrap();
    let names: Vec<&str> = results
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ceiling", "floe_parquet", "floe_emulator"]);
    assert_eq!(results[0]["ratio_to_ceiling"], 1.0);
    for m in results {
        let s = &m["seconds"];
        let (min, med, max) = (
            s["min"].as_f64().unwrap(),
            s["median"].as_f64().unwrap(),
            s["max"].as_f64().unwrap(),
        );
        assert!(0.0 < min && min <= med && med <= max, "{m}");
        let rps = m["rows_per_sec"].as_f64().unwrap();
        assert!((rps - 3000.0 / med).abs() < 1e-6 * rps, "{m}");
        assert!(m["peak_rss_bytes"].as_u64().unwrap() > 1 << 20, "{m}");
        assert!(m["stages"]["index_build"].as_f64().unwrap() > 0.0, "{m}");
    }
    let ceiling = results[0]["seconds"]["median"].as_f64().unwrap();
    for m in &results[1..] {
        let ratio = m["ratio_to_ceiling"].as_f64().unwrap();
        let med = m["seconds"]["median"].as_f64().unwrap();
        assert!((ratio - ceiling / med).abs() < 1e-9, "{m}");
        assert!(m["goal"].as_f64().is_some(), "{m}");
        assert!(m["stages"]["encode"].as_f64().unwrap() > 0.0, "{m}");
    }
    assert!(results[0]["copy_only_seconds"]["median"].as_f64().unwrap() <= ceiling);
    // The ceiling's own sessions and staging table, made before its clock, are
    // reported beside it (floe's runs have none: theirs are in their time).
    assert!(
        results[0]["setup_outside_clock_seconds"]["median"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(results[1].get("setup_outside_clock_seconds").is_none());
    assert!(
        results[2]["stages"]["source"].as_f64().unwrap() > 0.0,
        "the emulator's source time"
    );
    // The table was really loaded, by the last configuration to run.
    let client = connect(&url).await;
    assert_eq!(fingerprint(&client, "vegetation_cache").await.0, 3000);
}
