//! Incremental apply: a window of changes written into the live table in
//! place, the second way to load a table (the first is the staged refresh).
//!
//! The changed rows and the deleted keys are COPYed into temporary tables
//! first (same encoder, same value checks as a full refresh); only then one
//! short transaction deletes, upserts, counts, moves the watermark and
//! commits. Nothing in it waits on Snowflake, and it takes only row locks:
//! readers are never blocked, and see the whole window or none of it.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::physical_plan::SendableRecordBatchStream;
use schemas::config::LoadConfig;
use schemas::pg::{quote_ident, quote_qualified, PgColumn};
use tokio_postgres::Client;

use super::copy::{copy_stream, Encoding};
use super::encode::CopyEncoder;
use super::refresh::{shrink_guard, FromTarget, TablePlan};
use super::state::{self, SourcePoint, SyncState};
use super::{application_name, Session, Target};
use crate::incremental::Fallback;
use crate::PipelineError;

/// The temporary tables of one apply (session-private, gone with the session).
const UPSERTS: &str = "floe_upserts";
const DELETED: &str = "floe_deleted";

/// An incremental apply holding its table. What a caller may rely on:
///
/// - [`InPlaceApply::lock`] takes the table's advisory lock, the same one a
///   full refresh takes (the two never overlap; another run holding it is
///   [`PipelineError::Busy`]), and reads the table's `floe.sync_state`.
/// - [`InPlaceApply::stage`] checks the target has the transform's columns
///   and key (else a fallback reason) and creates the temporary tables;
///   the `copy_*` methods fill them, refusing a NULL upserted where the
///   target is `NOT NULL` (naming the row). None of this is visible to readers.
/// - [`InPlaceApply::commit`] applies in one transaction and commits only
///   if the target then holds exactly the source's count (else
///   [`Fallback::Verification`], nothing applied) and the shrink guard
///   allows it; the watermark moves in the same transaction.
/// - Any error, or a drop, before `commit` returns `Ok` leaves rows and
///   watermark as they were (a drop closes the session: the server rolls
///   back and drops the temporary tables).
pub struct InPlaceApply {
    session: Session,
    table: String,
    schema: String,
    target: String,
    /// Set by [`InPlaceApply::stage`].
    plan: Option<TablePlan>,
    /// The target's `NOT NULL` columns, read by [`InPlaceApply::stage`]:
    /// the upserts' encoder refuses a NULL there, naming the row, before
    /// the apply's statement would.
    not_null: Vec<String>,
}

/// Why an apply did not commit.
#[derive(Debug)]
pub enum NotApplied {
    /// The window cannot be applied in place: do a full refresh.
    FallBack(Fallback),
    Failed(PipelineError),
}

impl From<PipelineError> for NotApplied {
    fn from(e: PipelineError) -> Self {
        NotApplied::Failed(e)
    }
}

/// What a committed apply did.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub final_count: u64,
    /// The apply transaction alone, BEGIN to COMMIT.
    pub transaction: Duration,
}

impl InPlaceApply {
    /// Connects and reads the table's state (`None`: no row). Call holding
    /// the table's [`crate::postgres::table_lock::TableLock`].
    pub async fn open(
        target: &Target,
        load: &LoadConfig,
        table: &str,
        target_table: &str,
        run_id: &str,
    ) -> Result<(InPlaceApply, Option<SyncState>), PipelineError> {
        let session = target
            .connect(&application_name(&[target_table, run_id]), load)
            .await?;
        let apply = InPlaceApply {
            session,
            table: table.to_string(),
            schema: target.schema.clone(),
            target: target_table.to_string(),
            plan: None,
            not_null: Vec::new(),
        };
        let state = state::read(&apply.session.client, &apply.qualified_target())
            .await
            .map_err(|e| apply.pg("reading floe.sync_state", e))?;
        Ok((apply, state))
    }

    /// The session holding the table's lock.
    pub fn client(&self) -> &Client {
        &self.session.client
    }

    /// `schema.table`, as `sync_state` and `sync_runs` name the target.
    pub fn qualified_target(&self) -> String {
        format!("{}.{}", self.schema, self.target)
    }

    fn pg(&self, step: &'static str, e: tokio_postgres::Error) -> PipelineError {
        PipelineError::postgres(&self.table, step, e)
    }

