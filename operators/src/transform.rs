//! Running a table's transform: DataFusion SQL over a table named `source`.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::catalog::view::ViewTable;
use datafusion::catalog::TableProvider;
use datafusion::common::Column;
use datafusion::datasource::provider_as_source;
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::logical_expr::{Expr, LogicalPlanBuilder};

use crate::error::OperatorError;
use crate::udf::{register_all, GeometryOptions};

/// Name under which the unrenamed source is registered.
const RAW_SOURCE: &str = "__floe_raw_source";

/// How a table's transform runs.
#[derive(Debug, Clone)]
pub struct TransformOptions {
    /// Rows per output batch.
    pub batch_size: usize,
    pub geometry: GeometryOptions,
}

/// A DataFusion session with floe's functions registered.
///
/// One partition: the source is read in order, so "row N" in an error is the
/// Nth row of the source, and the pipeline's own tasks (encode, COPY) supply
/// the parallelism on a small machine.
pub fn session_context(options: &TransformOptions) -> SessionContext {
    let config = SessionConfig::new()
        .with_batch_size(options.batch_size)
        .with_target_partitions(1)
        .with_information_schema(false);
    let ctx = SessionContext::new_with_config(config);
    register_all(&ctx, &options.geometry);
    ctx
}

/// Registers `provider` as `source`, its columns renamed to lower case.
///
/// Snowflake reports upper-case names; Postgres folds unquoted names to lower
/// case and so does DataFusion's SQL. Lower-casing once here lets a transform
/// be written the way the target table reads (`SELECT connection_id ...`).
pub fn register_source(
    ctx: &SessionContext,
    provider: Arc<dyn TableProvider>,
) -> Result<(), OperatorError> {
    let schema = provider.schema();
    let mut seen = HashSet::new();
    let mut exprs = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let lower = f.name().to_lowercase();
        if !seen.insert(lower.clone()) {
            return Err(OperatorError::Source(DataFusionError::Plan(format!(
                "columns differ only in case: two columns are named `{lower}` once lower-cased"
            ))));
        }
        exprs.push(Expr::Column(Column::new_unqualified(f.name())).alias(lower));
    }
    let plan = LogicalPlanBuilder::scan(RAW_SOURCE, provider_as_source(provider), None)
        .and_then(|b| b.project(exprs))
        .and_then(|b| b.build())
        .map_err(OperatorError::Source)?;
    ctx.register_table("source", Arc::new(ViewTable::new(plan, None)))
        .map_err(OperatorError::Source)?;
    Ok(())
}
