//! The Redis broker ([`Broker`]): `publish.lua` stores a message in the
//! room's capped history list and publishes its envelope in one script (the
//! id from the room's sequence, the `client_id` key for idempotency);
//! subscriptions go to the pub/sub connection ([`super::pubsub`], or
//! [`super::cluster`] on a Redis Cluster) in call order; typing is one
//! `PUBLISH`; `direct.lua` routes a DM to the recipient's and the sender's
//! user channels when the recipient is online.

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::super::{
    page, random_token, BackplaneError, Broker, DirectOutcome, EventStream, Origin, PublishRequest,
    Published, Result, Topic,
};
use super::{envelope, lock, pubsub::SubCmd, RedisBackplane, Shared, CLIENT_ID_TTL, OWN_RECENT};
use crate::protocol::{ChatMessage, HISTORY_LEN};

impl Shared {
    /// Records a message this node published (Redis Cluster only).
    pub(super) fn remember_own(&self, room: &str, id: u64, ts: u64, origin: &Origin) {
        let mut own = lock(&self.own_recent);
        if own.len() >= OWN_RECENT {
            own.pop_front();
        }
        own.push_back((room.to_owned(), id, ts, origin.clone()));
    }

    /// The origin of a message this node published recently, if any.
    pub(super) fn own_origin(&self, room: &str, id: u64, ts: u64) -> Option<Origin> {
        lock(&self.own_recent)
            .iter()
            .rev()
            .find(|(r, i, t, _)| *i == id && *t == ts && r == room)
            .map(|(_, _, _, o)| o.clone())
    }

    /// The room's whole stored history (at most the cap), oldest first;
    /// `op` labels the call in metrics.
    pub(super) async fn read_history(
        &self,
        op: &'static str,
        room: &str,
    ) -> Result<Vec<ChatMessage>> {
        let key = self.keys.history(room);
        let entries: Vec<Vec<u8>> = self
            .cmd(op, redis::cmd("LRANGE").arg(key).arg(0).arg(-1).to_owned())
            .await?;
        Ok(decode_history(room, &entries))
    }
}

pub(super) fn decode_history(room: &str, entries: &[Vec<u8>]) -> Vec<ChatMessage> {
    entries
        .iter()
        .filter_map(|bytes| {
            let m = envelope::decode_stored(bytes);
            if m.is_none() {
                tracing::warn!(room, "undecodable history entry skipped");
            }
            m
        })
        .collect()
}

#[async_trait]
impl Broker for RedisBackplane {
    fn take_events(&self) -> Option<EventStream> {
        lock(&self.events_rx).take()
    }

    fn subscribe(&self, topic: Topic) -> oneshot::Receiver<Result<()>> {
        let (tx, rx) = oneshot::channel();
        let channel = self.shared.channel(&topic);
        if let Err(mpsc::error::SendError(SubCmd::Subscribe(_, tx))) =
            self.shared.sub_tx.send(SubCmd::Subscribe(channel, tx))
        {
            let _ = tx.send(Err(BackplaneError::Unavailable(
                "backplane is shut down".into(),
            )));
        }
        rx
    }

    fn unsubscribe(&self, topic: Topic) {
        let channel = self.shared.channel(&topic);
        let _ = self.shared.sub_tx.send(SubCmd::Unsubscribe(channel));
    }

    async fn publish(&self, req: PublishRequest) -> Result<Published> {
        let s = &self.shared;
        let keys = &s.keys;
        let mut inv = s.invoke(&s.scripts.publish);
        inv.key(keys.epoch(&req.room))
            .key(keys.seq(&req.room))
            .key(keys.history(&req.room))
            .key(keys.presence(&req.room));
        if let Some(client_id) = &req.client_id {
            inv.key(keys.client_id(&req.room, &req.from, client_id));
        }
        inv.arg(&req.room)
            .arg(&req.from)
            .arg(&req.text)
            .arg(random_token())
            .arg(keys.room_channel(&req.room))
            .arg(HISTORY_LEN)
            .arg(CLIENT_ID_TTL.as_secs())
            .arg(req.origin.as_ref().map(|o| o.node.as_str()).unwrap_or(""))
            .arg(req.origin.as_ref().map(|o| o.session).unwrap_or(0))
            .arg(req.traceparent.as_deref().unwrap_or(""))
            .arg(s.room_ttl_secs());
        let (duplicate, id, ts): (i64, u64, u64) = s.eval("publish", inv).await?;
        if s.cluster && duplicate == 0 {
            if let Some(origin) = &req.origin {
                s.remember_own(&req.room, id, ts, origin);
            }
        }
        Ok(Published {
            id,
            ts,
            duplicate: duplicate == 1,
        })
    }

    async fn history(
        &self,
        room: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>> {
        let messages = self.shared.read_history("history", room).await?;
        Ok(page(&messages, before, limit))
    }

    async fn typing(&self, room: &str, user: &str, active: bool, origin: Origin) -> Result<()> {
        let s = &self.shared;
        let payload = envelope::typing(room, user, active, &origin);
        let _: i64 = s
            .cmd(
                "typing",
                redis::cmd(s.publish_command())
                    .arg(s.keys.room_channel(room))
                    .arg(payload)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn direct(
        &self,
        from: &str,
        to: &str,
        text: &str,
        origin: Origin,
    ) -> Result<DirectOutcome> {
        let s = &self.shared;
        let mut inv = s.invoke(&s.scripts.direct);
        // On a cluster the script runs in the recipient's slot (its counter
        // and channel) and the sender's copy is published separately: the
        // sender's channel lives in another slot.
        let (counter, sender_channel) = if s.cluster {
            (s.keys.user_dm_seq(to), String::new())
        } else {
            (s.keys.dm_seq(), s.keys.user_channel(from))
        };
        inv.key(counter)
            .arg(from)
            .arg(to)
            .arg(text)
            .arg(s.keys.user_channel(to))
            .arg(sender_channel)
            .arg(&origin.node)
            .arg(origin.session);
        let (delivered, id, ts, packed): (i64, u64, u64, Vec<u8>) = s.eval("direct", inv).await?;
        if delivered != 1 {
            return Ok(DirectOutcome::Offline);
        }
        if s.cluster && from != to {
            // Delivered to the recipient already: a failure here only costs
            // the sender's other connections their copy.
            let copy = redis::cmd("SPUBLISH")
                .arg(s.keys.user_channel(from))
                .arg(packed)
                .to_owned();
            if let Err(e) = s.cmd::<i64>("direct", copy).await {
                tracing::debug!(error = %e, "publishing the sender's copy of a direct message failed");
            }
        }
        Ok(DirectOutcome::Delivered { id, ts })
    }
}
