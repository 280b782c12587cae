//! Full refresh by staging table and atomic swap.
//!
//! 1. Under the table's lock (taken by the run before anything else:
//!    [`crate::postgres::table_lock::TableLock`]), refuse what cannot be
//!    carried over (`precheck`, before the source is read), drop staging
//!    tables left by crashed runs.
//! 2. Create a staging table and COPY into it: one COPY in its own
//!    transaction with the table's TRUNCATE (so it may write the rows
//!    frozen), or several autocommit COPY sessions. A floe that dies
//!    mid-load leaves no open transaction behind: the server aborts it when
//!    the connection goes, and the half-filled staging table is invisible to
//!    readers and dropped by the next run.
//! 3. Build the primary key and indexes after the load (faster than
//!    maintaining them row by row) on two sessions at once, verify the
//!    staged rows on the second beside the first's index build, ANALYZE.
//! 4. Swap in one short transaction of one round trip (`swap.sql`): lock
//!    the old table (each attempt waiting at most `swap_lock_wait`, retried
//!    until `lock_timeout`), drop it and the views on it, rename
//!    staging into place, and replay what the old table had (`carry`):
//!    owner, grants, policies, comments, triggers, views and the rest.
//!    Constraints and indexes a DBA added were built on staging in step 3.
//!
//! Readers see the old complete table until the swap commits and the new
//! complete table after it; a statement blocked on the swap's lock re-resolves
//! the name once it gets the lock, so it reads the new table. (A REPEATABLE
//! READ reader whose snapshot predates the load sees the new rows when they
//! were written frozen, by one COPY stream; with several it sees the new
//! table empty: README says so.)
//! Any failure before the swap commits leaves the target as it was.
//!
//! This module is the sequence and its contract ([`StagedRefresh`]); the
//! statements of each step are in `steps`, what is refused before loading
//! in `precheck`, what is carried over in `carry`, the swap in `swap`.

mod carry;
mod from_target;
mod precheck;
mod steps;
mod swap;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::physical_plan::SendableRecordBatchStream;
use schemas::config::LoadConfig;
use tokio_postgres::Client;

use super::checksum::{RowChecksum, StagedColumn};
use super::copy::{copy_stream, Copied, Encoding};
use super::encode::CopyEncoder;
use super::state::FullRefreshed;
use super::{application_name, Session, Target};
use crate::run::Cancel;
use crate::task::AbortOnDrop;
use crate::PipelineError;
pub use carry::{read as read_carried, Carried};
pub use from_target::FromTarget;
pub use precheck::refuse_what_cannot_be_carried;
pub use steps::{
    build, current_count, discard, load_postgis, prepare, staged_columns, verify, BuildTimes,
    Staging, TablePlan, STAGING_COMMENT, STAGING_MARK,
};
pub use swap::swap;

/// The load seam, as a full refresh through a staging table (the other way
/// to load a table is [`crate::postgres::apply::InPlaceApply`]). What a caller may rely on:
///
/// - [`StagedRefresh::connect`] opens the load's session (it needs no plan,
///   so a run opens it while it plans); [`StagedRefresh::begin`], called
///   holding the table's [`crate::postgres::table_lock::TableLock`], drops
///   staging tables crashed runs left and creates this run's staging table
///   on it (dropped again if `begin` fails after creating it).
/// - [`StagedRefresh::copy`] streams rows into staging: accepted, never
///   visible to readers.
/// - [`StagedRefresh::commit`] builds the indexes with the verification
///   beside them, stops if the run was cancelled, applies the shrink guard,
///   and swaps, writing the table's `floe.sync_state` row (its watermark) in
///   the same transaction. Once it returns `Ok`, the rows are verified
///   (count and checksum), visible, and durable, and so is the watermark.
/// - Any error, [`StagedRefresh::abort`], or a drop before `commit` returns
///   `Ok` leaves the target exactly as it was. (A drop closes the session:
///   the server ends any statement and releases the lock; the staging table
///   left behind is dropped by the table's next `begin`.)
pub struct StagedRefresh<'a> {
    target: &'a Target,
    load: &'a LoadConfig,
    run_id: &'a str,
    plan: TablePlan,
    session: Session,
    staging: String,
    /// Columns beyond the key the staging table declares `NOT NULL` (the
    /// target's): the encoder refuses a NULL there too.
    not_null: Vec<String>,
    /// The staging table's columns as the checksum hashes them, read with
    /// the table's creation; `None` when the checksum is off or the server
    /// has no `hash_record_extended` (before 14: the count is still checked).
    hashed: Option<Vec<StagedColumn>>,
    /// The verification's session, opened while the rows are copied.
    helper: Option<Session>,
}

