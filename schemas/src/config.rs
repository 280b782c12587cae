//! `floe.toml`: the target, load settings and one section per table.
//!
//! Parsing is strict (unknown keys are errors, so a typo never silently falls
//! back to a default) and [`Config::validate`] checks what serde cannot,
//! naming the file, the table and the key in every message.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::SchemaError;

mod table;
pub use table::*;

/// A string that must never be printed: passwords, tokens.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself; call only where it is handed to a driver.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// A Postgres URL given on the command line (`--target`): its `Debug`
/// hides the password, so printing the parsed arguments cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct TargetUrl(String);

impl TargetUrl {
    /// The URL itself; call only where it is handed to the driver.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for TargetUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(TargetUrl(s.to_string()))
    }
}

impl fmt::Debug for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TargetUrl({})", redacted_url(&self.0))
    }
}

/// `url` with any password in it replaced by `***`, for messages and logs:
/// `postgres://u:pw@h/db` and `password=pw` in a key=value string alike.
pub fn redacted_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, tail) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                None => authority.to_string(),
            },
            None => authority.to_string(),
        };
        // A password may also come as a query parameter.
        let tail = tail
            .split('&')
            .map(|kv| match kv.split_once("password=") {
                Some((before, _)) => format!("{before}password=***"),
                None => kv.to_string(),
            })
            .collect::<Vec<_>>()
            .join("&");
        return format!("{scheme}://{authority}{tail}");
    }
    url.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where run snapshots are kept: a directory (relative to the working
    /// directory), `file://`, or an object store URL. `--snapshot-dir` and
    /// `FLOE_SNAPSHOT_DIR` override it.
    #[serde(default = "default_snapshot_dir")]
    pub snapshot_dir: String,
    #[serde(default)]
    pub snapshots: SnapshotConfig,
    #[serde(default)]
    pub target: TargetConfig,
    #[serde(default)]
    pub snowflake: SnowflakeConfig,
    #[serde(default)]
    pub load: LoadConfig,
    #[serde(default)]
    pub flight: FlightConfig,
    /// When `floe watch` loads each table.
    #[serde(default)]
    pub watch: crate::watch::WatchConfig,
    /// Tables by floe name, in name order.
    pub tables: BTreeMap<String, TableConfig>,
    /// The file this came from (for messages); not part of the TOML.
    #[serde(skip)]
    pub path: PathBuf,
}

fn default_snapshot_dir() -> String {
    "snapshots".into()
}

/// How runs keep what they read (see `floe replay`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Snapshot every run (`--no-snapshot` turns it off for one run).
    pub enabled: bool,
    /// Rows per parquet row group, at most.
    pub row_group_rows: usize,
    /// A row group is also cut once the writer buffers this many bytes
    /// (the snapshot's memory bound, whatever the row width).
    pub row_group_bytes: usize,
    /// Rows per part file.
    pub part_rows: u64,
    /// zstd level (1-22).
    pub zstd_level: i32,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            enabled: true,
            row_group_rows: 16_384,
            row_group_bytes: 16 << 20,
            part_rows: 1_048_576,
            zstd_level: 3,
        }
    }
}

/// The Postgres database floe writes to. Its `Debug` hides a password in
/// the URL.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// A libpq-style URL (`postgres://user@host:port/db`) or key=value string.
    pub url: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub dbname: Option<String>,
    /// Name of an environment variable holding the password.
    pub password_env: Option<String>,
    /// A file holding the password (first line).
    pub password_file: Option<PathBuf>,
    /// The schema cache tables live in.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// libpq's `sslmode`: disable, prefer (default), require, verify-ca,
    /// verify-full. Also accepted as `?sslmode=` in the URL (which wins).
    pub sslmode: Option<String>,
    /// The CA certificate (PEM) for verify-ca / verify-full.
    pub sslrootcert: Option<PathBuf>,
}

fn default_schema() -> String {
    "public".into()
}

impl Default for TargetConfig {
    /// As if the section were empty: local Postgres, schema `public`.
    fn default() -> Self {
        TargetConfig {
            url: None,
            host: None,
            port: None,
            user: None,
            dbname: None,
            password_env: None,
            password_file: None,
            schema: default_schema(),
            sslmode: None,
            sslrootcert: None,
        }
    }
}

impl fmt::Debug for TargetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TargetConfig")
            .field("url", &self.url.as_deref().map(redacted_url))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .field("password_env", &self.password_env)
            .field("password_file", &self.password_file)
            .field("schema", &self.schema)
            .field("sslmode", &self.sslmode)
            .finish_non_exhaustive()
    }
}

