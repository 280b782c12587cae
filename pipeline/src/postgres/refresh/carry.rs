//! What a full refresh carries from the old table to its replacement,
//! beyond the rows: statements for the swap's transaction.

use tokio_postgres::Client;

use super::steps::{pg, TablePlan};
use crate::PipelineError;

/// What readers and owners set on the old table that must hold on its
/// replacement, as statements on `staging` for the swap's transaction:
/// row-level security (the flags and every policy: losing them would let
/// limited readers see every row), the table's and columns' comments,
/// column defaults, storage options (autovacuum settings), replica identity
/// (full or nothing) and publication membership (logical replication).
pub(super) async fn carried_over(
    client: &Client,
    plan: &TablePlan,
    target: &str,
    staging: &str,
) -> Result<Vec<String>, PipelineError> {
    let mut out = Vec::new();
    let flags = client
        .query_one(
            "SELECT relrowsecurity, relforcerowsecurity, obj_description(oid, 'pg_class') \
             FROM pg_class WHERE oid = to_regclass($1)",
            &[&target],
        )
        .await
        .map_err(pg(plan, "reading the target's row-level security"))?;
    let (rls, force, comment): (bool, bool, Option<String>) =
        (flags.get(0), flags.get(1), flags.get(2));
    if rls {
        out.push(format!("ALTER TABLE {staging} ENABLE ROW LEVEL SECURITY"));
    }
    if force {
        out.push(format!("ALTER TABLE {staging} FORCE ROW LEVEL SECURITY"));
    }
    // pg_policies spells each policy back as CREATE POLICY takes it.
    let policies = client
        .query(
            "SELECT quote_ident(p.policyname), p.permissive, p.cmd, \
                    array_to_string(ARRAY(SELECT CASE WHEN r = 'public' THEN 'PUBLIC' ELSE quote_ident(r) END \
                                          FROM unnest(p.roles) r), ', '), \
                    p.qual, p.with_check \
             FROM pg_policies p JOIN pg_class c ON c.relname = p.tablename \
             JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = p.schemaname \
             WHERE c.oid = to_regclass($1) ORDER BY p.policyname",
            &[&target],
        )
        .await
        .map_err(pg(plan, "reading the target's policies"))?;
    for p in policies {
        let (name, permissive, cmd, roles, using, check): (
            String,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
        ) = (p.get(0), p.get(1), p.get(2), p.get(3), p.get(4), p.get(5));
        let mut sql =
            format!("CREATE POLICY {name} ON {staging} AS {permissive} FOR {cmd} TO {roles}");
        if let Some(using) = using {
            sql.push_str(&format!(" USING ({using})"));
        }
        if let Some(check) = check {
            sql.push_str(&format!(" WITH CHECK ({check})"));
        }
        out.push(sql);
    }
    if let Some(comment) = comment {
        out.push(format!(
            "COMMENT ON TABLE {staging} IS {}",
            literal(&comment)
        ));
    }
    let table = client
        .query_one(
            "SELECT coalesce(array_to_string(reloptions, ', '), ''), relreplident::text, \
                    ARRAY(SELECT quote_ident(p.pubname) FROM pg_publication_rel r \
                          JOIN pg_publication p ON p.oid = r.prpubid WHERE r.prrelid = c.oid ORDER BY 1) \
             FROM pg_class c WHERE oid = to_regclass($1)",
            &[&target],
        )
        .await
        .map_err(pg(plan, "reading the target's storage options and replication"))?;
    let (options, identity, publications): (String, String, Vec<String>) =
        (table.get(0), table.get(1), table.get(2));
    if !options.is_empty() {
        out.push(format!("ALTER TABLE {staging} SET ({options})"));
    }
    match identity.as_str() {
        "f" => out.push(format!("ALTER TABLE {staging} REPLICA IDENTITY FULL")),
        "n" => out.push(format!("ALTER TABLE {staging} REPLICA IDENTITY NOTHING")),
        _ => {}
    }
    for publication in publications {
        out.push(format!(
            "ALTER PUBLICATION {publication} ADD TABLE {staging}"
        ));
    }
    let defaults = client
        .query(
            "SELECT quote_ident(a.attname), pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d \
             JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum \
             WHERE d.adrelid = to_regclass($1) AND NOT a.attisdropped AND a.attgenerated = '' \
             AND EXISTS (SELECT 1 FROM pg_attribute s WHERE s.attrelid = to_regclass($2) \
                         AND s.attname = a.attname AND NOT s.attisdropped)",
            &[&target, &staging],
        )
        .await
        .map_err(pg(plan, "reading the target's column defaults"))?;
    for d in defaults {
        let (column, default): (String, String) = (d.get(0), d.get(1));
        out.push(format!(
            "ALTER TABLE {staging} ALTER COLUMN {column} SET DEFAULT {default}"
        ));
    }
    let columns = client
        .query(
            "SELECT quote_ident(a.attname), col_description(a.attrelid, a.attnum) FROM pg_attribute a \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
             AND col_description(a.attrelid, a.attnum) IS NOT NULL \
             AND EXISTS (SELECT 1 FROM pg_attribute s WHERE s.attrelid = to_regclass($2) \
                         AND s.attname = a.attname AND NOT s.attisdropped)",
            &[&target, &staging],
        )
        .await
        .map_err(pg(plan, "reading the target's column comments"))?;
    for c in columns {
        let (column, comment): (String, String) = (c.get(0), c.get(1));
        out.push(format!(
            "COMMENT ON COLUMN {staging}.{column} IS {}",
            literal(&comment)
        ));
    }
    Ok(out)
}

/// A SQL string literal (the swap runs as one simple-query batch).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
