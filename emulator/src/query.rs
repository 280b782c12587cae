//! Queries: SQL through DataFusion, results cut into Snowflake-encoded
//! chunks, long-running answers to poll, aborts, and chunk downloads.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, BinaryBuilder, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::StreamWriter;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use futures::StreamExt;
use geozero::{CoordDimensions, ToWkb, ToWkt};
use schemas::snowflake::{GeographyFormat, SnowflakeType};
use schemas::snowflake_arrow::{encode_batch, RowType};
use serde_json::{json, Value};

use crate::auth::{bearer, parameters, session_expired};
use crate::dml::Changed;
use crate::faults::Faults;
use crate::{failure, success, AppState, StoredChunk, StoredQuery};

const SSE_KEY_HEADER: &str = "x-amz-server-side-encryption-customer-key";
const SSE_ALGORITHM_HEADER: &str = "x-amz-server-side-encryption-customer-algorithm";

/// The live session behind the request's token, or Snowflake's "expired" answer.
fn live_session(state: &AppState, headers: &HeaderMap) -> Result<String, Json<Value>> {
    let token = bearer(headers).ok_or_else(session_expired)?;
    let expire_all = state.with_faults(|f| std::mem::take(&mut f.expire_session));
    let now = Instant::now();
    state
        .with_sessions(|sessions| {
            if expire_all {
                for s in sessions.values_mut() {
                    s.expires = now;
                }
            }
            sessions
                .get(token)
                .filter(|s| s.expires > now)
                .map(|_| token.to_string())
        })
        .ok_or_else(session_expired)
}

/// A SQL error in Snowflake's shape: code, SQL state, message, query id.
fn sql_error(query_id: &str, code: &str, sql_state: &str, message: &str) -> Json<Value> {
    failure(
        code,
        message,
        json!({ "errorCode": code, "sqlState": sql_state, "queryId": query_id, "internalError": false, "type": "COMPILATION" }),
    )
}

fn compilation_error(query_id: &str, message: &str) -> Json<Value> {
    let (code, sql_state) = if message.contains("not found") || message.contains("does not exist") {
        ("002003", "42S02")
    } else {
        ("001003", "42000")
    };
    sql_error(
        query_id,
        code,
        sql_state,
        &format!("SQL compilation error:\n{message}"),
    )
}

/// The error an injected `query-error` fault answers with.
fn injected_error(query_id: &str, code: &str) -> Json<Value> {
    let (sql_state, message) = match code {
        "000606" => ("57P03", "No active warehouse selected in the current session.  Select an active warehouse with the 'use warehouse' command."),
        "003001" => ("42501", "SQL access control error:\nInsufficient privileges to operate on table 'GRID_TOPOLOGY'."),
        "002003" => ("42S02", "SQL compilation error:\nObject 'GRID_TOPOLOGY' does not exist or not authorized."),
        "000630" => ("57014", "Statement reached its statement or warehouse timeout of 60 second(s) and was canceled."),
        _ => ("XX000", "Injected error."),
    };
    sql_error(query_id, code, sql_state, message)
}

/// `ALTER SESSION SET GEOGRAPHY_OUTPUT_FORMAT = 'WKB'` → the format.
/// A session parameter the emulator honours.
enum SessionSetting {
    Geography(Result<GeographyFormat, String>),
    UseCachedResult(Result<bool, String>),
}

