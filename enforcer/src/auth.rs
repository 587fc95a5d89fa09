//! Per-route authentication: API keys or JWT bearer tokens (HS256 / RS256, keys from files).

use std::collections::HashSet;

use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::AuthConfig;

/// Why a request was not authenticated (the client's fault: 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials.
    #[error("missing credentials")]
    Missing,
    /// Credentials present but not accepted.
    #[error("invalid credentials: {0}")]
    Invalid(String),
}

/// A route's authenticator, built once from config.
pub struct Authenticator {
    api_keys: Option<(http::HeaderName, HashSet<String>)>,
    jwt: Option<(DecodingKey, Validation)>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field(
                "api_keys",
                &self.api_keys.as_ref().map(|(h, k)| (h, k.len())),
            )
            .field("jwt", &self.jwt.is_some())
            .finish()
    }
}

impl Authenticator {
    /// Loads keys from the files the config names.
    pub fn load(config: &AuthConfig) -> Result<Self, String> {
        let api_keys = match &config.api_keys {
            None => None,
            Some(c) => {
                let text = std::fs::read_to_string(&c.keys_file).map_err(|e| {
                    format!("auth.api_keys.keys_file {}: {e}", c.keys_file.display())
                })?;
                let keys: HashSet<String> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned)
                    .collect();
                if keys.is_empty() {
                    return Err(format!(
                        "auth.api_keys.keys_file {} holds no keys",
                        c.keys_file.display()
                    ));
                }
                let header = http::HeaderName::from_bytes(c.header.to_ascii_lowercase().as_bytes())
                    .map_err(|e| format!("auth.api_keys.header {:?}: {e}", c.header))?;
                Some((header, keys))
            }
        };
        let jwt = match &config.jwt {
            None => None,
            Some(c) => {
                let bytes = std::fs::read(&c.key_file)
                    .map_err(|e| format!("auth.jwt.key_file {}: {e}", c.key_file.display()))?;
                let (key, alg) = match c.algorithm.as_str() {
                    "HS256" => (
                        DecodingKey::from_secret(trim_ascii(&bytes)),
                        Algorithm::HS256,
                    ),
                    "RS256" => (
                        DecodingKey::from_rsa_pem(&bytes).map_err(|e| {
                            format!("auth.jwt.key_file: not an RSA public key PEM: {e}")
                        })?,
                        Algorithm::RS256,
                    ),
                    other => {
                        return Err(format!("auth.jwt.algorithm {other:?}: use HS256 or RS256"));
                    }
                };
                let mut validation = Validation::new(alg);
                if let Some(iss) = &c.issuer {
                    validation.set_issuer(&[iss]);
                }
                match &c.audience {
                    Some(aud) => validation.set_audience(&[aud]),
                    None => validation.validate_aud = false,
                }
                Some((key, validation))
            }
        };
        Ok(Self { api_keys, jwt })
    }

    /// Whether the route requires anything.
    pub fn is_open(&self) -> bool {
        self.api_keys.is_none() && self.jwt.is_none()
    }

    /// Checks the request; on success returns the JWT claims (empty without JWT).
    pub fn check(&self, headers: &HeaderMap) -> Result<Map<String, Value>, AuthError> {
        if let Some((header, keys)) = &self.api_keys {
            let got = headers.get(header).ok_or(AuthError::Missing)?;
            let got = got
                .to_str()
                .map_err(|_| AuthError::Invalid("api key is not text".into()))?;
            if !keys.contains(got) {
                return Err(AuthError::Invalid("unknown api key".into()));
            }
        }
        let Some((key, validation)) = &self.jwt else {
            return Ok(Map::new());
        };
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or(AuthError::Missing)?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| AuthError::Invalid("expected a Bearer token".into()))?;
        jsonwebtoken::decode::<Map<String, Value>>(token.trim(), key, validation)
            .map(|data| data.claims)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

/// A claim value as a dimension value (strings as is, numbers and booleans printed).
pub fn claim_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};

    use super::*;
    use crate::config::{ApiKeysConfig, JwtConfig};

    fn temp_file(name: &str, content: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("enforcer-auth-{}-{name}", std::process::id()));
        std::fs::write(&dir, content).unwrap();
        dir
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn api_keys() {
        let file = temp_file("keys", "# comment\nk1\n k2 \n");
        let auth = Authenticator::load(&AuthConfig {
            api_keys: Some(ApiKeysConfig {
                header: "X-Api-Key".into(),
                keys_file: file,
            }),
            jwt: None,
        })
        .unwrap();
        assert!(auth.check(&headers(&[("x-api-key", "k2")])).is_ok());
        assert_eq!(auth.check(&headers(&[])), Err(AuthError::Missing));
        assert!(matches!(
            auth.check(&headers(&[("x-api-key", "nope")])),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn hs256_jwt_with_claims() {
        let file = temp_file("secret", "s3cret\n");
        let auth = Authenticator::load(&AuthConfig {
            api_keys: None,
            jwt: Some(JwtConfig {
                algorithm: "HS256".into(),
                key_file: file,
                issuer: Some("idp".into()),
                audience: None,
            }),
        })
        .unwrap();
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        let claims = serde_json::json!({"sub": "u1", "tenant": "acme", "iss": "idp", "exp": exp});
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        let got = auth
            .check(&headers(&[("authorization", &format!("Bearer {token}"))]))
            .unwrap();
        assert_eq!(got.get("tenant").and_then(claim_value), Some("acme".into()));

        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"other"),
        )
        .unwrap();
        assert!(
            auth.check(&headers(&[("authorization", &format!("Bearer {forged}"))]))
                .is_err()
        );
        let wrong_iss = serde_json::json!({"iss": "evil", "exp": exp});
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &wrong_iss,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert!(
            auth.check(&headers(&[("authorization", &format!("Bearer {t}"))]))
                .is_err()
        );
        assert_eq!(auth.check(&headers(&[])), Err(AuthError::Missing));
    }

    #[test]
    fn unreadable_key_files_are_config_errors() {
        let err = Authenticator::load(&AuthConfig {
            api_keys: None,
            jwt: Some(JwtConfig {
                algorithm: "RS256".into(),
                key_file: "/nonexistent/key.pem".into(),
                issuer: None,
                audience: None,
            }),
        })
        .unwrap_err();
        assert!(err.contains("auth.jwt.key_file"), "{err}");
    }
}