/// The staging table's columns as the checksum hashes them; `None`
/// (with a warning) before PostgreSQL 14, where only the count is checked.
async fn hashed_columns(
    session: &Session,
    plan: &TablePlan,
    staging: &str,
) -> Result<Option<Vec<StagedColumn>>, PipelineError> {
    let version = session
        .server_version()
        .await
        .map_err(|e| PipelineError::postgres(&plan.table, "reading the server version", e))?;
    let hashed = staged_columns(&session.client, version, plan, staging).await?;
    if hashed.is_none() {
        tracing::warn!(
            table = %plan.table,
            "verifying the row count only: the content checksum needs PostgreSQL 14 or newer"
        );
    }
    Ok(hashed)
}

/// The load's session being opened on a task of its own
/// ([`StagedRefresh::connect`]), so a run plans while Postgres connects and
/// loads PostGIS. Dropped before [`OpeningSession::session`], the task is
/// aborted and the session, if it was made, closed.
pub struct OpeningSession {
    task: AbortOnDrop<Result<Session, PipelineError>>,
    target: String,
}

impl OpeningSession {
    pub fn start(
        target: &Target,
        load: &LoadConfig,
        table: &str,
        table_target: &str,
        run_id: &str,
    ) -> Self {
        let (target, load) = (target.clone(), load.clone());
        let (table, table_target, run_id) = (
            table.to_string(),
            table_target.to_string(),
            run_id.to_string(),
        );
        let display = target.display().to_string();
        let task = AbortOnDrop::spawn(async move {
            StagedRefresh::connect(&target, &load, &table, &table_target, &run_id).await
        });
        OpeningSession {
            task,
            target: display,
        }
    }

    /// Waits for the session.
    pub async fn session(self) -> Result<Session, PipelineError> {
        match self.task.join().await {
            Ok(opened) => opened,
            Err(e) => Err(PipelineError::Connect {
                target: self.target,
                message: format!("the task opening the session failed: {e}"),
            }),
        }
    }
}

/// What a committed refresh measured and left.
#[derive(Debug, Clone, Copy)]
pub struct Committed {
    /// Rows in the table now (verified: equal to the rows read).
    pub final_count: u64,
    pub index_build: Duration,
    /// The verification beside the index build.
    pub verify: Duration,
    pub swap: Duration,
}

impl<'a> StagedRefresh<'a> {
    /// The load's session for `table` (its config name), whose target is
    /// `table_target` in `target`'s schema, with PostGIS loaded when the
    /// target has geometry (see [`load_postgis`]).
    pub async fn connect(
        target: &Target,
        load: &LoadConfig,
        table: &str,
        table_target: &str,
        run_id: &str,
    ) -> Result<Session, PipelineError> {
        let session = target
            .connect(&application_name(&[table_target, run_id]), load)
            .await?;
        load_postgis(&session.client, table, &target.schema, table_target).await?;
        Ok(session)
    }

