//! `--auth jwt`: tokens signed by the application's own backend (PROTOCOL
//! §8). Accepted: RS256/RS384/RS512, ES256/ES384 and EdDSA with public keys
//! from `--jwt-key` (PEM) or the JWKS document at `--jwks-url`
//! ([`super::jwks`]), and HS256 with `--jwt-secret` (every entry verifies).
//!
//! The header's `alg` picks the key family before anything is verified, and
//! each family has its own keys: an HS256 token is checked only against the
//! HS256 secrets, never against a public key's bytes (the classic algorithm
//! confusion), `alg: none` and every other algorithm are refused, and a JWKS
//! `oct` (symmetric) key is ignored. Claims: `sub` (the §1 name rule), `exp`
//! (required), `nbf` and `iat` when present, `iss` / `aud` when the flags
//! are given, optional `rooms` (names, or prefixes ending in `*`) and `role`.

use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::jwks::Jwks;
use super::{AuthError, Verified, MAX_TOKEN_BYTES};
use crate::protocol::is_valid_name;

/// The algorithms accepted with public keys, by family.
const RSA_ALGS: &[Algorithm] = &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];
const EC_ALGS: &[Algorithm] = &[Algorithm::ES256, Algorithm::ES384];

/// A public key's family: which algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// RSA: RS256, RS384, RS512.
    Rsa,
    /// EC P-256 or P-384: ES256, ES384 (a key of the other curve fails).
    Ec,
    /// Ed25519: EdDSA.
    Ed,
}

impl Family {
    /// The family an algorithm needs; `None` for HS256 and refused ones.
    pub fn of(alg: Algorithm) -> Option<Family> {
        if RSA_ALGS.contains(&alg) {
            Some(Family::Rsa)
        } else if EC_ALGS.contains(&alg) {
            Some(Family::Ec)
        } else if alg == Algorithm::EdDSA {
            Some(Family::Ed)
        } else {
            None
        }
    }
}

/// A public key that verifies tokens.
#[derive(Clone)]
pub struct PublicKey {
    /// Its `kid` (JWKS keys; PEM keys have none).
    pub kid: Option<String>,
    /// Its family.
    pub family: Family,
    /// The key.
    pub key: DecodingKey,
}

/// Reads every PEM block of `path` as a public key (RSA, EC or Ed25519).
/// The error is one line naming the problem.
pub fn load_pem_keys(path: &Path) -> Result<Vec<PublicKey>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_pem_keys(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Every PEM block of `text` as a public key.
pub fn parse_pem_keys(text: &str) -> Result<Vec<PublicKey>, String> {
    let mut keys = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let block = &rest[start..];
        let Some(end_at) = block.find("-----END ") else {
            return Err("a PEM block has no END line".into());
        };
        let Some(close) = block[end_at + 9..].find("-----") else {
            return Err("a PEM END line is not closed".into());
        };
        let end = end_at + 9 + close + 5;
        let pem = &block[..end];
        if pem.contains("PRIVATE KEY") {
            return Err("holds a private key; give relay the public key only".into());
        }
        let bytes = pem.as_bytes();
        let key = if let Ok(k) = DecodingKey::from_rsa_pem(bytes) {
            (Family::Rsa, k)
        } else if let Ok(k) = DecodingKey::from_ec_pem(bytes) {
            (Family::Ec, k)
        } else if let Ok(k) = DecodingKey::from_ed_pem(bytes) {
            (Family::Ed, k)
        } else {
            return Err(format!(
                "PEM block {} is not an RSA, EC or Ed25519 public key",
                keys.len() + 1
            ));
        };
        keys.push(PublicKey {
            kid: None,
            family: key.0,
            key: key.1,
        });
        rest = &block[end..];
    }
    if keys.is_empty() {
        return Err("no PEM public key found".into());
    }
    Ok(keys)
}

/// The claims relay reads from an application's token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppClaims {
    /// The user name.
    pub sub: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issue time, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience (a string or a list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    /// Token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Rooms (or `prefix*`) the user may join even when private.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    /// `admin`: may moderate every room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// Whether a `rooms` entry is a room name or a prefix ending in `*`.
fn valid_room_pattern(p: &str) -> bool {
    match p.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => {
            prefix.len() < 32
                && prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
                && prefix.starts_with(|c: char| c.is_ascii_alphanumeric())
        }
        None => is_valid_name(p),
    }
}

