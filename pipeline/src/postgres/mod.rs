//! The Postgres side: connecting with safe session settings, the binary COPY
//! encoder ([`encode`]), the staged full refresh ([`refresh`]) and the
//! in-place incremental apply ([`apply`]).

pub mod apply;
pub mod checksum;
pub mod copy;
pub mod doctor;
pub mod encode;
pub mod refresh;
pub mod runs;
pub mod state;
pub mod table_lock;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use schemas::config::{LoadConfig, TargetConfig};
use schemas::pg::quote_ident;
use tokio::task::JoinHandle;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};

use crate::error::describe_pg_error;
use crate::PipelineError;

/// What every floe session's `application_name` starts with (doctor tells
/// floe's sessions from others by it).
pub const APPLICATION_PREFIX: &str = "floe/";

/// A floe session's `application_name`: `floe/<table>/<run>[/<role>]` for a
/// run's sessions, `floe/<command>` for the CLI's own, so `pg_stat_activity`
/// says which table and run a session serves.
pub fn application_name(parts: &[&str]) -> String {
    format!("{APPLICATION_PREFIX}{}", parts.join("/"))
}

/// A resolved Postgres target: driver config plus a printable, password-free name.
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    /// rustls settings for the `sslmode`; `None` = plain connections.
    tls: Option<Arc<rustls::ClientConfig>>,
    display: String,
    /// Schema holding the cache tables.
    pub schema: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

impl Target {
    /// Resolves the config's target: URL or parts, password from URL, env or file.
    pub fn resolve(t: &TargetConfig) -> Result<Target, PipelineError> {
        let invalid = |message: String| PipelineError::Connect {
            target: "the configured target".into(),
            message,
        };
        let (url, url_mode, url_root) = match &t.url {
            Some(url) => {
                let (u, m, r) = tls::split_url(url);
                (Some(u), m, r)
            }
            None => (None, None, None),
        };
        let mut config = match &url {
            Some(url) => url
                .parse::<tokio_postgres::Config>()
                .map_err(|e| invalid(format!("invalid target URL: {e}")))?,
            None => tokio_postgres::Config::new(),
        };
        let mode: tls::SslMode = url_mode
            .or_else(|| t.sslmode.clone())
            .map(|m| m.parse())
            .transpose()
            .map_err(invalid)?
            .unwrap_or_default();
        let root = url_root.or_else(|| t.sslrootcert.clone());
        let tls = tls::client_config(mode, root.as_deref()).map_err(invalid)?;
        config.ssl_mode(mode.driver_mode());
        if let Some(h) = &t.host {
            config.host(h);
        }
        if let Some(p) = t.port {
            config.port(p);
        }
        if let Some(u) = &t.user {
            config.user(u);
        }
        if let Some(d) = &t.dbname {
            config.dbname(d);
        }
        if config.get_hosts().is_empty() {
            config.host("127.0.0.1");
        }
        if config.get_user().is_none() {
            config.user("postgres");
        }
        if config.get_password().is_none() {
            if let Some(pw) = t.password().map_err(invalid)? {
                config.password(pw.expose());
            } else if let Ok(pw) = std::env::var("PGPASSWORD") {
                config.password(pw);
            }
        }
        config.connect_timeout(Duration::from_secs(10));
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "127.0.0.1".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let display = format!(
            "postgres://{}@{host}:{port}/{}",
            config.get_user().unwrap_or("postgres"),
            config
                .get_dbname()
                .unwrap_or(config.get_user().unwrap_or("postgres"))
        );
        Ok(Target {
            config,
            tls,
            display,
            schema: t.schema.clone(),
        })
    }

