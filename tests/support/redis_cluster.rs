//! The private Redis Cluster for tests, re-exported from `testkit` for the
//! test files that include this file by `#[path]`.
#![allow(unused_imports, unreachable_pub)]

pub use testkit::redis_cluster::*;
