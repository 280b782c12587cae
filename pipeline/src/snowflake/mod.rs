//! Reading Snowflake: the connector REST protocol with Arrow result chunks.
//!
//! Login (password, key-pair JWT or OAuth), queries, then each result as a
//! stream of plain Arrow batches: the inline first chunk, then the remaining
//! chunks downloaded in parallel (`prefetch_threads` at a time) and handed
//! out in order. What is downloaded but not yet consumed is bounded in bytes
//! (`max_buffered_bytes`), not only in count. A chunk that fails with a
//! transient HTTP status, a connection error, or a body that does not inflate
//! or decode (or holds the wrong number of rows) is downloaded again with
//! exponential backoff and jitter. That is stricter than the official Python
//! connector, which gives up on a truncated gzip body. Dropping the stream
//! stops the downloads.
//!
//! An expired session token (`390112`) is renewed with the master token and
//! the request replayed; if the master token is gone too, floe logs in again.
//! A query Snowflake keeps running past its synchronous wait (`333333`) is
//! polled until it finishes; [`SnowflakeSession::abort`] cancels it on the
//! server (Ctrl-C, a failed sink).

pub mod keypair;

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::record_batch::RecordBatch;
use base64::Engine;
use futures::stream::{self, BoxStream, StreamExt};
use schemas::config::SnowflakeConfig;
use schemas::snowflake::GeographyFormat;
use schemas::snowflake_arrow::{decode_batch, decoded_schema, RowType};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};

use keypair::KeyPair;

/// Attempts per chunk before the query fails.
const CHUNK_ATTEMPTS: u32 = 6;
/// Attempts per REST call on transient HTTP failures (5xx, 429, 408, connection errors).
const CALL_ATTEMPTS: u32 = 5;
/// How often a running query is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

const SESSION_EXPIRED: &str = "390112";
const QUERY_IN_PROGRESS: &str = "333333";
const QUERY_IN_PROGRESS_ASYNC: &str = "333334";

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

/// How this session proves who it is (kept for re-login when the master token expires).
enum Credentials {
    Password(String),
    KeyPair(Box<KeyPair>),
    OAuth(String),
}

struct Tokens {
    session: String,
    master: String,
}

