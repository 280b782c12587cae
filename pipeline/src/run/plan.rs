//! Planning a table, the one way `floe run`, `floe replay` and `floe bench`
//! do it: the source registered as `source`, the table's transform SQL over
//! it, each output column's Postgres type, and the COPY encoder.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::{SQLOptions, SessionContext};
use operators::{GeometryOptions, TransformOptions};
use schemas::config::{Config, TableConfig};
use schemas::pg::{PgColumn, PgType};
use schemas::SchemaError;

use crate::error::TransformError;
use crate::postgres::encode::CopyEncoder;
use crate::postgres::refresh::TablePlan;
use crate::PipelineError;

/// A table's transform planned over its source: the DataFrame to run, what
/// the refresh writes, and the encoder for the transform's output.
pub struct Planned {
    pub df: DataFrame,
    pub plan: TablePlan,
    pub encoder: CopyEncoder,
}

/// The DataFusion session a table's transform runs in.
pub fn context(config: &Config, geometry: GeometryOptions) -> SessionContext {
    context_for(config.load.batch_size, geometry)
}

/// [`context`] from what it needs, for a thread of its own.
pub fn context_for(batch_size: usize, geometry: GeometryOptions) -> SessionContext {
    operators::session_context(&TransformOptions {
        batch_size,
        geometry,
    })
}

/// [`context`] made on a blocking thread from now on (~5 ms of registering
/// functions), so the caller's round trips go meanwhile; the future gives
/// it (made on the caller's thread instead if that thread panicked, where
/// it panics the same way). Boxed: a run's future holds it across awaits.
pub fn context_ahead(
    config: &Config,
    geometry: &GeometryOptions,
) -> futures::future::BoxFuture<'static, SessionContext> {
    let batch_size = config.load.batch_size;
    let making = tokio::task::spawn_blocking({
        let geometry = geometry.clone();
        move || context_for(batch_size, geometry)
    });
    let geometry = geometry.clone();
    Box::pin(async move {
        match making.await {
            Ok(ctx) => ctx,
            Err(_) => context_for(batch_size, geometry),
        }
    })
}

/// Registers `provider` as `source` and plans the table's transform over it.
pub async fn transform(
    ctx: &SessionContext,
    t: &TableConfig,
    provider: Arc<dyn TableProvider>,
) -> Result<DataFrame, TransformError> {
    operators::register_source(ctx, provider)?;
    // A transform is a query: no DDL (`CREATE EXTERNAL TABLE` over local
    // paths), no DML (`COPY … TO`, `INSERT`), no statements (`SET`).
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    ctx.sql_with_options(t.transform_sql(), options)
        .await
        .map_err(|e| match e.to_string() {
            m if m.contains("DDL not supported")
                || m.contains("DML not supported")
                || m.contains("Statement not supported") =>
            {
                TransformError::NotAQuery(m)
            }
            _ => e.into(),
        })
}

/// Plans table `name` over `provider`, writing into `schema` of the target.
pub async fn plan_table(
    config: &Config,
    name: &str,
    schema: &str,
    ctx: &SessionContext,
    provider: Arc<dyn TableProvider>,
) -> Result<Planned, PipelineError> {
    let t = &config.tables[name];
    let df = transform(ctx, t, provider)
        .await
        .map_err(|e| PipelineError::transform(name, e))?;
    let output = Arc::new(df.schema().as_arrow().clone());
    let columns = plan_columns(config, name, t, &output)?;
    let plan = TablePlan {
        table: name.to_string(),
        schema: schema.to_string(),
        target: t.target.clone(),
        columns: columns.clone(),
        primary_key: t.primary_key.clone(),
        indexes: t.indexes.clone(),
        lock_timeout: config.load.lock_timeout,
        swap_lock_wait: config.load.swap_lock_wait,
        dependent_matviews: config.load.dependent_matviews,
    };
    let encoder = CopyEncoder::new(&t.target, &output, columns, &t.primary_key)?;
    Ok(Planned { df, plan, encoder })
}

