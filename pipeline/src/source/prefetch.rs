//! A table read ahead of the transform: its scan runs on a task of its own,
//! a bounded number of batches ahead.
//!
//! Why: DataFusion decodes a parquet file inside the stream the transform
//! pulls, one batch at a time, with one partition (see
//! `operators::transform::session_context`). Decoding (zstd, strings) and
//! the geometry functions then take turns on the cores instead of
//! overlapping: on building footprints the transform stage took 14.4 s from
//! parquet against 8.1 s through the emulator, whose chunks are decoded on
//! tasks of their own. Here the inner scan (with its projection, filters and
//! limit) is planned as before and then driven on a spawned task into a
//! channel of `batches` batches, so memory stays bounded and the order of
//! rows is kept.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::stream::RecordBatchReceiverStream;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{
    ExecutionPlan, ExecutionPlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;

/// `inner`, its scans read `batches` batches ahead on a task of their own.
///
/// The contract: the same rows in the same order as `inner`'s scan, the
/// same filter pushdown; an error from the inner stream ends the stream
/// with that error; dropping the stream stops the task.
#[derive(Debug)]
pub struct Prefetched {
    inner: Arc<dyn TableProvider>,
    batches: usize,
}

impl Prefetched {
    pub fn new(inner: Arc<dyn TableProvider>, batches: usize) -> Self {
        Prefetched {
            inner,
            batches: batches.max(1),
        }
    }
}

#[async_trait]
impl TableProvider for Prefetched {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = self.inner.scan(state, projection, filters, limit).await?;
        let schema = plan.schema();
        let partitions = (0..plan.output_partitioning().partition_count())
            .map(|partition| {
                Arc::new(Ahead {
                    schema: Arc::clone(&schema),
                    plan: Arc::clone(&plan),
                    partition,
                    batches: self.batches,
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        Ok(Arc::new(StreamingTableExec::try_new(
            schema,
            partitions,
            None,
            Vec::new(),
            false,
            None,
        )?))
    }
}

/// One partition of the inner plan, run ahead.
struct Ahead {
    schema: SchemaRef,
    plan: Arc<dyn ExecutionPlan>,
    partition: usize,
    batches: usize,
}

impl fmt::Debug for Ahead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Ahead({}, partition {})",
            self.plan.name(),
            self.partition
        )
    }
}

impl PartitionStream for Ahead {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let mut builder =
            RecordBatchReceiverStream::builder(Arc::clone(&self.schema), self.batches);
        let tx = builder.tx();
        let (plan, partition) = (Arc::clone(&self.plan), self.partition);
        builder.spawn(async move {
            let mut stream = match plan.execute(partition, ctx) {
                Ok(s) => s,
                Err(e) => {
                    // (the receiver gone: nobody is left to tell)
                    let _ = tx.send(Err(e)).await;
                    return Ok(());
                }
            };
            while let Some(item) = stream.next().await {
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
            Ok(())
        });
        builder.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    fn batch(schema: &SchemaRef, from: i64, n: i64) -> RecordBatch {
        let ids: Vec<i64> = (from..from + n).collect();
        let names: Vec<String> = ids.iter().map(|i| format!("row {i}")).collect();
        RecordBatch::try_new(
            Arc::clone(schema),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap()
    }

    /// What a query reads through the prefetch is what it reads without.
    #[tokio::test]
    async fn a_query_reads_the_same_rows_in_the_same_order_through_the_prefetch() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
        ]));
        let batches: Vec<RecordBatch> = (0..20).map(|k| batch(&schema, k * 100, 100)).collect();
        let table: Arc<dyn TableProvider> =
            Arc::new(MemTable::try_new(Arc::clone(&schema), vec![batches]).unwrap());
        let query = "SELECT name, id * 2 AS twice FROM t WHERE id % 7 <> 3";
        let read = |provider: Arc<dyn TableProvider>| async move {
            let ctx = SessionContext::new_with_config(
                datafusion::prelude::SessionConfig::new().with_target_partitions(1),
            );
            ctx.register_table("t", provider).unwrap();
            ctx.sql(query).await.unwrap().collect().await.unwrap()
        };
        let direct = read(Arc::clone(&table)).await;
        let ahead = read(Arc::new(Prefetched::new(table, 2))).await;
        let rows = |b: &[RecordBatch]| b.iter().map(|b| b.num_rows()).sum::<usize>();
        // 286 of ids 0..2000 leave 3 when divided by 7.
        assert_eq!(rows(&direct), 2000 - 286);
        assert_eq!(
            arrow::compute::concat_batches(&direct[0].schema(), &direct).unwrap(),
            arrow::compute::concat_batches(&ahead[0].schema(), &ahead).unwrap()
        );
    }

    /// A source that fails after two batches: the query fails with the
    /// source's error, not with fewer rows.
    #[tokio::test]
    async fn an_error_from_the_source_ends_the_read_with_that_error() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
        ]));
        let items = vec![
            Ok(batch(&schema, 0, 10)),
            Ok(batch(&schema, 10, 10)),
            Err(datafusion::error::DataFusionError::Execution(
                "chunk 3 is damaged".into(),
            )),
            Ok(batch(&schema, 20, 10)),
        ];
        let inner =
            super::super::one_shot(Arc::clone(&schema), futures::stream::iter(items).boxed())
                .unwrap();
        let ctx = SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new().with_target_partitions(1),
        );
        ctx.register_table("t", Arc::new(Prefetched::new(inner, 2)))
            .unwrap();
        let result = ctx.sql("SELECT * FROM t").await.unwrap().collect().await;
        let err = result.expect_err("a failed source must not read as fewer rows");
        assert!(err.to_string().contains("chunk 3 is damaged"), "{err}");
    }
}