    /// Cleans up and creates the staging table on `session` (from
    /// [`StagedRefresh::connect`]), the caller holding the table's lock.
    pub async fn begin(
        session: Session,
        target: &'a Target,
        load: &'a LoadConfig,
        plan: TablePlan,
        run_id: &'a str,
    ) -> Result<StagedRefresh<'a>, PipelineError> {
        let Staging {
            name: staging,
            from_target,
        } = prepare(&session.client, &plan, run_id).await?;
        let not_null = from_target.not_null;
        // What the checksum hashes is read now, beside the transform's first batch.
        let hashed = match load.verify_checksum {
            true => hashed_columns(&session, &plan, &staging).await,
            false => Ok(None),
        };
        let hashed = match hashed {
            Ok(hashed) => hashed,
            Err(e) => {
                discard(&session.client, &plan, &staging).await;
                return Err(e);
            }
        };
        Ok(StagedRefresh {
            target,
            load,
            run_id,
            plan,
            session,
            staging,
            not_null,
            hashed,
            helper: None,
        })
    }

    /// The session holding the table's lock.
    pub fn client(&self) -> &Client {
        &self.session.client
    }

    pub fn plan(&self) -> &TablePlan {
        &self.plan
    }

    /// Streams the transform's rows into the staging table on
    /// `load.copy_streams` sessions, hashing them for the verification.
    ///
    /// The verification's session is opened beside the copy, so the index
    /// build starts as soon as the rows are in.
    pub async fn copy(
        &mut self,
        stream: SendableRecordBatchStream,
        mut encoder: CopyEncoder,
        progress: &AtomicU64,
    ) -> Result<Copied, PipelineError> {
        let plan = &self.plan;
        encoder.refuse_nulls_in(&self.not_null);
        let checksum = self.hashed.as_deref().map(RowChecksum::new);
        // Further COPY streams, each a session of its own into the same staging table.
        let mut streams = Vec::with_capacity(self.load.copy_streams.saturating_sub(1));
        for k in 1..self.load.copy_streams {
            let role = format!("copy{k}");
            streams.push(
                self.target
                    .connect(
                        &application_name(&[&plan.target, self.run_id, &role]),
                        self.load,
                    )
                    .await?,
            );
        }
        let clients: Vec<Arc<Client>> = std::iter::once(Arc::clone(&self.session.client))
            .chain(streams.iter().map(|s| Arc::clone(&s.client)))
            .collect();
        let helper = self.connect_helper();
        let (copied, helper) = tokio::join!(
            copy_stream(
                &clients,
                plan,
                &self.staging,
                stream,
                Encoding { encoder, checksum },
                self.load.max_in_flight_bytes,
                progress,
            ),
            helper
        );
        let copied = copied?;
        self.helper = Some(helper?);
        Ok(copied)
    }

    /// Verifies what [`StagedRefresh::copy`] staged and swaps it in (see the
    /// type's contract), recording `state` (the watermark) in the swap's
    /// transaction; `allow_shrink` lifts the shrink guard. Cancelling before
    /// the swap keeps the old table. Once the swap is sent it is not raced
    /// with the cancel: it commits or not, and the result says which (a
    /// cancel between its attempts stops it with the old table kept; a
    /// commit whose answer is lost is looked up in `floe.sync_state`).
    pub async fn commit(
        mut self,
        copied: &Copied,
        allow_shrink: bool,
        cancel: &Cancel,
        state: &FullRefreshed,
    ) -> Result<Committed, PipelineError> {
        let table = self.plan.table.clone();
        let verified = tokio::select! {
            r = self.verify(copied, allow_shrink, cancel) => r,
            _ = cancel.cancelled() => Err(PipelineError::Cancelled { table }),
        };
        let result = match verified {
            Ok(verified) => self.swap_in(verified, cancel, state).await,
            Err(e) => {
                if let PipelineError::Cancelled { .. } = &e {
                    // The index build or verification may still be running on
                    // the server: stop it, so the clean-up does not wait for it.
                    self.session.cancel_running().await;
                }
                Err(e)
            }
        };
        if result.is_err() {
            discard(&self.session.client, &self.plan, &self.staging).await;
        }
        result
    }

    /// The verification's session, PostGIS loaded for the GiST build it
    /// may run (see [`load_postgis`]).
    async fn connect_helper(&self) -> Result<Session, PipelineError> {
        let plan = &self.plan;
        let session = self
            .target
            .connect(
                &application_name(&[&plan.target, self.run_id, "verify"]),
                self.load,
            )
            .await?;
        load_postgis(&session.client, &plan.table, &plan.schema, &plan.target).await?;
        Ok(session)
    }

    /// Drops the staging table: the target is as it was.
    pub async fn abort(self) {
        discard(&self.session.client, &self.plan, &self.staging).await;
    }

    /// Builds the indexes beside the verification, then the shrink guard.
    async fn verify(
        &mut self,
        copied: &Copied,
        allow_shrink: bool,
        cancel: &Cancel,
    ) -> Result<Verified, PipelineError> {
        // A second session (opened during the copy) builds part of the
        // indexes and then verifies the staged rows, beside the first's
        // (longer) index build.
        let helper = match self.helper.take() {
            Some(h) => h,
            None => self.connect_helper().await?,
        };
        let (plan, staging) = (&self.plan, self.staging.as_str());
        // It also counts the live table for the shrink guard, off the critical path.
        let beside = async {
            let verified = verify(
                &helper.client,
                plan,
                staging,
                copied.rows,
                self.hashed.as_deref().zip(copied.checksum.as_deref()),
            )
            .await;
            let live = match allow_shrink {
                true => Ok(None),
                false => current_count(&helper.client, plan).await,
            };
            (verified, live)
        };
        // What the old table has beyond floe's own key and indexes.
        let mut carried = carry::read(&self.session.client, plan, staging).await?;
        let ((verified, live), times) = build(
            &self.session.client,
            &helper.client,
            plan,
            staging,
            &mut carried,
            beside,
        )
        .await?;
        tracing::info!(
            table = %plan.table,
            index_build = ?times.index_build,
            verify = ?times.beside,
            "indexes built; staged rows verified"
        );
        let final_count = verified?;
        if cancel.is_cancelled() {
            return Err(PipelineError::Cancelled {
                table: plan.table.clone(),
            });
        }
        shrink_guard(plan, live?, final_count, self.load.max_shrink)?;
        Ok(Verified {
            final_count,
            times,
            carried,
        })
    }

    /// The swap, and what it left when its answer was lost.
    async fn swap_in(
        &self,
        verified: Verified,
        cancel: &Cancel,
        state: &FullRefreshed,
    ) -> Result<Committed, PipelineError> {
        let Verified {
            final_count,
            times,
            carried,
        } = verified;
        let swap_started = Instant::now();
        let swapped = swap(
            &self.session,
            &self.plan,
            &self.staging,
            &carried,
            &[state.upsert_sql()],
            cancel,
        )
        .await;
        let committed = Committed {
            final_count,
            index_build: times.index_build,
            verify: times.beside,
            swap: swap_started.elapsed(),
        };
        match swapped {
            Ok(()) => Ok(committed),
            Err(e) if answer_lost(&e) => match self.swap_committed(state).await {
                Some(true) => {
                    tracing::warn!(table = %self.plan.table, "the swap's answer was lost, but it committed: {e}");
                    Ok(committed)
                }
                Some(false) => Err(e),
                None => Err(PipelineError::SwapUnknown {
                    table: self.plan.table.clone(),
                    cause: e.to_string(),
                }),
            },
            Err(e) => Err(e),
        }
    }

    /// Whether this run's swap committed, read on a fresh session (the swap
    /// writes the run's id into `floe.sync_state` in its transaction);
    /// `None` if the target cannot be asked.
    async fn swap_committed(&self, state: &FullRefreshed) -> Option<bool> {
        let session = self
            .target
            .connect(
                &application_name(&[&self.plan.target, self.run_id, "check"]),
                self.load,
            )
            .await
            .ok()?;
        super::state::last_run_id(&session.client, &state.target)
            .await
            .ok()
            .map(|run_id| run_id.as_deref() == Some(self.run_id))
    }
}

