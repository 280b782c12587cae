//! Statements that change tables and read their history: DML
//! (`INSERT … VALUES|SELECT`, `UPDATE`, `DELETE`, `TRUNCATE TABLE`),
//! `ALTER TABLE … SET CHANGE_TRACKING`, time travel (`AT`/`BEFORE`) and
//! `CHANGES … AT … END` wherever a table may stand, `CURRENT_TIMESTAMP()`
//! and `SYSTEM$LAST_CHANGE_COMMIT_TIME`. Each DML statement autocommits a
//! table version (see [`crate::history`]).
//!
//! A table with a history stays registered under its name as its current
//! version; a versioned reference in a query is replaced by a table of that
//! version's rows (or its change data) registered for the query alone.

use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, RecordBatch, UInt64Array};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::SchemaRef;
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::sql::sqlparser::ast::{
    AssignmentTarget, Expr, FromTable, FunctionArg, FunctionArgExpr, FunctionArguments, Ident,
    ObjectName, ObjectNamePart, Query, SetExpr, Statement, TableAlias, TableFactor, TableObject,
    TableVersion, TableWithJoins, Value,
};
use datafusion::sql::sqlparser::dialect::SnowflakeDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::history::{History, SqlError, POS_COLUMN};
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

/// `DATA_RETENTION_TIME_IN_DAYS` = 1, Snowflake's default.
const DEFAULT_RETENTION_NS: i64 = 86_400 * 1_000_000_000;

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// A table's name as Snowflake resolves it: unquoted parts fold to upper case.
fn resolved(name: &ObjectName) -> String {
    name.0
        .last()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) if i.quote_style.is_none() => i.value.to_uppercase(),
            ObjectNamePart::Identifier(i) => i.value.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

fn df_err(e: impl std::fmt::Display) -> SqlError {
    SqlError::compilation(e.to_string())
}

