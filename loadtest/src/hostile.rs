//! The `hostile` scenario's attackers, run by the parent against the first
//! target during the measured phase while the workers' clients chat in
//! rooms (their p99 and loss are the run's figures):
//!
//! - non-readers: a filler fills a room with 50 long messages, then each
//!   non-reader (4 KiB receive buffer) sends `history` for it over and over
//!   and never reads;
//! - slow bodies: `POST /api/login` with a `Content-Length` and a body that
//!   never comes, held open;
//! - a room flood: one connection joins room after room;
//! - login bursts: concurrent bogus logins, once a second.
//!
//! Every loop is bounded by its count flag and by the run's end (the tasks
//! are aborted then). What each attack got goes into the report.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use relay::protocol::{decode_server_frame, Command, CommandFrame, Encoding, Ref, ServerFrame};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_util::either::Either;

use crate::args::RunArgs;
use crate::connect::Target;
use crate::wire::{In, Ws};

/// What the attacks got.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct Stats {
    pub(crate) nonreaders: usize,
    /// `history` commands written by the non-readers.
    pub(crate) history_sent: u64,
    /// Non-readers whose writes stalled for 2 s (the node stopped reading).
    pub(crate) nonreader_writes_stalled: u64,
    /// Non-readers whose connection the node ended.
    pub(crate) nonreaders_closed: u64,
    pub(crate) slow_bodies_opened: u64,
    /// Answers to the slow bodies, by HTTP status (or `closed`).
    pub(crate) slow_bodies_answered: BTreeMap<String, u64>,
    pub(crate) flood_joins_sent: u64,
    pub(crate) flood_joined: u64,
    /// Refused joins of the flood, by error code.
    pub(crate) flood_refused: BTreeMap<String, u64>,
    pub(crate) logins_sent: u64,
    /// Login answers by HTTP status (or the I/O failure).
    pub(crate) logins_answered: BTreeMap<String, u64>,
}

type Shared = Arc<Mutex<Stats>>;

fn bump(stats: &Shared, f: impl FnOnce(&mut Stats)) {
    if let Ok(mut s) = stats.lock() {
        f(&mut s);
    }
}

fn count(map: &mut BTreeMap<String, u64>, key: impl Into<String>) {
    *map.entry(key.into()).or_default() += 1;
}

/// The running attacks.
pub(crate) struct Attack {
    tasks: JoinSet<()>,
    stats: Shared,
}

impl Attack {
    /// Starts every attack against `target` (a `ws://` target).
    pub(crate) fn start(args: &RunArgs, target: &Target, run_id: &str) -> anyhow::Result<Attack> {
        if target.tls.is_some() {
            bail!("--scenario hostile needs a ws:// target (its attackers speak plain TCP)");
        }
        let stats: Shared = Arc::default();
        let mut tasks = JoinSet::new();
        let t = Arc::new(Endpoint {
            addr: target.addr,
            host: target.host.clone(),
            path: target.path.clone(),
        });
        let prefix = format!("{}{run_id}h", args.name_prefix);
        let room = format!("{prefix}big");
        {
            let (t, s, n, h, room, prefix) = (
                t.clone(),
                stats.clone(),
                args.hostile_nonreaders,
                args.hostile_history,
                room.clone(),
                prefix.clone(),
            );
            tasks.spawn(async move { nonreaders(t, s, n, h, room, prefix).await });
        }
        for _ in 0..args.hostile_slow_bodies {
            tasks.spawn(slow_body(t.clone(), stats.clone()));
        }
        let flood = format!("{prefix}flood");
        tasks.spawn(room_flood(
            t.clone(),
            stats.clone(),
            args.hostile_rooms,
            flood,
        ));
        tasks.spawn(login_bursts(t, stats.clone(), args.hostile_logins));
        Ok(Attack { tasks, stats })
    }