    /// The target without its password, for messages.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// Opens a session with floe's safety settings applied at connect time:
    /// `idle_in_transaction_session_timeout` (a crashed floe never holds
    /// locks for long), `statement_timeout`, `lock_timeout`, and an
    /// `application_name` that says which table and run the session serves.
    pub async fn connect(
        &self,
        application_name: &str,
        load: &LoadConfig,
    ) -> Result<Session, PipelineError> {
        let mut config = self.config.clone();
        config.application_name(application_name);
        config.options(format!(
            "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={}",
            load.statement_timeout.as_millis(),
            load.lock_timeout.as_millis(),
            load.idle_in_transaction_timeout.as_millis()
        ));
        // A server that is restarting refuses connections for a moment:
        // retry those (bounded); anything else (auth, missing database) fails now.
        let mut attempt = 1;
        let (client, task, server_version) = loop {
            match open(&config, self.tls.as_ref()).await {
                Ok(c) => break c,
                Err(e) if attempt < CONNECT_ATTEMPTS && transient_connect_error(&e) => {
                    let pause = crate::retry::backoff(
                        attempt,
                        std::time::Duration::from_millis(250),
                        std::time::Duration::from_secs(2),
                    );
                    tracing::warn!(
                        attempt,
                        "cannot connect to Postgres ({e}); retrying in {pause:?}"
                    );
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(PipelineError::Connect {
                        target: self.display.clone(),
                        message: describe_pg_error(&e),
                    })
                }
            }
        };
        // A floe killed outright (SIGKILL, the OOM killer) cannot cancel
        // its statements: have the server check every second that floe is
        // still there (PostgreSQL 14+), so an index build or a swap waiting
        // for a lock ends with it instead of running on for nobody.
        if let Err(e) = client
            .batch_execute(
                "SELECT set_config('client_connection_check_interval', '1000', false) \
                 WHERE current_setting('server_version_num')::int >= 140000",
            )
            .await
        {
            tracing::debug!("client_connection_check_interval not set: {e}");
        }
        Ok(Session {
            client: Arc::new(client),
            task,
            tls: self.tls.clone(),
            server_version,
        })
    }
}

/// Connects (plain or TLS) and drives the connection on its own task,
/// handing back the server's version as it reported it at start-up.
async fn open(
    config: &tokio_postgres::Config,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(Client, JoinHandle<()>, Option<i32>), tokio_postgres::Error> {
    let drive = |e: tokio_postgres::Error| tracing::debug!("postgres connection ended: {e}");
    Ok(match tls {
        None => {
            let (client, connection) = config.connect(NoTls).await?;
            let version = connection.parameter("server_version").and_then(version_num);
            let task = tokio::spawn(async move {
                if let Err(e) = connection.await {
                    drive(e);
                }
            });
            (client, task, version)
        }
        Some(tls) => {
            let (client, connection) = config.connect(tls::MakeRustls(Arc::clone(tls))).await?;
            let version = connection.parameter("server_version").and_then(version_num);
            let task = tokio::spawn(async move {
                if let Err(e) = connection.await {
                    drive(e);
                }
            });
            (client, task, version)
        }
    })
}

/// `server_version` as `server_version_num` has it ("15.10 (Debian …)" →
/// 150010, "9.6.24" → 90624, "17beta2" → 170000); `None` when it does not
/// parse, and the caller asks the server instead.
fn version_num(reported: &str) -> Option<i32> {
    let digits_of = |s: &str| -> Option<i32> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        s[..end].parse().ok()
    };
    let mut parts = reported.split('.');
    let major = digits_of(parts.next()?)?;
    let next = parts.next().and_then(digits_of).unwrap_or(0);
    match major {
        10.. => Some(major * 10_000 + next),
        _ => Some(major * 10_000 + next * 100 + parts.next().and_then(digits_of).unwrap_or(0)),
    }
}

/// Whether `table` (a name as SQL would resolve it) exists.
pub(crate) async fn table_exists(
    client: &Client,
    table: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await?
        .get(0))
}

