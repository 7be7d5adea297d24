//! Data frames the owner collects during one drain, grouped by destination, so the transport
//! takes each destination's frames in one call ([`ChannelTransport::send_data_many`]): one
//! queue entry per destination and pass instead of one per frame.
//!
//! [`ChannelTransport::send_data_many`]: crate::ChannelTransport::send_data_many

use std::sync::Arc;

use cohort_transport::DataSend;
use cohort_wire::Member;

/// One destination's frames, in send order.
pub(super) struct Group {
    /// The destinations of the message that opened the group, and which one this is.
    members: Arc<[Member]>,
    index: usize,
    pub(super) frames: Vec<DataSend>,
}

impl Group {
    pub(super) fn destination(&self) -> &Member {
        &self.members[self.index]
    }
}

/// The most room a group is made with: a group that needs more grows (a drain that follows a
/// large batch with a send to many members makes no large group per member).
const MAX_ROOM: usize = 256;

/// The groups of the current drain, in the order their destinations were first seen.
/// Bounded by what one drain transmits: the owner empties it at the end of every drain and
/// before it carries out any other output.
#[derive(Default)]
pub(super) struct PendingSends {
    groups: Vec<Group>,
    /// The most frames a group held in the last drain: a new group's room (a group grown a
    /// frame at a time is reallocated and copied at every doubling).
    room: usize,
}

impl PendingSends {
    /// Adds a frame for `destinations[index]`.
    pub(super) fn push(&mut self, destinations: &Arc<[Member]>, index: usize, send: DataSend) {
        let dest = &destinations[index];
        // What the transport reads of a destination: its addresses (the UDP port for
        // datagrams) and its id.
        let same = |g: &Group| {
            let m = g.destination();
            m.port == dest.port
                && m.addr == dest.addr
                && m.id == dest.id
                && m.udp_port == dest.udp_port
        };
        // Messages to the same members usually list them in the same order: the group at
        // the same position is tried first.
        let at = match self.groups.get(index) {
            Some(g) if same(g) => Some(index),
            _ => self.groups.iter().position(same),
        };
        match at {
            Some(i) => self.groups[i].frames.push(send),
            None => {
                let mut frames = Vec::with_capacity(self.room.clamp(1, MAX_ROOM));
                frames.push(send);
                self.groups.push(Group {
                    members: destinations.clone(),
                    index,
                    frames,
                });
            }
        }
    }

    /// Empties it, giving each destination's group.
    pub(super) fn take(&mut self) -> std::vec::Drain<'_, Group> {
        if let Some(most) = self.groups.iter().map(|g| g.frames.len()).max() {
            self.room = most;
        }
        self.groups.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_wire::{DataFrame, MemberId};

    fn member(n: u8) -> Member {
        Member::new(
            MemberId::from_bytes([n; 16]),
            std::net::Ipv4Addr::LOCALHOST.into(),
            4000 + u16::from(n),
        )
    }

    fn send(msg_id: u64) -> DataSend {
        DataSend {
            frame: cohort_transport::OutData::Own(DataFrame {
                header: cohort_wire::DataHeader::default(),
                payload: bytes::Bytes::new(),
            }),
            msg_id,
            options: cohort_wire::SendOptions::NONE,
            done: cohort_transport::Completion::new(|_| {}),
        }
    }

    /// Frames are grouped by destination, groups in the order their destinations first
    /// came, each group in send order, whatever order the messages list their members in;
    /// a member with the same address but another id, or another UDP port (a record updated
    /// between two sends), is another destination.
    #[test]
    fn frames_group_by_destination_in_send_order() {
        let (a, b, c) = (member(1), member(2), member(3));
        let mut other_a = member(1);
        other_a.id = MemberId::from_bytes([9; 16]);
        let ab: Arc<[Member]> = Arc::from(vec![a.clone(), b.clone()]);
        let ba: Arc<[Member]> = Arc::from(vec![b.clone(), a.clone()]);
        let c_only: Arc<[Member]> = Arc::from(vec![c.clone()]);
        let imposter: Arc<[Member]> = Arc::from(vec![other_a.clone()]);
        let mut a_udp = member(1);
        a_udp.udp_port = Some(4500);
        let updated: Arc<[Member]> = Arc::from(vec![a_udp.clone()]);
        let mut p = PendingSends::default();
        p.push(&ab, 0, send(1));
        p.push(&ab, 1, send(1));
        p.push(&c_only, 0, send(2));
        p.push(&ba, 0, send(3));
        p.push(&ba, 1, send(3));
        p.push(&imposter, 0, send(4));
        p.push(&ab, 0, send(5));
        p.push(&updated, 0, send(6));
        let got: Vec<(Member, Vec<u64>)> = p
            .take()
            .map(|g| {
                let ids = g.frames.iter().map(|f| f.msg_id).collect();
                (g.destination().clone(), ids)
            })
            .collect();
        let want = vec![
            (a, vec![1, 3, 5]),
            (b, vec![1, 3]),
            (c, vec![2]),
            (other_a, vec![4]),
            (a_udp, vec![6]),
        ];
        assert_eq!(got, want);
        assert!(p.take().next().is_none(), "emptied");
    }
}
