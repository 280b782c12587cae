//! Time travel and change data in queries: a versioned table reference
//! (`AT`, `BEFORE`, `CHANGES … AT … END`) in `FROM`, a join or an
//! `IN`/`EXISTS` subquery becomes a table of that version's rows (or its
//! change data) registered for the query alone; `CURRENT_TIMESTAMP()` and
//! `SYSTEM$LAST_CHANGE_COMMIT_TIME('T')` are answered from the histories.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, ObjectName, Query, SetExpr,
    Statement, TableAlias, TableFactor, TableVersion, Value,
};
use datafusion::sql::sqlparser::dialect::SnowflakeDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::history::{History, SqlError};
use crate::tables::{history, lock, now_ns, resolved, Scratch};
use crate::AppState;

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
        text = last_change_tokens(state, &text)?;
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
fn last_change_tokens(state: &AppState, text: &str) -> Result<String, SqlError> {
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
        let table = table_of(state, table);
        let token = match state.with_histories(|m| m.get(&table).cloned()) {
            Some(h) => lock(&h).last_commit_ns(),
            // Not changed since the emulator started: its creation time (and
            // no need to load it: a per-minute poll must stay cheap).
            None if state
                .ctx
                .table_exist(datafusion::common::TableReference::bare(table.clone()))
                .unwrap_or(false) =>
            {
                state.created_ns
            }
            None => return Err(crate::tables::missing(&table)),
        };
        out.push_str(&format!("CAST({token} AS BIGINT)"));
        rest = &after[close + 1..];
    }
}

/// The table a name reads: a view's table, else the name itself.
fn table_of(state: &AppState, name: String) -> String {
    crate::views::find(state, &name).map_or(name, |v| v.table)
}

/// Rewrites every versioned table reference of `query`.
async fn rewrite(
    state: &AppState,
    query: &mut Query,
    scratch: &mut Vec<String>,
) -> Result<(), SqlError> {
    rewrite_versioned(state, scratch, |f| visit_query(query, f)).await
}

/// As [`rewrite`], for the references in an expression (a DML's `WHERE`).
pub(crate) async fn rewrite_expr(
    state: &AppState,
    e: &mut Expr,
    scratch: &mut Vec<String>,
) -> Result<(), SqlError> {
    rewrite_versioned(state, scratch, |f| visit_expr(e, f)).await
}

/// A table factor visitor, applied to everything `visit` reaches.
type Visit<'f> = &'f mut dyn FnMut(&mut TableFactor) -> Result<(), SqlError>;

/// Loads the history of every table a versioned reference names (the only
/// step that waits), then replaces each reference by a table of that
/// version's rows or change data, registered into `scratch`.
async fn rewrite_versioned(
    state: &AppState,
    scratch: &mut Vec<String>,
    mut visit: impl FnMut(Visit<'_>) -> Result<(), SqlError>,
) -> Result<(), SqlError> {
    let mut names = Vec::new();
    visit(&mut |factor| {
        if let TableFactor::Table {
            name,
            version: Some(_),
            ..
        } = factor
        {
            names.push(table_of(state, resolved(name)));
        }
        Ok(())
    })?;
    let mut histories = HashMap::new();
    for table in names {
        let h = history(state, &table).await?;
        histories.insert(table, h);
    }
    let now = now_ns();
    visit(&mut |factor| replace_versioned(state, factor, &histories, now, scratch))
}

/// Calls `f` on every table factor of `query`: its CTEs, FROM clauses and
/// joins, derived tables, and the subqueries of its `WHERE`s.
fn visit_query(query: &mut Query, f: Visit<'_>) -> Result<(), SqlError> {
    if let Some(with) = &mut query.with {
        for cte in &mut with.cte_tables {
            visit_query(&mut cte.query, f)?;
        }
    }
    visit_set(&mut query.body, f)
}

fn visit_set(body: &mut SetExpr, f: Visit<'_>) -> Result<(), SqlError> {
    match body {
        SetExpr::Select(select) => {
            for t in &mut select.from {
                visit_factor(&mut t.relation, f)?;
                for j in &mut t.joins {
                    visit_factor(&mut j.relation, f)?;
                }
            }
            match &mut select.selection {
                Some(e) => visit_expr(e, f),
                None => Ok(()),
            }
        }
        SetExpr::Query(q) => visit_query(q, f),
        SetExpr::SetOperation { left, right, .. } => {
            visit_set(left, f)?;
            visit_set(right, f)
        }
        _ => Ok(()),
    }
}

fn visit_expr(e: &mut Expr, f: Visit<'_>) -> Result<(), SqlError> {
    match e {
        Expr::BinaryOp { left, right, .. } => {
            visit_expr(left, f)?;
            visit_expr(right, f)
        }
        Expr::Nested(inner) | Expr::UnaryOp { expr: inner, .. } => visit_expr(inner, f),
        Expr::InSubquery { subquery, .. } | Expr::Exists { subquery, .. } => {
            visit_query(subquery, f)
        }
        Expr::Subquery(q) => visit_query(q, f),
        _ => Ok(()),
    }
}

fn visit_factor(factor: &mut TableFactor, f: Visit<'_>) -> Result<(), SqlError> {
    match factor {
        TableFactor::Derived { subquery, .. } => visit_query(subquery, f),
        TableFactor::NestedJoin {
            table_with_joins, ..
        } => {
            visit_factor(&mut table_with_joins.relation, f)?;
            for j in &mut table_with_joins.joins {
                visit_factor(&mut j.relation, f)?;
            }
            Ok(())
        }
        other => f(other),
    }
}

/// Replaces a versioned reference (`T AT(…)`, `T CHANGES(…) AT(…) END(…)`)
/// by a table of its rows registered for the query; other factors stay.
fn replace_versioned(
    state: &AppState,
    factor: &mut TableFactor,
    histories: &HashMap<String, Arc<Mutex<History>>>,
    now: i64,
    scratch: &mut Vec<String>,
) -> Result<(), SqlError> {
    let TableFactor::Table {
        name,
        alias,
        version,
        ..
    } = factor
    else {
        return Ok(());
    };
    let Some(version) = version.take() else {
        return Ok(());
    };
    let named = resolved(name);
    let view = crate::views::find(state, &named);
    let table = table_of(state, named);
    let h = histories
        .get(&table)
        .ok_or_else(|| crate::tables::missing(&table))?;
    let (schema, rows) = {
        let g = lock(h);
        let projection = view.map(|v| v.projection(&g.schema())).transpose()?;
        match version {
            TableVersion::Function(point) => {
                let v = point_version(&g, &point, now)?;
                let rows = g.rows_at(v, false)?;
                match &projection {
                    None => (g.schema(), rows),
                    Some(p) => {
                        let schema = g.schema().project(p).map_err(crate::tables::df_err)?;
                        let rows = rows
                            .iter()
                            .map(|b| b.project(p).map_err(crate::tables::df_err))
                            .collect::<Result<Vec<_>, _>>()?;
                        (Arc::new(schema), rows)
                    }
                }
            }
            TableVersion::Changes { changes, at, end } => {
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
                g.changes(a, b, projection.as_deref())?
            }
            _ => {
                return Err(SqlError::compilation(
                    "this kind of time travel is not emulated (AT, BEFORE and CHANGES are)",
                ))
            }
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
}
