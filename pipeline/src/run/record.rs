//! A run's row in `floe.sync_runs`: written when it starts, completed when
//! it ends, on a bookkeeping session of its own so the record never waits on
//! the load (and survives a load whose connection died).

use schemas::config::Config;

use crate::postgres::runs::{self, Outcome, RunMode};
use crate::postgres::{application_name, Session, Target};

/// The open record of one table's run.
pub(super) struct Record<'a> {
    config: &'a Config,
    target: &'a Target,
    name: &'a str,
    run_id: &'a str,
    /// `None`: the target could not take the record (the load says why).
    session: Option<Session>,
}

impl<'a> Record<'a> {
    /// Opens the bookkeeping session and makes sure `floe.sync_runs` is
    /// there, writing nothing yet: done beside taking the table's lock, so
    /// a run skipped as busy leaves no record. A target that cannot take
    /// the record only costs a warning (the load itself will report why it
    /// cannot connect).
    pub(super) async fn open(
        config: &'a Config,
        target: &'a Target,
        name: &'a str,
        run_id: &'a str,
    ) -> Record<'a> {
        let mut record = Record {
            config,
            target,
            name,
            run_id,
            session: None,
        };
        let Ok(session) = record.connect().await else {
            return record;
        };
        match runs::ensure(&session.client).await {
            Ok(()) => record.session = Some(session),
            Err(e) => tracing::warn!(table = name, "cannot record the run in floe.sync_runs: {e}"),
        }
        record
    }

    /// Records the run as `running` (call holding the table's lock).
    pub(super) async fn start(&mut self, mode: RunMode, source: &str) {
        let Some(session) = &self.session else {
            return;
        };
        let t = &self.config.tables[self.name];
        let target_name = format!("{}.{}", self.target.schema, t.target);
        if let Err(e) = runs::start(
            &session.client,
            self.run_id,
            self.name,
            &target_name,
            mode,
            source,
        )
        .await
        {
            tracing::warn!(
                table = self.name,
                "cannot record the run in floe.sync_runs: {e}"
            );
            self.session = None;
        }
    }

    /// Records how the run ended. The bookkeeping connection may have died
    /// with the failure (a restarted server): then on a fresh one.
    pub(super) async fn finish(self, outcome: &Outcome<'_>) {
        let Some(session) = &self.session else {
            return;
        };
        let mut recorded = runs::finish(&session.client, self.run_id, self.name, outcome).await;
        if recorded.is_err() {
            if let Ok(fresh) = self.connect().await {
                recorded = runs::finish(&fresh.client, self.run_id, self.name, outcome).await;
            }
        }
        if let Err(e) = recorded {
            tracing::warn!(
                table = self.name,
                "cannot record the run in floe.sync_runs: {e}"
            );
        }
    }

    async fn connect(&self) -> Result<Session, crate::PipelineError> {
        let t = &self.config.tables[self.name];
        self.target
            .connect(
                &application_name(&[&t.target, self.run_id, "record"]),
                &self.config.load,
            )
            .await
    }
}

/// Rows in the target as it stands (after a failure: the untouched old table).
pub(super) async fn current_count(
    config: &Config,
    name: &str,
    target: &Target,
    run_id: &str,
) -> Option<u64> {
    let t = &config.tables[name];
    let session = target
        .connect(
            &application_name(&[&t.target, run_id, "count"]),
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
