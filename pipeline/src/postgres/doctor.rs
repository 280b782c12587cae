//! `floe doctor`: the checks an operator runs when the map looks wrong —
//! in the target's database (sessions elsewhere on the server cannot block it) —
//! timeouts that stop sessions from idling in transaction, PostGIS (and
//! whether the server preloads its library), sessions idle in transaction
//! (floe's own marked), each cache table's row count against its last
//! successful run, orphaned staging tables, lock waits.

use std::time::Duration;

use schemas::config::{Config, LoadConfig};
use schemas::pg::quote_qualified;
use serde::Serialize;
use tokio_postgres::Client;

/// How bad a finding is. Ordered: the report's status is the worst one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warning,
    Error,
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: String,
    pub status: Status,
    pub message: String,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

/// `{"status": ..., "results": [...]}`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub status: Status,
    pub results: Vec<Finding>,
}

/// What the doctor may change.
#[derive(Debug, Clone, Default)]
pub struct Actions {
    /// `ALTER ROLE current_user SET` the three timeouts from `[load]`.
    pub apply: bool,
    /// End floe's own sessions idle in transaction for longer than this.
    pub terminate_stale: Option<Duration>,
}

fn finding(check: &str, status: Status, message: String, details: serde_json::Value) -> Finding {
    Finding {
        check: check.to_string(),
        status,
        message,
        details,
    }
}

