//! What goes out to a connection, with no I/O: frames built once
//! ([`frame`]), server frames encoded lazily and shared between recipients
//! ([`shared`]), the per-connection bounded queue ([`queue`]) and the one
//! reason a connection ends ([`reason`]).
//!
//! Both `node` (fan-out, replies) and `session` (the writer) use this
//! module; it uses neither of them.

pub mod frame;
pub mod queue;
pub mod reason;
pub mod shared;

pub use frame::Frame;
pub use queue::{Batch, OutQueue};
pub use reason::DisconnectReason;
pub use shared::{to_wire, SharedFrame};
