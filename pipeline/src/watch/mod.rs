//! `floe watch`: the sync as a service. Each table gets its scheduled full
//! refresh (cron) and, every interval, an incremental run if and only if
//! its source changed; tables run concurrently under one budget; failures
//! back off; replicas share the tables; `/metrics`, `/healthz`, `/status`.
//!
//! The scheduler is level-triggered on state kept in Postgres, not in the
//! process: a full refresh is due when `floe.sync_state.last_full_refresh`
//! is older than the cron's latest time (so one missed while floe was down
//! runs at start-up, and a replica that finds it done does nothing), and a
//! table changed when Snowflake's `SYSTEM$LAST_CHANGE_COMMIT_TIME` differs
//! from the change token stored with its watermark. Any number of
//! processes can therefore watch one target: the table's advisory lock
//! decides who loads it, the other skips the tick.

mod http;
mod lease;
mod metrics;
mod state;
mod tokens;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use schemas::config::Config;
use schemas::watch::Schedule;
use tokio::sync::{broadcast, Semaphore};
use tokio::task::JoinSet;

pub use http::serve;
pub use state::{Health, LastRun, TableStatus, WatchStatus};

use lease::Lease;
use tokens::ChangeTokens;

use crate::postgres::runs::RunMode;
use crate::postgres::{application_name, Target};
use crate::run::{
    new_run_id, run_table, Cancel, Canceller, KeptSession, RunOptions, SnapshotPlan, TableReport,
};
use crate::PipelineError;

/// How often the scheduler looks at its tables (cheap: nothing is asked of
/// Postgres or Snowflake unless something is due).
const TICK: Duration = Duration::from_millis(250);

/// `floe.sync_state` is read at least this often (lag, health) when no
/// table's interval asks for it sooner.
const STATE_EVERY: Duration = Duration::from_secs(15);

/// A failing table's first retry; doubled per failure, capped at its interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// The retry cap of a table without an incremental interval.
const RETRY_CAP: Duration = Duration::from_secs(300);

/// One watcher: its tables, their schedules, and the state `/status` and
/// `/metrics` read. Build with [`Watch::new`], run with [`Watch::run`].
pub struct Watch {
    config: Arc<Config>,
    target: Arc<Target>,
    snapshots: Option<SnapshotPlan>,
    shared: Arc<Shared>,
}

/// What the scheduler, its jobs and the HTTP side share.
pub(crate) struct Shared {
    tables: Mutex<BTreeMap<String, TableState>>,
    health: Mutex<Health>,
    metrics: metrics::Metrics,
    change_checks: AtomicU64,
    /// Every finished run (not the skipped ones), for whoever prints them.
    reports: broadcast::Sender<TableReport>,
    max_concurrent: usize,
}

/// One table as the scheduler sees it.
#[derive(Debug, Clone)]
pub(crate) struct TableState {
    schedule: Schedule,
    target: String,
    /// The object whose change token says "changed" (`None`: not a
    /// Snowflake table, so no incremental runs).
    changes_from: Option<String>,
    /// Queued or running, and in which mode (`Full` once a full refresh
    /// superseded a queued incremental run).
    running: Option<(RunMode, Arc<AtomicBool>)>,
    next_incremental: Option<DateTime<Utc>>,
    retry_at: Option<DateTime<Utc>>,
    consecutive_failures: u32,
    last_run: Option<LastRun>,
    last_success: Option<DateTime<Utc>>,
    /// When a change check last found the stored token current: the cache
    /// was up to date then, though its watermark did not move (nothing ran).
    confirmed: Option<DateTime<Utc>>,
    /// From `floe.sync_state` (`None` until read, or never loaded).
    stored: Option<Stored>,
}

/// A table's `floe.sync_state` row, as last read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stored {
    watermark: Option<DateTime<Utc>>,
    last_full_refresh: DateTime<Utc>,
    change_token: Option<String>,
}

