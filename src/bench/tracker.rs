//! Per-publisher sequence tracking on the subscriber side: what arrived, what arrived twice,
//! what arrived late (after a later message of the same publisher), and so what never came.

use std::collections::{BTreeMap, HashMap};

/// The figures of one subscriber, or of several added together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Distinct messages received.
    pub received: u64,
    /// Messages received again after a first copy.
    pub duplicates: u64,
    /// Messages received after a message the publisher sent later.
    pub reordered: u64,
    /// Messages sent and never received (filled in by `SequenceTracker::tally`).
    pub lost: u64,
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        self.received += other.received;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.lost += other.lost;
    }
}

/// One publisher's sequence as seen by one subscriber.
#[derive(Debug, Default)]
struct Stream {
    /// The sequence number expected next if nothing is reordered.
    next: u64,
    /// Ranges skipped so far, start -> end (exclusive): what may still arrive late. Ranges, not
    /// single numbers, so a QoS 0 run that loses millions costs a few entries, not millions.
    gaps: BTreeMap<u64, u64>,
    received: u64,
    duplicates: u64,
    reordered: u64,
}

impl Stream {
    fn record(&mut self, sequence: u64) {
        if sequence >= self.next {
            if sequence > self.next {
                self.gaps.insert(self.next, sequence);
            }
            self.next = sequence + 1;
            self.received += 1;
            return;
        }
        let gap = self
            .gaps
            .range(..=sequence)
            .next_back()
            .map(|(&start, &end)| (start, end));
        match gap {
            Some((start, end)) if sequence < end => {
                self.gaps.remove(&start);
                if start < sequence {
                    self.gaps.insert(start, sequence);
                }
                if sequence + 1 < end {
                    self.gaps.insert(sequence + 1, end);
                }
                self.received += 1;
                self.reordered += 1;
            }
            _ => self.duplicates += 1,
        }
    }
}

/// Every publisher's stream seen by one subscriber.
#[derive(Debug, Default)]
pub struct SequenceTracker {
    streams: HashMap<u32, Stream>,
}

impl SequenceTracker {
    pub fn record(&mut self, publisher: u32, sequence: u64) {
        self.streams.entry(publisher).or_default().record(sequence);
    }

    /// The totals, given how many messages each publisher this subscriber listens to has
    /// sent (`sent`: publisher id and count). A publisher never heard from counts as all lost.
    pub fn tally(&self, sent: impl IntoIterator<Item = (u32, u64)>) -> Tally {
        let mut tally = Tally::default();
        for stream in self.streams.values() {
            tally.received += stream.received;
            tally.duplicates += stream.duplicates;
            tally.reordered += stream.reordered;
        }
        for (publisher, count) in sent {
            let received = self.streams.get(&publisher).map_or(0, |s| s.received);
            tally.lost += count.saturating_sub(received);
        }
        tally
    }

    /// Distinct messages received from `publisher` (to know when a subscriber has them all).
    pub fn received_from(&self, publisher: u32) -> u64 {
        self.streams.get(&publisher).map_or(0, |s| s.received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(sequences: &[u64]) -> SequenceTracker {
        let mut tracker = SequenceTracker::default();
        for &s in sequences {
            tracker.record(1, s);
        }
        tracker
    }

    #[test]
    fn in_order_stream_is_all_received() {
        let tally = track(&[0, 1, 2, 3]).tally([(1, 4)]);
        assert_eq!(
            tally,
            Tally {
                received: 4,
                ..Tally::default()
            }
        );
    }

    #[test]
    fn gaps_and_missing_tail_are_lost() {
        // 2 and 5..7 never come; 8 messages were sent.
        let tally = track(&[0, 1, 3, 4, 7]).tally([(1, 8)]);
        assert_eq!(tally.received, 5);
        assert_eq!(tally.lost, 3);
        assert_eq!(tally.reordered, 0);
    }

    #[test]
    fn late_messages_are_reordered_not_lost() {
        let tally = track(&[0, 3, 1, 2, 4]).tally([(1, 5)]);
        assert_eq!(tally.received, 5);
        assert_eq!(tally.reordered, 2);
        assert_eq!(tally.lost, 0);
        assert_eq!(tally.duplicates, 0);
    }

    #[test]
    fn late_message_inside_a_gap_splits_it() {
        let tracker = track(&[0, 10, 5]);
        // 1..5 and 6..10 are still missing; 5 again is a duplicate.
        let mut tracker = tracker;
        tracker.record(1, 5);
        tracker.record(1, 1);
        tracker.record(1, 9);
        let tally = tracker.tally([(1, 11)]);
        assert_eq!(tally.received, 5);
        assert_eq!(tally.duplicates, 1);
        assert_eq!(tally.reordered, 3);
        assert_eq!(tally.lost, 6);
    }

    #[test]
    fn repeats_are_duplicates() {
        let tally = track(&[0, 1, 1, 0, 2, 2]).tally([(1, 3)]);
        assert_eq!(tally.received, 3);
        assert_eq!(tally.duplicates, 3);
        assert_eq!(tally.lost, 0);
    }

    #[test]
    fn publishers_are_tracked_separately() {
        let mut tracker = SequenceTracker::default();
        tracker.record(1, 0);
        tracker.record(2, 0);
        tracker.record(2, 1);
        tracker.record(1, 1);
        assert_eq!(tracker.received_from(2), 2);
        // Publisher 3 sent 4 and none arrived.
        let tally = tracker.tally([(1, 2), (2, 2), (3, 4)]);
        assert_eq!(tally.received, 4);
        assert_eq!(tally.lost, 4);
        assert_eq!(tally.reordered, 0);
    }
}
