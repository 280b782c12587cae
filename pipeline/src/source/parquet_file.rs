//! A local parquet file read page by page, ahead of the transform.
//!
//! Why: DataFusion's parquet scan fetches a row group's column chunks whole
//! before it decodes the group's first batch. With the 131,072-row groups
//! of a generated or exported file that is ~10 MB read into fresh memory
//! before the first 8,192 rows exist, while the COPY waits, and held while
//! the group is decoded. parquet's own reader over a `File` reads each page
//! as the decoder reaches it, so the first batch waits for one page of each
//! column, and memory holds pages, not a row group.
//!
//! Only a single local file is read this way; directories, globs and
//! object store URLs go through DataFusion's listing table.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::stream::RecordBatchReceiverStream;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use parquet::file::metadata::{ParquetMetaData, RowGroupMetaData};

/// The parquet file at `path`, read with `schema` (the one DataFusion's
/// listing table infers for it, so types such as string views are the same
/// whichever way the file is read).
///
/// The contract: a scan yields each of the file's rows once, with the
/// projected columns of `schema` in the projection's order: without a
/// limit the row group with the smallest dictionary pages first (see
/// [`cheapest_first`]), the others in file order; with a limit in file
/// order, so it takes the file's first rows. At most the
/// session's batch size a batch, decoded on a thread of its own at most
/// `batches` batches ahead of the reader; a read error ends the stream with
/// that error, naming the file; dropping the stream stops the read. Filters
/// are not pushed down (DataFusion applies them above the scan).
#[derive(Debug)]
pub struct ParquetFile {
    path: PathBuf,
    schema: SchemaRef,
    batches: usize,
}

impl ParquetFile {
    pub fn new(path: &Path, schema: SchemaRef, batches: usize) -> Self {
        ParquetFile {
            path: path.to_path_buf(),
            schema,
            batches: batches.max(1),
        }
    }
}

#[async_trait]
impl TableProvider for ParquetFile {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let projected = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => Arc::clone(&self.schema),
        };
        let pages = Pages {
            scan: Scan {
                path: self.path.clone(),
                file_schema: Arc::clone(&self.schema),
                projected: Arc::clone(&projected),
                projection: projection.cloned(),
                batch_size: state.config().batch_size(),
                limit,
            },
            batches: self.batches,
        };
        Ok(Arc::new(StreamingTableExec::try_new(
            projected,
            vec![Arc::new(pages) as Arc<dyn PartitionStream>],
            None,
            Vec::new(),
            false,
            limit,
        )?))
    }
}

/// One scan of the file, read `batches` batches ahead.
struct Pages {
    scan: Scan,
    batches: usize,
}

impl fmt::Debug for Pages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pages({})", self.scan.path.display())
    }
}

impl PartitionStream for Pages {
    fn schema(&self) -> &SchemaRef {
        &self.scan.projected
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let mut builder =
            RecordBatchReceiverStream::builder(Arc::clone(&self.scan.projected), self.batches);
        let tx = builder.tx();
        let scan = self.scan.clone();
        builder.spawn_blocking(move || {
            let path = scan.path.display().to_string();
            let read = scan.read(|batch| tx.blocking_send(Ok(batch)).is_ok());
            if let Err(e) = read {
                // (the receiver gone: nobody is left to tell)
                let _ = tx.blocking_send(Err(e.context(format!("reading parquet {path}"))));
            }
            Ok(())
        });
        builder.build()
    }
}

/// What a read needs, moved onto its thread.
#[derive(Clone)]
struct Scan {
    /// The file, and its whole schema, which the reader is given.
    path: PathBuf,
    file_schema: SchemaRef,
    projected: SchemaRef,
    projection: Option<Vec<usize>>,
    batch_size: usize,
    limit: Option<usize>,
}

impl Scan {
    /// Decodes the file, handing each batch to `send` until it returns
    /// false (the reader is gone).
    fn read(&self, mut send: impl FnMut(RecordBatch) -> bool) -> Result<()> {
        let file = File::open(&self.path)?;
        let options = ArrowReaderOptions::new().with_schema(Arc::clone(&self.file_schema));
        let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options)?;
        // The reader yields the chosen columns in file order; `order` maps
        // each projected column to its place in that.
        let (mask, order) = match &self.projection {
            None => (ProjectionMask::all(), None),
            Some(p) => {
                let mut sorted = p.clone();
                sorted.sort_unstable();
                sorted.dedup();
                let order: Vec<usize> = p
                    .iter()
                    .map(|c| sorted.binary_search(c).unwrap_or_default())
                    .collect();
                (
                    ProjectionMask::roots(builder.parquet_schema(), sorted),
                    Some(order),
                )
            }
        };
        // Without a limit, the group whose first batch is cheapest comes
        // first; a limit keeps file order, so it takes the file's first rows.
        let groups = match self.limit {
            Some(_) => None,
            None => cheapest_first(builder.metadata(), &mask),
        };
        let mut builder = builder
            .with_projection(mask)
            .with_batch_size(self.batch_size);
        if let Some(groups) = groups {
            builder = builder.with_row_groups(groups);
        }
        if let Some(limit) = self.limit {
            builder = builder.with_limit(limit);
        }
        for batch in builder.build()? {
            let batch = batch?;
            let columns = match &order {
                None => batch.columns().to_vec(),
                Some(order) => order.iter().map(|&k| Arc::clone(batch.column(k))).collect(),
            };
            // The planned schema, field metadata and all; a type the
            // reader could not give is an error here, not later.
            let batch = RecordBatch::try_new_with_options(
                Arc::clone(&self.projected),
                columns,
                &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
            )?;
            if !send(batch) {
                break;
            }
        }
        Ok(())
    }
}