    /// Checks the target against `plan` (the transform's columns and key)
    /// and creates the temporary tables.
    pub async fn stage(&mut self, plan: TablePlan) -> Result<(), NotApplied> {
        let client = Arc::clone(&self.session.client);
        let temp = temp_plan(&plan, plan.columns.clone());
        let keys = deleted_plan(&plan);
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS pg_temp.{UPSERTS}, pg_temp.{DELETED}; {}; {}",
                temp.create_sql(UPSERTS, &FromTarget::default()),
                keys.create_sql(DELETED, &FromTarget::default())
            ))
            .await
            .map_err(|e| self.pg("creating the temporary tables", e))?;
        let target = quote_qualified(&self.schema, &self.target);
        self.not_null = match self.read_target(&client, &target, &plan).await? {
            Ok(not_null) => not_null,
            Err(reason) => return Err(NotApplied::FallBack(reason)),
        };
        self.plan = Some(plan);
        Ok(())
    }

    /// The target's `NOT NULL` columns when its columns (name and type) and
    /// key are what the transform writes; else why not (missing, or other).
    async fn read_target(
        &self,
        client: &Client,
        target: &str,
        plan: &TablePlan,
    ) -> Result<Result<Vec<String>, Fallback>, PipelineError> {
        let columns = |table: String| async move {
            let rows = client
                .query(
                    "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute \
                     WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped \
                     ORDER BY attname",
                    &[&table],
                )
                .await?;
            Ok::<Vec<(String, String, bool)>, tokio_postgres::Error>(
                rows.iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect(),
            )
        };
        let have = columns(target.to_string())
            .await
            .map_err(|e| self.pg("reading the target's columns", e))?;
        if have.is_empty() {
            return Ok(Err(Fallback::TargetMissing));
        }
        let want = columns(format!("pg_temp.{UPSERTS}"))
            .await
            .map_err(|e| self.pg("reading the target's columns", e))?;
        let not_null = have
            .iter()
            .filter(|(_, _, not_null)| *not_null)
            .map(|(name, _, _)| name.clone())
            .collect();
        let shape = |columns: Vec<(String, String, bool)>| -> Vec<(String, String)> {
            columns.into_iter().map(|(n, t, _)| (n, t)).collect()
        };
        let (have, want) = (shape(have), shape(want));
        if have != want {
            tracing::info!(table = %self.table, ?have, ?want, "the target's columns are not the transform's");
            return Ok(Err(Fallback::TargetShape));
        }
        let mut key = plan.primary_key.clone();
        key.sort();
        let keyed: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = to_regclass($1) \
                 AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL \
                 AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text) FROM pg_attribute a \
                      WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)) = $2::text[])",
                &[&target, &key],
            )
            .await
            .map_err(|e| self.pg("reading the target's key", e))?
            .get(0);
        Ok(match keyed {
            true => Ok(not_null),
            false => Err(Fallback::TargetShape),
        })
    }

    fn staged(&self) -> &TablePlan {
        self.plan
            .as_ref()
            .expect("InPlaceApply::stage runs before copying or committing")
    }

    /// COPYs the transform's rows of the changed keys into the temporary
    /// upserts table; returns the rows copied.
    pub async fn copy_upserts(
        &self,
        stream: SendableRecordBatchStream,
        mut encoder: CopyEncoder,
        load: &LoadConfig,
        progress: &AtomicU64,
    ) -> Result<u64, PipelineError> {
        let plan = self.staged();
        encoder.refuse_nulls_in(&self.not_null);
        let temp = temp_plan(plan, plan.columns.clone());
        self.copy_into(&temp, UPSERTS, stream, encoder, load, progress)
            .await
    }

    /// COPYs the deleted keys (the source's key columns, in key order) into
    /// the temporary keys table; returns the keys copied.
    pub async fn copy_deleted(
        &self,
        stream: SendableRecordBatchStream,
        load: &LoadConfig,
    ) -> Result<u64, PipelineError> {
        let plan = self.staged();
        let keys = deleted_plan(plan);
        // (No key named: the rows are the keys, and a NULL one is let
        // through, see `deleted_plan`.)
        let encoder = CopyEncoder::new(&plan.target, &stream.schema(), keys.columns.clone(), &[])?;
        self.copy_into(&keys, DELETED, stream, encoder, load, &AtomicU64::new(0))
            .await
    }

    /// One COPY on the locked session into temporary table `name` (no
    /// checksum: the apply verifies by Snowflake's count).
    async fn copy_into(
        &self,
        temp: &TablePlan,
        name: &str,
        stream: SendableRecordBatchStream,
        encoder: CopyEncoder,
        load: &LoadConfig,
        progress: &AtomicU64,
    ) -> Result<u64, PipelineError> {
        let encoding = Encoding {
            encoder,
            checksum: None,
        };
        let client = [Arc::clone(&self.session.client)];
        let copied = copy_stream(
            &client,
            temp,
            name,
            stream,
            encoding,
            load.max_in_flight_bytes,
            progress,
        )
        .await?;
        Ok(copied.rows)
    }

    /// Refuses two upserted rows with one key, naming the first such key;
    /// then gathers the temporary tables' statistics for the apply's plan.
    pub async fn check_keys(&self) -> Result<(), PipelineError> {
        let plan = self.staged();
        let client = &self.session.client;
        let keys: Vec<String> = plan.primary_key.iter().map(|k| quote_ident(k)).collect();
        let texts: Vec<String> = keys.iter().map(|k| format!("{k}::text")).collect();
        let dup = client
            .query_opt(
                &format!(
                    "SELECT concat_ws(', ', {}) FROM pg_temp.{UPSERTS} GROUP BY {} HAVING count(*) > 1 LIMIT 1",
                    texts.join(", "),
                    keys.join(", ")
                ),
                &[],
            )
            .await
            .map_err(|e| self.pg("looking for duplicate keys", e))?;
        if let Some(row) = dup {
            return Err(PipelineError::DuplicateKey {
                table: plan.table.clone(),
                key: plan.primary_key.join(", "),
                value: row.get(0),
            });
        }
        client
            .batch_execute(&format!("ANALYZE pg_temp.{UPSERTS}, pg_temp.{DELETED}"))
            .await
            .map_err(|e| self.pg("analyzing the temporary tables", e))
    }

    /// The apply transaction (see the type's contract): `expected` is the
    /// source's count at the window's end, `point` the new watermark.
    pub async fn commit(
        self,
        expected: u64,
        point: &SourcePoint,
        run_id: &str,
        load: &LoadConfig,
        allow_shrink: bool,
    ) -> Result<Applied, NotApplied> {
        self.apply(expected, point, run_id, load, allow_shrink)
            .await
    }

    async fn apply(
        &self,
        expected: u64,
        point: &SourcePoint,
        run_id: &str,
        load: &LoadConfig,
        allow_shrink: bool,
    ) -> Result<Applied, NotApplied> {
        let plan = self.staged();
        let sql = ApplySql::new(plan);
        let started = Instant::now();
        // A transaction on a `&Client`: BEGIN … COMMIT by hand (the session
        // closes, rolling back, if anything fails in between).
        let client = &self.session.client;
        let step =
            |step| move |e| NotApplied::Failed(PipelineError::postgres(&plan.table, step, e));
        client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = '{}ms'",
                plan.lock_timeout.as_millis()
            ))
            .await
            .map_err(step("starting the apply"))?;
        let rolled_back = |outcome: NotApplied| async move {
            let _ = client.batch_execute("ROLLBACK").await;
            Err::<Applied, NotApplied>(outcome)
        };
        let deleted = match client.execute(&sql.delete, &[]).await {
            Ok(n) => n,
            Err(e) => return rolled_back(step("deleting the deleted keys")(e)).await,
        };
        let (inserted, updated) = match client.query_one(&sql.upsert, &[]).await {
            Ok(r) => (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64),
            Err(e) => return rolled_back(step("upserting the changed rows")(e)).await,
        };
        let count = match client.query_one(&sql.count, &[]).await {
            Ok(r) => r.get::<_, i64>(0) as u64,
            Err(e) => return rolled_back(step("counting the applied table")(e)).await,
        };
        if count != expected {
            tracing::warn!(
                table = %plan.table,
                count,
                expected,
                "the applied window does not leave Snowflake's count; rolled back"
            );
            return rolled_back(NotApplied::FallBack(Fallback::Verification)).await;
        }
        let before = (count + deleted).saturating_sub(inserted);
        let live = (!allow_shrink).then_some(before);
        if let Err(e) = shrink_guard(plan, live, count, load.max_shrink) {
            return rolled_back(NotApplied::Failed(e)).await;
        }
        match state::advance(client.as_ref(), &self.qualified_target(), run_id, point).await {
            Ok(1) => {}
            Ok(_) => {
                // The state row vanished since the run read it: start over from a full refresh.
                return rolled_back(NotApplied::FallBack(Fallback::NoWatermark)).await;
            }
            Err(e) => return rolled_back(step("moving the watermark")(e)).await,
        }
        client
            .batch_execute("COMMIT")
            .await
            .map_err(step("committing the apply"))?;
        Ok(Applied {
            inserted,
            updated,
            deleted,
            final_count: count,
            transaction: started.elapsed(),
        })
    }
}