fn pg_interval(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Runs every check against the target `client` is connected to.
pub async fn examine(
    client: &Client,
    config: &Config,
    schema: &str,
    actions: &Actions,
) -> Result<Report, tokio_postgres::Error> {
    let mut results = Vec::new();
    results.extend(role_timeouts(client, &config.load, actions.apply).await?);
    results.push(postgis(client).await?);
    results.push(idle_in_transaction(client, actions.terminate_stale).await?);
    results.extend(cache_tables(client, config, schema).await?);
    results.push(staging_tables(client, schema).await?);
    results.push(lock_waits(client).await?);
    let status = results.iter().map(|f| f.status).max().unwrap_or(Status::Ok);
    Ok(Report { status, results })
}

/// The role's own defaults: what every session of this role gets, including
/// sessions of other tools (the incumbent's psycopg2 procedure among them).
async fn role_timeouts(
    client: &Client,
    load: &LoadConfig,
    apply: bool,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let wanted = [
        (
            "idle_in_transaction_session_timeout",
            load.idle_in_transaction_timeout,
        ),
        ("statement_timeout", load.statement_timeout),
        ("lock_timeout", load.lock_timeout),
    ];
    let role: String = client.query_one("SELECT current_user", &[]).await?.get(0);
    if apply {
        for (name, value) in wanted {
            client
                .batch_execute(&format!(
                    "ALTER ROLE CURRENT_USER SET {name} = '{}'",
                    pg_interval(value)
                ))
                .await?;
        }
    }
    let settings: Vec<String> = client
        .query(
            "SELECT unnest(setconfig) FROM pg_db_role_setting \
             WHERE setrole = (SELECT oid FROM pg_roles WHERE rolname = current_user) AND setdatabase = 0",
            &[],
        )
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::new();
    for (name, value) in wanted {
        let set = settings
            .iter()
            .find_map(|s| s.strip_prefix(&format!("{name}=")))
            .map(str::to_string);
        let session: String = client
            .query_one(&format!("SELECT current_setting('{name}')"), &[])
            .await?
            .get(0);
        let unset = matches!(set.as_deref(), None | Some("0"));
        let (status, message) = if unset {
            (
                if name == "idle_in_transaction_session_timeout" {
                    Status::Warning
                } else {
                    Status::Ok
                },
                format!(
                    "role {role} has no {name} of its own (floe sets {} on its sessions; other clients of this role get none){}",
                    pg_interval(value),
                    if name == "idle_in_transaction_session_timeout" {
                        ": run floe doctor --apply"
                    } else {
                        ""
                    }
                ),
            )
        } else {
            (
                Status::Ok,
                format!("role {role}: {name} = {}", set.clone().unwrap_or_default()),
            )
        };
        out.push(finding(
            &format!("role.{name}"),
            status,
            message,
            serde_json::json!({ "role": role, "role_setting": set, "this_session": session, "floe_sets": pg_interval(value) }),
        ));
    }
    Ok(out)
}

/// PostGIS's presence, and whether the server preloads its library. Unless
/// it does, each new session loads the library (and the ~50 it links) on
/// its first geometry statement: floe's load and verification sessions in
/// every run, and every new map client session (~7 ms each on the
/// benchmarks' machine, BENCHMARKS.md).
async fn postgis(client: &Client) -> Result<Finding, tokio_postgres::Error> {
    let installed: Option<String> = client
        .query_opt(
            "SELECT extversion FROM pg_extension WHERE extname = 'postgis'",
            &[],
        )
        .await?
        .map(|r| r.get(0));
    let available: Option<String> = client
        .query_opt(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'postgis'",
            &[],
        )
        .await?
        .map(|r| r.get(0));
    Ok(match (installed, available) {
        (Some(v), _) => {
            // The library the extension's C functions live in, as its
            // functions name it (`$libdir/postgis-3`).
            let library: Option<String> = client
                .query_opt(
                    "SELECT p.probin FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass \
                       AND d.objid = p.oid AND d.deptype = 'e' \
                     JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'postgis' \
                     WHERE p.proname = 'postgis_lib_version' LIMIT 1",
                    &[],
                )
                .await?
                .and_then(|r| r.get::<_, Option<String>>(0))
                .map(|l| library_name(&l).to_string());
            let preload: String = client
                .query_one("SELECT current_setting('shared_preload_libraries')", &[])
                .await?
                .get(0);
            let preloaded = library.as_deref().map(|l| preloads(&preload, l));
            let message = match (&library, preloaded) {
                (Some(l), Some(false)) => format!(
                    "PostGIS {v}; its library ({l}) is loaded by each new session on its first geometry statement \
                     (floe's load and verification sessions, every new map client's): \
                     shared_preload_libraries = '{l}' loads it once at server start (takes a restart, and another after upgrading PostGIS)"
                ),
                (Some(l), Some(true)) => {
                    format!("PostGIS {v}; its library ({l}) is preloaded at server start")
                }
                _ => format!("PostGIS {v}"),
            };
            finding(
                "postgis",
                Status::Ok,
                message,
                serde_json::json!({ "version": v, "library": library, "library_preloaded": preloaded }),
            )
        }
        (None, Some(v)) => finding(
            "postgis",
            Status::Ok,
            format!("PostGIS {v} is available, not yet created in this database (floe creates it on the first load)"),
            serde_json::json!({ "available": v }),
        ),
        (None, None) => finding(
            "postgis",
            Status::Error,
            "PostGIS is not installed on this server: geometry columns cannot be loaded".into(),
            serde_json::Value::Null,
        ),
    })
}

/// A library as `shared_preload_libraries` and `probin` may spell it
/// (`$libdir/postgis-3.so`, `"postgis-3"`), reduced to its name.
fn library_name(entry: &str) -> &str {
    let entry = entry.trim().trim_matches('"');
    let base = entry.rsplit('/').next().unwrap_or(entry);
    base.strip_suffix(".so").unwrap_or(base)
}

/// Whether the comma-separated `setting` names `library`.
fn preloads(setting: &str, library: &str) -> bool {
    setting
        .split(',')
        .filter(|e| !e.trim().is_empty())
        .any(|e| library_name(e) == library)
}

/// Sessions idle in transaction hold locks and block the swap; floe's own
/// carry `application_name = floe/...`.
async fn idle_in_transaction(
    client: &Client,
    terminate_stale: Option<Duration>,
) -> Result<Finding, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT pid, coalesce(application_name, ''), usename::text, \
                    extract(epoch FROM now() - state_change)::float8, \
                    left(regexp_replace(coalesce(query, ''), '\\s+', ' ', 'g'), 120) \
             FROM pg_stat_activity \
             WHERE state IN ('idle in transaction', 'idle in transaction (aborted)') AND pid <> pg_backend_pid() \
               AND datname = current_database() \
             ORDER BY state_change",
            &[],
        )
        .await?;
    let mut sessions = Vec::new();
    let mut terminated = Vec::new();
    for r in rows {
        let (pid, app, user, age, query): (i32, String, String, f64, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let floe = app.starts_with(super::APPLICATION_PREFIX);
        if let Some(limit) = terminate_stale {
            if floe && age > limit.as_secs_f64() {
                let ended: bool = client
                    .query_one("SELECT pg_terminate_backend($1)", &[&pid])
                    .await?
                    .get(0);
                if ended {
                    terminated.push(pid);
                    continue;
                }
            }
        }
        sessions.push(serde_json::json!({
            "pid": pid, "application_name": app, "user": user,
            "idle_seconds": (age * 10.0).round() / 10.0, "query": query, "floe": floe,
        }));
    }
    let floe_count = sessions.iter().filter(|s| s["floe"] == true).count();
    let (status, message) = if sessions.is_empty() {
        (Status::Ok, "no session is idle in transaction".to_string())
    } else {
        (
            Status::Warning,
            format!(
                "{} session(s) idle in transaction ({floe_count} of them floe's); they hold locks and block refreshes",
                sessions.len()
            ),
        )
    };
    let message = if terminated.is_empty() {
        message
    } else {
        format!("{message}; terminated floe's stale sessions {terminated:?}")
    };
    Ok(finding(
        "idle_in_transaction",
        status,
        message,
        serde_json::json!({ "sessions": sessions, "terminated": terminated }),
    ))
}

