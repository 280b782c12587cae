//! Secrets stay secret: passwords, private-key passphrases and material,
//! and tokens appear in no log line (even at -vv and RUST_LOG=trace), no
//! error, no `--help`, and no status or doctor output.

use std::process::Output;

use crate::support::*;

const PG_PASSWORD: &str = "pg-Secret-0xC0FFEE";
const PASSPHRASE: &str = "floe-test-passphrase";
const OAUTH_TOKEN: &str = "oauth-Secret-DEADBEEF";
const SF_PASSWORD: &str = "sf-Secret-0xFEEDFACE";
const WRONG_PG_PASSWORD: &str = "pg-Wrong-0xBADC0DE";

fn all_output(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Lines of the private key's PEM body: none may ever be printed.
fn key_material() -> Vec<String> {
    let pem = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/keys/rsa_key_aes.p8"
    ))
    .unwrap();
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::to_string)
        .collect()
}

fn assert_clean(what: &str, text: &str) {
    for secret in [
        PG_PASSWORD,
        PASSPHRASE,
        OAUTH_TOKEN,
        SF_PASSWORD,
        WRONG_PG_PASSWORD,
    ] {
        assert!(!text.contains(secret), "{what} printed a secret:\n{text}");
    }
    for line in key_material() {
        assert!(
            !text.contains(&line),
            "{what} printed private key material:\n{text}"
        );
    }
}

#[tokio::test]
async fn no_command_prints_a_password_passphrase_key_or_token() {
    let key = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/keys/rsa_key.pub"
    );
    let (_emulator, port) = emulator_process(
        grid_dir(),
        &["--user", "etl", "--public-key", key],
        &[
            ("SNOWFLAKE_PASSWORD", "pw"),
            ("FLOE_EMULATOR_OAUTH_TOKEN", OAUTH_TOKEN),
        ],
    );
    // The test cluster trusts local connections: the password rides along unused.
    let url =
        fresh_db("secrets")
            .await
            .replacen("postgres@", &format!("postgres:{PG_PASSWORD}@"), 1);
    let floe = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = floe_command();
        c.args(args)
            .env_remove("FLOE_TARGET_URL")
            .env("RUST_LOG", "trace")
            .envs(snowflake_env(port, "etl", "unused-password"))
            .envs(env.iter().copied());
        c.output().unwrap()
    };
    let jwt = [
        ("SNOWFLAKE_AUTHENTICATOR", "snowflake_jwt"),
        (
            "SNOWFLAKE_PRIVATE_KEY_FILE",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/keys/rsa_key_aes.p8"
            ),
        ),
        ("SNOWFLAKE_PRIVATE_KEY_PASSPHRASE", PASSPHRASE),
    ];
    // Key-pair login, full trace logging.
    let o = floe(
        &["-vv", "run", "--table", "transformers", "--target", &url],
        &jwt,
    );
    assert!(o.status.success(), "{}", all_output(&o));
    assert_clean("floe run (key pair)", &all_output(&o));
    // OAuth login.
    let o = floe(
        &["-vv", "run", "--table", "vegetation", "--target", &url],
        &[
            ("SNOWFLAKE_AUTHENTICATOR", "oauth"),
            ("SNOWFLAKE_TOKEN", OAUTH_TOKEN),
        ],
    );
    assert!(o.status.success(), "{}", all_output(&o));
    assert_clean("floe run (OAuth)", &all_output(&o));
    // Failures: a wrong passphrase, a refused token, an unreachable target.
    let o = floe(
        &["run", "--table", "transformers", "--target", &url],
        &[
            jwt[0],
            jwt[1],
            ("SNOWFLAKE_PRIVATE_KEY_PASSPHRASE", "wrong-passphrase-XYZZY"),
        ],
    );
    assert!(!o.status.success());
    let text = all_output(&o);
    assert!(text.contains("wrong passphrase"), "{text}");
    assert!(!text.contains("wrong-passphrase-XYZZY"), "{text}");
    let o = floe(
        &["run", "--table", "transformers", "--target", &url],
        &[
            ("SNOWFLAKE_AUTHENTICATOR", "oauth"),
            ("SNOWFLAKE_TOKEN", "oauth-Wrong-TOKEN"),
        ],
    );
    assert!(!o.status.success());
    assert!(!all_output(&o).contains("oauth-Wrong-TOKEN"));
    let unreachable = format!("postgres://postgres:{PG_PASSWORD}@127.0.0.1:1/nowhere");
    let o = floe(
        &["run", "--table", "transformers", "--target", &unreachable],
        &jwt,
    );
    assert!(!o.status.success());
    assert_clean("floe run (unreachable target)", &all_output(&o));
    // What operators look at.
    for args in [
        vec!["status", "--target", url.as_str()],
        vec!["status", "--output", "json", "--target", url.as_str()],
        vec!["doctor", "--target", url.as_str()],
        vec!["doctor", "--output", "json", "--target", url.as_str()],
    ] {
        let o = floe(&args, &[]);
        assert!(!o.stdout.is_empty(), "{args:?}: {}", all_output(&o));
        assert_clean(&format!("floe {}", args.join(" ")), &all_output(&o));
    }
    // --help with every secret in the environment.
    for sub in ["run", "status", "doctor", "emulate-snowflake", "demo"] {
        let o = floe(
            &[sub, "--help"],
            &[
                ("FLOE_TARGET_URL", unreachable.as_str()),
                ("SNOWFLAKE_PASSWORD", PG_PASSWORD),
                ("FLOE_EMULATOR_OAUTH_TOKEN", OAUTH_TOKEN),
                jwt[2],
            ],
        );
        assert!(o.status.success(), "{sub} --help");
        assert_clean(&format!("floe {sub} --help"), &all_output(&o));
    }
}

