//! relay: a horizontally scalable WebSocket pub/sub relay for real-time chat.
//!
//! The data path, in five lines:
//! 1. [`http`] checks the `/ws` handshake (identity, origin, limits) and upgrades.
//! 2. [`session`] reads frames, decodes them with [`protocol`], rate-limits and runs commands.
//! 3. Commands go to the [`backplane`] (memory or Redis): store-and-publish, presence, names.
//! 4. Events come back from the backplane to [`node`], which encodes each once per encoding
//! 5. and pushes the shared bytes into every local member's bounded queue; the session writer flushes.
//!
//! Rule of the rooms: `protocol` knows nothing of sockets or Redis; `session`
//! knows nothing of Redis; `backplane` knows nothing of WebSockets.

pub mod auth;
pub mod backplane;
pub mod client;
pub mod config;
pub mod http;
pub mod metrics;
pub mod node;
pub mod outbound;
pub mod protocol;
pub mod server;
pub mod session;
pub mod telemetry;
pub mod token_cli;
