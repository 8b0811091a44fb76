//! Users and sessions on this node: a user's hold on the node (guest name
//! claim and direct-message subscription, [`UserLease`]) and the node's
//! handle on each local connection ([`SessionHandle`]). A user's first local
//! connection claims its name and subscribes its topic; the last releases
//! them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::Node;
use crate::backplane::{BackplaneError, Claim, Topic};
use crate::outbound::{to_wire, DisconnectReason, OutQueue};
use crate::protocol::{Encoding, ServerFrame};

/// The token a session authenticated with, as revocation needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credential {
    /// Issue time, Unix ms (`None`: unknown).
    pub iat_ms: Option<u64>,
    /// Token id.
    pub jti: Option<String>,
}

impl Credential {
    /// Whether a revocation (`at_ms`: tokens issued at or before; `jti`:
    /// one token) covers this session's token.
    pub fn revoked_by(&self, at_ms: Option<u64>, jti: Option<&str>) -> bool {
        let by_time = at_ms.is_some_and(|at| self.iat_ms.is_none_or(|iat| iat <= at));
        let by_id = jti.is_some_and(|j| self.jti.as_deref() == Some(j));
        by_time || by_id
    }
}

/// A local connection as the node sees it.
pub struct SessionHandle {
    /// Local session number.
    pub id: u64,
    /// User name.
    pub user: String,
    /// Negotiated encoding.
    pub encoding: Encoding,
    /// Outbound queue.
    pub queue: Arc<OutQueue>,
    /// Rooms this connection joined (or is joining); kept by the node.
    pub(super) rooms: Mutex<HashSet<String>>,
    /// The token of the handshake (token and JWT modes), set once.
    pub credential: std::sync::OnceLock<Credential>,
}

impl SessionHandle {
    /// Queues a frame encoded for this session.
    pub fn send(&self, frame: &ServerFrame) -> bool {
        self.queue.push(to_wire(frame, self.encoding))
    }

    /// Whether the connection joined `room`.
    pub fn is_member(&self, room: &str) -> bool {
        self.rooms.lock().map(|r| r.contains(room)).unwrap_or(false)
    }

    /// The rooms the connection joined.
    pub fn rooms(&self) -> Vec<String> {
        self.rooms
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How many rooms the connection joined.
    pub fn room_count(&self) -> usize {
        self.rooms.lock().map(|r| r.len()).unwrap_or(0)
    }
}

#[derive(Default)]
pub(super) struct ClaimState {
    leases: usize,
    token: Option<String>,
}

pub(super) struct LocalUser {
    pub(super) claim: tokio::sync::Mutex<ClaimState>,
    pub(super) sessions: Mutex<HashMap<u64, Arc<SessionHandle>>>,
}

/// Why a user could not attach to this node.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The guest name is held by someone without the presented resume token.
    #[error("name is taken")]
    NameTaken,
    /// The user already has the most connections allowed on this node.
    #[error("too many connections for this user")]
    TooManyConnections,
    /// The backplane failed.
    #[error(transparent)]
    Backplane(#[from] BackplaneError),
}

/// A user's hold on this node: while it lives, the user's name claim (guest
/// mode) and direct-message subscription stay. Dropping it releases them.
pub struct UserLease {
    node: Arc<Node>,
    user: String,
    /// The claim's resume token (guest mode).
    pub token: Option<String>,
}

impl UserLease {
    /// Releases the user now, awaited (dropping the lease releases it in the
    /// background). On the user's last lease the direct-message subscription
    /// is dropped before this returns.
    pub async fn release(mut self) {
        let user = std::mem::take(&mut self.user);
        let node = self.node.clone();
        drop(self);
        node.detach_user(&user).await;
    }
}

impl Drop for UserLease {
    fn drop(&mut self) {
        if self.user.is_empty() {
            return; // released already
        }
        let node = self.node.clone();
        let user = std::mem::take(&mut self.user);
        self.node
            .tasks
            .spawn(async move { node.detach_user(&user).await });
    }
}

impl Node {
    /// Attaches a user (at handshake): claims the guest name cluster-wide on
    /// the user's first local connection, or checks the resume token.
    pub async fn attach_user(
        self: &Arc<Self>,
        user: &str,
        resume: Option<&str>,
        max_per_user: usize,
    ) -> Result<UserLease, AttachError> {
        let entry = self
            .users
            .entry(user.to_owned())
            .or_insert_with(|| {
                Arc::new(LocalUser {
                    claim: tokio::sync::Mutex::new(ClaimState::default()),
                    sessions: Mutex::new(HashMap::new()),
                })
            })
            .clone();
        let mut state = entry.claim.lock().await;
        if state.leases > 0 {
            if self.guest_names && resume != state.token.as_deref() {
                return Err(AttachError::NameTaken);
            }
            if state.leases >= max_per_user {
                return Err(AttachError::TooManyConnections);
            }
            state.leases += 1;
            return Ok(UserLease {
                node: self.clone(),
                user: user.to_owned(),
                token: state.token.clone(),
            });
        }
        let token = if self.guest_names {
            match self.backplane.claim_name(user, resume).await? {
                Claim::Granted { token } => Some(token),
                Claim::Taken => {
                    drop(state);
                    self.forget_user_if_unused(user, &entry);
                    return Err(AttachError::NameTaken);
                }
            }
        } else {
            None
        };
        let subscribed = self.backplane.subscribe(Topic::User(user.to_owned())).await;
        let subscribed = subscribed
            .map_err(|_| BackplaneError::Internal("subscription dropped".into()))
            .and_then(|r| r);
        if let Err(e) = subscribed {
            self.backplane.unsubscribe(Topic::User(user.to_owned()));
            if self.guest_names {
                let _ = self.backplane.release_name(user).await;
            }
            drop(state);
            self.forget_user_if_unused(user, &entry);
            return Err(e.into());
        }
        state.leases = 1;
        state.token = token.clone();
        self.metrics.users.inc();
        Ok(UserLease {
            node: self.clone(),
            user: user.to_owned(),
            token,
        })
    }

