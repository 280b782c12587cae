//! Reading Snowflake: the connector REST protocol with Arrow result chunks.
//!
//! Login (password), one query, then the result as a stream of plain Arrow
//! batches: the inline first chunk, then the remaining chunks downloaded in
//! parallel (`prefetch_threads` at a time) and handed out in order. What is
//! downloaded but not yet consumed is bounded in bytes
//! (`max_buffered_bytes`), not only in count. A chunk that fails with a
//! transient HTTP status, a connection error, or a body that does not inflate
//! or decode (or holds the wrong number of rows) is downloaded again with
//! exponential backoff and jitter. That is stricter than the official Python
//! connector, which gives up on a truncated gzip body. Dropping the stream
//! stops the downloads.
//!
//! Not built yet (issue 3): key-pair JWT and OAuth logins, session renewal,
//! asynchronous query polling and server-side cancellation.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::record_batch::RecordBatch;
use base64::Engine;
use futures::stream::{self, BoxStream, StreamExt};
use schemas::config::SnowflakeConfig;
use schemas::snowflake_arrow::{decode_batch, decoded_schema, RowType};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};

/// Attempts per chunk before the query fails.
const CHUNK_ATTEMPTS: u32 = 6;

/// What went wrong talking to Snowflake. Messages never contain credentials.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SnowflakeError {
    /// Configuration is missing or unsupported.
    #[error("snowflake config: {0}")]
    Config(String),
    /// Snowflake refused the login.
    #[error("Snowflake login failed ({code}): {message}")]
    Login { code: String, message: String },
    /// Snowflake answered with an error.
    #[error("Snowflake error {code} (SQL state {sql_state}, query {query_id}): {message}")]
    Query {
        code: String,
        sql_state: String,
        query_id: String,
        message: String,
    },
    /// The HTTP exchange failed (after retries, where they apply).
    #[error("Snowflake HTTP: {0}")]
    Http(String),
    /// A result chunk could not be decoded.
    #[error("Snowflake result: {0}")]
    Decode(String),
}

/// A logged-in Snowflake session.
pub struct SnowflakeSession {
    http: reqwest::Client,
    base_url: String,
    token: String,
    time_zone: String,
    prefetch: usize,
    budget: usize,
}

#[derive(Deserialize)]
struct Envelope {
    data: Option<Value>,
    code: Option<String>,
    message: Option<String>,
    success: bool,
}

/// One downloadable chunk of a result.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkRef {
    pub url: String,
    pub row_count: usize,
    pub uncompressed_size: usize,
}

/// A query's result, before its chunks are downloaded.
pub struct QueryResult {
    pub query_id: String,
    pub rowtype: Vec<RowType>,
    /// The schema every batch of the stream has.
    pub schema: SchemaRef,
    /// Rows in the whole result, as Snowflake counts them.
    pub total: u64,
    first: Vec<RecordBatch>,
    chunks: Vec<ChunkRef>,
    headers: reqwest::header::HeaderMap,
}

fn http_err(e: reqwest::Error) -> SnowflakeError {
    // reqwest's message can include the URL; Snowflake URLs carry no secrets
    // (the session token travels in a header).
    SnowflakeError::Http(e.without_url().to_string())
}