impl TargetConfig {
    /// A target given only by URL (`--target`, `FLOE_TARGET_URL`), keeping the schema.
    pub fn with_url(&self, url: impl Into<String>) -> TargetConfig {
        TargetConfig {
            url: Some(url.into()),
            host: None,
            port: None,
            user: None,
            dbname: None,
            password_env: self.password_env.clone(),
            password_file: self.password_file.clone(),
            schema: self.schema.clone(),
            sslmode: self.sslmode.clone(),
            sslrootcert: self.sslrootcert.clone(),
        }
    }

    /// Reads the password from `password_env` or `password_file`, if configured.
    pub fn password(&self) -> Result<Option<Secret>, String> {
        if let Some(var) = &self.password_env {
            if let Ok(v) = std::env::var(var) {
                return Ok(Some(Secret::new(v)));
            }
        }
        if let Some(file) = &self.password_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read password_file {}: {e}", file.display()))?;
            let line = text.lines().next().unwrap_or("").to_string();
            return Ok(Some(Secret::new(line)));
        }
        Ok(None)
    }
}

/// The Snowflake connection, with the official connectors' parameter names.
/// Each key can be overridden by `SNOWFLAKE_<KEY>` in the environment.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnowflakeConfig {
    pub account: Option<String>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// `snowflake` (password; the default), `snowflake_jwt` (key pair:
    /// `private_key_file` + optional `private_key_passphrase`) or `oauth` (`token`).
    pub authenticator: Option<String>,
    pub private_key_file: Option<PathBuf>,
    pub private_key_passphrase: Option<Secret>,
    pub token: Option<Secret>,
    pub role: Option<String>,
    pub warehouse: Option<String>,
    pub database: Option<String>,
    pub schema: Option<String>,
    /// Defaults to `<account>.snowflakecomputing.com`.
    pub host: Option<String>,
    pub port: Option<u16>,
    /// `https` (default) or `http` (the emulator).
    pub protocol: Option<String>,
    /// `GEOGRAPHY_OUTPUT_FORMAT` for the session: GeoJSON (Snowflake's
    /// default), WKT, EWKT, WKB or EWKB. WKB is the cheapest to turn into
    /// PostGIS geometry; `to_geography()` in a transform reads any of them.
    pub geography_output_format: Option<String>,
    /// Chunks downloaded at once.
    #[serde(default = "default_prefetch")]
    pub prefetch_threads: usize,
    /// Upper bound on decoded result bytes downloaded but not yet consumed.
    #[serde(default = "default_result_buffer")]
    pub max_buffered_bytes: usize,
    /// A response (or chunk) that sends nothing for this long is abandoned
    /// and retried: a stalled source must not hang a run.
    #[serde(default = "default_read_timeout", with = "crate::duration::text")]
    pub read_timeout: Duration,
    /// How long a statement may run, polled, before floe cancels it on the
    /// server and fails the run: a query stuck in a queued warehouse must
    /// not hold the table's lock (and so every later run) indefinitely.
    #[serde(default = "default_query_timeout", with = "crate::duration::text")]
    pub query_timeout: Duration,
}

impl Default for SnowflakeConfig {
    /// No connection details; the same download bounds as an empty `[snowflake]` section.
    fn default() -> Self {
        SnowflakeConfig {
            account: None,
            user: None,
            password: None,
            authenticator: None,
            private_key_file: None,
            private_key_passphrase: None,
            token: None,
            role: None,
            warehouse: None,
            database: None,
            schema: None,
            host: None,
            port: None,
            protocol: None,
            geography_output_format: None,
            prefetch_threads: default_prefetch(),
            max_buffered_bytes: default_result_buffer(),
            read_timeout: default_read_timeout(),
            query_timeout: default_query_timeout(),
        }
    }
}

fn default_read_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_query_timeout() -> Duration {
    Duration::from_secs(3_600)
}

/// Reading `flight://` sources.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlightConfig {
    /// A server that sends nothing (no connection, no answer, no next
    /// message) for this long fails the run: a stalled server must not
    /// hold the table's lock, and so every later run, forever.
    #[serde(with = "crate::duration::text")]
    pub read_timeout: Duration,
}

impl Default for FlightConfig {
    fn default() -> Self {
        FlightConfig {
            read_timeout: Duration::from_secs(60),
        }
    }
}

fn default_prefetch() -> usize {
    4
}

fn default_result_buffer() -> usize {
    64 << 20
}

