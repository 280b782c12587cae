//! Before a replay writes anything: does the snapshot still fit today's
//! transform and the target table? (`floe replay --dry-run` prints this.)

use std::sync::Arc;

use datafusion::datasource::MemTable;
use operators::OperatorError;
use schemas::config::Config;
use schemas::pg::{quote_qualified, PgType};
use serde::Serialize;

use crate::error::TransformError;
use crate::postgres::{application_name, refresh, Target};
use crate::run::plan;
use crate::snapshot::{Chain, FieldSpec};
use crate::PipelineError;

/// How a column the replay writes compares with the target's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ColumnStatus {
    #[serde(rename = "same")]
    Same,
    /// There is no target table yet.
    #[serde(rename = "new table")]
    NewTable,
    /// The replay outputs it; the target has no such column.
    #[serde(rename = "added")]
    Added,
    /// The target has it; the replay does not output it.
    #[serde(rename = "removed")]
    Removed,
    #[serde(rename = "type changed")]
    TypeChanged,
}

impl ColumnStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnStatus::Same => "same",
            ColumnStatus::NewTable => "new table",
            ColumnStatus::Added => "added",
            ColumnStatus::Removed => "removed",
            ColumnStatus::TypeChanged => "type changed",
        }
    }

    /// Whether the replay would stop on it.
    pub fn is_drift(self) -> bool {
        matches!(
            self,
            ColumnStatus::Added | ColumnStatus::Removed | ColumnStatus::TypeChanged
        )
    }
}

impl std::fmt::Display for ColumnStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One target column, as the replay would write it and as the target has it.
#[derive(Debug, Clone, Serialize)]
pub struct ColumnCheck {
    pub name: String,
    /// The type the replay would create (`None`: the replay has no such column).
    pub replay: Option<String>,
    /// The type in the target table (`None`: the target has no such column,
    /// or there is no target table yet).
    pub target: Option<String>,
    pub status: ColumnStatus,
}

/// What a replay of one snapshot (with its chain) would do.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayPlan {
    pub table: String,
    pub target_table: String,
    pub snapshot: String,
    pub run_id: String,
    /// Rows the replay loads (for a change set: the count its run left).
    pub snapshot_rows: u64,
    /// Change sets applied over the full snapshot (0: a full snapshot alone).
    pub change_sets: usize,
    pub snapshot_files: usize,
    pub snapshot_bytes: u64,
    /// Rows in the target now (`None`: no such table yet).
    pub target_rows: Option<u64>,
    pub columns: Vec<ColumnCheck>,
    /// The columns differ from the target's: the replay would stop.
    pub schema_drift: bool,
    /// The shrink guard would refuse it (without `--allow-shrink`).
    pub shrink_refused: bool,
}

