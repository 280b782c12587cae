//! The `floe` binary: what a user sees when something is wrong, and the
//! JSON report's shape.

use std::process::{Command, Output};

use crate::support::*;

fn floe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_floe"))
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

#[test]
fn a_missing_parquet_file_is_named() {
    let empty = tempfile::tempdir().unwrap();
    let o = floe(&[
        "run",
        "--table",
        "assets",
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
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn floe_run_reads_snowflake_configured_only_by_environment() {
    use std::io::BufRead;
    // GIVEN `floe emulate-snowflake` serving the grid tables in another process
    let mut child = Command::new(env!("CARGO_BIN_EXE_floe"))
        .args([
            "emulate-snowflake",
            "--data",
            grid_dir().to_str().unwrap(),
            "--chunk-rows",
            "2500",
            "--user",
            "etl",
        ])
        .env("SNOWFLAKE_PASSWORD", "env-only-secret")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the emulator");
    let stdout = child.stdout.take().unwrap();
    let emulator = KillOnDrop(child);
    let mut first = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut first)
        .unwrap();
    let port = first.trim().rsplit(':').next().unwrap().to_string();
    assert!(first.contains("listening on http://127.0.0.1:"), "{first}");

    // WHEN floe run gets its Snowflake connection only from SNOWFLAKE_* variables
    let url = fresh_db("cli_snowflake_env").await;
    let o = Command::new(env!("CARGO_BIN_EXE_floe"))
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
