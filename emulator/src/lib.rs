//! A Snowflake wire-protocol emulator: serves the parquet files of a
//! directory (one table per file, named as the Snowflake table) over the
//! connector REST protocol, with results encoded as Snowflake encodes them.
//!
//! It exists because Snowflake cannot be reached from where floe is built and
//! demonstrated: it is floe's demo source, a local development target and the
//! counterpart of the Snowflake client's tests; the official Python
//! connector is the judge of its fidelity. What it implements:
//!
//! - `POST /session/v1/login-request`: password, key-pair JWT
//!   (`SNOWFLAKE_JWT`, RS256, checked against the user's public key) and
//!   `OAUTH` logins; session tokens that expire (`390112`) and are renewed by
//!   `POST /session/token-request` with the master token;
//! - `POST /queries/v1/query-request`: SQL answered by DataFusion over the
//!   tables (as written: unquoted names are not folded, so write them as
//!   Snowflake reports them, upper case); the first chunk inline as base64
//!   Arrow IPC, the rest as gzip'd IPC streams behind `chunks[].url`;
//!   `ALTER SESSION SET GEOGRAPHY_OUTPUT_FORMAT` (GeoJSON, WKT, EWKT, WKB, EWKB);
//!   long-running queries answer `333333` and are polled at
//!   `GET /queries/<id>/result`; `POST /queries/v1/abort-request` cancels;
//! - DML (`INSERT … VALUES|SELECT`, `UPDATE`, `DELETE`, `TRUNCATE TABLE`,
//!   autocommitted, answered as Snowflake answers them), `ALTER TABLE … SET
//!   CHANGE_TRACKING | DATA_RETENTION_TIME_IN_DAYS`, table versions with
//!   time travel (`AT`/`BEFORE`) and change data (`CHANGES … AT … END`),
//!   `CURRENT_TIMESTAMP()`, `SYSTEM$LAST_CHANGE_COMMIT_TIME` (see
//!   `history`, `tables`, `dml`, `travel`);
//! - `GET /chunks/...`: refuses requests without the result's `chunkHeaders`
//!   (as S3 does without the SSE-C key);
//! - `POST /session?delete=true` (logout);
//! - change traffic for demos and benchmarks: [`Emulator::mutate`];
//! - fault injection and statistics for tests: see [`faults`].
//!
//! [`generate`] writes the data it serves: the grid tables as deterministic
//! parquet (also what the demo, the benches and the tests load).
//!
//! Errors use Snowflake's envelope and codes (`390100` bad login, `390144`
//! bad JWT, `390303` bad OAuth token, `390112` expired session, `002003`
//! object does not exist, `001003` SQL compilation error).
//!
//! Results are kept in memory (gzip'd) until the session logs out: this is a
//! development server, not a warehouse.

mod auth;
mod dml;
pub mod faults;
pub mod generate;
mod history;
mod mutate;
mod query;
mod tables;
mod travel;
mod views;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::prelude::ParquetReadOptions;
use schemas::snowflake::GeographyFormat;
use serde_json::{json, Value};

pub use auth::{User, SESSION_VALIDITY};
pub use faults::{Faults, Stats};

/// The session time zone the emulator reports (the grid's service territory).
pub const TIME_ZONE: &str = schemas::snowflake::DEFAULT_SESSION_TIME_ZONE;

/// How to run the emulator.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Directory of `<TABLE>.parquet` files.
    pub data_dir: PathBuf,
    /// Port on 127.0.0.1 (0 = any free port).
    pub port: u16,
    /// Rows per result chunk.
    pub chunk_rows: usize,
    /// The users that may log in.
    pub users: Vec<User>,
    /// How long a session token lives before it must be renewed.
    pub session_validity: Duration,
    /// Faults armed from the start.
    pub faults: Faults,
    /// Added to every chunk download, as cloud storage's time to first
    /// byte (tens of milliseconds), so parallel downloads can be measured.
    pub chunk_latency: Duration,
}

