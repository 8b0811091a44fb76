//! Connecting one client: the targets (`ws://` or `wss://` URLs, resolved
//! once), a socket bound to its loopback source address (loopback targets
//! only), TCP connect, TLS for `wss://`, the WebSocket handshake and the
//! `welcome` frame, each under --connect-timeout; a failure is named by its
//! cause (`refused`, `timeout_handshake`, `http_503_unavailable`, ...).

use std::net::{SocketAddr, SocketAddrV4, ToSocketAddrs as _};

use anyhow::{bail, Context as _};
use relay::protocol::{decode_server_frame, Encoding, ServerFrame};
use rustls_pki_types::ServerName;
use tokio::net::TcpSocket;
use tokio::time::{timeout, Duration, Instant};

use crate::client::{Ctx, HIST_SHARDS};
use tokio_util::either::Either;

use crate::wire::{In, Stream, Ws, WsError};

/// A server to connect to.
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    /// The `Host` header: the URL's host and port as given.
    pub(crate) host: String,
    /// The URL's path (without a query).
    pub(crate) path: String,
    /// The TLS server name of a `wss://` target.
    pub(crate) tls: Option<ServerName<'static>>,
}

/// Resolves `ws://HOST[:PORT][/PATH]` and `wss://...` targets (the first
/// address of each name). Any host is accepted: a target other than
/// loopback is only ever one the user gave with `--url`.
pub(crate) fn resolve_targets(urls: &[String]) -> anyhow::Result<Vec<Target>> {
    let mut out = Vec::new();
    for url in urls {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("wss://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("ws://") {
            (false, rest)
        } else {
            bail!("{url}: only ws:// and wss:// URLs are supported");
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/ws"),
        };
        let path = path.split('?').next().unwrap_or("/ws");
        let (host, port) = split_host_port(hostport, if tls { 443 } else { 80 })
            .with_context(|| format!("{url}: expected ws[s]://HOST[:PORT]/PATH"))?;
        let lookup = if host == "localhost" {
            "127.0.0.1"
        } else {
            host
        };
        let addr = (lookup.trim_start_matches('[').trim_end_matches(']'), port)
            .to_socket_addrs()
            .with_context(|| format!("{url}: resolving {host}"))?
            .next()
            .with_context(|| format!("{url}: {host} has no address"))?;
        let tls = match tls {
            true => Some(
                ServerName::try_from(
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned(),
                )
                .with_context(|| format!("{url}: {host} is not a TLS server name"))?,
            ),
            false => None,
        };
        out.push(Target {
            addr,
            host: hostport.to_owned(),
            path: path.to_owned(),
            tls,
        });
    }
    if out.is_empty() {
        bail!("no --url");
    }
    Ok(out)
}

/// `host:port`, `host`, `[v6]:port` or `[v6]`.
fn split_host_port(hostport: &str, default: u16) -> Option<(&str, u16)> {
    if hostport.is_empty() {
        return None;
    }
    let colon = match hostport.rfind(':') {
        Some(i) if !hostport[i..].contains(']') => Some(i),
        _ => None,
    };
    match colon {
        Some(i) => Some((&hostport[..i], hostport[i + 1..].parse().ok()?)),
        None => Some((hostport, default)),
    }
}

pub(crate) fn pct_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn io_cause(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "refused".into(),
        K::ConnectionReset => "reset".into(),
        K::ConnectionAborted => "aborted".into(),
        K::TimedOut => "timeout".into(),
        K::AddrNotAvailable => "addr_not_available".into(),
        K::AddrInUse => "addr_in_use".into(),
        K::UnexpectedEof => "eof".into(),
        K::BrokenPipe => "broken_pipe".into(),
        _ => match e.raw_os_error() {
            Some(24) => "too_many_open_files".into(),
            Some(n) => format!("os_error_{n}"),
            None => format!("io_{:?}", e.kind()).to_lowercase(),
        },
    }
}

pub(crate) fn ws_cause(e: &WsError) -> String {
    match e {
        WsError::Http(status, Some(code)) => format!("http_{status}_{code}"),
        WsError::Http(status, None) => format!("http_{status}"),
        WsError::Io(io) => io_cause(io),
        WsError::Eof => "eof".into(),
        WsError::Protocol(p) => format!("protocol: {p}"),
    }
}

/// Welcome data.
pub(crate) struct Welcome {
    pub(crate) user: String,
    pub(crate) resume: Option<String>,
    /// The node that holds the connection.
    pub(crate) node: String,
}