/// A logged-in Snowflake session.
pub struct SnowflakeSession {
    http: reqwest::Client,
    base_url: String,
    account: String,
    user: String,
    credentials: Credentials,
    login_query: Vec<(&'static str, String)>,
    tokens: Mutex<Tokens>,
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

impl Envelope {
    fn code(&self) -> &str {
        self.code.as_deref().unwrap_or("")
    }
}

/// One downloadable chunk of a result.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkRef {
    pub url: String,
    pub row_count: usize,
    pub uncompressed_size: usize,
}

/// A statement about to be submitted: its `requestId` is what
/// `abort-request` names, so it is fixed before the query starts.
#[derive(Debug, Clone)]
pub struct QueryTicket {
    pub sql: String,
    pub request_id: String,
}

impl QueryTicket {
    pub fn new(sql: &str) -> QueryTicket {
        QueryTicket {
            sql: sql.to_string(),
            request_id: request_id(),
        }
    }
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
    // Without the URL: pre-signed chunk URLs carry signatures. The causes
    // (timed out, connection reset) are what an operator needs.
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    SnowflakeError::Http(message)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl SnowflakeSession {
    /// Logs in with the config as given (the CLI applies `SNOWFLAKE_*` overrides when it loads the file).
    pub async fn login(config: &SnowflakeConfig) -> Result<SnowflakeSession, SnowflakeError> {
        let cfg = config;
        let base_url = cfg.base_url().map_err(SnowflakeError::Config)?;
        let user = cfg.user.clone().ok_or_else(|| {
            SnowflakeError::Config("set snowflake.user (or SNOWFLAKE_USER)".into())
        })?;
        let authenticator = cfg
            .authenticator
            .as_deref()
            .unwrap_or("snowflake")
            .to_ascii_uppercase();
        let credentials = match authenticator.as_str() {
            "SNOWFLAKE" => Credentials::Password(cfg.password.clone().ok_or_else(|| {
                SnowflakeError::Config("set snowflake.password or SNOWFLAKE_PASSWORD".into())
            })?),
            "SNOWFLAKE_JWT" => {
                let path = cfg.private_key_file.as_deref().ok_or_else(|| {
                    SnowflakeError::Config(
                        "authenticator snowflake_jwt needs private_key_file (or SNOWFLAKE_PRIVATE_KEY_FILE)".into(),
                    )
                })?;
                Credentials::KeyPair(Box::new(KeyPair::load(
                    path,
                    cfg.private_key_passphrase.as_deref(),
                )?))
            }
            "OAUTH" => Credentials::OAuth(cfg.token.clone().ok_or_else(|| {
                SnowflakeError::Config(
                    "authenticator oauth needs token (or SNOWFLAKE_TOKEN)".into(),
                )
            })?),
            other => {
                return Err(SnowflakeError::Config(format!(
                    "authenticator `{other}` is not supported (snowflake, snowflake_jwt, oauth)"
                )))
            }
        };
        let geography = cfg
            .geography_output_format
            .as_deref()
            .map(str::parse::<GeographyFormat>)
            .transpose()
            .map_err(SnowflakeError::Config)?;
        // Only https needs a crypto provider; installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(cfg.read_timeout.max(Duration::from_millis(100)))
            .build()
            .map_err(http_err)?;
        let mut login_query: Vec<(&'static str, String)> = Vec::new();
        for (k, v) in [
            ("databaseName", &cfg.database),
            ("schemaName", &cfg.schema),
            ("warehouse", &cfg.warehouse),
            ("roleName", &cfg.role),
        ] {
            if let Some(v) = v {
                login_query.push((k, v.clone()));
            }
        }
        let mut session = SnowflakeSession {
            http,
            base_url,
            account: cfg.account.clone().unwrap_or_default(),
            user,
            credentials,
            login_query,
            tokens: Mutex::new(Tokens {
                session: String::new(),
                master: String::new(),
            }),
            time_zone: schemas::snowflake::DEFAULT_SESSION_TIME_ZONE.to_string(),
            prefetch: cfg.prefetch_threads.max(1),
            budget: cfg.max_buffered_bytes.max(1 << 20),
        };
        let data = session.authenticate().await?;
        if let Some(tz) = parameter(&data["parameters"], "TIMEZONE") {
            session.time_zone = tz;
        }
        if let Some(format) = geography {
            session
                .execute(&format!(
                    "ALTER SESSION SET GEOGRAPHY_OUTPUT_FORMAT = '{format}'"
                ))
                .await?;
        }
        Ok(session)
    }

    /// The login request; stores the tokens and returns the answer's `data`.
    async fn authenticate(&self) -> Result<Value, SnowflakeError> {
        let mut data = json!({
            "CLIENT_APP_ID": "floe",
            "CLIENT_APP_VERSION": env!("CARGO_PKG_VERSION"),
            "SVN_REVISION": "",
            "ACCOUNT_NAME": keypair::jwt_account(&self.account),
            "LOGIN_NAME": self.user,
            "SESSION_PARAMETERS": { "PYTHON_CONNECTOR_QUERY_RESULT_FORMAT": "ARROW", "GO_QUERY_RESULT_FORMAT": "ARROW" },
            "CLIENT_ENVIRONMENT": { "APPLICATION": "floe" }
        });
        match &self.credentials {
            Credentials::Password(p) => data["PASSWORD"] = json!(p),
            Credentials::KeyPair(k) => {
                data["AUTHENTICATOR"] = json!("SNOWFLAKE_JWT");
                data["TOKEN"] = json!(k.jwt(&self.account, &self.user, unix_now())?);
            }
            Credentials::OAuth(t) => {
                data["AUTHENTICATOR"] = json!("OAUTH");
                data["TOKEN"] = json!(t);
            }
        }
        let mut query = self.login_query.clone();
        query.push(("request_id", request_id()));
        let env = self
            .send(
                reqwest::Method::POST,
                &format!("{}/session/v1/login-request", self.base_url),
                &query,
                None,
                Some(&json!({ "data": data })),
            )
            .await?;
        if !env.success {
            return Err(SnowflakeError::Login {
                code: env.code.unwrap_or_default(),
                message: env.message.unwrap_or_default(),
            });
        }
        let data = env.data.unwrap_or(Value::Null);
        let token = |key: &str| {
            data[key]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| SnowflakeError::Http(format!("login answer has no {key}")))
        };
        let tokens = Tokens {
            session: token("token")?,
            master: token("masterToken").unwrap_or_default(),
        };
        *self.tokens.lock().unwrap_or_else(|p| p.into_inner()) = tokens;
        Ok(data)
    }

    fn session_token(&self) -> String {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .session
            .clone()
    }

    /// A new session token from the master token; a full login if that fails.
    async fn renew(&self, expired: &str) -> Result<(), SnowflakeError> {
        let master = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .master
            .clone();
        if self.session_token() != expired {
            return Ok(()); // another request renewed it already
        }
        let env = self
            .send(
                reqwest::Method::POST,
                &format!("{}/session/token-request", self.base_url),
                &[("requestId", request_id())],
                Some(format!("Snowflake Token=\"{master}\"")),
                Some(&json!({ "oldSessionToken": expired, "requestType": "RENEW" })),
            )
            .await?;
        let renewed = env
            .success
            .then(|| {
                env.data.as_ref()?["sessionToken"]
                    .as_str()
                    .map(str::to_string)
            })
            .flatten();
        match renewed {
            Some(session) => {
                tracing::info!("Snowflake session token renewed");
                let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
                t.session = session;
                if let Some(m) = env.data.as_ref().and_then(|d| d["masterToken"].as_str()) {
                    t.master = m.to_string();
                }
                Ok(())
            }
            None => {
                tracing::info!(code = env.code(), "master token refused; logging in again");
                self.authenticate().await.map(|_| ())
            }
        }
    }

    /// A REST call with the session token; an expired token is renewed and the call replayed once.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Envelope, SnowflakeError> {
        let url = format!("{}{path}", self.base_url);
        let token = self.session_token();
        let auth = |t: &str| Some(format!("Snowflake Token=\"{t}\""));
        let env = self
            .send(method.clone(), &url, query, auth(&token), body)
            .await?;
        if env.success || env.code() != SESSION_EXPIRED {
            return Ok(env);
        }
        self.renew(&token).await?;
        self.send(method, &url, query, auth(&self.session_token()), body)
            .await
    }

