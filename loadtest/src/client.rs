//! One simulated chat client: connect (bound to a loopback source address),
//! wait for `welcome`, join its rooms, then follow its scenario's schedule
//! while recording every frame it receives. Everything it saw is returned as
//! counters, memberships (ids received per room) and acks (ids it published),
//! from which the parent computes expected vs delivered.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use relay::protocol::{decode_server_frame, Encoding, Ref, ServerFrame};
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};
use tokio::time::{sleep_until, timeout, Instant};

use crate::args::Scenario;
use crate::common::{new_hist, now_ns, Counters, MemberOut, Ranges, WorkerSpec};
use crate::connect::{connect, ws_cause, Target, Welcome};
use crate::scan::{fast_message, latency_us, Origin};
use crate::scenario::{mix, role, MixedLayout, Role, SendPlan, SendTo};
use crate::wire::{In, Ws, WsError};

/// First source address: 127.0.0.2.
const SOURCE_BASE: u32 = 0x7f00_0002;
/// Histogram shards per worker.
pub(crate) const HIST_SHARDS: usize = 16;
/// Client source ports: PORT_LO .. PORT_LO + PORT_SPAN.
const PORT_LO: u16 = 10_000;
const PORT_SPAN: u64 = 50_000;

/// Live counters of a worker (read by its progress task).
#[derive(Default)]
pub(crate) struct Live {
    pub(crate) open: AtomicU64,
    pub(crate) connected: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) ready: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) received: AtomicU64,
}

/// The histograms of a worker, sharded by client to avoid contention.
pub(crate) struct HistSet {
    pub(crate) latency: Histogram<u64>,
    /// Deliveries made by the node that holds the sender's connection.
    pub(crate) latency_same_node: Histogram<u64>,
    /// Deliveries made by another node than the sender's.
    pub(crate) latency_cross_node: Histogram<u64>,
    pub(crate) connect: Histogram<u64>,
    pub(crate) ack: Histogram<u64>,
    pub(crate) recovery: Histogram<u64>,
    pub(crate) rejoin: Histogram<u64>,
    pub(crate) lag: Histogram<u64>,
}

impl HistSet {
    pub(crate) fn new() -> Self {
        HistSet {
            latency: new_hist(),
            latency_same_node: new_hist(),
            latency_cross_node: new_hist(),
            connect: new_hist(),
            ack: new_hist(),
            recovery: new_hist(),
            rejoin: new_hist(),
            lag: new_hist(),
        }
    }

    pub(crate) fn add(&mut self, o: &HistSet) {
        let _ = self.latency.add(&o.latency);
        let _ = self.latency_same_node.add(&o.latency_same_node);
        let _ = self.latency_cross_node.add(&o.latency_cross_node);
        let _ = self.connect.add(&o.connect);
        let _ = self.ack.add(&o.ack);
        let _ = self.recovery.add(&o.recovery);
        let _ = self.rejoin.add(&o.rejoin);
        let _ = self.lag.add(&o.lag);
    }
}

/// Shared by all clients of a worker.
pub(crate) struct Ctx {
    pub(crate) spec: WorkerSpec,
    pub(crate) enc: Encoding,
    pub(crate) targets: Vec<Target>,
    /// TLS settings for `wss://` targets.
    pub(crate) tls: Option<tokio_rustls::TlsConnector>,
    pub(crate) live: Live,
    pub(crate) hists: Vec<Mutex<HistSet>>,
    pub(crate) start: watch::Receiver<Option<u64>>,
    pub(crate) sem: Semaphore,
    /// The worker's connect phase began here.
    pub(crate) t0: Instant,
    base_instant: Instant,
    base_ns: u64,
    /// Source addresses used by one round of connections (every client's
    /// k-th connection uses the k-th set, so reconnects never reuse a port
    /// that may still be in TIME_WAIT).
    n_sources: u64,
    pub(crate) connect_first_ns: AtomicU64,
    pub(crate) connect_last_ns: AtomicU64,
}

impl Ctx {
    pub(crate) fn new(
        spec: WorkerSpec,
        targets: Vec<Target>,
        tls: Option<tokio_rustls::TlsConnector>,
        start: watch::Receiver<Option<u64>>,
    ) -> Self {
        let enc = spec.args.encoding.encoding();
        let per_source = spec.args.per_source.clamp(1, PORT_SPAN);
        let n_sources = spec.args.clients.div_ceil(per_source).max(1);
        let sem = Semaphore::new(spec.connect_concurrency.max(1));
        Ctx {
            enc,
            targets,
            tls,
            live: Live::default(),
            hists: (0..HIST_SHARDS)
                .map(|_| Mutex::new(HistSet::new()))
                .collect(),
            start,
            sem,
            t0: Instant::now(),
            base_instant: Instant::now(),
            base_ns: now_ns(),
            n_sources,
            connect_first_ns: AtomicU64::new(u64::MAX),
            connect_last_ns: AtomicU64::new(0),
            spec,
        }
    }

    /// The tokio instant of a unix-ns time.
    fn instant_at(&self, ns: u64) -> Instant {
        if ns >= self.base_ns {
            self.base_instant + Duration::from_nanos(ns - self.base_ns)
        } else {
            self.base_instant
                .checked_sub(Duration::from_nanos(self.base_ns - ns))
                .unwrap_or(self.base_instant)
        }
    }