/// `ALTER SESSION SET <name> = <value>` for the parameters the emulator knows.
fn session_setting(sql: &str) -> Option<SessionSetting> {
    let words: Vec<&str> = sql
        .split(|c: char| c.is_whitespace() || c == '=')
        .filter(|w| !w.is_empty())
        .collect();
    match words.as_slice() {
        [alter, session, set, name, value]
            if alter.eq_ignore_ascii_case("alter")
                && session.eq_ignore_ascii_case("session")
                && set.eq_ignore_ascii_case("set") =>
        {
            let value = value.trim_matches(|c| c == '\'' || c == '"');
            if name.eq_ignore_ascii_case("GEOGRAPHY_OUTPUT_FORMAT")
                || name.eq_ignore_ascii_case("GEOMETRY_OUTPUT_FORMAT")
            {
                Some(SessionSetting::Geography(value.parse()))
            } else if name.eq_ignore_ascii_case("USE_CACHED_RESULT") {
                Some(SessionSetting::UseCachedResult(
                    match value.to_ascii_uppercase().as_str() {
                        "TRUE" | "ON" | "1" => Ok(true),
                        "FALSE" | "OFF" | "0" => Ok(false),
                        _ => Err(format!(
                            "invalid value [{value}] for parameter 'USE_CACHED_RESULT'"
                        )),
                    },
                ))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// What makes a persisted result reusable: the same statement text, the
/// same geography rendering, and data files unchanged since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CacheKey {
    sql: String,
    geography: GeographyFormat,
    files: Vec<(std::path::PathBuf, u64, Option<std::time::SystemTime>)>,
    /// Commits since the start: a statement's commit makes older results stale.
    generation: u64,
}

fn cache_key(state: &AppState, sql: &str, geography: GeographyFormat) -> Option<CacheKey> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&state.data_dir).ok()? {
        let entry = entry.ok()?;
        let meta = entry.metadata().ok()?;
        files.push((entry.path(), meta.len(), meta.modified().ok()));
    }
    files.sort();
    Some(CacheKey {
        sql: sql.to_string(),
        geography,
        files,
        generation: state.generation(),
    })
}

/// Adds the fields every statement answer carries: SQL state, and the
/// session's database, schema, warehouse and role after the statement.
fn with_session_fields(mut data: Value) -> Value {
    if let Some(map) = data.as_object_mut() {
        for (k, v) in [
            ("sqlState", json!("00000")),
            ("finalDatabaseName", json!("GRID")),
            ("finalSchemaName", json!("PUBLIC")),
            ("finalWarehouseName", json!("EMULATOR_WH")),
            ("finalRoleName", json!("FLOE")),
            ("numberOfBinds", json!(0)),
            ("version", json!(1)),
        ] {
            map.insert(k.to_string(), v);
        }
    }
    data
}

/// A DDL-style success: one text column, as JSON (Snowflake sends these as JSON, not Arrow).
fn statement_done(query_id: &str, geography: GeographyFormat) -> Json<Value> {
    success(with_session_fields(json!({
        "parameters": parameters(geography),
        "rowtype": [{ "name": "status", "type": "text", "length": 16777216, "byteLength": 16777216, "precision": null, "scale": null, "nullable": true }],
        "rowset": [["Statement executed successfully."]],
        "total": 1,
        "returned": 1,
        "queryId": query_id,
        "queryResultFormat": "json",
        "statementTypeId": 0x4000,
    })))
}

/// A DML statement's answer, as Snowflake sends it: one JSON row of counts
/// (`number of rows inserted`, …), the statement type, and `stats`.
fn dml_done(
    query_id: &str,
    geography: GeographyFormat,
    columns: &[(&str, u64)],
    statement_type: u64,
) -> Json<Value> {
    let rowtype: Vec<Value> = columns
        .iter()
        .map(|(name, _)| json!({ "name": name, "type": "fixed", "precision": 19, "scale": 0, "nullable": false, "length": null, "byteLength": null }))
        .collect();
    let row: Vec<String> = columns.iter().map(|(_, n)| n.to_string()).collect();
    let count = |name: &str| {
        columns
            .iter()
            .filter(|(c, _)| *c == name)
            .map(|(_, n)| *n)
            .sum::<u64>()
    };
    success(with_session_fields(json!({
        "parameters": parameters(geography),
        "rowtype": rowtype,
        "rowset": [row],
        "total": 1,
        "returned": 1,
        "queryId": query_id,
        "queryResultFormat": "json",
        "statementTypeId": statement_type,
        "stats": {
            "numRowsInserted": count("number of rows inserted"),
            "numRowsUpdated": count("number of rows updated"),
            "numRowsDeleted": count("number of rows deleted"),
            "numDmlDuplicates": 0,
        },
    })))
}

/// A statement Snowflake answers from its cloud services layer without a
/// warehouse: a `SELECT` of change tokens and the clock, with no `FROM`.
fn is_metadata_only(sql: &str) -> bool {
    let upper = sql.trim().to_ascii_uppercase();
    upper.starts_with("SELECT")
        && !upper.contains(" FROM ")
        && (upper.contains("SYSTEM$LAST_CHANGE_COMMIT_TIME") || upper.contains("CURRENT_TIMESTAMP"))
}

pub(crate) async fn query(
    State(state): State<Arc<AppState>>,
    UrlQuery(params): UrlQuery,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    let token = match live_session(&state, &headers) {
        Ok(t) => t,
        Err(e) => return e,
    };
    let query_id = state.new_query_id();
    let request_id = params.request_id.unwrap_or_default();
    let sql = body["sqlText"]
        .as_str()
        .unwrap_or("")
        .trim()
        .trim_end_matches(';')
        .trim()
        .to_string();
    let metadata = is_metadata_only(&sql);
    state.with_stats(|s| {
        s.queries += 1;
        if metadata {
            s.metadata_queries += 1;
        }
    });
    if let Some(code) = state.with_faults(|f| f.query_error.take()) {
        return injected_error(&query_id, &code);
    }
    let (geography, use_cached_result) = state
        .with_sessions(|s| s.get(&token).map(|s| (s.geography, s.use_cached_result)))
        .unwrap_or((GeographyFormat::default(), true));
    match session_setting(&sql) {
        Some(SessionSetting::Geography(Ok(format))) => {
            state.with_sessions(|s| {
                if let Some(s) = s.get_mut(&token) {
                    s.geography = format;
                }
            });
            return statement_done(&query_id, format);
        }
        Some(SessionSetting::UseCachedResult(Ok(on))) => {
            state.with_sessions(|s| {
                if let Some(s) = s.get_mut(&token) {
                    s.use_cached_result = on;
                }
            });
            return statement_done(&query_id, geography);
        }
        Some(SessionSetting::Geography(Err(e)) | SessionSetting::UseCachedResult(Err(e))) => {
            return sql_error(&query_id, "001008", "22023", &e);
        }
        None => {}
    }
    let upper = sql.to_ascii_uppercase();
    // Transaction statements the connectors send (e.g. on closing a
    // connection used as a context manager); the emulator is read-only.
    if matches!(
        upper.as_str(),
        "COMMIT" | "ROLLBACK" | "BEGIN" | "BEGIN TRANSACTION"
    ) {
        return statement_done(&query_id, geography);
    }
    if let Some(created) = crate::views::create(&state, &sql).await {
        return match created {
            Ok(_) => statement_done(&query_id, geography),
            Err(e) => sql_error(&query_id, e.code, e.sql_state, &e.message),
        };
    }
    match crate::dml::execute(&state, &sql).await {
        Some(Ok(Changed::Done)) => return statement_done(&query_id, geography),
        Some(Ok(Changed::Rows {
            columns,
            statement_type,
        })) => return dml_done(&query_id, geography, &columns, statement_type),
        Some(Err(e)) => return sql_error(&query_id, e.code, e.sql_state, &e.message),
        None => {}
    }
    if !upper.starts_with("SELECT") && !upper.starts_with("WITH") {
        return compilation_error(
            &query_id,
            "this emulator answers SELECT, DML (INSERT, UPDATE, DELETE, TRUNCATE), CREATE [OR REPLACE] VIEW … AS SELECT <columns> FROM <table>, ALTER TABLE|VIEW … SET CHANGE_TRACKING, ALTER TABLE … SET DATA_RETENTION_TIME_IN_DAYS and ALTER SESSION SET GEOGRAPHY_OUTPUT_FORMAT | USE_CACHED_RESULT",
        );
    }
    // Versioned references (AT, BEFORE, CHANGES) become tables registered
    // for this query; their answers depend on the time, so none is cached.
    // Dropped (with what it registered) however the query ends.
    let mut scratch = crate::tables::Scratch {
        state: &state,
        names: Vec::new(),
    };
    let rewritten = match crate::travel::rewrite_select(&state, &sql, &mut scratch.names).await {
        Ok(r) => r,
        Err(e) => return sql_error(&query_id, e.code, e.sql_state, &e.message),
    };
    let cache_key = match &rewritten {
        None => cache_key(&state, &sql, geography),
        Some(_) => None,
    };
    let sql = rewritten.unwrap_or(sql);
    let cached = match (&cache_key, use_cached_result) {
        (Some(k), true) => state.with_result_cache(|c| c.get(k)),
        _ => None,
    };
    let built = match cached {
        Some(built) => {
            state.with_stats(|s| s.cached_results += 1);
            built
        }
        None => {
            let built = match run_query(&state, &sql, geography).await {
                Ok(b) => Arc::new(b),
                Err(e) => return compilation_error(&query_id, &e),
            };
            // Stored whatever the session's setting, as Snowflake persists every result.
            if let Some(k) = cache_key {
                state.with_result_cache(|c| c.put(k, Arc::clone(&built)));
            }
            built
        }
    };
    let key = base64::engine::general_purpose::STANDARD.encode(query_id.as_bytes());
    let mut chunk_meta: Vec<Value> = built
        .chunks
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
    if !chunk_meta.is_empty() && state.with_faults(|f| Faults::take(&mut f.dropped_chunk)) {
        chunk_meta.pop();
    }
    // Armed for the next query that reads a table (a client's clock reading
    // before its query, `SELECT CURRENT_TIMESTAMP()`, leaves it armed).
    let reads_a_table = upper.contains(" FROM ");
    let mut rowtype = json!(built.rowtype);
    if reads_a_table && state.with_faults(|f| Faults::take(&mut f.unknown_type)) {
        if let Some(last) = rowtype.as_array_mut().and_then(|c| c.last_mut()) {
            last["type"] = json!("vector");
        }
    }
    let answer = with_session_fields(json!({
        "parameters": parameters(geography),
        "rowtype": rowtype,
        "rowsetBase64": base64::engine::general_purpose::STANDARD.encode(&built.first),
        "total": built.total,
        "returned": built.total,
        "queryId": query_id,
        "queryResultFormat": "arrow",
        "chunks": chunk_meta,
        "chunkHeaders": {
            SSE_ALGORITHM_HEADER: "AES256",
            SSE_KEY_HEADER: key,
        },
        "qrmk": key,
        "statementTypeId": 4096,
    }));
    let running_for = match reads_a_table {
        true => state.with_faults(|f| std::mem::take(&mut f.long_query_secs)),
        false => 0,
    };
    let stored = StoredQuery {
        chunks: built
            .chunks
            .iter()
            .map(|c| StoredChunk {
                gzip: c.gzip.clone(),
                uncompressed: c.uncompressed,
            })
            .collect(),
        key,
        answer,
        ready_at: Instant::now() + Duration::from_secs(running_for),
        request_id,
        aborted: false,
    };
    let immediate = running_for == 0;
    let answer = immediate.then(|| stored.answer.clone());
    state.with_results(|r| r.insert(query_id.clone(), stored));
    state.with_sessions(|s| {
        if let Some(s) = s.get_mut(&token) {
            s.queries.push(query_id.clone());
        }
    });
    match answer {
        Some(answer) => success(answer),
        None => still_running(&query_id),
    }
}

/// The query string of a request (`requestId`, as the connectors send it).
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct RequestParams {
    #[serde(rename = "requestId")]
    request_id: Option<String>,
}

/// Lenient query-string extractor: unknown or missing parameters are fine.
pub(crate) struct UrlQuery(RequestParams);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for UrlQuery {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let params = parts
            .uri
            .query()
            .and_then(|q| serde_urlencoded_lite(q, "requestId"))
            .map(|id| RequestParams {
                request_id: Some(id),
            })
            .unwrap_or_default();
        Ok(UrlQuery(params))
    }
}

