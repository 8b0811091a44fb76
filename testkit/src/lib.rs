//! Dev-only test kit of relay, used by `tests/`, `loadtest` and the `testkit`
//! binary (`scripts/cluster`): every process the project's tests start, each
//! as an RAII guard on a free loopback port with its log in a temp dir
//! (printed when it does not start), killed by its own PID and reaped on
//! drop:
//!
//! - [`redis::RedisServer`], [`redis_cluster::RedisCluster`] (3+ masters,
//!   optional replicas), [`sentinel::RedisSentinel`] (master, replica, three
//!   sentinels), [`postgres::Postgres`] (Debian's postgresql 15),
//!   [`nginx::Nginx`] (load balancer from `docker/nginx.conf`), [`Node`]
//!   (`relay serve`);
//! - [`free_port`], the one port picker;
//! - a typed WebSocket [`Client`] over the relay crate's protocol types
//!   ([`cmd`] builds commands), and a tiny [`http()`] client.
//!
//! Nothing here is mocked: the binaries are the real ones (Debian packages
//! `redis-server`, `nginx-light`, `postgresql`).

use std::time::Duration;

pub mod client;
pub mod cmd;
pub mod http;
pub mod nginx;
pub mod node;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod redis_cluster;
pub mod sentinel;

pub use client::*;
pub use http::{get, http};
pub use node::{relay_bin, Node, NodeBuilder};
pub use ports::{free_cluster_port, free_port};

/// How long a test waits for an expected frame.
pub const WAIT: Duration = Duration::from_secs(5);
