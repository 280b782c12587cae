//! Views of one table's columns (`CREATE [OR REPLACE] VIEW V AS SELECT A, B
//! FROM T`): the way out Snowflake's notes give when change data of a table
//! with a geospatial column is refused — read the changed keys from a view
//! without it. A view answers plain queries (DataFusion holds it), `AT`,
//! `CHANGES` and `SYSTEM$LAST_CHANGE_COMMIT_TIME` from its table's history,
//! projected to its columns, and `ALTER VIEW V SET CHANGE_TRACKING = TRUE`
//! switches tracking on for its table, as Snowflake does.

use datafusion::sql::sqlparser::ast::{SelectItem, SetExpr, Statement, TableFactor};
use datafusion::sql::sqlparser::dialect::SnowflakeDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::dml::Changed;
use crate::history::SqlError;
use crate::tables::{df_err, history, lock, resolved};
use crate::AppState;

/// A view: its table and the columns it selects, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct View {
    pub(crate) table: String,
    pub(crate) columns: Vec<String>,
}

impl View {
    /// The positions of the view's columns in its table's `schema`.
    pub(crate) fn projection(
        &self,
        schema: &arrow::datatypes::Schema,
    ) -> Result<Vec<usize>, SqlError> {
        self.columns
            .iter()
            .map(|c| {
                schema.index_of(c).map_err(|_| {
                    SqlError::compilation(format!(
                        "view column '{c}' is no longer in table '{}'",
                        self.table
                    ))
                })
            })
            .collect()
    }
}

/// Runs `CREATE [OR REPLACE] VIEW`; `None` when `sql` is not one.
pub(crate) async fn create(state: &AppState, sql: &str) -> Option<Result<Changed, SqlError>> {
    let upper = sql.trim_start().to_ascii_uppercase();
    if !(upper.starts_with("CREATE VIEW") || upper.starts_with("CREATE OR REPLACE VIEW")) {
        return None;
    }
    Some(create_view(state, sql).await)
}

async fn create_view(state: &AppState, sql: &str) -> Result<Changed, SqlError> {
    let refuse = || {
        SqlError::compilation(
            "the emulator's views select columns of one table: CREATE [OR REPLACE] VIEW <name> AS SELECT <column>, ... FROM <table>",
        )
    };
    let mut statements = Parser::parse_sql(&SnowflakeDialect {}, sql)
        .map_err(|e| SqlError::compilation(e.to_string()))?;
    let Some(Statement::CreateView(create)) = statements.pop() else {
        return Err(refuse());
    };
    let (name, query, or_replace) = (create.name, create.query, create.or_replace);
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Err(refuse());
    };
    let [from] = select.from.as_slice() else {
        return Err(refuse());
    };
    let TableFactor::Table {
        name: table_name,
        version: None,
        ..
    } = &from.relation
    else {
        return Err(refuse());
    };
    if !from.joins.is_empty() || select.selection.is_some() {
        return Err(refuse());
    }
    let view_name = resolved(&name);
    let table = resolved(table_name);
    let mut columns = Vec::new();
    for item in &select.projection {
        match item {
            SelectItem::UnnamedExpr(datafusion::sql::sqlparser::ast::Expr::Identifier(i)) => {
                columns.push(match i.quote_style {
                    Some(_) => i.value.clone(),
                    None => i.value.to_uppercase(),
                })
            }
            _ => return Err(refuse()),
        }
    }
    let exists = state.with_views(|v| v.contains_key(&view_name));
    if exists && !or_replace {
        return Err(SqlError::compilation(format!(
            "Object '{view_name}' already exists."
        )));
    }
    // The table's columns, from its history (loading it: a view's changes are its table's).
    let h = history(state, &table).await?;
    let view = View {
        table: table.clone(),
        columns,
    };
    view.projection(&lock(&h).schema())?;
    let quoted: Vec<String> = view.columns.iter().map(|c| format!("\"{c}\"")).collect();
    state
        .ctx
        .sql(&format!(
            "CREATE OR REPLACE VIEW \"{view_name}\" AS SELECT {} FROM \"{table}\"",
            quoted.join(", ")
        ))
        .await
        .map_err(df_err)?;
    state.with_views(|v| v.insert(view_name, view));
    Ok(Changed::Done)
}

/// The view named `name`, if it is one.
pub(crate) fn find(state: &AppState, name: &str) -> Option<View> {
    state.with_views(|v| v.get(name).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn a_view_projects_its_columns_and_notices_one_gone() {
        let schema = Schema::new(vec![
            Field::new("ZONE_ID", DataType::Utf8, false),
            Field::new("GEOM", DataType::Binary, true),
            Field::new("RISK", DataType::Float64, true),
        ]);
        let v = View {
            table: "Z".into(),
            columns: vec!["RISK".into(), "ZONE_ID".into()],
        };
        assert_eq!(v.projection(&schema).unwrap(), vec![2, 0]);
        let gone = View {
            table: "Z".into(),
            columns: vec!["NAME".into()],
        };
        assert!(gone
            .projection(&schema)
            .unwrap_err()
            .message
            .contains("'NAME'"));
    }
}
