//! The revocation contract (PROTOCOL §8): a user's tokens issued at or
//! before a moment, or one token by its id, are refused from then on by
//! every node, for as long as such tokens could still be valid; and every
//! node holding a connection of the user hears of it at once (an
//! [`Event::Revoked`](super::Event::Revoked) on the user's topic) and closes
//! the connections it covers.

use std::time::Duration;

use async_trait::async_trait;

use super::Result;

/// What is revoked of one user, as a handshake needs to know it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Revocation {
    /// Tokens issued at or before this Unix ms are refused.
    pub user_at_ms: Option<u64>,
    /// The presented token's id is revoked.
    pub token_revoked: bool,
}

/// Token revocations, shared by every node.
#[async_trait]
pub trait Revocations: Send + Sync + 'static {
    /// Revokes `user`'s tokens issued at or before `at_ms`, kept for `ttl`,
    /// and tells the nodes of the user's connections.
    async fn revoke_user(&self, user: &str, at_ms: u64, ttl: Duration) -> Result<()>;

    /// Revokes one token of `user` by its id until `until_ms` (its expiry),
    /// and tells the nodes of the user's connections.
    async fn revoke_token(&self, user: &str, jti: &str, until_ms: u64) -> Result<()>;

    /// What is revoked of `user` (and of the token `jti`, when given).
    async fn revocation(&self, user: &str, jti: Option<&str>) -> Result<Revocation>;
}
