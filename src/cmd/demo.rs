use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use emulator::generate::{generate, GenerateOptions};
use emulator::{Emulator, EmulatorConfig};
use pipeline::cluster::EphemeralCluster;
use pipeline::postgres::Target;
use pipeline::run::{new_run_id, RunOptions};
use pipeline::source::snowflake::SnowflakeSession;
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
    /// After the demo, keep going as `floe watch` (every 5 s) while the
    /// emulator changes the topology; Ctrl-C stops it.
    #[arg(long)]
    watch: bool,
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
SELECT s.asset_id, s.name, ST_AsText(s.geom, 5), count(t.connection_id), ST_X(s.geom), ST_Y(s.geom)
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
        password: Some(password.into()),
        host: Some("127.0.0.1".into()),
        port: Some(emulator.port()),
        protocol: Some("http".into()),
        ..config.snowflake.clone()
    };
    // Change tracking on before the first load, as a production account
    // would have it: the full refresh's watermark then starts a window the
    // incremental round can read.
    let tracked = tracked_tables(&config);
    let session_sf = SnowflakeSession::login(&config.snowflake)
        .await
        .context("logging in to the emulator")?;
    for t in &tracked {
        session_sf
            .execute(&format!("ALTER TABLE {t} SET CHANGE_TRACKING = TRUE"))
            .await
            .with_context(|| format!("switching on change tracking for {t}"))?;
    }
    let (canceller, cancel) = pipeline::run::Cancel::new();
    let interrupt = super::on_interrupt(canceller);
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
        incremental: false,
        skip_if_busy: false,
        snowflake: None,
    };
    let tables = super::select_tables(&config, &[])?;
    let reports = run_tables(&config, &tables, &target, &options, args.output).await;
    let mut ok = reports
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
        let before = near_substation(&session.client).await?;
        println!();
        println!("{}", before.line());
        // The incremental round: the source changes, floe applies only that.
        if tracked.iter().any(|t| t == TOPOLOGY) {
            let changes = change_topology(&session.client, &session_sf, &before).await?;
            eprintln!("\nin Snowflake: {changes}; now `floe run --incremental` ...");
            let options = RunOptions {
                run_id: new_run_id(),
                incremental: true,
                snapshots: None,
                ..options
            };
            let tables = super::select_tables(&config, &["topology_connections_cache".into()])?;
            let incremental = run_tables(&config, &tables, &target, &options, args.output).await;
            ok = incremental
                .iter()
                .all(|r| r.status == pipeline::postgres::runs::RunStatus::Success);
            let after = near_substation(&session.client).await?;
            println!();
            println!("{}", after.line());
        }
    }
    session_sf.logout().await;
    if ok && args.watch {
        interrupt.disarm();
        watch_round(&config, &tables, &target, &emulator).await?;
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

/// The topology table in Snowflake (the demo's incremental round changes it).
const TOPOLOGY: &str = "FLUX_OPS_CENTER_TOPOLOGY";

/// The config's grid tables that can load incrementally from the emulator
/// as configured: those without a geospatial column (the emulator, like
/// Snowflake's streams, refuses their change data; a view of their keys
/// named by `changes_from` is the way, see README).
fn tracked_tables(config: &schemas::config::Config) -> Vec<String> {
    use schemas::snowflake::SnowflakeType;
    config
        .tables
        .values()
        .filter_map(|t| t.snowflake_table.as_deref())
        .filter_map(schemas::datasets::find)
        .filter(|d| {
            !d.columns
                .iter()
                .any(|c| matches!(c.ty, SnowflakeType::Geography | SnowflakeType::Geometry))
        })
        .map(|d| d.snowflake_table.to_string())
        .collect()
}

/// The demo query's answer.
struct NearSubstation {
    id: String,
    name: String,
    at: String,
    lon: f64,
    lat: f64,
    connections: i64,
}

impl NearSubstation {
    fn line(&self) -> String {
        format!(
            "Connections within 500 m of substation {} \"{}\" at {}: {}",
            self.id, self.name, self.at, self.connections
        )
    }
}

async fn near_substation(client: &tokio_postgres::Client) -> Result<NearSubstation> {
    let r = client
        .query_one(NEAR_SUBSTATION, &[])
        .await
        .context("running the demo query")?;
    Ok(NearSubstation {
        id: r.get(0),
        name: r.get(1),
        at: r.get(2),
        lon: r.get(4),
        lat: r.get(5),
        connections: r.get(3),
    })
}

/// Changes the topology in Snowflake the way a re-routing does: moves 30
/// connections next to the substation (new geometry), removes 10 of those
/// already near it, adds 10 new ones there. Returns what it did, in words.
async fn change_topology(
    client: &tokio_postgres::Client,
    snowflake: &SnowflakeSession,
    near: &NearSubstation,
) -> Result<String> {
    let ids = |sql: String| async move {
        let rows = client.query(&sql, &[]).await?;
        Ok::<_, tokio_postgres::Error>(
            rows.iter()
                .map(|r| r.get::<_, i64>(0).to_string())
                .collect::<Vec<_>>()
                .join(", "),
        )
    };
    let point = format!("ST_SetSRID(ST_MakePoint({}, {}), 4326)", near.lon, near.lat);
    let far = ids(format!(
        "SELECT connection_id FROM topology_connections_cache \
         ORDER BY geom <-> {point} DESC, connection_id LIMIT 30"
    ))
    .await?;
    let close = ids(format!(
        "SELECT connection_id FROM topology_connections_cache \
         WHERE ST_DWithin(geom::geography, {point}::geography, 500) ORDER BY connection_id LIMIT 10"
    ))
    .await?;
    let (lon, lat) = (near.lon + 0.001, near.lat + 0.001);
    let mut statements = vec![format!(
        "UPDATE {TOPOLOGY} SET FROM_LONGITUDE = {lon}, FROM_LATITUDE = {lat}, \
         TO_LONGITUDE = {}, TO_LATITUDE = {} WHERE CONNECTION_ID IN ({far})",
        lon + 0.0005,
        lat + 0.0005
    )];
    if !close.is_empty() {
        statements.push(format!(
            "DELETE FROM {TOPOLOGY} WHERE CONNECTION_ID IN ({close})"
        ));
    }
    statements.push(format!(
        "INSERT INTO {TOPOLOGY} SELECT CONNECTION_ID + 100000000, FROM_ASSET_ID, TO_ASSET_ID, \
         FROM_ASSET_TYPE, TO_ASSET_TYPE, CIRCUIT_ID, FEEDER_ID, SUBSTATION_ID, PHASE, VOLTAGE_KV, \
         {lat}, {lon}, {}, {}, LENGTH_M, IS_ENERGIZED, INSTALLED_DATE, UPDATED_AT, ATTRIBUTES \
         FROM {TOPOLOGY} WHERE CONNECTION_ID IN ({far}) AND CONNECTION_ID % 3 = 0",
        lat - 0.0005,
        lon - 0.0005
    ));
    for sql in &statements {
        snowflake
            .execute(sql)
            .await
            .with_context(|| format!("changing the topology in the emulator: {sql}"))?;
    }
    Ok(format!(
        "moved 30 connections next to substation {}, deleted {} near it, inserted copies of a third of the moved ones",
        near.id,
        close.split(", ").filter(|s| !s.is_empty()).count()
    ))
}

/// `floe demo --watch`: the emulator changes the topology (its `--mutate`)
/// while `floe watch` syncs every 5 s, one line per applied window, until
/// Ctrl-C.
async fn watch_round(
    config: &schemas::config::Config,
    tables: &[String],
    target: &Target,
    emulator: &Emulator,
) -> Result<()> {
    let mut config = config.clone();
    config.watch.incremental_every = "5s".into();
    emulator
        .mutate(TOPOLOGY, 20)
        .context("starting change traffic on the topology")?;
    let watch = pipeline::watch::Watch::new(&config, tables, target.clone(), None)?;
    let listener = match tokio::net::TcpListener::bind(&config.watch.listen).await {
        Ok(l) => l,
        Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    };
    let addr = listener.local_addr()?;
    println!();
    println!(
        "floe watch: the emulator now changes {TOPOLOGY} (20 rows/s); syncing every 5 s. \
         Metrics: http://{addr}/metrics, status: http://{addr}/status. Ctrl-C stops."
    );
    let (stopper, stop) = pipeline::run::Cancel::new();
    tokio::spawn(async move {
        super::watch::wait_for_signal().await;
        stopper.cancel();
    });
    let mut reports = watch.reports();
    let printer = tokio::spawn(async move {
        while let Ok(r) = reports.recv().await {
            println!("{}", super::watch::line(&r));
        }
    });
    let (_, served) = tokio::join!(
        watch.run(stop.clone()),
        pipeline::watch::serve(&watch, listener, stop)
    );
    printer.abort();
    served.context("serving /metrics")?;
    Ok(())
}
