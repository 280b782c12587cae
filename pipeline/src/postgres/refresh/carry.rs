//! What a full refresh carries from the old table to its replacement,
//! beyond the rows. Two parts, by cost:
//!
//! - what takes a scan or an index build (NOT NULL, CHECK and foreign-key
//!   constraints, unique constraints, indexes a DBA added) is built on the
//!   staging table before the swap, under no lock readers wait for; new
//!   rows that break a constraint fail the run there, target unchanged
//!   (`NOT NULL` and validated `CHECK`s the staging table declared from its
//!   start, checked row by row by the COPY, are found there and not added
//!   again: see `TablePlan::create_sql`);
//! - everything else (owner, grants, row-level security and policies,
//!   comments, defaults, identity, triggers, rules, statistics, storage
//!   options, replica identity, publications, dependent views) is read and
//!   replayed by the swap's server-side block (`carry.sql`, `swap.sql`).

use schemas::pg::quote_ident;
use tokio_postgres::Client;

use super::steps::{pg, IndexJob, TablePlan};
use crate::PipelineError;

/// The statements that replay one relation's settings on its replacement
/// (rows of order and statement), for the swap's block.
const CARRY_SQL: &str = include_str!("carry.sql");

/// Publication membership with PostgreSQL 15's column lists and row filters.
const PUBLICATIONS_15: &str = "SELECT 16, format('ALTER PUBLICATION %I ADD TABLE %s%s%s', p.pubname, floe_rel, \
     ' (' || (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) FROM pg_attribute a \
              WHERE a.attrelid = floe_rel AND a.attnum = ANY (r.prattrs::int2[])) || ')', \
     ' WHERE (' || pg_get_expr(r.prqual, r.prrelid) || ')') \
     FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid WHERE r.prrelid = floe_rel";
/// Publication membership before PostgreSQL 15.
const PUBLICATIONS: &str = "SELECT 16, format('ALTER PUBLICATION %I ADD TABLE %s', p.pubname, floe_rel) \
     FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid WHERE r.prrelid = floe_rel";

/// What the pre-swap statements were built from: the target's
/// constraints, indexes and NOT NULL columns. The swap compares it again
/// under its lock, so nothing added in between is lost silently.
pub(super) const STRUCTURE_SQL: &str = "SELECT md5(coalesce(string_agg(x, E'\\n' ORDER BY x), '')) FROM ( \
     SELECT 'c ' || k.conname || ' ' || pg_get_constraintdef(k.oid) FROM pg_constraint k \
     WHERE k.conrelid = floe_target AND k.contype <> 'p' \
     UNION ALL SELECT 'i ' || pg_get_indexdef(x.indexrelid) FROM pg_index x WHERE x.indrelid = floe_target \
     UNION ALL SELECT 'n ' || a.attname FROM pg_attribute a \
     WHERE a.attrelid = floe_target AND a.attnum > 0 AND a.attnotnull AND NOT a.attisdropped) s(x)";