impl SnowflakeSession {
    /// Logs in with the config as given (the CLI applies `SNOWFLAKE_*` overrides when it loads the file).
    pub async fn login(config: &SnowflakeConfig) -> Result<SnowflakeSession, SnowflakeError> {
        let cfg = config;
        let base_url = cfg.base_url().map_err(SnowflakeError::Config)?;
        let authenticator = cfg
            .authenticator
            .as_deref()
            .unwrap_or("snowflake")
            .to_ascii_uppercase();
        if authenticator != "SNOWFLAKE" {
            return Err(SnowflakeError::Config(format!(
                "authenticator `{authenticator}` is not built yet; use password authentication"
            )));
        }
        let user = cfg
            .user
            .clone()
            .ok_or_else(|| SnowflakeError::Config("set snowflake.user".into()))?;
        let password = cfg.password.clone().ok_or_else(|| {
            SnowflakeError::Config("set snowflake.password or SNOWFLAKE_PASSWORD".into())
        })?;
        // Only https needs a crypto provider; installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(http_err)?;
        let account = cfg.account.clone().unwrap_or_default();
        let body = json!({ "data": {
            "CLIENT_APP_ID": "floe",
            "CLIENT_APP_VERSION": env!("CARGO_PKG_VERSION"),
            "SVN_REVISION": "",
            "ACCOUNT_NAME": account.split('.').next().unwrap_or("").to_uppercase(),
            "LOGIN_NAME": user,
            "PASSWORD": password,
            "SESSION_PARAMETERS": { "PYTHON_CONNECTOR_QUERY_RESULT_FORMAT": "ARROW", "GO_QUERY_RESULT_FORMAT": "ARROW" },
            "CLIENT_ENVIRONMENT": { "APPLICATION": "floe" }
        }});
        let mut query: Vec<(&str, String)> = vec![("request_id", request_id())];
        for (k, v) in [
            ("databaseName", &cfg.database),
            ("schemaName", &cfg.schema),
            ("warehouse", &cfg.warehouse),
            ("roleName", &cfg.role),
        ] {
            if let Some(v) = v {
                query.push((k, v.clone()));
            }
        }
        let env = post_json(
            &http,
            &format!("{base_url}/session/v1/login-request"),
            &query,
            None,
            &body,
        )
        .await?;
        if !env.success {
            return Err(SnowflakeError::Login {
                code: env.code.unwrap_or_default(),
                message: env.message.unwrap_or_default(),
            });
        }
        let data = env.data.unwrap_or(Value::Null);
        let token = data["token"]
            .as_str()
            .ok_or_else(|| SnowflakeError::Http("login answer has no session token".into()))?
            .to_string();
        let time_zone = parameter(&data["parameters"], "TIMEZONE")
            .unwrap_or_else(|| schemas::snowflake::DEFAULT_SESSION_TIME_ZONE.to_string());
        Ok(SnowflakeSession {
            http,
            base_url,
            token,
            time_zone,
            prefetch: cfg.prefetch_threads.max(1),
            budget: cfg.max_buffered_bytes.max(1 << 20),
        })
    }

    fn auth(&self) -> String {
        format!("Snowflake Token=\"{}\"", self.token)
    }

