//! Persistent sessions in the Registry: what a session with a Session Expiry Interval above 0
//! holds beyond its connection ([`Kept`]), and the journal that makes each change durable in
//! groups ([`Journal`]).
//!
//! The Registry keeps the whole state of every persistent session in memory and writes each
//! change to the database through the journal; it reads the database only at start-up. A
//! QoS 1/2 message for a persistent session is given its packet id when it is stored, so the
//! id survives a reconnect or a crash, and is tracked until the client acknowledges it.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::message::Delivery;
use crate::persist::{StoreOp, StoredDelivery, StoredSession, StoredWill};

/// One published message's deliveries that are not yet queued (or not yet committed); the
/// publisher's acknowledgement is released when the last holder drops it: `true` unless a
/// commit it waited for failed.
pub(super) struct AckGroup {
    reply: Cell<Option<oneshot::Sender<bool>>>,
    failed: Cell<bool>,
}

impl AckGroup {
    pub(super) fn new(reply: Option<oneshot::Sender<bool>>) -> Rc<AckGroup> {
        Rc::new(AckGroup {
            reply: Cell::new(reply),
            failed: Cell::new(false),
        })
    }
}

impl Drop for AckGroup {
    fn drop(&mut self) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(!self.failed.get());
        }
    }
}

/// Someone waiting for the commit of what the journal holds.
pub(super) enum Waiter {
    Ack(Rc<AckGroup>),
    Reply(oneshot::Sender<bool>),
}

impl Waiter {
    fn release(self, committed: bool) {
        match self {
            Waiter::Ack(group) => {
                if !committed {
                    group.failed.set(true);
                }
            }
            Waiter::Reply(reply) => {
                let _ = reply.send(committed);
            }
        }
    }
}

/// A delivery to a connected persistent session, held until its message is committed. A
/// client may keep a QoS 2 packet id until it sees PUBREL, so every id it is sent must
/// survive a crash; else the id could be reused after a restart, and the new message taken
/// for a duplicate [MQTT-4.3.3-10].
pub(super) struct Deferred {
    pub(super) client: Arc<str>,
    /// The connection it is for: if another one has taken the session over meanwhile, that
    /// one got the message in its resume list already.
    pub(super) conn_id: u64,
    pub(super) delivery: Delivery,
    pub(super) ack: Rc<AckGroup>,
}

/// What waits for one batch: replies to release, and deliveries to queue.
#[derive(Default)]
pub(super) struct Waiting {
    waiters: Vec<Waiter>,
    deferred: Vec<Deferred>,
}

/// Changes not yet committed, and those waiting for them. One batch is committed at a time;
/// what arrives meanwhile forms the next batch (group commit).
#[derive(Default)]
pub(super) struct Journal {
    ops: Vec<StoreOp>,
    waiting: Waiting,
    /// A batch is being committed.
    pub(super) committing: bool,
    next_message_id: i64,
    next_seq: i64,
}

impl Journal {
    pub(super) fn new(next_message_id: i64, next_seq: i64) -> Journal {
        Journal {
            next_message_id,
            next_seq,
            ..Journal::default()
        }
    }

    pub(super) fn push(&mut self, op: StoreOp) {
        self.ops.push(op);
    }

    pub(super) fn wait(&mut self, waiter: Waiter) {
        self.waiting.waiters.push(waiter);
    }

    /// Holds `group` until this batch commits: once, however many of its message's
    /// deliveries the batch stores (a fan-out to many persistent sessions).
    pub(super) fn wait_ack(&mut self, group: &Rc<AckGroup>) {
        if let Some(Waiter::Ack(last)) = self.waiting.waiters.last()
            && Rc::ptr_eq(last, group)
        {
            return;
        }
        self.wait(Waiter::Ack(group.clone()));
    }

    /// Holds a delivery until everything pushed so far is committed.
    pub(super) fn defer(&mut self, deferred: Deferred) {
        self.waiting.deferred.push(deferred);
    }

    /// A reply that fires once everything pushed so far is committed.
    pub(super) fn committed(&mut self) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        self.wait(Waiter::Reply(tx));
        rx
    }

    pub(super) fn message_id(&mut self) -> i64 {
        self.next_message_id += 1;
        self.next_message_id - 1
    }

    pub(super) fn seq(&mut self) -> i64 {
        self.next_seq += 1;
        self.next_seq - 1
    }

    fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.waiting.waiters.is_empty() && self.waiting.deferred.is_empty()
    }

    pub(super) fn is_idle(&self) -> bool {
        !self.committing && self.is_empty()
    }

    /// The next batch to commit, unless one is being committed or there is nothing to do.
    pub(super) fn take_batch(&mut self) -> Option<(Vec<StoreOp>, Waiting)> {
        if self.committing || self.is_empty() {
            return None;
        }
        self.committing = true;
        Some((
            std::mem::take(&mut self.ops),
            std::mem::take(&mut self.waiting),
        ))
    }

    /// The batch was committed (or failed): release its waiters, and return the deliveries
    /// it held, in order. After a failure they are still delivered (they are tracked in
    /// memory); only their publishers learn that they were not stored.
    pub(super) fn finished(&mut self, waiting: Waiting, committed: bool) -> Vec<Deferred> {
        self.committing = false;
        for waiter in waiting.waiters {
            waiter.release(committed);
        }
        if !committed {
            for deferred in &waiting.deferred {
                deferred.ack.failed.set(true);
            }
        }
        waiting.deferred
    }
}