/// The settings of `--auth jwt`.
#[derive(Debug, Clone, Default)]
pub struct JwtSettings {
    /// HS256 secrets.
    pub secrets: Vec<String>,
    /// `--jwt-issuer`.
    pub issuer: Option<String>,
    /// `--jwt-audience`.
    pub audience: Option<String>,
    /// Allowed clock skew, seconds.
    pub leeway_secs: u64,
}

/// Verifies the application's tokens.
pub struct JwtKeys {
    settings: JwtSettings,
    hmac: Vec<DecodingKey>,
    pem: Vec<PublicKey>,
    jwks: Option<Arc<Jwks>>,
}

impl JwtKeys {
    /// Keys from PEM public keys, HS256 secrets and an optional JWKS.
    pub fn new(settings: JwtSettings, pem: Vec<PublicKey>, jwks: Option<Arc<Jwks>>) -> Self {
        let hmac = settings
            .secrets
            .iter()
            .map(|s| DecodingKey::from_secret(s.as_bytes()))
            .collect();
        JwtKeys {
            settings,
            hmac,
            pem,
            jwks,
        }
    }

    /// Verifies `token`: its algorithm against the keys of that family only,
    /// the signature, the time claims (with the leeway), `iss` / `aud` when
    /// configured, and the claims' shapes.
    pub async fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        self.check(token).await.map_err(|why| {
            tracing::debug!(why, "jwt refused");
            AuthError::InvalidToken
        })
    }

    /// [`JwtKeys::verify`] with the reason of a refusal.
    pub async fn check(&self, token: &str) -> Result<Verified, String> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(format!("token is over {MAX_TOKEN_BYTES} bytes"));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| format!("unreadable header or unsupported alg: {e}"))?;
        let alg = header.alg;
        let keys: Vec<DecodingKey> = if alg == Algorithm::HS256 {
            if self.hmac.is_empty() {
                return Err("HS256 token, but no --jwt-secret is configured".into());
            }
            self.hmac.clone()
        } else {
            let Some(family) = Family::of(alg) else {
                return Err(format!("algorithm {alg:?} is not accepted"));
            };
            let mut keys: Vec<DecodingKey> = self
                .pem
                .iter()
                .filter(|k| k.family == family)
                .map(|k| k.key.clone())
                .collect();
            if let Some(jwks) = &self.jwks {
                keys.extend(
                    jwks.keys_for(header.kid.as_deref(), family)
                        .await
                        .into_iter()
                        .map(|k| k.key),
                );
            }
            if keys.is_empty() {
                return Err(match header.kid {
                    Some(kid) => format!("no {family:?} key with kid `{kid}`"),
                    None => format!("no {family:?} key configured"),
                });
            }
            keys
        };
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = self.settings.leeway_secs;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if self.settings.issuer.is_some() {
            required.push("iss");
        }
        if self.settings.audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        match &self.settings.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &self.settings.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let mut last = String::from("no key verified the signature");
        for key in &keys {
            match jsonwebtoken::decode::<AppClaims>(token, key, &validation) {
                Ok(data) => return self.claims(data.claims),
                Err(e) => last = describe(&e),
            }
        }
        Err(last)
    }

    /// The checks on the claims themselves.
    fn claims(&self, c: AppClaims) -> Result<Verified, String> {
        if !is_valid_name(&c.sub) {
            return Err("`sub` breaks the name rule ^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$".into());
        }
        let now = crate::backplane::now_ms() / 1000;
        if let Some(iat) = c.iat {
            if iat > now + self.settings.leeway_secs {
                return Err("`iat` is in the future".into());
            }
        }
        let rooms = c.rooms.unwrap_or_default();
        if rooms.len() > 256 || !rooms.iter().all(|r| valid_room_pattern(r)) {
            return Err("`rooms` must be at most 256 room names or prefixes ending in `*`".into());
        }
        if let Some(role) = &c.role {
            if role.len() > 32 {
                return Err("`role` is too long".into());
            }
        }
        Ok(Verified {
            sub: c.sub,
            exp: c.exp,
            iat_ms: c.iat.map(|s| s * 1000),
            jti: c.jti,
            rooms,
            role: c.role,
        })
    }
}