pub(crate) async fn connect(
    ctx: &Ctx,
    i: u64,
    group: u64,
    conn_no: u64,
    name: &str,
    resume: Option<&str>,
) -> Result<(Ws, Welcome), String> {
    let _permit = ctx
        .sem
        .acquire()
        .await
        .map_err(|_| "shutdown".to_string())?;
    let started = Instant::now();
    let limit = Duration::from_secs_f64(ctx.spec.args.connect_timeout.max(0.1));
    let pick = match ctx.spec.args.affinity {
        Some(crate::args::Affinity::Room) => group,
        _ => i,
    };
    let target = &ctx.targets[(pick % ctx.targets.len() as u64) as usize];
    let query = if ctx.guest() {
        match resume {
            Some(t) => format!("?user={name}&resume={}", pct_encode(t)),
            None => format!("?user={name}"),
        }
    } else {
        let tokens = &ctx.spec.args.tokens;
        format!(
            "?token={}",
            pct_encode(&tokens[(i % tokens.len() as u64) as usize])
        )
    };
    let socket = match target.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| io_cause(&e))?;
    // An explicit port per client: bind(port 0) searches the port space
    // linearly in the kernel (inet_csk_get_port), which costs milliseconds
    // per socket with ~20k sockets on one address. No SO_REUSEADDR: it would
    // let two sockets share a port, and a duplicate 4-tuple's SYN is dropped.
    let source = ctx
        .source_for(i, conn_no)
        .filter(|_| target.addr.ip().is_loopback());
    if let Some((src, port)) = source {
        let mut bound = Err(std::io::Error::other("no port tried"));
        for k in 0..8u64 {
            let port = ctx.port_shift(port, k);
            bound = socket.bind(SocketAddr::V4(SocketAddrV4::new(src, port)));
            match &bound {
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                _ => break,
            }
        }
        bound.map_err(|e| format!("bind_{}", io_cause(&e)))?;
    }
    let stream = match timeout(limit, socket.connect(target.addr)).await {
        Err(_) => return Err("timeout_tcp".into()),
        Ok(Err(e)) => return Err(io_cause(&e)),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let stream: Stream = match (&target.tls, &ctx.tls) {
        (Some(name), Some(connector)) => {
            match timeout(limit, connector.connect(name.clone(), stream)).await {
                Err(_) => return Err("timeout_tls".into()),
                Ok(Err(e)) => return Err(format!("tls_{}", io_cause(&e))),
                Ok(Ok(s)) => Either::Right(Box::new(s)),
            }
        }
        _ => Either::Left(stream),
    };
    let path = format!("{}{query}", target.path);
    let handshake = Ws::handshake(
        stream,
        &target.host,
        &path,
        ctx.enc.subprotocol(),
        ctx.spec.args.read_buffer,
    );
    let mut ws = match timeout(limit, handshake).await {
        Err(_) => return Err("timeout_handshake".into()),
        Ok(Err(e)) => return Err(ws_cause(&e)),
        Ok(Ok(x)) => x,
    };
    let deadline = Instant::now() + limit;
    loop {
        let msg = match timeout(deadline - Instant::now().min(deadline), ws.next()).await {
            Err(_) => return Err("timeout_welcome".into()),
            Ok(None) => return Err("closed_before_welcome".into()),
            Ok(Some(Err(e))) => return Err(ws_cause(&e)),
            Ok(Some(Ok(m))) => m,
        };
        let frame = match &msg {
            In::Text(t) => decode_server_frame(t, Encoding::Json),
            In::Binary(b) => decode_server_frame(b, Encoding::MsgPack),
            In::Close(code) => {
                return Err(format!("closed_before_welcome_{}", code.unwrap_or(1005)))
            }
        };
        match frame {
            Ok(ServerFrame::Welcome {
                user, resume, node, ..
            }) => {
                let us = started.elapsed().as_micros() as u64;
                if let Ok(mut h) = ctx.hists[(i as usize) % HIST_SHARDS].lock() {
                    h.connect.saturating_record(us.max(1));
                }
                return Ok((ws, Welcome { user, resume, node }));
            }
            Ok(_) => continue,
            Err(e) => return Err(format!("bad_welcome: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_take_any_explicit_url() {
        let t = resolve_targets(&[
            "ws://127.0.0.1:8080/ws".into(),
            "wss://localhost:9443/chat?x=1".into(),
            "ws://10.1.2.3".into(),
        ])
        .unwrap();
        assert_eq!(t[0].addr, "127.0.0.1:8080".parse().unwrap());
        assert!(t[0].tls.is_none());
        assert_eq!(
            (t[1].host.as_str(), t[1].path.as_str()),
            ("localhost:9443", "/chat")
        );
        assert!(t[1].tls.is_some());
        assert_eq!(t[2].addr, "10.1.2.3:80".parse().unwrap());
        assert_eq!(t[2].path, "/ws");
        assert!(resolve_targets(&["http://127.0.0.1:1/".into()]).is_err());
        assert!(resolve_targets(&[]).is_err());
    }
}
