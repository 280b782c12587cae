//! One incremental run of a table: read the window since its watermark
//! from Snowflake (the changed rows through the table's own transform, the
//! deleted keys, the count at the window's end), stage them in Postgres,
//! and apply them in one short transaction. Where the window cannot be
//! applied in place the run says why ([`NotApplied::FallBack`]) and the
//! driver does a full refresh instead.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use operators::GeometryOptions;
use schemas::config::Config;

use super::{plan, RunOptions};
use crate::incremental::window::{
    count_sql, deleted_keys_sql, snowflake_clock, source_at, upserted_rows_sql,
};
use crate::incremental::{eligible, fingerprint, Changes, Fallback, Window};
use crate::postgres::apply::{InPlaceApply, NotApplied};
use crate::postgres::state::{SourcePoint, SyncState};
use crate::postgres::Target;
use crate::snapshot::{
    changes, ChangeSet, SnapshotFeed, SnapshotKind, SnapshotSource, SnapshotStatus, SnapshotWriter,
};
use crate::source::snowflake::{SnowflakeError, SnowflakeSession};
use crate::source::{one_shot, SourceError};
use crate::PipelineError;

/// What a committed incremental run did.
#[derive(Debug, Clone)]
pub(super) struct Incremented {
    pub changes: Changes,
    /// Source rows of the changed keys read through the transform.
    pub rows_read: u64,
    pub final_count: u64,
    /// The apply transaction alone, in seconds.
    pub transaction: f64,
    /// The complete change-set snapshot, when one was written.
    pub snapshot: Option<String>,
}

/// The window as read and staged, ready to apply.
struct Staged {
    point: SourcePoint,
    window: Window,
    expected: u64,
    rows_read: u64,
    /// The key columns as the source's rows name them (for the change set).
    keys: Vec<String>,
}

/// Runs table `name` incrementally (see the module doc).
pub(super) async fn run(
    config: &Config,
    name: &str,
    target: &Target,
    options: &RunOptions,
    geometry: &GeometryOptions,
    progress: &AtomicU64,
) -> Result<Incremented, NotApplied> {
    eligible::check_source(config, name)?;
    let t = &config.tables[name];
    let (mut apply, state) =
        InPlaceApply::open(target, &config.load, name, &t.target, &options.run_id).await?;
    let mut writer = None;
    let read = tokio::select! {
        r = read_window(config, name, target, &mut apply, state, options, &mut writer, geometry, progress) => r,
        _ = options.cancel.cancelled() => Err(NotApplied::Failed(PipelineError::Cancelled { table: name.to_string() })),
    };
    let staged = match read {
        Ok(s) => s,
        Err(e) => {
            drop(apply);
            finish_change_set(writer, options, name, Err(&e)).await;
            return Err(e);
        }
    };
    let committed = apply
        .commit(
            staged.expected,
            &staged.point,
            &options.run_id,
            &config.load,
            options.allow_shrink,
        )
        .await;
    let applied = match committed {
        Ok(a) => a,
        Err(e) => {
            finish_change_set(writer, options, name, Err(&e)).await;
            return Err(e);
        }
    };
    let change_set = ChangeSet {
        window_start_ns: staged.window.start_ns,
        window_end_ns: staged.window.end_ns,
        final_count: applied.final_count,
        keys: staged.keys,
    };
    let snapshot = finish_change_set(writer, options, name, Ok(change_set)).await;
    Ok(Incremented {
        changes: Changes {
            inserted: applied.inserted,
            updated: applied.updated,
            deleted: applied.deleted,
            window: staged.window,
        },
        rows_read: staged.rows_read,
        final_count: applied.final_count,
        transaction: applied.transaction.as_secs_f64(),
        snapshot,
    })
}

/// Ends the change-set snapshot: complete with what was applied, or
/// `load_failed` with why not. A window that falls back to a full refresh
/// leaves none (the full refresh snapshots the run under the same name).
/// Returns the complete snapshot's URL.
async fn finish_change_set(
    writer: Option<SnapshotWriter>,
    options: &RunOptions,
    name: &str,
    outcome: Result<ChangeSet, &NotApplied>,
) -> Option<String> {
    let writer = writer?;
    let plan = options.snapshots.as_ref()?;
    let snapshot = plan.location.snapshot(name, &options.run_id);
    let fell_back = matches!(outcome, Err(NotApplied::FallBack(_)));
    let (error, changes) = match outcome {
        Ok(c) => (None, Some(c)),
        Err(NotApplied::FallBack(reason)) => (Some(format!("not applied: {reason}")), None),
        Err(NotApplied::Failed(e)) => (Some(e.to_string()), None),
    };
    match writer.finish_changes(error, changes).await {
        Ok(_) if fell_back => {
            if let Err(e) = plan.location.delete(&snapshot).await {
                tracing::warn!(
                    table = name,
                    "the unapplied change set's snapshot stays: {e}"
                );
            }
            None
        }
        Ok(m) => {
            tracing::info!(table = name, status = ?m.status, rows = m.rows, "change-set snapshot written");
            (m.status == SnapshotStatus::Complete).then(|| snapshot.url())
        }
        Err(e) => {
            tracing::warn!(table = name, "change-set snapshot: {e}");
            None
        }
    }
}

