//! Accounts and tokens: Argon2id password hashes (per-user salt) and HS256
//! JWT login tokens signed with `--secret`. Several secrets may be given for
//! rotation: the first signs, all verify; each must be at least 32 bytes.
//! Also the node-wide bound on concurrent password hashes and the
//! constant-time API-key check. `--auth jwt` (the application's own tokens)
//! lives in [`jwt`] and [`jwks`]; both modes verify into one [`Verified`]
//! through a [`Verifier`].

pub mod jwks;
pub mod jwt;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::protocol::is_valid_name;

/// Password length bounds (characters).
pub const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 8..=128;

/// Errors of the auth layer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// Missing, malformed, forged or expired token.
    #[error("invalid or expired token")]
    InvalidToken,
    /// Hashing failed (should not happen).
    #[error("password hashing failed")]
    Hash,
}

/// Fewest bytes of a signing secret (PROTOCOL §11): HS256 keys shorter than
/// the hash are guessable offline from one token.
pub const MIN_SECRET_BYTES: usize = 32;

/// Checks the signing secrets given to `flag` (`--secret`): at least one,
/// none empty (`--secret NEW,` is a rotation typo that would accept tokens
/// signed with the empty key) and none shorter than [`MIN_SECRET_BYTES`].
/// The error is one line naming the flag.
pub fn check_secrets(flag: &str, secrets: &[String]) -> Result<(), String> {
    if secrets.is_empty() {
        return Err(format!("{flag} is empty"));
    }
    for (i, secret) in secrets.iter().enumerate() {
        let which = if secrets.len() == 1 {
            String::new()
        } else {
            format!(" (entry {} of {})", i + 1, secrets.len())
        };
        if secret.is_empty() {
            return Err(format!("{flag} has an empty entry{which}"));
        }
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "{flag} entry{which} is {} bytes; at least {MIN_SECRET_BYTES} are required",
                secret.len()
            ));
        }
    }
    Ok(())
}

/// Longest token accepted (bytes); longer ones are refused unread.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// Claims of a login token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user name.
    pub sub: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issue time, Unix seconds.
    pub iat: u64,
    /// Issue time, Unix ms (revocation compares in ms, so a token issued
    /// just after a revocation is not caught by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat_ms: Option<u64>,
    /// Token id (`POST /api/logout` revokes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// A verified token, whichever mode issued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The user name.
    pub sub: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issue time, Unix ms (`None`: the token has no `iat`).
    pub iat_ms: Option<u64>,
    /// Token id.
    pub jti: Option<String>,
    /// Rooms (or `prefix*`) the token lets the user join even when private.
    pub rooms: Vec<String>,
    /// The token's role (`admin`).
    pub role: Option<String>,
}

/// How a node verifies presented tokens.
pub enum Verifier {
    /// `--auth token`: relay's own login tokens (the account must exist).
    Token(TokenKeys),
    /// `--auth jwt`: the application's tokens; no relay account.
    Jwt(jwt::JwtKeys),
}

impl Verifier {
    /// Verifies a token.
    pub async fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        match self {
            Verifier::Token(keys) => keys.verify(token),
            Verifier::Jwt(keys) => keys.verify(token).await,
        }
    }

    /// Whether the user must have a relay account (token mode).
    pub fn needs_account(&self) -> bool {
        matches!(self, Verifier::Token(_))
    }

    /// Relay's own login tokens, in token mode.
    pub fn token_keys(&self) -> Option<&TokenKeys> {
        match self {
            Verifier::Token(keys) => Some(keys),
            Verifier::Jwt(_) => None,
        }
    }
}

/// Signs and verifies login tokens.
pub struct TokenKeys {
    signing: EncodingKey,
    verifying: Vec<DecodingKey>,
    ttl_secs: u64,
}

impl TokenKeys {
    /// Keys from the configured secrets (first signs, all verify).
    pub fn new(secrets: &[String], ttl_secs: u64) -> Option<Self> {
        let first = secrets.first()?;
        Some(TokenKeys {
            signing: EncodingKey::from_secret(first.as_bytes()),
            verifying: secrets
                .iter()
                .map(|s| DecodingKey::from_secret(s.as_bytes()))
                .collect(),
            ttl_secs,
        })
    }

    /// Issues a token for `user`; returns it with its expiry (Unix seconds).
    pub fn issue(&self, user: &str) -> Result<(String, u64), AuthError> {
        let now_ms = crate::backplane::now_ms();
        let now = now_ms / 1000;
        let claims = Claims {
            sub: user.to_owned(),
            iat: now,
            exp: now + self.ttl_secs,
            iat_ms: Some(now_ms),
            jti: Some(crate::backplane::random_token()),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.signing)
            .map_err(|_| AuthError::Hash)?;
        Ok((token, claims.exp))
    }

