//! The statements of each step of the staged refresh (see the module above
//! for the sequence): preparing the staging table under the table's lock,
//! building its indexes on two sessions, verifying, swapping, cleaning up.

use std::time::Duration;

use schemas::config::{DependentMatviews, IndexConfig};
pub use schemas::pg::STAGING_MARK;
use schemas::pg::{fitted_name, name_hash, quote_ident, quote_qualified, PgColumn};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::from_target::FromTarget;
use crate::postgres::checksum;
use crate::PipelineError;

/// Session memory for building indexes after the load.
const MAINTENANCE_WORK_MEM: &str = "256MB";

/// What a refresh writes.
#[derive(Debug, Clone)]
pub struct TablePlan {
    /// floe's name for the table (for messages).
    pub table: String,
    pub schema: String,
    /// The Postgres table.
    pub target: String,
    pub columns: Vec<PgColumn>,
    pub primary_key: Vec<String>,
    pub indexes: Vec<IndexConfig>,
    /// How long the swap keeps trying to lock the target.
    pub lock_timeout: Duration,
    /// How long one swap attempt waits in the lock queue.
    pub swap_lock_wait: Duration,
    pub dependent_matviews: DependentMatviews,
}

impl TablePlan {
    pub(crate) fn qualified(&self, name: &str) -> String {
        quote_qualified(&self.schema, name)
    }

    /// Whether `name` has exactly the shape of one of this target's staging
    /// table names (target, the mark, 1 to 8 lower-case letters or digits).
    fn is_staging_name(&self, name: &str) -> bool {
        name.strip_prefix(&self.target)
            .and_then(|rest| rest.strip_prefix(STAGING_MARK))
            .is_some_and(|tail| {
                (1..=8).contains(&tail.len())
                    && tail
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            })
    }

    /// The staging table's name for a run: target + `__floe_` + 8 id chars
    /// (config limits targets to 48 bytes, so this stays within 63).
    pub fn staging_name(&self, run_id: &str) -> String {
        let tail: String = run_id
            .chars()
            .rev()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(8)
            .collect();
        format!(
            "{}{}{}",
            self.target,
            STAGING_MARK,
            tail.chars().rev().collect::<String>().to_lowercase()
        )
    }

    /// `CREATE TABLE` for the staging table: columns, `NOT NULL` on the
    /// primary key's, and what it takes `from` the target: `NOT NULL` on
    /// the target's own such columns, its validated `CHECK` constraints, its
    /// tablespace. Nothing else (the other constraints come after the load).
    ///
    /// Why these now: added after the load, each takes a scan of the whole
    /// table to check, alone on one core, on the way to the swap: the key's
    /// constraint (`ADD PRIMARY KEY USING INDEX` marks its columns `NOT
    /// NULL`) 15 ms at 153,592 topology rows, 180 ms at 2 million; four
    /// columns a DBA made `NOT NULL` 25 ms at 153,592, 297 ms at 2 million.
    /// Declared here, COPY checks each row as it comes instead; the encoder
    /// has already refused a NULL in such a column, naming the row
    /// ([`crate::postgres::encode::CopyEncoder::refuse_nulls_in`]), and a
    /// row failing a `CHECK` fails the COPY, Postgres naming the constraint
    /// and the row.
    pub(crate) fn create_sql(&self, staging: &str, from: &FromTarget) -> String {
        let mut items: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                let not_null =
                    match self.primary_key.contains(&c.name) || from.not_null.contains(&c.name) {
                        true => " NOT NULL",
                        false => "",
                    };
                format!("{} {}{not_null}", quote_ident(&c.name), c.ty.sql())
            })
            .collect();
        items.extend(from.checks.iter().cloned());
        let tablespace = from
            .tablespace
            .as_ref()
            .map(|t| format!(" TABLESPACE {}", quote_ident(t)))
            .unwrap_or_default();
        format!(
            "CREATE TABLE {} ({}){tablespace}",
            self.qualified(staging),
            items.join(", ")
        )
    }

    /// The COPY statement for the staging table; `frozen` writes the rows
    /// frozen (`FREEZE`: the session must have truncated the table in the
    /// same transaction, see [`TablePlan::frozen_copy_begin`]).
    pub fn copy_sql(&self, staging: &str, frozen: bool) -> String {
        let cols: Vec<String> = self.columns.iter().map(|c| quote_ident(&c.name)).collect();
        format!(
            "COPY {} ({}) FROM STDIN (FORMAT binary{})",
            self.qualified(staging),
            cols.join(", "),
            if frozen { ", FREEZE" } else { "" }
        )
    }

    /// Opens the transaction a frozen COPY needs: rows written frozen are
    /// visible to every snapshot, so a REPEATABLE READ reader whose snapshot
    /// predates the load sees the new rows after the swap, not an empty table.
    pub fn frozen_copy_begin(&self, staging: &str) -> String {
        format!("BEGIN; TRUNCATE {}", self.qualified(staging))
    }

    /// The configured indexes' final names (see [`schemas::config::index_names`]).
    pub(super) fn index_names(&self) -> Vec<String> {
        schemas::config::index_names(&self.target, &self.indexes)
    }

    /// The primary key's final name: `<table>_pkey`.
    pub(super) fn pkey_name(&self) -> String {
        fitted_name(&self.target, "_pkey")
    }

    /// A name for an index or constraint on `staging` until the swap
    /// renames it: short whatever the target's length, and unique to the
    /// staging table (index names are unique per schema, and one run loads
    /// several tables at once).
    pub(super) fn scratch_name(staging: &str, what: &str) -> String {
        format!("floe_{:016x}_{what}", name_hash(staging))
    }
}

