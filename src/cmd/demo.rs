use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use emulator::generate::{generate, GenerateOptions};
use emulator::{Emulator, EmulatorConfig};
use pipeline::cluster::EphemeralCluster;
use pipeline::postgres::Target;
use pipeline::run::{new_run_id, RunOptions};
use schemas::config::SnowflakeConfig;

use crate::output::{run_tables, OutputFormat};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Leave the PostGIS cluster running and print its URL.
    #[arg(long)]
    keep: bool,
    /// Rows per table instead of the datasets.md sizes (for a quicker look).
    #[arg(long)]
    rows: Option<u64>,
    /// Config file (default: the shipped grid config). Its tables are read
    /// from the emulator, whatever its [snowflake] section says.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
}

/// The spatial question a map asks: which connections are within 500 m of a
/// substation? The geometry GiST index finds candidates by bounding box
/// (0.006° covers 500 m here); geography gives the exact distance in metres.
const NEAR_SUBSTATION: &str = "
WITH s AS (
    SELECT asset_id, name, geom FROM assets_cache
    WHERE asset_type = 'SUBSTATION'
    ORDER BY geom <-> ST_SetSRID(ST_MakePoint(-95.0, 30.0), 4326)
    LIMIT 1
)
SELECT s.asset_id, s.name, ST_AsText(s.geom, 5), count(t.connection_id)
FROM s LEFT JOIN topology_connections_cache t
  ON ST_DWithin(t.geom, s.geom, 0.006) AND ST_DWithin(t.geom::geography, s.geom::geography, 500)
GROUP BY s.asset_id, s.name, s.geom";

pub async fn run(args: Args) -> Result<ExitCode> {
    // The demo always uses the shipped config unless told otherwise, whatever the working directory holds.
    let config = match &args.config {
        Some(p) => super::load_config(Some(p))?,
        None => schemas::config::Config::parse(
            super::EMBEDDED_CONFIG,
            &PathBuf::from("<embedded floe.toml>"),
        )?,
    };
    let data = tempfile::Builder::new()
        .prefix("floe-demo-")
        .tempdir()
        .context("creating a temporary directory")?;
    let started = Instant::now();
    eprintln!(
        "generating the grid tables into {} ...",
        data.path().display()
    );
    let generated = generate(&GenerateOptions {
        out: data.path().to_path_buf(),
        tables: Vec::new(),
        rows: args.rows,
        seed: 42,
    })?;
    let total: u64 = generated.iter().map(|g| g.rows).sum();
    eprintln!(
        "generated {total} rows in {:.1}s; starting PostGIS ...",
        started.elapsed().as_secs_f64()
    );
    let cluster = tokio::task::spawn_blocking(EphemeralCluster::start).await??;
    let target = Target::resolve(&config.target.with_url(cluster.url()))?;
    // Every table is read the way production reads it: through Snowflake's
    // protocol, from the emulator serving the generated files.
    let password = format!("demo-{}", std::process::id());
    let emulator = Emulator::start(EmulatorConfig {
        chunk_rows: 50_000,
        ..EmulatorConfig::new(data.path(), "floe", &password)
    })
    .await
    .context("starting the Snowflake emulator")?;
    eprintln!(
        "Snowflake emulator on {}; loading every table through it ...",
        emulator.url()
    );
    let mut config = config;
    config.snowflake = SnowflakeConfig {
        account: Some("emulator".into()),
        user: Some("floe".into()),
        password: Some(password),
        host: Some("127.0.0.1".into()),
        port: Some(emulator.port()),
        protocol: Some("http".into()),
        ..config.snowflake.clone()
    };
    let (canceller, cancel) = pipeline::run::Cancel::new();
    let _interrupt = super::on_interrupt(canceller);
    let options = RunOptions {
        run_id: new_run_id(),
        parquet_dir: None,
        cancel,
        allow_shrink: false,
        // Kept with the generated data (and gone with it, unless --keep).
        snapshots: Some(super::snapshot_plan(
            &config,
            Some(&data.path().join("snapshots").to_string_lossy()),
        )?),
        replay: None,
    };
    let tables = super::select_tables(&config, &[])?;
    let reports = run_tables(&config, &tables, &target, &options, args.output).await;
    let ok = reports
        .iter()
        .all(|r| r.status == pipeline::postgres::runs::RunStatus::Success);

    if ok
        && config.find_table("assets_cache").is_some()
        && config.find_table("topology_connections_cache").is_some()
    {
        let session = target
            .connect(
                &pipeline::postgres::application_name(&["demo"]),
                &config.load,
            )
            .await?;
        let rows = session
            .client
            .query(NEAR_SUBSTATION, &[])
            .await
            .context("running the demo query")?;
        if let Some(r) = rows.first() {
            let (id, name, at, n): (String, String, String, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            println!();
            println!("Connections within 500 m of substation {id} \"{name}\" at {at}: {n}");
        }
    }
    eprintln!("demo finished in {:.1}s", started.elapsed().as_secs_f64());
    if args.keep {
        let url = cluster.url();
        let (_, dir) = cluster.keep();
        println!("PostGIS is still running: {url}");
        println!(
            "stop it with: kill -INT $(head -1 {dir}/data/postmaster.pid) && rm -rf {dir}",
            dir = dir.display()
        );
    } else {
        drop(cluster);
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
