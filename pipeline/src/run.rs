//! Running one table end to end: source → transform → encoder → COPY into
//! staging → verify → swap, reporting what happened.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::{Bytes, BytesMut};
use datafusion::error::DataFusionError;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::stream::BoxStream;
use futures::{SinkExt, StreamExt, TryStreamExt};
use operators::{GeometryError, GeometryOptions, TransformOptions};
use schemas::config::{Config, SourceSpec, TableConfig};
use schemas::pg::{PgColumn, PgType};
use schemas::SchemaError;
use serde::Serialize;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_postgres::Client;

use crate::postgres::checksum::RowChecksum;
use crate::postgres::encode::{CopyEncoder, COPY_HEADER, COPY_TRAILER};
use crate::postgres::refresh::{self, TablePlan};
use crate::postgres::{runs, Target};
use crate::snapshot::{SnapshotSource, SnapshotWriter};
use crate::snowflake::QueryTicket;
use crate::PipelineError;

/// Per-run choices that are not in the config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Identifies this run in staging names and `application_name`.
    pub run_id: String,
    /// Read `<dir>/<SNOWFLAKE_TABLE>.parquet` instead of each table's configured source.
    pub parquet_dir: Option<PathBuf>,
    /// Fires when the run must stop (Ctrl-C): the load rolls back and a
    /// running Snowflake query is aborted on the server.
    pub cancel: Cancel,
    /// Let a refresh shrink the table past `load.max_shrink` (or empty it).
    pub allow_shrink: bool,
    /// Where to snapshot what each table's source returns; `None`: no snapshot.
    pub snapshots: Option<SnapshotPlan>,
    /// Replay this (verified) snapshot instead of reading the table's source.
    pub replay: Option<crate::snapshot::Verified>,
}

/// A cancellation signal shared by a run's tasks.
#[derive(Debug, Clone)]
pub struct Cancel(watch::Receiver<bool>);

/// The side that cancels.
#[derive(Debug)]
pub struct Canceller(watch::Sender<bool>);

impl Canceller {
    pub fn cancel(&self) {
        let _ = self.0.send(true);
    }
}

impl Cancel {
    pub fn new() -> (Canceller, Cancel) {
        let (tx, rx) = watch::channel(false);
        (Canceller(tx), Cancel(rx))
    }

