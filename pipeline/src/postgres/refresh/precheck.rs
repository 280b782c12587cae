//! What a full refresh cannot carry over, found when it starts: before
//! anything is read or loaded, not at the swap after the whole load.

use schemas::config::DependentMatviews;
use schemas::pg::quote_qualified;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::postgres::Target;
use crate::PipelineError;

/// Whether anything could be in the way, from the target's own row and
/// the two catalogs every refusal below shows up in: a kind other than a
/// plain table, an owner other than floe's role, inheritance either way,
/// or any normal dependency on the table or its row type (a view's rule,
/// another table's foreign key, a function's body, a child table). False
/// means [`REFUSALS_SQL`] would find nothing; true only that it may.
///
/// Most targets have nothing in the way, and the full search costs a fresh
/// session ~5 ms of planning and catalog loading (10 on two busy cores), on
/// the path to the COPY; this look costs a third to a half of that.
const MAY_REFUSE_SQL: &str = "\
SELECT c.relkind <> 'r' \
    OR c.relowner IS DISTINCT FROM to_regrole(quote_ident(current_user))::oid \
    OR EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid OR i.inhparent = c.oid) \
    OR EXISTS (SELECT 1 FROM pg_depend d WHERE d.deptype = 'n' \
               AND ((d.refclassid = 'pg_class'::regclass AND d.refobjid = c.oid) \
                    OR (d.refclassid = 'pg_type'::regclass AND d.refobjid = c.reltype))) \
FROM pg_class c WHERE c.oid = to_regclass($1)";

/// Each row: an object in the way, and what would let the refresh run.
const REFUSALS_SQL: &str = "\
WITH RECURSIVE t AS (SELECT to_regclass($1) AS t), \
deps(rel, depth) AS ( \
    SELECT r.ev_class, 1 FROM t, pg_depend d JOIN pg_rewrite r ON r.oid = d.objid \
    WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass \
      AND d.refobjid = t.t AND r.ev_class <> t.t \
    UNION \
    SELECT r.ev_class, deps.depth + 1 FROM deps JOIN pg_depend d ON d.refobjid = deps.rel \
         AND d.refclassid = 'pg_class'::regclass AND d.classid = 'pg_rewrite'::regclass \
         JOIN pg_rewrite r ON r.oid = d.objid WHERE r.ev_class <> deps.rel) \
SELECT 'materialized view ' || c.oid::regclass::text, \
       'set load.dependent_matviews = \"refresh\" to recompute it inside the swap' \
FROM pg_class c WHERE c.oid IN (SELECT rel FROM deps) AND c.relkind = 'm' AND $2 = 'refuse' \
UNION ALL \
SELECT 'foreign key ' || quote_ident(k.conname) || ' of ' || k.conrelid::regclass::text, \
       'floe does not change other tables: drop the constraint, or load with --incremental' \
FROM t, pg_constraint k WHERE k.contype = 'f' AND k.confrelid = t.t AND k.conrelid <> t.t \
UNION ALL \
SELECT CASE c.relkind WHEN 'r' THEN 'table ' WHEN 'v' THEN 'view ' ELSE 'materialized view ' END \
       || c.oid::regclass::text || ' owned by ' || quote_ident(pg_get_userbyid(c.relowner)), \
       'floe gives the replacement its owner back: GRANT ' || quote_ident(pg_get_userbyid(c.relowner)) \
       || ' TO ' || quote_ident(current_user) \
FROM t, pg_class c WHERE (c.oid = t.t OR c.oid IN (SELECT rel FROM deps)) \
  AND NOT pg_has_role(current_user, c.relowner, 'MEMBER') \
UNION ALL \
SELECT CASE c.relkind WHEN 'r' THEN 'table ' WHEN 'v' THEN 'view ' ELSE 'materialized view ' END \
       || c.oid::regclass::text || ' owned by ' || quote_ident(pg_get_userbyid(c.relowner)), \
       'an owner needs CREATE on the schema to be given the replacement: GRANT CREATE ON SCHEMA ' \
       || quote_ident(n.nspname) || ' TO ' || quote_ident(pg_get_userbyid(c.relowner)) \
FROM t, pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
WHERE (c.oid = t.t OR c.oid IN (SELECT rel FROM deps)) \
  AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user) \
  AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) \
  AND NOT has_schema_privilege(c.relowner, n.oid, 'CREATE') \
