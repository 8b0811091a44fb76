//! The commands of a connection, one function each: each asks the node and
//! turns its answer into the reply frame. Failures come back as the node's
//! one error type, which the reader turns into an `error` frame.

use super::reader::Reader;
use crate::node::NodeError;
use crate::protocol::{Command, LeaveReason, Ref, ServerFrame};

impl Reader {
    /// Runs one validated command; its reply (if any) is queued before the
    /// next command of the connection runs.
    pub(super) async fn execute(
        &mut self,
        command: Command,
        reference: Option<Ref>,
    ) -> Result<(), NodeError> {
        match command {
            Command::Join { room, since, epoch } => {
                // `joined` is queued by the node, in order with the replay.
                self.node
                    .join(&self.handle, &room, since, epoch.as_deref(), reference)
                    .await
            }
            Command::Leave { room } => self.leave(room, reference).await,
            Command::Send {
                room,
                text,
                client_id,
            } => self.send(room, text, client_id, reference).await,
            Command::Dm { to, text } => self.dm(to, text, reference).await,
            Command::Typing { room, active } => self.node.typing(&self.handle, &room, active).await,
            Command::Who { room } => self.who(room, reference).await,
            Command::History {
                room,
                before,
                limit,
            } => self.history(room, before, limit, reference).await,
            Command::Ping => {
                self.reply(ServerFrame::Pong { reference });
                Ok(())
            }
        }
    }

    async fn leave(&mut self, room: String, reference: Option<Ref>) -> Result<(), NodeError> {
        self.node
            .leave(&self.handle, &room, LeaveReason::Leave)
            .await?;
        self.reply(ServerFrame::Left { room, reference });
        Ok(())
    }

    async fn send(
        &mut self,
        room: String,
        text: String,
        client_id: Option<String>,
        reference: Option<Ref>,
    ) -> Result<(), NodeError> {
        let published = self
            .node
            .publish(&self.handle, &room, text, client_id)
            .await?;
        self.reply(ServerFrame::Ack {
            id: published.id,
            ts: published.ts,
            room: Some(room),
            reference,
        });
        Ok(())
    }

    async fn dm(
        &mut self,
        to: String,
        text: String,
        reference: Option<Ref>,
    ) -> Result<(), NodeError> {
        let (id, ts) = self.node.direct(&self.handle, &to, &text).await?;
        self.reply(ServerFrame::Ack {
            id,
            ts,
            room: None,
            reference,
        });
        Ok(())
    }

    async fn who(&mut self, room: String, reference: Option<Ref>) -> Result<(), NodeError> {
        let users = self.node.who(&self.handle, &room).await?;
        self.reply(ServerFrame::Presence {
            room,
            users,
            reference,
        });
        Ok(())
    }

    async fn history(
        &mut self,
        room: String,
        before: Option<u64>,
        limit: usize,
        reference: Option<Ref>,
    ) -> Result<(), NodeError> {
        let messages = self.node.history(&room, before, limit).await?;
        self.reply(ServerFrame::History {
            room,
            messages: messages.into_iter().map(Into::into).collect(),
            reference,
        });
        Ok(())
    }
}
