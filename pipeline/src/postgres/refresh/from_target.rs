//! What a staging table takes from its target when it is created, so
//! nothing of it needs a scan after the load (see `TablePlan::create_sql`).

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::steps::TablePlan;

/// What a staging table takes from its target when it is created (see
/// [`super::TablePlan::create_sql`]); nothing for a target not there yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FromTarget {
    /// The target's tablespace, when it is not the database's default.
    pub tablespace: Option<String>,
    /// The columns written, beyond the key, the target declares `NOT NULL`:
    /// the encoder must refuse a NULL in them too.
    pub not_null: Vec<String>,
    /// The target's validated `CHECK` constraints over columns written, as
    /// `CONSTRAINT name CHECK (...)` (by name and definition, the carried
    /// work after the load finds them there and adds them no more).
    pub checks: Vec<String>,
}

impl FromTarget {
    /// One round trip: the target's tablespace, its `NOT NULL` columns and
    /// its validated `CHECK` constraints over `plan`'s columns.
    pub(super) async fn read(
        client: &Client,
        plan: &TablePlan,
    ) -> Result<FromTarget, tokio_postgres::Error> {
        let target = plan.qualified(&plan.target);
        let written: Vec<String> = plan.columns.iter().map(|c| c.name.clone()).collect();
        let row = client
            .query_typed_one(
                "SELECT (SELECT t.spcname::text FROM pg_class c \
                 JOIN pg_tablespace t ON t.oid = c.reltablespace WHERE c.oid = to_regclass($1)), \
                 ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = to_regclass($1) \
                 AND a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull), \
                 ARRAY(SELECT format('CONSTRAINT %I %s', k.conname, pg_get_constraintdef(k.oid)) \
                 FROM pg_constraint k WHERE k.conrelid = to_regclass($1) AND k.contype = 'c' \
                 AND k.convalidated AND k.conislocal AND NOT EXISTS (SELECT 1 FROM pg_attribute a \
                 WHERE a.attrelid = k.conrelid AND a.attnum = ANY (k.conkey) AND NOT a.attname = ANY ($2)) \
                 ORDER BY k.conname)",
                &[(&target, Type::TEXT), (&written, Type::TEXT_ARRAY)],
            )
            .await?;
        let not_null: Vec<String> = row.get(1);
        Ok(FromTarget {
            tablespace: row.get(0),
            not_null: written
                .into_iter()
                .filter(|c| not_null.contains(c) && !plan.primary_key.contains(c))
                .collect(),
            checks: row.get(2),
        })
    }
}