/// Each configured cache table against its last successful run: the
/// incumbent's failure was a cache silently at 0 rows.
async fn cache_tables(
    client: &Client,
    config: &Config,
    schema: &str,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let has_runs: bool = client
        .query_one("SELECT to_regclass('floe.sync_runs') IS NOT NULL", &[])
        .await?
        .get(0);
    let mut out = Vec::new();
    for (name, t) in &config.tables {
        let q = quote_qualified(schema, &t.target);
        let target = format!("{schema}.{}", t.target);
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&q])
            .await?
            .get(0);
        let count: Option<i64> = if exists {
            Some(
                client
                    .query_one(&format!("SELECT count(*) FROM {q}"), &[])
                    .await?
                    .get(0),
            )
        } else {
            None
        };
        let last = if has_runs {
            client
                .query_opt(
                    "SELECT run_id, final_count, to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
                     FROM floe.sync_runs WHERE target = $1 AND status = 'success' \
                     ORDER BY finished_at DESC LIMIT 1",
                    &[&target],
                )
                .await?
                .map(|r| (r.get::<_, String>(0), r.get::<_, Option<i64>>(1), r.get::<_, Option<String>>(2)))
        } else {
            None
        };
        let (status, message) = match (count, &last) {
            (None, None) => (Status::Ok, format!("{target}: not loaded yet")),
            (None, Some((run, _, _))) => (
                Status::Error,
                format!("{target} is missing, but run {run} loaded it"),
            ),
            (Some(n), None) => (
                Status::Warning,
                format!("{target}: {n} rows, but no successful floe run is recorded"),
            ),
            (Some(n), Some((run, Some(expected), _))) if n == *expected => (
                Status::Ok,
                format!("{target}: {n} rows, as run {run} left it"),
            ),
            (Some(0), Some((run, expected, _))) => (
                Status::Error,
                format!(
                    "{target} is EMPTY, but run {run} left {} rows",
                    expected.unwrap_or_default()
                ),
            ),
            (Some(n), Some((run, expected, _))) => (
                Status::Warning,
                format!(
                    "{target}: {n} rows, but run {run} left {}: changed outside floe",
                    expected.unwrap_or_default()
                ),
            ),
        };
        out.push(finding(
            &format!("table.{name}"),
            status,
            message,
            serde_json::json!({
                "target": target, "rows": count,
                "last_success": last.as_ref().map(|(run, n, at)| serde_json::json!({ "run_id": run, "final_count": n, "finished_at": at })),
            }),
        ));
    }
    Ok(out)
}

async fn staging_tables(client: &Client, schema: &str) -> Result<Finding, tokio_postgres::Error> {
    let names: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname LIKE '%\\_\\_floe\\_%' \
             AND starts_with(obj_description(c.oid, 'pg_class'), $2) ORDER BY 1",
            &[&schema, &super::refresh::STAGING_COMMENT],
        )
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    // A staging table is in use while some floe session runs; else it is an orphan.
    let loading: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'floe/%' \
             AND pid <> pg_backend_pid() AND datname = current_database()",
            &[],
        )
        .await?
        .get(0);
    Ok(if names.is_empty() {
        finding(
            "staging_tables",
            Status::Ok,
            "no staging tables".into(),
            serde_json::Value::Null,
        )
    } else if loading > 0 {
        finding(
            "staging_tables",
            Status::Ok,
            format!("{} staging table(s) of runs in progress", names.len()),
            serde_json::json!({ "tables": names }),
        )
    } else {
        finding(
            "staging_tables",
            Status::Warning,
            format!(
                "{} orphaned staging table(s) from crashed runs (the next run of each table drops them)",
                names.len()
            ),
            serde_json::json!({ "tables": names }),
        )
    })
}

async fn lock_waits(client: &Client) -> Result<Finding, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT a.pid, coalesce(a.application_name, ''), pg_blocking_pids(a.pid), \
                    extract(epoch FROM now() - a.query_start)::float8, \
                    left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 120) \
             FROM pg_stat_activity a WHERE a.wait_event_type = 'Lock' AND a.pid <> pg_backend_pid() \
               AND a.datname = current_database()",
            &[],
        )
        .await?;
    let waits: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let (pid, app, blocked_by, secs, query): (i32, String, Vec<i32>, f64, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            serde_json::json!({ "pid": pid, "application_name": app, "blocked_by": blocked_by, "waiting_seconds": (secs * 10.0).round() / 10.0, "query": query })
        })
        .collect();
    Ok(if waits.is_empty() {
        finding(
            "lock_waits",
            Status::Ok,
            "no session is waiting for a lock".into(),
            serde_json::Value::Null,
        )
    } else {
        finding(
            "lock_waits",
            Status::Warning,
            format!("{} session(s) waiting for locks", waits.len()),
            serde_json::json!({ "waits": waits }),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preloaded_library_is_found_however_the_setting_spells_it() {
        for setting in [
            "postgis-3",
            "pg_stat_statements, postgis-3",
            "$libdir/postgis-3",
            "\"$libdir/postgis-3.so\" , auto_explain",
            "/usr/lib/postgresql/15/lib/postgis-3.so",
        ] {
            assert!(preloads(setting, "postgis-3"), "{setting}");
        }
        for setting in [
            "",
            "pg_stat_statements",
            "postgis_raster-3",
            "postgis_topology-3, pg_stat_statements",
            "postgis-2.5",
        ] {
            assert!(!preloads(setting, "postgis-3"), "{setting}");
        }
        assert_eq!(library_name("$libdir/postgis-3"), "postgis-3");
    }
}