    /// Runs `sql` and returns its result (first chunk decoded, others pending).
    pub async fn query(&self, sql: &str) -> Result<QueryResult, SnowflakeError> {
        let body = json!({
            "sqlText": sql,
            "asyncExec": false,
            "sequenceId": 1,
            "isInternal": false,
            "parameters": { "PYTHON_CONNECTOR_QUERY_RESULT_FORMAT": "ARROW", "GO_QUERY_RESULT_FORMAT": "ARROW" }
        });
        let url = format!("{}/queries/v1/query-request", self.base_url);
        let params = [("requestId", request_id())];
        let env = post_json(&self.http, &url, &params, Some(self.auth()), &body).await?;
        let data = env.data.unwrap_or(Value::Null);
        if !env.success {
            return Err(SnowflakeError::Query {
                code: env.code.unwrap_or_default(),
                sql_state: data["sqlState"].as_str().unwrap_or("").to_string(),
                query_id: data["queryId"].as_str().unwrap_or("").to_string(),
                message: env.message.unwrap_or_default(),
            });
        }
        let field = |name: &str| -> Result<Value, SnowflakeError> {
            data.get(name)
                .cloned()
                .ok_or_else(|| SnowflakeError::Decode(format!("query answer has no `{name}`")))
        };
        if data["queryResultFormat"].as_str() != Some("arrow") {
            return Err(SnowflakeError::Decode(
                "the result is not in Arrow format".into(),
            ));
        }
        let rowtype: Vec<RowType> = serde_json::from_value(field("rowtype")?)
            .map_err(|e| SnowflakeError::Decode(format!("rowtype: {e}")))?;
        let schema = decoded_schema(&rowtype, &self.time_zone)
            .map_err(|e| SnowflakeError::Decode(e.to_string()))?;
        let chunks: Vec<ChunkRef> =
            serde_json::from_value(data.get("chunks").cloned().unwrap_or(json!([])))
                .map_err(|e| SnowflakeError::Decode(format!("chunks: {e}")))?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(h) = data["chunkHeaders"].as_object() {
            for (k, v) in h {
                if let (Ok(name), Some(Ok(value))) = (
                    reqwest::header::HeaderName::from_bytes(k.as_bytes()),
                    v.as_str().map(reqwest::header::HeaderValue::from_str),
                ) {
                    headers.insert(name, value);
                }
            }
        } else if let Some(qrmk) = data["qrmk"].as_str() {
            headers.insert(
                "x-amz-server-side-encryption-customer-algorithm",
                reqwest::header::HeaderValue::from_static("AES256"),
            );
            if let Ok(v) = reqwest::header::HeaderValue::from_str(qrmk) {
                headers.insert("x-amz-server-side-encryption-customer-key", v);
            }
        }
        let inline = base64::engine::general_purpose::STANDARD
            .decode(
                data["rowsetBase64"]
                    .as_str()
                    .or(data["rowsetbase64"].as_str())
                    .unwrap_or(""),
            )
            .map_err(|e| SnowflakeError::Decode(format!("rowsetBase64: {e}")))?;
        let first = if inline.is_empty() {
            Vec::new()
        } else {
            decode_ipc(&inline, &rowtype, &schema)?
        };
        Ok(QueryResult {
            query_id: data["queryId"].as_str().unwrap_or("").to_string(),
            total: data["total"].as_u64().unwrap_or(0),
            rowtype,
            schema,
            first,
            chunks,
            headers,
        })
    }

    /// The result's batches in order: inline first, then downloaded chunks.
    pub fn stream(
        &self,
        result: QueryResult,
    ) -> BoxStream<'static, Result<RecordBatch, SnowflakeError>> {
        let QueryResult {
            rowtype,
            schema,
            first,
            chunks,
            headers,
            ..
        } = result;
        let (tx, rx) = mpsc::channel::<
            Result<(Vec<RecordBatch>, tokio::sync::OwnedSemaphorePermit), SnowflakeError>,
        >(self.prefetch);
        let budget = Arc::new(Semaphore::new(self.budget));
        let (http, prefetch, limit) = (self.http.clone(), self.prefetch, self.budget);
        let rowtype = Arc::new(rowtype);
        let downloader = tokio::spawn(async move {
            let mut downloads = stream::iter(chunks.into_iter().enumerate())
                .map(|(i, chunk)| {
                    let (http, headers, rowtype, schema, budget) = (
                        http.clone(),
                        headers.clone(),
                        Arc::clone(&rowtype),
                        Arc::clone(&schema),
                        Arc::clone(&budget),
                    );
                    async move {
                        // Reserve the chunk's decoded size before fetching it.
                        let cost = chunk.uncompressed_size.clamp(1, limit) as u32;
                        let permit = budget
                            .acquire_many_owned(cost)
                            .await
                            .map_err(|_| SnowflakeError::Http("download cancelled".into()))?;
                        let batches =
                            download_chunk(&http, &headers, &chunk, i, &rowtype, &schema).await?;
                        Ok((batches, permit))
                    }
                })
                .buffered(prefetch);
            while let Some(item) = downloads.next().await {
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        });
        let abort = AbortOnDrop(downloader);
        let rest = stream::unfold((rx, abort), |(mut rx, abort)| async move {
            let item = rx.recv().await?;
            // The permit is released as the chunk is handed over.
            let item = item.map(|(batches, _permit)| stream::iter(batches.into_iter().map(Ok)));
            Some((item, (rx, abort)))
        })
        .flat_map(|item| match item {
            Ok(batches) => batches.boxed(),
            Err(e) => stream::once(async move { Err(e) }).boxed(),
        });
        stream::iter(first.into_iter().map(Ok)).chain(rest).boxed()
    }