impl EmulatorConfig {
    /// Serves `data_dir` to one password user, with defaults for the rest.
    pub fn new(data_dir: impl Into<PathBuf>, user: &str, password: &str) -> EmulatorConfig {
        EmulatorConfig {
            data_dir: data_dir.into(),
            port: 0,
            chunk_rows: 10_000,
            users: vec![User {
                name: user.to_string(),
                password: Some(password.to_string()),
                ..User::default()
            }],
            session_validity: SESSION_VALIDITY,
            faults: Faults::default(),
            chunk_latency: Duration::ZERO,
        }
    }
}

/// Errors starting the emulator.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("cannot read data directory {path}: {message}")]
    Data { path: PathBuf, message: String },
    #[error("cannot listen on 127.0.0.1:{port}: {source}")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("user {user}: {message}")]
    User { user: String, message: String },
    #[error("--mutate {table}: {message}")]
    Mutate { table: String, message: String },
}

/// A running emulator; stops when dropped.
#[derive(Debug)]
pub struct Emulator {
    addr: SocketAddr,
    tables: Vec<String>,
    state: Arc<AppState>,
    task: tokio::task::JoinHandle<()>,
    /// Change traffic started by [`Emulator::mutate`], stopped with the emulator.
    mutators: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Emulator {
    /// Registers the tables and starts serving on loopback.
    pub async fn start(config: EmulatorConfig) -> Result<Emulator, EmulatorError> {
        let session = SessionConfig::new()
            .set_bool("datafusion.sql_parser.enable_ident_normalization", false)
            .set_bool("datafusion.execution.parquet.skip_metadata", false)
            .set_bool(
                "datafusion.execution.parquet.schema_force_view_types",
                false,
            )
            .with_target_partitions(1);
        let ctx = SessionContext::new_with_config(session);
        let tables = register_tables(&ctx, &config.data_dir).await?;
        let keys = config
            .users
            .iter()
            .filter_map(|u| {
                u.rsa_public_key.as_ref().map(|pem| {
                    auth::PublicKey::from_pem(pem)
                        .map(|k| (u.name.clone(), k))
                        .map_err(|message| EmulatorError::User {
                            user: u.name.clone(),
                            message,
                        })
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port))
            .await
            .map_err(|source| EmulatorError::Bind {
                port: config.port,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| EmulatorError::Bind {
                port: config.port,
                source,
            })?;
        let state = Arc::new(AppState {
            ctx,
            chunk_rows: config.chunk_rows.max(1),
            chunk_latency: config.chunk_latency,
            users: config.users,
            keys,
            session_validity: config.session_validity,
            base_url: format!("http://{addr}"),
            sessions: Mutex::new(HashMap::new()),
            results: Mutex::new(HashMap::new()),
            data_dir: config.data_dir.clone(),
            result_cache: Mutex::new(ResultCache::default()),
            faults: Mutex::new(config.faults),
            stats: Mutex::new(Stats::default()),
            counter: AtomicU64::new(1),
            histories: Mutex::new(HashMap::new()),
            views: Mutex::new(HashMap::new()),
            created_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0),
            generation: AtomicU64::new(0),
            writer: tokio::sync::Mutex::new(()),
        });
        let app = Router::new()
            .route("/session/v1/login-request", post(auth::login))
            .route("/session/token-request", post(auth::token_request))
            .route("/session/heartbeat", post(heartbeat))
            .route("/session", post(auth::logout))
            .route("/queries/v1/query-request", post(query::query))
            .route("/queries/v1/abort-request", post(query::abort))
            .route("/queries/{query_id}/result", get(query::result))
            .route("/chunks/{query_id}/{index}", get(query::chunk))
            .route("/telemetry/send", post(heartbeat))
            .route("/floe/faults", post(set_faults).get(get_faults))
            .route("/floe/stats", get(get_stats))
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("emulator stopped: {e}");
            }
        });
        Ok(Emulator {
            addr,
            tables,
            state,
            task,
            mutators: Mutex::new(Vec::new()),
        })
    }

