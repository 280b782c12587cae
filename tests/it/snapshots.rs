//! Every run keeps what it read; `floe replay` loads it back without the
//! source; damaged or drifted snapshots are refused before anything is
//! written; `floe snapshots` lists, verifies and prunes; Arrow Flight
//! serves snapshots and reads them back.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::*;

fn floe(args: &[&str], snapshots: &Path, env: &[(&str, String)]) -> Output {
    floe_command()
        .args(args)
        .env("FLOE_SNAPSHOT_DIR", snapshots)
        .env("NO_COLOR", "1")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run floe")
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn manifest(dir: &Path) -> serde_json::Value {
    let bytes = std::fs::read(dir.join("manifest.json")).expect("manifest.json");
    serde_json::from_slice(&bytes).expect("manifest is JSON")
}

/// The one snapshot directory of `table` under `root`.
fn only_snapshot(root: &Path, table: &str) -> PathBuf {
    let runs: Vec<PathBuf> = std::fs::read_dir(root.join(table))
        .expect("table snapshot dir")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}

async fn newest_run(client: &tokio_postgres::Client, target: &str) -> (String, String, String) {
    let r = client
        .query_one(
            "SELECT mode, source, status FROM floe.sync_runs WHERE target = $1 ORDER BY started_at DESC LIMIT 1",
            &[&target],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

#[tokio::test]
async fn a_run_keeps_a_snapshot_and_replay_restores_the_table_without_snowflake() {
    let url = fresh_db("snap_replay").await;
    let client = connect(&url).await;
    let snaps = tempfile::tempdir().unwrap();
    let (emulator, port) =
        emulator_process(grid_dir(), &["--user", "floe", "--password", "pw"], &[]);
    let env = snowflake_env(port, "floe", "pw");
    let env: Vec<(&str, String)> = env.into_iter().collect();

    let o = floe(
        &[
            "run", "--table", "topology", "--target", &url, "--output", "json",
        ],
        snaps.path(),
        &env,
    );
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let dir = only_snapshot(snaps.path(), "topology");
    // Where the time went: every stage measured, none longer than the run.
    let stages = &report[0]["stages"];
    let seconds = report[0]["seconds"].as_f64().unwrap();
    for stage in [
        "source",
        "snapshot",
        "transform",
        "encode",
        "postgres_wait",
        "index_build",
        "verify",
        "swap",
    ] {
        let t = stages[stage]
            .as_f64()
            .unwrap_or_else(|| panic!("no {stage}: {stages}"));
        assert!(
            t >= 0.0 && t <= seconds,
            "{stage}: {t} of {seconds} s: {stages}"
        );
    }
    for stage in ["source", "encode", "index_build"] {
        assert!(
            stages[stage].as_f64().unwrap() > 0.0,
            "{stage} took no time: {stages}"
        );
    }
    assert_eq!(
        report[0]["snapshot"].as_str().unwrap(),
        dir.to_str().unwrap(),
        "the report names the snapshot"
    );

    // The manifest: complete, every row, where they came from, the source's types.
    let m = manifest(&dir);
    assert_eq!(m["status"], "complete");
    assert_eq!(m["rows"], GRID_ROWS);
    assert_eq!(m["table"], "topology");
    assert_eq!(m["source"]["kind"], "snowflake");
    assert!(m["source"]["query_id"]
        .as_str()
        .is_some_and(|q| !q.is_empty()));
    assert_eq!(
        m["source"]["query"],
        "SELECT * FROM FLUX_OPS_CENTER_TOPOLOGY"
    );
    let fields = m["schema"].as_array().unwrap();
    let voltage = fields.iter().find(|f| f["name"] == "VOLTAGE_KV").unwrap();
    assert_eq!(
        voltage["metadata"]["floe.snowflake_type"], "NUMBER(6,2)",
        "{voltage}"
    );
    let listed: u64 = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(listed, GRID_ROWS);
    // zstd parquet, rows as read (before the transform: Snowflake's column names).
    let part = std::fs::File::open(dir.join("part-00000.parquet")).unwrap();
    let reader = parquet::file::reader::SerializedFileReader::new(part).unwrap();
    use parquet::file::reader::FileReader;
    let rg = reader.metadata().row_group(0);
    assert!(
        (0..rg.num_columns()).all(|i| matches!(
            rg.column(i).compression(),
            parquet::basic::Compression::ZSTD(_)
        )),
        "parts are zstd"
    );
    assert_eq!(
        reader
            .metadata()
            .file_metadata()
            .schema_descr()
            .column(0)
            .name(),
        "CONNECTION_ID"
    );

    let good = fingerprint(&client, "topology_connections_cache").await;
    client
        .batch_execute("DELETE FROM topology_connections_cache WHERE connection_id % 3 = 0; UPDATE topology_connections_cache SET phase = 'X'")
        .await
        .unwrap();
    let before: serde_json::Value = wait_for_stats(port, |_| true).await.unwrap();

    // Replay the newest snapshot: the table is back, and the emulator saw nothing.
    let o = floe(
        &["replay", "topology@latest", "--target", &url],
        snaps.path(),
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        fingerprint(&client, "topology_connections_cache").await,
        good
    );
    let after: serde_json::Value = wait_for_stats(port, |_| true).await.unwrap();
    for key in ["logins", "queries", "chunk_requests"] {
        assert_eq!(
            before[key], after[key],
            "replay contacted Snowflake ({key})"
        );
    }
    let (mode, source, status) = newest_run(&client, "public.topology_connections_cache").await;
    assert_eq!((mode.as_str(), status.as_str()), ("replay", "success"));
    assert!(
        source.starts_with("snapshot ")
            && source.contains(dir.file_name().unwrap().to_str().unwrap()),
        "{source}"
    );
    assert!(
        !snaps
            .path()
            .join("topology")
            .read_dir()
            .unwrap()
            .any(|e| e.unwrap().path() != dir),
        "a replay wrote a second snapshot"
    );

    // With Snowflake gone entirely, by run id and by directory: same table.
    drop(emulator);
    client
        .batch_execute("UPDATE topology_connections_cache SET phase = 'Y'")
        .await
        .unwrap();
    let run_id = dir.file_name().unwrap().to_str().unwrap().to_string();
    let o = floe(
        &[
            "replay",
            &format!("topology_connections_cache@{run_id}"),
            "--target",
            &url,
        ],
        snaps.path(),
        &env,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        fingerprint(&client, "topology_connections_cache").await,
        good
    );
    client
        .batch_execute("UPDATE topology_connections_cache SET phase = 'Z'")
        .await
        .unwrap();
    let o = floe(
        &["replay", dir.to_str().unwrap(), "--target", &url],
        snaps.path(),
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        fingerprint(&client, "topology_connections_cache").await,
        good
    );

    // --no-snapshot: nothing written.
    let none = tempfile::tempdir().unwrap();
    let o = floe(
        &[
            "run",
            "--table",
            "vegetation",
            "--parquet",
            grid_dir().to_str().unwrap(),
            "--target",
            &url,
            "--no-snapshot",
        ],
        none.path(),
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        std::fs::read_dir(none.path()).unwrap().next().is_none(),
        "--no-snapshot wrote a snapshot"
    );
}

/// Snapshots `rows` vegetation rows (parts of 700 rows) into `snaps`; returns the snapshot dir.
async fn vegetation_snapshot(url: &str, snaps: &Path, data: &Path, rows: u64) -> PathBuf {
    let d = schemas::datasets::find("vegetation").unwrap();
    let path = data.join(format!("veg_{rows}.parquet"));
    emulator::generate::write_table(d, rows, 11, &path).unwrap();
    let config = parquet_config(
        &path,
        "veg",
        "primary_key = [\"zone_id\"]\ntransform = \"SELECT zone_id, species, to_geography(canopy) AS canopy FROM source\"",
    );
    let run_id = pipeline::run::new_run_id();
    let r = run_with_snapshots(&config, url, snaps, &run_id).await;
    assert_success(&r);
    snaps.join("t").join(run_id)
}

async fn run_with_snapshots(
    config: &schemas::config::Config,
    url: &str,
    snaps: &Path,
    run_id: &str,
) -> pipeline::run::TableReport {
    let target = pipeline::postgres::Target::resolve(&config.target.with_url(url)).unwrap();
    let options = pipeline::run::RunOptions {
        run_id: run_id.to_string(),
        snapshots: Some(pipeline::run::SnapshotPlan {
            location: pipeline::snapshot::Location::parse(snaps.to_str().unwrap()).unwrap(),
            options: pipeline::snapshot::SnapshotOptions {
                part_rows: 700,
                row_group_rows: 256,
                row_group_bytes: 1 << 20,
                zstd_level: 3,
            },
        }),
        ..Default::default()
    };
    pipeline::run::run_table(
        config,
        "t",
        &target,
        &options,
        &std::sync::atomic::AtomicU64::new(0),
    )
    .await
}

fn veg_config_file(dir: &Path, transform: &str) -> PathBuf {
    let path = dir.join("veg.toml");
    std::fs::write(
        &path,
        format!("[tables.t]\nparquet = \"unused.parquet\"\ntarget = \"veg\"\nprimary_key = [\"zone_id\"]\ntransform = \"{transform}\"\n"),
    )
    .unwrap();
    path
}

const VEG_TRANSFORM: &str = "SELECT zone_id, species, to_geography(canopy) AS canopy FROM source";

#[tokio::test]
async fn a_damaged_snapshot_is_refused_naming_the_file_and_nothing_is_written() {
    let url = fresh_db("snap_damage").await;
    let client = connect(&url).await;
    let tmp = tempfile::tempdir().unwrap();
    let snaps = tmp.path().join("snaps");
    let good = vegetation_snapshot(&url, &snaps, tmp.path(), 2_000).await;
    assert_eq!(
        manifest(&good)["files"].as_array().unwrap().len(),
        3,
        "parts of 700 rows"
    );
    let config = veg_config_file(tmp.path(), VEG_TRANSFORM);
    client
        .batch_execute("UPDATE veg SET species = 'changed since'")
        .await
        .unwrap();
    let before = fingerprint(&client, "veg").await;
    let runs_before: i64 = client
        .query_one("SELECT count(*) FROM floe.sync_runs", &[])
        .await
        .unwrap()
        .get(0);

    type Damage = fn(&Path);
    let cases: [(&str, Damage, &str, &str); 5] = [
        (
            "truncated",
            |d| {
                let p = d.join("part-00001.parquet");
                let len = std::fs::metadata(&p).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_len(len - 100)
                    .unwrap();
            },
            "part-00001.parquet",
            "truncated",
        ),
        (
            "altered",
            |d| {
                let p = d.join("part-00000.parquet");
                let mut bytes = std::fs::read(&p).unwrap();
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x55;
                std::fs::write(&p, bytes).unwrap();
            },
            "part-00000.parquet",
            "SHA-256",
        ),
        (
            "missing",
            |d| std::fs::remove_file(d.join("part-00002.parquet")).unwrap(),
            "part-00002.parquet",
            "missing",
        ),
        (
            "manifest rows",
            |d| {
                let mut m = manifest(d);
                m["files"][1]["rows"] = serde_json::json!(699);
                m["rows"] = serde_json::json!(1999);
                std::fs::write(d.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
            },
            "part-00001.parquet",
            "holds 700 rows, the manifest says 699",
        ),
        (
            "no manifest",
            |d| std::fs::remove_file(d.join("manifest.json")).unwrap(),
            "manifest.json",
            "never finished",
        ),
    ];
    for (name, damage, file, why) in cases {
        let copy = tmp.path().join(format!("copy-{}", name.replace(' ', "-")));
        std::fs::create_dir_all(&copy).unwrap();
        for e in std::fs::read_dir(&good).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
        }
        damage(&copy);
        let o = floe(
            &[
                "replay",
                copy.to_str().unwrap(),
                "--config",
                config.to_str().unwrap(),
                "--target",
                &url,
            ],
            &snaps,
            &[],
        );
        let out = text(&o);
        assert_eq!(o.status.code(), Some(2), "{name}: {out}");
        assert!(out.contains(file) && out.contains(why), "{name}: {out}");
        assert_eq!(
            fingerprint(&client, "veg").await,
            before,
            "{name}: the target changed"
        );
        assert!(staging_tables(&client).await.is_empty(), "{name}");
        let v = floe(
            &["snapshots", "verify", copy.to_str().unwrap()],
            &snaps,
            &[],
        );
        assert_eq!(v.status.code(), Some(1), "{name}: {}", text(&v));
        assert!(text(&v).contains(file), "{name}: {}", text(&v));
    }
    let runs_after: i64 = client
        .query_one("SELECT count(*) FROM floe.sync_runs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs_before, runs_after, "a refused replay started a run");
    // The intact snapshot verifies and replays.
    let v = floe(
        &["snapshots", "verify", "--config", config.to_str().unwrap()],
        &snaps,
        &[],
    );
    assert!(
        v.status.success() && text(&v).contains("ok      t@"),
        "{}",
        text(&v)
    );
    let o = floe(
        &[
            "replay",
            good.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--target",
            &url,
        ],
        &snaps,
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_ne!(fingerprint(&client, "veg").await, before);
}

#[tokio::test]
async fn schema_drift_stops_replay_column_by_column() {
    let url = fresh_db("snap_drift").await;
    let client = connect(&url).await;
    let tmp = tempfile::tempdir().unwrap();
    let snaps = tmp.path().join("snaps");
    let snap = vegetation_snapshot(&url, &snaps, tmp.path(), 1_000).await;
    let before = fingerprint(&client, "veg").await;
    let snap = snap.to_str().unwrap();

    // Today's transform wants a column the snapshot never had.
    let config = veg_config_file(
        tmp.path(),
        "SELECT zone_id, species, canopy_height_m, to_geography(canopy) AS canopy FROM source",
    );
    let o = floe(
        &[
            "replay",
            snap,
            "--config",
            config.to_str().unwrap(),
            "--target",
            &url,
        ],
        &snaps,
        &[],
    );
    let out = text(&o);
    assert_ne!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("does not fit the snapshot") && out.contains("canopy_height_m"),
        "{out}"
    );
    assert!(
        out.contains("RISK_SCORE Decimal128(5, 2) (Snowflake NUMBER(5,2))"),
        "the snapshot's columns are listed: {out}"
    );

    // The target changed shape since: a dry run explains, the replay stops.
    let config = veg_config_file(tmp.path(), VEG_TRANSFORM);
    client
        .batch_execute("ALTER TABLE veg ALTER COLUMN species TYPE varchar(40); ALTER TABLE veg ADD COLUMN note text")
        .await
        .unwrap();
    let before = (before, fingerprint(&client, "veg").await);
    let o = floe(
        &[
            "replay",
            snap,
            "--config",
            config.to_str().unwrap(),
            "--target",
            &url,
            "--dry-run",
        ],
        &snaps,
        &[],
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("DRIFT"), "{out}");
    assert!(
        out.contains("species: the target has character varying(40), the replay would write text"),
        "{out}"
    );
    assert!(
        out.contains("note: the target has it (text), the replay does not output it"),
        "{out}"
    );
    let json = floe(
        &[
            "replay",
            snap,
            "--config",
            config.to_str().unwrap(),
            "--target",
            &url,
            "--dry-run",
            "--output",
            "json",
        ],
        &snaps,
        &[],
    );
    let plan: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(plan["schema_drift"], true);
    assert_eq!(plan["target_rows"], 1_000);
    let o = floe(
        &[
            "replay",
            snap,
            "--config",
            config.to_str().unwrap(),
            "--target",
            &url,
        ],
        &snaps,
        &[],
    );
    let out = text(&o);
    assert_ne!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("no longer matches")
            && out.contains("species")
            && out.contains("nothing was written"),
        "{out}"
    );
    assert_eq!(fingerprint(&client, "veg").await, before.1);

    // Put the target back: the dry run says it would run and writes nothing.
    client.batch_execute("ALTER TABLE veg ALTER COLUMN species TYPE text; ALTER TABLE veg DROP COLUMN note; DELETE FROM veg WHERE zone_id IN (SELECT zone_id FROM veg LIMIT 10)").await.unwrap();
    let o = floe(
        &[
            "replay",
            snap,
            "--config",
            config.to_str().unwrap(),
            "--target",
            &url,
            "--dry-run",
        ],
        &snaps,
        &[],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("990 rows now, 1000 after") && out.contains("would run"),
        "{out}"
    );
    assert_eq!(fingerprint(&client, "veg").await.0, 990);
}

#[tokio::test]
async fn a_failed_run_leaves_an_incomplete_snapshot_that_is_never_replayed() {
    let url = fresh_db("snap_failed").await;
    let tmp = tempfile::tempdir().unwrap();
    let snaps = tmp.path().join("snaps");
    let good = vegetation_snapshot(&url, &snaps, tmp.path(), 1_500).await;

    // A value Postgres would reject in the third batch: the run fails mid-stream.
    let d = schemas::datasets::find("vegetation").unwrap();
    let path = tmp.path().join("bad.parquet");
    emulator::generate::write_table(d, 1_500, 11, &path).unwrap();
    let config = parquet_config(
        &path,
        "veg",
        "primary_key = [\"zone_id\"]\ntransform = \"SELECT zone_id, CASE WHEN zone_id >= 1400 THEN 'bad' || chr(0) ELSE species END AS species, to_geography(canopy) AS canopy FROM source\"",
    );
    let run_id = pipeline::run::new_run_id();
    let r = run_with_snapshots(&config, &url, &snaps, &run_id).await;
    assert_eq!(r.status, "failed");
    assert!(r.snapshot.is_none());
    let failed_dir = snaps.join("t").join(&run_id);
    let m = manifest(&failed_dir);
    assert_eq!(m["status"], "incomplete", "{m}");
    assert!(m["error"].as_str().is_some_and(|e| !e.is_empty()), "{m}");

    let config_file = veg_config_file(tmp.path(), VEG_TRANSFORM);
    let cfg = config_file.to_str().unwrap();
    let o = floe(
        &[
            "replay",
            failed_dir.to_str().unwrap(),
            "--config",
            cfg,
            "--target",
            &url,
        ],
        &snaps,
        &[],
    );
    assert!(text(&o).contains("is not complete"), "{}", text(&o));
    // TABLE@latest skips it for the newest complete one.
    let o = floe(
        &[
            "snapshots",
            "show",
            "t@latest",
            "--config",
            cfg,
            "--output",
            "json",
        ],
        &snaps,
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        shown["run_id"].as_str().unwrap(),
        good.file_name().unwrap().to_str().unwrap()
    );
    let o = floe(
        &["snapshots", "list", "--config", cfg, "--output", "json"],
        &snaps,
        &[],
    );
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let statuses: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["incomplete", "complete"], "{listed}");

    // Every row read, but the load fails (a transform that breaks the
    // primary key): the snapshot says `load_failed`, `@latest` skips it,
    // and naming it replays the bad day: the same failure with the same
    // transform, a good table once the transform is fixed.
    let dup = "SELECT zone_id % 10 AS zone_id, species, to_geography(canopy) AS canopy FROM source";
    let config = parquet_config(
        &path,
        "veg",
        &format!("primary_key = [\"zone_id\"]\ntransform = \"{dup}\""),
    );
    let run_id = pipeline::run::new_run_id();
    let r = run_with_snapshots(&config, &url, &snaps, &run_id).await;
    assert_eq!(r.status, "failed");
    let bad_day = snaps.join("t").join(&run_id);
    let m = manifest(&bad_day);
    assert_eq!(m["status"], "load_failed", "{m}");
    assert_eq!(m["rows"], 1_500);
    assert!(
        m["error"].as_str().unwrap().contains("the load failed"),
        "{m}"
    );
    let o = floe(
        &[
            "snapshots",
            "show",
            "t@latest",
            "--config",
            cfg,
            "--output",
            "json",
        ],
        &snaps,
        &[],
    );
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        shown["run_id"].as_str().unwrap(),
        good.file_name().unwrap().to_str().unwrap()
    );
    let dup_cfg = tmp.path().join("dup");
    std::fs::create_dir_all(&dup_cfg).unwrap();
    let dup_cfg = veg_config_file(&dup_cfg, dup);
    let named = format!("t@{run_id}");
    let o = floe(
        &[
            "replay",
            &named,
            "--config",
            dup_cfg.to_str().unwrap(),
            "--target",
            &url,
        ],
        &snaps,
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).to_lowercase().contains("duplicate"),
        "{}",
        text(&o)
    );
    let o = floe(
        &["replay", &named, "--config", cfg, "--target", &url],
        &snaps,
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(fingerprint(&connect(&url).await, "veg").await.0, 1_500);
}

#[tokio::test]
async fn prune_keeps_what_it_is_told_and_always_the_newest_good_snapshot() {
    let url = fresh_db("snap_prune").await;
    let tmp = tempfile::tempdir().unwrap();
    let snaps = tmp.path().join("snaps");
    let mut dirs = Vec::new();
    for _ in 0..3 {
        dirs.push(vegetation_snapshot(&url, &snaps, tmp.path(), 500).await);
    }
    // A run still going (no manifest yet), newer than every complete one.
    let running = snaps
        .join("t")
        .join(pipeline::run::new_run_id() + "-running");
    std::fs::create_dir_all(&running).unwrap();
    std::fs::write(running.join("part-00000.parquet"), b"partial").unwrap();
    let cfg = veg_config_file(tmp.path(), VEG_TRANSFORM);
    let cfg = cfg.to_str().unwrap();

    let o = floe(
        &[
            "snapshots",
            "prune",
            "--keep",
            "1",
            "--dry-run",
            "--config",
            cfg,
        ],
        &snaps,
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("would delete") && dirs.iter().all(|d| d.exists()),
        "{}",
        text(&o)
    );

    let o = floe(
        &[
            "snapshots",
            "prune",
            "--keep",
            "1",
            "--config",
            cfg,
            "--output",
            "json",
        ],
        &snaps,
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        !dirs[0].exists() && !dirs[1].exists(),
        "older snapshots kept: {}",
        text(&o)
    );
    assert!(dirs[2].exists(), "the newest complete snapshot was deleted");
    assert!(running.exists(), "a run in progress lost its parts");

    // Even "older than nothing" keeps the newest good one.
    let o = floe(
        &["snapshots", "prune", "--older-than", "0s", "--config", cfg],
        &snaps,
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(dirs[2].exists() && running.exists(), "{}", text(&o));
    let o = floe(&["snapshots", "prune", "--config", cfg], &snaps, &[]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "prune without a rule must refuse: {}",
        text(&o)
    );
}

#[tokio::test]
async fn flight_serves_snapshots_and_a_flight_source_loads_what_replay_loads() {
    let url_files = fresh_db("snap_flight_files").await;
    let url_flight = fresh_db("snap_flight_stream").await;
    let tmp = tempfile::tempdir().unwrap();
    let snaps = tmp.path().join("snaps");
    let snap = vegetation_snapshot(&url_files, &snaps, tmp.path(), 2_000).await;
    let run_id = snap.file_name().unwrap().to_str().unwrap().to_string();
    let cfg = veg_config_file(tmp.path(), VEG_TRANSFORM);
    let cfg_s = cfg.to_str().unwrap();

    // Replay from files into one database ...
    let o = floe(
        &[
            "replay",
            &format!("t@{run_id}"),
            "--config",
            cfg_s,
            "--target",
            &url_files,
        ],
        &snaps,
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));

    // ... and through Flight into another.
    use std::io::BufRead;
    let mut child = floe_command()
        .args([
            "serve-flight",
            "--port",
            "0",
            "--config",
            cfg_s,
            "--snapshots",
            snaps.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _server = KillOnDrop(child);
    let mut banner = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut banner)
        .unwrap();
    let addr = banner.trim().rsplit("grpc://").next().unwrap().to_string();

    // ListFlights shows the snapshot with its row count.
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = arrow_flight::FlightClient::new(channel);
    use futures::TryStreamExt;
    let flights: Vec<arrow_flight::FlightInfo> = client
        .list_flights("t@")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(flights.len(), 1);
    assert_eq!(flights[0].total_records, 2_000);
    // The listed schema is the snapshot's, every column and type tag.
    let listed = flights[0].clone().try_decode_schema().unwrap();
    let m = manifest(&snap);
    let expected: Vec<(String, String, serde_json::Value)> = m["schema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                f["data_type"].as_str().unwrap().to_string(),
                f["metadata"].clone(),
            )
        })
        .collect();
    let got: Vec<(String, String, serde_json::Value)> = listed
        .fields()
        .iter()
        .map(|f| {
            let md: serde_json::Map<String, serde_json::Value> = f
                .metadata()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            let md = if md.is_empty() {
                serde_json::Value::Null
            } else {
                md.into()
            };
            (f.name().clone(), f.data_type().to_string(), md)
        })
        .collect();
    assert_eq!(got, expected);
    assert_eq!(
        flights[0].endpoint[0].ticket.as_ref().unwrap().ticket,
        format!("t@{run_id}").as_bytes()
    );

    let text_cfg = format!(
        "[tables.t]\nflight = \"flight://{addr}/t@{run_id}\"\ntarget = \"veg\"\nprimary_key = [\"zone_id\"]\ntransform = \"{VEG_TRANSFORM}\"\n"
    );
    let config = schemas::config::Config::parse(&text_cfg, Path::new("flight.toml")).unwrap();
    let r = run(&config, "t", &url_flight, None).await;
    assert_success(&r);
    let (a, b) = (connect(&url_files).await, connect(&url_flight).await);
    assert_eq!(fingerprint(&a, "veg").await, fingerprint(&b, "veg").await);
    assert_eq!(fingerprint(&b, "veg").await.0, 2_000);

    // A ticket that names nothing is a clear error, and the target stays.
    let bad = text_cfg.replace(&run_id, "20000101T000000Z-0000");
    let config = schemas::config::Config::parse(&bad, Path::new("flight.toml")).unwrap();
    let r = run(&config, "t", &url_flight, None).await;
    assert_eq!(r.status, "failed");
    let e = r.error.unwrap();
    assert!(
        e.contains("flight://") && e.contains("20000101T000000Z-0000"),
        "{e}"
    );
    assert_eq!(fingerprint(&b, "veg").await.0, 2_000);
}

