//! Statements that change tables: DML (`INSERT … VALUES|SELECT`, `UPDATE`,
//! `DELETE`, `TRUNCATE TABLE`), each autocommitting a table version, and
//! `ALTER TABLE … SET CHANGE_TRACKING | DATA_RETENTION_TIME_IN_DAYS`.
//!
//! A DML statement's rows are found by running its `WHERE` (and computing
//! its new values) with DataFusion over the current version, with each
//! stored row's position as a hidden column.

use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, RecordBatch, UInt64Array};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::SchemaRef;
use datafusion::sql::sqlparser::ast::{
    AssignmentTarget, Expr, FromTable, Statement, TableFactor, TableObject, TableWithJoins,
};
use datafusion::sql::sqlparser::dialect::SnowflakeDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::history::{History, SqlError, POS_COLUMN};
use crate::tables::{df_err, history, lock, now_ns, publish, resolved, Scratch};
use crate::travel::{rewrite_expr, rewrite_query};
use crate::AppState;

/// What a changing statement did.
pub(crate) enum Changed {
    /// DDL-like: "Statement executed successfully."
    Done,
    /// A DML answer: one row, one count per column, and the statement type
    /// the connectors read the row count by.
    Rows {
        columns: Vec<(&'static str, u64)>,
        statement_type: u64,
    },
}

/// Snowflake's statement type ids for DML (the connectors sum the answer's
/// row as the row count for these).
const INSERT_TYPE: u64 = 0x3100;
const UPDATE_TYPE: u64 = 0x3200;
const DELETE_TYPE: u64 = 0x3300;

/// Runs a statement that changes a table; `None` when `sql` is not one
/// (a query, or something for the caller to refuse).
pub(crate) async fn execute(state: &AppState, sql: &str) -> Option<Result<Changed, SqlError>> {
    if let Some(setting) = table_setting(sql) {
        return Some(match setting {
            Ok((name, setting)) => match history(
                state,
                // A view's change tracking is its table's.
                &crate::views::find(state, &name).map_or(name, |v| v.table),
            )
            .await
            {
                Ok(h) => {
                    let mut h = lock(&h);
                    match setting {
                        TableSetting::ChangeTracking(on) => h.set_tracking(on),
                        TableSetting::RetentionDays(days) => h.set_retention_days(days),
                    }
                    Ok(Changed::Done)
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        });
    }
    let upper = sql.trim_start().to_ascii_uppercase();
    if !["INSERT", "UPDATE", "DELETE", "TRUNCATE"]
        .iter()
        .any(|k| upper.starts_with(k))
    {
        return None;
    }
    let statement = match Parser::parse_sql(&SnowflakeDialect {}, sql) {
        Ok(mut s) if s.len() == 1 => s.remove(0),
        Ok(_) => return Some(Err(SqlError::compilation("one statement at a time"))),
        Err(e) => return Some(Err(SqlError::compilation(e.to_string()))),
    };
    Some(Box::pin(dml(state, statement)).await)
}

/// A table parameter the emulator keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
enum TableSetting {
    ChangeTracking(bool),
    RetentionDays(u32),
}

/// `ALTER TABLE <t> SET CHANGE_TRACKING = TRUE|FALSE` or
/// `… SET DATA_RETENTION_TIME_IN_DAYS = <n>`.
fn table_setting(sql: &str) -> Option<Result<(String, TableSetting), SqlError>> {
    let words: Vec<String> = sql
        .replace('=', " = ")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    if upper.len() < 3 || upper[0] != "ALTER" || !(upper[1] == "TABLE" || upper[1] == "VIEW") {
        return None;
    }
    let known = ["CHANGE_TRACKING", "DATA_RETENTION_TIME_IN_DAYS"];
    if !upper.iter().any(|w| known.contains(&w.as_str())) {
        return None;
    }
    let parsed = match upper.as_slice() {
        [_, _, _, set, key, eq, value] if set == "SET" && eq == "=" => {
            let name = &words[2];
            let table = match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
                Some(quoted) => quoted.to_string(),
                None => name.rsplit('.').next().unwrap_or(name).to_uppercase(),
            };
            let setting = match (key.as_str(), value.as_str()) {
                ("CHANGE_TRACKING", "TRUE") => Ok(TableSetting::ChangeTracking(true)),
                ("CHANGE_TRACKING", "FALSE") => Ok(TableSetting::ChangeTracking(false)),
                ("DATA_RETENTION_TIME_IN_DAYS", n) => n
                    .parse()
                    .map(TableSetting::RetentionDays)
                    .map_err(|_| SqlError::compilation(format!("invalid value [{n}] for parameter '{key}'"))),
                _ => Err(SqlError::compilation(format!(
                    "invalid value [{value}] for parameter '{key}'"
                ))),
            };
            setting.map(|s| (table, s))
        }
        _ => Err(SqlError::compilation(
            "the emulator takes ALTER TABLE <name> SET CHANGE_TRACKING = TRUE|FALSE or SET DATA_RETENTION_TIME_IN_DAYS = <n>",
        )),
    };
    Some(parsed)
}

/// Runs a DML statement, answering once its commit time has passed (so a
/// `CURRENT_TIMESTAMP()` after the answer is never before the commit).
async fn dml(state: &AppState, statement: Statement) -> Result<Changed, SqlError> {
    let writing = state.writer.lock().await;
    let done = dml_commit(state, statement).await?;
    drop(writing);
    let newest = state.with_histories(|m| {
        m.values()
            .map(|h| lock(h).last_commit_ns())
            .max()
            .unwrap_or(0)
    });
    let ahead = newest - now_ns();
    if ahead > 0 {
        tokio::time::sleep(std::time::Duration::from_nanos(ahead as u64)).await;
    }
    Ok(done)
}

async fn dml_commit(state: &AppState, statement: Statement) -> Result<Changed, SqlError> {
    match statement {
        Statement::Insert(insert) => {
            let TableObject::TableName(name) = &insert.table else {
                return Err(SqlError::compilation("INSERT into a table function"));
            };
            let table = resolved(name);
            let source = insert
                .source
                .as_ref()
                .ok_or_else(|| SqlError::compilation("INSERT needs VALUES or a query"))?;
            let h = history(state, &table).await?;
            let schema = lock(&h).schema();
            let mut scratch = Scratch {
                state,
                names: Vec::new(),
            };
            let sql = rewrite_query(state, source, &mut scratch.names).await?;
            let df = state.ctx.sql(&sql).await.map_err(df_err)?;
            let rows = df.collect().await.map_err(df_err)?;
            let columns: Vec<String> = insert.columns.iter().map(resolved).collect();
            let batch = conform(&schema, &rows, &columns)?;
            let n = batch.num_rows() as u64;
            let mut guard = lock(&h);
            guard.commit(&[], None, Some(batch), now_ns());
            publish(state, &table, &guard)?;
            Ok(Changed::Rows {
                columns: vec![("number of rows inserted", n)],
                statement_type: INSERT_TYPE,
            })
        }
        Statement::Update(update) => {
            let (table, alias) = single_table(&update.table)?;
            if update.from.is_some() {
                return Err(SqlError::compilation("UPDATE … FROM is not emulated"));
            }
            let (h, mut scratch, tmp, schema) = current_rows(state, &table).await?;
            let mut assigned = std::collections::HashMap::new();
            for a in &update.assignments {
                let AssignmentTarget::ColumnName(c) = &a.target else {
                    return Err(SqlError::compilation("tuple assignments are not emulated"));
                };
                assigned.insert(resolved(c), a.value.to_string());
            }
            let select: Vec<String> = schema
                .fields()
                .iter()
                .map(|f| {
                    let quoted = format!("\"{}\"", f.name());
                    match assigned.get(f.name()) {
                        Some(expr) => format!("{expr} AS {quoted}"),
                        None => quoted,
                    }
                })
                .collect();
            let sql = format!(
                "SELECT {} FROM \"{tmp}\" AS {alias}{}",
                select.join(", "),
                where_clause(state, update.selection.as_ref(), &mut scratch.names).await?
            );
            let out = run(state, &sql).await?;
            let (positions, successors) = split_positions(&lock(&h).schema(), &out)?;
            let n = positions.len() as u64;
            let mut guard = lock(&h);
            guard.commit(&positions, Some(successors), None, now_ns());
            publish(state, &table, &guard)?;
            Ok(Changed::Rows {
                columns: vec![
                    ("number of rows updated", n),
                    ("number of multi-joined rows updated", 0),
                ],
                statement_type: UPDATE_TYPE,
            })
        }
        Statement::Delete(delete) => {
            let from = match &delete.from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
            };
            let [only] = from.as_slice() else {
                return Err(SqlError::compilation("DELETE from one table"));
            };
            let (table, alias) = single_table(only)?;
            if delete.using.is_some() {
                return Err(SqlError::compilation("DELETE … USING is not emulated"));
            }
            let (h, mut scratch, tmp, _) = current_rows(state, &table).await?;
            let sql = format!(
                "SELECT \"{POS_COLUMN}\" FROM \"{tmp}\" AS {alias}{}",
                where_clause(state, delete.selection.as_ref(), &mut scratch.names).await?
            );
            let positions = positions(&run(state, &sql).await?)?;
            let n = positions.len() as u64;
            let mut guard = lock(&h);
            guard.commit(&positions, None, None, now_ns());
            publish(state, &table, &guard)?;
            Ok(Changed::Rows {
                columns: vec![("number of rows deleted", n)],
                statement_type: DELETE_TYPE,
            })
        }
        Statement::Truncate(truncate) => {
            for target in &truncate.table_names {
                let table = resolved(&target.name);
                let h = history(state, &table).await?;
                let mut guard = lock(&h);
                let all = positions(&guard.rows_at(guard.live(), true)?)?;
                guard.commit(&all, None, None, now_ns());
                publish(state, &table, &guard)?;
            }
            Ok(Changed::Done)
        }
        other => Err(SqlError::compilation(format!(
            "the emulator does not run: {other}"
        ))),
    }
}

/// A table's history and its current rows, with their positions, registered
/// for one statement: (history, the registration, its name, its schema).
async fn current_rows<'a>(
    state: &'a AppState,
    table: &str,
) -> Result<(Arc<Mutex<History>>, Scratch<'a>, String, SchemaRef), SqlError> {
    let h = history(state, table).await?;
    let (schema, rows) = {
        let g = lock(&h);
        (g.schema_with_positions(), g.rows_at(g.live(), true)?)
    };
    let mut scratch = Scratch {
        state,
        names: Vec::new(),
    };
    let tmp = scratch.register(Arc::clone(&schema), rows)?;
    Ok((h, scratch, tmp, schema))
}

