//! Change traffic for demos and benchmarks (`--mutate TABLE=ROWS_PER_SEC`):
//! every 100 ms one statement's worth of changes is committed to the table,
//! about 70% updates (whole rows redrawn, geometry included, keys kept),
//! 20% inserts (new keys) and 10% deletes, as a busy grid's source would.

use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use schemas::datasets::Dataset;

use crate::generate::{make_batch, Rng};
use crate::history::History;
use crate::tables::{history, lock, now_ns, publish};
use crate::AppState;

/// How often a share of the traffic is committed.
const TICK: Duration = Duration::from_millis(100);

/// Keys of inserted rows are numbered from here, far past any generated table.
const FIRST_NEW_KEY: u64 = 1 << 40;

/// Commits `rows_per_sec` changed rows a second to `table` until aborted.
pub(crate) async fn run(state: Arc<AppState>, d: &'static Dataset, rows_per_sec: u32) {
    let table = d.snowflake_table;
    let h = match history(&state, table).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(table, "--mutate: {}", e.message);
            return;
        }
    };
    let mut rng = Rng::new(0x6d75_7461_7465 ^ u64::from(rows_per_sec));
    let mut next_key = FIRST_NEW_KEY;
    let mut owed = 0.0;
    let mut ticks = tokio::time::interval(TICK);
    loop {
        ticks.tick().await;
        owed += f64::from(rows_per_sec) * TICK.as_secs_f64();
        let n = owed as usize;
        if n == 0 {
            continue;
        }
        owed -= n as f64;
        let _writing = state.writer.lock().await;
        let mut guard = lock(&h);
        match tick(&mut guard, d, n, &mut rng, &mut next_key) {
            Ok(()) => {
                if let Err(e) = publish(&state, table, &guard) {
                    tracing::warn!(table, "--mutate: {}", e.message);
                }
            }
            Err(e) => tracing::warn!(table, "--mutate: {e}"),
        }
    }
}

/// One commit of `n` changed rows.
fn tick(
    h: &mut History,
    d: &Dataset,
    n: usize,
    rng: &mut Rng,
    next_key: &mut u64,
) -> Result<(), arrow::error::ArrowError> {
    let share = |p: f64, rng: &mut Rng| {
        let exact = n as f64 * p;
        exact.floor() as usize + usize::from(rng.chance(exact.fract()))
    };
    let updates = share(0.7, rng);
    let deletes = share(0.1, rng);
    let inserts = n.saturating_sub(updates + deletes);
    let mut draw = |bound: u64| rng.below(bound);
    let touched = h.sample_live(updates + deletes, &mut draw);
    let updates = updates.min(touched.len());
    let schema = h.schema();
    let fresh =
        |start: u64, k: usize, rng: &mut Rng| -> Result<RecordBatch, arrow::error::ArrowError> {
            let b = make_batch(d, &d.arrow_schema(), start, k, rng)?;
            RecordBatch::try_new(Arc::clone(&schema), b.columns().to_vec())
        };
    // Updated rows: everything redrawn but the key (the first column).
    let updated = if updates > 0 {
        let b = fresh(rng.below(1 << 30), updates, rng)?;
        let mut columns = b.columns().to_vec();
        columns[0] = h.values_at(&touched[..updates], 0)?;
        Some(RecordBatch::try_new(Arc::clone(&schema), columns)?)
    } else {
        None
    };
    let inserted = if inserts > 0 {
        let b = fresh(*next_key, inserts, rng)?;
        *next_key += inserts as u64;
        Some(b)
    } else {
        None
    };
    h.commit(&touched, updated, inserted, now_ns());
    Ok(())
}
