//! The swap: the verified staging table takes the target's place, with
//! everything [`super::carry`] carries, in one transaction of one round trip.

use std::time::{Duration, Instant};

use schemas::pg::quote_ident;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::carry::{self, Carried};
use super::steps::{pg, TablePlan};
use crate::postgres::Session;
use crate::run::Cancel;
use crate::PipelineError;

/// The swap's server-side block (see the file's header).
const SWAP_SQL: &str = include_str!("swap.sql");

/// Longest pause between two attempts to lock the target.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How much longer than `deadlock_timeout` an attempt waits when an
/// autovacuum worker holds the table (see [`autovacuum_in_the_way`]).
const AUTOVACUUM_MARGIN: Duration = Duration::from_millis(250);

/// Swaps the staging table into place; `also` runs in the same transaction
/// after it (the watermark). Each attempt waits at most `swap_lock_wait` in
/// the lock queue, so readers arriving behind it wait no longer than that;
/// between attempts floe backs off holding nothing, until `lock_timeout`
/// has passed, and then names the sessions in the way. The old table is
/// untouched until an attempt commits. `cancel` stops it between attempts,
/// never during one (the answer would not say whether it committed).
///
/// The one longer attempt: when an autovacuum worker holds the table (after
/// a large load Postgres vacuums the new table for its inserts, for tens of
/// seconds), the next attempt waits `deadlock_timeout` and a little more,
/// because Postgres cancels an autovacuum only for a lock request that has
/// waited that long. Readers then queue behind the swap that long, once.
pub async fn swap(
    session: &Session,
    plan: &TablePlan,
    staging: &str,
    carried: &Carried,
    also: &[String],
    cancel: &Cancel,
) -> Result<(), PipelineError> {
    let client = session.client.as_ref();
    let version = session
        .server_version()
        .await
        .map_err(pg(plan, "reading the server version"))?;
    let block = swap_block(plan, staging, carried, version);
    let started = Instant::now();
    let mut attempt: u32 = 1;
    let mut next_wait = plan.swap_lock_wait;
    // The longer attempt is made once: by then Postgres has signalled the
    // autovacuum, or never will (wraparound), and short attempts go on.
    let mut outwaited_autovacuum = false;
    loop {
        // Between attempts (nothing sent, nothing held) a cancel stops the swap.
        if cancel.is_cancelled() {
            return Err(PipelineError::Cancelled {
                table: plan.table.clone(),
            });
        }
        let left = plan.lock_timeout.saturating_sub(started.elapsed());
        let wait = std::mem::replace(&mut next_wait, plan.swap_lock_wait)
            .min(left)
            .max(Duration::from_millis(1));
        let batch = format!(
            "BEGIN; SET LOCAL lock_timeout = '{}ms'; {block}; {}; COMMIT",
            wait.as_millis(),
            also.join("; ")
        );
        let result = client
            .batch_execute(&batch)
            .await
            .map_err(pg(plan, "swapping the staging table into place"));
        if result.is_err() {
            // Leave no aborted transaction behind; if the connection is gone the server already rolled back.
            let _ = client.batch_execute("ROLLBACK").await;
        }
        match result {
            Err(e) if is_lock_conflict(&e) => {
                let left = plan.lock_timeout.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(PipelineError::SwapBlocked {
                        table: plan.table.clone(),
                        target: plan.qualified(&plan.target),
                        attempts: attempt,
                        waited_ms: started.elapsed().as_millis() as u64,
                        swap_lock_wait_ms: plan.swap_lock_wait.as_millis() as u64,
                        blockers: blockers(client, plan).await,
                    });
                }
                let autovacuum = match outwaited_autovacuum {
                    true => None,
                    false => autovacuum_in_the_way(client, plan, staging).await,
                };
                if let Some((pid, deadlock_timeout)) = autovacuum {
                    outwaited_autovacuum = true;
                    next_wait = plan
                        .swap_lock_wait
                        .max(deadlock_timeout + AUTOVACUUM_MARGIN);
                    tracing::info!(table = %plan.table, pid, "an autovacuum holds the table: the next swap attempt waits {next_wait:?}, past deadlock_timeout, so Postgres cancels it");
                }
                let pause = (Duration::from_millis(50) * 2u32.saturating_pow(attempt.min(8) - 1))
                    .min(MAX_BACKOFF)
                    + crate::retry::jitter(Duration::from_millis(50));
                tracing::debug!(table = %plan.table, attempt, "readers held the target through a swap attempt; retrying in {pause:?}");
                tokio::select! {
                    _ = tokio::time::sleep(pause.min(left)) => {}
                    _ = cancel.cancelled() => {}
                }
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The block for this swap: the names, what was built on staging, and what
/// is carried, as literals in `swap.sql`.
fn swap_block(plan: &TablePlan, staging: &str, carried: &Carried, server_version: i32) -> String {
    let target = plan.qualified(&plan.target);
    let mut renames = vec![format!(
        "COMMENT ON TABLE {} IS NULL",
        plan.qualified(staging)
    )];
    renames.push(format!(
        "ALTER TABLE {} RENAME TO {}",
        plan.qualified(staging),
        quote_ident(&plan.target)
    ));
    if !plan.primary_key.is_empty() {
        renames.push(format!(
            "ALTER TABLE {target} RENAME CONSTRAINT {} TO {}",
            quote_ident(&TablePlan::scratch_name(staging, "pkey")),
            quote_ident(&plan.pkey_name())
        ));
    }
    for (i, name) in plan.index_names().iter().enumerate() {
        renames.push(format!(
            "ALTER INDEX {} RENAME TO {}",
            plan.qualified(&TablePlan::scratch_name(staging, &format!("i{i}"))),
            quote_ident(name)
        ));
    }
    renames.extend(carried.renames.iter().cloned());
    let block = SWAP_SQL
        .replace("{{carry}}", &carry::carry_sql(server_version))
        .replace("{{structure_sql}}", carry::STRUCTURE_SQL)
        .replace("{{target}}", &literal(&target))
        .replace("{{staging}}", &literal(&plan.qualified(staging)))
        .replace("{{renames}}", &array(&renames))
        .replace("{{kept_indexes}}", &array(&carried.kept_indexes))
        .replace("{{kept_constraints}}", &array(&carried.kept_constraints))
        .replace(
            "{{structure}}",
            &carried
                .structure
                .as_deref()
                .map(literal)
                .unwrap_or_else(|| "NULL".into()),
        )
        .replace("{{matviews}}", &literal(plan.dependent_matviews.as_str()));
    // Every name and statement above sits inside the block's dollar quotes:
    // a tag none of them contains.
    let tag = (0..)
        .map(|n| format!("$floe_swap{n}$"))
        .find(|tag| !block.contains(tag.as_str()))
        .unwrap_or_default();
    block.replace("{{tag}}", &tag)
}

/// A SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A `text[]` of literals.
fn array(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| literal(s)).collect();
    format!("ARRAY[{}]::text[]", items.join(", "))
}

/// The swap lost a race for a lock: a reader held the target (or a view on
/// it) past the attempt's wait, or a reader locking a view then the table
/// crossed the swap's order.
fn is_lock_conflict(e: &PipelineError) -> bool {
    matches!(e, PipelineError::Postgres { source, .. }
        if source.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
            || source.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED))
}

/// An autovacuum worker holding the target or the staging table, and the
/// server's `deadlock_timeout`: Postgres cancels such a worker once a lock
/// request it blocks has waited that long, unless it vacuums to prevent
/// wraparound (which must finish; a role that cannot read the worker's query
/// cannot tell, and then waits the longer attempt in vain).
async fn autovacuum_in_the_way(
    client: &Client,
    plan: &TablePlan,
    staging: &str,
) -> Option<(i32, Duration)> {
    let row = client
        .query_opt(
            "SELECT a.pid, (SELECT setting::int8 FROM pg_settings WHERE name = 'deadlock_timeout') \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.relation IN (to_regclass($1), to_regclass($2)) AND l.granted \
               AND a.backend_type = 'autovacuum worker' \
               AND coalesce(a.query, '') NOT LIKE '%to prevent wraparound%' \
             LIMIT 1",
            &[&plan.qualified(&plan.target), &plan.qualified(staging)],
        )
        .await
        .ok()??;
    let (pid, ms): (i32, i64) = (row.get(0), row.get(1));
    Some((pid, Duration::from_millis(ms.max(0) as u64)))
}

/// The other sessions holding a lock on the target: who is in the swap's way.
async fn blockers(client: &Client, plan: &TablePlan) -> String {
    let rows = client
        .query(
            "SELECT DISTINCT a.pid, coalesce(a.application_name, ''), coalesce(a.state, ''), \
                    left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 120), \
                    coalesce(extract(epoch FROM now() - coalesce(a.xact_start, a.query_start))::float8, 0) \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.relation = to_regclass($1) AND l.granted AND l.pid <> pg_backend_pid()",
            &[&plan.qualified(&plan.target)],
        )
        .await;
    match rows {
        Ok(rows) if !rows.is_empty() => rows
            .iter()
            .map(|r| {
                let (pid, app, state, query, age): (i32, String, String, String, f64) =
                    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
                format!("pid {pid} (application_name '{app}', {state} for {age:.0}s): {query}")
            })
            .collect::<Vec<_>>()
            .join("; "),
        Ok(_) => "no session holds it any more".into(),
        Err(e) => format!("cannot list them: {e}"),
    }
}
