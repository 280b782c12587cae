//! Running one table end to end: source → transform → encoder → COPY into
//! staging → verify → swap, recorded in `floe.sync_runs` and reported.
//!
//! An incremental run (`--incremental`) applies the source's changes since
//! the table's watermark in place (`incremental`), or does a full refresh
//! instead and says why.
//!
//! The rooms: [`plan`] (the one planning path), `ahead` (the transform
//! started before the load needs it), [`stages`] (time by stage),
//! [`report`] (what the run says, and its id), `record` (its `sync_runs`
//! row), [`cancel`]. Where rows come from is [`crate::source`]; how they
//! land is the load seam, [`crate::postgres::refresh::StagedRefresh`].

mod ahead;
pub mod cancel;
mod incremental;
pub mod plan;
mod record;
pub mod report;
pub mod stages;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use operators::GeometryOptions;
use schemas::config::Config;

pub use cancel::{Cancel, Canceller};
pub use report::{new_run_id, ChangesReport, TableReport, WindowReport};
pub use stages::Stages;

use crate::incremental::{Changes, Fallback};
use crate::postgres::apply::NotApplied;
use crate::postgres::copy::CopyTimes;
use crate::postgres::encode::CopyEncoder;
use crate::postgres::refresh::{self, OpeningSession, StagedRefresh};
use crate::postgres::runs::{self, Outcome, RunMode, RunStatus};
use crate::postgres::state::{FullRefreshed, SourcePoint};
use crate::postgres::table_lock::TableLock;
use crate::postgres::Target;
use crate::snapshot::{SnapshotStatus, SnapshotWriter};
use crate::source::{Opened, SourceData, SourceError, SourceGuard, TableSource};
use crate::PipelineError;
use ahead::{Ahead, Early, FirstBatch, Started};
use stages::{AfterCopy, StageClock};

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
    /// Replay this (verified) snapshot chain instead of reading the table's source.
    pub replay: Option<crate::snapshot::Chain>,
    /// Apply the source's changes since each table's watermark instead of
    /// reloading it (a full refresh where that is impossible, saying why).
    pub incremental: bool,
    /// The Snowflake session incremental runs read their windows on
    /// (`floe watch` keeps one across ticks); `None`: each run logs in and
    /// out on its own.
    pub snowflake: Option<KeptSession>,
    /// A table another floe process is loading is skipped (status
    /// `skipped`, nothing recorded) instead of failing: `floe watch`
    /// replicas share tables this way.
    pub skip_if_busy: bool,
}

/// A Snowflake session shared by runs (its token is renewed by the client).
#[derive(Clone)]
pub struct KeptSession(pub Arc<crate::source::snowflake::SnowflakeSession>);

impl std::fmt::Debug for KeptSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeptSession")
    }
}

/// Where a run snapshots what it reads.
#[derive(Debug, Clone)]
pub struct SnapshotPlan {
    pub location: crate::snapshot::Location,
    pub options: crate::snapshot::SnapshotOptions,
}

/// What a successful load did.
struct Loaded {
    rows: u64,
    final_count: u64,
    /// What `sync_runs.source` says once the source is open (the Snowflake query id).
    source: Option<String>,
    /// The verified content checksum (see `postgres::checksum`), unless turned off.
    checksum: Option<String>,
    /// The complete snapshot of what was read, when one was written.
    snapshot: Option<String>,
    /// A full refresh's stages.
    stages: Option<Stages>,
    /// What an incremental run applied, and its transaction's seconds.
    changes: Option<(Changes, f64)>,
}

