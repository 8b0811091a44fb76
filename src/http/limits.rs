//! Abuse limits at the HTTP layer: the client IP (from `X-Forwarded-For`
//! only behind a trusted proxy), concurrent connections per IP (upgraded
//! sockets, and the per-address share of pre-upgrade HTTP connections), the
//! per-IP rate of register/login attempts, and request bodies read with a
//! size limit and a deadline (PROTOCOL §11).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use dashmap::DashMap;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::refuse;

/// Body limit of the small JSON routes (register, login, revoke, ...): a
/// user name, a password of at most 128 characters and JSON around them.
pub const SMALL_BODY_BYTES: usize = 4096;

/// The share of the `slots` pre-upgrade HTTP connections one client address
/// may hold: `max(4, slots / 8)`.
pub fn per_address_share(slots: usize) -> usize {
    (slots / 8).max(4)
}

/// Reads a request body of at most `limit` bytes within `deadline`. Call it
/// only after the request's key and rate checks. A `Content-Length` over
/// the limit, or a body growing past it, answers 413 `too_large` without
/// reading further; a body not complete by the deadline answers 408
/// `timeout`. Either way the connection is then closed (the rest of the body
/// is never read).
#[allow(clippy::result_large_err)]
pub async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    deadline: Duration,
) -> Result<Bytes, Response> {
    let too_large = || {
        let mut r = refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body is larger than {limit} bytes"),
        );
        r.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        r
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = async {
        let mut stream = body.into_data_stream();
        let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(limit as u64) as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|_| refuse(StatusCode::BAD_REQUEST, "invalid", "request body broken"))?;
            if buf.len() + chunk.len() > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(buf))
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(result) => result,
        Err(_) => {
            let mut r = refuse(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!(
                    "request body not received within {} ms",
                    deadline.as_millis()
                ),
            );
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            Err(r)
        }
    }
}

/// The client's IP: the peer, or, when the peer is a trusted proxy, the
/// right-most address of `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut ip = peer.ip();
    if !is_trusted(&ip) {
        return ip;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    for hop in hops.into_iter().rev() {
        ip = hop;
        if !is_trusted(&hop) {
            break;
        }
    }
    ip
}

/// Counts open connections per IP.
#[derive(Default)]
pub struct PerIp {
    open: DashMap<IpAddr, usize>,
}

/// One counted connection; uncounted on drop.
pub struct IpSlot {
    owner: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    /// Counts a connection from `ip` unless it already has `max`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut n = self.open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            owner: self.clone(),
            ip,
        })
    }

    /// Open connections of `ip`.
    pub fn count(&self, ip: IpAddr) -> usize {
        self.open.get(&ip).map(|n| *n).unwrap_or(0)
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        self.owner.open.remove_if_mut(&self.ip, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

/// Per-IP token buckets for register/login: `per_minute` attempts, refilled
/// continuously.
pub struct AttemptLimiter {
    per_minute: f64,
    buckets: DashMap<IpAddr, (f64, Instant)>,
}

impl AttemptLimiter {
    /// A limiter allowing `per_minute` attempts per IP (burst the same).
    pub fn new(per_minute: u32) -> Self {
        AttemptLimiter {
            per_minute: f64::from(per_minute.max(1)),
            buckets: DashMap::new(),
        }
    }

    /// Takes an attempt; `Err(wait)` when none is left.
    pub fn attempt(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let rate = self.per_minute / 60.0;
        let mut entry = self.buckets.entry(ip).or_insert((self.per_minute, now));
        let (tokens, last) = *entry;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * rate).min(self.per_minute);
        if tokens >= 1.0 {
            *entry = (tokens - 1.0, now);
            Ok(())
        } else {
            *entry = (tokens, now);
            Err(Duration::from_secs_f64((1.0 - tokens) / rate))
        }
    }

    /// Forgets full buckets (call periodically).
    pub fn sweep(&self) {
        let now = Instant::now();
        let full_after = Duration::from_secs(60);
        self.buckets
            .retain(|_, (_, last)| now.duration_since(*last) < full_after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let proxy: SocketAddr = "10.0.0.5:1234".parse().unwrap();
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers("203.0.113.9, 10.0.0.7");
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(proxy, &h, &[]),
            proxy.ip(),
            "untrusted peer: header ignored"
        );
        let outsider: SocketAddr = "198.51.100.1:1".parse().unwrap();
        assert_eq!(client_ip(outsider, &h, &trusted), outsider.ip());
        let spoofed = headers("1.2.3.4, 203.0.113.9");
        assert_eq!(
            client_ip(proxy, &spoofed, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap(),
            "right-most untrusted hop wins"
        );
    }

    #[test]
    fn per_ip_slots() {
        let p = Arc::new(PerIp::default());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = p.acquire(ip, 2).unwrap();
        let _b = p.acquire(ip, 2).unwrap();
        assert!(p.acquire(ip, 2).is_none());
        drop(a);
        assert!(p.acquire(ip, 2).is_some());
    }

    #[test]
    fn address_share() {
        assert_eq!(per_address_share(0), 4);
        assert_eq!(per_address_share(64), 8);
        assert_eq!(per_address_share(4096), 512);
    }

    #[tokio::test]
    async fn bodies_are_bounded() {
        let h = HeaderMap::new();
        let ok = read_body(Body::from("abcd"), &h, 4, Duration::from_secs(1)).await;
        assert_eq!(ok.ok().as_deref(), Some(&b"abcd"[..]));
        let big = read_body(Body::from("abcde"), &h, 4, Duration::from_secs(1)).await;
        assert_eq!(big.unwrap_err().status(), StatusCode::PAYLOAD_TOO_LARGE);
        let mut declared = HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, "5".parse().unwrap());
        let big = read_body(Body::empty(), &declared, 4, Duration::from_secs(1)).await;
        assert_eq!(big.unwrap_err().status(), StatusCode::PAYLOAD_TOO_LARGE);
        let never =
            Body::from_stream(futures_util::stream::pending::<Result<Bytes, std::io::Error>>());
        let slow = read_body(never, &h, 4, Duration::from_millis(50)).await;
        assert_eq!(slow.unwrap_err().status(), StatusCode::REQUEST_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_refill() {
        let l = AttemptLimiter::new(2);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(l.attempt(ip).is_ok());
        assert!(l.attempt(ip).is_ok());
        let wait = l.attempt(ip).unwrap_err();
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(l.attempt(ip).is_ok());
    }
}
