//! Asking Snowflake whether a table changed, on one session kept across ticks.

use std::sync::Arc;

use schemas::config::Config;

use crate::run::KeptSession;
use crate::source::snowflake::{SnowflakeError, SnowflakeSession};

/// The Snowflake session the change checks share, kept across ticks (its
/// token is renewed by the client) and logged in again only after an error.
pub(super) struct ChangeTokens {
    config: schemas::config::SnowflakeConfig,
    session: Option<Arc<SnowflakeSession>>,
}

impl ChangeTokens {
    pub(super) fn new(config: &Config) -> ChangeTokens {
        ChangeTokens {
            config: config.snowflake.clone(),
            session: None,
        }
    }

    /// `SYSTEM$LAST_CHANGE_COMMIT_TIME(object)`: a metadata lookup, no
    /// warehouse.
    pub(super) async fn token(&mut self, object: &str) -> Result<Option<String>, SnowflakeError> {
        if self.session.is_none() {
            self.session = Some(Arc::new(SnowflakeSession::login(&self.config).await?));
        }
        let Some(session) = &self.session else {
            return Err(SnowflakeError::Decode("no session".into()));
        };
        match crate::incremental::window::change_token(session, object).await {
            Ok(t) => Ok(t),
            Err(e) => {
                self.close().await;
                Err(e)
            }
        }
    }

    /// The session, for runs to read their windows on.
    pub(super) fn kept(&self) -> Option<KeptSession> {
        self.session.as_ref().map(|s| KeptSession(Arc::clone(s)))
    }

    /// Logs out (once no run still uses the session; else the last one's
    /// drop ends it with the process).
    pub(super) async fn close(&mut self) {
        if let Some(s) = self.session.take() {
            if let Ok(s) = Arc::try_unwrap(s) {
                s.logout().await;
            }
        }
    }
}