impl fmt::Debug for SnowflakeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnowflakeConfig")
            .field("account", &self.account)
            .field("user", &self.user)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl SnowflakeConfig {
    /// This config with every `SNOWFLAKE_<KEY>` environment variable applied.
    pub fn with_env(&self) -> SnowflakeConfig {
        self.with_overrides(|key| std::env::var(format!("SNOWFLAKE_{key}")).ok())
    }

    /// This config with overrides looked up by upper-case key (`ACCOUNT`, `USER`, …).
    pub fn with_overrides(&self, get: impl Fn(&str) -> Option<String>) -> SnowflakeConfig {
        let mut c = self.clone();
        let set = |slot: &mut Option<String>, key: &str| {
            if let Some(v) = get(key) {
                *slot = Some(v);
            }
        };
        set(&mut c.account, "ACCOUNT");
        set(&mut c.user, "USER");
        set(&mut c.authenticator, "AUTHENTICATOR");
        for (slot, key) in [
            (&mut c.password, "PASSWORD"),
            (&mut c.private_key_passphrase, "PRIVATE_KEY_PASSPHRASE"),
            (&mut c.token, "TOKEN"),
        ] {
            if let Some(v) = get(key) {
                *slot = Some(Secret::new(v));
            }
        }
        set(&mut c.role, "ROLE");
        set(&mut c.warehouse, "WAREHOUSE");
        set(&mut c.database, "DATABASE");
        set(&mut c.schema, "SCHEMA");
        set(&mut c.host, "HOST");
        set(&mut c.protocol, "PROTOCOL");
        set(&mut c.geography_output_format, "GEOGRAPHY_OUTPUT_FORMAT");
        if let Some(f) = get("PRIVATE_KEY_FILE") {
            c.private_key_file = Some(PathBuf::from(f));
        }
        if let Some(p) = get("PORT").and_then(|p| p.parse().ok()) {
            c.port = Some(p);
        }
        c
    }

    /// `<protocol>://<host>:<port>`.
    pub fn base_url(&self) -> Result<String, String> {
        let protocol = self
            .protocol
            .as_deref()
            .unwrap_or("https")
            .to_ascii_lowercase();
        if protocol != "https" && protocol != "http" {
            return Err(format!(
                "snowflake.protocol `{protocol}` is neither https nor http"
            ));
        }
        let host = match (&self.host, &self.account) {
            (Some(h), _) => h.clone(),
            (None, Some(a)) => format!("{a}.snowflakecomputing.com"),
            (None, None) => return Err("set snowflake.account (or snowflake.host)".into()),
        };
        let port = self
            .port
            .unwrap_or(if protocol == "https" { 443 } else { 80 });
        Ok(format!("{protocol}://{host}:{port}"))
    }
}

/// How data moves: sizes, bounds and timeouts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadConfig {
    /// Rows per Arrow batch through the transform and encoder. 8192 keeps a
    /// batch's encoded bytes in the low megabytes for the widest grid table.
    pub batch_size: usize,
    /// Upper bound on encoded COPY bytes queued between encoder and Postgres;
    /// with `batch_size` this is what bounds floe's memory, not table size.
    /// 8 MiB is two to three batches of the widest grid tables, enough to
    /// keep one COPY fed (more bought no speed, only memory: BENCHMARKS.md);
    /// `copy_streams` sessions share it, so give each about two batches.
    pub max_in_flight_bytes: usize,
    /// How long the swap keeps trying to lock the target (attempts of
    /// `swap_lock_wait` each, backing off between them) before giving up.
    #[serde(with = "crate::duration::text")]
    pub lock_timeout: Duration,
    /// How long one swap attempt waits in the lock queue. New readers queue
    /// behind a waiting swap, so this bounds how long a swap delays them
    /// (but for one attempt of `deadlock_timeout` + 250 ms when an
    /// autovacuum holds the table: Postgres cancels it only then).
    #[serde(with = "crate::duration::text")]
    pub swap_lock_wait: Duration,
    /// Materialized views on a cache table: a full refresh recreates and
    /// refreshes them inside the swap (holding the lock while they compute),
    /// or refuses before loading.
    pub dependent_matviews: DependentMatviews,
    /// Upper bound on any single statement (COPY, index build, swap).
    #[serde(with = "crate::duration::text")]
    pub statement_timeout: Duration,
    /// Postgres ends a session idle inside a transaction after this long, so a
    /// crashed floe can never leave locks behind.
    #[serde(with = "crate::duration::text")]
    pub idle_in_transaction_timeout: Duration,
    /// The shrink guard: a full refresh that would replace a non-empty table
    /// with zero rows, or with fewer than `(1 - max_shrink)` of its rows,
    /// fails before the swap unless `--allow-shrink` is given. An empty or
    /// truncated source must never pass for a good one.
    pub max_shrink: f64,
    /// Verify content, not only the row count, before the swap (see README:
    /// the checksum). On by default; off only to measure what it costs.
    pub verify_checksum: bool,
    /// Parallel `COPY` sessions into the staging table. A single COPY is
    /// bound by one server core; more streams use more of the server's cores
    /// (each its own session; the memory bound is shared).
    pub copy_streams: usize,
}

