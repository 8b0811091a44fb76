//! Free loopback ports: the one place that picks a port for a process the
//! kit starts.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::sync::Mutex;

/// Ports handed out by this process, so two guards started at once never
/// get the same one (the OS may return a port again once its probe socket is
/// closed).
static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

fn bindable(port: u16) -> bool {
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// A free port on 127.0.0.1 (never 6379, the shared Redis default, nor one
/// this process handed out before).
pub fn free_port() -> u16 {
    free_port_where(|_| true)
}

/// A free loopback port whose Redis Cluster bus port (port + 10000) is free
/// too.
pub fn free_cluster_port() -> u16 {
    free_port_where(|p| p <= 55_000 && bindable(p + 10_000))
}

fn free_port_where(ok: impl Fn(u16) -> bool) -> u16 {
    for _ in 0..1000 {
        let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
            .expect("bind an ephemeral loopback port");
        let port = listener.local_addr().expect("local addr").port();
        drop(listener);
        if port == 6379 || !ok(port) {
            continue;
        }
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("no free loopback port found");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_and_never_repeat() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
        assert!(bindable(a) && bindable(b));
        let c = free_cluster_port();
        assert!(bindable(c + 10_000));
    }
}
