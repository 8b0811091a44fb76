//! Per-room recovery state: the room's epoch and which message ids the
//! client has seen, so that a rejoin can ask for `since` (PROTOCOL §3) and
//! print exactly the messages it missed, each once.
//!
//! Ids are per room and gapless within an epoch, but they may be seen out of
//! order (an `ack` for the client's own message can overtake a `message`
//! from someone else). So the cursor keeps a `floor` (every id up to it is
//! seen or was before the client's time) and the set of seen ids above it;
//! `since` is the floor, never an id that would skip an unseen one.

use std::collections::BTreeSet;

/// How many seen ids above the floor are kept before the floor jumps over
/// a gap that never filled (a message the client will not get any more).
const MAX_ABOVE: usize = 256;

/// Recovery state of one joined room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoomCursor {
    /// The room's epoch as of the last `joined`.
    pub(crate) epoch: String,
    floor: u64,
    above: BTreeSet<u64>,
}

impl RoomCursor {
    /// A cursor for a room joined in `epoch`, before any message is seen.
    pub(crate) fn new(epoch: String) -> Self {
        RoomCursor {
            epoch,
            floor: 0,
            above: BTreeSet::new(),
        }
    }

    /// The `since` of a rejoin: every id up to it has been seen.
    pub(crate) fn since(&self) -> u64 {
        self.floor
    }

    /// Whether `id` has not been seen yet.
    pub(crate) fn is_new(&self, id: u64) -> bool {
        id > self.floor && !self.above.contains(&id)
    }

    /// Marks `id` seen; returns whether it was new (print it) or a duplicate.
    pub(crate) fn see(&mut self, id: u64) -> bool {
        if !self.is_new(id) {
            return false;
        }
        self.above.insert(id);
        self.advance();
        true
    }

    /// Everything up to `id` is settled: seen, or announced as missed.
    /// Used after a `joined`, whose history ends at the room's newest id.
    pub(crate) fn settle(&mut self, id: u64) {
        if id > self.floor {
            self.floor = id;
            self.above = self.above.split_off(&(id + 1));
            self.advance();
        }
    }

    fn advance(&mut self) {
        while self.above.first() == Some(&(self.floor + 1)) {
            self.above.pop_first();
            self.floor += 1;
        }
        if self.above.len() > MAX_ABOVE {
            // A gap that stayed open this long will not fill: jump over it.
            if let Some(&first) = self.above.first() {
                self.floor = first - 1;
                self.advance();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_ids_advance_the_floor() {
        let mut c = RoomCursor::new("e".into());
        assert!(c.see(1));
        assert!(c.see(2));
        assert!(!c.see(2), "duplicate");
        assert!(!c.see(1), "old");
        assert_eq!(c.since(), 2);
    }

    #[test]
    fn out_of_order_ids_keep_since_at_the_gap() {
        let mut c = RoomCursor::new("e".into());
        c.settle(10);
        assert!(c.see(12), "own ack overtook message 11");
        assert_eq!(c.since(), 10, "11 is still missing");
        assert!(c.is_new(11));
        assert!(!c.is_new(12));
        assert!(c.see(11));
        assert_eq!(c.since(), 12);
    }

    #[test]
    fn settle_moves_past_history() {
        let mut c = RoomCursor::new("e".into());
        c.see(3);
        c.settle(50);
        assert_eq!(c.since(), 50);
        assert!(!c.is_new(3) && !c.is_new(50) && c.is_new(51));
        c.settle(20);
        assert_eq!(c.since(), 50, "never goes back");
    }

    #[test]
    fn a_gap_that_never_fills_is_skipped() {
        let mut c = RoomCursor::new("e".into());
        for id in 2..=(MAX_ABOVE as u64 + 2) {
            c.see(id);
        }
        assert_eq!(c.since(), MAX_ABOVE as u64 + 2);
    }
}
