//! The accounts contract: registered names and their password hashes,
//! shared by every node; a name is created once.

use async_trait::async_trait;

use super::Result;

/// Registered accounts.
#[async_trait]
pub trait Accounts: Send + Sync + 'static {
    /// Creates an account; false when the name exists.
    async fn create_account(&self, name: &str, password_hash: &str) -> Result<bool>;

    /// The stored password hash of an account.
    async fn account_hash(&self, name: &str) -> Result<Option<String>>;
}
