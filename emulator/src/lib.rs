//! A Snowflake wire-protocol emulator: serves the parquet files of a
//! directory (one table per file, named as the Snowflake table) over the
//! connector REST protocol, with results encoded as Snowflake encodes them.
//!
//! It exists because Snowflake cannot be reached from where floe is built and
//! demonstrated: it is floe's demo source, a local development target and the
//! counterpart of the Snowflake client's tests. What it implements:
//!
//! - `POST /session/v1/login-request` with password authentication;
//! - `POST /queries/v1/query-request`: SQL answered by DataFusion over the
//!   tables (as written: unquoted names are not folded, so write them as
//!   Snowflake reports them, upper case); the first chunk inline as base64
//!   Arrow IPC, the rest as gzip'd IPC streams behind `chunks[].url`;
//! - `GET /chunks/...`: refuses requests without the result's `chunkHeaders`
//!   (as S3 does without the SSE-C key);
//! - `POST /session?delete=true` (logout).
//!
//! Errors use Snowflake's envelope and codes (`390100` bad login, `390112`
//! expired/unknown session, `002003` object does not exist, `001003` SQL
//! compilation error).
//!
//! Results are kept in memory (gzip'd) until the session logs out: this is a
//! development server, not a warehouse.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::StreamWriter;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::prelude::ParquetReadOptions;
use futures::StreamExt;
use schemas::snowflake::SnowflakeType;
use schemas::snowflake_arrow::{encode_batch, RowType};
use serde_json::{json, Value};

/// The session time zone the emulator reports (the grid's service territory).
pub const TIME_ZONE: &str = schemas::snowflake::DEFAULT_SESSION_TIME_ZONE;
const SSE_KEY_HEADER: &str = "x-amz-server-side-encryption-customer-key";
const SSE_ALGORITHM_HEADER: &str = "x-amz-server-side-encryption-customer-algorithm";

/// How to run the emulator.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Directory of `<TABLE>.parquet` files.
    pub data_dir: PathBuf,
    /// Port on 127.0.0.1 (0 = any free port).
    pub port: u16,
    /// Rows per result chunk.
    pub chunk_rows: usize,
    /// Accepted (user, password) pairs; user names compare case-insensitively, as Snowflake's do.
    pub users: Vec<(String, String)>,
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
}

/// A running emulator; stops when dropped.
#[derive(Debug)]
pub struct Emulator {
    addr: SocketAddr,
    tables: Vec<String>,
    task: tokio::task::JoinHandle<()>,
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
            users: config.users,
            base_url: format!("http://{addr}"),
            sessions: Mutex::new(HashMap::new()),
            results: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(1),
        });
        let app = Router::new()
            .route("/session/v1/login-request", post(login))
            .route("/queries/v1/query-request", post(query))
            .route("/chunks/{query_id}/{index}", get(chunk))
            .route("/session", post(logout))
            .with_state(state);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("emulator stopped: {e}");
            }
        });
        Ok(Emulator { addr, tables, task })
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

    /// Serves until the process is stopped.
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.task.abort();
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

struct StoredChunk {
    gzip: Bytes,
    key: String,
}

struct AppState {
    ctx: SessionContext,
    chunk_rows: usize,
    users: Vec<(String, String)>,
    base_url: String,
    /// Session token → the query ids it produced.
    sessions: Mutex<HashMap<String, Vec<String>>>,
    /// Query id → its downloadable chunks.
    results: Mutex<HashMap<String, Vec<StoredChunk>>>,
    counter: AtomicU64,
}

impl AppState {
    /// A hard-to-guess id: counter and time through SplitMix64, as hex.
    fn new_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
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
}

/// Snowflake's response envelope for a failure.
fn failure(code: &str, message: &str, data: Value) -> Json<Value> {
    Json(json!({ "data": data, "code": code, "message": message, "success": false }))
}

fn success(data: Value) -> Json<Value> {
    Json(json!({ "data": data, "code": null, "message": null, "success": true }))
}

fn parameters() -> Value {
    json!([
        { "name": "TIMEZONE", "value": TIME_ZONE },
        { "name": "CLIENT_PREFETCH_THREADS", "value": 4 },
        { "name": "GEOGRAPHY_OUTPUT_FORMAT", "value": "GeoJSON" },
        { "name": "CLIENT_RESULT_CHUNK_SIZE", "value": 160 }
    ])
}