/// The target's constraints and DBA indexes, as work on the staging table;
/// and what the staging table declared from the target when it was made
/// (`NOT NULL`, `CHECK`s) that the target no longer has, as a DBA may have
/// dropped it during the load: dropped from staging too (no scan).
const STAGED_SQL: &str = "\
SELECT 'not null', '', 'ALTER TABLE ' || $2 || ' ' || string_agg(format('ALTER COLUMN %I SET NOT NULL', a.attname), ', ' ORDER BY a.attnum), '', '' \
FROM pg_attribute a \
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull \
  AND EXISTS (SELECT 1 FROM pg_attribute s WHERE s.attrelid = to_regclass($2) AND s.attname = a.attname \
              AND s.attnum > 0 AND NOT s.attisdropped AND NOT s.attnotnull) \
HAVING count(*) > 0 \
UNION ALL \
SELECT CASE WHEN d.def IS NOT DISTINCT FROM pg_get_constraintdef(k.oid) THEN 'declared' ELSE 'constraint' END, k.conname, \
       format('ALTER TABLE %s %sADD CONSTRAINT %I %s', $2, CASE WHEN d.def IS NOT NULL THEN format('DROP CONSTRAINT %I, ', k.conname) END, \
              k.conname, pg_get_constraintdef(k.oid)), '', '' \
FROM pg_constraint k \
     LEFT JOIN LATERAL (SELECT pg_get_constraintdef(s.oid) AS def FROM pg_constraint s \
              WHERE s.conrelid = to_regclass($2) AND s.conname = k.conname AND s.contype = k.contype) d ON true \
WHERE k.conrelid = to_regclass($1) AND k.conislocal \
  AND (k.contype = 'c' OR (k.contype = 'f' AND k.confrelid <> k.conrelid)) \
UNION ALL \
SELECT 'undeclared', '', 'ALTER TABLE ' || $2 || ' ' || string_agg(format('ALTER COLUMN %I DROP NOT NULL', s.attname), ', ' ORDER BY s.attnum), '', '' \
FROM pg_attribute s \
WHERE s.attrelid = to_regclass($2) AND s.attnum > 0 AND NOT s.attisdropped AND s.attnotnull AND NOT (s.attname = ANY ($4)) \
  AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attname = s.attname \
                  AND a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull) \
HAVING count(*) > 0 \
UNION ALL \
SELECT 'undeclared', k.conname, format('ALTER TABLE %s DROP CONSTRAINT %I', $2, k.conname), '', '' \
FROM pg_constraint k WHERE k.conrelid = to_regclass($2) AND k.contype = 'c' \
  AND NOT EXISTS (SELECT 1 FROM pg_constraint t WHERE t.conrelid = to_regclass($1) AND t.conname = k.conname AND t.contype = 'c') \
UNION ALL \
SELECT 'in swap', k.conname, '', '', '' FROM pg_constraint k WHERE k.conrelid = to_regclass($1) AND k.conislocal \
  AND (k.contype = 'x' OR (k.contype = 'f' AND k.confrelid = k.conrelid)) \
UNION ALL \
SELECT 'unique', k.conname, substr(d.def, strpos(d.def, ' USING ')), am.amname, \
       CASE WHEN k.condeferrable THEN ' DEFERRABLE' || CASE WHEN k.condeferred THEN ' INITIALLY DEFERRED' ELSE '' END ELSE '' END \
FROM pg_constraint k JOIN pg_class i ON i.oid = k.conindid JOIN pg_am am ON am.oid = i.relam, \
     LATERAL (SELECT pg_get_indexdef(k.conindid) AS def) d \
WHERE k.conrelid = to_regclass($1) AND k.contype = 'u' \
UNION ALL \
SELECT CASE WHEN x.indisunique THEN 'unique index' ELSE 'index' END, i.relname, substr(d.def, strpos(d.def, ' USING ')), am.amname, '' \
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_am am ON am.oid = i.relam, \
     LATERAL (SELECT pg_get_indexdef(x.indexrelid) AS def) d \
WHERE x.indrelid = to_regclass($1) AND NOT x.indisprimary AND NOT (i.relname = ANY ($3)) \
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid AND k.conrelid = x.indrelid) \
ORDER BY 1, 2";

/// What the old table has that its replacement must have too, read after
/// the load: the work on staging before the swap, and what the swap needs.
#[derive(Debug, Default)]
pub struct Carried {
    /// Indexes a DBA added (and unique constraints' indexes), built on
    /// staging beside floe's own, under scratch names.
    pub(super) index_jobs: Vec<IndexJob>,
    /// NOT NULL, CHECK, foreign keys and unique constraints, added to
    /// staging after its indexes (each validates the new rows).
    pub(super) constraints: Vec<String>,
    /// Scratch names to the old names, inside the swap.
    pub(super) renames: Vec<String>,
    /// Index and constraint names the replacement has after the swap (for
    /// their comments, clustering, replica identity).
    pub(super) kept_indexes: Vec<String>,
    pub(super) kept_constraints: Vec<String>,
    /// [`STRUCTURE_SQL`] when this was read; `None` when there is no target yet.
    pub(super) structure: Option<String>,
}