/// A message stored for a persistent session and not yet acknowledged by its client.
#[derive(Debug, Clone)]
pub(super) struct Unacked {
    pub(super) delivery: Delivery,
    /// PUBREC received: PUBREL is owed, never the PUBLISH again [MQTT-4.3.3-6].
    pub(super) released: bool,
}

/// A session kept beyond its connection (Session Expiry Interval > 0).
#[derive(Debug, Default)]
pub(super) struct Kept {
    pub(super) expiry_interval: u32,
    /// When it expires; `None` while a connection holds it (or if it never expires).
    pub(super) expires_at_ms: Option<i64>,
    /// A Will waiting for its delay, once the connection has ended: (due at, message).
    pub(super) will: Option<(i64, StoredWill)>,
    /// Stored QoS 1/2 messages not yet acknowledged, in queue order (by seq).
    pub(super) unacked: BTreeMap<i64, Unacked>,
    /// The seq of each packet id in `unacked`.
    by_packet_id: HashMap<u16, i64, foldhash::fast::RandomState>,
    next_packet_id: u16,
    /// Payload bytes in `unacked`.
    pub(super) bytes: usize,
    /// Inbound QoS 2 packet ids awaiting PUBREL [MQTT-4.3.3-10].
    pub(super) inbound_qos2: HashSet<u16, foldhash::fast::RandomState>,
    /// The user whose connection last held it (`None`: anonymous, or not recorded before a
    /// restart): its owner under `client_id_binding`.
    pub(super) username: Option<String>,
}

impl Kept {
    pub(super) fn new(expiry_interval: u32) -> Kept {
        Kept {
            expiry_interval,
            next_packet_id: 1,
            ..Kept::default()
        }
    }

    /// Rebuilds a session read from the database; its messages may have been sent before, so
    /// they go out with DUP 1.
    pub(super) fn restore(stored: &StoredSession) -> Kept {
        let mut kept = Kept::new(stored.expiry_interval);
        kept.expires_at_ms = stored.expires_at_ms;
        kept.inbound_qos2 = stored.inbound_qos2.iter().copied().collect();
        kept.username = stored.username.clone();
        for (message, d) in &stored.queue {
            let delivery = Delivery {
                message: message.clone(),
                qos: d.qos,
                retain: d.retain,
                subscription_ids: d.subscription_ids.clone().into(),
                packet_id: Some(d.packet_id),
                dup: true,
            };
            kept.insert(d.seq, delivery, d.released);
        }
        kept
    }

    fn insert(&mut self, seq: i64, delivery: Delivery, released: bool) {
        if let Some(id) = delivery.packet_id {
            self.by_packet_id.insert(id, seq);
            self.next_packet_id = id.checked_add(1).unwrap_or(1);
        }
        self.bytes += delivery.message.payload.len();
        self.unacked.insert(seq, Unacked { delivery, released });
    }

    /// Whether an offline session has no room for one more message of `len` bytes.
    pub(super) fn is_full(&self, max_messages: usize, max_bytes: usize) -> bool {
        self.unacked.len() >= max_messages || self.bytes >= max_bytes
    }

    /// Numbers `delivery` with a free packet id and tracks it under `seq`; the record to
    /// store, or `None` when all 65,535 ids are in use.
    pub(super) fn track(&mut self, seq: i64, delivery: &mut Delivery) -> Option<StoredDelivery> {
        let id = self.free_packet_id()?;
        delivery.packet_id = Some(id);
        self.insert(seq, delivery.clone(), false);
        Some(StoredDelivery {
            seq,
            packet_id: id,
            qos: delivery.qos,
            retain: delivery.retain,
            subscription_ids: delivery.subscription_ids.to_vec(),
            released: false,
        })
    }

