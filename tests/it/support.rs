//! Shared test harness: one ephemeral PostGIS cluster per test binary (a
//! fresh database per test, so tests run in parallel without seeing each
//! other), and grid data generated once.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;

use pipeline::cluster::EphemeralCluster;
use pipeline::postgres::Target;
use pipeline::run::{new_run_id, run_table, RunOptions, TableReport};
use schemas::config::{Config, SnowflakeConfig};
use tokio_postgres::{Client, NoTls};

static CLUSTER: OnceLock<EphemeralCluster> = OnceLock::new();
static GRID: OnceLock<(tempfile::TempDir, u64)> = OnceLock::new();

/// Rows per grid table in tests: several batches of 8192, seconds to load.
pub const GRID_ROWS: u64 = 20_000;

/// The cluster; started on first use, gone when the test process ends.
pub fn cluster() -> &'static EphemeralCluster {
    CLUSTER.get_or_init(|| {
        let c = EphemeralCluster::start().unwrap_or_else(|e| {
            panic!("these tests need PostgreSQL 15 and PostGIS (`bash .ci/run` installs them): {e}")
        });
        c.stop_when_process_exits().expect("cleanup watchdog");
        c
    })
}

/// A new, empty database named after the test; returns its URL.
pub async fn fresh_db(name: &str) -> String {
    let cluster = cluster();
    let admin = connect(&cluster.url()).await;
    // Two statements: a multi-statement string would run as one transaction block.
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        admin
            .batch_execute(&sql)
            .await
            .expect("create test database");
    }
    cluster.url_for(name)
}

/// A plain client for assertions (UTC, so timestamptz text is stable).
pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to test cluster");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
        .batch_execute("SET TimeZone = 'UTC'")
        .await
        .expect("set time zone");
    client
}

/// The grid tables, generated once per test binary at [`GRID_ROWS`].
pub fn grid_dir() -> &'static Path {
    let (dir, _) = GRID.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        emulator::generate::generate(&emulator::generate::GenerateOptions {
            out: dir.path().to_path_buf(),
            tables: Vec::new(),
            rows: Some(GRID_ROWS),
            seed: 42,
        })
        .expect("generate grid tables");
        (dir, GRID_ROWS)
    });
    dir.path()
}

/// How floe's client logs in to an emulator on `port` with a password.
pub fn emulator_login(port: u16, user: &str, password: &str) -> SnowflakeConfig {
    SnowflakeConfig {
        account: Some("emulator".into()),
        user: Some(user.into()),
        password: Some(password.into()),
        host: Some("127.0.0.1".into()),
        port: Some(port),
        protocol: Some("http".into()),
        ..Default::default()
    }
}

/// The shipped config.
pub fn shipped_config() -> Config {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("floe.toml");
    Config::load(&path).expect("shipped floe.toml is valid")
}

/// Runs one table of `config` into `url`.
pub async fn run(
    config: &Config,
    table: &str,
    url: &str,
    parquet_dir: Option<&Path>,
) -> TableReport {
    let target = Target::resolve(&config.target.with_url(url)).expect("target");
    let options = RunOptions {
        run_id: new_run_id(),
        parquet_dir: parquet_dir.map(Path::to_path_buf),
        ..Default::default()
    };
    run_table(config, table, &target, &options, &AtomicU64::new(0)).await
}

/// Asserts a run succeeded, showing its error otherwise.
pub fn assert_success(r: &TableReport) {
    assert_eq!(r.status, "success", "{} failed: {:?}", r.table, r.error);
}

/// Tables whose name marks them as floe staging tables.
pub async fn staging_tables(client: &Client) -> Vec<String> {
    client
        .query("SELECT relname::text FROM pg_class WHERE relkind = 'r' AND relname LIKE '%\\_\\_floe\\_%'", &[])
        .await
        .expect("list staging tables")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The statuses of a table's runs in `floe.sync_runs`, sorted.
pub async fn run_statuses(client: &Client, table: &str) -> Vec<String> {
    client
        .query(
            "SELECT status FROM floe.sync_runs WHERE table_name = $1 ORDER BY status",
            &[&table],
        )
        .await
        .expect("read sync_runs")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Order-independent fingerprint of a table's content.
pub async fn fingerprint(client: &Client, table: &str) -> (i64, String) {
    let row = client
        .query_one(
            &format!("SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))), '') FROM {table} t"),
            &[],
        )
        .await
        .expect("fingerprint");
    (row.get(0), row.get(1))
}

/// Writes batches to a parquet file.
pub fn write_parquet(path: &Path, batches: &[arrow::record_batch::RecordBatch]) {
    let file = std::fs::File::create(path).expect("create parquet");
    let mut w =
        parquet::arrow::ArrowWriter::try_new(file, batches[0].schema(), None).expect("writer");
    for b in batches {
        w.write(b).expect("write batch");
    }
    w.close().expect("close parquet");
}

/// A config with one parquet-sourced table.
pub fn parquet_config(path: &Path, target: &str, extra: &str) -> Config {
    let text = format!(
        "[tables.t]\nparquet = \"{}\"\ntarget = \"{target}\"\n{extra}\n",
        path.display()
    );
    Config::parse(&text, Path::new("test.toml")).expect("test config")
}

/// Snapshots written by `floe` processes the tests start go here, not
/// into the working directory.
static SNAPSHOTS: OnceLock<tempfile::TempDir> = OnceLock::new();

/// The `floe` binary, with its snapshots kept in a temporary directory.
pub fn floe_command() -> std::process::Command {
    let dir = SNAPSHOTS.get_or_init(|| tempfile::tempdir().expect("snapshot tempdir"));
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_floe"));
    c.env("FLOE_SNAPSHOT_DIR", dir.path());
    c
}

/// A child process killed when the test ends, however it ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `floe emulate-snowflake --data DIR ARGS` in its own process (so
/// its memory is not the measured floe's) and returns it with its port.
pub fn emulator_process(data: &Path, args: &[&str], env: &[(&str, &str)]) -> (KillOnDrop, u16) {
    use std::io::BufRead;
    let mut child = floe_command()
        .arg("emulate-snowflake")
        .arg("--data")
        .arg(data)
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the emulator");
    let stdout = child.stdout.take().expect("piped stdout");
    let guard = KillOnDrop(child);
    let mut first = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut first)
        .expect("emulator banner");
    assert!(first.contains("listening on http://127.0.0.1:"), "{first}");
    let port = first.trim().rsplit(':').next().unwrap().parse().unwrap();
    (guard, port)
}

/// The `SNOWFLAKE_*` variables that point floe at an emulator on `port`.
pub fn snowflake_env(port: u16, user: &str, password: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SNOWFLAKE_ACCOUNT", "emulator".into()),
        ("SNOWFLAKE_USER", user.into()),
        ("SNOWFLAKE_PASSWORD", password.into()),
        ("SNOWFLAKE_HOST", "127.0.0.1".into()),
        ("SNOWFLAKE_PORT", port.to_string()),
        ("SNOWFLAKE_PROTOCOL", "http".into()),
    ]
}

