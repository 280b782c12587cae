//! Whether a table can ever be loaded incrementally, decided from its
//! config and the logical plan of its transform; the answer is a config
//! error that names the table and the cause.
//!
//! An incremental run deletes the keys that changed and writes the rows of
//! those keys as the transform makes them from the source rows at the
//! window's end. That is the full refresh's result only when:
//! - the target has a primary key, and the transform passes each key column
//!   through unchanged from the source column of the same name (so a
//!   source key is the target key);
//! - the transform is row by row: each output row comes from one source row
//!   alone (projections and filters; no aggregate, window, join, union,
//!   sort, limit, distinct, unnest or subquery);
//! - the source is a Snowflake table or view whose change data can be read
//!   (`snowflake_table`, or `changes_from` for a custom `query`).

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::{Expr, LogicalPlan};
use schemas::config::{Config, SourceSpec};
use schemas::SchemaError;

use crate::PipelineError;

/// Checks table `name` (whose transform planned as `plan`) can be loaded
/// incrementally; the error is [`SchemaError::ConfigInvalid`] naming the
/// table, the key to change and why.
pub fn check(config: &Config, name: &str, plan: &LogicalPlan) -> Result<(), PipelineError> {
    check_source(config, name)?;
    let t = &config.tables[name];
    let refuse = |key: &str, message: String| refusal(config, name, key, message);
    if let Some(node) = not_row_by_row(plan) {
        return refuse(
            "transform",
            format!("the transform is not row by row: it has {node} (each output row must come from one source row)"),
        );
    }
    for key in &t.primary_key {
        if !passed_through(plan, key) {
            return refuse(
                "primary_key",
                format!("the transform does not pass the key column `{key}` through unchanged from the source column of that name"),
            );
        }
    }
    Ok(())
}

fn refusal(config: &Config, name: &str, key: &str, message: String) -> Result<(), PipelineError> {
    Err(PipelineError::from(SchemaError::ConfigInvalid {
        path: config.path.clone(),
        table: name.to_string(),
        key: key.to_string(),
        message: format!("cannot be loaded incrementally: {message}"),
    }))
}

/// The part of [`check`] the config alone decides (source and key), for
/// refusing a table before anything is read.
pub fn check_source(config: &Config, name: &str) -> Result<(), PipelineError> {
    let t = &config.tables[name];
    let refuse = |key: &str, message: String| refusal(config, name, key, message);
    match t.source() {
        Some(SourceSpec::Snowflake { .. }) => {}
        Some(SourceSpec::Parquet(_)) => {
            return refuse(
                "parquet",
                "its source is parquet, not a Snowflake table or view (change data comes from Snowflake)".into(),
            )
        }
        Some(SourceSpec::Flight(_)) => {
            return refuse(
                "flight",
                "its source is an Arrow Flight stream, not a Snowflake table or view (change data comes from Snowflake)".into(),
            )
        }
        None => return refuse("snowflake_table", "it has no source".into()),
    }
    if t.changes_object().is_none() {
        return refuse(
            "changes_from",
            "a custom `query` hides which table changed: name the Snowflake table or view to read change data from with changes_from".into(),
        );
    }
    if t.primary_key.is_empty() {
        return refuse(
            "primary_key",
            "it has no primary key (changed rows are found and replaced by key)".into(),
        );
    }
    Ok(())
}

/// The first node (or subquery) in `plan` that makes an output row depend
/// on other rows, as words for the error; `None` for a row-by-row plan.
fn not_row_by_row(plan: &LogicalPlan) -> Option<&'static str> {
    let mut found = None;
    let _ = plan.apply_with_subqueries(|node| {
        let what = match node {
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::TableScan(_) => None,
            LogicalPlan::Aggregate(_) => Some("an aggregate (GROUP BY or an aggregate function)"),
            LogicalPlan::Window(_) => Some("a window function"),
            LogicalPlan::Join(_) => Some("a join"),
            LogicalPlan::Union(_) => Some("a UNION"),
            LogicalPlan::Sort(_) => Some("an ORDER BY"),
            LogicalPlan::Limit(_) => Some("a LIMIT or OFFSET"),
            LogicalPlan::Distinct(_) => Some("a DISTINCT"),
            LogicalPlan::Unnest(_) => Some("an UNNEST"),
            LogicalPlan::Subquery(_) => Some("a subquery in an expression"),
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
                Some("rows that do not come from the source")
            }
            _ => Some("a step floe cannot apply row by row"),
        };
        Ok(match what {
            Some(w) => {
                found = Some(w);
                TreeNodeRecursion::Stop
            }
            None => TreeNodeRecursion::Continue,
        })
    });
    found
}

