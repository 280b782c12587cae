//! One REST call to Snowflake: its headers, retries of transient failures
//! with backoff, and one replay after renewing an expired session token.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{SnowflakeError, SnowflakeSession};

/// Attempts per REST call on transient HTTP failures (5xx, 429, 408, connection errors).
const CALL_ATTEMPTS: u32 = 5;

const SESSION_EXPIRED: &str = "390112";

#[derive(Deserialize)]
pub(super) struct Envelope {
    pub(super) data: Option<Value>,
    pub(super) code: Option<String>,
    pub(super) message: Option<String>,
    pub(super) success: bool,
}

impl Envelope {
    pub(super) fn code(&self) -> &str {
        self.code.as_deref().unwrap_or("")
    }
}

pub(super) fn http_err(e: reqwest::Error) -> SnowflakeError {
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

impl SnowflakeSession {
    /// A REST call with the session token; an expired token is renewed and the call replayed once.
    pub(super) async fn call(
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
    pub(super) async fn send(
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
}

pub(super) fn transient(status: reqwest::StatusCode) -> bool {
    status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408
}

/// A fresh request id (UUID-shaped, random enough for request correlation).
pub(super) fn request_id() -> String {
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

/// Exponential backoff from 100 ms, capped at 5 s, with up to 50% jitter.
pub(super) fn backoff(attempt: u32) -> Duration {
    crate::retry::backoff(attempt, Duration::from_millis(100), Duration::from_secs(5))
}