pub(super) fn pg<'a>(
    plan: &'a TablePlan,
    step: &'static str,
) -> impl Fn(tokio_postgres::Error) -> PipelineError + 'a {
    move |e| PipelineError::postgres(&plan.table, step, e)
}

/// Loads PostGIS's library into `client`'s backend before the staging
/// table needs it.
///
/// Why: a backend loads PostGIS (with GEOS and PROJ) the first time it
/// meets a geometry type modifier: 8–16 ms here, which the staging table's
/// `CREATE TABLE` would otherwise pay on the run's way to its COPY. Printing
/// the target's geometry and geography column types calls PostGIS's
/// type-modifier output, which loads it; a target without such columns, or
/// not there yet, loads nothing, and nothing here can fail on a missing
/// extension or search path.
pub async fn load_postgis(
    client: &Client,
    table: &str,
    schema: &str,
    target: &str,
) -> Result<(), PipelineError> {
    client
        .query_typed(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             JOIN pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
             AND a.atttypmod >= 0 AND t.typname IN ('geometry', 'geography')",
            &[(&quote_qualified(schema, target), Type::TEXT)],
        )
        .await
        .map_err(|e| PipelineError::postgres(table, "reading the target's geometry columns", e))?;
    Ok(())
}

/// The staging table [`prepare`] made.
#[derive(Debug, Clone)]
pub struct Staging {
    pub name: String,
    /// What it took from the target.
    pub from_target: FromTarget,
}