impl From<incremental::Incremented> for Loaded {
    fn from(i: incremental::Incremented) -> Loaded {
        Loaded {
            rows: i.rows_read,
            final_count: i.final_count,
            source: None,
            checksum: None,
            snapshot: i.snapshot,
            stages: None,
            changes: Some((i.changes, i.transaction)),
        }
    }
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
    let source = TableSource::resolve(
        table_cfg,
        options.replay.as_ref(),
        options.parquet_dir.as_deref(),
    );
    let incremental = options.incremental && options.replay.is_none();
    // A local parquet file is opened, planned and started while the run
    // takes the lock and checks (see `ahead::Early`); no row of it is
    // written before the precheck passes.
    let early = Early::start(config, name, &source, &target.schema, &geometry, options);
    // A full refresh's load session opens now too: connecting and loading
    // PostGIS there is the longest wait of a run's start, and it reads
    // nothing the lock guards. A run that does not get the lock drops it
    // (the task aborted, the session closed).
    let session = (!incremental).then(|| {
        OpeningSession::start(
            target,
            &config.load,
            name,
            &table_cfg.target,
            &options.run_id,
        )
    });
    // The table's lock first: before the run is recorded as running and
    // before the source is queried, so two processes never both query it.
    // (The record's session opens beside it: a connection is the slowest
    // round trip of a run's start.)
    let (lock, mut record) = tokio::join!(
        TableLock::acquire(
            target,
            &config.load,
            name,
            &table_cfg.target,
            &options.run_id,
        ),
        record::Record::open(config, target, name, &options.run_id),
    );
    if let (Err(PipelineError::Busy { .. }), true) = (&lock, options.skip_if_busy) {
        tracing::debug!(table = name, "held by another floe process: skipped");
        return TableReport {
            status: RunStatus::Skipped,
            table: table_cfg.target.clone(),
            name: name.to_string(),
            mode: source.mode(),
            reason: None,
            rows_synced: 0,
            final_count: None,
            seconds: started.elapsed().as_secs_f64(),
            error: None,
            invalid_geometries: 0,
            snapshot: None,
            stages: None,
            changes: None,
        };
    }
    let recorded_mode = match incremental {
        true => RunMode::Incremental,
        false => source.mode(),
    };
    // Holding the table's lock: a `running` record of another run is a dead
    // run's (marked beside this run's own record, on the lock's session).
    let abandoned = async {
        if let Ok(lock) = &lock {
            let target_name = format!("{}.{}", target.schema, table_cfg.target);
            mark_abandoned(lock.client(), name, &target_name, &options.run_id).await;
        }
    };
    let described = source.describe();
    tokio::join!(record.start(recorded_mode, &described), abandoned);
    let (mode, reason, result, lock) = match lock {
        Err(e) => {
            drop(session);
            (source.mode(), None, Err(e), None)
        }
        Ok(lock) => {
            let loaded = match incremental {
                true => match incremental::run(config, name, target, options, &geometry, progress)
                    .await
                {
                    Ok(applied) => (RunMode::Incremental, None, Ok(Loaded::from(applied))),
                    Err(NotApplied::FallBack(reason)) => {
                        match reason {
                            Fallback::ChangeTracking => tracing::warn!(
                                table = name,
                                %reason,
                                "a full refresh instead of an incremental run: change tracking is off for part of the window; \
                                 until it is on for the source (ALTER TABLE … SET CHANGE_TRACKING = TRUE), every incremental run is a full refresh"
                            ),
                            _ => {
                                tracing::info!(table = name, %reason, "a full refresh instead of an incremental run")
                            }
                        }
                        let full = load_table(
                            config, name, target, options, &lock, &source, &geometry, progress,
                            None, None,
                        )
                        .await;
                        (RunMode::Full, Some(reason), full)
                    }
                    Err(NotApplied::Failed(e)) => (RunMode::Incremental, None, Err(e)),
                },
                false => (
                    source.mode(),
                    None,
                    load_table(
                        config, name, target, options, &lock, &source, &geometry, progress, early,
                        session,
                    )
                    .await,
                ),
            };
            let (mode, reason, result) = loaded;
            (mode, reason, result, Some(lock))
        }
    };
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
            status: RunStatus::Success,
            table: table_cfg.target.clone(),
            name: name.to_string(),
            mode,
            reason,
            rows_synced: loaded.rows,
            final_count: Some(loaded.final_count),
            seconds,
            error: None,
            invalid_geometries,
            snapshot: loaded.snapshot.clone(),
            stages: loaded.stages.clone(),
            changes: loaded
                .changes
                .as_ref()
                .map(|(c, seconds)| ChangesReport::new(c, *seconds)),
        },
        Err(e) => TableReport {
            status: match e {
                PipelineError::Cancelled { .. } => RunStatus::Cancelled,
                _ => RunStatus::Failed,
            },
            table: table_cfg.target.clone(),
            name: name.to_string(),
            mode,
            reason,
            rows_synced: 0,
            final_count: record::current_count(config, name, target, &options.run_id).await,
            seconds,
            error: Some(e.to_string()),
            invalid_geometries,
            snapshot: None,
            stages: None,
            changes: None,
        },
    };
    let loaded = result.as_ref().ok();
    // The lock goes back as the record is completed (each on its own
    // session, one round trip each). A run taking the table in between
    // would mark this record abandoned, and the completion overwrite that.
    let release = async {
        if let Some(lock) = lock {
            lock.release().await;
        }
    };
    let outcome = Outcome {
        status: report.status,
        mode,
        reason,
        changes: loaded.and_then(|l| l.changes.as_ref().map(|(c, _)| c)),
        source: loaded.and_then(|l| l.source.as_deref()),
        rows_read: loaded.map(|l| l.rows),
        // An incremental run writes only the rows it inserts or updates.
        rows_written: loaded.map(|l| {
            l.changes
                .as_ref()
                .map_or(l.final_count, |(c, _)| c.inserted + c.updated)
        }),
        final_count: report.final_count,
        checksum: loaded.and_then(|l| l.checksum.as_deref()),
        error: report.error.as_deref(),
    };
    tokio::join!(release, record.finish(&outcome));
    report
}