    /// Starts change traffic on a grid table: `rows_per_sec` changed rows a
    /// second (≈70% updates with geometry, 20% inserts, 10% deletes), one
    /// commit every 100 ms, until the emulator stops.
    pub fn mutate(&self, table: &str, rows_per_sec: u32) -> Result<(), EmulatorError> {
        let dataset = schemas::datasets::find(table)
            .filter(|d| self.tables.iter().any(|t| t == d.snowflake_table))
            .ok_or_else(|| EmulatorError::Mutate {
                table: table.to_string(),
                message: format!(
                    "not a grid table this emulator serves ({})",
                    self.tables.join(", ")
                ),
            })?;
        let task = tokio::spawn(mutate::run(Arc::clone(&self.state), dataset, rows_per_sec));
        locked(&self.mutators, |m| m.push(task));
        Ok(())
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The tables served, as registered.
    pub fn tables(&self) -> &[String] {
        &self.tables
    }

    /// Arms faults (as `POST /floe/faults` does).
    pub fn inject(&self, apply: impl FnOnce(&mut Faults)) {
        self.state.with_faults(apply);
    }

    /// What the emulator has seen so far.
    pub fn stats(&self) -> Stats {
        self.state.stats_now()
    }

    /// Serves until the process is stopped.
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.task.abort();
        locked(&self.mutators, |m| m.iter().for_each(|t| t.abort()));
    }
}

async fn register_tables(ctx: &SessionContext, dir: &Path) -> Result<Vec<String>, EmulatorError> {
    let err = |message: String| EmulatorError::Data {
        path: dir.to_path_buf(),
        message,
    };
    let mut tables = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| err(e.to_string()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("parquet") {
            continue;
        }
        let Some(name) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_uppercase)
        else {
            continue;
        };
        // A bare reference: a plain string would be parsed and folded to lower case.
        let table = datafusion::common::TableReference::bare(name.clone());
        ctx.register_parquet(
            table,
            &path.to_string_lossy(),
            ParquetReadOptions::default(),
        )
        .await
        .map_err(|e| err(format!("{}: {e}", path.display())))?;
        tables.push(name);
    }
    if tables.is_empty() {
        return Err(err("no .parquet files".into()));
    }
    tables.sort();
    Ok(tables)
}

pub(crate) struct StoredChunk {
    pub(crate) gzip: Bytes,
    /// The inflated size announced for it.
    pub(crate) uncompressed: usize,
}

/// A query's result as the session can fetch it.
pub(crate) struct StoredQuery {
    pub(crate) chunks: Vec<StoredChunk>,
    /// The SSE-C key the chunk downloads must present.
    pub(crate) key: String,
    /// The success `data`, as sent when the query is done.
    pub(crate) answer: Value,
    /// Before this the query is "still running" (`333333`).
    pub(crate) ready_at: Instant,
    /// The `requestId` it was submitted with, which `abort-request` names.
    pub(crate) request_id: String,
    pub(crate) aborted: bool,
}

pub(crate) struct Session {
    pub(crate) master: String,
    pub(crate) expires: Instant,
    pub(crate) geography: GeographyFormat,
    /// `USE_CACHED_RESULT` (on by default, as in Snowflake).
    pub(crate) use_cached_result: bool,
    pub(crate) queries: Vec<String>,
}

/// Bytes of persisted results kept for reuse (oldest dropped first).
const RESULT_CACHE_BYTES: usize = 1 << 30;

/// Snowflake's persisted query results: an identical query over unchanged
/// data is answered from the stored result without running again.
#[derive(Default)]
pub(crate) struct ResultCache {
    entries: std::collections::VecDeque<(query::CacheKey, Arc<query::Built>)>,
}

impl ResultCache {
    pub(crate) fn get(&self, key: &query::CacheKey) -> Option<Arc<query::Built>> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, b)| Arc::clone(b))
    }

    pub(crate) fn put(&mut self, key: query::CacheKey, built: Arc<query::Built>) {
        self.entries.retain(|(k, _)| *k != key);
        self.entries.push_back((key, built));
        while self.entries.iter().map(|(_, b)| b.bytes()).sum::<usize>() > RESULT_CACHE_BYTES
            && self.entries.len() > 1
        {
            self.entries.pop_front();
        }
    }
}

