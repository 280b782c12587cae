//! Key-pair authentication: the JWT Snowflake's `SNOWFLAKE_JWT`
//! authenticator expects, signed RS256 with the user's RSA private key
//! (PKCS#8 PEM, encrypted or not, or PKCS#1).

use std::path::Path;

use base64::Engine;
use pkcs8::der::asn1::{AnyRef, BitStringRef};
use pkcs8::der::{Document, Encode};
use pkcs8::spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};
use pkcs8::{EncryptedPrivateKeyInfo, ObjectIdentifier};
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};

use super::SnowflakeError;

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// How long a login JWT is valid (the Python connector's default).
pub const JWT_LIFETIME_SECS: u64 = 60;

/// A loaded private key and the fingerprint Snowflake knows its public key by.
pub struct KeyPair {
    key: RsaKeyPair,
    /// `SHA256:<base64 of sha256(SubjectPublicKeyInfo DER)>`.
    fingerprint: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

fn key_error(path: &Path, message: impl std::fmt::Display) -> SnowflakeError {
    SnowflakeError::Config(format!("private key {}: {message}", path.display()))
}

impl KeyPair {
    /// Reads a PEM private key: `PRIVATE KEY`, `ENCRYPTED PRIVATE KEY`
    /// (PBES2, as `openssl pkcs8 -topk8 -v2 aes-256-cbc|des3` writes it) or
    /// `RSA PRIVATE KEY`. Errors name the file, never the passphrase.
    pub fn load(path: &Path, passphrase: Option<&str>) -> Result<KeyPair, SnowflakeError> {
        let pem = std::fs::read_to_string(path).map_err(|e| key_error(path, e))?;
        let (label, doc) =
            Document::from_pem(&pem).map_err(|e| key_error(path, format!("not a PEM key: {e}")))?;
        let key = match label {
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(doc.as_bytes())
                .map_err(|e| key_error(path, format!("not an RSA PKCS#8 key: {e}")))?,
            "ENCRYPTED PRIVATE KEY" => {
                let passphrase = passphrase.ok_or_else(|| {
                    key_error(path, "is encrypted; set private_key_passphrase or SNOWFLAKE_PRIVATE_KEY_PASSPHRASE")
                })?;
                let info = EncryptedPrivateKeyInfo::try_from(doc.as_bytes())
                    .map_err(|e| key_error(path, e))?;
                let plain = info.decrypt(passphrase).map_err(|_| {
                    key_error(
                        path,
                        "cannot decrypt it: wrong passphrase or unsupported cipher",
                    )
                })?;
                RsaKeyPair::from_pkcs8(plain.as_bytes())
                    .map_err(|e| key_error(path, format!("not an RSA PKCS#8 key: {e}")))?
            }
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(doc.as_bytes())
                .map_err(|e| key_error(path, format!("not an RSA PKCS#1 key: {e}")))?,
            other => {
                return Err(key_error(
                    path,
                    format!("PEM label `{other}` is not a private key"),
                ))
            }
        };
        let spki = SubjectPublicKeyInfoRef {
            algorithm: AlgorithmIdentifierRef {
                oid: RSA_ENCRYPTION,
                parameters: Some(AnyRef::NULL),
            },
            subject_public_key: BitStringRef::from_bytes(key.public().as_ref())
                .map_err(|e| key_error(path, e))?,
        }
        .to_der()
        .map_err(|e| key_error(path, e))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &spki);
        Ok(KeyPair {
            key,
            fingerprint: format!(
                "SHA256:{}",
                base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
            ),
        })
    }

    /// The public key's fingerprint, as `DESC USER` shows `RSA_PUBLIC_KEY_FP`.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// A login JWT for `user` of `account`, issued at `now` (unix seconds).
    pub fn jwt(&self, account: &str, user: &str, now: u64) -> Result<String, SnowflakeError> {
        let subject = format!("{}.{}", jwt_account(account), user.to_ascii_uppercase());
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "iss": format!("{subject}.{}", self.fingerprint),
            "sub": subject,
            "iat": now,
            "exp": now + JWT_LIFETIME_SECS,
        });
        let payload = b64.encode(claims.to_string());
        let signed = format!("{header}.{payload}");
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signed.as_bytes(),
                &mut signature,
            )
            .map_err(|_| SnowflakeError::Config("signing the login JWT failed".into()))?;
        Ok(format!("{signed}.{}", b64.encode(signature)))
    }
}

/// The account as JWT claims name it: upper case, without region or cloud
/// suffixes (`xy12345.us-east-2.aws` → `XY12345`; `org-acct.global` → `ORG`).
pub fn jwt_account(account: &str) -> String {
    let account = if account.contains(".global") {
        account.split('-').next().unwrap_or(account)
    } else {
        account.split('.').next().unwrap_or(account)
    };
    account.to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/keys")
            .join(name)
    }

    #[test]
    fn encrypted_and_plain_forms_of_one_key_have_one_fingerprint() {
        let plain = KeyPair::load(&fixture("rsa_key.p8"), None).unwrap();
        for f in ["rsa_key_aes.p8", "rsa_key_des3.p8"] {
            let k = KeyPair::load(&fixture(f), Some("floe-test-passphrase")).unwrap();
            assert_eq!(k.fingerprint(), plain.fingerprint(), "{f}");
        }
        let other = KeyPair::load(&fixture("other_key.p8"), None).unwrap();
        assert_ne!(other.fingerprint(), plain.fingerprint());
    }

    #[test]
    fn the_fingerprint_is_sha256_of_the_public_key_file() {
        // rsa_key.pub is openssl's SubjectPublicKeyInfo for the same key.
        let pem = std::fs::read_to_string(fixture("rsa_key.pub")).unwrap();
        let (_, doc) = Document::from_pem(&pem).unwrap();
        let digest = ring::digest::digest(&ring::digest::SHA256, doc.as_bytes());
        let expected = format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
        );
        assert_eq!(
            KeyPair::load(&fixture("rsa_key.p8"), None)
                .unwrap()
                .fingerprint(),
            expected
        );
    }

    #[test]
    fn wrong_or_missing_passphrases_say_so_without_echoing_it() {
        let e = KeyPair::load(&fixture("rsa_key_aes.p8"), Some("not-the-passphrase")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("rsa_key_aes.p8") && msg.contains("wrong passphrase"),
            "{msg}"
        );
        assert!(!msg.contains("not-the-passphrase"));
        let e = KeyPair::load(&fixture("rsa_key_aes.p8"), None).unwrap_err();
        assert!(e.to_string().contains("is encrypted"), "{e}");
        let e = KeyPair::load(&fixture("README.md"), None).unwrap_err();
        assert!(e.to_string().contains("not a PEM key"), "{e}");
    }

    #[test]
    fn the_jwt_names_account_and_user_as_snowflake_expects() {
        let k = KeyPair::load(&fixture("rsa_key.p8"), None).unwrap();
        let jwt = k
            .jwt("xy12345.us-east-2.aws", "etl_user", 1_700_000_000)
            .unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts[1])
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["sub"], "XY12345.ETL_USER");
        assert_eq!(
            claims["iss"],
            format!("XY12345.ETL_USER.{}", k.fingerprint())
        );
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            60
        );
        assert_eq!(jwt_account("myorg-acct.global"), "MYORG");
    }
}