/// Prepares a load, the caller holding the table's lock
/// ([`crate::postgres::table_lock::TableLock`]): PostGIS and schema, cleanup
/// of orphaned staging tables, and a fresh staging table.
pub async fn prepare(
    client: &Client,
    plan: &TablePlan,
    run_id: &str,
) -> Result<Staging, PipelineError> {
    // Five statements, none depending on another's result, sent together:
    // the session answers them in order, one round trip in all (when
    // nothing is missing) instead of one each on the way to the COPY.
    let postgis = async {
        match plan.columns.iter().any(|c| c.ty.needs_postgis()) {
            true => {
                crate::postgres::create_if_missing(client, "CREATE EXTENSION IF NOT EXISTS postgis")
                    .await
            }
            false => Ok(()),
        }
    };
    let schema = async {
        match plan.schema.as_str() {
            "public" => Ok(()),
            schema => {
                crate::postgres::create_if_missing(
                    client,
                    &format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema)),
                )
                .await
            }
        }
    };
    // The swap records the watermark in floe.sync_state: have the table before loading.
    let state = crate::postgres::state::ensure(client);
    // Holding the lock, a staging table of this target is an orphan of a
    // crashed run: one floe made (its comment says so) with exactly the
    // staging name's shape. Nothing else is dropped, whatever its name.
    let orphan_prefix = format!("{}{}", plan.target, STAGING_MARK);
    let orphans = async {
        client
            .query_typed(
                "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relkind = 'r' AND starts_with(c.relname, $2) \
                 AND starts_with(obj_description(c.oid, 'pg_class'), $3)",
                &[
                    (&plan.schema, Type::TEXT),
                    (&orphan_prefix, Type::TEXT),
                    (&STAGING_COMMENT, Type::TEXT),
                ],
            )
            .await
    };
    // The replacement lives where the table lives, with the target's own
    // `NOT NULL` columns and `CHECK`s from its start.
    let from_target = FromTarget::read(client, plan);
    let (postgis, schema, state, orphans, from_target) =
        tokio::join!(postgis, schema, state, orphans, from_target);
    postgis.map_err(pg(plan, "creating the PostGIS extension"))?;
    schema.map_err(pg(plan, "creating the schema"))?;
    state.map_err(pg(plan, "creating floe.sync_state"))?;
    let orphans = orphans.map_err(pg(plan, "looking for orphaned staging tables"))?;
    let from_target = from_target.map_err(pg(
        plan,
        "reading the target's tablespace, NOT NULL columns and CHECK constraints",
    ))?;
    for row in orphans {
        let name: String = row.get(0);
        if !plan.is_staging_name(&name) {
            continue;
        }
        tracing::info!(table = %plan.table, staging = %name, "dropping staging table left by an earlier run");
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", plan.qualified(&name)))
            .await
            .map_err(pg(plan, "dropping an orphaned staging table"))?;
    }
    let staging = plan.staging_name(run_id);
    client
        .batch_execute(&format!(
            "{}; COMMENT ON TABLE {} IS '{STAGING_COMMENT}{}'",
            plan.create_sql(&staging, &from_target),
            plan.qualified(&staging),
            run_id.replace('\'', "''")
        ))
        .await
        .map_err(pg(plan, "creating the staging table"))?;
    Ok(Staging {
        name: staging,
        from_target,
    })
}

/// How a staging table's comment starts (then the run id): what marks the
/// tables floe made, and so may drop. The swap clears it.
pub const STAGING_COMMENT: &str = "floe staging table of run ";

/// One index to build after the load.
#[derive(Debug)]
pub(super) struct IndexJob {
    pub(super) sql: String,
    pub(super) step: &'static str,
    /// Rough relative cost ([`build_weight`]).
    pub(super) weight: u32,
}

/// Rough relative cost of an index build by method: a GiST/SP-GiST/GIN
/// build (one core, comparing geometries) takes several times a B-tree's
/// over the same rows.
pub(super) fn build_weight(method: &str) -> u32 {
    match method {
        "btree" | "hash" | "brin" => 1,
        _ => 4,
    }
}

fn index_jobs(plan: &TablePlan, staging: &str) -> Vec<IndexJob> {
    let table = plan.qualified(staging);
    let mut jobs = Vec::new();
    if !plan.primary_key.is_empty() {
        let cols: Vec<String> = plan.primary_key.iter().map(|c| quote_ident(c)).collect();
        jobs.push(IndexJob {
            sql: format!(
                "CREATE UNIQUE INDEX {} ON {table} ({})",
                quote_ident(&TablePlan::scratch_name(staging, "pkey")),
                cols.join(", ")
            ),
            step: "building the primary key",
            weight: 1,
        });
    }
    for (i, ix) in plan.indexes.iter().enumerate() {
        let cols: Vec<String> = ix.columns.iter().map(|c| quote_ident(c)).collect();
        jobs.push(IndexJob {
            sql: format!(
                "CREATE INDEX {} ON {table} USING {} ({})",
                quote_ident(&TablePlan::scratch_name(staging, &format!("i{i}"))),
                ix.method,
                cols.join(", ")
            ),
            step: "building an index",
            weight: build_weight(&ix.method),
        });
    }
    jobs
}