#[tokio::test]
async fn snapshots_round_trip_through_an_in_memory_object_store() {
    use arrow::array::{Int64Array, StringArray};
    use futures::StreamExt;
    use std::sync::Arc;
    let store = Arc::new(object_store::memory::InMemory::new());
    let location =
        pipeline::snapshot::Location::new(store, "bucket/prefix", "memory://bucket/prefix");
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("ID", arrow::datatypes::DataType::Int64, false),
        arrow::datatypes::Field::new("NAME", arrow::datatypes::DataType::Utf8, true)
            .with_metadata([("logicalType".to_string(), "TEXT".to_string())].into()),
    ]));
    let batches: Vec<arrow::record_batch::RecordBatch> = (0..5)
        .map(|b| {
            arrow::record_batch::RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(Int64Array::from_iter_values(b * 100..b * 100 + 100)),
                    Arc::new(StringArray::from_iter(
                        (0..100).map(|i| (i % 7 != 0).then(|| format!("n{b}-{i}"))),
                    )),
                ],
            )
            .unwrap()
        })
        .collect();
    let writer = pipeline::snapshot::SnapshotWriter::start(
        location.snapshot("t", "run1"),
        "t",
        "run1",
        pipeline::snapshot::SnapshotSource::Parquet { path: "x".into() },
        Arc::clone(&schema),
        pipeline::snapshot::SnapshotOptions {
            part_rows: 150,
            row_group_rows: 64,
            row_group_bytes: 1 << 20,
            zstd_level: 1,
        },
    );
    let source = futures::stream::iter(batches.clone().into_iter().map(Ok::<_, String>));
    let passed: Vec<_> = writer.tee(source).into_stream().collect().await;
    assert_eq!(passed.len(), 5, "the tee passes every batch on");
    let m = writer.finish(None).await.unwrap();
    assert_eq!(m.status, pipeline::snapshot::SnapshotStatus::Complete);
    assert_eq!((m.rows, m.files.len()), (500, 4), "parts of 150 rows");

    let listed = location.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].is_complete());
    let verified = pipeline::snapshot::verify(&location.resolve("t", "latest").await.unwrap())
        .await
        .unwrap();
    assert_eq!(
        verified
            .schema
            .field(1)
            .metadata()
            .get("logicalType")
            .map(String::as_str),
        Some("TEXT")
    );
    let read: Vec<_> = pipeline::snapshot::read_batches(&verified, 1_000)
        .collect()
        .await;
    let read: Vec<_> = read.into_iter().map(Result::unwrap).collect();
    let all = arrow::compute::concat_batches(&verified.schema, &read).unwrap();
    let expected = arrow::compute::concat_batches(&schema, &batches).unwrap();
    assert_eq!(all, expected);

    // A source that fails half way: the snapshot says so.
    let writer = pipeline::snapshot::SnapshotWriter::start(
        location.snapshot("t", "run2"),
        "t",
        "run2",
        pipeline::snapshot::SnapshotSource::Parquet { path: "x".into() },
        Arc::clone(&schema),
        Default::default(),
    );
    let source = futures::stream::iter(vec![
        Ok(batches[0].clone()),
        Err("connection reset".to_string()),
    ]);
    let _: Vec<_> = writer.tee(source).into_stream().collect().await;
    let m = writer.finish(None).await.unwrap();
    assert_eq!(m.status, pipeline::snapshot::SnapshotStatus::Incomplete);
    assert!(m.error.unwrap().contains("connection reset"));
    assert_eq!(
        location.resolve("t", "latest").await.unwrap().name(),
        "t@run1"
    );
}