    pub fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once cancelled; never, if the canceller is gone without cancelling.
    pub async fn cancelled(&self) {
        let mut rx = self.0.clone();
        loop {
            if *rx.borrow_and_update() {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Default for Cancel {
    /// A signal that never fires.
    fn default() -> Self {
        Cancel(watch::channel(false).1)
    }
}

/// What happened to one table, in the shape the incumbent procedure returned.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// `success`, `failed` or `cancelled`.
    pub status: &'static str,
    /// The Postgres table.
    pub table: String,
    /// The config's name for it.
    pub name: String,
    pub rows_synced: u64,
    /// Rows in the target after the run (on failure: what the untouched target holds, if known).
    pub final_count: Option<u64>,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Geometries set to NULL under `on_invalid_geometry = "null"`.
    #[serde(skip_serializing_if = "is_zero")]
    pub invalid_geometries: u64,
    /// Where the complete snapshot of what was read went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Where the time went (a successful run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stages: Option<Stages>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A sortable, unique-enough run id: `20261124T023301Z-3f9a`.
pub fn new_run_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let tag = (now.subsec_nanos() ^ std::process::id().rotate_left(16)) & 0xffff;
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z-{tag:04x}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Loads one table and reports, never panicking on bad input.
pub async fn run_table(
    config: &Config,
    name: &str,
    target: &Target,
    options: &RunOptions,
    progress: &AtomicU64,
) -> TableReport {
    let started = Instant::now();
    let table_cfg = &config.tables[name];
    let geometry = GeometryOptions {
        on_invalid: table_cfg.on_invalid_geometry,
        ..Default::default()
    };
    let target_name = format!("{}.{}", target.schema, table_cfg.target);
    let book = record_start(config, name, target, options, &target_name).await;
    let result = load_table(config, name, target, options, &geometry, progress).await;
    let invalid_geometries = geometry.invalid_count.load(Ordering::Relaxed);
    if invalid_geometries > 0 {
        tracing::warn!(
            table = name,
            invalid_geometries,
            "invalid geometries were written as NULL"
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    let report = match &result {
        Ok(loaded) => TableReport {
            status: "success",
            table: table_cfg.target.clone(),
            name: name.to_string(),
            rows_synced: loaded.rows,
            final_count: Some(loaded.final_count),
            seconds,
            error: None,
            invalid_geometries,
            snapshot: loaded.snapshot.clone(),
            stages: Some(loaded.stages.clone()),
        },
        Err(e) => {
            let final_count = current_count(config, table_cfg, target, options).await;
            TableReport {
                status: if matches!(e, PipelineError::Cancelled { .. }) {
                    "cancelled"
                } else {
                    "failed"
                },
                table: table_cfg.target.clone(),
                name: name.to_string(),
                rows_synced: 0,
                final_count,
                seconds,
                error: Some(e.to_string()),
                invalid_geometries,
                snapshot: None,
                stages: None,
            }
        }
    };
    if let Some(book) = book {
        let loaded = result.as_ref().ok();
        let outcome = runs::Outcome {
            status: report.status,
            source: loaded.and_then(|l| l.source.as_deref()),
            rows_read: loaded.map(|l| l.rows),
            rows_written: loaded.map(|l| l.final_count),
            final_count: report.final_count,
            checksum: loaded.and_then(|l| l.checksum.as_deref()),
            error: report.error.as_deref(),
        };
        let mut recorded = runs::finish(&book.client, &options.run_id, name, &outcome).await;
        if recorded.is_err() {
            // The bookkeeping connection may have died with the failure
            // (a restarted server): record on a fresh one.
            if let Ok(session) = target
                .connect(
                    &format!("floe/{}/{}/record", table_cfg.target, options.run_id),
                    &config.load,
                )
                .await
            {
                recorded = runs::finish(&session.client, &options.run_id, name, &outcome).await;
            }
        }
        if let Err(e) = recorded {
            tracing::warn!(table = name, "cannot record the run in floe.sync_runs: {e}");
        }
    }
    report
}

/// Opens the bookkeeping session and records the run as `running`; a
/// target that cannot take the record only costs a warning (the load
/// itself will report why it cannot connect).
async fn record_start(
    config: &Config,
    name: &str,
    target: &Target,
    options: &RunOptions,
    target_name: &str,
) -> Option<crate::postgres::Session> {
    let t = &config.tables[name];
    let source = match (&options.replay, &options.parquet_dir, t.source()) {
        (Some(v), _, _) => format!("snapshot {}", v.snapshot.url()),
        (None, Some(dir), _) => format!("parquet {}", dir.display()),
        (None, None, Some(SourceSpec::Parquet(path))) => format!("parquet {path}"),
        (None, None, Some(SourceSpec::Flight(url))) => format!("flight {url}"),
        (None, None, Some(SourceSpec::Snowflake { query, .. })) => format!("snowflake: {query}"),
        (None, None, None) => String::new(),
    };
    let mode = if options.replay.is_some() {
        "replay"
    } else {
        "full"
    };
    let session = target
        .connect(
            &format!("floe/{}/{}/record", t.target, options.run_id),
            &config.load,
        )
        .await
        .ok()?;
    let recorded = async {
        runs::ensure(&session.client).await?;
        runs::start(
            &session.client,
            &options.run_id,
            name,
            target_name,
            mode,
            &source,
        )
        .await
    }
    .await;
    match recorded {
        Ok(()) => Some(session),
        Err(e) => {
            tracing::warn!(table = name, "cannot record the run in floe.sync_runs: {e}");
            None
        }
    }
}

/// Rows in the target as it stands (after a failure: the untouched old table).
async fn current_count(
    config: &Config,
    t: &TableConfig,
    target: &Target,
    options: &RunOptions,
) -> Option<u64> {
    let session = target
        .connect(
            &format!("floe/{}/{}/count", t.target, options.run_id),
            &config.load,
        )
        .await
        .ok()?;
    let q = schemas::pg::quote_qualified(&target.schema, &t.target);
    let exists: bool = session
        .client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&q])
        .await
        .ok()?
        .get(0);
    if !exists {
        return Some(0);
    }
    let n: i64 = session
        .client
        .query_one(&format!("SELECT count(*) FROM {q}"), &[])
        .await
        .ok()?
        .get(0);
    Some(n as u64)
}

struct Loaded {
    rows: u64,
    final_count: u64,
    /// Where the rows came from, once known (the Snowflake query id).
    source: Option<String>,
    /// The verified content checksum (see `postgres::checksum`), unless turned off.
    checksum: Option<String>,
    /// The complete snapshot of what was read, when one was written.
    snapshot: Option<String>,
    stages: Stages,
}

/// Plans the transform and the Postgres columns, then runs the refresh.
async fn load_table(
    config: &Config,
    name: &str,
    target: &Target,
    options: &RunOptions,
    geometry: &GeometryOptions,
    progress: &AtomicU64,
) -> Result<Loaded, PipelineError> {
    let t = &config.tables[name];
    let ctx = operators::session_context(&TransformOptions {
        batch_size: config.load.batch_size,
        geometry: geometry.clone(),
    });
    let source_err = |message: String| PipelineError::Source {
        table: name.to_string(),
        message,
    };
    let mut snowflake_session = None;
    let mut source_id = None;
    let clock = Arc::new(StageClock::default());
    let cancelled = || PipelineError::Cancelled {
        table: name.to_string(),
    };
    // The source, as a table provider or a stream of its batches (and, for
    // the snapshot, a description of where it came from).
    let opening = Instant::now();
    let (opened, described) = match (&options.replay, &options.parquet_dir, t.source()) {
        (Some(verified), _, _) => {
            source_id = Some(format!("snapshot {}", verified.snapshot.url()));
            let stream = crate::snapshot::read_batches(verified, config.load.batch_size)
                .map_err(|e| DataFusionError::External(Box::new(e)))
                .boxed();
            (Opened::Stream(Arc::clone(&verified.schema), stream), None)
        }
        (None, Some(dir), _) => {
            let sf = t.snowflake_table.as_deref().ok_or_else(|| {
                source_err("--parquet needs the table's snowflake_table to name <DIR>/<SNOWFLAKE_TABLE>.parquet".into())
            })?;
            let path = dir.join(format!("{sf}.parquet"));
            let path = path.to_string_lossy().to_string();
            let provider = crate::source::parquet(&ctx, &path)
                .await
                .map_err(source_err)?;
            (
                Opened::Provider(provider),
                Some(SnapshotSource::Parquet { path }),
            )
        }
        (None, None, Some(SourceSpec::Parquet(path))) => {
            let provider = crate::source::parquet(&ctx, &path)
                .await
                .map_err(source_err)?;
            (
                Opened::Provider(provider),
                Some(SnapshotSource::Parquet { path }),
            )
        }
        (None, None, Some(SourceSpec::Flight(url))) => {
            let (schema, stream) = crate::flight::read(&url)
                .await
                .map_err(|e| source_err(e.to_string()))?;
            source_id = Some(format!("flight {url}"));
            let stream = stream
                .map_err(|e| DataFusionError::External(Box::new(e)))
                .boxed();
            (
                Opened::Stream(schema, stream),
                Some(SnapshotSource::Flight { url }),
            )
        }
        (None, None, Some(SourceSpec::Snowflake { query, .. })) => {
            let session = crate::snowflake::SnowflakeSession::login(&config.snowflake)
                .await
                .map_err(|e| source_err(e.to_string()))?;
            let ticket = QueryTicket::new(&query);
            let result = tokio::select! {
                r = session.query_ticket(&ticket) => r.map_err(|e| source_err(e.to_string())),
                _ = options.cancel.cancelled() => Err(cancelled()),
            };
            let result = match result {
                Ok(r) => r,
                Err(e) => {
                    session.abort(&ticket).await;
                    session.logout().await;
                    return Err(e);
                }
            };
            tracing::info!(table = name, query_id = %result.query_id, rows = result.total, "Snowflake query done");
            source_id = Some(format!("snowflake query {}", result.query_id));
            let described = SnapshotSource::Snowflake {
                query: query.clone(),
                query_id: Some(result.query_id.clone()),
                account: config.snowflake.account.clone(),
                database: config.snowflake.database.clone(),
                schema: config.snowflake.schema.clone(),
            };
            let schema = Arc::clone(&result.schema);
            let stream = session
                .stream(result)
                .map_err(|e| DataFusionError::External(Box::new(e)))
                .boxed();
            snowflake_session = Some((session, ticket));
            (Opened::Stream(schema, stream), Some(described))
        }
        (None, None, None) => return Err(source_err("no source configured".into())),
    };
    let source_open = opening.elapsed().as_secs_f64();
    // What the run reads is snapshotted on its way to the transform (a
    // replay reads a snapshot, so it writes none).
    let writer = match (&options.snapshots, described) {
        (Some(snapshots), Some(described)) => Some((snapshots, described)),
        _ => None,
    };
    let (provider, writer) = match (opened, writer) {
        (Opened::Provider(p), None) => (p, None),
        (opened, writer) => {
            let (schema, stream) = match opened {
                Opened::Stream(schema, stream) => (schema, stream),
                Opened::Provider(p) => {
                    let schema = p.schema();
                    let stream = ctx
                        .read_table(p)
                        .map_err(|e| source_err(e.to_string()))?
                        .execute_stream()
                        .await
                        .map_err(|e| source_err(e.to_string()))?;
                    (schema, stream.boxed())
                }
            };
            clock.timed_source.store(true, Ordering::Relaxed);
            let stream = timed(stream, Arc::clone(&clock), |c| &c.source);
            let (stream, writer) = match writer {
                Some((snapshots, described)) => {
                    let writer = SnapshotWriter::start(
                        snapshots.location.snapshot(name, &options.run_id),
                        name,
                        &options.run_id,
                        described,
                        Arc::clone(&schema),
                        snapshots.options,
                    );
                    clock.snapshotting.store(true, Ordering::Relaxed);
                    let teed = writer.tee(stream).into_stream().boxed();
                    (timed(teed, Arc::clone(&clock), |c| &c.tee), Some(writer))
                }
                None => (stream, None),
            };
            let provider = crate::source::one_shot(schema, stream).map_err(source_err)?;
            (provider, writer)
        }
    };
    // Everything after the source is opened runs in here, so the Snowflake
    // session below is aborted and logged out however it ends.
    let result = async {
        operators::register_source(&ctx, provider).map_err(|e| PipelineError::Transform {
            table: name.to_string(),
            message: e.to_string(),
        })?;
        let df = ctx
            .sql(t.transform_sql())
            .await
            .map_err(|e| PipelineError::Transform {
                table: name.to_string(),
                message: e.to_string(),
            })?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let columns = plan_columns(config, name, t, &schema)?;
        let plan = TablePlan {
            table: name.to_string(),
            schema: target.schema.clone(),
            target: t.target.clone(),
            columns: columns.clone(),
            primary_key: t.primary_key.clone(),
            indexes: t.indexes.clone(),
            lock_timeout: config.load.lock_timeout,
        };
        let encoder = CopyEncoder::new(&t.target, &schema, columns, &t.primary_key)?;

        let session = target
            .connect(
                &format!("floe/{}/{}", t.target, options.run_id),
                &config.load,
            )
            .await?;
        let client = Arc::clone(&session.client);
        let staging = refresh::prepare(&client, &plan, &options.run_id).await?;

        // Holding the table's lock: a `running` record of another run is a dead run's.
        let target_name = format!("{}.{}", target.schema, t.target);
        match runs::mark_abandoned(&client, &target_name, &options.run_id).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                table = name,
                runs = n,
                "marked earlier runs that never finished as abandoned"
            ),
            Err(e) => tracing::debug!(table = name, "sync_runs not updated: {e}"),
        }
        let load = async {
            let checksum = match config.load.verify_checksum {
                true => match refresh::staged_columns(&client, &plan, &staging).await? {
                    Some(columns) => Some(RowChecksum::new(&columns)),
                    None => {
                        tracing::warn!(
                            table = name,
                            "verifying the row count only: the content checksum needs PostgreSQL 14 or newer"
                        );
                        None
                    }
                },
                false => None,
            };
            let stream = df
                .execute_stream()
                .await
                .map_err(|e| PipelineError::Transform {
                    table: name.to_string(),
                    message: e.to_string(),
                })?;
            // Further COPY streams, each a session of its own into the same staging table.
            let mut streams = Vec::with_capacity(config.load.copy_streams.saturating_sub(1));
            for k in 1..config.load.copy_streams {
                streams.push(
                    target
                        .connect(
                            &format!("floe/{}/{}/copy{k}", t.target, options.run_id),
                            &config.load,
                        )
                        .await?,
                );
            }
            let clients: Vec<Arc<Client>> = std::iter::once(Arc::clone(&client))
                .chain(streams.iter().map(|s| Arc::clone(&s.client)))
                .collect();
            let (rows, sum, streamed) = copy_stream(
                &clients,
                &plan,
                &staging,
                stream,
                Encoding { encoder, checksum },
                config.load.max_in_flight_bytes,
                progress,
            )
            .await?;
            drop(streams);
            // A second session builds part of the indexes and then verifies
            // the staged rows, beside the first's (longer) index build.
            let helper = target
                .connect(
                    &format!("floe/{}/{}/verify", t.target, options.run_id),
                    &config.load,
                )
                .await?;
            // It also counts the live table for the shrink guard, off the critical path.
            let beside = async {
                let verified =
                    refresh::verify(&helper.client, &plan, &staging, rows, sum.as_deref()).await;
                let live = match options.allow_shrink {
                    true => Ok(None),
                    false => refresh::current_count(&helper.client, &plan).await,
                };
                (verified, live)
            };
            let ((verified, live), times) =
                refresh::build(&client, &helper.client, &plan, &staging, beside).await?;
            tracing::info!(
                table = name,
                index_build = ?times.index_build,
                verify = ?times.beside,
                "indexes built; staged rows verified"
            );
            drop(helper);
            let final_count = verified?;
            if options.cancel.is_cancelled() {
                return Err(cancelled());
            }
            shrink_guard(&plan, live?, final_count, config.load.max_shrink)?;
            let swap_started = Instant::now();
            refresh::swap(&client, &plan, &staging).await?;
            let source = secs(clock.source.load(Ordering::Relaxed));
            let teed = secs(clock.tee.load(Ordering::Relaxed));
            let timed_source = clock.timed_source.load(Ordering::Relaxed);
            let snapshotting = clock.snapshotting.load(Ordering::Relaxed);
            // The outermost timed stream holds the ones inside it.
            let upstream = if snapshotting { teed } else if timed_source { source } else { 0.0 };
            let stages = Stages {
                source_open,
                source: timed_source.then_some(source),
                snapshot: snapshotting.then(|| (teed - source).max(0.0)),
                transform: (streamed.pulling - upstream).max(0.0),
                encode: streamed.encoding,
                postgres_wait: streamed.waiting,
                index_build: times.index_build.as_secs_f64(),
                verify: times.beside.as_secs_f64(),
                swap: swap_started.elapsed().as_secs_f64(),
            };
            tracing::info!(table = name, ?stages, "time by stage");
            Ok(Loaded {
                rows,
                final_count,
                source: source_id.clone(),
                checksum: sum,
                snapshot: None,
                stages,
            })
        };
        // Cancelling drops the load mid-flight: the COPY is abandoned, and the
        // staging table is dropped below, before the lock is released.
        let result = tokio::select! {
            r = load => r,
            _ = options.cancel.cancelled() => Err(cancelled()),
        };
        if result.is_err() {
            refresh::discard(&client, &plan, &staging).await;
        }
        refresh::release(&client, &plan).await;
        result
    }
    .await;
    if let Some((s, ticket)) = snowflake_session {
        if result.is_err() {
            // A failed sink or Ctrl-C: stop the query on the server too.
            s.abort(&ticket).await;
        }
        s.logout().await;
    }
    // The context holds the source (and the snapshot's end of the tee)
    // until it is dropped; the snapshot is final only after that.
    drop(ctx);
    let snapshot = match writer {
        Some(w) => match w.finish(result.as_ref().err().map(|e| e.to_string())).await {
            Ok(m) => {
                tracing::info!(
                    table = name,
                    status = ?m.status,
                    rows = m.rows,
                    bytes = m.bytes,
                    files = m.files.len(),
                    "snapshot written"
                );
                if m.status == crate::snapshot::SnapshotStatus::LoadFailed {
                    tracing::warn!(
                        table = name,
                        snapshot = %format!("{name}@{}", options.run_id),
                        "every row read is kept in the snapshot; replay it by name once the cause is fixed"
                    );
                }
                Some(m)
            }
            Err(e) => {
                tracing::warn!(table = name, "snapshot: {e}");
                None
            }
        },
        None => None,
    };
    result.map(|mut loaded| {
        loaded.snapshot = snapshot.and_then(|m| {
            (m.status == crate::snapshot::SnapshotStatus::Complete).then(|| {
                options
                    .snapshots
                    .as_ref()
                    .map(|s| s.location.snapshot(name, &options.run_id).url())
                    .unwrap_or_default()
            })
        });
        loaded
    })
}

/// Where a table's run spent its time, in seconds. The stream stages
/// (source, snapshot, transform, encode, waiting on Postgres) run
/// concurrently with Postgres ingesting; index build and verification run
/// side by side; so the stages do not add up to the run's wall time.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stages {
    /// Opening the source: Snowflake's login and query (until its first
    /// result arrives), a Flight `DoGet`, a parquet file's metadata.
    pub source_open: f64,
    /// Waiting on the source's stream (reading, downloading, decoding);
    /// `None` when DataFusion reads parquet inside the transform.
    pub source: Option<f64>,
    /// Waiting on the snapshot writer to take the batches.
    pub snapshot: Option<f64>,
    /// The transform (DataFusion), the stages above excluded.
    pub transform: f64,
    /// Encoding Arrow batches into binary COPY.
    pub encode: f64,
    /// Waiting on Postgres: for COPY to take queued bytes (the in-flight
    /// budget full), then for COPY to complete.
    pub postgres_wait: f64,
    pub index_build: f64,
    /// The staged table's count and checksum, beside the index build.
    pub verify: f64,
    pub swap: f64,
}

/// Nanosecond counters the stream stages add to from their tasks.
#[derive(Debug, Default)]
struct StageClock {
    source: AtomicU64,
    tee: AtomicU64,
    timed_source: std::sync::atomic::AtomicBool,
    snapshotting: std::sync::atomic::AtomicBool,
}

/// Counts the time a stream's consumer waits on it: from asking for the
/// next item to getting it (downloads and decoding in other tasks included).
fn timed<T: Send + 'static>(
    mut inner: BoxStream<'static, T>,
    into: Arc<StageClock>,
    pick: fn(&StageClock) -> &AtomicU64,
) -> BoxStream<'static, T> {
    let mut asked: Option<Instant> = None;
    futures::stream::poll_fn(move |cx| {
        let started = *asked.get_or_insert_with(Instant::now);
        let polled = inner.poll_next_unpin(cx);
        if polled.is_ready() {
            asked = None;
            pick(&into).fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        polled
    })
    .boxed()
}

