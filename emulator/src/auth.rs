//! Logins as Snowflake answers them: password, key-pair JWT and OAuth;
//! session tokens that expire and are renewed with the master token.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use pkcs8::der::{Decode, Document};
use pkcs8::spki::SubjectPublicKeyInfoRef;
use schemas::snowflake::GeographyFormat;
use serde_json::{json, Value};

use crate::{failure, success, AppState, Session, TIME_ZONE};

/// A user the emulator accepts, with whichever credentials it may use.
#[derive(Debug, Clone, Default)]
pub struct User {
    /// Compared case-insensitively, as Snowflake compares user names.
    pub name: String,
    pub password: Option<String>,
    /// `RSA_PUBLIC_KEY`: a SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`).
    pub rsa_public_key: Option<String>,
    /// An OAuth access token issued to this user.
    pub oauth_token: Option<String>,
}

/// A user's public key, parsed once at start.
#[derive(Debug, Clone)]
pub(crate) struct PublicKey {
    /// `SHA256:<base64 of sha256(SPKI DER)>`, as the JWT issuer names it.
    fingerprint: String,
    /// The PKCS#1 RSAPublicKey inside the SPKI, as ring verifies with it.
    rsa: Vec<u8>,
}

impl PublicKey {
    pub(crate) fn from_pem(pem: &str) -> Result<PublicKey, String> {
        let (label, doc) = Document::from_pem(pem).map_err(|e| format!("public key PEM: {e}"))?;
        if label != "PUBLIC KEY" {
            return Err(format!(
                "public key PEM is `{label}`, expected `PUBLIC KEY` (SubjectPublicKeyInfo)"
            ));
        }
        let spki = SubjectPublicKeyInfoRef::from_der(doc.as_bytes())
            .map_err(|e| format!("public key: {e}"))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, doc.as_bytes());
        Ok(PublicKey {
            fingerprint: format!(
                "SHA256:{}",
                base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
            ),
            rsa: spki.subject_public_key.raw_bytes().to_vec(),
        })
    }
}

/// Checks a key-pair JWT as Snowflake does: RS256 signature by the user's
/// key, `iss` = `<ACCOUNT>.<USER>.<fingerprint>`, `sub` = `<ACCOUNT>.<USER>`,
/// not expired, lifetime at most an hour. Returns the user name.
pub(crate) fn verify_jwt(
    jwt: &str,
    keys: &[(String, PublicKey)],
    now: u64,
) -> Result<String, String> {
    let mut parts = jwt.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT".into());
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let decode_json = |part: &str| -> Result<Value, String> {
        let bytes = b64.decode(part).map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    };
    let header = decode_json(header)?;
    if header["alg"].as_str() != Some("RS256") {
        return Err("only RS256 is accepted".into());
    }
    let claims = decode_json(payload)?;
    let sub = claims["sub"].as_str().ok_or("no sub")?;
    let iss = claims["iss"].as_str().ok_or("no iss")?;
    let (account_user, fingerprint) = iss.rsplit_once('.').ok_or("bad iss")?;
    if account_user != sub {
        return Err("iss and sub name different users".into());
    }
    let user = sub.split_once('.').map(|(_, u)| u).ok_or("bad sub")?;
    let iat = claims["iat"].as_u64().ok_or("no iat")?;
    let exp = claims["exp"].as_u64().ok_or("no exp")?;
    if exp <= now || iat > now + 60 || exp.saturating_sub(iat) > 3600 {
        return Err("expired or too long-lived".into());
    }
    let (name, key) = keys
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(user))
        .ok_or("no key-pair user of that name")?;
    if key.fingerprint != fingerprint {
        return Err("fingerprint does not match the user's public key".into());
    }
    let signature = b64.decode(signature).map_err(|e| e.to_string())?;
    let signed = &jwt[..jwt.len() - jwt.rsplit('.').next().map_or(0, str::len) - 1];
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, &key.rsa)
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| "bad signature".to_string())?;
    Ok(name.clone())
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn parameters(geography: GeographyFormat) -> Value {
    json!([
        { "name": "TIMEZONE", "value": TIME_ZONE },
        { "name": "CLIENT_PREFETCH_THREADS", "value": 4 },
        { "name": "GEOGRAPHY_OUTPUT_FORMAT", "value": geography.to_string() },
        { "name": "CLIENT_RESULT_CHUNK_SIZE", "value": 160 }
    ])
}

fn login_failed(code: &str, message: &str) -> Response {
    failure(code, message, json!({ "nextAction": "RETRY_LOGIN" })).into_response()
}

