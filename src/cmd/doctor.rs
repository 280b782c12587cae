use std::process::ExitCode;

use anyhow::{Context, Result};
use pipeline::postgres::doctor::{self, Actions, Status};

use crate::output::OutputFormat;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: super::TargetArgs,
    /// Set the role-level timeouts (ALTER ROLE ... SET) to the config's [load] values.
    #[arg(long)]
    apply: bool,
    /// End floe's own sessions idle in transaction for longer than SECONDS (never other clients').
    #[arg(long, value_name = "SECONDS")]
    terminate_stale: Option<u64>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
}

/// `floe doctor`: exits 1 when any check is an error.
pub async fn run(args: Args) -> Result<ExitCode> {
    let (config, target) = args.common.resolve()?;
    let session = target
        .connect(
            &pipeline::postgres::application_name(&["doctor"]),
            &config.load,
        )
        .await
        .context("connecting to the target")?;
    let actions = Actions {
        apply: args.apply,
        terminate_stale: args.terminate_stale.map(std::time::Duration::from_secs),
    };
    let report = doctor::examine(&session.client, &config, &target.schema, &actions)
        .await
        .context("examining the target")?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => {
            println!(
                "floe doctor: {} ({})",
                label(report.status),
                target.display()
            );
            for f in &report.results {
                println!("  {:<8} {:<42} {}", label(f.status), f.check, f.message);
            }
        }
    }
    Ok(if report.status == Status::Error {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn label(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::Warning => "warning",
        Status::Error => "error",
    }
}