UNION ALL \
SELECT 'table inheritance (' || i.inhrelid::regclass::text || ' inherits from ' || i.inhparent::regclass::text || ')', \
       'floe replaces plain tables only: load with --incremental' \
FROM t, pg_inherits i WHERE i.inhrelid = t.t OR i.inhparent = t.t \
UNION ALL \
SELECT 'partitioned table ' || c.oid::regclass::text, 'floe replaces plain tables only: load with --incremental' \
FROM t, pg_class c WHERE c.oid = t.t AND c.relkind = 'p' \
UNION ALL \
SELECT DISTINCT pg_describe_object(d.classid, d.objid, d.objsubid), \
       'floe cannot recreate it: drop it before the refresh and recreate it after, or load with --incremental' \
FROM t, pg_depend d \
WHERE d.deptype = 'n' \
  AND ((d.refclassid = 'pg_class'::regclass AND d.refobjid = t.t) \
       OR (d.refclassid = 'pg_type'::regclass AND d.refobjid = (SELECT reltype FROM pg_class WHERE oid = t.t))) \
  AND d.classid <> 'pg_rewrite'::regclass AND d.classid <> 'pg_publication_rel'::regclass \
  AND NOT (d.classid = 'pg_constraint'::regclass AND EXISTS \
           (SELECT 1 FROM pg_constraint k WHERE k.oid = d.objid AND (k.conrelid = t.t OR k.confrelid = t.t))) \
  AND NOT (d.classid = 'pg_trigger'::regclass AND EXISTS (SELECT 1 FROM pg_trigger g WHERE g.oid = d.objid AND g.tgrelid = t.t)) \
  AND NOT (d.classid = 'pg_policy'::regclass AND EXISTS (SELECT 1 FROM pg_policy p WHERE p.oid = d.objid AND p.polrelid = t.t)) \
  AND NOT (d.classid = 'pg_attrdef'::regclass AND EXISTS (SELECT 1 FROM pg_attrdef a WHERE a.oid = d.objid AND a.adrelid = t.t)) \
  AND NOT (d.classid = 'pg_statistic_ext'::regclass \
           AND EXISTS (SELECT 1 FROM pg_statistic_ext s WHERE s.oid = d.objid AND s.stxrelid = t.t)) \
ORDER BY 1";

/// Refuses the refresh, before anything is loaded, when the target has
/// what the swap cannot carry over: materialized views on it (unless
/// `load.dependent_matviews = "refresh"`), other tables' foreign keys to
/// it, an owner floe's role cannot hand it back to (not a member of it, or
/// the owner lacks CREATE on the schema), inheritance or
/// partitions, and anything else that depends on it and that floe does not
/// recreate (a function's body, another table's column of its row type, a
/// policy of another table). The error names each object and what to do.
pub async fn refuse_what_cannot_be_carried(
    client: &Client,
    table: &str,
    target: &Target,
    target_table: &str,
    matviews: DependentMatviews,
) -> Result<(), PipelineError> {
    let target = quote_qualified(&target.schema, target_table);
    let matviews = matviews.as_str();
    let failed = |e| PipelineError::postgres(table, "looking for what depends on the target", e);
    // (Each statement is sent whole with its parameters' types: one round
    // trip, where preparing it first would take two.)
    let may_refuse = client
        .query_typed_opt(MAY_REFUSE_SQL, &[(&target, Type::TEXT)])
        .await
        .map_err(failed)?
        .is_some_and(|row| row.get::<_, bool>(0));
    if !may_refuse {
        return Ok(());
    }
    let rows = client
        .query_typed(
            REFUSALS_SQL,
            &[(&target, Type::TEXT), (&matviews, Type::TEXT)],
        )
        .await
        .map_err(failed)?;
    if rows.is_empty() {
        return Ok(());
    }
    Err(PipelineError::Dependents {
        table: table.to_string(),
        target,
        objects: rows
            .iter()
            .map(|r| format!("{} ({})", r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect::<Vec<_>>()
            .join("; "),
    })
}
