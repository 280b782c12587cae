//! Faults the emulator injects on request, so tests (and curious operators)
//! can watch a client recover from what real Snowflake and cloud storage do
//! now and then. Set by `--fault NAME[=VALUE]` on the command line or by
//! `POST /floe/faults` with `{"NAME": VALUE, ...}`; each fault is used up as
//! it fires. `GET /floe/stats` reports what the emulator saw.

use serde::Serialize;
use serde_json::Value;

/// Pending faults. Counters are decremented as faults fire.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Faults {
    /// The next N chunk downloads answer `503 Service Unavailable`.
    pub chunk_503: u32,
    /// The next `slow_chunks` chunk downloads wait this long before answering.
    pub slow_chunk_ms: u64,
    pub slow_chunks: u32,
    /// The next N chunk downloads send only the first half of the gzip body (HTTP 200).
    pub truncated_chunk: u32,
    /// The next N chunk downloads answer with a small gzip body that
    /// inflates to 1000 times the chunk's announced size.
    pub chunk_bomb: u32,
    /// The next N query answers with chunks leave their last chunk out of
    /// the chunk list (their `total` still counts its rows).
    pub dropped_chunk: u32,
    /// The next N query answers that read a table report their last column as of type
    /// `vector`, a Snowflake type floe does not read.
    pub unknown_type: u32,
    /// Every live session token expires now (the master token stays valid).
    pub expire_session: bool,
    /// The next renewal is refused as if the master token had expired
    /// (`390114`), so the client must log in again.
    pub expire_master: bool,
    /// The next query that reads a table keeps running for this many seconds: its answer is
    /// `333333` with a result URL to poll.
    pub long_query_secs: u64,
    /// The next N logins answer `503 Service Unavailable`.
    pub login_failure: u32,
    /// The next query fails with this Snowflake error code (e.g. `000606`, `003001`).
    pub query_error: Option<String>,
}

impl Faults {
    /// Sets one fault from its name (`chunk-503` or `chunk_503`) and value.
    pub fn set(&mut self, name: &str, value: Option<&str>) -> Result<(), String> {
        let count = |v: Option<&str>| -> Result<u32, String> {
            v.map_or(Ok(1), |v| {
                v.parse()
                    .map_err(|_| format!("fault {name}: `{v}` is not a count"))
            })
        };
        let number = |v: Option<&str>| -> Result<u64, String> {
            v.ok_or_else(|| format!("fault {name} needs a value"))?
                .parse()
                .map_err(|_| format!("fault {name}: not a number"))
        };
        match name.replace('-', "_").as_str() {
            "chunk_503" => self.chunk_503 = count(value)?,
            "slow_chunk_ms" | "slow_chunk" => {
                self.slow_chunk_ms = number(value)?;
                self.slow_chunks = self.slow_chunks.max(1);
            }
            "slow_chunks" => self.slow_chunks = count(value)?,
            "truncated_chunk" => self.truncated_chunk = count(value)?,
            "dropped_chunk" => self.dropped_chunk = count(value)?,
            "chunk_bomb" => self.chunk_bomb = count(value)?,
            "unknown_type" => self.unknown_type = count(value)?,
            "expire_session" => self.expire_session = value.is_none_or(|v| v != "false"),
            "expire_master" => self.expire_master = value.is_none_or(|v| v != "false"),
            "long_query_secs" | "long_query" => self.long_query_secs = number(value)?,
            "login_failure" => self.login_failure = count(value)?,
            "query_error" => {
                self.query_error = Some(
                    value
                        .ok_or_else(|| "fault query-error needs a Snowflake error code".to_string())?
                        .to_string(),
                )
            }
            other => {
                return Err(format!(
                    "unknown fault `{other}` (chunk-503, slow-chunk-ms, slow-chunks, truncated-chunk, dropped-chunk, chunk-bomb, unknown-type, expire-session, expire-master, long-query-secs, login-failure, query-error)"
                ))
            }
        }
        Ok(())
    }

    /// Parses `NAME[=VALUE]` as given on the command line.
    pub fn set_arg(&mut self, arg: &str) -> Result<(), String> {
        match arg.split_once('=') {
            Some((name, value)) => self.set(name, Some(value)),
            None => self.set(arg, None),
        }
    }

    /// Applies a control-endpoint body: `{"chunk_503": 2, "expire_session": true}`.
    pub fn set_json(&mut self, body: &Value) -> Result<(), String> {
        let map = body
            .as_object()
            .ok_or("faults: expected a JSON object of NAME: VALUE")?;
        for (name, value) in map {
            let text = match value {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                Value::Bool(b) => Some(b.to_string()),
                other => Some(other.to_string()),
            };
            self.set(name, text.as_deref())?;
        }
        Ok(())
    }

    /// Takes one unit of a counted fault, returning whether it fires.
    pub fn take(counter: &mut u32) -> bool {
        if *counter > 0 {
            *counter -= 1;
            true
        } else {
            false
        }
    }
}

/// What the emulator saw, for tests and `GET /floe/stats`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub logins: u64,
    pub failed_logins: u64,
    pub renewals: u64,
    pub queries: u64,
    /// Of those, the ones a warehouse would not run: `SELECT`s of change
    /// tokens and the clock only (what `floe watch` asks of an idle table).
    pub metadata_queries: u64,
    /// Queries answered from a persisted result (`USE_CACHED_RESULT`).
    pub cached_results: u64,
    pub result_polls: u64,
    pub chunk_requests: u64,
    pub logouts: u64,
    /// `requestId`s of aborted queries, in order.
    pub aborted: Vec<String>,
    /// Sessions logged in and not logged out.
    pub live_sessions: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_and_json_set_the_same_faults() {
        let mut a = Faults::default();
        for arg in [
            "chunk-503=2",
            "slow-chunk-ms=1500",
            "expire-session",
            "query-error=000606",
        ] {
            a.set_arg(arg).unwrap();
        }
        let mut b = Faults::default();
        b.set_json(&serde_json::json!({
            "chunk_503": 2, "slow_chunk_ms": 1500, "expire_session": true, "query_error": "000606"
        }))
        .unwrap();
        for f in [&a, &b] {
            assert_eq!(f.chunk_503, 2);
            assert_eq!((f.slow_chunk_ms, f.slow_chunks), (1500, 1));
            assert!(f.expire_session);
            assert_eq!(f.query_error.as_deref(), Some("000606"));
        }
    }

    #[test]
    fn unknown_faults_and_bad_values_are_refused_by_name() {
        let mut f = Faults::default();
        assert!(f.set_arg("chunk-404").unwrap_err().contains("chunk_404"));
        assert!(f.set_arg("chunk-503=many").unwrap_err().contains("many"));
        assert!(f
            .set_arg("long-query")
            .unwrap_err()
            .contains("needs a value"));
    }
}