    async fn detach_user(&self, user: &str) {
        let Some(entry) = self.users.get(user).map(|e| e.clone()) else {
            return;
        };
        let mut state = entry.claim.lock().await;
        state.leases = state.leases.saturating_sub(1);
        if state.leases > 0 {
            return;
        }
        self.metrics.users.dec();
        self.backplane.unsubscribe(Topic::User(user.to_owned()));
        if self.guest_names {
            if let Err(e) = self.backplane.release_name(user).await {
                tracing::warn!(user, error = %e, "releasing name claim failed; it expires with this node's heartbeat");
            }
        }
        state.token = None;
        drop(state);
        self.forget_user_if_unused(user, &entry);
    }

    fn forget_user_if_unused(&self, user: &str, entry: &Arc<LocalUser>) {
        // Two strong refs: the map's and the caller's. More means another
        // attach is waiting on the claim lock and will reuse the entry.
        self.users.remove_if(user, |_, e| {
            Arc::ptr_eq(e, entry)
                && Arc::strong_count(e) == 2
                && e.claim.try_lock().map(|s| s.leases == 0).unwrap_or(false)
        });
    }

    /// Registers an upgraded session.
    pub fn open_session(
        &self,
        user: &str,
        encoding: Encoding,
        queue_capacity: usize,
        queue_bytes: usize,
    ) -> Arc<SessionHandle> {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(SessionHandle {
            id,
            user: user.to_owned(),
            encoding,
            rooms: Mutex::new(HashSet::new()),
            credential: std::sync::OnceLock::new(),
            queue: Arc::new(OutQueue::with_drop_counter(
                queue_capacity,
                queue_bytes,
                self.metrics.queue_dropped_frames.clone(),
            )),
        });
        if let Some(entry) = self.users.get(user) {
            if let Ok(mut sessions) = entry.sessions.lock() {
                sessions.insert(id, handle.clone());
            }
        }
        self.sessions.insert(id, handle.clone());
        if self.is_draining() {
            handle.queue.close(DisconnectReason::Draining);
        }
        handle
    }

    /// Unregisters a session (after it left its rooms).
    pub(super) fn unregister_session(&self, handle: &SessionHandle) {
        self.sessions.remove(&handle.id);
        if let Some(entry) = self.users.get(&handle.user) {
            if let Ok(mut sessions) = entry.sessions.lock() {
                sessions.remove(&handle.id);
            }
        }
    }
}
