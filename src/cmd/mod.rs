//! One module per subcommand; shared config loading lives here.

pub mod bench;
pub mod bench_incremental;
pub mod bench_watch;
pub mod demo;
pub mod doctor;
pub mod emulate;
pub mod generate;
pub mod replay;
pub mod run;
pub mod serve_flight;
pub mod snapshots;
pub mod status;
pub mod watch;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use schemas::config::{Config, TargetUrl};
use schemas::datasets::{self, Dataset};

/// `--config` and `--target`, as every command that talks to the target takes them.
#[derive(Debug, clap::Args)]
pub struct TargetArgs {
    /// Config file (default: ./floe.toml, else the shipped grid config).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Postgres URL, overriding the config's [target] (password is never printed).
    #[arg(long, env = "FLOE_TARGET_URL", hide_env_values = true)]
    target: Option<TargetUrl>,
}

impl TargetArgs {
    /// The config (see [`load_config`]) and the target it and `--target` name.
    pub fn resolve(&self) -> Result<(Config, pipeline::postgres::Target)> {
        let config = load_config(self.config.as_deref())?;
        let target_config = match &self.target {
            Some(url) => config.target.with_url(url.expose()),
            None => config.target.clone(),
        };
        let target = pipeline::postgres::Target::resolve(&target_config)?;
        Ok((config, target))
    }
}

/// The shipped configuration, used when no file is given and none is in the working directory.
pub const EMBEDDED_CONFIG: &str = include_str!("../../floe.toml");

/// `--config FILE`, else `./floe.toml`, else the embedded grid config;
/// `SNOWFLAKE_*` environment variables override its [snowflake] section.
pub fn load_config(path: Option<&Path>) -> Result<Config> {
    let mut config = match path {
        Some(p) => Config::load(p)?,
        None if Path::new("floe.toml").exists() => Config::load(Path::new("floe.toml"))?,
        None => Config::parse(EMBEDDED_CONFIG, &PathBuf::from("<embedded floe.toml>"))?,
    };
    config.snowflake = config.snowflake.with_env();
    Ok(config)
}

/// The snapshot location (`--snapshot-dir`/`FLOE_SNAPSHOT_DIR`, else the
/// config's `snapshot_dir`).
pub fn snapshot_location(
    config: &Config,
    dir: Option<&str>,
) -> Result<pipeline::snapshot::Location> {
    Ok(pipeline::snapshot::Location::parse(
        dir.unwrap_or(&config.snapshot_dir),
    )?)
}

/// Where and how a run snapshots what it reads.
pub fn snapshot_plan(config: &Config, dir: Option<&str>) -> Result<pipeline::run::SnapshotPlan> {
    Ok(pipeline::run::SnapshotPlan {
        location: snapshot_location(config, dir)?,
        options: pipeline::snapshot::SnapshotOptions {
            row_group_rows: config.snapshots.row_group_rows,
            row_group_bytes: config.snapshots.row_group_bytes,
            part_rows: config.snapshots.part_rows,
            zstd_level: config.snapshots.zstd_level,
        },
    })
}

/// Resolves `--table` names (config name, Postgres table or Snowflake table) to config names.
pub fn select_tables(config: &Config, names: &[String]) -> Result<Vec<String>> {
    if names.is_empty() {
        return Ok(config.tables.keys().cloned().collect());
    }
    names
        .iter()
        .map(|n| match config.find_table(n) {
            Some((name, _)) => Ok(name.to_string()),
            None => bail!(
                "no table `{n}` in {}; known: {}",
                config.path.display(),
                config.tables.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        })
        .collect()
}

/// Resolves `--table` names for the generator (grid datasets).
pub fn select_datasets(names: &[String]) -> Result<Vec<&'static Dataset>> {
    names
        .iter()
        .map(|n| {
            datasets::find(n).with_context(|| {
                format!(
                    "no grid table `{n}`; known: {}",
                    datasets::ALL
                        .iter()
                        .map(|d| d.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        })
        .collect()
}

/// Which signal stopped the run, if any.
pub struct Interrupt(
    std::sync::Arc<std::sync::atomic::AtomicU8>,
    tokio::task::JoinHandle<()>,
);

impl Interrupt {
    /// Stops listening: the signals go to whoever listens next (`floe demo
    /// --watch` after its runs).
    pub fn disarm(&self) {
        self.1.abort();
    }

    /// The shell's exit status for it: 130 after SIGINT, 143 after SIGTERM.
    pub fn exit_code(&self) -> Option<u8> {
        match self.0.load(std::sync::atomic::Ordering::SeqCst) {
            0 => None,
            code => Some(code),
        }
    }

    /// A run's exit status: the signal's if one stopped it, else 0 when
    /// every table succeeded and 1 when any did not.
    pub fn exit_status(&self, reports: &[pipeline::run::TableReport]) -> std::process::ExitCode {
        match self.exit_code() {
            Some(code) => std::process::ExitCode::from(code),
            None if reports
                .iter()
                .all(|r| r.status == pipeline::postgres::runs::RunStatus::Success) =>
            {
                std::process::ExitCode::SUCCESS
            }
            None => std::process::ExitCode::from(1),
        }
    }
}

/// Cancels the run on Ctrl-C (SIGINT) or SIGTERM, so the load rolls back,
/// the Snowflake query is aborted and the report says `cancelled`.
pub fn on_interrupt(canceller: pipeline::run::Canceller) -> Interrupt {
    use std::sync::atomic::{AtomicU8, Ordering};
    let code = std::sync::Arc::new(AtomicU8::new(0));
    let seen = std::sync::Arc::clone(&code);
    let task = tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot watch SIGTERM: {e}");
                    return;
                }
            };
        let signal = tokio::select! {
            _ = tokio::signal::ctrl_c() => 130,
            _ = term.recv() => 143,
        };
        seen.store(signal, Ordering::SeqCst);
        tracing::warn!("interrupted: rolling back and cancelling the source query");
        eprintln!("floe: interrupted; rolling back (the targets keep their previous content)");
        canceller.cancel();
    });
    Interrupt(code, task)
}
