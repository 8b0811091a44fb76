//! Loss accounting: every acked message against every membership that
//! should have received it (expected vs delivered, lost, in flight when the
//! receiver left, ids assigned twice).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::common::{AckList, MemberOut};

/// Loss accounting over all acks and memberships.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Accounting {
    /// Deliveries that had to happen: for each membership, the messages acked
    /// by other connections in its stream with id > its join point, acked
    /// before it left.
    pub(crate) expected: u64,
    pub(crate) delivered: u64,
    pub(crate) lost: u64,
    /// Acked messages per stream kind.
    pub(crate) acked_room_messages: u64,
    pub(crate) acked_direct_messages: u64,
    /// Two acks with the same id in one room.
    pub(crate) duplicate_ids: u64,
    pub(crate) memberships: u64,
    /// Messages acked within --leave-grace-ms before their receiver left
    /// (or closed): in flight when it left, so they may or may not arrive.
    /// Not in `expected`.
    pub(crate) in_flight_at_leave_delivered: u64,
    pub(crate) in_flight_at_leave_undelivered: u64,
    /// Up to 20 lost deliveries: "stream id=N to sid=S".
    pub(crate) lost_examples: Vec<String>,
}

pub(crate) fn account(
    acks: &mut BTreeMap<String, AckList>,
    members: &[MemberOut],
    grace_ns: u64,
) -> Accounting {
    let mut a = Accounting::default();
    for (stream, list) in acks.iter_mut() {
        list.sort_unstable();
        if stream.starts_with("r:") {
            a.acked_room_messages += list.len() as u64;
            a.duplicate_ids += list.windows(2).filter(|w| w[0].0 == w[1].0).count() as u64;
        } else {
            a.acked_direct_messages += list.len() as u64;
        }
    }
    a.memberships = members.len() as u64;
    for m in members {
        let Some(list) = acks.get(&m.s) else { continue };
        let start = list.partition_point(|x| x.0 <= m.after);
        let ranges = &m.ids.0;
        let mut ri = 0;
        for &(id, ns, sid) in &list[start..] {
            if sid == m.sid {
                continue;
            }
            if m.end.is_some_and(|end| ns >= end) {
                continue;
            }
            while ri < ranges.len() && ranges[ri].1 < id {
                ri += 1;
            }
            let got = ri < ranges.len() && ranges[ri].0 <= id;
            if m.end.is_some_and(|end| ns.saturating_add(grace_ns) >= end) {
                if got {
                    a.in_flight_at_leave_delivered += 1;
                } else {
                    a.in_flight_at_leave_undelivered += 1;
                }
                continue;
            }
            a.expected += 1;
            if got {
                a.delivered += 1;
            } else {
                a.lost += 1;
                if a.lost_examples.len() < 20 {
                    a.lost_examples.push(format!(
                        "{} id={id} to sid={}:{}",
                        m.s,
                        m.sid >> 16,
                        m.sid & 0xffff
                    ));
                }
            }
        }
    }
    a
}