/// The row groups in reading order when one other than the first has the
/// smallest dictionary pages among the chosen columns: that group first,
/// the others in file order. `None` keeps file order.
///
/// Why: a group's first batch decodes every chosen column's dictionary page
/// before it has a row, and the COPY waits for that batch. A writer's last
/// group is usually the short remainder of the file, its dictionaries a
/// fraction of a full group's (in a generated 153,592-row topology file,
/// ~1.2 MB against ~6.3 MB); read first, its rows reach Postgres sooner,
/// and the full group's dictionaries are decoded while Postgres takes them.
fn cheapest_first(metadata: &ParquetMetaData, mask: &ProjectionMask) -> Option<Vec<usize>> {
    let dictionary_bytes = |group: &RowGroupMetaData| -> i64 {
        group
            .columns()
            .iter()
            .enumerate()
            .filter(|(leaf, _)| mask.leaf_included(*leaf))
            .filter_map(|(_, c)| Some(c.data_page_offset() - c.dictionary_page_offset()?))
            .sum()
    };
    let groups = metadata.row_groups();
    // (`min_by_key` keeps the first of equals: a tie keeps file order.)
    let cheapest = (0..groups.len()).min_by_key(|&k| dictionary_bytes(&groups[k]))?;
    if cheapest == 0 {
        return None;
    }
    Some(
        std::iter::once(cheapest)
            .chain((0..groups.len()).filter(|&k| k != cheapest))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::{SessionConfig, SessionContext};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;
    use std::collections::HashMap;

    /// 10,000 rows in row groups of 3,000 (the last one short), pages of
    /// 500 rows, zstd, a tagged field as floe's sources carry.
    fn write_file(path: &Path) {
        let tag = HashMap::from([("floe.snowflake_type".to_string(), "VARCHAR(32)".to_string())]);
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true).with_metadata(tag),
            Field::new("score", DataType::Int64, true),
        ]));
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(3_000))
            .set_data_page_row_count_limit(500)
            .set_write_batch_size(500)
            .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
            .build();
        let file = File::create(path).unwrap();
        let mut writer = ArrowWriter::try_new(file, Arc::clone(&schema), Some(props)).unwrap();
        for k in 0..10 {
            let ids: Vec<i64> = (k * 1000..(k + 1) * 1000).collect();
            let names: Vec<Option<String>> = ids
                .iter()
                .map(|i| (i % 11 != 0).then(|| format!("name {i}")))
                .collect();
            let scores: Vec<Option<i64>> =
                ids.iter().map(|i| (i % 5 != 0).then_some(i * 3)).collect();
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(Int64Array::from(ids)),
                    Arc::new(StringArray::from(names)),
                    Arc::new(Int64Array::from(scores)),
                ],
            )
            .unwrap();
            writer.write(&batch).unwrap();
        }
        writer.close().unwrap();
    }

    async fn query(path: &Path, sql: &str, page_by_page: bool) -> Vec<RecordBatch> {
        let ctx = SessionContext::new_with_config(
            SessionConfig::new()
                .with_target_partitions(1)
                .with_batch_size(700),
        );
        // A file is read page by page; its directory through the listing table.
        let at = match page_by_page {
            true => path.to_string_lossy().to_string(),
            false => path.parent().unwrap().to_string_lossy().to_string(),
        };
        let provider = crate::source::parquet::parquet(&ctx, &at).await.unwrap();
        let any: &dyn std::any::Any = provider.as_ref();
        assert_eq!(any.is::<ParquetFile>(), page_by_page, "{at}");
        ctx.register_table("source", provider).unwrap();
        ctx.sql(sql).await.unwrap().collect().await.unwrap()
    }

    /// Each row printed, sorted: the rows as a multiset.
    fn sorted_rows(batches: &[RecordBatch]) -> Vec<String> {
        let printed = arrow::util::pretty::pretty_format_batches(batches).unwrap();
        let mut rows: Vec<String> = printed
            .to_string()
            .lines()
            .filter(|l| l.starts_with('|'))
            .skip(1)
            .map(str::to_string)
            .collect();
        rows.sort();
        rows
    }

    /// The `id`s a scan yields, in order.
    fn ids(batches: &[RecordBatch]) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                let ids = b.column_by_name("id").unwrap();
                let ids = ids.as_any().downcast_ref::<Int64Array>().unwrap();
                ids.values().to_vec()
            })
            .collect()
    }

    /// A transform reads the same rows with the same types and field tags
    /// whether the file is read page by page or through DataFusion's
    /// listing table: projected out of order, filtered, limited (a limit
    /// takes the same rows: the file's first).
    #[tokio::test]
    async fn a_file_read_page_by_page_reads_as_the_listing_table_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("T.parquet");
        write_file(&path);
        for sql in [
            "SELECT * FROM source",
            "SELECT score, id, name FROM source",
            "SELECT name, id * 2 AS twice FROM source WHERE score IS NOT NULL AND id % 7 <> 3",
            "SELECT id FROM source LIMIT 4321",
            "SELECT count(*) AS n FROM source",
        ] {
            let pages = query(&path, sql, true).await;
            let listed = query(&path, sql, false).await;
            let schema = listed[0].schema();
            assert_eq!(pages[0].schema(), schema, "{sql}");
            assert!(
                pages.iter().map(|b| b.num_rows()).sum::<usize>() > 0,
                "{sql}"
            );
            if sql.contains("LIMIT") {
                let pages = arrow::compute::concat_batches(&schema, &pages).unwrap();
                let listed = arrow::compute::concat_batches(&schema, &listed).unwrap();
                assert_eq!(pages, listed, "{sql}");
            } else {
                assert_eq!(sorted_rows(&pages), sorted_rows(&listed), "{sql}");
            }
        }
        let all = query(&path, "SELECT * FROM source", true).await;
        assert_eq!(all.iter().map(|b| b.num_rows()).sum::<usize>(), 10_000);
        assert!(
            all.iter().all(|b| b.num_rows() <= 700),
            "batches over the batch size"
        );
        assert_eq!(
            all[0].schema().field(1).metadata()["floe.snowflake_type"],
            "VARCHAR(32)"
        );
    }

    /// The short last row group, whose dictionaries are the smallest, is
    /// read first, then the others in file order; a limit reads in file
    /// order; a file of equal groups is read in file order.
    #[tokio::test]
    async fn the_group_with_the_smallest_dictionaries_is_read_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("T.parquet");
        write_file(&path);
        let read = ids(&query(&path, "SELECT id FROM source", true).await);
        let expected: Vec<i64> = (9_000..10_000).chain(0..9_000).collect();
        assert_eq!(read, expected);
        let limited = ids(&query(&path, "SELECT id FROM source LIMIT 1500", true).await);
        assert_eq!(limited, (0..1_500).collect::<Vec<i64>>());

        // Four equal groups: nothing to gain, file order.
        let equal = dir.path().join("E.parquet");
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(2_500))
            .build();
        let mut writer = ArrowWriter::try_new(
            File::create(&equal).unwrap(),
            Arc::clone(&schema),
            Some(props),
        )
        .unwrap();
        let ids_written: Vec<i64> = (0..10_000).collect();
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(ids_written))]).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let read = ids(&query(&equal, "SELECT id FROM source", true).await);
        assert_eq!(read, (0..10_000).collect::<Vec<i64>>());
    }

    /// A file damaged after its footer was read fails the read with an
    /// error naming it, not with fewer rows, whichever column meets the
    /// damage, early or late in the file.
    #[tokio::test]
    async fn a_damaged_page_fails_the_read_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("T.parquet");
        write_file(&path);
        let good = std::fs::read(&path).unwrap();
        let footer =
            parquet::file::reader::SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        let groups = parquet::file::reader::FileReader::metadata(&footer).row_groups();
        let (first, last) = (&groups[0], &groups[groups.len() - 1]);
        for group in [first, last] {
            for column in group.columns() {
                let (start, len) = column.byte_range();
                let ctx = SessionContext::new_with_config(
                    SessionConfig::new()
                        .with_target_partitions(1)
                        .with_batch_size(700),
                );
                std::fs::write(&path, &good).unwrap();
                let provider = crate::source::parquet::parquet(&ctx, &path.to_string_lossy())
                    .await
                    .unwrap();
                // Overwrite the column's first page header (the footer,
                // read above, stays; a damaged payload may decode).
                let mut bytes = good.clone();
                let from = start as usize;
                bytes[from..from + 16.min(len as usize)].fill(0xAB);
                std::fs::write(&path, &bytes).unwrap();
                ctx.register_table("source", provider).unwrap();
                let result = ctx
                    .sql("SELECT * FROM source")
                    .await
                    .unwrap()
                    .collect()
                    .await;
                let column = column.column_path().string();
                let err = result.expect_err(&format!(
                    "a file damaged in {column} must not read as fewer or other rows"
                ));
                assert!(
                    err.to_string()
                        .contains(&format!("reading parquet {}", path.display())),
                    "{column}: {err}"
                );
            }
        }
    }
}