#[tokio::test]
async fn passwords_actually_used_stay_secret_at_trace_and_a_wrong_one_is_named_not_shown() {
    // GIVEN a cluster of its own that checks passwords (scram-sha-256 over
    // TCP), and an emulator that checks the Snowflake password
    let cluster = tokio::task::spawn_blocking(pipeline::cluster::EphemeralCluster::start)
        .await
        .unwrap()
        .expect("a second cluster");
    let admin = connect(&cluster.url()).await;
    admin
        .batch_execute(&format!(
            "SET password_encryption = 'scram-sha-256'; ALTER ROLE postgres PASSWORD '{PG_PASSWORD}'"
        ))
        .await
        .unwrap();
    std::fs::write(
        cluster.data_dir().join("pg_hba.conf"),
        "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n",
    )
    .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    drop(admin);
    let (_emulator, port) = emulator_process(
        grid_dir(),
        &["--user", "etl"],
        &[("SNOWFLAKE_PASSWORD", SF_PASSWORD)],
    );
    let with_password = |pw: &str| {
        format!(
            "postgres://postgres:{pw}@127.0.0.1:{}/postgres",
            cluster.port()
        )
    };
    let floe = |url: &str| {
        floe_command()
            .args(["-vv", "run", "--table", "transformers", "--target", url])
            .env_remove("FLOE_TARGET_URL")
            .env("RUST_LOG", "trace")
            .envs(snowflake_env(port, "etl", SF_PASSWORD))
            .output()
            .unwrap()
    };
    // WHEN floe logs in to both with passwords, at trace
    let o = floe(&with_password(PG_PASSWORD));
    let text = all_output(&o);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("success"), "{text}");
    assert_clean("floe run (passwords in use)", &text);
    // and with a wrong Postgres password: named as such, never shown
    let o = floe(&with_password(WRONG_PG_PASSWORD));
    let text = all_output(&o);
    assert!(!o.status.success());
    assert!(text.contains("password authentication failed"), "{text}");
    assert_clean("floe run (wrong Postgres password)", &text);
    // The table the first run loaded is there, untouched by the second,
    // which could not log in to record itself: its exit code and its
    // message are the record. The next run with the right password is clean.
    let client = connect(&with_password(PG_PASSWORD)).await;
    let before = fingerprint(&client, "transformers_cache").await;
    assert_eq!(before.0 as u64, GRID_ROWS);
    assert_eq!(runs(&client).await, 1);
    let o = floe(&with_password(PG_PASSWORD));
    assert!(o.status.success(), "{}", all_output(&o));
    assert_eq!(fingerprint(&client, "transformers_cache").await, before);
    assert_eq!(runs(&client).await, 2);
    assert!(staging_tables(&client).await.is_empty());
}

async fn runs(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM floe.sync_runs", &[])
        .await
        .unwrap()
        .get(0)
}
