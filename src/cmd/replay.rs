//! `floe replay`: load a table from a run's snapshot, without the source.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use pipeline::replay::ReplayPlan;
use pipeline::run::{new_run_id, Cancel, RunOptions};

use crate::output::{run_tables, OutputFormat};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The snapshot: its directory or URL, TABLE@RUN_ID, or TABLE@latest.
    snapshot: String,
    #[command(flatten)]
    common: super::TargetArgs,
    /// Snapshot directory or URL (for TABLE@...), overriding the config's `snapshot_dir`.
    #[arg(long, env = "FLOE_SNAPSHOT_DIR")]
    snapshot_dir: Option<String>,
    /// Check the snapshot and its schema against the target, print what would change, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Let the replay shrink the table by more than `load.max_shrink`, or empty it.
    #[arg(long)]
    allow_shrink: bool,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
}

pub async fn run(args: Args) -> Result<ExitCode> {
    let (config, target) = args.common.resolve()?;
    let location = super::snapshot_location(&config, args.snapshot_dir.as_deref())?;
    let snapshot = super::snapshots::resolve(&config, &location, &args.snapshot).await?;
    // Integrity first: nothing reaches Postgres from a snapshot that does
    // not match its manifest.
    let verified = pipeline::snapshot::verify(&snapshot).await?;
    let table = verified.manifest.table.clone();
    let run_id = verified.manifest.run_id.clone();
    if !config.tables.contains_key(&table) {
        bail!(
            "{} is a snapshot of table `{table}`, which {} does not configure",
            snapshot.name(),
            config.path.display()
        );
    }
    if args.snapshot.to_ascii_lowercase().ends_with("@latest") {
        refuse_older_than_loaded(&config, &target, &table, &run_id).await?;
    }
    // An incremental run's state: its full snapshot and the change sets
    // up to it, each verified too.
    let chain = pipeline::snapshot::Chain::ending_at(&location, verified).await?;
    let plan = pipeline::replay::check(&config, &table, &target, &chain)
        .await
        .with_context(|| format!("checking {} against the target", snapshot.name()))?;
    if args.dry_run {
        print_plan(&plan, args.allow_shrink, args.output)?;
        let refused = plan.schema_drift || (plan.shrink_refused && !args.allow_shrink);
        return Ok(if refused {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        });
    }
    if plan.schema_drift {
        return Err(pipeline::PipelineError::SchemaDrift {
            table,
            explanation: format!(
                "{} no longer matches {}:\n{}",
                snapshot.name(),
                plan.target_table,
                plan.explain_drift()
            ),
        }
        .into());
    }
    let (canceller, cancel) = Cancel::new();
    let signal = super::on_interrupt(canceller);
    let options = RunOptions {
        run_id: new_run_id(),
        parquet_dir: None,
        cancel,
        allow_shrink: args.allow_shrink,
        snapshots: None,
        replay: Some(chain),
        incremental: false,
        skip_if_busy: false,
        snowflake: None,
    };
    let reports = run_tables(&config, &[table], &target, &options, args.output).await;
    Ok(signal.exit_status(&reports))
}

/// `TABLE@latest` means the latest state floe loaded. An incremental run
/// without a snapshot location keeps no change set, so when one loaded the
/// table after the latest snapshot, that snapshot is an older state: refuse
/// rather than restore it silently, and say how to restore it on purpose.
async fn refuse_older_than_loaded(
    config: &schemas::config::Config,
    target: &pipeline::postgres::Target,
    table: &str,
    snapshot_run: &str,
) -> Result<()> {
    let Ok(session) = target
        .connect(
            &pipeline::postgres::application_name(&["replay"]),
            &config.load,
        )
        .await
    else {
        // The replay reports why it cannot connect.
        return Ok(());
    };
    let since = pipeline::postgres::runs::incremental_since(&session.client, table, snapshot_run)
        .await
        .unwrap_or_default();
    if let Some(later) = since {
        bail!(
            "{table}@latest is the snapshot of run {snapshot_run}, but incremental run {later} loaded the table since \
             and kept no change set, so it is not the latest state; to restore the state as of \
             {snapshot_run} anyway, name it: floe replay {table}@{snapshot_run}"
        );
    }
    Ok(())
}

fn print_plan(plan: &ReplayPlan, allow_shrink: bool, output: OutputFormat) -> Result<()> {
    if output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(plan)?);
        return Ok(());
    }
    println!(
        "snapshot  {}@{}  {} rows in {} files, {}  (verified: sizes, SHA-256, row counts, schema)",
        plan.table,
        plan.run_id,
        plan.snapshot_rows,
        plan.snapshot_files,
        super::snapshots::human_bytes(plan.snapshot_bytes),
    );
    println!("          {}", plan.snapshot);
    if plan.change_sets > 0 {
        println!(
            "chain     a full snapshot and {} change set(s) after it, applied in window order",
            plan.change_sets
        );
    }
    match plan.target_rows {
        Some(n) => println!(
            "target    {}: {n} rows now, {} after the replay",
            plan.target_table, plan.snapshot_rows
        ),
        None => println!(
            "target    {}: does not exist; the replay creates it with {} rows",
            plan.target_table, plan.snapshot_rows
        ),
    }
    let same = plan
        .columns
        .iter()
        .filter(|c| c.status == pipeline::replay::ColumnStatus::Same)
        .count();
    if plan.schema_drift {
        println!("columns   DRIFT: {same} unchanged; the replay would stop:");
        println!("{}", plan.explain_drift());
    } else {
        println!("columns   {} columns match the target", plan.columns.len());
    }
    if plan.shrink_refused {
        println!(
            "shrink    the table would shrink past load.max_shrink{}",
            if allow_shrink {
                " (allowed by --allow-shrink)"
            } else {
                ": refused without --allow-shrink"
            }
        );
    }
    let go = !plan.schema_drift && (!plan.shrink_refused || allow_shrink);
    println!(
        "replay    {}",
        if go { "would run" } else { "would be refused" }
    );
    Ok(())
}
