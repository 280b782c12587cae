//! A table's transform under way before the load needs its rows.
//!
//! A run's first batch is the dearest of its start: in a 153,592-row
//! topology load from a local parquet file it takes ~24 ms (each column's
//! dictionary page is decoded whole before the first row), while what else
//! comes before the COPY (connecting, the table's lock, the run's record,
//! the precheck, the load's session, the staging table) is round trips and
//! Postgres's work. So the first batch is made on a task of its own
//! ([`FirstBatch`]) while the staging table is made and the COPY opened,
//! and a local parquet file is opened, planned and started from the run's
//! very start ([`Early`]), beside the lock and the precheck.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SessionContext;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::StreamExt;
use operators::GeometryOptions;
use schemas::config::Config;

use super::plan::{self, Planned};
use super::{Cancel, RunOptions};
use crate::postgres::encode::CopyEncoder;
use crate::postgres::refresh::TablePlan;
use crate::source::{Connected, Described, Opened, TableSource};
use crate::task::AbortOnDrop;
use crate::PipelineError;

/// A table's transform planned over its source and running: what the
/// refresh writes, the encoder for the transform's output, and its first
/// batch being made.
pub(super) struct Started {
    pub plan: TablePlan,
    pub encoder: CopyEncoder,
    pub first: FirstBatch,
}

/// Plans table `name`'s transform over `provider` and starts it (writing
/// into `schema` of the target).
pub(super) async fn start(
    config: &Config,
    name: &str,
    schema: &str,
    ctx: &SessionContext,
    provider: Arc<dyn TableProvider>,
) -> Result<Started, PipelineError> {
    let Planned { df, plan, encoder } =
        plan::plan_table(config, name, schema, ctx, provider).await?;
    let stream = df
        .execute_stream()
        .await
        .map_err(|e| PipelineError::transform(name, e))?;
    Ok(Started {
        plan,
        encoder,
        first: FirstBatch::start(stream),
    })
}

/// What the first-batch task hands over: the batch (or the stream's error,
/// or nothing for an empty source) and the rest of the stream.
type Made = (
    Option<Result<arrow::record_batch::RecordBatch, DataFusionError>>,
    SendableRecordBatchStream,
);

/// The transform's first batch, made on a task of its own. Dropped, the
/// task is aborted and the transform with it.
pub(super) struct FirstBatch {
    task: AbortOnDrop<Made>,
    schema: SchemaRef,
    started: Instant,
    /// Nanoseconds the batch took, once it is made (`u64::MAX` until then).
    made_in: Arc<AtomicU64>,
}

impl FirstBatch {
    fn start(mut stream: SendableRecordBatchStream) -> FirstBatch {
        let schema = stream.schema();
        let started = Instant::now();
        let made_in = Arc::new(AtomicU64::new(u64::MAX));
        let task = AbortOnDrop::spawn({
            let made_in = Arc::clone(&made_in);
            async move {
                let first = stream.next().await;
                let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
                made_in.store(nanos, Ordering::Relaxed);
                tracing::debug!(
                    ms = nanos as f64 / 1e6,
                    "the transform's first batch is made"
                );
                (first, stream)
            }
        });
        FirstBatch {
            task,
            schema,
            started,
            made_in,
        }
    }

    /// The whole stream, first batch included, and the seconds spent making
    /// that batch before now (whatever is left of it, the COPY waits for as
    /// for any batch, and counts).
    ///
    /// An error making the batch, or a panic in its task, comes out of the
    /// stream, where the COPY reports it as it does any other.
    pub fn into_stream(self) -> (SendableRecordBatchStream, f64) {
        let ahead = match self.made_in.load(Ordering::Relaxed) {
            u64::MAX => self.started.elapsed().as_secs_f64(),
            nanos => nanos as f64 / 1e9,
        };
        let task = self.task;
        let whole = futures::stream::once(async move {
            match task.join().await {
                Ok((first, rest)) => futures::stream::iter(first).chain(rest).boxed(),
                Err(e) => {
                    futures::stream::iter([Err(DataFusionError::External(Box::new(e)))]).boxed()
                }
            }
        })
        .flatten();
        (
            Box::pin(RecordBatchStreamAdapter::new(self.schema, whole)),
            ahead,
        )
    }
}

/// A local parquet source opened, planned and started from the run's
/// start, on a task of its own, while the run takes the table's lock,
/// records itself and runs its precheck. A file read early is read by no
/// one else and costs no query, and no row of it reaches Postgres before
/// the precheck passes (its staging table is made beside the check, and
/// dropped if the run is refused). Dropped (the table busy, the run refused or
/// cancelled), the task is aborted.
///
/// Only for full refreshes of a local parquet file without a snapshot: a
/// Snowflake or Flight query waits for the precheck, and a snapshot is
/// written only by a run that holds the table.
pub(super) struct Early(AbortOnDrop<Result<Ahead, PipelineError>>);

/// What [`Early`] made.
pub(super) struct Ahead {
    pub ctx: SessionContext,
    pub described: Described,
    pub source_open: f64,
    pub started: Started,
}

impl Early {
    /// Starts table `name` early if its source and the run allow it.
    pub fn start(
        config: &Config,
        name: &str,
        source: &TableSource<'_>,
        schema: &str,
        geometry: &GeometryOptions,
        options: &RunOptions,
    ) -> Option<Early> {
        if options.incremental || options.snapshots.is_some() {
            return None;
        }
        let source = match source {
            TableSource::Parquet { path } => TableSource::Parquet { path: path.clone() },
            TableSource::ParquetDir {
                dir,
                snowflake_table,
            } => TableSource::ParquetDir {
                dir: dir.clone(),
                snowflake_table: snowflake_table.clone(),
            },
            _ => return None,
        };
        let (config, name, schema) = (config.clone(), name.to_string(), schema.to_string());
        let (geometry, cancel) = (geometry.clone(), options.cancel.clone());
        Some(Early(AbortOnDrop::spawn(async move {
            early(&config, &name, &source, &schema, geometry, &cancel).await
        })))
    }

    /// Waits for what was started.
    pub async fn ready(self, name: &str) -> Result<Ahead, PipelineError> {
        self.0.join().await.unwrap_or_else(|e| {
            Err(PipelineError::transform(
                name,
                DataFusionError::Execution(format!("the task opening the source failed: {e}")),
            ))
        })
    }
}

async fn early(
    config: &Config,
    name: &str,
    source: &TableSource<'static>,
    schema: &str,
    geometry: GeometryOptions,
    cancel: &Cancel,
) -> Result<Ahead, PipelineError> {
    let ctx = plan::context_ahead(config, &geometry).await;
    let opening = Instant::now();
    let Opened {
        data, described, ..
    } = source
        .open(name, config, &ctx, cancel, Connected::none())
        .await?;
    let source_open = opening.elapsed().as_secs_f64();
    let provider = data.into_provider(name)?;
    let started = start(config, name, schema, &ctx, provider).await?;
    Ok(Ahead {
        ctx,
        described,
        source_open,
        started,
    })
}
