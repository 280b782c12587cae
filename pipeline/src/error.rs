use datafusion::error::DataFusionError;
use operators::{GeometryError, OperatorError};

use crate::postgres::encode::EncodeError;
use crate::source::SourceError;

/// Everything that can fail while loading a table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    #[error(transparent)]
    Config(#[from] Box<schemas::SchemaError>),
    /// The target could not be reached or refused the login.
    #[error("cannot connect to Postgres at {target}: {message}")]
    Connect { target: String, message: String },
    /// A statement failed; `step` says which part of the refresh.
    #[error("table {table}: {step}: {message}")]
    Postgres {
        table: String,
        step: &'static str,
        message: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A value Postgres would reject, caught before sending it.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A geometry function rejected a value.
    #[error("table {table}, row {row}: {error}")]
    InvalidGeometry {
        table: String,
        row: u64,
        error: Box<GeometryError>,
    },
    /// The transform failed to plan or run.
    #[error("table {table}: transform: {source}")]
    Transform {
        table: String,
        #[source]
        source: TransformError,
    },
    /// The source could not be opened or read.
    #[error("table {table}: source: {source}")]
    Source {
        table: String,
        #[source]
        source: SourceError,
    },
    /// The staged table does not hold what was read; the old table is kept.
    #[error("table {table}: verification failed: read {read} rows but the staging table holds {staged}; the target was left unchanged")]
    CountMismatch {
        table: String,
        read: u64,
        staged: u64,
    },
    /// The connection went while the swap's commit was under way, and the
    /// target could not be asked whether it committed.
    #[error("table {table}: the connection was lost during the swap's commit and the target cannot be reached to tell whether it committed ({cause}); `floe status` shows the table's last run id once it can")]
    SwapUnknown { table: String, cause: String },
    /// Readers kept the target locked through every swap attempt.
    #[error("table {table}: the swap could not lock {target}: {attempts} attempts over {waited_ms} ms (load.lock_timeout), each waiting at most {swap_lock_wait_ms} ms (load.swap_lock_wait); held by {blockers}; the target was left unchanged")]
    SwapBlocked {
        table: String,
        target: String,
        attempts: u32,
        waited_ms: u64,
        swap_lock_wait_ms: u64,
        blockers: String,
    },
    /// The shrink guard refused the swap; the old table is kept.
    #[error("table {table}: refusing to replace {old} rows with {new} (more than {max_shrink_pct}% fewer, or empty); the target was left unchanged. If the source really shrank, rerun with --allow-shrink")]
    Shrink {
        table: String,
        old: u64,
        new: u64,
        max_shrink_pct: u32,
    },
    /// The run was cancelled (Ctrl-C, SIGTERM); the old table is kept.
    #[error("table {table}: cancelled; the target was left unchanged")]
    Cancelled { table: String },
    /// The staged content does not hash to what floe sent; the old table is kept.
    #[error("table {table}: verification failed: the staged rows' checksum is {staged} but floe sent {sent}; the target was left unchanged")]
    ChecksumMismatch {
        table: String,
        sent: String,
        staged: String,
    },
    /// A snapshot no longer fits today's transform or target; nothing was written.
    #[error("table {table}: the snapshot does not match; nothing was written:\n{explanation}")]
    SchemaDrift { table: String, explanation: String },
    /// A snapshot is missing, incomplete or damaged; nothing was written.
    #[error("table {table}: {source}; nothing was written")]
    Snapshot {
        table: String,
        #[source]
        source: crate::snapshot::SnapshotError,
    },
    /// The source holds two rows with one key value (Snowflake does not
    /// enforce primary keys); nothing was applied.
    #[error("table {table}: the source has more than one row with key ({key}) = ({value}); nothing was applied. Fix the source's duplicates")]
    DuplicateKey {
        table: String,
        key: String,
        value: String,
    },
    /// Objects depend on the target that a full refresh cannot keep yet;
    /// found before loading, nothing was written.
    #[error("table {table}: a full refresh replaces {target}, and floe cannot carry these over to its replacement: {objects}. Nothing was loaded. `floe run --incremental` changes rows in place and keeps everything")]
    Dependents {
        table: String,
        target: String,
        objects: String,
    },
    /// Another floe run holds this table.
    #[error("table {table}: another floe run is loading {target} right now")]
    Busy { table: String, target: String },
    /// The ephemeral Postgres cluster could not be started.
    #[error("ephemeral Postgres: {0}")]
    Cluster(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why the way from source rows to COPY bytes broke (shown after `transform: `).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransformError {
    /// Registering the source or planning the transform SQL.
    #[error(transparent)]
    Operator(#[from] OperatorError),
    /// Planning or running the transform (a source failing mid-stream arrives here too).
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    #[error("COPY writer task failed: {0}")]
    WriterTask(#[source] tokio::task::JoinError),
    #[error("checksum of the encoded rows: {0}")]
    Checksum(String),
    #[error("COPY ended before all rows were sent")]
    CopyEndedEarly,
    /// The configured transform is not a query.
    #[error("the table's `transform` must be one query (SELECT … FROM source), not DDL, DML or a statement such as SET: {0}")]
    NotAQuery(String),
}

impl From<schemas::SchemaError> for PipelineError {
    fn from(e: schemas::SchemaError) -> Self {
        PipelineError::Config(Box::new(e))
    }
}

impl PipelineError {
    /// A transform failure of `table`.
    pub fn transform(table: &str, source: impl Into<TransformError>) -> Self {
        PipelineError::Transform {
            table: table.to_string(),
            source: source.into(),
        }
    }

    /// A failure while the transform's rows stream: a geometry error names
    /// its absolute row (`rows_before` rows came in earlier batches).
    pub fn streaming(table: &str, rows_before: u64, e: DataFusionError) -> Self {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = cur {
            if let Some(g) = err.downcast_ref::<GeometryError>() {
                return PipelineError::InvalidGeometry {
                    table: table.to_string(),
                    row: rows_before + g.row_in_batch as u64 + 1,
                    error: Box::new(g.clone()),
                };
            }
            cur = err.source();
        }
        PipelineError::transform(table, e)
    }

    /// Wraps a Postgres error with the table and the refresh step it broke.
    pub fn postgres(table: &str, step: &'static str, source: tokio_postgres::Error) -> Self {
        PipelineError::Postgres {
            table: table.to_string(),
            step,
            message: describe_pg_error(&source),
            source,
        }
    }
}

/// Postgres's own words (message, detail, hint, where) when the server sent them.
pub fn describe_pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str(&format!("; detail: {d}"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            if let Some(w) = db.where_() {
                s.push_str(&format!("; where: {w}"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            s
        }
    }
}