pub(crate) async fn login(State(state): State<Arc<AppState>>, Json(body): Json<Value>) -> Response {
    let data = &body["data"];
    let fault = state.with_faults(|f| crate::faults::Faults::take(&mut f.login_failure));
    state.with_stats(|s| s.logins += 1);
    if fault {
        state.with_stats(|s| s.failed_logins += 1);
        return (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response();
    }
    let login_name = data["LOGIN_NAME"].as_str().unwrap_or("");
    let authenticator = data["AUTHENTICATOR"]
        .as_str()
        .unwrap_or("SNOWFLAKE")
        .to_ascii_uppercase();
    let user = match authenticator.as_str() {
        "SNOWFLAKE" => {
            let password = data["PASSWORD"].as_str().unwrap_or("");
            state
                .users
                .iter()
                .find(|u| {
                    u.name.eq_ignore_ascii_case(login_name)
                        && u.password.as_deref() == Some(password)
                })
                .map(|u| u.name.clone())
                .ok_or(("390100", "Incorrect username or password was specified."))
        }
        "SNOWFLAKE_JWT" => {
            let jwt = data["TOKEN"].as_str().unwrap_or("");
            verify_jwt(jwt, &state.keys, unix_now())
                .inspect_err(|reason| tracing::info!("JWT refused: {reason}"))
                .map_err(|_| ("390144", "JWT token is invalid."))
        }
        "OAUTH" => {
            let token = data["TOKEN"].as_str().unwrap_or("");
            state
                .users
                .iter()
                .find(|u| {
                    u.oauth_token.as_deref() == Some(token)
                        && (login_name.is_empty() || u.name.eq_ignore_ascii_case(login_name))
                })
                .map(|u| u.name.clone())
                .ok_or(("390303", "Invalid OAuth access token."))
        }
        _ => Err((
            "390100",
            "The authenticator is not supported by this emulator (SNOWFLAKE, SNOWFLAKE_JWT, OAUTH).",
        )),
    };
    let user = match user {
        Ok(u) => u,
        Err((code, message)) => {
            state.with_stats(|s| s.failed_logins += 1);
            return login_failed(code, message);
        }
    };
    let mut geography = GeographyFormat::default();
    if let Some(v) = data["SESSION_PARAMETERS"]["GEOGRAPHY_OUTPUT_FORMAT"].as_str() {
        geography = v.parse().unwrap_or_default();
    }
    let (token, master) = (state.new_id(), state.new_id());
    state.with_sessions(|sessions| {
        sessions.insert(
            token.clone(),
            Session {
                master: master.clone(),
                expires: Instant::now() + state.session_validity,
                geography,
                use_cached_result: true,
                queries: Vec::new(),
            },
        )
    });
    success(json!({
        "token": token,
        "validityInSeconds": state.session_validity.as_secs(),
        "masterToken": master,
        "masterValidityInSeconds": 14400,
        "sessionId": state.next_number(),
        "parameters": parameters(geography),
        "sessionInfo": { "databaseName": "GRID", "schemaName": "PUBLIC", "warehouseName": "EMULATOR_WH", "roleName": "FLOE" },
        "serverVersion": "floe-emulator",
        "displayUserName": user.to_uppercase(),
        "firstLogin": false,
        "healthCheckInterval": 45
    }))
    .into_response()
}

/// The token from `Authorization: Snowflake Token="..."`.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Snowflake Token=\"")?
        .strip_suffix('"')
}

pub(crate) fn session_expired() -> Json<Value> {
    failure(
        "390112",
        "Your session has expired. Please login again.",
        json!({ "errorCode": "390112" }),
    )
}

/// `POST /session/token-request`: a new session token for the master token.
pub(crate) async fn token_request(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    let Some(master) = bearer(&headers).map(str::to_string) else {
        return failure("390113", "Master token not found.", Value::Null);
    };
    if state.with_faults(|f| std::mem::take(&mut f.expire_master)) {
        return failure("390114", "Master token expired.", Value::Null);
    }
    let old = body["oldSessionToken"].as_str().unwrap_or("").to_string();
    let new_token = state.new_id();
    let validity = state.session_validity;
    let renewed = state.with_sessions(|sessions| {
        let session = sessions.remove(&old).filter(|s| s.master == master)?;
        sessions.insert(
            new_token.clone(),
            Session {
                expires: Instant::now() + validity,
                ..session
            },
        );
        Some(())
    });
    if renewed.is_none() {
        return failure("390115", "Master token is invalid.", Value::Null);
    }
    state.with_stats(|s| s.renewals += 1);
    success(json!({
        "sessionToken": new_token,
        "validityInSecondsST": validity.as_secs(),
        "masterToken": master,
        "validityInSecondsMT": 14400,
        "sessionId": state.next_number(),
    }))
}

/// `POST /session?delete=true`: ends the session and frees its results.
pub(crate) async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Json<Value> {
    let Some(token) = bearer(&headers) else {
        return session_expired();
    };
    let Some(session) = state.with_sessions(|s| s.remove(token)) else {
        return session_expired();
    };
    state.with_results(|results| {
        for q in &session.queries {
            results.remove(q);
        }
    });
    state.with_stats(|s| s.logouts += 1);
    success(Value::Null)
}

/// Default lifetime of a session token.
pub const SESSION_VALIDITY: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_public_key_parses_and_has_an_openssl_fingerprint() {
        let pem = include_str!("../../tests/fixtures/keys/rsa_key.pub");
        let key = PublicKey::from_pem(pem).unwrap();
        assert!(key.fingerprint.starts_with("SHA256:"));
        // base64 of a 32-byte digest is 44 characters.
        assert_eq!(key.fingerprint.len(), "SHA256:".len() + 44);
        assert!(PublicKey::from_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        .is_err());
    }

    #[test]
    fn malformed_jwts_are_refused() {
        let key =
            PublicKey::from_pem(include_str!("../../tests/fixtures/keys/rsa_key.pub")).unwrap();
        let keys = vec![("floe".to_string(), key)];
        assert!(verify_jwt("a.b", &keys, unix_now()).is_err());
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"none"}"#);
        let claims = b64.encode(br#"{"sub":"A.FLOE","iss":"A.FLOE.SHA256:x","iat":1,"exp":2}"#);
        assert_eq!(
            verify_jwt(&format!("{header}.{claims}.sig"), &keys, unix_now()).unwrap_err(),
            "only RS256 is accepted"
        );
    }
}