/// The one table a DML statement names, and the alias its expressions use.
fn single_table(t: &TableWithJoins) -> Result<(String, String), SqlError> {
    match &t.relation {
        TableFactor::Table { name, alias, .. } if t.joins.is_empty() => {
            let table = resolved(name);
            let alias = match alias {
                Some(a) => a.name.to_string(),
                None => name
                    .0
                    .last()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| table.clone()),
            };
            Ok((table, alias))
        }
        _ => Err(SqlError::compilation("DML on one plain table")),
    }
}

/// ` WHERE …` with its versioned references rewritten (their tables go to `scratch`).
async fn where_clause(
    state: &AppState,
    selection: Option<&Expr>,
    scratch: &mut Vec<String>,
) -> Result<String, SqlError> {
    Ok(match selection {
        Some(e) => {
            let mut e = e.clone();
            rewrite_expr(state, &mut e, scratch).await?;
            format!(" WHERE {e}")
        }
        None => String::new(),
    })
}

async fn run(state: &AppState, sql: &str) -> Result<Vec<RecordBatch>, SqlError> {
    state
        .ctx
        .sql(sql)
        .await
        .map_err(df_err)?
        .collect()
        .await
        .map_err(df_err)
}

fn positions(batches: &[RecordBatch]) -> Result<Vec<u64>, SqlError> {
    let mut out = Vec::new();
    for b in batches {
        let col = b
            .column_by_name(POS_COLUMN)
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
            .ok_or_else(|| SqlError::compilation("lost the row positions"))?;
        out.extend(col.values().iter().copied());
    }
    Ok(out)
}