impl TableState {
    /// How far behind Snowflake the cache may be: since its watermark, or
    /// since a change check last found nothing new, whichever is later (an
    /// idle table's watermark stands still while it is current).
    pub(crate) fn lag_seconds(&self, now: DateTime<Utc>) -> Option<f64> {
        let w = self.stored.as_ref()?.watermark?;
        let current = self.confirmed.map_or(w, |c| c.max(w));
        Some((now - current).num_milliseconds().max(0) as f64 / 1e3)
    }

    /// A full refresh is due: the cron's latest time has passed since the
    /// last one (or there never was one).
    fn full_due(&self, now: DateTime<Utc>) -> bool {
        let Some(due) = self.schedule.last_full_due(now) else {
            return false;
        };
        self.stored
            .as_ref()
            .is_none_or(|s| s.last_full_refresh < due)
    }
}

impl Watch {
    /// A watcher of `tables` (config names) loading into `target`. The
    /// load budgets (`load.max_in_flight_bytes`,
    /// `snowflake.max_buffered_bytes`) are split among the
    /// `max_concurrent_tables` slots, so they bound the process whatever
    /// runs at once.
    pub fn new(
        config: &Config,
        tables: &[String],
        target: Target,
        snapshots: Option<SnapshotPlan>,
    ) -> Result<Watch, PipelineError> {
        let slots = config.watch.max_concurrent_tables.max(1);
        let mut config = config.clone();
        config.load.max_in_flight_bytes = (config.load.max_in_flight_bytes / slots).max(1 << 20);
        config.snowflake.max_buffered_bytes =
            (config.snowflake.max_buffered_bytes / slots).max(1 << 20);
        let mut states = BTreeMap::new();
        for name in tables {
            let t = &config.tables[name];
            let schedule = config.schedule(name).map_err(|(key, message)| {
                PipelineError::Config(Box::new(schemas::SchemaError::ConfigInvalid {
                    path: config.path.clone(),
                    table: name.clone(),
                    key: format!("watch.{key}"),
                    message,
                }))
            })?;
            let changes_from = match t.source() {
                Some(schemas::config::SourceSpec::Snowflake { .. }) => {
                    t.changes_object().map(str::to_string)
                }
                _ => None,
            };
            states.insert(
                name.clone(),
                TableState {
                    next_incremental: schedule.incremental_every.map(|_| Utc::now()),
                    schedule,
                    target: format!("{}.{}", target.schema, t.target),
                    changes_from,
                    running: None,
                    retry_at: None,
                    consecutive_failures: 0,
                    last_run: None,
                    last_success: None,
                    confirmed: None,
                    stored: None,
                },
            );
        }
        let (reports, _) = broadcast::channel(256);
        let mut metrics = metrics::Metrics::new();
        let shared = Arc::new_cyclic(|weak| {
            metrics.collect_from(weak.clone());
            Shared {
                tables: Mutex::new(states),
                health: Mutex::new(Health::default()),
                metrics,
                change_checks: AtomicU64::new(0),
                reports,
                max_concurrent: slots,
            }
        });
        Ok(Watch {
            config: Arc::new(config),
            target: Arc::new(target),
            snapshots,
            shared,
        })
    }

    /// Finished runs, as they finish.
    pub fn reports(&self) -> broadcast::Receiver<TableReport> {
        self.shared.reports.subscribe()
    }