/// Reads the window from Snowflake into the apply's temporary tables, on
/// one Snowflake session logged out however it ends.
#[allow(clippy::too_many_arguments)]
async fn read_window(
    config: &Config,
    name: &str,
    target: &Target,
    apply: &mut InPlaceApply,
    state: Option<SyncState>,
    options: &RunOptions,
    writer: &mut Option<SnapshotWriter>,
    geometry: &GeometryOptions,
    progress: &AtomicU64,
) -> Result<Staged, NotApplied> {
    let Some(state) = state else {
        return Err(NotApplied::FallBack(Fallback::NoWatermark));
    };
    let Some(start_ns) = state.watermark_ns else {
        return Err(NotApplied::FallBack(Fallback::NoWatermark));
    };
    // A kept session (floe watch's) is used and left open; otherwise one
    // for this run, logged out after it.
    let own = match &options.snowflake {
        Some(_) => None,
        None => Some(
            SnowflakeSession::login(&config.snowflake)
                .await
                .map_err(|e| failed(name, e))?,
        ),
    };
    let kept = options.snowflake.as_ref().map(|k| k.0.as_ref());
    let Some(session) = own.as_ref().or(kept) else {
        return Err(failed(name, SourceError::NotConfigured));
    };
    let started = Instant::now();
    let read = Box::pin(read_on(
        session,
        Reading {
            start_ns,
            config,
            name,
            target,
            state: &state,
            options,
            geometry,
            progress,
        },
        apply,
        writer,
    ))
    .await;
    if let Some(own) = own {
        own.logout().await;
    }
    if let Ok(s) = &read {
        tracing::info!(
            table = name,
            rows = s.rows_read,
            seconds = started.elapsed().as_secs_f64(),
            "window read and staged"
        );
    }
    read
}

/// What reading a window needs besides the sessions.
struct Reading<'a> {
    /// The watermark: where the window starts.
    start_ns: i64,
    config: &'a Config,
    name: &'a str,
    target: &'a Target,
    state: &'a SyncState,
    options: &'a RunOptions,
    geometry: &'a GeometryOptions,
    progress: &'a AtomicU64,
}

async fn read_on(
    session: &SnowflakeSession,
    reading: Reading<'_>,
    apply: &mut InPlaceApply,
    writer: &mut Option<SnapshotWriter>,
) -> Result<Staged, NotApplied> {
    let Reading {
        start_ns,
        config,
        name,
        target,
        state,
        options,
        geometry,
        progress,
    } = reading;
    let t = &config.tables[name];
    let changes_from = t.changes_object().ok_or_else(|| {
        NotApplied::Failed(PipelineError::Source {
            table: name.to_string(),
            source: SourceError::NotConfigured,
        })
    })?;
    let (end_ns, change_token) = snowflake_clock(session, Some(changes_from))
        .await
        .map_err(|e| window_error(name, e))?;
    let window = Window { start_ns, end_ns };
    let source = source_at(t.snowflake_table.as_deref(), t.query.as_deref(), &window);

    // The changed rows, through the table's own transform.
    let upserted_sql = upserted_rows_sql(&source, changes_from, &t.primary_key, &window);
    let upserts = session
        .query(&upserted_sql)
        .await
        .map_err(|e| window_error(name, e))?;
    let fingerprint = fingerprint(&upserts.schema);
    if state.fingerprint.as_deref() != Some(fingerprint.as_str()) {
        return Err(NotApplied::FallBack(Fallback::SourceChanged));
    }
    let ctx = plan::context(config, geometry.clone());
    let schema = Arc::clone(&upserts.schema);
    let key_names: Vec<String> = t
        .primary_key
        .iter()
        .map(|k| {
            schema
                .fields()
                .iter()
                .find(|f| f.name().eq_ignore_ascii_case(k))
                .map_or_else(|| k.to_uppercase(), |f| f.name().clone())
        })
        .collect();
    // The change set is snapshotted as it is read: the upserted rows now,
    // the deleted keys below, one writer.
    let feed = options.snapshots.as_ref().map(|plan| {
        let set_schema = changes::schema(&upserts.schema);
        let w = SnapshotWriter::start_kind(
            plan.location.snapshot(name, &options.run_id),
            name,
            &options.run_id,
            SnapshotSource::Snowflake {
                query: upserted_sql.clone(),
                query_id: Some(upserts.query_id.clone()),
                account: config.snowflake.account.clone(),
                database: config.snowflake.database.clone(),
                schema: config.snowflake.schema.clone(),
                watermark_ns: Some(end_ns),
                fingerprint: Some(fingerprint.clone()),
                change_token: change_token.clone(),
            },
            Arc::clone(&set_schema),
            plan.options,
            SnapshotKind::Changes,
        );
        let feed = (w.feed(), set_schema);
        *writer = Some(w);
        feed
    });
    let rows = fed(
        datafusion_stream(session, upserts),
        feed.clone(),
        changes::upserted,
    );
    let provider = one_shot(schema, rows).map_err(|e| failed(name, SourceError::DataFusion(e)))?;
    let planned = plan::plan_table(config, name, &target.schema, &ctx, provider).await?;
    eligible::check(config, name, planned.df.logical_plan())?;
    apply.stage(planned.plan.clone()).await?;
    let stream = planned
        .df
        .execute_stream()
        .await
        .map_err(|e| PipelineError::transform(name, e))?;
    let rows_read = apply
        .copy_upserts(stream, planned.encoder, &config.load, progress)
        .await?;

    // The deleted keys, straight from the change data into COPY.
    let deleted = session
        .query(&deleted_keys_sql(changes_from, &t.primary_key, &window))
        .await
        .map_err(|e| window_error(name, e))?;
    let schema = Arc::clone(&deleted.schema);
    let keys: SendableRecordBatchStream = Box::pin(RecordBatchStreamAdapter::new(
        schema,
        fed(
            datafusion_stream(session, deleted),
            feed.clone(),
            changes::deleted,
        ),
    ));
    apply.copy_deleted(keys, &config.load).await?;
    if let Some((feed, _)) = &feed {
        feed.end().await;
    }

    let expected = count(session, &count_sql(&source))
        .await
        .map_err(|e| window_error(name, e))?;
    apply.check_keys().await?;
    Ok(Staged {
        point: SourcePoint {
            watermark_ns: end_ns,
            fingerprint,
            change_token,
        },
        window,
        expected,
        rows_read,
        keys: key_names,
    })
}

