//! Scenario planning: what each client does (its rooms, its sends and
//! their schedule, extra rooms, DMs), derived from its index, the flags and
//! the seed alone, so every worker plans the same run.

use rand::rngs::SmallRng;
use rand::Rng as _;

use crate::args::Scenario;
use crate::client::Ctx;

#[derive(Debug, Clone)]
pub(crate) enum SendTo {
    Room(String),
    DmPartner(u64),
    DmRandom,
}

#[derive(Debug, Clone)]
pub(crate) struct SendPlan {
    pub(crate) to: SendTo,
    /// Seconds between sends (mean, when Poisson).
    pub(crate) interval: f64,
    /// Offset of the first send after the start, seconds (fixed schedules).
    pub(crate) phase: f64,
    pub(crate) poisson: bool,
    /// Send `typing` 0.5 s before each message.
    pub(crate) typing: bool,
}

impl SendPlan {
    /// A send every `interval` seconds, the first after `phase`.
    pub(crate) fn fixed(to: SendTo, interval: f64, phase: f64) -> Self {
        SendPlan {
            to,
            interval,
            phase,
            poisson: false,
            typing: false,
        }
    }

    /// Sends at Poisson times of mean `interval`, optionally typing first.
    pub(crate) fn poisson(to: SendTo, interval: f64, typing: bool) -> Self {
        SendPlan {
            to,
            interval,
            phase: 0.0,
            poisson: true,
            typing,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Role {
    /// Number of the home room (or DM pair): selects the target with --affinity room.
    pub(crate) group: u64,
    pub(crate) rooms: Vec<String>,
    pub(crate) sends: Vec<SendPlan>,
    /// Mixed: mean seconds between joining an extra room (then leaving it).
    pub(crate) extra: Option<f64>,
    /// Whether direct messages may arrive (inbox membership).
    pub(crate) inbox: bool,
}

pub(crate) fn mix(mut x: u64) -> u64 {
    // splitmix64
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Mixed scenario layout: the first 5% of clients are in busy rooms of up to
/// 100, the others in normal rooms of --room-size.
pub(crate) struct MixedLayout {
    pub(crate) busy_n: u64,
    pub(crate) busy_size: u64,
    pub(crate) normal_size: u64,
    pub(crate) normal_rooms: u64,
}

impl MixedLayout {
    pub(crate) fn new(clients: u64, room_size: u64) -> Self {
        let busy_size = 100.min(clients).max(1);
        let busy_n = (clients / 20).min(clients);
        let normal_size = room_size.max(2);
        let normal_rooms = (clients - busy_n).div_ceil(normal_size).max(1);
        MixedLayout {
            busy_n,
            busy_size,
            normal_size,
            normal_rooms,
        }
    }
}

pub(crate) fn role(ctx: &Ctx, i: u64, rng: &mut SmallRng) -> Role {
    let a = &ctx.spec.args;
    let k = a.room_size().max(1);
    let r = a.rate();
    let interval = if r > 0.0 { 1.0 / r } else { f64::INFINITY };
    let random_phase = |rng: &mut SmallRng| rng.random_range(0.0..interval.clamp(1e-3, 1e6));
    let mut role = Role::default();
    match a.scenario {
        Scenario::Idle => {
            role.group = i / k;
            if a.room_size() > 0 {
                role.rooms.push(ctx.room_name('r', i / k));
            }
        }
        Scenario::Fanout => {
            let room = ctx.room_name('f', 0);
            role.rooms.push(room.clone());
            let p = a.publishers();
            if i < p && a.msg_rate > 0.0 {
                let iv = p as f64 / a.msg_rate;
                role.sends.push(SendPlan::fixed(
                    SendTo::Room(room),
                    iv,
                    iv * i as f64 / p as f64,
                ));
            }
        }
        Scenario::Rooms | Scenario::Churn | Scenario::ReconnectStorm | Scenario::Hostile => {
            role.group = i / k;
            let room = ctx.room_name('r', i / k);
            role.rooms.push(room.clone());
            if r > 0.0 {
                let phase = random_phase(rng);
                role.sends
                    .push(SendPlan::fixed(SendTo::Room(room), interval, phase));
            }
        }
        Scenario::Dm => {
            role.group = i / 2;
            role.inbox = true;
            let partner = i ^ 1;
            if partner < a.clients && r > 0.0 && ctx.guest() {
                let phase = random_phase(rng);
                role.sends
                    .push(SendPlan::fixed(SendTo::DmPartner(partner), interval, phase));
            }
        }
        Scenario::Mixed => {
            role.inbox = ctx.guest();
            let l = MixedLayout::new(a.clients, a.room_size());
            let h = mix(i ^ ctx.spec.seed) % 100;
            if i < l.busy_n {
                role.group = i / l.busy_size;
                let room = ctx.room_name('b', i / l.busy_size);
                role.rooms.push(room.clone());
                // Busy rooms: every member chats at 5× the casual rate.
                if r > 0.0 {
                    role.sends
                        .push(SendPlan::poisson(SendTo::Room(room), interval / 5.0, true));
                }
            } else {
                let n = (i - l.busy_n) / l.normal_size;
                role.group = n + l.busy_n.div_ceil(l.busy_size);
                let room = ctx.room_name('n', n);
                role.rooms.push(room.clone());
                // 20% chat casually (with typing), 70% idle.
                if h < 20 && r > 0.0 {
                    role.sends
                        .push(SendPlan::poisson(SendTo::Room(room), interval, true));
                }
            }
            // 4% send direct messages to random users; 5% wander into other rooms.
            if (20..24).contains(&h) && r > 0.0 && ctx.guest() && a.clients > 1 {
                role.sends
                    .push(SendPlan::poisson(SendTo::DmRandom, interval, false));
            }
            if (24..29).contains(&h) && l.normal_rooms > 1 {
                role.extra = Some(15.0);
            }
        }
    }
    role
}