    /// What `/status` and `/healthz` answer, now.
    pub fn status(&self) -> WatchStatus {
        self.shared.status(Utc::now())
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Runs until `stop` fires, then drains: no new runs; running loads
    /// get `drain_timeout` to finish, then are cancelled (rolled back,
    /// their Snowflake queries aborted, sessions closed) and awaited.
    pub async fn run(&self, stop: Cancel) {
        let slots = Arc::new(Semaphore::new(self.shared.max_concurrent));
        let mut jobs: JoinSet<()> = JoinSet::new();
        let cancellers: Arc<Mutex<HashMap<String, Canceller>>> = Arc::default();
        let mut snowflake = ChangeTokens::new(&self.config);
        let mut last_state_read: Option<tokio::time::Instant> = None;
        let dirty = Arc::new(AtomicBool::new(true));
        tracing::info!(
            tables = self.shared.tables_now().len(),
            slots = self.shared.max_concurrent,
            "floe watch started"
        );
        while !stop.is_cancelled() {
            while jobs.try_join_next().is_some() {}
            self.shared.beat();
            let now = Utc::now();
            let plan = self.shared.plan(now);
            let state_due = last_state_read.is_none_or(|t| t.elapsed() >= STATE_EVERY);
            if plan.wants_state() || state_due || dirty.swap(false, Ordering::AcqRel) {
                if self.read_state().await.is_err() {
                    // Nothing is decided on stale state; `/healthz` says why.
                    dirty.store(true, Ordering::Release);
                    wait(&stop, TICK * 4).await;
                    continue;
                }
                last_state_read = Some(tokio::time::Instant::now());
                for (name, mode, token) in self.decide(now, &plan, &mut snowflake).await {
                    let kept = snowflake.kept();
                    self.launch(
                        &mut jobs,
                        &slots,
                        &cancellers,
                        &dirty,
                        (name, mode, token),
                        kept,
                    );
                }
            }
            wait(&stop, TICK).await;
        }
        tracing::info!(running = jobs.len(), "stopping: no new runs; draining");
        slots.close();
        let drain = self.config.watch.drain_timeout;
        let drained =
            tokio::time::timeout(drain, async { while jobs.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                ?drain,
                "loads still running after the drain timeout: cancelling them"
            );
            for canceller in lock(&cancellers).values() {
                canceller.cancel();
            }
            while jobs.join_next().await.is_some() {}
        }
        // Every run is over: the kept session is ours alone again.
        snowflake.close().await;
        tracing::info!("floe watch stopped");
    }

    /// Reads every watched table's `floe.sync_state` row on a short session.
    async fn read_state(&self) -> Result<(), PipelineError> {
        let read = async {
            let session = self
                .target
                .connect(&application_name(&["watch"]), &self.config.load)
                .await?;
            state::read_stored(&session.client)
                .await
                .map_err(|e| PipelineError::postgres("-", "reading floe.sync_state", e))
        }
        .await;
        let now = Utc::now();
        match read {
            Ok(rows) => {
                self.shared.store(&rows);
                lock(&self.shared.health).postgres_ok(now);
                Ok(())
            }
            Err(e) => {
                tracing::warn!("floe watch cannot read floe.sync_state: {e}");
                lock(&self.shared.health).postgres_failed(now, e.to_string());
                Err(e)
            }
        }
    }

    /// Which tables run now, and how: a due full refresh first; else a
    /// changed table's incremental run (its change token asked of Snowflake).
    async fn decide(
        &self,
        now: DateTime<Utc>,
        plan: &Plan,
        snowflake: &mut ChangeTokens,
    ) -> Vec<(String, RunMode, Option<String>)> {
        let mut launch = Vec::new();
        for name in &plan.supersede {
            // A queued incremental run becomes the due full refresh.
            let tables = lock(&self.shared.tables);
            if let Some((_, full)) = tables.get(name).and_then(|t| t.running.as_ref()) {
                full.store(true, Ordering::Release);
            }
        }
        for name in &plan.candidates {
            let (full_due, check) = {
                let mut tables = lock(&self.shared.tables);
                let Some(t) = tables.get_mut(name) else {
                    continue;
                };
                let full_due = t.full_due(now);
                let incremental_due = t.next_incremental.is_some_and(|n| n <= now);
                if incremental_due {
                    t.next_incremental = t.schedule.incremental_every.map(|every| now + every);
                }
                let check = match (full_due, incremental_due, &t.changes_from) {
                    (false, true, Some(object)) => Some((
                        object.clone(),
                        t.stored.as_ref().and_then(|s| s.change_token.clone()),
                        t.stored.is_some(),
                    )),
                    _ => None,
                };
                (full_due, check)
            };
            if full_due {
                launch.push((name.clone(), RunMode::Full, None));
                continue;
            }
            let Some((object, stored_token, loaded)) = check else {
                continue;
            };
            self.shared.change_checks.fetch_add(1, Ordering::Relaxed);
            let asked = Utc::now();
            match snowflake.token(&object).await {
                Ok(token) => {
                    lock(&self.shared.health).snowflake_ok(Utc::now());
                    // Never loaded, or no token recorded: the incremental
                    // run decides (it falls back to a full refresh).
                    if !loaded || stored_token.is_none() || stored_token != token {
                        launch.push((name.clone(), RunMode::Incremental, token));
                    } else if let Some(t) = lock(&self.shared.tables).get_mut(name) {
                        t.confirmed = Some(asked);
                    }
                }
                Err(e) => {
                    tracing::warn!(table = %name, "change check failed: {e}");
                    lock(&self.shared.health).snowflake_failed(Utc::now(), e.to_string());
                }
            }
        }
        launch
    }

    /// Queues a run of `name`. Once it has a slot it takes the table's
    /// watch lease (another replica holding it: skipped) and checks the
    /// table's state again under it (another replica may have just done
    /// the work: `token` is the change token this run was decided on).
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        jobs: &mut JoinSet<()>,
        slots: &Arc<Semaphore>,
        cancellers: &Arc<Mutex<HashMap<String, Canceller>>>,
        dirty: &Arc<AtomicBool>,
        (name, mode, token): (String, RunMode, Option<String>),
        kept: Option<KeptSession>,
    ) {
        let full = Arc::new(AtomicBool::new(mode == RunMode::Full));
        {
            let mut tables = lock(&self.shared.tables);
            let Some(t) = tables.get_mut(&name) else {
                return;
            };
            t.running = Some((mode, Arc::clone(&full)));
        }
        let (config, target, shared) = (
            Arc::clone(&self.config),
            Arc::clone(&self.target),
            Arc::clone(&self.shared),
        );
        let (slots, cancellers, dirty) =
            (Arc::clone(slots), Arc::clone(cancellers), Arc::clone(dirty));
        let snapshots = self.snapshots.clone();
        jobs.spawn(async move {
            // A closed semaphore: the watcher is stopping; never started.
            let Ok(_slot) = slots.acquire_owned().await else {
                shared.idle(&name);
                return;
            };
            let incremental = !full.load(Ordering::Acquire);
            let Some(_lease) = shared
                .lease(&name, &config, &target, incremental, token)
                .await
            else {
                shared.idle(&name);
                dirty.store(true, Ordering::Release);
                return;
            };
            let (canceller, cancel) = Cancel::new();
            lock(&cancellers).insert(name.clone(), canceller);
            let options = RunOptions {
                run_id: new_run_id(),
                cancel,
                snapshots,
                incremental,
                skip_if_busy: true,
                snowflake: kept,
                ..Default::default()
            };
            let report = run_table(&config, &name, &target, &options, &AtomicU64::new(0)).await;
            lock(&cancellers).remove(&name);
            shared.finished(&name, &report, Utc::now());
            dirty.store(true, Ordering::Release);
        });
    }
}