/// An UPDATE's selected rows: their positions, and their new values in the table's shape.
fn split_positions(
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<(Vec<u64>, RecordBatch), SqlError> {
    let positions = positions(batches)?;
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    Ok((positions, conform(schema, batches, &names)?))
}

/// Rows from a query as the table's columns: by name for `columns` (or all
/// of the table's, by position), cast to the table's types, the rest NULL.
fn conform(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    columns: &[String],
) -> Result<RecordBatch, SqlError> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let merged = match batches.first() {
        Some(first) => Some(concat_batches(&first.schema(), batches).map_err(df_err)?),
        None => None,
    };
    let targets: Vec<String> = if columns.is_empty() {
        schema.fields().iter().map(|f| f.name().clone()).collect()
    } else {
        columns.to_vec()
    };
    let mut out: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let source = targets.iter().position(|t| t == field.name());
        let array = match (source, &merged) {
            (Some(i), Some(m)) if i < m.num_columns() => cast(m.column(i), field.data_type())
                .map_err(|e| SqlError::compilation(format!("column {}: {e}", field.name())))?,
            (Some(_), Some(_)) => {
                return Err(SqlError::compilation(
                    "fewer values than columns in the INSERT",
                ))
            }
            _ => arrow::array::new_null_array(field.data_type(), rows),
        };
        if !field.is_nullable() && array.null_count() > 0 {
            return Err(SqlError {
                code: "100072",
                sql_state: "22000",
                message: format!("NULL result in a non-nullable column {}", field.name()),
            });
        }
        out.push(array);
    }
    RecordBatch::try_new(Arc::clone(schema), out).map_err(df_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_settings_are_recognised() {
        assert_eq!(
            table_setting("ALTER TABLE topo SET CHANGE_TRACKING = TRUE"),
            Some(Ok(("TOPO".into(), TableSetting::ChangeTracking(true))))
        );
        assert_eq!(
            table_setting("alter table \"Topo\" set change_tracking=false"),
            Some(Ok(("Topo".into(), TableSetting::ChangeTracking(false))))
        );
        assert_eq!(
            table_setting("ALTER TABLE T SET DATA_RETENTION_TIME_IN_DAYS = 0"),
            Some(Ok(("T".into(), TableSetting::RetentionDays(0))))
        );
        assert!(
            table_setting("ALTER TABLE t SET CHANGE_TRACKING = MAYBE").is_some_and(|r| r.is_err())
        );
        assert_eq!(table_setting("ALTER SESSION SET X = 1"), None);
    }
}