/// `plan` written into a temporary table with `columns`.
fn temp_plan(plan: &TablePlan, columns: Vec<PgColumn>) -> TablePlan {
    TablePlan {
        schema: "pg_temp".into(),
        columns,
        indexes: Vec::new(),
        ..plan.clone()
    }
}

/// The deleted keys' temporary table: the key columns, in key order, not
/// declared `NOT NULL` (a NULL key deleted at the source matches no row of
/// the target, whose key is never NULL: it deletes nothing, as before).
fn deleted_plan(plan: &TablePlan) -> TablePlan {
    TablePlan {
        primary_key: Vec::new(),
        ..temp_plan(plan, key_columns(plan))
    }
}

/// The key columns, in key order.
fn key_columns(plan: &TablePlan) -> Vec<PgColumn> {
    plan.primary_key
        .iter()
        .filter_map(|k| plan.columns.iter().find(|c| &c.name == k).cloned())
        .collect()
}

/// The apply transaction's statements.
struct ApplySql {
    /// Deletes the deleted keys that are not upserted again (an update
    /// deletes and re-inserts its key: it is an update, not a delete).
    delete: String,
    /// Upserts the changed rows; answers (inserted, updated).
    upsert: String,
    count: String,
}

impl ApplySql {
    fn new(plan: &TablePlan) -> ApplySql {
        let target = quote_qualified(&plan.schema, &plan.target);
        let keys: Vec<String> = plan.primary_key.iter().map(|k| quote_ident(k)).collect();
        let on = |a: &str, b: &str| {
            keys.iter()
                .map(|k| format!("{a}.{k} = {b}.{k}"))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let delete = format!(
            "DELETE FROM {target} t USING pg_temp.{DELETED} d WHERE {} \
             AND NOT EXISTS (SELECT 1 FROM pg_temp.{UPSERTS} u WHERE {})",
            on("t", "d"),
            on("u", "d")
        );
        let cols: Vec<String> = plan.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let sets: Vec<String> = plan
            .columns
            .iter()
            .filter(|c| !plan.primary_key.contains(&c.name))
            .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(&c.name)))
            .collect();
        let on_conflict = match sets.is_empty() {
            true => "DO NOTHING".to_string(),
            false => format!("DO UPDATE SET {}", sets.join(", ")),
        };
        let upsert = format!(
            "WITH up AS (INSERT INTO {target} AS t ({cols}) SELECT {cols} FROM pg_temp.{UPSERTS} \
             ON CONFLICT ({keys}) {on_conflict} RETURNING (t.xmax = 0) AS inserted) \
             SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up",
            cols = cols.join(", "),
            keys = keys.join(", "),
        );
        let count = format!("SELECT count(*) FROM {target}");
        ApplySql {
            delete,
            upsert,
            count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::pg::PgType;

    fn plan() -> TablePlan {
        let col = |name: &str, ty: &str| PgColumn {
            name: name.into(),
            ty: ty.parse::<PgType>().unwrap(),
            nullable: true,
        };
        TablePlan {
            table: "t".into(),
            schema: "public".into(),
            target: "t_cache".into(),
            columns: vec![col("id", "bigint"), col("part", "text"), col("v", "text")],
            primary_key: vec!["part".into(), "id".into()],
            indexes: Vec::new(),
            lock_timeout: Duration::from_secs(1),
            swap_lock_wait: Duration::from_millis(200),
            dependent_matviews: Default::default(),
        }
    }

    #[test]
    fn deletes_spare_keys_upserted_again_and_upserts_set_every_non_key_column() {
        let sql = ApplySql::new(&plan());
        assert_eq!(
            sql.delete,
            "DELETE FROM \"public\".\"t_cache\" t USING pg_temp.floe_deleted d \
             WHERE t.\"part\" = d.\"part\" AND t.\"id\" = d.\"id\" AND NOT EXISTS \
             (SELECT 1 FROM pg_temp.floe_upserts u WHERE u.\"part\" = d.\"part\" AND u.\"id\" = d.\"id\")"
        );
        assert!(
            sql.upsert.contains(
                "ON CONFLICT (\"part\", \"id\") DO UPDATE SET \"v\" = EXCLUDED.\"v\" RETURNING"
            ),
            "{}",
            sql.upsert
        );
        let keys_only = TablePlan {
            columns: plan().columns[..2].to_vec(),
            ..plan()
        };
        assert!(ApplySql::new(&keys_only).upsert.contains("DO NOTHING"));
    }

    #[test]
    fn the_deleted_keys_table_has_the_key_columns_in_key_order() {
        let names: Vec<String> = key_columns(&plan()).into_iter().map(|c| c.name).collect();
        assert_eq!(names, vec!["part", "id"]);
        let temp = deleted_plan(&plan());
        assert_eq!(
            temp.copy_sql(DELETED, false),
            "COPY \"pg_temp\".\"floe_deleted\" (\"part\", \"id\") FROM STDIN (FORMAT binary)"
        );
        assert!(!temp
            .create_sql(DELETED, &FromTarget::default())
            .contains("NOT NULL"));
        // The upserts' table declares its key as the target does.
        let upserts = temp_plan(&plan(), plan().columns);
        assert!(upserts
            .create_sql(UPSERTS, &FromTarget::default())
            .contains("\"id\" bigint NOT NULL"));
    }
}