/// What one tick found to do.
#[derive(Debug, Default)]
struct Plan {
    /// Idle tables whose retry time (if failing) has passed.
    candidates: Vec<String>,
    /// Queued incremental runs a due full refresh supersedes.
    supersede: Vec<String>,
    /// Some candidate's full refresh may be due or its interval is up.
    due: bool,
}

impl Plan {
    fn wants_state(&self) -> bool {
        self.due || !self.supersede.is_empty()
    }
}

impl Shared {
    pub(crate) fn tables_now(&self) -> Vec<(String, TableState)> {
        lock(&self.tables)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub(crate) fn change_checks(&self) -> u64 {
        self.change_checks.load(Ordering::Relaxed)
    }

    fn beat(&self) {
        lock(&self.health).scheduler_beat(Utc::now());
    }

    fn plan(&self, now: DateTime<Utc>) -> Plan {
        let tables = lock(&self.tables);
        let mut plan = Plan::default();
        for (name, t) in tables.iter() {
            match &t.running {
                Some((RunMode::Incremental, full)) if !full.load(Ordering::Acquire) => {
                    if t.full_due(now) {
                        plan.supersede.push(name.clone());
                    }
                }
                Some(_) => {}
                None if t.retry_at.is_some_and(|r| r > now) => {}
                None => {
                    let incremental_due = t.next_incremental.is_some_and(|n| n <= now);
                    let full_maybe = t.schedule.last_full_due(now).is_some_and(|due| {
                        t.stored.as_ref().is_none_or(|s| s.last_full_refresh < due)
                    });
                    plan.due |= incremental_due || full_maybe;
                    plan.candidates.push(name.clone());
                }
            }
        }
        plan
    }

    fn store(&self, rows: &HashMap<String, Stored>) {
        let mut tables = lock(&self.tables);
        for t in tables.values_mut() {
            t.stored = rows.get(&t.target).cloned();
        }
    }

    /// The table's watch lease, if no other replica holds it and the run
    /// is still wanted by the state as it is now. `None`: skip it.
    async fn lease(
        &self,
        name: &str,
        config: &Config,
        target: &Target,
        incremental: bool,
        token: Option<String>,
    ) -> Option<Lease> {
        let table_target = lock(&self.tables).get(name)?.target.clone();
        let lease = match Lease::take(target, config, &table_target).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                tracing::debug!(table = name, "another floe watch is on it: skipped");
                return None;
            }
            Err(e) => {
                tracing::warn!(table = name, "cannot take the watch lease: {e}");
                lock(&self.health).postgres_failed(Utc::now(), e.to_string());
                return None;
            }
        };
        let fresh = match state::read_stored(&lease.session.client).await {
            Ok(mut rows) => rows.remove(&table_target),
            Err(e) => {
                tracing::warn!(table = name, "cannot read floe.sync_state: {e}");
                return None;
            }
        };
        let mut tables = lock(&self.tables);
        let t = tables.get_mut(name)?;
        t.stored = fresh;
        let wanted = match incremental {
            false => t.full_due(Utc::now()),
            true => t
                .stored
                .as_ref()
                .is_none_or(|s| s.change_token.is_none() || s.change_token != token),
        };
        wanted.then_some(lease)
    }

    fn idle(&self, name: &str) {
        if let Some(t) = lock(&self.tables).get_mut(name) {
            t.running = None;
        }
    }

    /// Books a finished run: status, failures and retry time, metrics.
    fn finished(&self, name: &str, report: &TableReport, now: DateTime<Utc>) {
        {
            let mut tables = lock(&self.tables);
            let Some(t) = tables.get_mut(name) else {
                return;
            };
            t.running = None;
            match report.status.as_str() {
                "skipped" => {}
                "success" => {
                    t.consecutive_failures = 0;
                    t.retry_at = None;
                    t.last_success = Some(now);
                }
                _ => {
                    t.consecutive_failures += 1;
                    let cap = t.schedule.incremental_every.unwrap_or(RETRY_CAP);
                    let backoff = FIRST_RETRY
                        .saturating_mul(1 << (t.consecutive_failures - 1).min(16))
                        .min(cap);
                    t.retry_at = Some(now + backoff);
                    tracing::warn!(
                        table = name,
                        failures = t.consecutive_failures,
                        retry_in = ?backoff,
                        error = report.error.as_deref().unwrap_or(""),
                        "run failed"
                    );
                }
            }
            if report.status != "skipped" {
                t.last_run = Some(LastRun::of(report, now));
            }
        }
        if report.status != "skipped" {
            self.metrics.record(report);
            let _ = self.reports.send(report.clone());
        }
    }

    pub(crate) fn render_metrics(&self) -> String {
        self.metrics.render()
    }
}