/// Splits the index builds between two sessions, heaviest first onto the
/// less loaded one; the second starts at `beside_weight` (the work it does
/// after its share).
fn split_jobs(mut jobs: Vec<IndexJob>, beside_weight: u32) -> (Vec<IndexJob>, Vec<IndexJob>) {
    jobs.sort_by_key(|j| std::cmp::Reverse(j.weight));
    let (mut main, mut second) = (Vec::new(), Vec::new());
    let (mut main_load, mut second_load) = (0, beside_weight);
    for job in jobs {
        if main_load <= second_load {
            main_load += job.weight;
            main.push(job);
        } else {
            second_load += job.weight;
            second.push(job);
        }
    }
    (main, second)
}

/// Runs `settings` (if any), then `jobs`, on one session.
async fn run_jobs(
    client: &Client,
    plan: &TablePlan,
    settings: Option<&str>,
    jobs: &[IndexJob],
) -> Result<(), PipelineError> {
    if let Some(settings) = settings {
        client
            .batch_execute(settings)
            .await
            .map_err(pg(plan, "setting up the session to build indexes"))?;
    }
    for job in jobs {
        client
            .batch_execute(&job.sql)
            .await
            .map_err(pg(plan, job.step))?;
    }
    Ok(())
}

/// What [`build`] measured.
#[derive(Debug, Clone, Copy)]
pub struct BuildTimes {
    /// From the first index to the end of ANALYZE.
    pub index_build: Duration,
    /// The work run beside the builds, from its start to its end.
    pub beside: Duration,
}

/// Builds the primary key and indexes on the staged table over two
/// sessions at once (floe's and those `carried` from the target), then
/// the carried constraints, then ANALYZE; `beside` (the verification) runs
/// on the second session once that session's share of the indexes is built,
/// without parallel workers.
///
/// A GiST build uses one core and is most of the time after the load: the
/// B-tree key and the verification scan fit beside it, on the other core,
/// instead of before or after it. Plain `CREATE INDEX`es on one table share
/// its SHARE lock, and reading the table is allowed meanwhile. The key
/// starts as a unique index and becomes the constraint at the end; ANALYZE
/// comes last, as its lock conflicts with `CREATE INDEX`. Returns
/// `beside`'s output.
pub async fn build<T>(
    client: &Client,
    second: &Client,
    plan: &TablePlan,
    staging: &str,
    carried: &mut super::carry::Carried,
    beside: impl std::future::Future<Output = T>,
) -> Result<(T, BuildTimes), PipelineError> {
    let started = std::time::Instant::now();
    let mut jobs = index_jobs(plan, staging);
    jobs.append(&mut carried.index_jobs);
    let (main_jobs, second_jobs) = split_jobs(jobs, 1);
    let memory = format!("SET maintenance_work_mem = '{MAINTENANCE_WORK_MEM}'");
    // Parallel workers, for the second session's (shorter) share of the
    // builds or for the work beside them, would take the cores the main
    // session's build needs: on two cores a verification scan with its
    // default two workers made a 2,000,000-row GiST build 16% longer, one
    // without them none (BENCHMARKS.md).
    let second_settings = format!(
        "{memory}; SET max_parallel_maintenance_workers = 0; SET max_parallel_workers_per_gather = 0"
    );
    let main_settings = (!main_jobs.is_empty()).then_some(memory.as_str());
    let main = run_jobs(client, plan, main_settings, &main_jobs);
    let other = async {
        // (set even without jobs: the verification runs here too)
        run_jobs(second, plan, Some(&second_settings), &second_jobs).await?;
        let from = std::time::Instant::now();
        let out = beside.await;
        Ok::<_, PipelineError>((out, from.elapsed()))
    };
    let (main, other) = tokio::join!(main, other);
    main?;
    let (out, beside) = other?;
    if !plan.primary_key.is_empty() {
        let pkey = quote_ident(&TablePlan::scratch_name(staging, "pkey"));
        client
            .batch_execute(&format!(
                "ALTER TABLE {} ADD CONSTRAINT {pkey} PRIMARY KEY USING INDEX {pkey}",
                plan.qualified(staging)
            ))
            .await
            .map_err(pg(plan, "building the primary key"))?;
    }
    for constraint in &carried.constraints {
        client.batch_execute(constraint).await.map_err(pg(
            plan,
            "adding a constraint the target has to the new rows (they break it; see the constraint named)",
        ))?;
    }
    client
        .batch_execute(&format!("ANALYZE {}", plan.qualified(staging)))
        .await
        .map_err(pg(plan, "analyzing the staging table"))?;
    Ok((
        out,
        BuildTimes {
            index_build: started.elapsed(),
            beside,
        },
    ))
}

