//! Redis name claims ([`Names`]): a guest name's token and the instances
//! holding it, changed only by `claim_name.lua` / `release_name.lua`. Every
//! claim is recorded in the instance's name set first, so a reaper finds it
//! if the node dies.

use async_trait::async_trait;

use super::super::{random_token, Claim, Names, Result};
use super::{lock, RedisBackplane, Shared};

impl Shared {
    /// Claims `name` for `instance` (see `scripts/claim_name.lua`).
    pub(super) async fn claim_script(
        &self,
        name: &str,
        instance: &str,
        resume: &str,
        token: &str,
        old: &str,
    ) -> Result<Option<String>> {
        let mut inv = self.invoke(&self.scripts.claim_name);
        inv.key(self.keys.name_token(name))
            .key(self.keys.name_holders(name))
            .arg(instance)
            .arg(resume)
            .arg(token)
            .arg(old);
        for dead in self.dead_list() {
            inv.arg(dead);
        }
        let (granted, token): (i64, String) = self.eval("claim_name", inv).await?;
        Ok((granted == 1).then_some(token))
    }

    pub(super) async fn release_script(&self, name: &str, instance: &str) -> Result<()> {
        let mut inv = self.invoke(&self.scripts.release_name);
        inv.key(self.keys.name_token(name))
            .key(self.keys.name_holders(name))
            .arg(instance);
        let _: i64 = self.eval("release_name", inv).await?;
        Ok(())
    }

    /// Re-takes a name this node holds, keeping its token.
    pub(super) async fn reclaim(
        &self,
        name: &str,
        instance: &str,
        token: &str,
        old: &str,
    ) -> Result<()> {
        self.cmd::<i64>(
            "claim_name",
            self.sadd(self.keys.node_names(instance), name),
        )
        .await?;
        if self
            .claim_script(name, instance, token, token, old)
            .await?
            .is_none()
        {
            // Someone else took the name while this node was cut off. The
            // trait has no way to tell the sessions; they keep the name
            // locally until they disconnect.
            tracing::warn!(
                name,
                "guest name was taken by another node while this node was unreachable"
            );
            self.count_error("claim_conflict");
        }
        Ok(())
    }

    pub(super) async fn release(&self, name: &str, instance: &str) -> Result<()> {
        self.release_script(name, instance).await?;
        self.cmd::<i64>(
            "release_name",
            self.srem(self.keys.node_names(instance), name),
        )
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Names for RedisBackplane {
    async fn claim_name(&self, name: &str, resume: Option<&str>) -> Result<Claim> {
        let s = &self.shared;
        let slot = s.names.get(name);
        let mut held = slot.lock().await;
        // The node claims on a user's first local connection: it holds
        // nothing until this call succeeds.
        *held = None;
        let instance = s.instance();
        let result = async {
            // Recorded first, so a reaper finds the claim if this node dies.
            s.cmd::<i64>("claim_name", s.sadd(s.keys.node_names(&instance), name))
                .await?;
            let granted = s
                .claim_script(name, &instance, resume.unwrap_or(""), &random_token(), "")
                .await;
            match granted {
                Ok(Some(token)) => {
                    *held = Some(token.clone());
                    Ok(Claim::Granted { token })
                }
                Ok(None) => {
                    let _ = s
                        .cmd::<i64>("claim_name", s.srem(s.keys.node_names(&instance), name))
                        .await;
                    Ok(Claim::Taken)
                }
                Err(e) => {
                    lock(&s.dirty_names).insert(name.to_owned());
                    Err(e)
                }
            }
        }
        .await;
        drop(held);
        s.names.put(name, slot, Option::is_none);
        result
    }

    async fn release_name(&self, name: &str) -> Result<()> {
        let s = &self.shared;
        let slot = s.names.get(name);
        let mut held = slot.lock().await;
        *held = None;
        let instance = s.instance();
        let result = s.release(name, &instance).await;
        if result.is_err() {
            lock(&s.dirty_names).insert(name.to_owned());
        }
        drop(held);
        s.names.put(name, slot, Option::is_none);
        result
    }
}