/// Reads what must be carried from the live target to `staging`.
pub async fn read(
    client: &Client,
    plan: &TablePlan,
    staging: &str,
) -> Result<Carried, PipelineError> {
    let target = plan.qualified(&plan.target);
    let mut carried = Carried {
        kept_indexes: plan.index_names(),
        ..Carried::default()
    };
    if !plan.primary_key.is_empty() {
        carried.kept_indexes.push(plan.pkey_name());
        carried.kept_constraints.push(plan.pkey_name());
    }
    let structure = client
        .query_one(
            &format!(
                "SELECT CASE WHEN to_regclass($1) IS NOT NULL THEN ({}) END",
                STRUCTURE_SQL.replace("floe_target", "to_regclass($1)")
            ),
            &[&target],
        )
        .await
        .map_err(pg(plan, "reading the target's constraints and indexes"))?;
    carried.structure = structure.get(0);
    if carried.structure.is_none() {
        return Ok(carried);
    }
    let staging_q = plan.qualified(staging);
    let rows = client
        .query(
            STAGED_SQL,
            &[
                &target,
                &staging_q,
                &carried.kept_indexes,
                &plan.primary_key,
            ],
        )
        .await
        .map_err(pg(plan, "reading the target's constraints and indexes"))?;
    for (n, row) in rows.iter().enumerate() {
        let (kind, name, sql, method, extra): (String, String, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let scratch = TablePlan::scratch_name(staging, &format!("c{n}"));
        let weight = super::steps::build_weight(&method);
        match kind.as_str() {
            "not null" | "undeclared" => carried.constraints.insert(0, sql),
            "constraint" => {
                carried.constraints.push(sql);
                carried.kept_constraints.push(name);
            }
            // Declared with the staging table (see `TablePlan::create_sql`),
            // or built in the swap: kept by name.
            "declared" | "in swap" => carried.kept_constraints.push(name),
            "unique" => {
                carried.index_jobs.push(IndexJob {
                    sql: format!(
                        "CREATE UNIQUE INDEX {} ON {staging_q}{sql}",
                        quote_ident(&scratch)
                    ),
                    step: "building a unique constraint's index carried over from the target",
                    weight,
                });
                carried.constraints.push(format!(
                    "ALTER TABLE {staging_q} ADD CONSTRAINT {0} UNIQUE USING INDEX {0}{extra}",
                    quote_ident(&scratch)
                ));
                carried.renames.push(format!(
                    "ALTER TABLE {target} RENAME CONSTRAINT {} TO {}",
                    quote_ident(&scratch),
                    quote_ident(&name)
                ));
                carried.kept_indexes.push(name.clone());
                carried.kept_constraints.push(name);
            }
            _ => {
                let unique = if kind == "unique index" {
                    "UNIQUE "
                } else {
                    ""
                };
                carried.index_jobs.push(IndexJob {
                    sql: format!(
                        "CREATE {unique}INDEX {} ON {staging_q}{sql}",
                        quote_ident(&scratch)
                    ),
                    step: "building an index carried over from the target",
                    weight,
                });
                carried.renames.push(format!(
                    "ALTER INDEX {} RENAME TO {}",
                    plan.qualified(&scratch),
                    quote_ident(&name)
                ));
                carried.kept_indexes.push(name);
            }
        }
    }
    Ok(carried)
}

/// The server's statements replaying one relation's settings (`carry.sql`)
/// for its version (publication column lists and row filters came in 15).
pub(super) fn carry_sql(server_version: i32) -> String {
    let publications = match server_version >= 150_000 {
        true => PUBLICATIONS_15,
        false => PUBLICATIONS,
    };
    CARRY_SQL.replace("{{publications}}", publications)
}