    /// Ends every attack (closing their sockets) and returns what they got.
    pub(crate) async fn stop(mut self) -> Stats {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

struct Endpoint {
    addr: SocketAddr,
    host: String,
    path: String,
}

impl Endpoint {
    /// A guest WebSocket as `user`; `small` asks for a 4 KiB receive buffer.
    async fn ws(&self, user: &str, small: bool) -> Option<Ws> {
        let socket = match self.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .ok()?;
        if small {
            let _ = socket.set_recv_buffer_size(4096);
        }
        let stream = timeout(Duration::from_secs(10), socket.connect(self.addr))
            .await
            .ok()?
            .ok()?;
        let path = format!("{}?user={user}", self.path);
        let ws = Ws::handshake(
            Either::Left(stream),
            &self.host,
            &path,
            "relay.v1.json",
            4096,
        );
        timeout(Duration::from_secs(10), ws).await.ok()?.ok()
    }
}

fn frame(command: &Command, r: u64) -> Vec<u8> {
    let reference = Ref::Int(r as i64);
    CommandFrame {
        command,
        reference: Some(&reference),
    }
    .encode(Encoding::Json)
}

/// Reads what arrives within `wait` (a reader between its sends); returns
/// the frames read.
async fn read_for(ws: &mut Ws, wait: Duration) -> Vec<ServerFrame> {
    let mut out = Vec::new();
    while let Ok(Some(Ok(msg))) = timeout(wait, ws.next()).await {
        if let In::Text(t) = msg {
            if let Ok(f) = decode_server_frame(&t, Encoding::Json) {
                out.push(f);
            }
        }
    }
    out
}

/// Fills `room` with 50 messages of 3,900 characters (paced under the
/// per-connection rate limit), then runs the non-readers on it.
async fn nonreaders(
    t: Arc<Endpoint>,
    stats: Shared,
    n: usize,
    history: usize,
    room: String,
    prefix: String,
) {
    if let Some(mut filler) = t.ws(&format!("{prefix}fill"), false).await {
        let join = Command::Join {
            room: room.clone(),
            since: None,
            epoch: None,
        };
        let _ = filler.send_text(&frame(&join, 0)).await;
        let text = "x".repeat(3900);
        for k in 0..50u64 {
            let send = Command::Send {
                room: room.clone(),
                text: format!("{k} {text}"),
                client_id: None,
            };
            if filler.send_text(&frame(&send, k + 1)).await.is_err() {
                break;
            }
            read_for(&mut filler, Duration::from_millis(70)).await;
        }
    }
    bump(&stats, |s| s.nonreaders = n);
    let mut set = JoinSet::new();
    for k in 0..n {
        let (t, stats, room) = (t.clone(), stats.clone(), room.clone());
        let user = format!("{prefix}nr{k}");
        set.spawn(async move {
            let Some(mut ws) = t.ws(&user, true).await else {
                return;
            };
            let cmd = Command::History {
                room,
                before: None,
                limit: relay::protocol::HISTORY_LEN,
            };
            for r in 0..history as u64 {
                match timeout(Duration::from_secs(2), ws.send_text(&frame(&cmd, r))).await {
                    Ok(Ok(())) => bump(&stats, |s| s.history_sent += 1),
                    Ok(Err(_)) => {
                        bump(&stats, |s| s.nonreaders_closed += 1);
                        return;
                    }
                    Err(_) => {
                        bump(&stats, |s| s.nonreader_writes_stalled += 1);
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Never read; hold the socket until the run ends.
            std::future::pending::<()>().await;
        });
    }
    while set.join_next().await.is_some() {}
}

/// The status of an HTTP response head (`closed` when there is none).
async fn status(stream: &mut TcpStream) -> String {
    let mut buf = [0u8; 64];
    match stream.read(&mut buf).await {
        Ok(0) => "closed".into(),
        Ok(n) => String::from_utf8_lossy(&buf[..n])
            .split_whitespace()
            .nth(1)
            .unwrap_or("garbage")
            .to_owned(),
        Err(e) => format!("{:?}", e.kind()).to_lowercase(),
    }
}

/// A login whose body never comes: held until the node answers or closes.
async fn slow_body(t: Arc<Endpoint>, stats: Shared) {
    let Ok(Ok(mut s)) = timeout(Duration::from_secs(10), TcpStream::connect(t.addr)).await else {
        return;
    };
    let head = format!(
        "POST /api/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: 1000\r\n\r\n{{",
        t.host
    );
    if s.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    bump(&stats, |st| st.slow_bodies_opened += 1);
    let answer = status(&mut s).await;
    bump(&stats, |st| count(&mut st.slow_bodies_answered, answer));
}

/// One connection joining `n` rooms, paced at 15 joins/s (under the
/// default per-connection rate limit).
async fn room_flood(t: Arc<Endpoint>, stats: Shared, n: usize, prefix: String) {
    let Some(mut ws) = t.ws(&format!("{prefix}er"), false).await else {
        return;
    };
    for k in 0..n as u64 {
        let join = Command::Join {
            room: format!("{prefix}{k}"),
            since: None,
            epoch: None,
        };
        if ws.send_text(&frame(&join, k)).await.is_err() {
            return;
        }
        bump(&stats, |s| s.flood_joins_sent += 1);
        for f in read_for(&mut ws, Duration::from_millis(66)).await {
            match f {
                ServerFrame::Joined { .. } => bump(&stats, |s| s.flood_joined += 1),
                ServerFrame::Error { code, .. } => bump(&stats, |s| {
                    let code = serde_json::to_value(code)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    count(&mut s.flood_refused, code)
                }),
                _ => {}
            }
        }
    }
}

/// `n` concurrent bogus logins every second.
async fn login_bursts(t: Arc<Endpoint>, stats: Shared, n: usize) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let mut set = JoinSet::new();
        for k in 0..n {
            let (t, stats) = (t.clone(), stats.clone());
            set.spawn(async move {
                let body = format!(r#"{{"user":"nobody{k}","password":"wrong password {k}"}}"#);
                let req = format!(
                    "POST /api/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    t.host,
                    body.len()
                );
                bump(&stats, |s| s.logins_sent += 1);
                let answer =
                    match timeout(Duration::from_secs(10), TcpStream::connect(t.addr)).await {
                        Ok(Ok(mut s)) => match s.write_all(req.as_bytes()).await {
                            Ok(()) => status(&mut s).await,
                            Err(e) => format!("{:?}", e.kind()).to_lowercase(),
                        },
                        Ok(Err(e)) => format!("{:?}", e.kind()).to_lowercase(),
                        Err(_) => "connect_timeout".into(),
                    };
                bump(&stats, |s| count(&mut s.logins_answered, answer));
            });
        }
        while set.join_next().await.is_some() {}
    }
}