fn secs(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

/// A source as opened: DataFusion's own provider (parquet), or a stream
/// of the source's batches.
enum Opened {
    Provider(Arc<dyn datafusion::catalog::TableProvider>),
    Stream(
        SchemaRef,
        BoxStream<'static, Result<RecordBatch, DataFusionError>>,
    ),
}

/// Where a run snapshots what it reads.
#[derive(Debug, Clone)]
pub struct SnapshotPlan {
    pub location: crate::snapshot::Location,
    pub options: crate::snapshot::SnapshotOptions,
}

/// Refuses a swap that would empty the target or shrink it by more than
/// `max_shrink`: a source that returned nothing, or far too little, is far
/// more often a broken source than a real change.
fn shrink_guard(
    plan: &TablePlan,
    live: Option<u64>,
    new: u64,
    max_shrink: f64,
) -> Result<(), PipelineError> {
    let Some(old) = live else {
        return Ok(());
    };
    let floor = (old as f64 * (1.0 - max_shrink)).ceil() as u64;
    if old > 0 && (new == 0 || new < floor) {
        return Err(PipelineError::Shrink {
            table: plan.table.clone(),
            old,
            new,
            max_shrink_pct: (max_shrink * 100.0).round() as u32,
        });
    }
    Ok(())
}

/// Decides each output column's Postgres type, checking the table's
/// `columns`, `primary_key` and `indexes` against the transform's output.
pub(crate) fn plan_columns(
    config: &Config,
    name: &str,
    t: &TableConfig,
    schema: &arrow::datatypes::SchemaRef,
) -> Result<Vec<PgColumn>, PipelineError> {
    let invalid = |key: String, message: String| {
        PipelineError::from(SchemaError::ConfigInvalid {
            path: config.path.clone(),
            table: name.to_string(),
            key,
            message,
        })
    };
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let have = || format!("the transform outputs: {}", names.join(", "));
    let declared = t
        .column_types()
        .map_err(|(k, e)| invalid(format!("columns.{k}"), e.to_string()))?;
    for k in declared.keys() {
        if !names.contains(&k.as_str()) {
            return Err(invalid(
                format!("columns.{k}"),
                format!("no column `{k}`; {}", have()),
            ));
        }
    }
    for k in &t.primary_key {
        if !names.contains(&k.as_str()) {
            return Err(invalid(
                "primary_key".into(),
                format!("no column `{k}`; {}", have()),
            ));
        }
    }
    for (i, ix) in t.indexes.iter().enumerate() {
        if let Some(c) = ix.columns.iter().find(|c| !names.contains(&c.as_str())) {
            return Err(invalid(
                format!("indexes[{i}].columns"),
                format!("no column `{c}`; {}", have()),
            ));
        }
    }
    schema
        .fields()
        .iter()
        .map(|f| {
            let ty = PgType::resolve(f, declared.get(f.name()).copied())
                .map_err(|e| invalid(format!("columns.{}", f.name()), e.to_string()))?;
            Ok(PgColumn {
                name: f.name().clone(),
                ty,
                nullable: f.is_nullable(),
            })
        })
        .collect()
}

/// The encoder, and the checksum of what it produces (unless turned off).
struct Encoding {
    encoder: CopyEncoder,
    checksum: Option<RowChecksum>,
}

/// One message from the encoder to the COPY writers.
enum Frame {
    /// Encoded tuples, holding their share of the in-flight budget until written.
    Data(Bytes, OwnedSemaphorePermit),
    /// Everything was sent: complete the COPY (one per writer). A writer
    /// whose queue closes without it aborts its COPY.
    Finish,
}

/// The COPY producer's time: pulling batches from the transform, encoding
/// them, and waiting on Postgres.
#[derive(Debug, Default)]
struct Streamed {
    pulling: f64,
    encoding: f64,
    waiting: f64,
}

/// Streams the transform's batches through the encoder into `COPY ... FROM
/// STDIN`, one COPY per client (each takes the next encoded batch when it
/// is free), with at most `budget` encoded bytes queued between encoder and
/// Postgres. Returns the rows read (which the COPYs' counts must add up to).
async fn copy_stream(
    clients: &[Arc<Client>],
    plan: &TablePlan,
    staging: &str,
    mut stream: SendableRecordBatchStream,
    encoding: Encoding,
    budget: usize,
    progress: &AtomicU64,
) -> Result<(u64, Option<String>, Streamed), PipelineError> {
    let mut times = Streamed::default();
    let permits = Arc::new(Semaphore::new(budget));
    let (tx, rx) = mpsc::unbounded_channel::<Frame>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let Encoding {
        mut encoder,
        checksum,
    } = encoding;
    let writers: Vec<_> = clients
        .iter()
        .map(|client| {
            tokio::spawn(copy_writer(
                Arc::clone(client),
                plan.copy_sql(staging),
                plan.table.clone(),
                Arc::clone(&rx),
                checksum.clone(),
                Arc::clone(&permits),
            ))
        })
        .collect();
    drop(rx);

    let produced = async {
        let mut rows = 0u64;
        loop {
            let pulled = Instant::now();
            let Some(batch) = stream.next().await else {
                times.pulling += pulled.elapsed().as_secs_f64();
                break;
            };
            times.pulling += pulled.elapsed().as_secs_f64();
            let batch = batch.map_err(|e| transform_error(&plan.table, rows, e))?;
            let mut buf = BytesMut::with_capacity(batch.get_array_memory_size() / 2);
            let encoding = Instant::now();
            encoder.encode(&batch, &mut buf)?;
            times.encoding += encoding.elapsed().as_secs_f64();
            let cost = buf.len().clamp(1, budget) as u32;
            let waiting = Instant::now();
            // Closed when a writer fails: its error is the cause.
            let Ok(permit) = Arc::clone(&permits).acquire_many_owned(cost).await else {
                return Ok(None);
            };
            times.waiting += waiting.elapsed().as_secs_f64();
            if tx.send(Frame::Data(buf.freeze(), permit)).is_err() {
                return Ok(None);
            }
            rows += batch.num_rows() as u64;
            progress.store(rows, Ordering::Relaxed);
        }
        for _ in clients {
            let _ = tx.send(Frame::Finish);
        }
        Ok::<_, PipelineError>(Some(rows))
    }
    .await;
    drop(tx);
    let waiting = Instant::now();
    let mut copied = Some((0u64, checksum));
    let mut failure = None;
    for writer in writers {
        let written = writer.await.map_err(|e| PipelineError::Transform {
            table: plan.table.clone(),
            message: format!("COPY writer task failed: {e}"),
        });
        match written.and_then(|w| w) {
            Ok(Some((n, sum))) => {
                if let Some((total, total_sum)) = copied.as_mut() {
                    *total += n;
                    if let (Some(t), Some(s)) = (total_sum.as_mut(), sum.as_ref()) {
                        t.merge(s);
                    }
                }
            }
            Ok(None) => copied = None,
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    times.waiting += waiting.elapsed().as_secs_f64();
    match (produced, failure, copied) {
        (Err(e), _, _) => Err(e),
        (Ok(_), Some(e), _) => Err(e),
        (Ok(Some(read)), None, Some((copied, sum))) if read == copied => {
            Ok((read, sum.map(|s| s.hex()), times))
        }
        (Ok(Some(read)), None, Some((copied, _))) => Err(PipelineError::CountMismatch {
            table: plan.table.clone(),
            read,
            staged: copied,
        }),
        (Ok(_), None, _) => Err(PipelineError::Transform {
            table: plan.table.clone(),
            message: "COPY ended before all rows were sent".into(),
        }),
    }
}

/// One COPY session: header, the encoded batches it takes from the shared
/// queue (hashed here, beside the encoder), trailer. Returns its row count
/// and checksum, or `None` if the queue closed early (the COPY is aborted
/// by dropping it). A failure closes `permits`, which stops the encoder.
async fn copy_writer(
    client: Arc<Client>,
    copy_sql: String,
    table: String,
    frames: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Frame>>>,
    mut checksum: Option<RowChecksum>,
    permits: Arc<Semaphore>,
) -> Result<Option<(u64, Option<RowChecksum>)>, PipelineError> {
    let to_err = |step, e| PipelineError::postgres(&table, step, e);
    let written = async {
        let sink = client
            .copy_in::<_, Bytes>(&copy_sql)
            .await
            .map_err(|e| to_err("starting COPY", e))?;
        let mut sink = Box::pin(sink);
        sink.feed(Bytes::from_static(COPY_HEADER))
            .await
            .map_err(|e| to_err("COPY", e))?;
        loop {
            let frame = frames.lock().await.recv().await;
            match frame {
                Some(Frame::Data(bytes, permit)) => {
                    if let Some(c) = checksum.as_mut() {
                        c.add_tuples(&bytes)
                            .map_err(|message| PipelineError::Transform {
                                table: table.clone(),
                                message: format!("checksum of the encoded rows: {message}"),
                            })?;
                    }
                    sink.send(bytes).await.map_err(|e| to_err("COPY", e))?;
                    drop(permit);
                }
                Some(Frame::Finish) => {
                    sink.feed(Bytes::from_static(COPY_TRAILER))
                        .await
                        .map_err(|e| to_err("COPY", e))?;
                    let n = sink
                        .as_mut()
                        .finish()
                        .await
                        .map_err(|e| to_err("completing COPY", e))?;
                    return Ok(Some((n, checksum)));
                }
                None => return Ok(None),
            }
        }
    }
    .await;
    if written.is_err() {
        permits.close();
    }
    written
}

/// Names the absolute row of a geometry error; passes other errors through.
fn transform_error(table: &str, rows_before: u64, e: DataFusionError) -> PipelineError {
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
    PipelineError::Transform {
        table: table.to_string(),
        message: e.to_string(),
    }
}