/// A verification failure in words.
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidSignature => {
            "the signature does not verify with any configured key".into()
        }
        ErrorKind::ExpiredSignature => "expired (`exp` has passed)".into(),
        ErrorKind::ImmatureSignature => "not valid yet (`nbf` is in the future)".into(),
        ErrorKind::InvalidIssuer => "wrong issuer (`iss`)".into(),
        ErrorKind::InvalidAudience => "wrong audience (`aud`)".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("the `{c}` claim is missing"),
        ErrorKind::InvalidSubject => "bad `sub`".into(),
        other => format!("{other:?}"),
    }
}

/// What `relay token issue` signs.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// `sub`.
    pub user: String,
    /// Lifetime, seconds.
    pub ttl_secs: u64,
    /// `rooms`.
    pub rooms: Vec<String>,
    /// `role`.
    pub role: Option<String>,
    /// `iss`.
    pub issuer: Option<String>,
    /// `aud`.
    pub audience: Option<String>,
}

/// Signs an HS256 token with `secret` (the operators' and tests' helper).
pub fn issue_hs256(secret: &str, req: &IssueRequest) -> Result<String, String> {
    if !is_valid_name(&req.user) {
        return Err(format!("`{}` breaks the name rule", req.user));
    }
    if let Some(bad) = req.rooms.iter().find(|r| !valid_room_pattern(r)) {
        return Err(format!(
            "`{bad}` is not a room name or a prefix ending in `*`"
        ));
    }
    let now = crate::backplane::now_ms() / 1000;
    let claims = AppClaims {
        sub: req.user.clone(),
        exp: now + req.ttl_secs,
        iat: Some(now),
        nbf: None,
        iss: req.issuer.clone(),
        aud: req.audience.clone().map(serde_json::Value::String),
        jti: Some(crate::backplane::random_token()),
        rooms: (!req.rooms.is_empty()).then(|| req.rooms.clone()),
        role: req.role.clone(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_patterns() {
        for ok in ["general", "team-*", "*", "a.b_c-d"] {
            assert!(valid_room_pattern(ok), "{ok}");
        }
        for bad in ["", "-x*", "a b", "x**", "é*"] {
            assert!(!valid_room_pattern(bad), "{bad}");
        }
    }

    #[test]
    fn pem_files_without_public_keys_are_refused() {
        assert!(parse_pem_keys("").is_err());
        assert!(parse_pem_keys("-----BEGIN PUBLIC KEY-----\nAAAA\n").is_err());
        let private = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(parse_pem_keys(private).is_err_and(|e| e.contains("private key")));
    }

    #[tokio::test]
    async fn hs256_round_trip_and_confusion() {
        let secret = "s".repeat(32);
        let keys = JwtKeys::new(
            JwtSettings {
                secrets: vec![secret.clone()],
                leeway_secs: 0,
                ..Default::default()
            },
            Vec::new(),
            None,
        );
        let req = IssueRequest {
            user: "alice".into(),
            ttl_secs: 60,
            rooms: vec!["team-*".into()],
            role: Some("admin".into()),
            issuer: None,
            audience: None,
        };
        let token = issue_hs256(&secret, &req).unwrap();
        let v = keys.verify(&token).await.unwrap();
        assert_eq!(
            (v.sub.as_str(), v.role.as_deref()),
            ("alice", Some("admin"))
        );
        assert_eq!(v.rooms, vec!["team-*".to_owned()]);
        // Another secret's token, and a public-key algorithm with no keys.
        let other = issue_hs256(&"t".repeat(32), &req).unwrap();
        assert!(keys.verify(&other).await.is_err());
        let rs = format!(
            "{}.{}",
            "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9",
            token.split_once('.').unwrap().1
        );
        assert!(keys.check(&rs).await.unwrap_err().contains("no Rsa key"));
    }
}