    fn free_packet_id(&mut self) -> Option<u16> {
        if self.by_packet_id.len() >= usize::from(u16::MAX) {
            return None;
        }
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = id.checked_add(1).unwrap_or(1);
            if !self.by_packet_id.contains_key(&id) {
                return Some(id);
            }
        }
    }

    /// The client answered PUBREC for `packet_id`. Whether it was a stored message.
    pub(super) fn release(&mut self, packet_id: u16) -> bool {
        let Some(seq) = self.by_packet_id.get(&packet_id) else {
            return false;
        };
        match self.unacked.get_mut(seq) {
            Some(unacked) => {
                unacked.released = true;
                true
            }
            None => false,
        }
    }

    /// The exchange of `packet_id` is over. Whether it was a stored message.
    pub(super) fn complete(&mut self, packet_id: u16) -> bool {
        let Some(seq) = self.by_packet_id.remove(&packet_id) else {
            return false;
        };
        if let Some(unacked) = self.unacked.remove(&seq) {
            self.bytes -= unacked.delivery.message.payload.len();
        }
        true
    }

    /// What a new connection resumes with, in order: the packet ids owed a PUBREL, and the
    /// messages to (re-)send. Everything is now handed to that connection, so it goes out
    /// with DUP 1 if ever re-sent again.
    pub(super) fn resume(&mut self) -> (Vec<u16>, Vec<Delivery>) {
        let mut release = Vec::new();
        let mut resend = Vec::new();
        for unacked in self.unacked.values_mut() {
            match unacked.delivery.packet_id {
                Some(id) if unacked.released => release.push(id),
                _ => {
                    resend.push(unacked.delivery.clone());
                    unacked.delivery.dup = true;
                }
            }
        }
        (release, resend)
    }

    /// Marks a message as handed to a live connection.
    pub(super) fn handed(&mut self, seq: i64) {
        if let Some(unacked) = self.unacked.get_mut(&seq) {
            unacked.delivery.dup = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::AppMessage;
    use crate::mqtt::QoS;
    use std::sync::Arc;

    fn delivery(payload: &'static [u8]) -> Delivery {
        Delivery {
            message: Arc::new(AppMessage {
                topic: "t".into(),
                payload: bytes::Bytes::from_static(payload),
                qos: QoS::ExactlyOnce,
                retain: false,
                properties: Default::default(),
                expires_at_ms: None,
                publisher: "p".into(),
            }),
            qos: QoS::ExactlyOnce,
            retain: false,
            subscription_ids: Default::default(),
            packet_id: None,
            dup: false,
        }
    }

    #[test]
    fn tracked_messages_resume_in_order_with_dup_after_the_first_hand_over() {
        let mut kept = Kept::new(60);
        let mut ids = Vec::new();
        for (seq, payload) in [(1, &b"a"[..]), (2, b"bb"), (3, b"ccc")] {
            let mut d = delivery(payload);
            ids.push(kept.track(seq, &mut d).unwrap().packet_id);
        }
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(kept.bytes, 6);
        assert!(kept.release(2));
        assert!(kept.complete(1));
        assert!(!kept.complete(1), "only once");
        let (release, resend) = kept.resume();
        assert_eq!(release, [2]);
        assert_eq!(resend.len(), 1);
        assert_eq!(resend[0].packet_id, Some(3));
        assert!(!resend[0].dup, "never handed to a connection before");
        let (_, again) = kept.resume();
        assert!(again[0].dup, "[MQTT-3.3.1-1]: handed over once already");
        assert!(kept.is_full(2, usize::MAX));
        assert!(!kept.is_full(3, usize::MAX));
    }

    #[test]
    fn packet_ids_skip_those_in_use_and_run_out_at_65535() {
        let mut kept = Kept::new(60);
        for seq in 0..i64::from(u16::MAX) {
            assert!(kept.track(seq, &mut delivery(b"")).is_some());
        }
        assert!(kept.track(70_000, &mut delivery(b"")).is_none());
        assert!(kept.complete(7));
        let mut d = delivery(b"");
        assert_eq!(kept.track(70_001, &mut d).unwrap().packet_id, 7);
    }

    #[test]
    fn a_failed_commit_fails_the_ack_group() {
        let (tx, mut rx) = oneshot::channel();
        let group = AckGroup::new(Some(tx));
        let mut journal = Journal::new(1, 1);
        journal.wait_ack(&group);
        drop(group);
        let (_, waiting) = journal.take_batch().unwrap();
        assert!(journal.take_batch().is_none(), "one batch at a time");
        assert!(rx.try_recv().is_err(), "held by the journal");
        assert!(journal.finished(waiting, false).is_empty());
        assert_eq!(rx.try_recv(), Ok(false));
    }

    #[test]
    fn one_message_stored_for_many_sessions_holds_its_ack_group_once() {
        let group = AckGroup::new(None);
        let other = AckGroup::new(None);
        let mut journal = Journal::new(1, 1);
        for _ in 0..1000 {
            journal.wait_ack(&group);
        }
        journal.wait_ack(&other);
        journal.wait_ack(&group);
        let (_, waiting) = journal.take_batch().unwrap();
        assert_eq!(waiting.waiters.len(), 3);
    }
}