/// Opens the source (unless `early` did) and the load's session (unless
/// `session` is opening), snapshots what it reads, and runs the staged
/// refresh; the source is closed (a Snowflake query aborted, its session
/// logged out) however the load ends.
#[allow(clippy::too_many_arguments)]
async fn load_table(
    config: &Config,
    name: &str,
    target: &Target,
    options: &RunOptions,
    lock: &TableLock,
    source: &TableSource<'_>,
    geometry: &GeometryOptions,
    progress: &AtomicU64,
    early: Option<Early>,
    session: Option<OpeningSession>,
) -> Result<Loaded, PipelineError> {
    // The load's Postgres session (which the staging table needs, not the
    // plan) opens on a task of its own while the run checks and plans,
    // unless it is opening already.
    let table_target = &config.tables[name].target;
    let session = session.unwrap_or_else(|| {
        OpeningSession::start(target, &config.load, name, table_target, &options.run_id)
    });
    let precheck = refresh::refuse_what_cannot_be_carried(
        lock.client(),
        name,
        target,
        table_target,
        config.load.dependent_matviews,
    );
    let clock = Arc::new(StageClock::default());
    let mut writer = None;
    let (ctx, source_open, described, point, guard, staged) = match early {
        Some(early) => {
            // Opened and planned from the run's start: the staging table is
            // made beside the check, which holds back only the COPY (a
            // refusal drops the staging table and what was started).
            let staging = async {
                let Ahead {
                    ctx,
                    described,
                    source_open,
                    started,
                } = early.ready(name).await?;
                let staged = stage(config, target, options, session, started).await?;
                Ok::<_, PipelineError>((ctx, source_open, described, staged))
            };
            let (checked, staging) = tokio::join!(precheck, staging);
            if let Err(e) = checked {
                if let Ok((.., staged)) = staging {
                    staged.load.abort().await;
                }
                return Err(e);
            }
            let (ctx, source_open, described, staged) = staging?;
            (
                ctx,
                source_open,
                described,
                None,
                SourceGuard::none(),
                Ok(staged),
            )
        }
        None => {
            // The transform's session is made while the check's round trips go.
            let making = plan::context_ahead(config, geometry);
            // What the swap could not carry over is refused before the
            // source is read; Snowflake's login (which reads nothing) goes
            // beside that check.
            let (refused, connected) = tokio::join!(precheck, source.connect(config));
            if let Err(e) = refused {
                if let Ok(connected) = connected {
                    connected.close().await;
                }
                return Err(e);
            }
            let connected = connected.map_err(|e| PipelineError::Source {
                table: name.to_string(),
                source: e,
            })?;
            let ctx = making.await;
            let opening = Instant::now();
            let Opened {
                data,
                described,
                point,
                guard,
            } = source
                .open(name, config, &ctx, &options.cancel, connected)
                .await?;
            let source_open = opening.elapsed().as_secs_f64();
            // What the run reads is snapshotted on its way to the transform
            // (a replay reads a snapshot, so it writes none).
            let snapshotting = options.snapshots.as_ref().zip(described.manifest());
            let source_err = |e: SourceError| PipelineError::Source {
                table: name.to_string(),
                source: e,
            };
            let provider = match (data, snapshotting) {
                (SourceData::Provider(p), None) => Ok(p),
                (data, snapshotting) => {
                    async {
                        let (schema, stream) = data.into_stream(&ctx).await.map_err(source_err)?;
                        let stream = clock.time_source(stream);
                        let stream = match snapshotting {
                            Some((snapshots, manifest_source)) => {
                                let w = SnapshotWriter::start(
                                    snapshots.location.snapshot(name, &options.run_id),
                                    name,
                                    &options.run_id,
                                    manifest_source,
                                    Arc::clone(&schema),
                                    snapshots.options,
                                );
                                let teed = clock.time_snapshot(w.tee(stream).into_stream().boxed());
                                writer = Some(w);
                                teed
                            }
                            None => stream,
                        };
                        crate::source::one_shot(schema, stream).map_err(|e| source_err(e.into()))
                    }
                    .await
                }
            };
            let staged = match provider {
                Ok(p) => match ahead::start(config, name, &target.schema, &ctx, p).await {
                    Ok(started) => stage(config, target, options, session, started).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            (ctx, source_open, described, point, guard, staged)
        }
    };
    let result = match staged {
        // (Boxed: the load's future is the largest, and every caller's would hold it.)
        Ok(staged) => Box::pin(refresh(name, options, Load { staged, point }, progress)).await,
        Err(e) => Err(e),
    };
    guard.close(result.is_err()).await;
    // The context holds the source (and the snapshot's end of the tee)
    // until it is dropped; the snapshot is final only after that.
    drop(ctx);
    let complete = match writer {
        Some(w) => finish_snapshot(w, name, &options.run_id, result.as_ref().err()).await,
        None => false,
    };
    result.map(|r| Loaded {
        rows: r.rows,
        final_count: r.final_count,
        source: described.record(),
        checksum: r.checksum,
        snapshot: complete
            .then(|| {
                options
                    .snapshots
                    .as_ref()
                    .map(|s| s.location.snapshot(name, &options.run_id).url())
            })
            .flatten(),
        stages: Some(clock.stages(source_open, r.copy_times, r.after)),
        changes: None,
    })
}

/// What a committed refresh hands back to [`load_table`].
struct Refreshed {
    rows: u64,
    checksum: Option<String>,
    final_count: u64,
    copy_times: CopyTimes,
    after: AfterCopy,
}

/// A started transform with its staging table made: what is left is the
/// COPY. Dropped unused, the transform is aborted, but the staging table
/// stays until [`StagedRefresh::abort`] (or the next run) drops it.
struct Staged<'a> {
    load: StagedRefresh<'a>,
    encoder: CopyEncoder,
    first: FirstBatch,
}

/// Makes the staging table for `started`'s plan on the load's session,
/// while the transform's first batch is still being made on its task (see
/// `ahead`).
async fn stage<'a>(
    config: &'a Config,
    target: &'a Target,
    options: &'a RunOptions,
    session: OpeningSession,
    started: Started,
) -> Result<Staged<'a>, PipelineError> {
    let Started {
        plan,
        encoder,
        first,
    } = started;
    let session = session.session().await?;
    let load = StagedRefresh::begin(session, target, &config.load, plan, &options.run_id).await?;
    Ok(Staged {
        load,
        encoder,
        first,
    })
}