/// The value of `name` in a query string (ids are plain ASCII, no decoding needed).
fn serde_urlencoded_lite(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

fn still_running(query_id: &str) -> Json<Value> {
    failure(
        "333333",
        "Query execution in progress. Query will continue executing.",
        json!({
            "queryId": query_id,
            "getResultUrl": format!("/queries/{query_id}/result"),
            "queryAbortsAfterSecs": 300,
            "progressDesc": null
        }),
    )
}

/// `GET /queries/<id>/result`: 333333 while the query runs, then its result.
pub(crate) async fn result(
    State(state): State<Arc<AppState>>,
    UrlPath(query_id): UrlPath<String>,
    headers: HeaderMap,
) -> Json<Value> {
    if let Err(e) = live_session(&state, &headers) {
        return e;
    }
    state.with_stats(|s| s.result_polls += 1);
    let found = state.with_results(|r| {
        r.get(&query_id)
            .map(|q| (q.aborted, q.ready_at, q.answer.clone()))
    });
    match found {
        None => sql_error(
            &query_id,
            "000709",
            "02000",
            &format!("Statement {query_id} not found"),
        ),
        Some((true, _, _)) => sql_error(&query_id, "000604", "57014", "SQL execution canceled"),
        Some((false, ready_at, _)) if Instant::now() < ready_at => still_running(&query_id),
        Some((false, _, answer)) => success(answer),
    }
}

/// `POST /queries/v1/abort-request`: cancels the query started with `requestId`.
pub(crate) async fn abort(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    if let Err(e) = live_session(&state, &headers) {
        return e;
    }
    let request_id = body["requestId"].as_str().unwrap_or("").to_string();
    state.with_results(|r| {
        for q in r.values_mut() {
            if q.request_id == request_id {
                q.aborted = true;
            }
        }
    });
    state.with_stats(|s| s.aborted.push(request_id));
    success(Value::Null)
}

struct BuiltChunk {
    /// gzip'd, except the first chunk's (sent inline as plain IPC).
    gzip: Bytes,
    rows: usize,
    uncompressed: usize,
}

/// A query's persisted result: its columns and chunks.
pub(crate) struct Built {
    rowtype: Vec<RowType>,
    first: Bytes,
    chunks: Vec<BuiltChunk>,
    total: usize,
}

impl Built {
    /// What keeping it costs.
    pub(crate) fn bytes(&self) -> usize {
        self.first.len() + self.chunks.iter().map(|c| c.gzip.len()).sum::<usize>()
    }
}

/// Plans and runs a SELECT, and cuts its result into chunks.
async fn run_query(
    state: &AppState,
    sql: &str,
    geography: GeographyFormat,
) -> Result<Built, String> {
    let df = state.ctx.sql(sql).await.map_err(|e| e.to_string())?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let rowtype = schema
        .fields()
        .iter()
        .map(|f| {
            SnowflakeType::of_field(f)
                .map(|t| RowType::for_column_as(f.name(), t, f.is_nullable(), geography))
                .ok_or_else(|| format!("column {} has no Snowflake type", f.name()))
        })
        .collect::<Result<Vec<RowType>, String>>()?;
    build_chunks(state.chunk_rows, df, &schema, rowtype, geography).await
}

/// Runs the query and cuts its result into `chunk_rows`-row chunks: the
/// first as a plain IPC stream (sent inline), the rest gzip'd.
///
/// Chunks are encoded and compressed in blocking tasks, one per core at a
/// time, as a warehouse writes its result files in parallel: done in line,
/// this was most of the wait for a client's first byte (5 s of 2,000,000
/// topology rows on two cores).
async fn build_chunks(
    chunk_rows: usize,
    df: datafusion::dataframe::DataFrame,
    schema: &SchemaRef,
    rowtype: Vec<RowType>,
    geography: GeographyFormat,
) -> Result<Built, String> {
    type Building = tokio::task::JoinHandle<Result<BuiltChunk, String>>;
    async fn joined(handle: Building) -> Result<BuiltChunk, String> {
        handle.await.map_err(|e| e.to_string())?
    }
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
    let shared: Arc<[RowType]> = rowtype.as_slice().into();
    let launch = |batches: Vec<RecordBatch>, compress: bool| -> Building {
        let schema = Arc::clone(schema);
        let rowtype = Arc::clone(&shared);
        tokio::task::spawn_blocking(move || {
            encode_chunk(&schema, &batches, &rowtype, geography, compress)
        })
    };
    let mut stream = df.execute_stream().await.map_err(|e| e.to_string())?;
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0;
    let mut total = 0;
    let mut building: std::collections::VecDeque<Building> = Default::default();
    let mut chunks: Vec<BuiltChunk> = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| e.to_string())?;
        total += batch.num_rows();
        let mut offset = 0;
        while offset < batch.num_rows() {
            let take = (chunk_rows - pending_rows).min(batch.num_rows() - offset);
            pending.push(batch.slice(offset, take));
            pending_rows += take;
            offset += take;
            if pending_rows == chunk_rows {
                let first = chunks.is_empty() && building.is_empty();
                building.push_back(launch(std::mem::take(&mut pending), !first));
                pending_rows = 0;
                if building.len() >= parallel {
                    if let Some(oldest) = building.pop_front() {
                        chunks.push(joined(oldest).await?);
                    }
                }
            }
        }
    }
    if pending_rows > 0 || total == 0 {
        let first = chunks.is_empty() && building.is_empty();
        building.push_back(launch(pending, !first));
    }
    while let Some(oldest) = building.pop_front() {
        chunks.push(joined(oldest).await?);
    }
    let mut chunks = chunks.into_iter();
    let first = chunks.next().map(|c| c.gzip).unwrap_or_default();
    Ok(Built {
        rowtype,
        first,
        chunks: chunks.collect(),
        total,
    })
}

