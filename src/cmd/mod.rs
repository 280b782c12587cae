//! One module per subcommand; shared config loading lives here.

pub mod demo;
pub mod emulate;
pub mod generate;
pub mod run;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use schemas::config::Config;
use schemas::datasets::{self, Dataset};

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
