//! Logging in (password, key-pair JWT, OAuth) and keeping the session's
//! tokens fresh: an expired session token is renewed with the master token;
//! a refused master token means logging in again.

use schemas::config::Secret;
use std::sync::Mutex;
use std::time::Duration;

use schemas::config::SnowflakeConfig;
use schemas::snowflake::GeographyFormat;
use serde_json::{json, Value};

use super::keypair::{self, KeyPair};
use super::transport::{http_err, request_id};
use super::{parameter, SnowflakeError, SnowflakeSession};

/// How this session proves who it is (kept for re-login when the master token expires).
pub(super) enum Credentials {
    Password(Secret),
    KeyPair(Box<KeyPair>),
    OAuth(Secret),
}

pub(super) struct Tokens {
    session: String,
    master: String,
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
                    cfg.private_key_passphrase.as_ref().map(Secret::expose),
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
            query_timeout: cfg.query_timeout,
        };
        let data = session.authenticate().await?;
        crate::counters::login();
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
    pub(super) async fn authenticate(&self) -> Result<Value, SnowflakeError> {
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
            Credentials::Password(p) => data["PASSWORD"] = json!(p.expose()),
            Credentials::KeyPair(k) => {
                data["AUTHENTICATOR"] = json!("SNOWFLAKE_JWT");
                data["TOKEN"] = json!(k.jwt(&self.account, &self.user, unix_now())?);
            }
            Credentials::OAuth(t) => {
                data["AUTHENTICATOR"] = json!("OAUTH");
                data["TOKEN"] = json!(t.expose());
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

    pub(super) fn session_token(&self) -> String {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .session
            .clone()
    }

    /// A new session token from the master token; a full login if that fails.
    pub(super) async fn renew(&self, expired: &str) -> Result<(), SnowflakeError> {
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