/// One chunk as Snowflake stores it: the rows in the session's geography
/// format as an Arrow IPC stream, gzip'd unless it travels inline.
fn encode_chunk(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    rowtype: &[RowType],
    geography: GeographyFormat,
    compress: bool,
) -> Result<BuiltChunk, String> {
    let merged = arrow::compute::concat_batches(schema, batches).map_err(|e| e.to_string())?;
    let merged = with_geography_format(&merged, rowtype, geography)?;
    let ipc = ipc_stream(&encode_batch(&merged, rowtype).map_err(|e| e.to_string())?)?;
    let uncompressed = ipc.len();
    let data = if compress {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&ipc).map_err(|e| e.to_string())?;
        gz.finish().map_err(|e| e.to_string())?
    } else {
        ipc
    };
    Ok(BuiltChunk {
        gzip: Bytes::from(data),
        rows: merged.num_rows(),
        uncompressed,
    })
}

/// Re-encodes GeoJSON geography columns in the session's output format, as
/// Snowflake renders them.
fn with_geography_format(
    batch: &RecordBatch,
    rowtype: &[RowType],
    format: GeographyFormat,
) -> Result<RecordBatch, String> {
    if format == GeographyFormat::GeoJson || rowtype.iter().all(|r| r.ext_type_name.is_none()) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for ((field, column), r) in batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .zip(rowtype)
    {
        if r.ext_type_name.is_none() || !matches!(column.data_type(), DataType::Utf8) {
            fields.push(field.as_ref().clone());
            columns.push(Arc::clone(column));
            continue;
        }
        let texts = column
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .ok_or("geography column is not text")?;
        let convert_err = |i: usize, e: geozero::error::GeozeroError| {
            format!("column {} row {i}: {e}", field.name())
        };
        let array: ArrayRef = match format {
            GeographyFormat::Wkt | GeographyFormat::Ewkt => {
                let mut b = StringBuilder::new();
                for i in 0..texts.len() {
                    if texts.is_null(i) {
                        b.append_null();
                        continue;
                    }
                    let wkt = geozero::geojson::GeoJson(texts.value(i))
                        .to_wkt()
                        .map_err(|e| convert_err(i, e))?;
                    if format == GeographyFormat::Ewkt {
                        b.append_value(format!("SRID=4326;{wkt}"));
                    } else {
                        b.append_value(wkt);
                    }
                }
                Arc::new(b.finish())
            }
            _ => {
                let mut b = BinaryBuilder::new();
                for i in 0..texts.len() {
                    if texts.is_null(i) {
                        b.append_null();
                        continue;
                    }
                    let g = geozero::geojson::GeoJson(texts.value(i));
                    let wkb = if format == GeographyFormat::Ewkb {
                        g.to_ewkb(CoordDimensions::xy(), Some(4326))
                    } else {
                        g.to_wkb(CoordDimensions::xy())
                    }
                    .map_err(|e| convert_err(i, e))?;
                    b.append_value(wkb);
                }
                Arc::new(b.finish())
            }
        };
        fields.push(
            Field::new(field.name(), array.data_type().clone(), field.is_nullable())
                .with_metadata(field.metadata().clone()),
        );
        columns.push(array);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| e.to_string())
}

