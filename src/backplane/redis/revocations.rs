//! Redis revocations ([`Revocations`]): `P:revoked:{user}` holds the moment
//! (Unix ms) at or before which the user's tokens are refused, with the
//! revocation TTL; `P:revoked:{user}:jti:JTI` marks one token until it
//! expires. Both live in the user's slot with the user's channel, where the
//! `revoked` envelope is published right after the key is written, so every
//! node holding a connection of the user closes it. A handshake reads both
//! keys in one `MGET`.

use std::time::Duration;

use async_trait::async_trait;

use super::super::{now_ms, Result, Revocation, Revocations};
use super::{envelope, RedisBackplane, Shared};

impl Shared {
    /// Publishes `payload` on `user`'s channel (the nodes of the user's
    /// connections).
    async fn publish_user(&self, user: &str, payload: Vec<u8>) -> Result<()> {
        let _: i64 = self
            .cmd(
                "revoke",
                redis::cmd(self.publish_command())
                    .arg(self.keys.user_channel(user))
                    .arg(payload)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Revocations for RedisBackplane {
    async fn revoke_user(&self, user: &str, at_ms: u64, ttl: Duration) -> Result<()> {
        let s = &self.shared;
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let _: () = s
            .cmd(
                "revoke",
                redis::cmd("SET")
                    .arg(s.keys.revoked_user(user))
                    .arg(at_ms)
                    .arg("PX")
                    .arg(ttl_ms)
                    .to_owned(),
            )
            .await?;
        s.publish_user(user, envelope::revoked(user, Some(at_ms), None))
            .await
    }

    async fn revoke_token(&self, user: &str, jti: &str, until_ms: u64) -> Result<()> {
        let s = &self.shared;
        let ttl_ms = until_ms.saturating_sub(now_ms()).max(1000);
        let _: () = s
            .cmd(
                "revoke",
                redis::cmd("SET")
                    .arg(s.keys.revoked_token(user, jti))
                    .arg(1)
                    .arg("PX")
                    .arg(ttl_ms)
                    .to_owned(),
            )
            .await?;
        s.publish_user(user, envelope::revoked(user, None, Some(jti)))
            .await
    }

    async fn revocation(&self, user: &str, jti: Option<&str>) -> Result<Revocation> {
        let s = &self.shared;
        let mut cmd = redis::cmd("MGET");
        cmd.arg(s.keys.revoked_user(user));
        if let Some(jti) = jti {
            cmd.arg(s.keys.revoked_token(user, jti));
        }
        let values: Vec<Option<u64>> = s.cmd("revocation", cmd).await?;
        Ok(Revocation {
            user_at_ms: values.first().copied().flatten(),
            token_revoked: values.get(1).copied().flatten().is_some(),
        })
    }
}
