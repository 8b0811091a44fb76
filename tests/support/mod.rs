//! Test support for the test files that still declare `mod support;`: a thin
//! re-export of the `testkit` crate (relay nodes, Redis, nginx, the typed
//! client), where all of it lives now.
#![allow(unused_imports, unreachable_pub)]

pub use testkit::*;
