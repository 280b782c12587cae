//! A table's section of the config file (`[tables.<name>]`): its source,
//! transform, target, column types and indexes.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::pg::PgType;
use crate::SchemaError;

impl TableConfig {
    /// The primary key's name on the target: `<target>_pkey`.
    pub fn pkey_name(&self) -> String {
        crate::pg::fitted_name(&self.target, "_pkey")
    }

    /// Each configured index's name on the target, Postgres's convention
    /// `<target>_<columns>_idx`, with the method added where two indexes
    /// share columns, and a hash where the name would exceed 63 bytes (so
    /// no two names truncate to one).
    pub fn index_names(&self) -> Vec<String> {
        index_names(&self.target, &self.indexes)
    }
}

/// See [`TableConfig::index_names`].
pub fn index_names(target: &str, indexes: &[IndexConfig]) -> Vec<String> {
    indexes
        .iter()
        .map(|ix| {
            let shared = indexes.iter().filter(|o| o.columns == ix.columns).count() > 1;
            let stem = match shared {
                true => format!("{target}_{}_{}", ix.columns.join("_"), ix.method),
                false => format!("{target}_{}", ix.columns.join("_")),
            };
            crate::pg::fitted_name(&stem, "_idx")
        })
        .collect()
}

/// What to do with a geometry that does not parse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInvalidGeometry {
    /// Fail the table, naming row and value (the default: nothing is lost silently).
    #[default]
    Error,
    /// Write NULL and count it; the run reports how many.
    Null,
}

/// One table: where it comes from, how it is transformed, where it lands.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// The Snowflake table (also names `<DIR>/<SNOWFLAKE_TABLE>.parquet` for `--parquet DIR`).
    pub snowflake_table: Option<String>,
    /// The Snowflake query; defaults to `SELECT * FROM <snowflake_table>`.
    pub query: Option<String>,
    /// Read this parquet file, directory or glob instead of Snowflake.
    pub parquet: Option<String>,
    /// Read an Arrow Flight stream instead: `flight://host:port/<ticket>`.
    pub flight: Option<String>,
    /// The Snowflake table or view whose change data an incremental run
    /// reads (default: `snowflake_table` when there is no custom `query`).
    /// A view without geospatial columns is the way out where Snowflake
    /// refuses change data on a table that has them; its key columns must
    /// be the target's key.
    pub changes_from: Option<String>,
    /// DataFusion SQL over a table named `source`; defaults to `SELECT * FROM source`.
    pub transform: Option<String>,
    /// The Postgres table (in `target.schema`).
    pub target: String,
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// Postgres types for columns whose type cannot be inferred from Arrow.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    #[serde(default)]
    pub indexes: Vec<IndexConfig>,
    #[serde(default)]
    pub on_invalid_geometry: OnInvalidGeometry,
    /// This table's `floe watch` schedule, over `[watch]`.
    #[serde(default)]
    pub watch: crate::watch::TableWatch,
}

/// A secondary index built after the load.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    pub columns: Vec<String>,
    /// btree (default), gist, brin, hash, gin or spgist.
    #[serde(default = "default_method")]
    pub method: String,
}

fn default_method() -> String {
    "btree".into()
}

pub(super) const INDEX_METHODS: &[&str] = &["btree", "gist", "brin", "hash", "gin", "spgist"];

/// Where a table's rows come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// A Snowflake query.
    Snowflake {
        table: Option<String>,
        query: String,
    },
    /// Parquet file(s): a path, a directory or a glob.
    Parquet(String),
    /// An Arrow Flight `DoGet`: `flight://host:port/<ticket>`.
    Flight(String),
}

impl TableConfig {
    /// Whether `[tables.<name>.watch]` sets `key` (for messages).
    pub(super) fn watch_sets(&self, key: &str) -> bool {
        match key {
            "full_refresh" => self.watch.full_refresh.is_some(),
            "timezone" => self.watch.timezone.is_some(),
            "incremental_every" => self.watch.incremental_every.is_some(),
            _ => false,
        }
    }

    /// The transform SQL (default: pass-through).
    pub fn transform_sql(&self) -> &str {
        self.transform.as_deref().unwrap_or("SELECT * FROM source")
    }

    /// The configured source.
    pub fn source(&self) -> Option<SourceSpec> {
        if let Some(p) = &self.parquet {
            return Some(SourceSpec::Parquet(p.clone()));
        }
        if let Some(f) = &self.flight {
            return Some(SourceSpec::Flight(f.clone()));
        }
        let query = match (&self.query, &self.snowflake_table) {
            (Some(q), _) => q.clone(),
            (None, Some(t)) => format!("SELECT * FROM {t}"),
            (None, None) => return None,
        };
        Some(SourceSpec::Snowflake {
            table: self.snowflake_table.clone(),
            query,
        })
    }

    /// The Snowflake object an incremental run reads change data from:
    /// `changes_from`, else the source table unless a custom `query` hides it.
    pub fn changes_object(&self) -> Option<&str> {
        match (&self.changes_from, &self.query, &self.snowflake_table) {
            (Some(c), _, _) => Some(c),
            (None, None, Some(t)) => Some(t),
            _ => None,
        }
    }

    /// Parsed column type overrides.
    pub fn column_types(&self) -> Result<BTreeMap<String, PgType>, (String, SchemaError)> {
        self.columns
            .iter()
            .map(|(k, v)| {
                v.parse()
                    .map(|t| (k.clone(), t))
                    .map_err(|e| (k.clone(), e))
            })
            .collect()
    }
}