pub(crate) struct AppState {
    ctx: SessionContext,
    chunk_rows: usize,
    chunk_latency: Duration,
    users: Vec<User>,
    keys: Vec<(String, auth::PublicKey)>,
    session_validity: Duration,
    base_url: String,
    /// Session token → session.
    sessions: Mutex<HashMap<String, Session>>,
    /// Query id → its result.
    results: Mutex<HashMap<String, StoredQuery>>,
    /// Where the tables' files are (a cached result is valid while they are unchanged).
    pub(crate) data_dir: PathBuf,
    result_cache: Mutex<ResultCache>,
    faults: Mutex<Faults>,
    stats: Mutex<Stats>,
    counter: AtomicU64,
    /// Tables that statements have changed (or whose history was asked for).
    histories: Mutex<HashMap<String, Arc<Mutex<history::History>>>>,
    /// Views by name (`CREATE VIEW`).
    views: Mutex<HashMap<String, views::View>>,
    /// When the tables were created: the emulator's start, in ns since the epoch.
    created_ns: i64,
    /// Bumped by every commit: persisted results from before it are stale.
    generation: AtomicU64,
    /// Held by each changing statement from reading its rows to its commit,
    /// as Snowflake serializes DML on a table (no lost updates).
    writer: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// Runs `f` on the locked value; a poisoned lock (a panicked handler) is recovered,
/// since every critical section leaves the maps consistent.
fn locked<T, R>(m: &Mutex<T>, f: impl FnOnce(&mut T) -> R) -> R {
    let mut guard = m.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut guard)
}

impl AppState {
    pub(crate) fn with_sessions<R>(&self, f: impl FnOnce(&mut HashMap<String, Session>) -> R) -> R {
        locked(&self.sessions, f)
    }

    pub(crate) fn with_results<R>(
        &self,
        f: impl FnOnce(&mut HashMap<String, StoredQuery>) -> R,
    ) -> R {
        locked(&self.results, f)
    }

    pub(crate) fn with_result_cache<R>(&self, f: impl FnOnce(&mut ResultCache) -> R) -> R {
        locked(&self.result_cache, f)
    }

    pub(crate) fn with_faults<R>(&self, f: impl FnOnce(&mut Faults) -> R) -> R {
        locked(&self.faults, f)
    }

    pub(crate) fn with_stats<R>(&self, f: impl FnOnce(&mut Stats) -> R) -> R {
        locked(&self.stats, f)
    }

    pub(crate) fn with_histories<R>(
        &self,
        f: impl FnOnce(&mut HashMap<String, Arc<Mutex<history::History>>>) -> R,
    ) -> R {
        locked(&self.histories, f)
    }

    pub(crate) fn with_views<R>(
        &self,
        f: impl FnOnce(&mut HashMap<String, views::View>) -> R,
    ) -> R {
        locked(&self.views, f)
    }

    /// Marks every persisted result stale (a table changed).
    pub(crate) fn bump_generation(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    fn stats_now(&self) -> Stats {
        let live = self.with_sessions(|s| s.len());
        let mut stats = self.with_stats(|s| s.clone());
        stats.live_sessions = live;
        stats
    }

    pub(crate) fn next_number(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// A hard-to-guess id: counter and time through SplitMix64, as hex.
    pub(crate) fn new_id(&self) -> String {
        let n = self.next_number();
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mix = |mut z: u64| {
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        format!("{:016x}{:016x}", mix(n ^ t), mix(t.rotate_left(17) ^ n))
    }

    /// A query id shaped like Snowflake's (`01b8c3a2-0000-...`).
    pub(crate) fn new_query_id(&self) -> String {
        let h = self.new_id();
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

/// Snowflake's response envelope for a failure.
pub(crate) fn failure(code: &str, message: &str, data: Value) -> Json<Value> {
    Json(json!({ "data": data, "code": code, "message": message, "success": false }))
}

pub(crate) fn success(data: Value) -> Json<Value> {
    Json(json!({ "data": data, "code": null, "message": null, "success": true }))
}

/// Heartbeats and telemetry are accepted and ignored.
async fn heartbeat() -> Json<Value> {
    success(Value::Null)
}

async fn set_faults(State(state): State<Arc<AppState>>, Json(body): Json<Value>) -> Response {
    match state.with_faults(|f| f.set_json(&body)) {
        Ok(()) => Json(state.with_faults(|f| json!(f))).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

async fn get_faults(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(state.with_faults(|f| json!(f)))
}

async fn get_stats(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!(state.stats_now()))
}
