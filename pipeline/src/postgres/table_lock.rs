//! The table's lock: one floe run per target table at a time.

use schemas::config::LoadConfig;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::{application_name, Session, Target};
use crate::PipelineError;

/// A session-level advisory lock on one target table, on a session of its
/// own, held for a run's whole duration. What a caller may rely on:
///
/// - it is taken first, before the run is recorded as `running` and before
///   any source is read, so two processes never both run a table's
///   Snowflake query, and a `running` record of another run seen while
///   holding it is a dead run's;
/// - full and incremental runs take the same key, so they never overlap
///   (an incremental run falling back to a full refresh keeps it);
/// - another run holding it is [`PipelineError::Busy`], at once;
/// - the session holds no transaction (it is idle, never idle *in
///   transaction*); the lock goes with [`TableLock::release`], or when the
///   session closes however floe ends.
pub struct TableLock {
    session: Session,
    schema: String,
    target: String,
}

impl TableLock {
    /// Connects and takes the lock of `schema.target_table`, or answers
    /// [`PipelineError::Busy`].
    pub async fn acquire(
        target: &Target,
        load: &LoadConfig,
        table: &str,
        target_table: &str,
        run_id: &str,
    ) -> Result<TableLock, PipelineError> {
        let session = target
            .connect(&application_name(&[target_table, run_id, "lock"]), load)
            .await?;
        let key = lock_key(&target.schema, target_table);
        let locked: bool = session
            .client
            .query_typed_one(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                &[(&key, Type::TEXT)],
            )
            .await
            .map_err(|e| PipelineError::postgres(table, "taking the table's advisory lock", e))?
            .get(0);
        if !locked {
            return Err(PipelineError::Busy {
                table: table.to_string(),
                target: target_table.to_string(),
            });
        }
        Ok(TableLock {
            session,
            schema: target.schema.clone(),
            target: target_table.to_string(),
        })
    }

    /// The lock's session (idle between the run's short statements).
    pub fn client(&self) -> &Client {
        &self.session.client
    }

    /// Gives the lock back and closes its session.
    pub async fn release(self) {
        let key = lock_key(&self.schema, &self.target);
        let _ = self
            .session
            .client
            .query_typed(
                "SELECT pg_advisory_unlock(hashtextextended($1, 0))",
                &[(&key, Type::TEXT)],
            )
            .await;
    }
}

/// The advisory lock key of a target table: one per table.
fn lock_key(schema: &str, target: &str) -> String {
    format!("floe:{schema}.{target}")
}