/// Polls the emulator's `/floe/stats` until `ready` holds (at most 30 s).
pub async fn wait_for_stats(
    port: u16,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> Option<serde_json::Value> {
    // reqwest is built without a default TLS provider (floe installs ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/floe/stats"))
            .send()
            .await
        {
            if let Ok(stats) = r.json::<serde_json::Value>().await {
                if ready(&stats) {
                    return Some(stats);
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    None
}

/// Runs a command to its end, sampling its peak resident memory (VmHWM,
/// a high-water mark, so sampling cannot miss a peak that has passed).
pub async fn run_measuring_memory(cmd: &mut std::process::Command) -> (std::process::Output, u64) {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    while child.try_wait().expect("wait").is_none() {
        if let Ok(status) = std::fs::read_to_string(&status_path) {
            if let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak_kb = peak_kb.max(kb);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    (child.wait_with_output().expect("output"), peak_kb * 1024)
}

/// The virtualenv's Python with the official Snowflake connector and the
/// Prometheus parser (`scripts/install-deps --python`; `FLOE_PYTHON` overrides).
pub fn python() -> std::path::PathBuf {
    let path = std::env::var_os("FLOE_PYTHON")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| std::path::Path::new(&h).join(".cache/floe-venv/bin/python"))
        })
        .expect("HOME or FLOE_PYTHON");
    assert!(
        path.exists(),
        "{} does not exist: run scripts/install-deps --python (or set FLOE_PYTHON)",
        path.display()
    );
    path
}

/// A two-column table of `rows` rows; `bad` replaces one row's GeoJSON.
pub fn points_parquet(path: &std::path::Path, rows: i64, bad: Option<(i64, &str)>) {
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("ID", arrow::datatypes::DataType::Int64, false),
        arrow::datatypes::Field::new("LOCATION", arrow::datatypes::DataType::Utf8, false),
    ]));
    let ids: Vec<i64> = (1..=rows).collect();
    let geo: Vec<String> = ids
        .iter()
        .map(|i| match bad {
            Some((row, text)) if *i == row => text.to_string(),
            _ => format!(r#"{{"type":"Point","coordinates":[-95.{i:05},29.5]}}"#),
        })
        .collect();
    let batch = arrow::record_batch::RecordBatch::try_new(
        schema,
        vec![
            std::sync::Arc::new(arrow::array::Int64Array::from(ids)) as arrow::array::ArrayRef,
            std::sync::Arc::new(arrow::array::StringArray::from(geo)) as arrow::array::ArrayRef,
        ],
    )
    .unwrap();
    write_parquet(path, &[batch]);
}

pub const POINTS: &str = r#"primary_key = ["id"]
transform = "SELECT id, location, st_geomfromgeojson(location) AS geom FROM source"
columns = { geom = "geometry(Point,4326)" }
indexes = [{ columns = ["geom"], method = "gist" }]"#;

/// Holds floe inside its next COPY through `emulator` for about 3 s: the
/// next chunk it fetches takes that long (see [`floe_copying`]).
pub fn hold_next_copy(emulator: &emulator::Emulator) {
    emulator.inject(|f| {
        f.slow_chunk_ms = 3_000;
        f.slow_chunks = 1;
    });
}

/// floe sessions of this database for which `condition` (over
/// `pg_stat_activity`) holds.
async fn floe_sessions_where(client: &Client, condition: &str) -> i64 {
    client
        .query_one(
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name LIKE 'floe/%' AND {condition}"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Whether a floe session of this database is in a COPY now.
pub async fn floe_copying(client: &Client) -> bool {
    floe_sessions_where(client, "query LIKE 'COPY%'").await > 0
}

/// floe sessions of this database idle in transaction.
pub async fn floe_idle_in_transaction(client: &Client) -> i64 {
    floe_sessions_where(client, "state LIKE 'idle in transaction%'").await
}

/// The status of the newest run recorded in this database.
pub async fn newest_run_status(client: &Client) -> String {
    client
        .query_one(
            "SELECT status FROM floe.sync_runs ORDER BY started_at DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}