    /// Sends one request with Snowflake's headers, retrying transient failures with backoff.
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        query: &[(&str, String)],
        authorization: Option<String>,
        body: Option<&Value>,
    ) -> Result<Envelope, SnowflakeError> {
        let mut last = String::new();
        for attempt in 0..CALL_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt)).await;
            }
            let mut request = self
                .http
                .request(method.clone(), url)
                .query(query)
                .header("Accept", "application/snowflake");
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(auth) = &authorization {
                request = request.header("Authorization", auth);
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) if e.is_connect() || e.is_timeout() || e.is_request() => {
                    last = http_err(e).to_string();
                    continue;
                }
                Err(e) => return Err(http_err(e)),
            };
            let status = response.status();
            if transient(status) {
                last = format!("HTTP {status}");
                tracing::warn!(attempt, "Snowflake answered {status}; retrying");
                continue;
            }
            if !status.is_success() {
                return Err(SnowflakeError::Http(format!("HTTP {status}")));
            }
            return response.json().await.map_err(http_err);
        }
        Err(SnowflakeError::Http(format!(
            "gave up after {CALL_ATTEMPTS} attempts: {last}"
        )))
    }

    /// Runs a statement whose result does not matter (e.g. `ALTER SESSION`).
    pub async fn execute(&self, sql: &str) -> Result<(), SnowflakeError> {
        self.submit(&QueryTicket::new(sql)).await.map(|_| ())
    }

    /// Submits a statement and waits for it, polling while Snowflake keeps it running.
    async fn submit(&self, ticket: &QueryTicket) -> Result<Value, SnowflakeError> {
        let body = json!({
            "sqlText": ticket.sql,
            "asyncExec": false,
            "sequenceId": 1,
            "isInternal": false,
            "parameters": { "PYTHON_CONNECTOR_QUERY_RESULT_FORMAT": "ARROW", "GO_QUERY_RESULT_FORMAT": "ARROW" }
        });
        let mut env = self
            .call(
                reqwest::Method::POST,
                "/queries/v1/query-request",
                &[("requestId", ticket.request_id.clone())],
                Some(&body),
            )
            .await?;
        while matches!(env.code(), QUERY_IN_PROGRESS | QUERY_IN_PROGRESS_ASYNC) {
            let data = env.data.unwrap_or(Value::Null);
            let path = data["getResultUrl"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| {
                    SnowflakeError::Decode("a running query's answer has no getResultUrl".into())
                })?;
            tracing::debug!(
                query_id = data["queryId"].as_str().unwrap_or(""),
                "query still running"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
            env = self.call(reqwest::Method::GET, &path, &[], None).await?;
        }
        let data = env.data.unwrap_or(Value::Null);
        if !env.success {
            return Err(SnowflakeError::Query {
                code: env.code.unwrap_or_default(),
                sql_state: data["sqlState"].as_str().unwrap_or("").to_string(),
                query_id: data["queryId"].as_str().unwrap_or("").to_string(),
                message: env.message.unwrap_or_default(),
            });
        }
        Ok(data)
    }

    /// Asks Snowflake to cancel the statement (best effort: it may have finished).
    pub async fn abort(&self, ticket: &QueryTicket) {
        let body = json!({ "sqlText": ticket.sql, "requestId": ticket.request_id });
        match self
            .call(
                reqwest::Method::POST,
                "/queries/v1/abort-request",
                &[("requestId", request_id())],
                Some(&body),
            )
            .await
        {
            Ok(env) if env.success => tracing::info!("Snowflake query cancelled"),
            Ok(env) => tracing::debug!(code = env.code(), "abort-request refused"),
            Err(e) => tracing::warn!("abort-request failed: {e}"),
        }
    }

    /// Runs `sql` and returns its result (first chunk decoded, others pending).
    pub async fn query(&self, sql: &str) -> Result<QueryResult, SnowflakeError> {
        self.query_ticket(&QueryTicket::new(sql)).await
    }

    /// As [`SnowflakeSession::query`], for a ticket the caller can [`abort`](Self::abort).
    pub async fn query_ticket(&self, ticket: &QueryTicket) -> Result<QueryResult, SnowflakeError> {
        let data = self.submit(ticket).await?;
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
        let time_zone =
            parameter(&data["parameters"], "TIMEZONE").unwrap_or_else(|| self.time_zone.clone());
        let rowtype: Vec<RowType> = serde_json::from_value(field("rowtype")?)
            .map_err(|e| SnowflakeError::Decode(format!("rowtype: {e}")))?;
        let schema = decoded_schema(&rowtype, &time_zone)
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
            // Budget is reserved strictly in chunk order (so a later chunk can
            // never hold what an earlier one needs); each download then runs as
            // its own task, so inflating and decoding use every core.
            let mut downloads = stream::iter(chunks.into_iter().enumerate())
                .then(move |(i, chunk)| {
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
                        let permit = budget.acquire_many_owned(cost).await;
                        AbortOnDrop(tokio::spawn(async move {
                            let permit = permit
                                .map_err(|_| SnowflakeError::Http("download cancelled".into()))?;
                            let batches =
                                download_chunk(&http, &headers, &chunk, i, &rowtype, &schema)
                                    .await?;
                            Ok((batches, permit))
                        }))
                    }
                })
                .map(|task| async move {
                    task.join().await.unwrap_or_else(|e| {
                        Err(SnowflakeError::Http(format!(
                            "chunk download task failed: {e}"
                        )))
                    })
                })
                .buffered(prefetch)
                .boxed();
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
        let query = [("delete", "true".to_string()), ("request_id", request_id())];
        let _ = self
            .send(
                reqwest::Method::POST,
                &format!("{}/session", self.base_url),
                &query,
                Some(format!("Snowflake Token=\"{}\"", self.session_token())),
                None,
            )
            .await;
    }
}

fn transient(status: reqwest::StatusCode) -> bool {
    status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408
}

/// A task aborted when its handle is dropped: dropping the result stream
/// stops the downloads.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
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
        if transient(status) {
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
    crate::retry::backoff(attempt, Duration::from_millis(100), Duration::from_secs(5))
}