/// What [`refresh`] loads: the staged transform, and the watermark (with
/// the source's fingerprint) to record with the rows.
struct Load<'a> {
    staged: Staged<'a>,
    point: Option<SourcePoint>,
}

/// Loads the staged transform: copy → commit (verify, guard, swap and the
/// watermark).
async fn refresh(
    name: &str,
    options: &RunOptions,
    source: Load<'_>,
    progress: &AtomicU64,
) -> Result<Refreshed, PipelineError> {
    let Load {
        staged: Staged {
            mut load,
            encoder,
            first,
        },
        point,
    } = source;
    let cancelled = || PipelineError::Cancelled {
        table: name.to_string(),
    };
    let target_name = format!("{}.{}", load.plan().schema, load.plan().target);
    let (stream, ahead) = first.into_stream();
    // Cancelling drops the copy mid-flight: the COPY is abandoned, and the
    // staging table is dropped before the lock is released.
    let copied = tokio::select! {
        r = load.copy(stream, encoder, progress) => r.map(|mut c| {
            c.times.pulling += ahead;
            c
        }),
        _ = options.cancel.cancelled() => Err(cancelled()),
    };
    let copied = match copied {
        Ok(c) => c,
        Err(e) => {
            load.abort().await;
            return Err(e);
        }
    };
    let state = FullRefreshed {
        target: target_name,
        table: name.to_string(),
        run_id: options.run_id.clone(),
        point,
    };
    let committed = load
        .commit(&copied, options.allow_shrink, &options.cancel, &state)
        .await?;
    let after = AfterCopy {
        index_build: committed.index_build.as_secs_f64(),
        verify: committed.verify.as_secs_f64(),
        swap: committed.swap.as_secs_f64(),
    };
    Ok(Refreshed {
        rows: copied.rows,
        checksum: copied.checksum,
        final_count: committed.final_count,
        copy_times: copied.times,
        after,
    })
}

