//! `floe doctor` against a real target: it finds what the incumbent hid — a
//! cache table emptied behind the job's back, sessions idle in transaction —
//! and fixes only what it is asked to, touching only floe's own sessions.

use crate::support::*;

fn doctor(url: &str, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let o = floe_command()
        .args(["doctor", "--output", "json", "--target", url])
        .args(extra)
        .env_remove("FLOE_TARGET_URL")
        .output()
        .unwrap();
    let report = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code(), report)
}

fn result<'a>(report: &'a serde_json::Value, check: &str) -> &'a serde_json::Value {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["check"] == check)
        .unwrap_or_else(|| panic!("no {check} in {report}"))
}

async fn idle_in_transaction(url: &str, application_name: &str) -> tokio_postgres::Client {
    let client = connect(&format!("{url}?application_name={application_name}")).await;
    client.batch_execute("BEGIN; SELECT 1").await.unwrap();
    client
}

#[tokio::test]
async fn doctor_finds_an_emptied_cache_and_idle_sessions_and_fixes_only_what_it_is_asked() {
    // A role of its own: --apply changes role-level settings.
    let admin = connect(&cluster().url()).await;
    admin
        .batch_execute("DROP ROLE IF EXISTS doctor_test; CREATE ROLE doctor_test LOGIN SUPERUSER")
        .await
        .unwrap();
    let url = fresh_db("doctor")
        .await
        .replacen("postgres@", "doctor_test@", 1);
    let config = shipped_config();
    assert_success(&run(&config, "transformers", &url, Some(grid_dir())).await);

    // Healthy but unprotected: no role-level idle timeout.
    let (code, report) = doctor(&url, &[]);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["status"], "warning", "{report}");
    assert_eq!(result(&report, "table.transformers")["status"], "ok");
    assert_eq!(
        result(&report, "table.transformers")["details"]["rows"],
        GRID_ROWS
    );
    assert_eq!(
        result(&report, "table.topology")["status"],
        "ok",
        "not loaded yet is fine"
    );
    assert_eq!(
        result(&report, "role.idle_in_transaction_session_timeout")["status"],
        "warning"
    );
    let postgis = result(&report, "postgis");
    assert_eq!(postgis["status"], "ok");
    // The test cluster does not preload PostGIS: the doctor names the
    // library its functions live in and the setting that would.
    assert_eq!(postgis["details"]["library"], "postgis-3", "{postgis}");
    assert_eq!(postgis["details"]["library_preloaded"], false, "{postgis}");
    assert!(
        postgis["message"]
            .as_str()
            .unwrap()
            .contains("shared_preload_libraries = 'postgis-3'"),
        "{postgis}"
    );

    // The incumbent's failure: the cache emptied outside the job, and sessions idling.
    let client = connect(&url).await;
    client
        .batch_execute("TRUNCATE transformers_cache")
        .await
        .unwrap();
    let stale_floe = idle_in_transaction(&url, "floe/transformers_cache/crashed").await;
    let other = idle_in_transaction(&url, "psql").await;
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let (code, report) = doctor(&url, &[]);
    assert_eq!(code, Some(1), "an emptied cache is an error: {report}");
    assert_eq!(report["status"], "error");
    let table = result(&report, "table.transformers");
    assert_eq!(table["status"], "error");
    assert!(
        table["message"].as_str().unwrap().contains("EMPTY"),
        "{table}"
    );
    let idle = result(&report, "idle_in_transaction");
    assert_eq!(idle["status"], "warning");
    let sessions = idle["details"]["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{idle}");
    let floe_flags: Vec<(&str, bool)> = sessions
        .iter()
        .map(|s| {
            (
                s["application_name"].as_str().unwrap(),
                s["floe"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(floe_flags.contains(&("floe/transformers_cache/crashed", true)));
    assert!(floe_flags.contains(&("psql", false)));

    // Asked to: set the role's timeouts and end floe's own stale session only.
    let (_, report) = doctor(&url, &["--apply", "--terminate-stale", "1"]);
    let idle = result(&report, "idle_in_transaction");
    assert_eq!(
        idle["details"]["terminated"].as_array().unwrap().len(),
        1,
        "{idle}"
    );
    assert!(
        stale_floe.batch_execute("SELECT 1").await.is_err(),
        "floe's stale session was ended"
    );
    other
        .batch_execute("SELECT 1; COMMIT")
        .await
        .expect("another client's session is never touched");
    assert_eq!(
        result(&report, "role.idle_in_transaction_session_timeout")["status"],
        "ok",
        "{report}"
    );
    let settings: Vec<String> = admin
        .query_one(
            "SELECT setconfig::text[] FROM pg_db_role_setting WHERE setrole = 'doctor_test'::regrole AND setdatabase = 0",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for want in [
        "idle_in_transaction_session_timeout=60s",
        "statement_timeout=300s",
        "lock_timeout=10s",
    ] {
        assert!(
            settings.iter().any(|s| s == want),
            "{want} not in {settings:?}"
        );
    }

    // A refresh puts the table back, and the doctor agrees.
    assert_success(&run(&config, "transformers", &url, Some(grid_dir())).await);
    let (code, report) = doctor(&url, &[]);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(result(&report, "table.transformers")["status"], "ok");
}
