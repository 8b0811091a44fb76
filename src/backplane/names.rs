//! The name contract: a guest name is held by the nodes of its
//! connections; another connection may share it only with the claim's
//! resume token. A node's claims end with the node (released on shutdown,
//! reaped when it dies).

use async_trait::async_trait;

use super::Result;

/// Outcome of a guest name claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This node now holds the name; the token lets others share it.
    Granted {
        /// The claim's resume token.
        token: String,
    },
    /// Someone else holds the name and the resume token did not match.
    Taken,
}

/// Guest name claims, per node.
#[async_trait]
pub trait Names: Send + Sync + 'static {
    /// Claims a guest name for this node (first local connection of the name).
    async fn claim_name(&self, name: &str, resume: Option<&str>) -> Result<Claim>;

    /// Releases this node's hold on a guest name (last local connection gone).
    async fn release_name(&self, name: &str) -> Result<()>;
}