/// The staging table's columns as the checksum hashes them; `None` before
/// PostgreSQL 14, which has no `hash_record_extended` (the count is still checked).
pub async fn staged_columns(
    client: &Client,
    server_version: i32,
    plan: &TablePlan,
    staging: &str,
) -> Result<Option<Vec<checksum::StagedColumn>>, PipelineError> {
    if server_version < 140_000 {
        return Ok(None);
    }
    Ok(Some(client
        .query_typed(
            // A domain hashes as its base type; text is hashed as stored, which
            // is what floe sent when the database stores UTF-8 (or raw bytes).
            "SELECT a.attname::text, coalesce(b.typname, t.typname)::text, t.typsend::text, \
                    current_setting('server_encoding') IN ('UTF8', 'SQL_ASCII') \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_type b ON t.typtype = 'd' AND b.oid = t.typbasetype \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[(&plan.qualified(staging), Type::TEXT)],
        )
        .await
        .map_err(pg(plan, "reading the staging table's columns"))?
        .into_iter()
        .map(|r| checksum::StagedColumn {
            name: r.get(0),
            hash: checksum::FieldHash::for_type(r.get(1), r.get(2), r.get(3)),
        })
        .collect()))
}

/// Checks the staged table holds what floe sent: `rows_read` rows and, if
/// given, content with floe's checksum (over `columns`, as
/// [`staged_columns`] read them). Meant for [`build`]'s second session,
/// beside the index builds. Returns the staged row count.
pub async fn verify(
    client: &Client,
    plan: &TablePlan,
    staging: &str,
    rows_read: u64,
    checksum: Option<(&[checksum::StagedColumn], &str)>,
) -> Result<u64, PipelineError> {
    let table = plan.qualified(staging);
    // One scan: the count, and the checksum when there is one to compare.
    let (staged, staged_sum) = match checksum {
        Some((columns, _)) => {
            let row = client
                .query_one(&checksum::sql(&table, columns), &[])
                .await
                .map_err(pg(plan, "computing the staged rows' checksum"))?;
            let answer: String = row.get(1);
            (
                row.get::<_, i64>(0),
                Some(checksum::from_sql(&answer).unwrap_or(answer)),
            )
        }
        None => {
            let row = client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .map_err(pg(plan, "counting staged rows"))?;
            (row.get::<_, i64>(0), None)
        }
    };
    let staged = staged as u64;
    if staged != rows_read {
        return Err(PipelineError::CountMismatch {
            table: plan.table.clone(),
            read: rows_read,
            staged,
        });
    }
    if let (Some((_, sent)), Some(staged_sum)) = (checksum, staged_sum) {
        if staged_sum != sent {
            return Err(PipelineError::ChecksumMismatch {
                table: plan.table.clone(),
                sent: sent.to_string(),
                staged: staged_sum,
            });
        }
    }
    Ok(staged)
}

/// Rows in the live target table, or `None` if it does not exist yet.
pub async fn current_count(
    client: &Client,
    plan: &TablePlan,
) -> Result<Option<u64>, PipelineError> {
    let q = plan.qualified(&plan.target);
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&q])
        .await
        .map_err(pg(plan, "looking up the target table"))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let n: i64 = client
        .query_one(&format!("SELECT count(*) FROM {q}"), &[])
        .await
        .map_err(pg(plan, "counting the target table"))?
        .get(0);
    Ok(Some(n as u64))
}

/// Drops the staging table after a failure (best effort; the next run drops
/// any that remain).
pub async fn discard(client: &Client, plan: &TablePlan, staging: &str) {
    // An aborted COPY may have left its transaction (a frozen COPY's) open
    // and failed on this session: end it first, or the DROP is refused.
    // (Outside a transaction this is a warning, nothing more.)
    let _ = client.batch_execute("ROLLBACK").await;
    let sql = format!("DROP TABLE IF EXISTS {}", plan.qualified(staging));
    if let Err(e) = client.batch_execute(&sql).await {
        tracing::warn!(table = %plan.table, staging, "could not drop staging table: {e}");
    }
}

