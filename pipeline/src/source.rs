//! Sources: where a table's Arrow batches come from.
//!
//! Every source is a DataFusion `TableProvider` registered as `source`, so a
//! transform reads the same whichever it is. Parquet is read through
//! DataFusion's listing table (a file, a directory or a glob), keeping field
//! metadata so Snowflake type tags and JSON/geometry tags survive.

use std::path::Path;
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::context::SessionContext;

/// Opens parquet at `path` (file, directory or glob) as a table provider.
/// Errors are one line that says what to fix.
pub async fn parquet(ctx: &SessionContext, path: &str) -> Result<Arc<dyn TableProvider>, String> {
    let is_glob = path.contains(['*', '?', '[']);
    if !is_glob && !Path::new(path).exists() {
        return Err(format!("parquet file not found: {path}"));
    }
    let url = ListingTableUrl::parse(path).map_err(|e| format!("bad parquet path {path}: {e}"))?;
    let format = ParquetFormat::default().with_skip_metadata(false);
    let options = ListingOptions::new(Arc::new(format)).with_file_extension(".parquet");
    let schema = options
        .infer_schema(&ctx.state(), &url)
        .await
        .map_err(|e| format!("cannot read parquet {path}: {e}"))?;
    if schema.fields().is_empty() {
        return Err(format!("no parquet files match {path}"));
    }
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(schema);
    let table =
        ListingTable::try_new(config).map_err(|e| format!("cannot open parquet {path}: {e}"))?;
    Ok(Arc::new(table))
}