/// `stream`, each batch also sent (converted by `convert`) to the change
/// set's snapshot when there is one.
fn fed(
    stream: BoxStream<'static, Result<RecordBatch, DataFusionError>>,
    feed: Option<(SnapshotFeed, SchemaRef)>,
    convert: fn(&RecordBatch, &SchemaRef) -> Result<RecordBatch, arrow::error::ArrowError>,
) -> BoxStream<'static, Result<RecordBatch, DataFusionError>> {
    let Some((feed, schema)) = feed else {
        return stream;
    };
    stream
        .then(move |item| {
            let (feed, schema) = (feed.clone(), Arc::clone(&schema));
            async move {
                let batch = item?;
                let row = convert(&batch, &schema)?;
                feed.batch(row).await;
                Ok(batch)
            }
        })
        .boxed()
}

/// A result's batches as DataFusion reads a stream.
fn datafusion_stream(
    session: &SnowflakeSession,
    result: crate::source::snowflake::QueryResult,
) -> futures::stream::BoxStream<'static, Result<arrow::record_batch::RecordBatch, DataFusionError>>
{
    session
        .stream(result)
        .map_err(|e| DataFusionError::External(Box::new(e)))
        .boxed()
}

/// `SELECT COUNT(*)`'s one value.
async fn count(session: &SnowflakeSession, sql: &str) -> Result<u64, SnowflakeError> {
    let result = session.query(sql).await?;
    let batches: Vec<_> = session.stream(result).try_collect().await?;
    let column = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .map(|b| Arc::clone(b.column(0)))
        .ok_or_else(|| SnowflakeError::Decode("COUNT(*) returned no row".into()))?;
    let n = arrow::compute::cast(&column, &arrow::datatypes::DataType::Int64)
        .map_err(|e| SnowflakeError::Decode(format!("COUNT(*): {e}")))?;
    let n = n.as_primitive::<Int64Type>();
    u64::try_from(n.value(0)).map_err(|_| SnowflakeError::Decode("negative COUNT(*)".into()))
}

fn failed(name: &str, e: impl Into<SourceError>) -> NotApplied {
    NotApplied::Failed(PipelineError::Source {
        table: name.to_string(),
        source: e.into(),
    })
}

/// Snowflake's two "this window cannot be read" errors are fallbacks;
/// anything else fails the run.
fn window_error(name: &str, e: SnowflakeError) -> NotApplied {
    if let SnowflakeError::Query { code, .. } = &e {
        if let Some(reason) = Fallback::from_snowflake_code(code) {
            tracing::info!(table = name, %reason, "{e}");
            return NotApplied::FallBack(reason);
        }
    }
    failed(name, e)
}