/// The history of `table`, loading it from its file the first time.
async fn history(state: &AppState, table: &str) -> Result<Arc<Mutex<History>>, SqlError> {
    if let Some(h) = state.with_histories(|m| m.get(table).cloned()) {
        return Ok(h);
    }
    let df = state
        .ctx
        .table(TableReference::bare(table))
        .await
        .map_err(|_| SqlError {
            code: "002003",
            sql_state: "42S02",
            message: format!(
                "SQL compilation error:\nObject '{table}' does not exist or not authorized."
            ),
        })?;
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

fn lock(h: &Mutex<History>) -> std::sync::MutexGuard<'_, History> {
    h.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers `table` as its current version (after a commit).
fn publish(state: &AppState, table: &str, h: &History) -> Result<(), SqlError> {
    let rows = h.rows_at(h.live(), false);
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
struct Scratch<'a> {
    state: &'a AppState,
    names: Vec<String>,
}

impl Scratch<'_> {
    fn register(&mut self, schema: SchemaRef, rows: Vec<RecordBatch>) -> Result<String, SqlError> {
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

/// Runs a statement that changes a table; `None` when `sql` is not one
/// (a query, or something for the caller to refuse).
pub(crate) async fn execute(state: &AppState, sql: &str) -> Option<Result<Changed, SqlError>> {
    if let Some(setting) = table_setting(sql) {
        return Some(match setting {
            Ok((table, setting)) => match history(state, &table).await {
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
    if upper.len() < 3 || upper[0] != "ALTER" || upper[1] != "TABLE" {
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
    let done = dml_commit(state, statement).await?;
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
            let df = state
                .ctx
                .sql(&rewrite_query(state, source, &mut Vec::new()).await?)
                .await
                .map_err(df_err)?;
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
            let h = history(state, &table).await?;
            let (schema, rows) = {
                let g = lock(&h);
                (g.schema_with_positions(), g.rows_at(g.live(), true))
            };
            let mut scratch = Scratch {
                state,
                names: Vec::new(),
            };
            let tmp = scratch.register(Arc::clone(&schema), rows)?;
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
                where_clause(state, update.selection.as_ref()).await?
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
            let h = history(state, &table).await?;
            let (schema, rows) = {
                let g = lock(&h);
                (g.schema_with_positions(), g.rows_at(g.live(), true))
            };
            let mut scratch = Scratch {
                state,
                names: Vec::new(),
            };
            let tmp = scratch.register(schema, rows)?;
            let sql = format!(
                "SELECT \"{POS_COLUMN}\" FROM \"{tmp}\" AS {alias}{}",
                where_clause(state, delete.selection.as_ref()).await?
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
                let all: Vec<u64> = guard
                    .rows_at(guard.live(), true)
                    .iter()
                    .flat_map(|b| {
                        b.column(b.num_columns() - 1)
                            .as_any()
                            .downcast_ref::<UInt64Array>()
                            .map(|a| a.values().to_vec())
                            .unwrap_or_default()
                    })
                    .collect();
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

async fn where_clause(state: &AppState, selection: Option<&Expr>) -> Result<String, SqlError> {
    Ok(match selection {
        Some(e) => {
            let mut e = e.clone();
            let mut scratch = Vec::new();
            rewrite_expr(state, &mut e, &mut scratch).await?;
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

/// Rewrites a query's versioned table references (`AT`, `BEFORE`,
/// `CHANGES`) into tables registered for it; returns the SQL to run.
/// The registered names are pushed to `scratch` for the caller to drop.
pub(crate) async fn rewrite_query(
    state: &AppState,
    query: &Query,
    scratch: &mut Vec<String>,
) -> Result<String, SqlError> {
    let mut q = query.clone();
    rewrite(state, &mut q, scratch).await?;
    Ok(q.to_string())
}

/// Parses and rewrites a SELECT for the emulator's DataFusion: versioned
/// references, `CURRENT_TIMESTAMP()` and `SYSTEM$LAST_CHANGE_COMMIT_TIME`.
/// `Ok(None)`: nothing to rewrite (run it as written).
pub(crate) async fn rewrite_select(
    state: &AppState,
    sql: &str,
    scratch: &mut Vec<String>,
) -> Result<Option<String>, SqlError> {
    let upper = sql.to_ascii_uppercase();
    let mut text = sql.to_string();
    let mut changed = false;
    if upper.contains("SYSTEM$LAST_CHANGE_COMMIT_TIME") {
        text = last_change_tokens(state, &text).await?;
        changed = true;
    }
    if upper.contains("CURRENT_TIMESTAMP") {
        text = replace_ci(&text, "CURRENT_TIMESTAMP()", "now()");
        changed = true;
    }
    let versioned = [
        " AT(",
        " AT (",
        "BEFORE(",
        "BEFORE (",
        "CHANGES(",
        "CHANGES (",
    ]
    .iter()
    .any(|k| upper.contains(k));
    if !versioned {
        return Ok(changed.then_some(text));
    }
    let mut statements = match Parser::parse_sql(&SnowflakeDialect {}, &text) {
        Ok(s) => s,
        Err(_) => return Ok(changed.then_some(text)),
    };
    let [Statement::Query(query)] = statements.as_mut_slice() else {
        return Ok(changed.then_some(text));
    };
    rewrite(state, query, scratch).await?;
    Ok(Some(query.to_string()))
}

fn replace_ci(text: &str, from: &str, to: &str) -> String {
    let upper = text.to_ascii_uppercase();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while let Some(at) = upper[i..].find(from) {
        out.push_str(&text[i..i + at]);
        out.push_str(to);
        i += at + from.len();
    }
    out.push_str(&text[i..]);
    out
}

/// `SYSTEM$LAST_CHANGE_COMMIT_TIME('<table>')` → the table's last commit
/// time in ns (its creation, if nothing changed it), as a number.
async fn last_change_tokens(state: &AppState, text: &str) -> Result<String, SqlError> {
    const CALL: &str = "SYSTEM$LAST_CHANGE_COMMIT_TIME(";
    let mut out = String::new();
    let mut rest = text;
    loop {
        let upper = rest.to_ascii_uppercase();
        let Some(at) = upper.find(CALL) else {
            out.push_str(rest);
            return Ok(out);
        };
        out.push_str(&rest[..at]);
        let after = &rest[at + CALL.len()..];
        let close = after
            .find(')')
            .ok_or_else(|| SqlError::compilation("unclosed SYSTEM$LAST_CHANGE_COMMIT_TIME("))?;
        let arg = after[..close].trim().trim_matches('\'');
        let table = match arg.strip_prefix('"').and_then(|a| a.strip_suffix('"')) {
            Some(quoted) => quoted.to_string(),
            None => arg.rsplit('.').next().unwrap_or(arg).to_uppercase(),
        };
        let token = match state.with_histories(|m| m.get(&table).cloned()) {
            Some(h) => lock(&h).last_commit_ns(),
            None => {
                // Not changed since the emulator started: its creation time.
                history(state, &table).await?;
                state.created_ns
            }
        };
        out.push_str(&format!("CAST({token} AS BIGINT)"));
        rest = &after[close + 1..];
    }
}

fn rewrite<'a>(
    state: &'a AppState,
    query: &'a mut Query,
    scratch: &'a mut Vec<String>,
) -> futures::future::BoxFuture<'a, Result<(), SqlError>> {
    Box::pin(async move {
        if let Some(with) = &mut query.with {
            for cte in &mut with.cte_tables {
                rewrite(state, &mut cte.query, scratch).await?;
            }
        }
        rewrite_set(state, &mut query.body, scratch).await
    })
}

fn rewrite_set<'a>(
    state: &'a AppState,
    body: &'a mut SetExpr,
    scratch: &'a mut Vec<String>,
) -> futures::future::BoxFuture<'a, Result<(), SqlError>> {
    Box::pin(async move {
        match body {
            SetExpr::Select(select) => {
                for t in &mut select.from {
                    rewrite_factor(state, &mut t.relation, scratch).await?;
                    for j in &mut t.joins {
                        rewrite_factor(state, &mut j.relation, scratch).await?;
                    }
                }
                if let Some(e) = &mut select.selection {
                    rewrite_expr(state, e, scratch).await?;
                }
                Ok(())
            }
            SetExpr::Query(q) => rewrite(state, q, scratch).await,
            SetExpr::SetOperation { left, right, .. } => {
                rewrite_set(state, left, scratch).await?;
                rewrite_set(state, right, scratch).await
            }
            _ => Ok(()),
        }
    })
}

fn rewrite_expr<'a>(
    state: &'a AppState,
    e: &'a mut Expr,
    scratch: &'a mut Vec<String>,
) -> futures::future::BoxFuture<'a, Result<(), SqlError>> {
    Box::pin(async move {
        match e {
            Expr::BinaryOp { left, right, .. } => {
                rewrite_expr(state, left, scratch).await?;
                rewrite_expr(state, right, scratch).await
            }
            Expr::Nested(inner) | Expr::UnaryOp { expr: inner, .. } => {
                rewrite_expr(state, inner, scratch).await
            }
            Expr::InSubquery { subquery, .. } | Expr::Exists { subquery, .. } => {
                rewrite(state, subquery, scratch).await
            }
            Expr::Subquery(q) => rewrite(state, q, scratch).await,
            _ => Ok(()),
        }
    })
}

fn rewrite_factor<'a>(
    state: &'a AppState,
    factor: &'a mut TableFactor,
    scratch: &'a mut Vec<String>,
) -> futures::future::BoxFuture<'a, Result<(), SqlError>> {
    Box::pin(async move {
        match factor {
            TableFactor::Derived { subquery, .. } => rewrite(state, subquery, scratch).await,
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => {
                rewrite_factor(state, &mut table_with_joins.relation, scratch).await?;
                for j in &mut table_with_joins.joins {
                    rewrite_factor(state, &mut j.relation, scratch).await?;
                }
                Ok(())
            }
            TableFactor::Table {
                name,
                alias,
                version,
                ..
            } if version.is_some() => {
                let table = resolved(name);
                let h = history(state, &table).await?;
                let now = now_ns();
                let (schema, rows) = {
                    let g = lock(&h);
                    match version.take() {
                        Some(TableVersion::Function(point)) => {
                            let v = point_version(&g, &point, now)?;
                            (g.schema(), g.rows_at(v, false))
                        }
                        Some(TableVersion::Changes { changes, at, end }) => {
                            let info = named_args(&changes)?
                                .into_iter()
                                .find(|(k, _)| k == "INFORMATION")
                                .map(|(_, v)| v.to_string().to_uppercase())
                                .unwrap_or_default();
                            if info != "DEFAULT" {
                                return Err(SqlError::compilation(format!(
                                    "CHANGES(INFORMATION => {info}) is not emulated (DEFAULT is)"
                                )));
                            }
                            let a = point_version(&g, &at, now)?;
                            let b = match &end {
                                Some(end) => point_version(&g, end, now)?,
                                None => g.live(),
                            };
                            g.changes(a, b)?
                        }
                        _ => return Err(SqlError::compilation(
                            "this kind of time travel is not emulated (AT, BEFORE and CHANGES are)",
                        )),
                    }
                };
                let mut registered = Scratch {
                    state,
                    names: Vec::new(),
                };
                let tmp = registered.register(schema, rows)?;
                // The caller drops it once the query has run.
                scratch.append(&mut registered.names);
                if alias.is_none() {
                    let last = name
                        .0
                        .last()
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| table.clone());
                    *alias = Some(TableAlias {
                        explicit: true,
                        name: Ident::new(last.trim_matches('"')),
                        columns: Vec::new(),
                        at: None,
                    });
                }
                *name = ObjectName::from(vec![Ident::with_quote('"', tmp)]);
                Ok(())
            }
            _ => Ok(()),
        }
    })
}

/// `NAME(KEY => value, …)` as (KEY, value) pairs.
fn named_args(call: &Expr) -> Result<Vec<(String, Expr)>, SqlError> {
    let Expr::Function(f) = call else {
        return Err(SqlError::compilation(format!(
            "expected a clause, found {call}"
        )));
    };
    let FunctionArguments::List(list) = &f.args else {
        return Ok(Vec::new());
    };
    list.args
        .iter()
        .map(|a| match a {
            FunctionArg::Named {
                name,
                arg: FunctionArgExpr::Expr(e),
                ..
            } => Ok((name.value.to_uppercase(), e.clone())),
            FunctionArg::ExprNamed {
                name,
                arg: FunctionArgExpr::Expr(e),
                ..
            } => Ok((name.to_string().to_uppercase(), e.clone())),
            other => Err(SqlError::compilation(format!(
                "unexpected argument {other}"
            ))),
        })
        .collect()
}

/// The version an `AT(…)`, `BEFORE(…)` or `END(…)` clause names.
fn point_version(h: &History, clause: &Expr, now: i64) -> Result<u32, SqlError> {
    let Expr::Function(f) = clause else {
        return Err(SqlError::compilation(format!(
            "expected AT(…), found {clause}"
        )));
    };
    let kind = f.name.to_string().to_uppercase();
    let before = kind == "BEFORE";
    let args = named_args(clause)?;
    let Some((key, value)) = args.into_iter().next() else {
        return Err(SqlError::compilation(format!(
            "{kind}() needs TIMESTAMP => or OFFSET =>"
        )));
    };
    let at = match key.as_str() {
        "TIMESTAMP" => time_of(&value, now)?,
        "OFFSET" => {
            let secs: f64 = value.to_string().replace(' ', "").parse().map_err(|_| {
                SqlError::compilation(format!("OFFSET => {value}: a number of seconds"))
            })?;
            now + (secs * 1e9) as i64
        }
        other => {
            return Err(SqlError::compilation(format!(
                "{kind}({other} => …) is not emulated (TIMESTAMP and OFFSET are)"
            )))
        }
    };
    h.version_at(at, before, now)
}

/// A time given as a literal (cast or not), `TO_TIMESTAMP*('…')` or `CURRENT_TIMESTAMP()`.
fn time_of(e: &Expr, now: i64) -> Result<i64, SqlError> {
    match e {
        Expr::Cast { expr, .. } | Expr::Nested(expr) => time_of(expr, now),
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => parse_time(s)
                .ok_or_else(|| SqlError::compilation(format!("cannot read '{s}' as a timestamp"))),
            other => Err(SqlError::compilation(format!("{other} is not a timestamp"))),
        },
        Expr::Function(f) => {
            let name = f.name.to_string().to_uppercase();
            if name == "CURRENT_TIMESTAMP" || name == "NOW" {
                return Ok(now);
            }
            if name.starts_with("TO_TIMESTAMP") {
                if let FunctionArguments::List(list) = &f.args {
                    if let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(inner))) =
                        list.args.first()
                    {
                        return time_of(inner, now);
                    }
                }
            }
            Err(SqlError::compilation(format!(
                "{e} is not a time the emulator can read"
            )))
        }
        _ => Err(SqlError::compilation(format!(
            "{e} is not a time the emulator can read"
        ))),
    }
}

/// `2026-12-02 04:00:00.123 +0000`, RFC 3339, or a zone-less time (UTC).
fn parse_time(s: &str) -> Option<i64> {
    use chrono::{DateTime, NaiveDateTime};
    let s = s.trim();
    let zoned = [
        "%Y-%m-%d %H:%M:%S%.f %z",
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%z",
    ];
    for f in zoned {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return t.timestamp_nanos_opt();
        }
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return t.timestamp_nanos_opt();
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return t.and_utc().timestamp_nanos_opt();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_as_snowflake_writes_them() {
        let t = parse_time("2026-12-02 04:00:00.000 +0000").unwrap();
        assert_eq!(t, parse_time("2026-12-02T04:00:00Z").unwrap());
        assert_eq!(t, parse_time("2026-12-02 04:00:00").unwrap());
        assert_eq!(
            parse_time("2026-12-02 05:00:00.000 +0100").unwrap(),
            t,
            "zones are honoured"
        );
        assert!(parse_time("yesterday").is_none());
    }

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