async fn wait(stop: &Cancel, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.cancelled() => {}
    }
}

/// The watcher's locks guard plain data and are never held across an
/// await; a poisoned one (a panic elsewhere) still holds usable data.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 2, h, m, 0).unwrap()
    }

    fn watch(every: &str) -> Watch {
        let text = format!(
            "[watch]\nfull_refresh = \"0 4 * * *\"\nincremental_every = \"{every}\"\n\
             [tables.t]\nsnowflake_table = \"T\"\ntarget = \"t_cache\"\nprimary_key = [\"id\"]\n"
        );
        let config = Config::parse(&text, std::path::Path::new("floe.toml")).expect("config");
        let target = Target::resolve(&config.target).expect("target");
        Watch::new(&config, &["t".to_string()], target, None).expect("watch")
    }

    fn set(w: &Watch, f: impl FnOnce(&mut TableState)) {
        f(lock(&w.shared.tables).get_mut("t").expect("table"))
    }

    fn stored(last_full: DateTime<Utc>) -> Option<Stored> {
        Some(Stored {
            watermark: Some(last_full),
            last_full_refresh: last_full,
            change_token: Some("1".into()),
        })
    }

    #[test]
    fn a_full_refresh_is_due_once_the_cron_time_passed_since_the_last_one() {
        let w = watch("1m");
        // Never loaded: due at once.
        let plan = w.shared.plan(at(3, 0));
        assert!(plan.due && plan.candidates == ["t"]);
        set(&w, |t| t.stored = stored(at(3, 30)));
        let t = w.shared.tables_now().remove(0).1;
        assert!(!t.full_due(at(3, 59)), "4 AM has not come yet");
        assert!(t.full_due(at(4, 0)), "4 AM came");
        assert!(t.full_due(at(9, 0)), "missed while down: still due");
        set(&w, |t| t.stored = stored(at(4, 1)));
        assert!(!w.shared.tables_now()[0].1.full_due(at(9, 0)), "done today");
    }

    #[test]
    fn a_due_full_refresh_supersedes_a_queued_incremental_run() {
        let w = watch("1m");
        let full = Arc::new(AtomicBool::new(false));
        set(&w, |t| {
            t.stored = stored(at(3, 0));
            t.running = Some((RunMode::Incremental, Arc::clone(&full)));
        });
        assert!(w.shared.plan(at(3, 59)).supersede.is_empty());
        let plan = w.shared.plan(at(4, 0));
        assert_eq!(plan.supersede, ["t"]);
        assert!(
            plan.candidates.is_empty(),
            "a queued table is not run twice"
        );
    }

    #[test]
    fn a_failing_table_waits_for_its_retry_and_the_backoff_is_capped_at_its_interval() {
        let w = watch("5s");
        set(&w, |t| t.stored = stored(at(4, 30)));
        let failed = |w: &Watch, now| {
            let report = TableReport {
                status: crate::postgres::runs::RunStatus::Failed,
                table: "t_cache".into(),
                name: "t".into(),
                mode: RunMode::Incremental,
                reason: None,
                rows_synced: 0,
                final_count: None,
                seconds: 0.1,
                error: Some("boom".into()),
                invalid_geometries: 0,
                snapshot: None,
                stages: None,
                changes: None,
            };
            w.shared.finished("t", &report, now);
            w.shared.tables_now()[0].1.retry_at.expect("a retry time") - now
        };
        let delays: Vec<i64> = (0..5).map(|_| failed(&w, at(5, 0)).num_seconds()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        assert!(w.shared.plan(at(5, 0)).candidates.is_empty());
        assert_eq!(
            w.shared
                .plan(at(5, 0) + chrono::Duration::seconds(6))
                .candidates,
            ["t"]
        );
        let status = w.status();
        assert_eq!(status.tables[0].state, "failing");
        assert_eq!(status.tables[0].consecutive_failures, 5);
    }
}
