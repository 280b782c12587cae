//! Parquet as a source, and any stream of batches as a table read once.
//!
//! Every source is a DataFusion `TableProvider` registered as `source`, so a
//! transform reads the same whichever it is. Parquet's schema comes from
//! DataFusion's listing table (a file, a directory or a glob), keeping field
//! metadata so Snowflake type tags and JSON/geometry tags survive; a single
//! local file is then read page by page ([`ParquetFile`]), anything else
//! through the listing table.

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::TableProvider;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::execution::context::SessionContext;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::stream::BoxStream;
use futures::StreamExt;

use super::parquet_file::ParquetFile;
use super::prefetch::Prefetched;

/// Why parquet could not be opened: one line that says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ParquetOpenError {
    #[error("parquet file not found: {path}")]
    NotFound { path: String },
    #[error("bad parquet path {path}: {source}")]
    BadPath {
        path: String,
        source: DataFusionError,
    },
    #[error("cannot read parquet {path}: {source}")]
    Unreadable {
        path: String,
        source: DataFusionError,
    },
    #[error("no parquet files match {path}")]
    NoFiles { path: String },
    #[error("cannot open parquet {path}: {source}")]
    Open {
        path: String,
        source: DataFusionError,
    },
}

/// Batches decoded ahead of the transform (see [`Prefetched`]): two keep
/// the decoder busy while the transform works on one, at the memory of
/// two batches.
const PREFETCH_BATCHES: usize = 2;

/// Opens parquet at `path` (file, directory, glob or URL) as a table
/// provider, decoded ahead of whatever reads it.
pub async fn parquet(
    ctx: &SessionContext,
    path: &str,
) -> Result<Arc<dyn TableProvider>, ParquetOpenError> {
    let path_of = || path.to_string();
    let is_glob = path.contains(['*', '?', '[']);
    if !is_glob && !Path::new(path).exists() {
        return Err(ParquetOpenError::NotFound { path: path_of() });
    }
    let url = ListingTableUrl::parse(path).map_err(|source| ParquetOpenError::BadPath {
        path: path_of(),
        source,
    })?;
    let format = ParquetFormat::default().with_skip_metadata(false);
    let options = ListingOptions::new(Arc::new(format)).with_file_extension(".parquet");
    let schema = options
        .infer_schema(&ctx.state(), &url)
        .await
        .map_err(|source| ParquetOpenError::Unreadable {
            path: path_of(),
            source,
        })?;
    if schema.fields().is_empty() {
        return Err(ParquetOpenError::NoFiles { path: path_of() });
    }
    if !is_glob && Path::new(path).is_file() {
        return Ok(Arc::new(ParquetFile::new(
            Path::new(path),
            schema,
            PREFETCH_BATCHES,
        )));
    }
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(schema);
    let table = ListingTable::try_new(config).map_err(|source| ParquetOpenError::Open {
        path: path_of(),
        source,
    })?;
    Ok(Arc::new(Prefetched::new(Arc::new(table), PREFETCH_BATCHES)))
}

/// A stream of batches (a Snowflake result, a Flight stream, a snapshot,
/// or any source being snapshotted) as a table that is read once.
pub fn one_shot(
    schema: SchemaRef,
    stream: BoxStream<'static, Result<RecordBatch, DataFusionError>>,
) -> Result<Arc<dyn TableProvider>, DataFusionError> {
    let partition = OneShot {
        schema: Arc::clone(&schema),
        stream: std::sync::Mutex::new(Some(stream)),
    };
    let table = StreamingTable::try_new(schema, vec![Arc::new(partition)])?;
    Ok(Arc::new(table))
}

/// A stream that can be executed once (a source is read once).
struct OneShot {
    schema: SchemaRef,
    stream: std::sync::Mutex<Option<BoxStream<'static, Result<RecordBatch, DataFusionError>>>>,
}

impl std::fmt::Debug for OneShot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OneShot")
    }
}

impl PartitionStream for OneShot {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let taken = self.stream.lock().ok().and_then(|mut s| s.take());
        let stream = match taken {
            Some(s) => s,
            None => futures::stream::once(async {
                Err(DataFusionError::Execution(
                    "a source stream can be read only once".into(),
                ))
            })
            .boxed(),
        };
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        ))
    }
}