async fn login(State(state): State<Arc<AppState>>, Json(body): Json<Value>) -> Json<Value> {
    let data = &body["data"];
    let user = data["LOGIN_NAME"].as_str().unwrap_or("");
    let authenticator = data["AUTHENTICATOR"]
        .as_str()
        .unwrap_or("SNOWFLAKE")
        .to_ascii_uppercase();
    if authenticator != "SNOWFLAKE" {
        return failure(
            "390100",
            &format!("Authenticator {authenticator} is not supported by this emulator; use password authentication."),
            json!({ "nextAction": "RETRY_LOGIN" }),
        );
    }
    let password = data["PASSWORD"].as_str().unwrap_or("");
    let ok = state
        .users
        .iter()
        .any(|(u, p)| u.eq_ignore_ascii_case(user) && p == password);
    if !ok {
        return failure(
            "390100",
            "Incorrect username or password was specified.",
            json!({ "nextAction": "RETRY_LOGIN", "authnMethod": "PASSWORD" }),
        );
    }
    let token = state.new_id();
    if let Ok(mut sessions) = state.sessions.lock() {
        sessions.insert(token.clone(), Vec::new());
    }
    success(json!({
        "token": token,
        "validityInSeconds": 3600,
        "masterToken": state.new_id(),
        "masterValidityInSeconds": 14400,
        "sessionId": state.counter.fetch_add(1, Ordering::Relaxed),
        "parameters": parameters(),
        "sessionInfo": { "databaseName": "GRID", "schemaName": "PUBLIC", "warehouseName": "EMULATOR_WH", "roleName": "FLOE" },
        "serverVersion": "floe-emulator",
        "displayUserName": user.to_uppercase(),
        "firstLogin": false,
        "healthCheckInterval": 45
    }))
}

/// The session token from `Authorization: Snowflake Token="..."`, if it is live.
fn session_token(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let token = value
        .strip_prefix("Snowflake Token=\"")?
        .strip_suffix('"')?;
    let sessions = state.sessions.lock().ok()?;
    sessions.contains_key(token).then(|| token.to_string())
}

fn session_gone() -> Json<Value> {
    failure(
        "390112",
        "Your session has expired. Please login again.",
        json!({ "errorCode": "390112" }),
    )
}

async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Json<Value> {
    let Some(token) = session_token(&state, &headers) else {
        return session_gone();
    };
    let queries = state
        .sessions
        .lock()
        .ok()
        .and_then(|mut s| s.remove(&token))
        .unwrap_or_default();
    if let Ok(mut results) = state.results.lock() {
        for q in queries {
            results.remove(&q);
        }
    }
    success(Value::Null)
}

/// A SQL error in Snowflake's shape: code, SQL state, message, query id.
fn sql_error(query_id: &str, message: &str) -> Json<Value> {
    let (code, state) = if message.contains("not found") || message.contains("does not exist") {
        ("002003", "42S02")
    } else {
        ("001003", "42000")
    };
    failure(
        code,
        &format!("SQL compilation error:\n{message}"),
        json!({ "errorCode": code, "sqlState": state, "queryId": query_id, "internalError": false, "type": "COMPILATION" }),
    )
}

async fn query(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    let Some(token) = session_token(&state, &headers) else {
        return session_gone();
    };
    let query_id = state.new_id();
    let sql = body["sqlText"]
        .as_str()
        .unwrap_or("")
        .trim()
        .trim_end_matches(';');
    if !sql.to_ascii_uppercase().starts_with("SELECT")
        && !sql.to_ascii_uppercase().starts_with("WITH")
    {
        return sql_error(&query_id, "this emulator answers SELECT statements only");
    }
    let df = match state.ctx.sql(sql).await {
        Ok(df) => df,
        Err(e) => return sql_error(&query_id, &e.to_string()),
    };
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let rowtype: Result<Vec<RowType>, String> = schema
        .fields()
        .iter()
        .map(|f| {
            SnowflakeType::of_field(f)
                .map(|t| RowType::for_column(f.name(), t, f.is_nullable()))
                .ok_or_else(|| format!("column {} has no Snowflake type", f.name()))
        })
        .collect();
    let rowtype = match rowtype {
        Ok(r) => r,
        Err(e) => return sql_error(&query_id, &e),
    };
    match build_chunks(&state, df, &schema, &rowtype).await {
        Ok((first, chunks, total)) => {
            let key = base64::engine::general_purpose::STANDARD.encode(query_id.as_bytes());
            let chunk_meta: Vec<Value> = chunks
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    json!({
                        "url": format!("{}/chunks/{query_id}/{i}?X-Amz-Signature={}", state.base_url, &key[..8]),
                        "rowCount": c.rows,
                        "uncompressedSize": c.uncompressed,
                        "compressedSize": c.gzip.len(),
                    })
                })
                .collect();
            let stored = chunks
                .into_iter()
                .map(|c| StoredChunk {
                    gzip: c.gzip,
                    key: key.clone(),
                })
                .collect();
            if let (Ok(mut results), Ok(mut sessions)) =
                (state.results.lock(), state.sessions.lock())
            {
                results.insert(query_id.clone(), stored);
                sessions.entry(token).or_default().push(query_id.clone());
            }
            success(json!({
                "parameters": parameters(),
                "rowtype": rowtype,
                "rowsetBase64": base64::engine::general_purpose::STANDARD.encode(&first),
                "total": total,
                "returned": total,
                "queryId": query_id,
                "queryResultFormat": "arrow",
                "chunks": chunk_meta,
                "chunkHeaders": {
                    SSE_ALGORITHM_HEADER: "AES256",
                    SSE_KEY_HEADER: key,
                },
                "qrmk": key,
                "statementTypeId": 4096,
                "sqlState": "00000",
                "finalDatabaseName": "GRID",
                "finalSchemaName": "PUBLIC",
                "finalWarehouseName": "EMULATOR_WH",
                "finalRoleName": "FLOE",
                "numberOfBinds": 0,
                "version": 1
            }))
        }
        Err(e) => sql_error(&query_id, &e),
    }
}