    /// Verifies a token's signature (with any key), algorithm and expiry.
    pub fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::InvalidToken);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        for key in &self.verifying {
            if let Ok(data) = jsonwebtoken::decode::<Claims>(token, key, &validation) {
                if is_valid_name(&data.claims.sub) {
                    let c = data.claims;
                    return Ok(Verified {
                        iat_ms: Some(c.iat_ms.unwrap_or(c.iat * 1000)),
                        sub: c.sub,
                        exp: c.exp,
                        jti: c.jti,
                        rooms: Vec::new(),
                        role: None,
                    });
                }
            }
        }
        Err(AuthError::InvalidToken)
    }
}

/// Most password hashes or verifications running at once on this node:
/// twice the CPUs, at least 2. Each Argon2id run holds 19 MiB.
pub fn max_concurrent_hashes() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() * 2)
        .unwrap_or(2)
        .max(2)
}

/// A turn to hash or verify a password; the turn ends when it is dropped.
pub type HashPermit = tokio::sync::OwnedSemaphorePermit;

/// Takes one of the node's [`max_concurrent_hashes`] turns, or `None` when
/// all are taken: the caller answers 503 `busy` instead of queueing (a
/// queue of logins would hold their requests and grow without bound).
pub fn try_hash_permit() -> Option<HashPermit> {
    static GATE: std::sync::OnceLock<std::sync::Arc<tokio::sync::Semaphore>> =
        std::sync::OnceLock::new();
    GATE.get_or_init(|| std::sync::Arc::new(tokio::sync::Semaphore::new(max_concurrent_hashes())))
        .clone()
        .try_acquire_owned()
        .ok()
}

/// Hashes a password with Argon2id and a random salt (PHC string).
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| AuthError::Hash)
}

/// Checks a password against a stored PHC hash.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash to verify against when the user does not exist, so that a login
/// for an unknown name costs as much as one with a wrong password.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("dummy-password-for-timing").unwrap_or_default())
}

/// Whether a password has an acceptable length.
pub fn valid_password(password: &str) -> bool {
    PASSWORD_CHARS.contains(&password.chars().count())
}

/// Constant-time comparison of a presented key with the configured ones.
pub fn key_matches(presented: &str, keys: &[String]) -> bool {
    let mut ok = subtle::Choice::from(0);
    for key in keys {
        ok |= presented.as_bytes().ct_eq(key.as_bytes());
    }
    ok.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert_ne!(h, hash_password("correct horse").unwrap(), "salted");
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn tokens_rotate_and_expire() {
        let old = TokenKeys::new(&["old-secret".into()], 60).unwrap();
        let rotated = TokenKeys::new(&["new-secret".into(), "old-secret".into()], 60).unwrap();
        let (t, exp) = old.issue("alice").unwrap();
        assert!(exp > 0);
        assert_eq!(
            rotated.verify(&t).unwrap().sub,
            "alice",
            "old tokens still verify"
        );
        let (t2, _) = rotated.issue("bob").unwrap();
        assert_eq!(
            old.verify(&t2),
            Err(AuthError::InvalidToken),
            "signed with the new key"
        );
        let other = TokenKeys::new(&["other".into()], 60).unwrap();
        assert_eq!(other.verify(&t), Err(AuthError::InvalidToken));
        assert_eq!(old.verify("garbage"), Err(AuthError::InvalidToken));
        let expired = TokenKeys::new(&["old-secret".into()], 0).unwrap();
        let (t3, _) = expired.issue("carol").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(old.verify(&t3), Err(AuthError::InvalidToken));
    }

    #[test]
    fn short_or_empty_secrets_are_refused() {
        let long = "x".repeat(MIN_SECRET_BYTES);
        assert!(check_secrets("--secret", std::slice::from_ref(&long)).is_ok());
        assert!(check_secrets("--secret", &[long.clone(), long.clone()]).is_ok());
        for bad in [
            vec![],
            vec![String::new()],
            vec![long.clone(), String::new()],
            vec!["x".repeat(MIN_SECRET_BYTES - 1)],
        ] {
            let e = check_secrets("--secret", &bad).unwrap_err();
            assert!(e.contains("--secret") && !e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn api_keys_compare() {
        let keys = vec!["k1".to_string(), "key-two".to_string()];
        assert!(key_matches("k1", &keys));
        assert!(key_matches("key-two", &keys));
        assert!(!key_matches("k", &keys));
        assert!(!key_matches("", &keys));
        assert!(!key_matches("anything", &[]));
    }
}
