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
//!
//! The module's rooms: `auth` (logging in and keeping the session's
//! tokens fresh), `transport` (one REST call: headers, retries, renewal),
//! this file (a statement's lifecycle: submit, poll, abort), `result`
//! (a result's inline rows and chunk downloads), [`keypair`] (JWTs).

mod auth;
pub mod keypair;
mod result;
mod transport;

use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

use auth::{Credentials, Tokens};
pub use result::{ChunkRef, QueryResult};
use transport::request_id;

/// How often a running query is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

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
    /// The statement ran past `[snowflake] query_timeout`; floe asked
    /// Snowflake to cancel it.
    #[error("Snowflake query {query_id} still running after {waited:?}; cancelled it (raise [snowflake] query_timeout if the query needs longer)")]
    QueryTimeout { query_id: String, waited: Duration },
    /// The result holds fewer (or more) rows than Snowflake said it has.
    #[error("Snowflake result of query {query_id} is incomplete: Snowflake counts {total} rows, {found}")]
    Incomplete {
        query_id: String,
        total: u64,
        found: String,
    },
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
    /// `[snowflake] query_timeout`: how long [`SnowflakeSession::submit`] polls.
    query_timeout: Duration,
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

impl SnowflakeSession {
    /// Runs a statement whose result does not matter (e.g. `ALTER SESSION`).
    pub async fn execute(&self, sql: &str) -> Result<(), SnowflakeError> {
        self.submit(&QueryTicket::new(sql)).await.map(|_| ())
    }

    /// Submits a statement and waits for it, polling while Snowflake keeps
    /// it running, at most `query_timeout` (then it is cancelled on the server).
    async fn submit(&self, ticket: &QueryTicket) -> Result<Value, SnowflakeError> {
        let started = std::time::Instant::now();
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
            let query_id = data["queryId"].as_str().unwrap_or("");
            tracing::debug!(query_id, "query still running");
            let waited = started.elapsed();
            if waited >= self.query_timeout {
                self.abort(ticket).await;
                return Err(SnowflakeError::QueryTimeout {
                    query_id: query_id.to_string(),
                    waited,
                });
            }
            tokio::time::sleep(POLL_INTERVAL.min(self.query_timeout - waited)).await;
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
        QueryResult::from_answer(&data, &self.time_zone)
    }
}

fn parameter(params: &Value, name: &str) -> Option<String> {
    params.as_array()?.iter().find_map(|p| {
        (p["name"].as_str() == Some(name))
            .then(|| p["value"].as_str().map(str::to_string))
            .flatten()
    })
}