#[cfg(test)]
mod tests {
    use schemas::pg::PgType;

    use super::*;

    fn plan(primary_key: &[&str], indexes: &[(&str, &str)]) -> TablePlan {
        TablePlan {
            table: "t".into(),
            schema: "public".into(),
            target: "t_cache".into(),
            columns: Vec::new(),
            primary_key: primary_key.iter().map(|c| c.to_string()).collect(),
            indexes: indexes
                .iter()
                .map(|(column, method)| IndexConfig {
                    columns: vec![column.to_string()],
                    method: method.to_string(),
                })
                .collect(),
            lock_timeout: Duration::from_secs(1),
            swap_lock_wait: Duration::from_millis(200),
            dependent_matviews: Default::default(),
        }
    }

    #[test]
    fn the_gist_build_gets_a_session_and_the_key_and_verification_share_the_other() {
        let p = plan(&["id"], &[("geom", "gist")]);
        let (main, second) = split_jobs(index_jobs(&p, "s"), 1);
        assert_eq!(main.len(), 1);
        assert!(main[0].sql.contains("USING gist"), "{}", main[0].sql);
        assert_eq!(second.len(), 1);
        assert!(
            second[0].sql.starts_with(&format!(
                "CREATE UNIQUE INDEX {}",
                quote_ident(&TablePlan::scratch_name("s", "pkey"))
            )),
            "{}",
            second[0].sql
        );
    }

    #[test]
    fn heavy_builds_are_spread_over_both_sessions() {
        let p = plan(
            &["id"],
            &[("geom", "gist"), ("area", "gist"), ("name", "btree")],
        );
        let (main, second) = split_jobs(index_jobs(&p, "s"), 1);
        let load = |jobs: &[IndexJob]| jobs.iter().map(|j| j.weight).sum::<u32>();
        assert_eq!(main.len() + second.len(), 4);
        assert_eq!(main.iter().filter(|j| j.weight == 4).count(), 1);
        assert_eq!(second.iter().filter(|j| j.weight == 4).count(), 1);
        assert!(load(&main).abs_diff(load(&second) + 1) <= 1);
    }

    #[test]
    fn only_names_of_exactly_the_staging_shape_count_as_staging_tables() {
        let p = plan(&["id"], &[]);
        assert!(p.is_staging_name(&p.staging_name("20261202T101010Z-Ab12cd34")));
        assert!(p.is_staging_name("t_cache__floe_backup"));
        assert!(!p.is_staging_name("t_cache__floe_x_backup"));
        assert!(!p.is_staging_name("t_cache__floe_"));
        assert!(!p.is_staging_name("t_cache__floe_Backup"));
        assert!(!p.is_staging_name("t_cache__floe_backup123"));
        assert!(!p.is_staging_name("t_cache_x__floe_abc"));
    }

    #[test]
    fn the_staging_table_declares_the_key_and_what_it_takes_from_the_target() {
        let mut p = plan(&["part", "id"], &[]);
        p.columns = ["id", "name", "part"]
            .iter()
            .map(|n| PgColumn {
                name: n.to_string(),
                ty: PgType::Int8,
                nullable: true,
            })
            .collect();
        assert_eq!(
            p.create_sql("s", &FromTarget::default()),
            r#"CREATE TABLE "public"."s" ("id" bigint NOT NULL, "name" bigint, "part" bigint NOT NULL)"#
        );
        // The target's own NOT NULL columns and CHECKs are declared too, in
        // its tablespace.
        let from = FromTarget {
            tablespace: Some("fast".into()),
            not_null: vec!["name".into()],
            checks: vec!["CONSTRAINT few CHECK ((id < 10))".into()],
        };
        assert_eq!(
            p.create_sql("s", &from),
            r#"CREATE TABLE "public"."s" ("id" bigint NOT NULL, "name" bigint NOT NULL, "part" bigint NOT NULL, CONSTRAINT few CHECK ((id < 10))) TABLESPACE "fast""#
        );
    }

    #[test]
    fn a_table_with_only_a_key_builds_it_beside_the_verification() {
        let (main, second) = split_jobs(index_jobs(&plan(&["id"], &[]), "s"), 1);
        assert_eq!(main.len(), 1);
        assert!(second.is_empty());
    }
}
