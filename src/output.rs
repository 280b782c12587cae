//! Running tables with a progress display, and printing their reports.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use pipeline::postgres::Target;
use pipeline::run::{run_table, RunOptions, TableReport};
use schemas::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Runs the tables one after another; prints a table (text) or a JSON array.
pub async fn run_tables(
    config: &Config,
    tables: &[String],
    target: &Target,
    options: &RunOptions,
    format: OutputFormat,
) -> Vec<TableReport> {
    let mut reports = Vec::with_capacity(tables.len());
    let show_progress = std::io::stderr().is_terminal();
    for name in tables {
        let progress = Arc::new(AtomicU64::new(0));
        let bar = show_progress.then(|| spinner(name, Arc::clone(&progress)));
        let report = run_table(config, name, target, options, &progress).await;
        if let Some((bar, ticker)) = bar {
            ticker.abort();
            bar.finish_and_clear();
        }
        if format == OutputFormat::Text {
            print_text_row(&report, reports.is_empty());
        }
        reports.push(report);
    }
    if format == OutputFormat::Json {
        match serde_json::to_string_pretty(&reports) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: cannot print JSON: {e}"),
        }
    }
    reports
}

/// A stderr spinner showing rows and rows/s, refreshed from the run's counter.
fn spinner(name: &str, rows: Arc<AtomicU64>) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix}: {pos} rows ({per_sec}) {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_prefix(name.to_string());
    let b = bar.clone();
    let ticker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            b.set_position(rows.load(Ordering::Relaxed));
        }
    });
    (bar, ticker)
}

fn print_text_row(r: &TableReport, header: bool) {
    if header {
        println!(
            "{:<8} {:<28} {:>12} {:>12} {:>9}",
            "status", "table", "rows_synced", "final_count", "seconds"
        );
    }
    let count = r
        .final_count
        .map(|c| c.to_string())
        .unwrap_or_else(|| "?".into());
    println!(
        "{:<8} {:<28} {:>12} {:>12} {:>9.2}",
        r.status, r.table, r.rows_synced, count, r.seconds
    );
    if let Some(c) = &r.changes {
        println!(
            "         incremental: {} inserted, {} updated, {} deleted; window {} .. {}; apply {:.3}s",
            c.rows_inserted,
            c.rows_updated,
            c.rows_deleted,
            c.window.start,
            c.window.end,
            c.apply_seconds
        );
    }
    if let Some(reason) = r.reason {
        println!("         full refresh instead of incremental: {reason}");
    }
    if r.invalid_geometries > 0 {
        println!(
            "         {} invalid geometries written as NULL",
            r.invalid_geometries
        );
    }
    if let Some(e) = &r.error {
        println!("         error: {e}");
    }
}