/// What the verification hands the swap.
struct Verified {
    final_count: u64,
    times: BuildTimes,
    carried: Carried,
}

/// An error that leaves open whether the server committed: the connection
/// went (no answer), as opposed to an error the server reported.
fn answer_lost(e: &PipelineError) -> bool {
    matches!(e, PipelineError::Postgres { source, .. } if source.code().is_none())
}

/// Whether replacing `old` rows with `new` empties the table or shrinks it
/// by more than `max_shrink` (a fraction): a source that returned nothing,
/// or far too little, is far more often broken than really changed.
pub fn shrink_refused(old: u64, new: u64, max_shrink: f64) -> bool {
    let floor = (old as f64 * (1.0 - max_shrink)).ceil() as u64;
    old > 0 && (new == 0 || new < floor)
}

/// Refuses a swap the shrink guard forbids; `live: None` (no table yet, or
/// `--allow-shrink`) allows anything.
pub fn shrink_guard(
    plan: &TablePlan,
    live: Option<u64>,
    new: u64,
    max_shrink: f64,
) -> Result<(), PipelineError> {
    match live {
        Some(old) if shrink_refused(old, new, max_shrink) => Err(PipelineError::Shrink {
            table: plan.table.clone(),
            old,
            new,
            max_shrink_pct: (max_shrink * 100.0).round() as u32,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> TablePlan {
        TablePlan {
            table: "t".into(),
            schema: "public".into(),
            target: "t_cache".into(),
            columns: Vec::new(),
            primary_key: vec!["id".into()],
            indexes: Vec::new(),
            lock_timeout: Duration::from_secs(1),
            swap_lock_wait: Duration::from_millis(200),
            dependent_matviews: Default::default(),
        }
    }

    #[test]
    fn the_shrink_guard_refuses_emptying_or_shrinking_past_max_shrink() {
        let p = plan();
        // 2,000 rows, max_shrink 0.5: 1,000 is the floor.
        assert!(shrink_guard(&p, Some(2_000), 1_000, 0.5).is_ok());
        let e = shrink_guard(&p, Some(2_000), 999, 0.5)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("refusing to replace 2000 rows with 999") && e.contains("50%"),
            "{e}"
        );
        assert!(shrink_guard(&p, Some(2_000), 0, 0.5).is_err());
        // Emptying is refused even when any shrink is allowed; growing never is.
        assert!(shrink_refused(10, 0, 1.0));
        assert!(!shrink_refused(10, 1, 1.0));
        assert!(!shrink_refused(10, 11, 0.0));
        assert!(shrink_refused(10, 9, 0.0));
        // No live table (first load) or --allow-shrink: nothing to guard.
        assert!(shrink_guard(&p, None, 0, 0.5).is_ok());
        assert!(!shrink_refused(0, 0, 0.5));
        // The floor rounds up: 3 rows at 0.5 keep at least 2.
        assert!(shrink_refused(3, 1, 0.5));
        assert!(!shrink_refused(3, 2, 0.5));
    }
}