/// Decides each output column's Postgres type, checking the table's
/// `columns`, `primary_key` and `indexes` against the transform's output.
pub fn plan_columns(
    config: &Config,
    name: &str,
    t: &TableConfig,
    schema: &SchemaRef,
) -> Result<Vec<PgColumn>, PipelineError> {
    let invalid = |key: String, message: String| {
        PipelineError::from(SchemaError::ConfigInvalid {
            path: config.path.clone(),
            table: name.to_string(),
            key,
            message,
        })
    };
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let have = || format!("the transform outputs: {}", names.join(", "));
    let declared = t
        .column_types()
        .map_err(|(k, e)| invalid(format!("columns.{k}"), e.to_string()))?;
    for k in declared.keys() {
        if !names.contains(&k.as_str()) {
            return Err(invalid(
                format!("columns.{k}"),
                format!("no column `{k}`; {}", have()),
            ));
        }
    }
    for k in &t.primary_key {
        if !names.contains(&k.as_str()) {
            return Err(invalid(
                "primary_key".into(),
                format!("no column `{k}`; {}", have()),
            ));
        }
    }
    for (i, ix) in t.indexes.iter().enumerate() {
        if let Some(c) = ix.columns.iter().find(|c| !names.contains(&c.as_str())) {
            return Err(invalid(
                format!("indexes[{i}].columns"),
                format!("no column `{c}`; {}", have()),
            ));
        }
    }
    schema
        .fields()
        .iter()
        .map(|f| {
            let ty = PgType::resolve(f, declared.get(f.name()).copied())
                .map_err(|e| invalid(format!("columns.{}", f.name()), e.to_string()))?;
            Ok(PgColumn {
                name: f.name().clone(),
                ty,
                nullable: f.is_nullable(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};
    use std::path::Path;

    fn config(extra: &str) -> Config {
        let text = format!(
            "[tables.t]\nparquet = \"x.parquet\"\ntarget = \"t_cache\"\nprimary_key = [\"id\"]\n{extra}"
        );
        Config::parse(&text, Path::new("floe.toml")).expect("config")
    }

    fn output() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("amount", DataType::Float64, true),
        ]))
    }

    fn plan(extra: &str) -> Result<Vec<PgColumn>, String> {
        let c = config(extra);
        plan_columns(&c, "t", &c.tables["t"], &output()).map_err(|e| e.to_string())
    }

    #[test]
    fn each_output_column_gets_a_type_in_output_order_with_its_nullability() {
        let cols = plan("").unwrap();
        let got: Vec<(String, String, bool)> = cols
            .iter()
            .map(|c| (c.name.clone(), c.ty.to_string(), c.nullable))
            .collect();
        assert_eq!(
            got,
            vec![
                ("id".into(), "bigint".into(), false),
                ("name".into(), "text".into(), true),
                ("amount".into(), "double precision".into(), true),
            ]
        );
    }

    #[test]
    fn a_declared_type_overrides_the_arrow_one() {
        let cols = plan("columns = { name = \"jsonb\", amount = \"numeric(12,2)\" }\n").unwrap();
        assert_eq!(cols[1].ty.to_string(), "jsonb");
        assert_eq!(cols[2].ty.to_string(), "numeric(12,2)");
    }

    #[test]
    fn config_naming_a_column_the_transform_does_not_output_is_refused_with_what_it_outputs() {
        let e = plan("columns = { nmae = \"text\" }\n").unwrap_err();
        assert!(
            e.contains("columns.nmae") && e.contains("no column `nmae`"),
            "{e}"
        );
        assert!(e.contains("the transform outputs: id, name, amount"), "{e}");

        let c = config("");
        let mut t = c.tables["t"].clone();
        t.primary_key = vec!["key".into()];
        let e = plan_columns(&c, "t", &t, &output())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("primary_key") && e.contains("no column `key`"),
            "{e}"
        );

        let e = plan("indexes = [{ columns = [\"geom\"], method = \"gist\" }]\n").unwrap_err();
        assert!(
            e.contains("indexes[0].columns") && e.contains("no column `geom`"),
            "{e}"
        );
    }

    #[test]
    fn a_declared_type_the_column_cannot_take_is_refused_naming_the_column() {
        let e = plan("columns = { amount = \"geometry(Point,4326)\" }\n").unwrap_err();
        assert!(e.contains("columns.amount"), "{e}");
    }
}