/// Runs `create_sql` unless `table` exists, tolerating a concurrent run
/// doing the same, and adds the `added` columns (name, type) an older floe
/// created it without. Only DDL when needed: it takes locks, and it is what
/// a troubled database (slow DDL, a full disk) fails first. One round trip
/// when nothing is missing: every run asks, on the way to its COPY.
pub(crate) async fn ensure_table(
    client: &Client,
    table: &str,
    create_sql: &str,
    added: &[(&str, &str)],
) -> Result<(), tokio_postgres::Error> {
    let names: Vec<&str> = added.iter().map(|(n, _)| *n).collect();
    // Whether the table exists, and which of the added columns it has.
    let params: [(&(dyn ToSql + Sync), Type); 2] =
        [(&table, Type::TEXT), (&names, Type::TEXT_ARRAY)];
    let look = || {
        client.query_typed_one(
            "SELECT to_regclass($1) IS NOT NULL, ARRAY(SELECT attname::text FROM pg_attribute \
             WHERE attrelid = to_regclass($1) AND attname = ANY($2) AND NOT attisdropped)",
            &params,
        )
    };
    let mut row = look().await?;
    if !row.get::<_, bool>(0) {
        create_if_missing(client, create_sql).await?;
        // (Made here, or a moment ago by another run, perhaps of an older floe.)
        row = look().await?;
    }
    let present: Vec<String> = row.get(1);
    for (name, ty) in added {
        if !present.iter().any(|p| p == name) {
            client
                .batch_execute(&format!(
                    "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {} {ty}",
                    quote_ident(name)
                ))
                .await?;
        }
    }
    Ok(())
}

/// Runs a `CREATE … IF NOT EXISTS`. Two sessions racing on one (two
/// tables' first loads, two `floe watch` replicas) can both find it
/// missing; the loser's unique or duplicate error means the other won.
pub(crate) async fn create_if_missing(
    client: &Client,
    create_sql: &str,
) -> Result<(), tokio_postgres::Error> {
    use tokio_postgres::error::SqlState;
    match client.batch_execute(create_sql).await {
        Err(e)
            if e.code().is_some_and(|c| {
                *c == SqlState::UNIQUE_VIOLATION
                    || *c == SqlState::DUPLICATE_OBJECT
                    || *c == SqlState::DUPLICATE_SCHEMA
            }) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Connection attempts while the server is (re)starting: about 2 s in all.
const CONNECT_ATTEMPTS: u32 = 4;

/// Refused, reset or "starting up / shutting down": the server may be back soon.
fn transient_connect_error(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    if let Some(db) = e.as_db_error() {
        return [
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
        ]
        .contains(db.code());
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        source = cause.source();
    }
    false
}

/// One Postgres session. Dropping it closes the connection: a session is
/// never handed back in an unknown state.
pub struct Session {
    pub client: Arc<Client>,
    task: JoinHandle<()>,
    /// For the cancel request's own connection.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// From the server's start-up report, so no step spends a round trip on it.
    server_version: Option<i32>,
}

impl Session {
    /// The server's version as `server_version_num` (150010 for 15.10): from
    /// what it reported when the session started, else asked.
    pub async fn server_version(&self) -> Result<i32, tokio_postgres::Error> {
        match self.server_version {
            Some(v) => Ok(v),
            None => Ok(self
                .client
                .query_one("SELECT current_setting('server_version_num')::int", &[])
                .await?
                .get(0)),
        }
    }

    /// Asks the server to stop the statement this session is running (a
    /// CancelRequest, on a connection of its own). Dropping a future does
    /// not stop a statement the server is busy with, such as an index
    /// build: without this, a cancelled load's clean-up would queue behind it.
    pub async fn cancel_running(&self) {
        let token = self.client.cancel_token();
        let sent = match &self.tls {
            None => token.cancel_query(NoTls).await,
            Some(tls) => token.cancel_query(tls::MakeRustls(Arc::clone(tls))).await,
        };
        if let Err(e) = sent {
            tracing::debug!("cancel request: {e}");
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn application_names_say_table_run_and_role() {
        use super::application_name;
        assert_eq!(
            application_name(&["t_cache", "20261124T023301Z-3f9a"]),
            "floe/t_cache/20261124T023301Z-3f9a"
        );
        assert_eq!(
            application_name(&["t_cache", "r1", "copy2"]),
            "floe/t_cache/r1/copy2"
        );
        assert_eq!(application_name(&["doctor"]), "floe/doctor");
    }

    #[test]
    fn reported_server_versions_read_as_server_version_num() {
        use super::version_num;
        assert_eq!(
            version_num("15.10 (Debian 15.10-1.pgdg120+1)"),
            Some(150010)
        );
        assert_eq!(version_num("16.1"), Some(160001));
        assert_eq!(version_num("17beta2"), Some(170000));
        assert_eq!(version_num("9.6.24"), Some(90624));
        assert_eq!(version_num("13.4 on x86_64"), Some(130004));
        assert_eq!(version_num("unknown"), None);
    }
}