/// Whether output column `key` is the source column of the same name
/// (case-insensitive: `register_source` lower-cases Snowflake's names),
/// through every projection, filter and alias down to the scan.
fn passed_through(plan: &LogicalPlan, key: &str) -> bool {
    match plan {
        LogicalPlan::Projection(p) => p.expr.iter().any(|e| {
            let (inner, out_name) = match e {
                Expr::Alias(a) => (a.expr.as_ref(), a.name.as_str()),
                other => (other, ""),
            };
            match inner {
                Expr::Column(c) => {
                    let name = if out_name.is_empty() {
                        c.name.as_str()
                    } else {
                        out_name
                    };
                    name.eq_ignore_ascii_case(key)
                        && c.name.eq_ignore_ascii_case(key)
                        && passed_through(&p.input, &c.name)
                }
                _ => false,
            }
        }),
        LogicalPlan::Filter(f) => passed_through(&f.input, key),
        LogicalPlan::SubqueryAlias(a) => passed_through(&a.input, key),
        LogicalPlan::TableScan(s) => s
            .projected_schema
            .fields()
            .iter()
            .any(|f| f.name().eq_ignore_ascii_case(key)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;

    /// A Snowflake-shaped source: upper-case names, as a result decodes.
    fn source() -> Arc<MemTable> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ID", DataType::Int64, false),
            Field::new("NAME", DataType::Utf8, true),
            Field::new("LAT", DataType::Float64, true),
            Field::new("LON", DataType::Float64, true),
        ]));
        Arc::new(MemTable::try_new(schema, vec![vec![]]).expect("table"))
    }

    async fn verdict(table: &str) -> Result<(), String> {
        let text = format!("[tables.t]\ntarget = \"t_cache\"\n{table}\n");
        let config = Config::parse(&text, Path::new("floe.toml")).expect("config");
        let ctx = crate::run::plan::context(&config, Default::default());
        let df = crate::run::plan::transform(&ctx, &config.tables["t"], source())
            .await
            .expect("the transform plans");
        check(&config, "t", df.logical_plan()).map_err(|e| e.to_string())
    }

    const SF: &str = "snowflake_table = \"T\"\nprimary_key = [\"id\"]";

    #[tokio::test]
    async fn row_by_row_transforms_over_a_snowflake_table_are_incremental() {
        for transform in [
            "SELECT * FROM source",
            "SELECT id, upper(name) AS name, st_point(lon, lat, 4326) AS geom FROM source",
            "SELECT id, name FROM source WHERE lat > 29.5",
            "SELECT id, g FROM (SELECT *, st_point(lon, lat, 4326) AS g FROM source)",
            "SELECT s.id AS id, s.name FROM source AS s",
        ] {
            let r = verdict(&format!("{SF}\ntransform = \"{transform}\"")).await;
            assert!(r.is_ok(), "{transform}: {r:?}");
        }
    }

    #[tokio::test]
    async fn the_shipped_grid_tables_are_all_incremental() {
        let config = Config::parse(include_str!("../../../floe.toml"), Path::new("floe.toml"))
            .expect("shipped config");
        for (name, t) in &config.tables {
            let ctx = crate::run::plan::context(&config, Default::default());
            let sf = t.snowflake_table.as_deref().expect("a snowflake table");
            let schema = emulator_free_schema(sf);
            let table = Arc::new(MemTable::try_new(schema, vec![vec![]]).expect("table"));
            let df = crate::run::plan::transform(&ctx, t, table)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            check(&config, name, df.logical_plan()).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    /// The decoded Snowflake schema of a grid table, from its definition.
    fn emulator_free_schema(snowflake_table: &str) -> arrow::datatypes::SchemaRef {
        schemas::datasets::ALL
            .iter()
            .find(|d| d.snowflake_table == snowflake_table)
            .expect("a grid dataset")
            .arrow_schema()
    }

    #[tokio::test]
    async fn transforms_that_mix_rows_are_refused_naming_what_does_it() {
        for (transform, cause) in [
            (
                "SELECT name, count(*) AS id FROM source GROUP BY name",
                "an aggregate",
            ),
            (
                "SELECT id, row_number() OVER (ORDER BY lat) AS n FROM source",
                "a window function",
            ),
            (
                "SELECT a.id, b.name FROM source a JOIN source b ON a.id = b.id",
                "a join",
            ),
            (
                "SELECT id FROM source UNION ALL SELECT id FROM source",
                "a UNION",
            ),
            ("SELECT id FROM source ORDER BY lat", "an ORDER BY"),
            ("SELECT id FROM source LIMIT 10", "a LIMIT"),
            ("SELECT DISTINCT id, name FROM source", "a DISTINCT"),
            (
                "SELECT id FROM source WHERE lat > (SELECT avg(lat) FROM source)",
                "subquery",
            ),
        ] {
            let e = verdict(&format!("{SF}\ntransform = \"{transform}\""))
                .await
                .unwrap_err();
            assert!(
                e.contains("`t`") && e.contains("transform") && e.contains(cause),
                "{transform}: {e}"
            );
        }
    }

    #[tokio::test]
    async fn a_key_the_transform_computes_or_renames_is_refused() {
        for transform in [
            "SELECT id + 1 AS id, name FROM source",
            "SELECT lat AS id, name FROM source",
            "SELECT CAST(id AS VARCHAR) AS id FROM source",
        ] {
            let e = verdict(&format!("{SF}\ntransform = \"{transform}\""))
                .await
                .unwrap_err();
            assert!(
                e.contains("primary_key") && e.contains("`id`"),
                "{transform}: {e}"
            );
        }
    }

    #[tokio::test]
    async fn sources_and_keys_that_cannot_give_change_data_are_refused() {
        let no_key = verdict("snowflake_table = \"T\"").await.unwrap_err();
        assert!(no_key.contains("no primary key"), "{no_key}");

        let parquet = verdict("parquet = \"t.parquet\"\nprimary_key = [\"id\"]")
            .await
            .unwrap_err();
        assert!(
            parquet.contains("parquet") && parquet.contains("Snowflake"),
            "{parquet}"
        );

        let flight = verdict("flight = \"flight://h:1/t@latest\"\nprimary_key = [\"id\"]")
            .await
            .unwrap_err();
        assert!(flight.contains("Flight"), "{flight}");

        let query = verdict(
            "snowflake_table = \"T\"\nquery = \"SELECT * FROM T WHERE X\"\nprimary_key = [\"id\"]",
        )
        .await
        .unwrap_err();
        assert!(query.contains("changes_from"), "{query}");
        let named = verdict(
            "snowflake_table = \"T\"\nquery = \"SELECT * FROM T WHERE X\"\nchanges_from = \"T_NOGEO\"\nprimary_key = [\"id\"]",
        )
        .await;
        assert!(named.is_ok(), "{named:?}");
    }
}