fn ipc_stream(batch: &RecordBatch) -> Result<Vec<u8>, String> {
    let mut w = StreamWriter::try_new(Vec::new(), &batch.schema()).map_err(|e| e.to_string())?;
    w.write(batch).map_err(|e| e.to_string())?;
    w.into_inner().map_err(|e| e.to_string())
}

/// `GET /chunks/<query>/<index>`: as cloud storage serves a result chunk.
pub(crate) async fn chunk(
    State(state): State<Arc<AppState>>,
    UrlPath((query_id, index)): UrlPath<(String, usize)>,
    headers: HeaderMap,
) -> Response {
    state.with_stats(|s| s.chunk_requests += 1);
    let found = state.with_results(|r| {
        r.get(&query_id).and_then(|q| {
            q.chunks
                .get(index)
                .map(|c| (c.gzip.clone(), c.uncompressed, q.key.clone()))
        })
    });
    let Some((gzip, uncompressed, key)) = found else {
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
    let (fail, delay, truncate, bomb) = state.with_faults(|f| {
        let fail = Faults::take(&mut f.chunk_503);
        let slow = Faults::take(&mut f.slow_chunks);
        let truncate = Faults::take(&mut f.truncated_chunk);
        let bomb = Faults::take(&mut f.chunk_bomb);
        (fail, slow.then_some(f.slow_chunk_ms), truncate, bomb)
    });
    if fail {
        return (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response();
    }
    let delay = delay.map(Duration::from_millis).unwrap_or_default() + state.chunk_latency;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let body = if bomb {
        inflating_to(uncompressed * 1000)
    } else if truncate {
        gzip.slice(..gzip.len() / 2)
    } else {
        gzip
    };
    (
        StatusCode::OK,
        [("content-type", "binary/octet-stream")],
        body,
    )
        .into_response()
}

/// A gzip body of zeros that inflates to `size` bytes (about a thousandth
/// of that on the wire): the `chunk-bomb` fault.
fn inflating_to(size: usize) -> Bytes {
    use std::io::Write;
    // Best compression: deflate's ratio on zeros (about 1000:1) keeps the
    // body within the chunk's announced size, so only inflating shows it.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(zeros.len());
        if gz.write_all(&zeros[..n]).is_err() {
            break;
        }
        left -= n;
    }
    Bytes::from(gz.finish().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alter_session_sets_the_geography_format_in_any_spelling() {
        for sql in [
            "ALTER SESSION SET GEOGRAPHY_OUTPUT_FORMAT = 'WKB'",
            "alter session set geography_output_format='wkb'",
            "ALTER  SESSION\nSET GEOGRAPHY_OUTPUT_FORMAT = \"WKB\"",
        ] {
            assert!(
                matches!(
                    session_setting(sql),
                    Some(SessionSetting::Geography(Ok(GeographyFormat::Wkb)))
                ),
                "{sql}"
            );
        }
        assert!(matches!(
            session_setting("ALTER SESSION SET GEOGRAPHY_OUTPUT_FORMAT = 'KML'"),
            Some(SessionSetting::Geography(Err(_)))
        ));
        assert!(matches!(
            session_setting("alter session set use_cached_result = false"),
            Some(SessionSetting::UseCachedResult(Ok(false)))
        ));
        assert!(matches!(
            session_setting("ALTER SESSION SET USE_CACHED_RESULT = maybe"),
            Some(SessionSetting::UseCachedResult(Err(_)))
        ));
        assert!(session_setting("ALTER SESSION SET TIMEZONE = 'UTC'").is_none());
        assert!(session_setting("SELECT 1").is_none());
    }

    #[test]
    fn geography_columns_are_rendered_in_each_output_format() {
        let field = SnowflakeType::Geography.arrow_field("GEOM", true);
        let schema = Arc::new(Schema::new(vec![field]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(arrow::array::StringArray::from(vec![
                Some(r#"{"type":"Point","coordinates":[-96.5,32.25]}"#),
                None,
            ]))],
        )
        .unwrap();
        let rowtype = |f| {
            vec![RowType::for_column_as(
                "GEOM",
                SnowflakeType::Geography,
                true,
                f,
            )]
        };
        let wkt = with_geography_format(
            &batch,
            &rowtype(GeographyFormat::Ewkt),
            GeographyFormat::Ewkt,
        )
        .unwrap();
        let wkt = wkt
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        assert_eq!(wkt.value(0), "SRID=4326;POINT(-96.5 32.25)");
        assert!(wkt.is_null(1));
        let wkb =
            with_geography_format(&batch, &rowtype(GeographyFormat::Wkb), GeographyFormat::Wkb)
                .unwrap();
        let wkb = wkb
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::BinaryArray>()
            .unwrap();
        // little-endian, type 1 (Point), then x and y.
        assert_eq!(&wkb.value(0)[..5], &[1, 1, 0, 0, 0]);
        assert_eq!(
            f64::from_le_bytes(wkb.value(0)[5..13].try_into().unwrap()),
            -96.5
        );
        assert_eq!(rowtype(GeographyFormat::Wkb)[0].type_name, "binary");
    }
}