    fn prefix(&self) -> String {
        format!("{}{}", self.spec.args.name_prefix, self.spec.run_id)
    }

    /// Guest name of client `i`, generation `gen` (churn).
    pub(crate) fn user_name(&self, i: u64, gen: u64) -> String {
        if gen == 0 {
            format!("{}u{i}", self.prefix())
        } else {
            format!("{}u{i}g{gen}", self.prefix())
        }
    }

    pub(crate) fn room_name(&self, kind: char, n: u64) -> String {
        format!("{}{kind}{n}", self.prefix())
    }

    pub(crate) fn guest(&self) -> bool {
        self.spec.args.tokens.is_empty()
    }

    /// Source address and port of client `i`'s `conn_no`-th connection.
    pub(crate) fn source_for(&self, i: u64, conn_no: u64) -> Option<(Ipv4Addr, u16)> {
        if self.spec.args.no_bind {
            return None;
        }
        let per = self.per_source();
        let idx = (i / per + conn_no * self.n_sources) % 0x00ff_0000;
        let port = PORT_LO + ((i % per + self.spec.seed % PORT_SPAN) % PORT_SPAN) as u16;
        Some((Ipv4Addr::from(SOURCE_BASE + idx as u32), port))
    }

    fn per_source(&self) -> u64 {
        self.spec.args.per_source.clamp(1, PORT_SPAN)
    }

    /// The k-th alternative of a port that was in use.
    pub(crate) fn port_shift(&self, port: u16, k: u64) -> u16 {
        let p = u64::from(port - PORT_LO);
        PORT_LO + ((p + k * (self.per_source() + 7919)) % PORT_SPAN) as u16
    }
}

/// What one client reports.
pub(crate) struct ClientOut {
    pub(crate) counters: Counters,
    pub(crate) members: Vec<MemberOut>,
    /// (stream, id, ack ns, sender identity)
    pub(crate) acks: Vec<(String, u64, u64, u64)>,
}

// ----------------------------------------------------------------------------
// The client.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JoinKind {
    Initial,
    Extra,
    Rejoin { since: u64 },
}

struct Member {
    stream: String,
    after: u64,
    /// Highest id of the latest `joined` (live ids at or below were in history).
    join_point: u64,
    ids: Ranges,
    own: HashSet<u64>,
    max_live: u64,
    /// Highest id received (live or recovered), for `join since`.
    max_seen: u64,
    epoch: String,
    /// Commands may be sent to it (joined and not rejoining).
    live: bool,
    end: Option<u64>,
    /// Direct inbox: last id per sender.
    per_sender: HashMap<String, u64>,
}

impl Member {
    fn new(stream: String, after: u64, epoch: String) -> Self {
        Member {
            stream,
            after,
            join_point: after,
            ids: Ranges::default(),
            own: HashSet::new(),
            max_live: after,
            max_seen: after,
            epoch,
            live: true,
            end: None,
            per_sender: HashMap::new(),
        }
    }

    fn out(self, sid: u64, end: Option<u64>) -> MemberOut {
        MemberOut {
            s: self.stream,
            sid,
            after: self.after,
            end: self.end.or(end),
            ids: self.ids,
        }
    }
}

/// A client's rooms: a handful at most, so a vector beats hashing the name
/// of every incoming message's room.
#[derive(Default)]
struct RoomMap(Vec<(String, Member)>);

impl RoomMap {
    fn get(&self, room: &str) -> Option<&Member> {
        self.0.iter().find(|(r, _)| r == room).map(|(_, m)| m)
    }

    fn get_mut(&mut self, room: &str) -> Option<&mut Member> {
        self.0.iter_mut().find(|(r, _)| r == room).map(|(_, m)| m)
    }

    fn contains_key(&self, room: &str) -> bool {
        self.get(room).is_some()
    }

    fn insert(&mut self, room: String, m: Member) {
        match self.get_mut(&room) {
            Some(old) => *old = m,
            None => self.0.push((room, m)),
        }
    }

    fn remove(&mut self, room: &str) -> Option<Member> {
        let i = self.0.iter().position(|(r, _)| r == room)?;
        Some(self.0.swap_remove(i).1)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(r, _)| r)
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &Member)> {
        self.0.iter().map(|(r, m)| (r, m))
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Member> {
        self.0.iter_mut().map(|(_, m)| m)
    }

    fn drain(&mut self) -> impl Iterator<Item = (String, Member)> + '_ {
        self.0.drain(..)
    }
}

struct Pending {
    stream: String,
    room: Option<String>,
    sent_ns: u64,
}

enum Outcome {
    End,
    Drop,
    Retire,
    Lost(String),
}

struct Timers {
    end: Option<Instant>,
    stop: Option<Instant>,
    sends: Vec<Option<(Instant, u64)>>,
    typing: Vec<Option<Instant>>,
    extra: Option<Instant>,
    storm: Option<Instant>,
    retire: Option<Instant>,
}

#[derive(Clone, Copy)]
enum Action {
    End,
    Stop,
    Send(usize),
    Typing(usize),
    Extra,
    Storm,
    Retire,
}

