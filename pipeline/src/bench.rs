//! The ceiling `floe bench` compares floe with: Postgres ingesting the
//! exact bytes floe's encoder produces, already in memory, then the same
//! index build and swap floe does. Nothing floe does before COPY (reading,
//! transforming, encoding) is in it, so floe's throughput divided by the
//! ceiling's says how close to Postgres's own limit a run gets.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use operators::TransformOptions;
use schemas::config::Config;

use crate::postgres::encode::{CopyEncoder, COPY_HEADER, COPY_TRAILER};
use crate::postgres::refresh::{self, TablePlan};
use crate::postgres::Target;
use crate::PipelineError;

/// A table's COPY data, encoded once and kept in memory.
pub struct Encoded {
    pub plan: TablePlan,
    /// Binary COPY tuples, one piece per encoded batch (no header or trailer).
    pub chunks: Vec<Bytes>,
    pub rows: u64,
    pub bytes: u64,
}

/// The table's transform over `<dir>/<SNOWFLAKE_TABLE>.parquet`, planned
/// as `floe run` plans it, with the encoder for its output.
async fn planned(
    config: &Config,
    name: &str,
    schema: &str,
    dir: &std::path::Path,
) -> Result<(datafusion::dataframe::DataFrame, TablePlan, CopyEncoder), PipelineError> {
    let t = &config.tables[name];
    let source_err = |message: String| PipelineError::Source {
        table: name.to_string(),
        message,
    };
    let transform_err = |message: String| PipelineError::Transform {
        table: name.to_string(),
        message,
    };
    let sf = t.snowflake_table.as_deref().ok_or_else(|| {
        source_err("the table has no snowflake_table to name its parquet file".into())
    })?;
    let ctx = operators::session_context(&TransformOptions {
        batch_size: config.load.batch_size,
        geometry: operators::GeometryOptions::default(),
    });
    let path = dir.join(format!("{sf}.parquet"));
    let provider = crate::source::parquet(&ctx, &path.to_string_lossy())
        .await
        .map_err(source_err)?;
    operators::register_source(&ctx, provider).map_err(|e| transform_err(e.to_string()))?;
    let df = ctx
        .sql(t.transform_sql())
        .await
        .map_err(|e| transform_err(e.to_string()))?;
    let arrow_schema = Arc::new(df.schema().as_arrow().clone());
    let columns = crate::run::plan_columns(config, name, t, &arrow_schema)?;
    let plan = TablePlan {
        table: name.to_string(),
        schema: schema.to_string(),
        target: t.target.clone(),
        columns: columns.clone(),
        primary_key: t.primary_key.clone(),
        indexes: t.indexes.clone(),
        lock_timeout: config.load.lock_timeout,
    };
    let encoder = CopyEncoder::new(&t.target, &arrow_schema, columns, &t.primary_key)?;
    Ok((df, plan, encoder))
}

/// The table's transformed batches (as the encoder receives them) and its
/// encoder, for the criterion benches.
pub async fn transformed(
    config: &Config,
    name: &str,
    dir: &std::path::Path,
) -> Result<(Vec<arrow::record_batch::RecordBatch>, CopyEncoder), PipelineError> {
    let (df, _, encoder) = planned(config, name, "public", dir).await?;
    let batches = df.collect().await.map_err(|e| PipelineError::Transform {
        table: name.to_string(),
        message: e.to_string(),
    })?;
    Ok((batches, encoder))
}

