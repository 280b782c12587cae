//! `/metrics`: Prometheus metrics in the OpenMetrics text format, through
//! `prometheus-client` (the Prometheus project's Rust client: a registry of
//! our own, no globals, so tests can run several watchers in one process).
//!
//! Run events are counted as they happen (`floe_runs_total`,
//! `floe_rows_applied_total`, `floe_run_duration_seconds`); what is a
//! reading of the present (lag, last success, consecutive failures, the
//! process counters) is computed at scrape time by a collector.

use std::sync::Weak;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::Shared;
use crate::run::TableReport;

type Labels = Vec<(&'static str, String)>;

/// The event-driven metrics; the registry also holds the scrape-time collector.
pub(super) struct Metrics {
    registry: Registry,
    runs: Family<Labels, Counter>,
    rows: Family<Labels, Counter>,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn duration_histogram() -> Histogram {
    // 50 ms to ~7 min: a small window up to a large full refresh.
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

impl Metrics {
    pub(super) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("floe");
        let runs = Family::<Labels, Counter>::default();
        let rows = Family::<Labels, Counter>::default();
        let duration = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        registry.register(
            "runs",
            "Runs by table, mode (full, incremental) and status (success, failed, cancelled)",
            runs.clone(),
        );
        registry.register(
            "rows_applied",
            "Rows applied by table and kind (inserted, updated, deleted; loaded by a full refresh)",
            rows.clone(),
        );
        registry.register(
            "run_duration_seconds",
            "Wall time of runs, login to commit, by table and mode",
            duration.clone(),
        );
        Metrics {
            registry,
            runs,
            rows,
            duration,
        }
    }

    /// Registers what is read at scrape time from the watcher's state.
    pub(super) fn collect_from(&mut self, shared: Weak<Shared>) {
        self.registry
            .register_collector(Box::new(Present { shared }));
    }

    /// Counts a finished run (a skipped one is not a run).
    pub(super) fn record(&self, report: &TableReport) {
        let table = report.name.clone();
        let mode = report.mode.as_str().to_string();
        self.runs
            .get_or_create(&vec![
                ("table", table.clone()),
                ("mode", mode.clone()),
                ("status", report.status.as_str().to_string()),
            ])
            .inc();
        self.duration
            .get_or_create(&vec![("table", table.clone()), ("mode", mode)])
            .observe(report.seconds);
        if report.status != "success" {
            return;
        }
        let kinds: Vec<(&str, u64)> = match &report.changes {
            Some(c) => vec![
                ("inserted", c.rows_inserted),
                ("updated", c.rows_updated),
                ("deleted", c.rows_deleted),
            ],
            None => vec![("loaded", report.final_count.unwrap_or(0))],
        };
        for (kind, n) in kinds {
            self.rows
                .get_or_create(&vec![("table", table.clone()), ("kind", kind.to_string())])
                .inc_by(n);
        }
    }

    /// The exposition, ending with `# EOF`.
    pub(super) fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("cannot encode the metrics: {e}");
        }
        out
    }
}

/// Readings of the present, taken at each scrape.
#[derive(Debug)]
struct Present {
    shared: Weak<Shared>,
}

impl Collector for Present {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(shared) = self.shared.upgrade() else {
            return Ok(());
        };
        let now = chrono::Utc::now();
        let tables = shared.tables_now();
        let per_table = |encoder: &mut DescriptorEncoder,
                         name: &str,
                         help: &str,
                         value: &dyn Fn(&super::TableState) -> Option<f64>|
         -> Result<(), std::fmt::Error> {
            let gauge = ConstGauge::new(0.0f64);
            let mut family = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            for (table, state) in &tables {
                if let Some(v) = value(state) {
                    let labels: Labels = vec![("table", table.clone())];
                    ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
                }
            }
            Ok(())
        };
        per_table(
            &mut encoder,
            "table_last_success_timestamp_seconds",
            "When the table's last successful run finished (Unix time)",
            &|s| s.last_success.map(|t| t.timestamp_millis() as f64 / 1e3),
        )?;
        per_table(
            &mut encoder,
            "table_lag_seconds",
            "Now minus the table's watermark: how far behind Snowflake the cache may be",
            &|s| s.lag_seconds(now),
        )?;
        per_table(
            &mut encoder,
            "table_consecutive_failures",
            "Failed runs of the table since its last success",
            &|s| Some(f64::from(s.consecutive_failures)),
        )?;
        let process = crate::counters::now();
        let counter = |encoder: &mut DescriptorEncoder, name: &str, help: &str, v: u64| {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
        };
        counter(
            &mut encoder,
            "snowflake_logins",
            "Snowflake logins by this process",
            process.snowflake_logins,
        )?;
        counter(
            &mut encoder,
            "snowflake_downloaded_bytes",
            "Result bytes downloaded from Snowflake by this process",
            process.snowflake_bytes,
        )?;
        counter(
            &mut encoder,
            "change_checks",
            "Change-token checks (SYSTEM$LAST_CHANGE_COMMIT_TIME) sent to Snowflake",
            shared.change_checks(),
        )?;
        let gauge = ConstGauge::new(process.budget_reserved as i64);
        gauge.encode(encoder.encode_descriptor(
            "budget_reserved_bytes",
            "Bytes held in the load budgets right now, every table together",
            None,
            gauge.metric_type(),
        )?)?;
        Ok(())
    }
}