struct Client {
    i: u64,
    gen: u64,
    /// Connections attempted so far.
    conns: u64,
    name: String,
    resume: Option<String>,
    /// The node of the current connection (from `welcome`), which every
    /// sent text carries so receivers can tell cross-node deliveries.
    node: String,
    role: Role,
    c: Counters,
    rooms: RoomMap,
    inbox: Option<Member>,
    done: Vec<MemberOut>,
    pending: HashMap<i64, Pending>,
    joins: HashMap<i64, (String, JoinKind)>,
    next_ref: i64,
    acks: Vec<(String, u64, u64, u64)>,
    /// Latencies not yet recorded, with where they came from.
    lat_buf: Vec<(u64, Origin)>,
    unflushed_recv: u64,
    unflushed_sent: u64,
    unflushed_acked: u64,
    last_flush_ns: u64,
    ready: bool,
    started: bool,
    stopped: bool,
    rng: SmallRng,
    t: Timers,
    extra_room: Option<String>,
    /// Churn: leaving every room before closing.
    retiring: bool,
    drop_ns: u64,
    reconnect_ns: u64,
    rejoins_left: usize,
    seq: u64,
    pad: String,
}

impl Client {
    fn new(ctx: &Ctx, i: u64) -> Self {
        let mut rng =
            SmallRng::seed_from_u64(mix(ctx.spec.seed ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d)));
        let role = role(ctx, i, &mut rng);
        let n = role.sends.len();
        Client {
            i,
            gen: 0,
            conns: 0,
            name: ctx.user_name(i, 0),
            resume: None,
            node: String::new(),
            role,
            c: Counters::default(),
            rooms: RoomMap::default(),
            inbox: None,
            done: Vec::new(),
            pending: HashMap::new(),
            joins: HashMap::new(),
            next_ref: 1,
            acks: Vec::new(),
            lat_buf: Vec::new(),
            unflushed_recv: 0,
            unflushed_sent: 0,
            unflushed_acked: 0,
            last_flush_ns: 0,
            ready: false,
            started: false,
            stopped: false,
            rng,
            t: Timers {
                end: None,
                stop: None,
                sends: vec![None; n],
                typing: vec![None; n],
                extra: None,
                storm: None,
                retire: None,
            },
            extra_room: None,
            retiring: false,
            drop_ns: 0,
            reconnect_ns: 0,
            rejoins_left: 0,
            seq: 0,
            pad: "x".repeat(ctx.spec.args.payload),
        }
    }

    fn sid(&self) -> u64 {
        (self.i << 16) | (self.gen & 0xffff)
    }

    fn mark_ready(&mut self, ctx: &Ctx) {
        if !self.ready {
            self.ready = true;
            ctx.live.ready.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&mut self, ctx: &Ctx, now: u64) {
        if !self.lat_buf.is_empty() {
            if let Ok(mut h) = ctx.hists[(self.i as usize) % HIST_SHARDS].lock() {
                for &(v, origin) in &self.lat_buf {
                    let v = v.max(1);
                    h.latency.saturating_record(v);
                    match origin {
                        Origin::SameNode => h.latency_same_node.saturating_record(v),
                        Origin::CrossNode => h.latency_cross_node.saturating_record(v),
                        Origin::Unknown => {}
                    }
                }
            }
            self.lat_buf.clear();
        }
        if self.unflushed_recv > 0 {
            ctx.live
                .received
                .fetch_add(self.unflushed_recv, Ordering::Relaxed);
            self.unflushed_recv = 0;
        }
        if self.unflushed_sent > 0 {
            ctx.live
                .sent
                .fetch_add(self.unflushed_sent, Ordering::Relaxed);
            self.unflushed_sent = 0;
        }
        if self.unflushed_acked > 0 {
            ctx.live
                .acked
                .fetch_add(self.unflushed_acked, Ordering::Relaxed);
            self.unflushed_acked = 0;
        }
        self.last_flush_ns = now;
    }

    fn maybe_flush(&mut self, ctx: &Ctx, now: u64) {
        if self.lat_buf.len() >= 128 || now.saturating_sub(self.last_flush_ns) > 200_000_000 {
            self.flush(ctx, now);
        }
    }

    fn take_ref(&mut self) -> i64 {
        let r = self.next_ref;
        self.next_ref += 1;
        r
    }

    /// Marks `room` as left at `now` (nothing sent later is expected there)
    /// and sends `leave`.
    async fn leave(
        &mut self,
        ctx: &Ctx,
        ws: &mut Ws,
        room: String,
        now: u64,
    ) -> Result<(), Outcome> {
        if let Some(m) = self.rooms.get_mut(&room) {
            m.end = Some(now);
            m.live = false;
        }
        let r = self.take_ref();
        self.send_value(ctx, ws, &json!({"type": "leave", "room": room, "ref": r}))
            .await?;
        self.c.leaves += 1;
        Ok(())
    }

    async fn send_value(&self, ctx: &Ctx, ws: &mut Ws, v: &Value) -> Result<(), Outcome> {
        let sent = match ctx.enc {
            Encoding::Json => ws.send_text(v.to_string().as_bytes()).await,
            Encoding::MsgPack => match rmp_serde::to_vec_named(v) {
                Ok(b) => ws.send_binary(&b).await,
                Err(e) => return Err(Outcome::Lost(format!("encode: {e}"))),
            },
        };
        sent.map_err(|e| Outcome::Lost(format!("write_{}", ws_cause(&e))))
    }

    /// After a (re)connection: the inbox and the initial joins.
    async fn on_connected(&mut self, ctx: &Ctx, ws: &mut Ws, w: Welcome) -> Result<(), Outcome> {
        self.name = w.user;
        self.resume = w.resume;
        self.node = w.node;
        if self.role.inbox && self.inbox.is_none() {
            self.inbox = Some(Member::new(format!("d:{}", self.name), 0, String::new()));
        }
        for room in self.role.rooms.clone() {
            let r = self.take_ref();
            self.joins.insert(r, (room.clone(), JoinKind::Initial));
            self.send_value(ctx, ws, &json!({"type": "join", "room": room, "ref": r}))
                .await?;
        }
        if self.role.rooms.is_empty() {
            self.mark_ready(ctx);
        }
        Ok(())
    }

    /// Schedules everything once the start time is known.
    fn on_start(&mut self, ctx: &Ctx, start_ns: u64) {
        self.started = true;
        let a = &ctx.spec.args;
        let start = ctx.instant_at(start_ns);
        self.t.stop = Some(start + Duration::from_secs_f64(a.duration.max(0.0)));
        self.t.end = Some(start + Duration::from_secs_f64((a.duration + a.drain).max(0.0)));
        for k in 0..self.role.sends.len() {
            let plan = self.role.sends[k].clone();
            let first = if plan.poisson {
                self.exp(plan.interval)
            } else {
                plan.phase
            };
            if first.is_finite() && first < a.duration {
                self.schedule_send(k, start + Duration::from_secs_f64(first), &plan);
            }
        }
        if let Some(mean) = self.role.extra {
            let d = self.exp(mean);
            if d.is_finite() {
                self.t.extra = Some(start + Duration::from_secs_f64(d.min(a.duration * 2.0)));
            }
        }
        if a.scenario == Scenario::ReconnectStorm {
            self.t.storm = Some(start + Duration::from_secs_f64(a.storm_at().max(0.0)));
        }
        if a.scenario == Scenario::Churn {
            self.t.retire = Some(Instant::now() + self.lifetime(ctx));
        }
    }

    fn lifetime(&mut self, ctx: &Ctx) -> Duration {
        let l = ctx.spec.args.lifetime.max(0.05);
        Duration::from_secs_f64(self.rng.random_range(0.5 * l..1.5 * l))
    }

    fn exp(&mut self, mean: f64) -> f64 {
        if !mean.is_finite() {
            return f64::INFINITY;
        }
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        -u.ln() * mean
    }

    fn schedule_send(&mut self, k: usize, at: Instant, plan: &SendPlan) {
        self.t.sends[k] = Some((at, 0));
        self.t.typing[k] = None;
        if plan.typing {
            let typing_at = at.checked_sub(Duration::from_millis(500)).unwrap_or(at);
            if typing_at > Instant::now() {
                self.t.typing[k] = Some(typing_at);
            }
        }
    }

    fn next_timer(&self) -> Option<(Instant, Action)> {
        let mut best: Option<(Instant, Action)> = None;
        let mut consider = |at: Option<Instant>, a: Action| {
            if let Some(at) = at {
                if best.is_none_or(|(b, _)| at < b) {
                    best = Some((at, a));
                }
            }
        };
        consider(self.t.end, Action::End);
        consider(self.t.stop, Action::Stop);
        if !self.stopped {
            for (k, s) in self.t.sends.iter().enumerate() {
                consider(s.map(|(at, _)| at), Action::Send(k));
            }
            for (k, s) in self.t.typing.iter().enumerate() {
                consider(*s, Action::Typing(k));
            }
            consider(self.t.extra, Action::Extra);
            consider(self.t.storm, Action::Storm);
            consider(self.t.retire, Action::Retire);
        }
        best
    }

    /// Runs one connection until the run ends, the schedule drops or retires
    /// it, or the server closes it.
    async fn session(
        &mut self,
        ctx: &Ctx,
        ws: &mut Ws,
        start_rx: &mut watch::Receiver<Option<u64>>,
    ) -> Outcome {
        // One timer for the connection, re-armed only when the next deadline
        // changes (a fresh `sleep` per frame costs a timer-wheel insert and
        // removal per message).
        let sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        loop {
            if !self.started {
                if let Some(ns) = *start_rx.borrow_and_update() {
                    self.on_start(ctx, ns);
                }
            }
            let timer = self.next_timer();
            if let Some((at, _)) = timer {
                if armed != Some(at) {
                    sleep.as_mut().reset(at);
                    armed = Some(at);
                }
            }
            enum Ev {
                Ws(Option<Result<In, WsError>>),
                Start,
                Timer,
            }
            let ev = tokio::select! {
                m = ws.next() => Ev::Ws(m),
                r = start_rx.changed(), if !self.started => {
                    if r.is_err() { return Outcome::End } else { Ev::Start }
                }
                _ = &mut sleep, if timer.is_some() => {
                    armed = None;
                    Ev::Timer
                }
            };
            match ev {
                Ev::Start => continue,
                Ev::Ws(None) => return Outcome::Lost("eof".into()),
                Ev::Ws(Some(Err(e))) => return Outcome::Lost(ws_cause(&e)),
                Ev::Ws(Some(Ok(msg))) => {
                    if let Some(o) = self.on_message(ctx, msg) {
                        return o;
                    }
                }
                Ev::Timer => {
                    let Some((at, action)) = timer else { continue };
                    if Instant::now() < at {
                        continue;
                    }
                    if let Err(o) = self.on_action(ctx, ws, action).await {
                        return o;
                    }
                    match action {
                        Action::End => return Outcome::End,
                        Action::Storm => return Outcome::Drop,
                        Action::Retire if self.t.retire.is_none() => return Outcome::Retire,
                        _ => {}
                    }
                }
            }
        }
    }

    async fn on_action(&mut self, ctx: &Ctx, ws: &mut Ws, action: Action) -> Result<(), Outcome> {
        match action {
            Action::End => {
                self.t.end = None;
            }
            Action::Stop => {
                self.t.stop = None;
                self.stopped = true;
            }
            Action::Storm => {
                self.t.storm = None;
            }
            Action::Retire => {
                // Leave every room and close once every `left` arrived (the
                // queue is FIFO, so everything sent before is then
                // delivered), or after 2 s.
                self.t.retire = None;
                if !self.retiring {
                    self.retiring = true;
                    let now = now_ns();
                    let rooms: Vec<String> = self.rooms.keys().cloned().collect();
                    for room in rooms {
                        self.leave(ctx, ws, room, now).await?;
                    }
                    if !self.rooms.is_empty() {
                        self.t.retire = Some(Instant::now() + Duration::from_secs(2));
                    }
                }
            }
            Action::Typing(k) => {
                self.t.typing[k] = None;
                if let SendTo::Room(room) = &self.role.sends[k].to {
                    if self.rooms.get(room).is_some_and(|m| m.live) {
                        let v = json!({"type": "typing", "room": room, "active": true});
                        self.send_value(ctx, ws, &v).await?;
                        self.c.typing_sent += 1;
                    }
                }
            }
            Action::Send(k) => self.do_send(ctx, ws, k).await?,
            Action::Extra => {
                let a = &ctx.spec.args;
                if let Some(room) = self.extra_room.take() {
                    self.leave(ctx, ws, room, now_ns()).await?;
                    let d = self.exp(self.role.extra.unwrap_or(15.0));
                    self.t.extra = Some(Instant::now() + Duration::from_secs_f64(d.min(3600.0)));
                } else {
                    let l = MixedLayout::new(a.clients, a.room_size());
                    let home = self.role.rooms.first().cloned().unwrap_or_default();
                    let n = self.rng.random_range(0..l.normal_rooms);
                    let room = ctx.room_name('n', n);
                    if room != home && !self.rooms.contains_key(&room) {
                        let r = self.take_ref();
                        self.joins.insert(r, (room.clone(), JoinKind::Extra));
                        self.send_value(ctx, ws, &json!({"type": "join", "room": room, "ref": r}))
                            .await?;
                        self.extra_room = Some(room);
                        let stay = self.rng.random_range(3.0..8.0);
                        self.t.extra = Some(Instant::now() + Duration::from_secs_f64(stay));
                    } else {
                        self.t.extra = Some(Instant::now() + Duration::from_secs(1));
                    }
                }
            }
        }
        Ok(())
    }

    async fn do_send(&mut self, ctx: &Ctx, ws: &mut Ws, k: usize) -> Result<(), Outcome> {
        let Some((at, _)) = self.t.sends[k] else {
            return Ok(());
        };
        let plan = self.role.sends[k].clone();
        let now_i = Instant::now();
        let now = now_ns();
        // Next occurrence first, so an early return keeps the schedule.
        let mut next = if plan.poisson {
            now_i + Duration::from_secs_f64(self.exp(plan.interval).min(3600.0))
        } else {
            at + Duration::from_secs_f64(plan.interval)
        };
        if next + Duration::from_secs(1) < now_i {
            let behind = (now_i - next).as_secs_f64();
            self.c.sends_skipped += (behind / plan.interval) as u64;
            next = now_i + Duration::from_secs_f64(plan.interval);
        }
        self.schedule_send(k, next, &plan);
        let lag = now_i.saturating_duration_since(at).as_micros() as u64;
        let (stream, room, to) = match &plan.to {
            SendTo::Room(room) => {
                if !self.rooms.get(room).is_some_and(|m| m.live) {
                    self.c.sends_skipped += 1;
                    return Ok(());
                }
                (format!("r:{room}"), Some(room.clone()), None)
            }
            SendTo::DmPartner(j) => {
                let to = ctx.user_name(*j, 0);
                (format!("d:{to}"), None, Some(to))
            }
            SendTo::DmRandom => {
                let n = ctx.spec.args.clients;
                let mut j = self.rng.random_range(0..n);
                if j == self.i {
                    j = (j + 1) % n;
                }
                let to = ctx.user_name(j, 0);
                (format!("d:{to}"), None, Some(to))
            }
        };
        self.seq += 1;
        let text = format!(
            "t={now} n={} s={} c={}{}",
            self.node, self.seq, self.i, self.pad
        );
        let r = self.take_ref();
        let v = match (&room, &to) {
            (Some(room), _) => json!({"type": "send", "room": room, "text": text, "ref": r}),
            (None, Some(to)) => json!({"type": "dm", "to": to, "text": text, "ref": r}),
            _ => return Ok(()),
        };
        self.pending.insert(
            r,
            Pending {
                stream,
                room,
                sent_ns: now,
            },
        );
        self.send_value(ctx, ws, &v).await?;
        self.c.sent += 1;
        self.unflushed_sent += 1;
        if let Ok(mut h) = ctx.hists[(self.i as usize) % HIST_SHARDS].lock() {
            h.lag.saturating_record(lag.max(1));
        }
        Ok(())
    }

    fn on_message(&mut self, ctx: &Ctx, msg: In) -> Option<Outcome> {
        let (bytes, enc): (&[u8], Encoding) = match &msg {
            In::Text(t) => (t, Encoding::Json),
            In::Binary(b) => (b, Encoding::MsgPack),
            In::Close(code) => {
                return Some(Outcome::Lost(format!("close_{}", code.unwrap_or(1005))));
            }
        };
        let now = now_ns();
        if let Some(m) = fast_message(bytes, enc) {
            self.on_room_message(&m.room, m.id, &m.text, now);
        } else {
            match decode_server_frame(bytes, enc) {
                Ok(f) => self.on_frame(ctx, f, now),
                Err(_) => self.c.undecodable += 1,
            }
        }
        self.maybe_flush(ctx, now);
        if self.retiring && self.rooms.is_empty() {
            return Some(Outcome::Retire);
        }
        None
    }

    fn on_room_message(&mut self, room: &str, id: u64, text: &str, now: u64) {
        let lat = self.stamp(text, now);
        let Some(member) = self.rooms.get_mut(room) else {
            self.c.stray += 1;
            return;
        };
        if id <= member.join_point {
            self.c.duplicates_of_history += 1;
        } else if member.own.contains(&id) {
            self.c.self_echo += 1;
        } else if !member.ids.insert(id) {
            self.c.duplicates += 1;
        } else {
            if id < member.max_live {
                self.c.out_of_order += 1;
            }
            member.max_live = member.max_live.max(id);
            member.max_seen = member.max_seen.max(id);
            self.c.live_received += 1;
            self.unflushed_recv += 1;
            if let Some(l) = lat {
                self.lat_buf.push(l);
            }
        }
    }

    /// A received text's latency, and whether it crossed nodes.
    fn stamp(&self, text: &str, now: u64) -> Option<(u64, Origin)> {
        let (lat, node) = latency_us(text, now)?;
        let origin = match node {
            Some(n) if !n.is_empty() && !self.node.is_empty() => {
                if n == self.node {
                    Origin::SameNode
                } else {
                    Origin::CrossNode
                }
            }
            _ => Origin::Unknown,
        };
        Some((lat, origin))
    }

    fn ref_int(r: &Option<Ref>) -> Option<i64> {
        match r {
            Some(Ref::Int(n)) => Some(*n),
            _ => None,
        }
    }

    fn on_frame(&mut self, ctx: &Ctx, frame: ServerFrame, now: u64) {
        match frame {
            ServerFrame::Message(m) => self.on_room_message(&m.room, m.id, &m.text, now),
            ServerFrame::Direct {
                from, to, text, id, ..
            } => {
                if to != self.name {
                    self.c.self_echo += 1;
                    return;
                }
                let lat = self.stamp(&text, now);
                let Some(inbox) = self.inbox.as_mut() else {
                    self.c.stray += 1;
                    return;
                };
                if !inbox.ids.insert(id) {
                    self.c.duplicates += 1;
                    return;
                }
                let last = inbox.per_sender.entry(from).or_insert(0);
                if id < *last {
                    self.c.dm_out_of_order += 1;
                }
                *last = (*last).max(id);
                self.c.live_received += 1;
                self.unflushed_recv += 1;
                if let Some(l) = lat {
                    self.lat_buf.push(l);
                }
            }
            ServerFrame::Ack { id, reference, .. } => {
                let Some(p) = Self::ref_int(&reference).and_then(|r| self.pending.remove(&r))
                else {
                    self.c.other_frames += 1;
                    return;
                };
                self.c.acked += 1;
                self.unflushed_acked += 1;
                if let Ok(mut h) = ctx.hists[(self.i as usize) % HIST_SHARDS].lock() {
                    h.ack
                        .saturating_record(((now.saturating_sub(p.sent_ns)) / 1000).max(1));
                }
                if let Some(room) = &p.room {
                    if let Some(m) = self.rooms.get_mut(room) {
                        m.ids.insert(id);
                        m.own.insert(id);
                    }
                }
                let sid = self.sid();
                self.acks.push((p.stream, id, now, sid));
            }
            ServerFrame::Joined {
                room,
                epoch,
                history,
                recovered,
                reference,
                ..
            } => {
                let Some((_, kind)) = Self::ref_int(&reference).and_then(|r| self.joins.remove(&r))
                else {
                    self.c.other_frames += 1;
                    return;
                };
                let last = history.last().map(|h| h.message.id).unwrap_or(0);
                match kind {
                    JoinKind::Initial | JoinKind::Extra => {
                        self.c.joins += 1;
                        self.rooms
                            .insert(room.clone(), Member::new(format!("r:{room}"), last, epoch));
                    }
                    JoinKind::Rejoin { since } => {
                        self.c.storm_rejoined += 1;
                        if recovered {
                            self.c.recovered_true += 1;
                        } else {
                            self.c.recovered_false += 1;
                        }
                        if let Some(m) = self.rooms.get_mut(&room) {
                            for h in &history {
                                let id = h.message.id;
                                if id <= since || m.ids.contains(id) {
                                    continue;
                                }
                                m.ids.insert(id);
                                m.max_seen = m.max_seen.max(id);
                                self.c.history_received += 1;
                            }
                            m.join_point = last.max(since);
                            m.max_live = m.max_live.max(m.join_point);
                            m.epoch = epoch;
                            m.live = true;
                        }
                        self.rejoin_done(ctx, now);
                    }
                }
                if !self.joins.values().any(|(_, k)| *k == JoinKind::Initial) {
                    self.mark_ready(ctx);
                }
            }
            ServerFrame::Left { room, .. } => {
                if let Some(m) = self.rooms.remove(&room) {
                    let sid = self.sid();
                    self.done.push(m.out(sid, Some(now)));
                }
            }
            ServerFrame::Error {
                code, reference, ..
            } => {
                Counters::bump(&mut self.c.errors, code.as_str());
                if let Some(r) = Self::ref_int(&reference) {
                    self.pending.remove(&r);
                    if let Some((room, kind)) = self.joins.remove(&r) {
                        match kind {
                            JoinKind::Initial => {
                                if !self.joins.values().any(|(_, k)| *k == JoinKind::Initial) {
                                    self.mark_ready(ctx);
                                }
                            }
                            JoinKind::Extra => {
                                if self.extra_room.as_deref() == Some(room.as_str()) {
                                    self.extra_room = None;
                                }
                            }
                            JoinKind::Rejoin { .. } => self.rejoin_done(ctx, now),
                        }
                    }
                }
            }
            ServerFrame::Typing { .. } => self.c.typing_received += 1,
            ServerFrame::UserJoined { .. } => self.c.user_joined += 1,
            ServerFrame::UserLeft { .. } => self.c.user_left += 1,
            _ => self.c.other_frames += 1,
        }
    }

    fn rejoin_done(&mut self, ctx: &Ctx, now: u64) {
        if self.rejoins_left > 0 {
            self.rejoins_left -= 1;
            if self.rejoins_left == 0 {
                let us = now.saturating_sub(self.drop_ns) / 1000;
                let rejoin_us = now.saturating_sub(self.reconnect_ns) / 1000;
                if let Ok(mut h) = ctx.hists[(self.i as usize) % HIST_SHARDS].lock() {
                    h.recovery.saturating_record(us.max(1));
                    h.rejoin.saturating_record(rejoin_us.max(1));
                }
            }
        }
    }

    /// The connection ended: what was not acked will not be.
    fn connection_ended(&mut self) {
        self.c.unacked += self.pending.len() as u64;
        self.pending.clear();
        self.joins.clear();
    }

    /// Closes every membership (at `end`, or to the end of the run when None).
    fn close_members(&mut self, end: Option<u64>) {
        let sid = self.sid();
        for (_, m) in self.rooms.drain() {
            self.done.push(m.out(sid, end));
        }
        if let Some(m) = self.inbox.take() {
            self.done.push(m.out(sid, end));
        }
        self.extra_room = None;
    }

    fn finish(mut self, ctx: &Ctx) -> ClientOut {
        self.mark_ready(ctx);
        self.connection_ended();
        self.close_members(None);
        self.flush(ctx, now_ns());
        ClientOut {
            counters: self.c,
            members: self.done,
            acks: self.acks,
        }
    }

    /// Reconnects (same name with its resume token, or a new generation's
    /// name) until it works or the run ends.
    async fn reconnect(&mut self, ctx: &Ctx) -> Option<(Ws, Welcome)> {
        loop {
            if self.t.end.is_some_and(|e| Instant::now() >= e) {
                return None;
            }
            self.c.reconnect_attempts += 1;
            self.conns += 1;
            let name = self.name.clone();
            let resume = self.resume.clone();
            let connecting = connect(
                ctx,
                self.i,
                self.role.group,
                self.conns,
                &name,
                resume.as_deref(),
            );
            let attempt = match self.t.end {
                Some(end) => match tokio::time::timeout_at(end, connecting).await {
                    Ok(r) => r,
                    Err(_) => return None,
                },
                None => connecting.await,
            };
            match attempt {
                Ok(x) => {
                    self.c.reconnect_ok += 1;
                    ctx.live.open.fetch_add(1, Ordering::Relaxed);
                    return Some(x);
                }
                Err(cause) => {
                    Counters::bump(&mut self.c.reconnect_fail, &cause);
                    let backoff = self.rng.random_range(100..500);
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                }
            }
        }
    }

    /// Storm: rejoin every room with `since`/`epoch`.
    async fn rejoin(&mut self, ctx: &Ctx, ws: &mut Ws, w: Welcome) -> Result<(), Outcome> {
        self.name = w.user;
        self.resume = w.resume;
        self.node = w.node;
        let rooms: Vec<(String, u64, String)> = self
            .rooms
            .iter()
            .map(|(room, m)| (room.clone(), m.max_seen.max(m.after), m.epoch.clone()))
            .collect();
        self.rejoins_left = rooms.len();
        if rooms.is_empty() {
            self.rejoins_left = 1;
            self.rejoin_done(ctx, now_ns());
        }
        for (room, since, epoch) in rooms {
            let r = self.take_ref();
            self.joins
                .insert(r, (room.clone(), JoinKind::Rejoin { since }));
            let v = json!({"type": "join", "room": room, "since": since, "epoch": epoch, "ref": r});
            self.send_value(ctx, ws, &v).await?;
        }
        Ok(())
    }
}