/// Reads `<dir>/<SNOWFLAKE_TABLE>.parquet`, runs the table's transform and
/// encodes every row as `floe run` would, into memory.
pub async fn encode_table(
    config: &Config,
    name: &str,
    target: &Target,
    dir: &std::path::Path,
) -> Result<Encoded, PipelineError> {
    let (df, plan, mut encoder) = planned(config, name, &target.schema, dir).await?;
    let transform_err = |e: datafusion::error::DataFusionError| PipelineError::Transform {
        table: name.to_string(),
        message: e.to_string(),
    };
    let mut stream = df.execute_stream().await.map_err(transform_err)?;
    let mut chunks = Vec::new();
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(transform_err)?;
        let mut buf = BytesMut::new();
        encoder.encode(&batch, &mut buf)?;
        rows += batch.num_rows() as u64;
        chunks.push(buf.freeze());
    }
    let bytes = (COPY_HEADER.len() + COPY_TRAILER.len()) as u64
        + chunks.iter().map(|c| c.len() as u64).sum::<u64>();
    Ok(Encoded {
        plan,
        chunks,
        rows,
        bytes,
    })
}

/// One ceiling run's times, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct CeilingRun {
    pub copy: f64,
    pub index_build: f64,
    pub swap: f64,
    pub total: f64,
}

/// COPYs the pre-encoded bytes into a fresh staging table, then builds its
/// indexes and swaps it in: floe's refresh minus everything before COPY.
pub async fn ceiling(
    config: &Config,
    target: &Target,
    encoded: &Encoded,
    run_id: &str,
) -> Result<CeilingRun, PipelineError> {
    let plan = &encoded.plan;
    let session = target
        .connect(
            &format!("floe/{}/{run_id}/ceiling", plan.target),
            &config.load,
        )
        .await?;
    let client = &session.client;
    // floe's further COPY sessions; the last (or one more) also builds
    // indexes beside the first, as floe's verification session does.
    let mut others = Vec::new();
    for k in 1..config.load.copy_streams.max(2) {
        others.push(
            target
                .connect(
                    &format!("floe/{}/{run_id}/ceiling{k}", plan.target),
                    &config.load,
                )
                .await?,
        );
    }
    let clients: Vec<&tokio_postgres::Client> = std::iter::once(client.as_ref())
        .chain(others.iter().map(|s| s.client.as_ref()))
        .take(config.load.copy_streams)
        .collect();
    let helper = &others[others.len() - 1];
    let staging = refresh::prepare(client, plan, run_id).await?;
    let result = async {
        let started = Instant::now();
        // As many COPY streams as floe runs, batches dealt out in turn.
        let streams = clients.len();
        let copies = clients.iter().enumerate().map(|(k, client)| {
            let sql = plan.copy_sql(&staging);
            async move {
                let to_err = |step, e| PipelineError::postgres(&plan.table, step, e);
                let sink = client
                    .copy_in::<_, Bytes>(&sql)
                    .await
                    .map_err(|e| to_err("starting COPY", e))?;
                let mut sink = Box::pin(sink);
                let mine = encoded.chunks.iter().skip(k).step_by(streams).cloned();
                let framed = std::iter::once(Bytes::from_static(COPY_HEADER))
                    .chain(mine)
                    .chain(std::iter::once(Bytes::from_static(COPY_TRAILER)));
                for chunk in framed {
                    sink.feed(chunk).await.map_err(|e| to_err("COPY", e))?;
                }
                sink.as_mut()
                    .finish()
                    .await
                    .map_err(|e| to_err("completing COPY", e))
            }
        });
        let copied: u64 = futures::future::try_join_all(copies)
            .await?
            .into_iter()
            .sum();
        let copy = started.elapsed().as_secs_f64();
        if copied != encoded.rows {
            return Err(PipelineError::CountMismatch {
                table: plan.table.clone(),
                read: encoded.rows,
                staged: copied,
            });
        }
        let ((), built) = refresh::build(client, &helper.client, plan, &staging, async {}).await?;
        let index_build = built.index_build.as_secs_f64();
        let swapped = Instant::now();
        refresh::swap(client, plan, &staging).await?;
        Ok(CeilingRun {
            copy,
            index_build,
            swap: swapped.elapsed().as_secs_f64(),
            total: started.elapsed().as_secs_f64(),
        })
    }
    .await;
    if result.is_err() {
        refresh::discard(client, plan, &staging).await;
    }
    refresh::release(client, plan).await;
    result
}
