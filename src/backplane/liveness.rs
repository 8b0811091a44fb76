//! The liveness contract: a node is part of the cluster while it is
//! registered; a node that stops without `shutdown` is found dead by the
//! others and its presence and name claims are removed.

use async_trait::async_trait;

use super::Result;

/// This node's membership of the cluster.
#[async_trait]
pub trait Liveness: Send + Sync + 'static {
    /// This node's id.
    fn node_id(&self) -> &str;

    /// Whether the backplane is reachable (readiness).
    async fn ready(&self) -> bool;

    /// Ids of the live nodes of the cluster.
    async fn nodes(&self) -> Result<Vec<String>>;

    /// Deregisters this node (clean shutdown, after its sessions closed).
    async fn shutdown(&self);
}