impl ReplayPlan {
    /// The column-by-column explanation of a drift.
    pub fn explain_drift(&self) -> String {
        self.columns
            .iter()
            .filter(|c| c.status != ColumnStatus::Same)
            .map(|c| match c.status {
                ColumnStatus::Added => format!(
                    "  {}: the replay outputs it ({}), the target has no such column",
                    c.name,
                    c.replay.as_deref().unwrap_or("?")
                ),
                ColumnStatus::Removed => format!(
                    "  {}: the target has it ({}), the replay does not output it",
                    c.name,
                    c.target.as_deref().unwrap_or("?")
                ),
                _ => format!(
                    "  {}: the target has {}, the replay would write {}",
                    c.name,
                    c.target.as_deref().unwrap_or("?"),
                    c.replay.as_deref().unwrap_or("?")
                ),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Plans today's transform over the snapshot's schema and compares what it
/// would write with the target table. Reads the target; writes nothing.
pub async fn check(
    config: &Config,
    name: &str,
    target: &Target,
    chain: &Chain,
) -> Result<ReplayPlan, PipelineError> {
    let t = &config.tables[name];
    let drift = |explanation: String| PipelineError::SchemaDrift {
        table: name.to_string(),
        explanation,
    };
    let ctx = plan::context(config, operators::GeometryOptions::default());
    let empty = MemTable::try_new(Arc::clone(chain.schema()), vec![vec![]])
        .map_err(|e| PipelineError::transform(name, e))?;
    let snapshot_columns = || {
        chain
            .base
            .manifest
            .schema
            .iter()
            .map(|f| format!("  {}", FieldSpec::describe(f)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let df = match plan::transform(&ctx, t, Arc::new(empty)).await {
        Ok(df) => df,
        Err(e @ TransformError::Operator(OperatorError::Source(_))) => {
            return Err(PipelineError::transform(name, e))
        }
        Err(e) => {
            return Err(drift(format!(
                "today's transform does not fit the snapshot's columns: {e}\nthe snapshot has:\n{}",
                snapshot_columns()
            )))
        }
    };
    let out = Arc::new(df.schema().as_arrow().clone());
    let planned = plan::plan_columns(config, name, t, &out)?;

    let session = target
        .connect(
            &application_name(&[&t.target, "replay-check"]),
            &config.load,
        )
        .await?;
    let qualified = quote_qualified(&target.schema, &t.target);
    let pg = |step: &'static str| {
        let table = name.to_string();
        move |source: tokio_postgres::Error| PipelineError::Postgres {
            table: table.clone(),
            step,
            message: source.to_string(),
            source,
        }
    };
    let existing: Vec<(String, String)> = session
        .client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&qualified],
        )
        .await
        .map_err(pg("reading the target's columns"))?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let exists: bool = session
        .client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified])
        .await
        .map_err(pg("looking up the target"))?
        .get(0);
    let target_rows = match exists {
        true => {
            let n: i64 = session
                .client
                .query_one(&format!("SELECT count(*) FROM {qualified}"), &[])
                .await
                .map_err(pg("counting the target"))?
                .get(0);
            Some(n as u64)
        }
        false => None,
    };

    let mut columns = Vec::new();
    for c in &planned {
        let replay = c.ty.to_string();
        let status_target = existing.iter().find(|(n, _)| *n == c.name);
        let (target_type, status) = match (exists, status_target) {
            (false, _) => (None, ColumnStatus::NewTable),
            (true, None) => (None, ColumnStatus::Added),
            (true, Some((_, ty))) => (
                Some(ty.clone()),
                if same_type(&c.ty, ty) {
                    ColumnStatus::Same
                } else {
                    ColumnStatus::TypeChanged
                },
            ),
        };
        columns.push(ColumnCheck {
            name: c.name.clone(),
            replay: Some(replay),
            target: target_type,
            status,
        });
    }
    for (n, ty) in &existing {
        if !planned.iter().any(|c| c.name == *n) {
            columns.push(ColumnCheck {
                name: n.clone(),
                replay: None,
                target: Some(ty.clone()),
                status: ColumnStatus::Removed,
            });
        }
    }
    let schema_drift = columns.iter().any(|c| c.status.is_drift());
    let rows = chain.rows();
    let shrink_refused =
        target_rows.is_some_and(|old| refresh::shrink_refused(old, rows, config.load.max_shrink));
    Ok(ReplayPlan {
        table: name.to_string(),
        target_table: format!("{}.{}", target.schema, t.target),
        snapshot: chain.describe(),
        run_id: chain.tip().manifest.run_id.clone(),
        snapshot_rows: rows,
        change_sets: chain.changes.len(),
        snapshot_files: chain.files(),
        snapshot_bytes: chain.bytes(),
        target_rows,
        columns,
        schema_drift,
        shrink_refused,
    })
}

/// `format_type` spells types its own way (`timestamp without time zone`,
/// `geometry(LineString,4326)`); compare parsed types where floe knows them.
fn same_type(planned: &PgType, existing: &str) -> bool {
    match existing.parse::<PgType>() {
        Ok(t) => t == *planned,
        Err(_) => planned.to_string().eq_ignore_ascii_case(existing),
    }
}
