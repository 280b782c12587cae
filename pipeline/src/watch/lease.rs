//! A table's watch lease: how replicas share tables without overlapping.

use crate::postgres::{application_name, Target};
use crate::PipelineError;
use schemas::config::Config;

/// A table's watch lease: a session-level advisory lock on its own key
/// (not the load's), held for the whole job. Replicas skip a table whose
/// lease another holds, so a replica never even starts a job (its
/// change-token check, its queue) for a table another replica runs.
/// Released when the session closes.
pub(super) struct Lease {
    pub(super) session: crate::postgres::Session,
}

impl Lease {
    pub(super) async fn take(
        target: &Target,
        config: &Config,
        table_target: &str,
    ) -> Result<Option<Lease>, PipelineError> {
        let session = target
            .connect(&application_name(&["watch", "lease"]), &config.load)
            .await?;
        let held: bool = session
            .client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                &[&format!("floe watch {table_target}")],
            )
            .await
            .map_err(|e| PipelineError::postgres(table_target, "taking the watch lease", e))?
            .get(0);
        Ok(held.then_some(Lease { session }))
    }
}
