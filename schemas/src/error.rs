use std::path::PathBuf;

/// Errors in describing or mapping shapes: config files, type names, mappings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The config file could not be read.
    #[error("cannot read config {path}: {source}")]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML or does not fit floe's config shape.
    #[error("{path}: {message}")]
    ConfigParse { path: PathBuf, message: String },
    /// A value in the config is invalid; names file, table and key.
    #[error("{path}: table `{table}`, key `{key}`: {message}")]
    ConfigInvalid {
        path: PathBuf,
        table: String,
        key: String,
        message: String,
    },
    /// A Postgres type name floe does not understand.
    #[error("unknown Postgres type `{0}` (expected e.g. text, bigint, numeric(6,2), jsonb, geometry(Point,4326))")]
    UnknownPgType(String),
    /// An Arrow column that cannot be written to the requested Postgres type.
    #[error("column `{column}`: cannot write Arrow {arrow} as Postgres {pg}")]
    Incompatible {
        column: String,
        arrow: String,
        pg: String,
    },
    /// A Snowflake result column floe cannot decode; names the column.
    #[error("column `{column}`: {message}")]
    Snowflake { column: String, message: String },
    /// An Arrow type with no Postgres counterpart.
    #[error(
        "column `{column}`: Arrow type {arrow} has no Postgres mapping; cast it in the transform"
    )]
    Unsupported { column: String, arrow: String },
}