    /// Ends the session (best effort).
    pub async fn logout(&self) {
        let _ = self
            .http
            .post(format!("{}/session", self.base_url))
            .query(&[("delete", "true"), ("request_id", &request_id())])
            .header("Accept", "application/snowflake")
            .header("Authorization", self.auth())
            .send()
            .await;
    }
}

/// POSTs a JSON body with Snowflake's headers and reads the response envelope.
async fn post_json<Q: serde::Serialize + ?Sized>(
    http: &reqwest::Client,
    url: &str,
    query: &Q,
    authorization: Option<String>,
    body: &Value,
) -> Result<Envelope, SnowflakeError> {
    let mut request = http
        .post(url)
        .query(query)
        .header("Accept", "application/snowflake")
        .json(body);
    if let Some(auth) = authorization {
        request = request.header("Authorization", auth);
    }
    request
        .send()
        .await
        .map_err(http_err)?
        .json()
        .await
        .map_err(http_err)
}

/// Aborts the download task when the result stream is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn parameter(params: &Value, name: &str) -> Option<String> {
    params.as_array()?.iter().find_map(|p| {
        (p["name"].as_str() == Some(name))
            .then(|| p["value"].as_str().map(str::to_string))
            .flatten()
    })
}

/// A fresh request id (UUID-shaped, random enough for request correlation).
fn request_id() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        ^ ((std::process::id() as u128) << 64);
    let h = format!("{n:032x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn decode_ipc(
    bytes: &[u8],
    rowtype: &[RowType],
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>, SnowflakeError> {
    let reader = StreamReader::try_new(bytes, None)
        .map_err(|e| SnowflakeError::Decode(format!("Arrow IPC: {e}")))?;
    reader
        .map(|b| {
            let chunk = b.map_err(|e| SnowflakeError::Decode(format!("Arrow IPC: {e}")))?;
            decode_batch(&chunk, rowtype, schema).map_err(|e| SnowflakeError::Decode(e.to_string()))
        })
        .collect()
}

/// Downloads, inflates (sniffing the gzip magic), decodes and checks one chunk, with retries.
async fn download_chunk(
    http: &reqwest::Client,
    headers: &reqwest::header::HeaderMap,
    chunk: &ChunkRef,
    index: usize,
    rowtype: &[RowType],
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>, SnowflakeError> {
    let mut last = String::new();
    for attempt in 0..CHUNK_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt)).await;
        }
        let response = match http.get(&chunk.url).headers(headers.clone()).send().await {
            Ok(r) => r,
            Err(e) => {
                last = http_err(e).to_string();
                continue;
            }
        };
        let status = response.status();
        if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            last = format!("HTTP {status}");
            continue;
        }
        if !status.is_success() {
            return Err(SnowflakeError::Http(format!(
                "chunk {index}: HTTP {status}"
            )));
        }
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => {
                last = http_err(e).to_string();
                continue;
            }
        };
        let decoded = inflate(&body).and_then(|ipc| decode_ipc(&ipc, rowtype, schema));
        match decoded {
            Ok(batches) => {
                let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
                if rows == chunk.row_count {
                    return Ok(batches);
                }
                last = format!("{rows} rows where {} were announced", chunk.row_count);
            }
            Err(e) => last = e.to_string(),
        }
        tracing::warn!(
            chunk = index,
            attempt,
            "chunk download failed, retrying: {last}"
        );
    }
    Err(SnowflakeError::Http(format!(
        "chunk {index} failed after {CHUNK_ATTEMPTS} attempts: {last}"
    )))
}

fn inflate(body: &[u8]) -> Result<Vec<u8>, SnowflakeError> {
    if body.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(body.len() * 4);
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .map_err(|e| SnowflakeError::Decode(format!("gzip: {e}")))?;
        Ok(out)
    } else {
        Ok(body.to_vec())
    }
}

/// Exponential backoff from 100 ms, capped at 5 s, with up to 50% jitter.
fn backoff(attempt: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.min(6)).min(5_000);
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
        % (base / 2 + 1);
    Duration::from_millis(base + jitter)
}
