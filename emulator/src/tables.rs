//! The emulator's registry of table histories: a table gets one the first
//! time a statement changes it or asks for its history, and is then
//! registered with DataFusion as its current version after every commit.

use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::sql::sqlparser::ast::{ObjectName, ObjectNamePart};

use crate::history::{History, SqlError};
use crate::AppState;

/// `DATA_RETENTION_TIME_IN_DAYS` = 1, Snowflake's default.
const DEFAULT_RETENTION_NS: i64 = 86_400 * 1_000_000_000;

pub(crate) fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// A table's name as Snowflake resolves it: unquoted parts fold to upper case.
pub(crate) fn resolved(name: &ObjectName) -> String {
    name.0
        .last()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) if i.quote_style.is_none() => i.value.to_uppercase(),
            ObjectNamePart::Identifier(i) => i.value.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

pub(crate) fn df_err(e: impl std::fmt::Display) -> SqlError {
    SqlError::compilation(e.to_string())
}

/// Snowflake's answer for a table that is not there.
pub(crate) fn missing(table: &str) -> SqlError {
    SqlError {
        code: "002003",
        sql_state: "42S02",
        message: format!(
            "SQL compilation error:\nObject '{table}' does not exist or not authorized."
        ),
    }
}

/// The history of `table`, loading it from its file the first time.
pub(crate) async fn history(
    state: &AppState,
    table: &str,
) -> Result<Arc<Mutex<History>>, SqlError> {
    if let Some(h) = state.with_histories(|m| m.get(table).cloned()) {
        return Ok(h);
    }
    let df = state
        .ctx
        .table(TableReference::bare(table))
        .await
        .map_err(|_| missing(table))?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.map_err(df_err)?;
    let loaded = History::new(
        table,
        schema,
        batches,
        state.created_ns,
        DEFAULT_RETENTION_NS,
    );
    Ok(state.with_histories(|m| {
        Arc::clone(
            m.entry(table.to_string())
                .or_insert_with(|| Arc::new(Mutex::new(loaded))),
        )
    }))
}

pub(crate) fn lock(h: &Mutex<History>) -> std::sync::MutexGuard<'_, History> {
    h.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers `table` as its current version (after a commit).
pub(crate) fn publish(state: &AppState, table: &str, h: &History) -> Result<(), SqlError> {
    let rows = h.rows_at(h.live(), false)?;
    let mem = MemTable::try_new(h.schema(), vec![rows]).map_err(df_err)?;
    let name = TableReference::bare(table);
    let _ = state.ctx.deregister_table(name.clone());
    state
        .ctx
        .register_table(name, Arc::new(mem))
        .map_err(df_err)?;
    state.bump_generation();
    Ok(())
}

/// A table registered for one statement, dropped with it.
pub(crate) struct Scratch<'a> {
    pub(crate) state: &'a AppState,
    pub(crate) names: Vec<String>,
}

impl Scratch<'_> {
    pub(crate) fn register(
        &mut self,
        schema: SchemaRef,
        rows: Vec<RecordBatch>,
    ) -> Result<String, SqlError> {
        let name = format!("__FLOE_{}", self.state.next_number());
        let mem = MemTable::try_new(schema, vec![rows]).map_err(df_err)?;
        self.state
            .ctx
            .register_table(TableReference::bare(name.clone()), Arc::new(mem))
            .map_err(df_err)?;
        self.names.push(name.clone());
        Ok(name)
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = self
                .state
                .ctx
                .deregister_table(TableReference::bare(n.clone()));
        }
    }
}