/// Marks other runs of `target_name` still `running` as abandoned: call
/// holding the table's lock, when no live run can be loading it.
async fn mark_abandoned(
    client: &tokio_postgres::Client,
    name: &str,
    target_name: &str,
    run_id: &str,
) {
    match runs::mark_abandoned(client, target_name, run_id).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            table = name,
            runs = n,
            "marked earlier runs that never finished as abandoned"
        ),
        Err(e) => tracing::debug!(table = name, "sync_runs not updated: {e}"),
    }
}

/// Finishes the snapshot (`complete`, `load_failed` or `incomplete`, by the
/// load's outcome); true if it is complete.
async fn finish_snapshot(
    writer: SnapshotWriter,
    name: &str,
    run_id: &str,
    failure: Option<&PipelineError>,
) -> bool {
    match writer.finish(failure.map(|e| e.to_string())).await {
        Ok(m) => {
            tracing::info!(
                table = name,
                status = ?m.status,
                rows = m.rows,
                bytes = m.bytes,
                files = m.files.len(),
                "snapshot written"
            );
            if m.status == SnapshotStatus::LoadFailed {
                tracing::warn!(
                    table = name,
                    snapshot = %format!("{name}@{run_id}"),
                    "every row read is kept in the snapshot; replay it by name once the cause is fixed"
                );
            }
            m.status == SnapshotStatus::Complete
        }
        Err(e) => {
            tracing::warn!(table = name, "snapshot: {e}");
            false
        }
    }
}