/// More COPY sessions than this only queue on the server's cores and locks.
pub const MAX_COPY_STREAMS: usize = 16;

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            batch_size: 8192,
            max_in_flight_bytes: 8 << 20,
            lock_timeout: Duration::from_secs(10),
            swap_lock_wait: Duration::from_millis(200),
            dependent_matviews: DependentMatviews::Refuse,
            statement_timeout: Duration::from_secs(300),
            idle_in_transaction_timeout: Duration::from_secs(60),
            max_shrink: 0.5,
            verify_checksum: true,
            copy_streams: 1,
        }
    }
}

/// What a full refresh does with materialized views on its table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DependentMatviews {
    /// Refuse before loading, naming them (the default: recomputing a
    /// view inside the swap holds the table's lock for as long as it takes).
    #[default]
    Refuse,
    /// Recreate each with its indexes, owner, grants and comments and
    /// compute it inside the swap's transaction.
    Refresh,
}

impl DependentMatviews {
    pub fn as_str(self) -> &'static str {
        match self {
            DependentMatviews::Refuse => "refuse",
            DependentMatviews::Refresh => "refresh",
        }
    }
}

/// Checks a Snowflake object name floe pastes into its queries
/// (`SELECT * FROM <snowflake_table>`): up to three dot-separated parts
/// (database, schema, object), each an unquoted identifier (a letter or
/// `_`, then letters, digits, `_` or `$`; Snowflake folds it to upper case)
/// or a double-quoted one (`""` for a quote inside). Anything else, such as
/// `T; DROP TABLE X` or `T --`, is refused rather than sent.
pub fn snowflake_object_name(name: &str) -> Result<(), String> {
    let refused = |why: &str| {
        Err(format!(
            "`{name}` is not a Snowflake object name ({why}): use NAME, SCHEMA.NAME or DB.SCHEMA.NAME, each part unquoted (letters, digits, _ and $, not starting with a digit or $) or in double quotes"
        ))
    };
    let mut parts = 0;
    let mut rest = name;
    loop {
        parts += 1;
        if let Some(quoted) = rest.strip_prefix('"') {
            // A quoted part ends at a quote not followed by another.
            let mut end = None;
            let mut chars = quoted.char_indices().peekable();
            while let Some((i, c)) = chars.next() {
                if c == '"' {
                    if chars.peek().map(|(_, n)| *n) == Some('"') {
                        chars.next();
                    } else {
                        end = Some(i);
                        break;
                    }
                }
            }
            let Some(end) = end else {
                return refused("an unclosed quote");
            };
            if end == 0 {
                return refused("an empty quoted part");
            }
            rest = &quoted[end + 1..];
        } else {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
                .unwrap_or(rest.len());
            let part = &rest[..len];
            match part.chars().next() {
                None => return refused("an empty part"),
                Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
                    return refused("a part starting with a digit or $")
                }
                _ => {}
            }
            rest = &rest[len..];
        }
        match rest.strip_prefix('.') {
            Some(next) if parts < 3 => rest = next,
            Some(_) => return refused("more than three parts"),
            None if rest.is_empty() => return Ok(()),
            None => return refused("characters an identifier cannot hold"),
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, SchemaError> {
        let text = std::fs::read_to_string(path).map_err(|source| SchemaError::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, SchemaError> {
        let mut config: Config = toml::from_str(text).map_err(|e| SchemaError::ConfigParse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.path = path.to_path_buf();
        config.validate()?;
        Ok(config)
    }

    fn invalid(&self, table: &str, key: &str, message: impl Into<String>) -> SchemaError {
        SchemaError::ConfigInvalid {
            path: self.path.clone(),
            table: table.to_string(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// `floe watch`'s schedule for table `name`: its `[tables.<name>.watch]`
    /// over `[watch]`. Checked by [`Config::validate`].
    pub fn schedule(&self, name: &str) -> Result<crate::watch::Schedule, (String, String)> {
        let table = self
            .tables
            .get(name)
            .map(|t| t.watch.clone())
            .unwrap_or_default();
        crate::watch::Schedule::resolve(&self.watch, &table)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), SchemaError> {
        if self.tables.is_empty() {
            return Err(SchemaError::ConfigParse {
                path: self.path.clone(),
                message: "no tables: add at least one [tables.<name>] section".into(),
            });
        }
        if self.target.schema.is_empty() {
            return Err(self.invalid("-", "target.schema", "is empty"));
        }
        if self.load.batch_size == 0 {
            return Err(self.invalid("-", "load.batch_size", "must be at least 1"));
        }
        if self.load.max_in_flight_bytes < 1 << 20 {
            return Err(self.invalid(
                "-",
                "load.max_in_flight_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if !(1..=MAX_COPY_STREAMS).contains(&self.load.copy_streams) {
            return Err(self.invalid(
                "-",
                "load.copy_streams",
                format!("must be between 1 and {MAX_COPY_STREAMS}"),
            ));
        }
        if self.load.swap_lock_wait.is_zero() || self.load.swap_lock_wait > self.load.lock_timeout {
            return Err(self.invalid(
                "-",
                "load.swap_lock_wait",
                "must be more than 0 and at most load.lock_timeout",
            ));
        }
        if !(0.0..=1.0).contains(&self.load.max_shrink) {
            return Err(self.invalid(
                "-",
                "load.max_shrink",
                "must be between 0 and 1 (0.5 = a refresh may drop at most half the rows)",
            ));
        }
        if self.watch.max_concurrent_tables == 0 {
            return Err(self.invalid("-", "watch.max_concurrent_tables", "must be at least 1"));
        }
        let mut targets = BTreeMap::new();
        for (name, t) in &self.tables {
            if let Err((key, message)) = self.schedule(name) {
                let scope = match t.watch_sets(&key) {
                    true => "watch",
                    false => "(from [watch])",
                };
                return Err(self.invalid(name, &format!("{scope}.{key}"), message));
            }
            if t.source().is_none() {
                return Err(self.invalid(
                    name,
                    "snowflake_table",
                    "no source: set snowflake_table (or query), or parquet",
                ));
            }
            for (key, object) in [
                ("snowflake_table", &t.snowflake_table),
                ("changes_from", &t.changes_from),
            ] {
                if let Some(Err(message)) = object.as_deref().map(snowflake_object_name) {
                    return Err(self.invalid(name, key, message));
                }
            }
            if t.target.is_empty() || t.target.len() > 48 {
                return Err(self.invalid(
                    name,
                    "target",
                    "must be 1 to 48 bytes (floe adds suffixes for staging)",
                ));
            }
            if t.target.contains(crate::pg::STAGING_MARK) {
                return Err(self.invalid(
                    name,
                    "target",
                    format!(
                        "must not contain `{}`: floe names its staging tables `<target>{}<run>` and drops those crashed runs left",
                        crate::pg::STAGING_MARK,
                        crate::pg::STAGING_MARK
                    ),
                ));
            }
            if let Some(other) = targets.insert(t.target.as_str(), name.as_str()) {
                return Err(self.invalid(
                    name,
                    "target",
                    format!("`{}` is also the target of table `{other}`", t.target),
                ));
            }
            if t.transform_sql().trim().is_empty() {
                return Err(self.invalid(name, "transform", "is empty"));
            }
            if let Err((col, e)) = t.column_types() {
                return Err(self.invalid(name, &format!("columns.{col}"), e.to_string()));
            }
            for (i, ix) in t.indexes.iter().enumerate() {
                if ix.columns.is_empty() {
                    return Err(self.invalid(name, &format!("indexes[{i}].columns"), "is empty"));
                }
                if !INDEX_METHODS.contains(&ix.method.as_str()) {
                    return Err(self.invalid(
                        name,
                        &format!("indexes[{i}].method"),
                        format!("`{}` is not one of {}", ix.method, INDEX_METHODS.join(", ")),
                    ));
                }
            }
            let mut names = BTreeMap::new();
            names.insert(t.pkey_name(), "the primary key".to_string());
            for (i, index_name) in t.index_names().into_iter().enumerate() {
                if let Some(other) = names.insert(index_name.clone(), format!("indexes[{i}]")) {
                    return Err(self.invalid(
                        name,
                        &format!("indexes[{i}]"),
                        format!(
                            "its name `{index_name}` is also {other}'s: an index is listed twice"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Finds a table by config name, Postgres table name or Snowflake table name (any case).
    pub fn find_table(&self, name: &str) -> Option<(&str, &TableConfig)> {
        self.tables
            .iter()
            .find(|(k, t)| {
                k.as_str() == name
                    || t.target == name
                    || t.snowflake_table
                        .as_deref()
                        .is_some_and(|s| s.eq_ignore_ascii_case(name))
            })
            .map(|(k, t)| (k.as_str(), t))
    }
}

#[cfg(test)]
mod tests;