struct BuiltChunk {
    gzip: Bytes,
    rows: usize,
    uncompressed: usize,
}

/// Runs the query and cuts its result into `chunk_rows`-row chunks: the
/// first as a plain IPC stream (sent inline), the rest gzip'd.
async fn build_chunks(
    state: &AppState,
    df: datafusion::dataframe::DataFrame,
    schema: &SchemaRef,
    rowtype: &[RowType],
) -> Result<(Vec<u8>, Vec<BuiltChunk>, usize), String> {
    let mut stream = df.execute_stream().await.map_err(|e| e.to_string())?;
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0;
    let mut first: Option<Vec<u8>> = None;
    let mut chunks = Vec::new();
    let mut total = 0;
    let mut emit =
        |batches: &mut Vec<RecordBatch>, first: &mut Option<Vec<u8>>| -> Result<(), String> {
            let merged = arrow::compute::concat_batches(schema, batches.iter())
                .map_err(|e| e.to_string())?;
            batches.clear();
            let ipc = ipc_stream(&encode_batch(&merged, rowtype).map_err(|e| e.to_string())?)?;
            if first.is_none() {
                *first = Some(ipc);
            } else {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&ipc).map_err(|e| e.to_string())?;
                let gzip = gz.finish().map_err(|e| e.to_string())?;
                chunks.push(BuiltChunk {
                    gzip: Bytes::from(gzip),
                    rows: merged.num_rows(),
                    uncompressed: ipc.len(),
                });
            }
            Ok(())
        };
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| e.to_string())?;
        total += batch.num_rows();
        let mut offset = 0;
        while offset < batch.num_rows() {
            let take = (state.chunk_rows - pending_rows).min(batch.num_rows() - offset);
            pending.push(batch.slice(offset, take));
            pending_rows += take;
            offset += take;
            if pending_rows == state.chunk_rows {
                emit(&mut pending, &mut first)?;
                pending_rows = 0;
            }
        }
    }
    if pending_rows > 0 || first.is_none() {
        emit(&mut pending, &mut first)?;
    }
    Ok((first.unwrap_or_default(), chunks, total))
}

fn ipc_stream(batch: &RecordBatch) -> Result<Vec<u8>, String> {
    let mut w = StreamWriter::try_new(Vec::new(), &batch.schema()).map_err(|e| e.to_string())?;
    w.write(batch).map_err(|e| e.to_string())?;
    w.into_inner().map_err(|e| e.to_string())
}

async fn chunk(
    State(state): State<Arc<AppState>>,
    UrlPath((query_id, index)): UrlPath<(String, usize)>,
    headers: HeaderMap,
) -> Response {
    let found = state.results.lock().ok().and_then(|r| {
        r.get(&query_id)
            .and_then(|chunks| chunks.get(index))
            .map(|c| (c.gzip.clone(), c.key.clone()))
    });
    let Some((gzip, key)) = found else {
        return (StatusCode::NOT_FOUND, "NoSuchKey").into_response();
    };
    let given = headers.get(SSE_KEY_HEADER).and_then(|v| v.to_str().ok());
    let algorithm = headers
        .get(SSE_ALGORITHM_HEADER)
        .and_then(|v| v.to_str().ok());
    if given != Some(key.as_str()) || algorithm != Some("AES256") {
        return (
            StatusCode::BAD_REQUEST,
            "InvalidRequest: the object was stored using a form of Server Side Encryption; the correct parameters must be provided",
        )
            .into_response();
    }
    if headers.contains_key("authorization") {
        return (
            StatusCode::BAD_REQUEST,
            "InvalidArgument: only one auth mechanism allowed",
        )
            .into_response();
    }
    (
        StatusCode::OK,
        [("content-type", "binary/octet-stream")],
        gzip,
    )
        .into_response()
}