async fn close_quietly(ws: &mut Ws) {
    let _ = timeout(Duration::from_millis(300), ws.close()).await;
}

/// Runs client `i` (the `local`-th of its worker) to the end of the run.
pub(crate) async fn run_client(ctx: Arc<Ctx>, i: u64, local: u64) -> ClientOut {
    let ctx = &*ctx;
    let mut cl = Client::new(ctx, i);
    if ctx.spec.connect_rate > 0.0 {
        sleep_until(ctx.t0 + Duration::from_secs_f64(local as f64 / ctx.spec.connect_rate)).await;
    }
    cl.c.connect_attempts += 1;
    ctx.connect_first_ns.fetch_min(now_ns(), Ordering::Relaxed);
    let name = cl.name.clone();
    let (mut ws, welcome) = match connect(ctx, i, cl.role.group, 0, &name, None).await {
        Ok(x) => x,
        Err(cause) => {
            Counters::bump(&mut cl.c.connect_fail, &cause);
            ctx.live.failed.fetch_add(1, Ordering::Relaxed);
            return cl.finish(ctx);
        }
    };
    cl.c.connect_ok += 1;
    ctx.connect_last_ns.fetch_max(now_ns(), Ordering::Relaxed);
    ctx.live.connected.fetch_add(1, Ordering::Relaxed);
    ctx.live.open.fetch_add(1, Ordering::Relaxed);
    let mut start_rx = ctx.start.clone();
    let mut first = cl.on_connected(ctx, &mut ws, welcome).await;
    loop {
        let outcome = match std::mem::replace(&mut first, Ok(())) {
            Err(o) => o,
            Ok(()) => cl.session(ctx, &mut ws, &mut start_rx).await,
        };
        match outcome {
            Outcome::End => {
                close_quietly(&mut ws).await;
                ctx.live.open.fetch_sub(1, Ordering::Relaxed);
                break;
            }
            Outcome::Drop => {
                drop(ws);
                ctx.live.open.fetch_sub(1, Ordering::Relaxed);
                cl.drop_ns = now_ns();
                cl.c.storm_dropped += 1;
                cl.connection_ended();
                for m in cl.rooms.values_mut() {
                    m.live = false;
                }
                let spread = ctx.spec.args.storm_spread_ms;
                if spread > 0 {
                    let d = cl.rng.random_range(0..spread);
                    tokio::time::sleep(Duration::from_millis(d)).await;
                }
                cl.reconnect_ns = now_ns();
                let Some((w2, welcome)) = cl.reconnect(ctx).await else {
                    break;
                };
                ws = w2;
                first = cl.rejoin(ctx, &mut ws, welcome).await;
            }
            Outcome::Retire | Outcome::Lost(_) => {
                let now = now_ns();
                cl.close_members(Some(now));
                if let Outcome::Lost(reason) = &outcome {
                    Counters::bump(&mut cl.c.server_closes, reason);
                } else {
                    close_quietly(&mut ws).await;
                    cl.c.churned += 1;
                }
                drop(ws);
                ctx.live.open.fetch_sub(1, Ordering::Relaxed);
                cl.connection_ended();
                let churn = ctx.spec.args.scenario == Scenario::Churn;
                // Churn comes back as a new user (also after a server close);
                // everyone else stays down.
                if !churn || !cl.started || cl.stopped {
                    break;
                }
                cl.gen += 1;
                cl.name = ctx.user_name(i, cl.gen);
                cl.resume = None;
                cl.retiring = false;
                let Some((w2, welcome)) = cl.reconnect(ctx).await else {
                    break;
                };
                ws = w2;
                cl.t.retire = Some(Instant::now() + cl.lifetime(ctx));
                first = cl.on_connected(ctx, &mut ws, welcome).await;
            }
        }
    }
    cl.finish(ctx)
}

#[cfg(test)]
mod tests {
    use crate::common::Ranges;

    #[test]
    fn ranges_track_ids() {
        let mut r = Ranges::default();
        for id in [1, 2, 3, 5, 4, 10, 8, 9] {
            assert!(r.insert(id));
        }
        assert!(!r.insert(4));
        assert_eq!(r.0, vec![(1, 5), (8, 10)]);
        assert!(r.contains(9) && !r.contains(7) && !r.contains(11));
    }
}
