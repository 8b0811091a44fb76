//! Redis accounts ([`Accounts`]): one hash of name → password hash;
//! `HSETNX` makes a name's creation happen once.

use async_trait::async_trait;

use super::super::{Accounts, Result};
use super::RedisBackplane;

#[async_trait]
impl Accounts for RedisBackplane {
    async fn create_account(&self, name: &str, password_hash: &str) -> Result<bool> {
        let s = &self.shared;
        let created: i64 = s
            .cmd(
                "create_account",
                redis::cmd("HSETNX")
                    .arg(s.keys.accounts())
                    .arg(name)
                    .arg(password_hash)
                    .to_owned(),
            )
            .await?;
        Ok(created == 1)
    }

    async fn account_hash(&self, name: &str) -> Result<Option<String>> {
        let s = &self.shared;
        s.cmd(
            "account_hash",
            redis::cmd("HGET")
                .arg(s.keys.accounts())
                .arg(name)
                .to_owned(),
        )
        .await
    }
}
