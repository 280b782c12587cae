//! The ceiling `floe bench` compares floe with: Postgres ingesting the
//! exact bytes floe's encoder produces, already in memory, then the same
//! index build and swap floe does. Nothing floe does before COPY (reading,
//! transforming, encoding) is in it, so floe's throughput divided by the
//! ceiling's says how close to Postgres's own limit a run gets.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use schemas::config::Config;

use crate::postgres::copy::CopyIn;
use crate::postgres::encode::{CopyEncoder, COPY_HEADER, COPY_TRAILER};
use crate::postgres::refresh::{self, TablePlan};
use crate::postgres::{application_name, Target};
use crate::run::plan::{self, Planned};
use crate::run::Cancel;
use crate::source::{Connected, TableSource};
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
/// as `floe run --parquet <dir>` plans it, with the encoder for its output.
async fn planned(
    config: &Config,
    name: &str,
    schema: &str,
    dir: &std::path::Path,
) -> Result<Planned, PipelineError> {
    let ctx = plan::context(config, operators::GeometryOptions::default());
    let source = TableSource::resolve(&config.tables[name], None, Some(dir));
    let opened = source
        .open(name, config, &ctx, &Cancel::default(), Connected::none())
        .await?;
    let provider = opened.data.into_provider(name)?;
    plan::plan_table(config, name, schema, &ctx, provider).await
}

/// The table's transformed batches (as the encoder receives them) and its
/// encoder, for the criterion benches.
pub async fn transformed(
    config: &Config,
    name: &str,
    dir: &std::path::Path,
) -> Result<(Vec<arrow::record_batch::RecordBatch>, CopyEncoder), PipelineError> {
    let Planned { df, encoder, .. } = planned(config, name, "public", dir).await?;
    let batches = df
        .collect()
        .await
        .map_err(|e| PipelineError::transform(name, e))?;
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
    let Planned {
        df,
        plan,
        mut encoder,
    } = planned(config, name, &target.schema, dir).await?;
    let transform_err = |e| PipelineError::transform(name, e);
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
    /// Its sessions, PostGIS loads and staging table, made before its
    /// clock starts (a floe run pays its own inside its time): not in `total`.
    pub setup: f64,
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
    let setup_started = Instant::now();
    let session = target
        .connect(
            &application_name(&[&plan.target, run_id, "ceiling"]),
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
                    &application_name(&[&plan.target, run_id, &format!("ceiling{k}")]),
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
    // PostGIS loaded in the helper before the clock, as floe's is during its COPY.
    refresh::load_postgis(&helper.client, &plan.table, &plan.schema, &plan.target).await?;
    let staging = refresh::prepare(client, plan, run_id).await?.name;
    let setup = setup_started.elapsed().as_secs_f64();
    let result = async {
        let started = Instant::now();
        // As many COPY streams as floe runs, batches dealt out in turn.
        let streams = clients.len();
        // One stream writes frozen rows, as floe's does.
        let frozen = streams == 1;
        let copies = clients.iter().enumerate().map(|(k, client)| {
            let sql = plan.copy_sql(&staging, frozen);
            let begin = plan.frozen_copy_begin(&staging);
            async move {
                if frozen {
                    client
                        .batch_execute(&begin)
                        .await
                        .map_err(|e| PipelineError::postgres(&plan.table, "starting COPY", e))?;
                }
                let mut copy = CopyIn::start(client, &sql, &plan.table).await?;
                for chunk in encoded.chunks.iter().skip(k).step_by(streams) {
                    copy.feed(chunk.clone()).await?;
                }
                let n = copy.finish().await?;
                if frozen {
                    client
                        .batch_execute("COMMIT")
                        .await
                        .map_err(|e| PipelineError::postgres(&plan.table, "COPY", e))?;
                }
                Ok::<_, PipelineError>(n)
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
        // The same catalog reads and carried work as a refresh.
        let mut carried = refresh::read_carried(client, plan, &staging).await?;
        let ((), built) = refresh::build(
            client,
            &helper.client,
            plan,
            &staging,
            &mut carried,
            async {},
        )
        .await?;
        let index_build = built.index_build.as_secs_f64();
        let swapped = Instant::now();
        refresh::swap(
            &session,
            plan,
            &staging,
            &carried,
            &[],
            &crate::run::Cancel::default(),
        )
        .await?;
        Ok(CeilingRun {
            setup,
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
    result
}
