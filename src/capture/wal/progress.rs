//! How far the slot may be confirmed: transactions in commit order, each
//! with the events it handed to sinks, and the position past which every
//! one of them is settled. The slot's confirmed position only ever moves
//! to the end of a transaction whose events, and those of every earlier
//! transaction, each routed sink confirmed (or that went to the dead
//! letters): PostgreSQL then sends everything after it again after a
//! crash, and nothing before it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use skor_sink_api::Event;

/// A transaction handed over, oldest first.
#[derive(Debug)]
struct Tx {
    /// Its commit record's end: where to confirm once it is settled.
    end: u64,
    /// Its events some routed sink has not settled.
    outstanding: usize,
    /// Whether its commit arrived (its events are all known).
    committed: bool,
}

/// An event some sink has not settled yet.
#[derive(Debug)]
pub struct Unsettled {
    /// The event, kept for the dead letters.
    pub event: Arc<Event>,
    /// Its transaction's number.
    tx: u64,
    /// Routed sinks that have not settled it.
    waiting: usize,
}

/// The transactions handed over since the last confirmed position.
#[derive(Debug, Default)]
pub struct Progress {
    txs: VecDeque<Tx>,
    /// The number of `txs[0]`.
    first: u64,
    events: HashMap<i64, Unsettled>,
    /// Inside a transaction whose commit has not arrived.
    open: bool,
    /// The end of the last commit handed over, so a transaction streamed
    /// again after a reconnect is recognised and skipped.
    last_end: u64,
    confirmed: u64,
    moved: bool,
}

impl Progress {
    /// Starts a transaction whose commit record begins at `commit_lsn`;
    /// false if it was handed over already (a reconnect streams from the
    /// confirmed position again, and its events are still with the sinks).
    pub fn begin(&mut self, commit_lsn: u64) -> bool {
        if commit_lsn < self.last_end {
            return false;
        }
        self.txs.push_back(Tx {
            end: 0,
            outstanding: 0,
            committed: false,
        });
        self.open = true;
        true
    }

    /// Records an event of the open transaction, routed to `sinks` sinks.
    pub fn event(&mut self, event: Arc<Event>, sinks: usize) {
        let Some(id) = event.id else { return };
        let tx = self.first + self.txs.len() as u64 - 1;
        let Some(current) = self.txs.back_mut() else {
            return;
        };
        current.outstanding += 1;
        if let Some(earlier) = self.events.insert(
            id,
            Unsettled {
                event,
                tx,
                waiting: sinks,
            },
        ) {
            // Ids are unique; should one repeat, its first holder must
            // still hold its transaction back.
            self.settle_whole(earlier.tx);
        }
    }

    /// The open transaction committed, its commit record ending at `end`.
    pub fn commit(&mut self, end: u64) {
        if let Some(current) = self.txs.back_mut() {
            current.end = end;
            current.committed = true;
        }
        self.open = false;
        self.last_end = self.last_end.max(end);
        self.advance();
    }

    /// One routed sink settled event `id`: it confirmed it, or it went to
    /// the dead letters.
    pub fn settle(&mut self, id: i64) {
        let Some(unsettled) = self.events.get_mut(&id) else {
            return;
        };
        unsettled.waiting = unsettled.waiting.saturating_sub(1);
        if unsettled.waiting > 0 {
            return;
        }
        let tx = unsettled.tx;
        self.events.remove(&id);
        self.settle_whole(tx);
        self.advance();
    }

    fn settle_whole(&mut self, tx: u64) {
        if let Some(index) = tx.checked_sub(self.first) {
            if let Some(tx) = self.txs.get_mut(index as usize) {
                tx.outstanding = tx.outstanding.saturating_sub(1);
            }
        }
    }

    /// The server has sent everything before `wal_end`: with nothing
    /// outstanding, the slot may move there, so an idle or unrelated
    /// stream of WAL does not pile up behind it.
    pub fn idle(&mut self, wal_end: u64) {
        if self.txs.is_empty() && !self.open && wal_end > self.confirmed {
            self.confirmed = wal_end;
            self.last_end = self.last_end.max(wal_end);
            self.moved = true;
        }
    }

    fn advance(&mut self) {
        while let Some(front) = self.txs.front() {
            if !front.committed || front.outstanding > 0 {
                break;
            }
            if front.end > self.confirmed {
                self.confirmed = front.end;
                self.moved = true;
            }
            self.txs.pop_front();
            self.first += 1;
        }
    }

    /// The new confirmed position, once per move.
    pub fn take_moved(&mut self) -> Option<u64> {
        std::mem::take(&mut self.moved).then_some(self.confirmed)
    }

    /// The confirmed position.
    pub fn confirmed(&self) -> u64 {
        self.confirmed
    }

    /// An unsettled event, for the dead letters.
    pub fn unsettled(&self, id: i64) -> Option<&Unsettled> {
        self.events.get(&id)
    }

    /// Events handed over that some sink has not settled.
    pub fn outstanding(&self) -> usize {
        self.events.len()
    }

    /// Forgets the transaction a lost stream left open: it comes again,
    /// whole, from the confirmed position.
    pub fn abandon_open(&mut self) {
        if !self.open {
            return;
        }
        self.open = false;
        if let Some(open) = self.txs.pop_back() {
            let tx = self.first + self.txs.len() as u64;
            self.events.retain(|_, e| e.tx != tx);
            // Its events may still be with sinks; once they settle they
            // find no transaction and change nothing.
            let _ = open;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skor_sink_api::{Bytes, Op};

    fn event(id: i64) -> Arc<Event> {
        Arc::new(Event {
            channel: Arc::from("skor"),
            schema: "public".into(),
            table: "t".into(),
            op: Op::Insert,
            payload: Bytes::from_static(b"{}"),
            format: skor_sink_api::Format::Skor,
            key: None,
            id: Some(id),
            seq: id as u64,
        })
    }

    #[test]
    fn the_slot_moves_only_past_transactions_settled_in_order() {
        let mut progress = Progress::default();
        assert!(progress.begin(100));
        progress.event(event(1), 2);
        progress.commit(110);
        assert!(progress.begin(120));
        progress.event(event(2), 1);
        progress.commit(130);
        assert_eq!(progress.take_moved(), None);
        // The second transaction is settled first: it waits for the first.
        progress.settle(2);
        assert_eq!(progress.take_moved(), None);
        progress.settle(1);
        assert_eq!(progress.take_moved(), None, "one of two sinks settled");
        progress.settle(1);
        assert_eq!(progress.take_moved(), Some(130));
        assert_eq!(progress.outstanding(), 0);
    }

    #[test]
    fn a_transaction_with_nothing_routed_confirms_at_its_commit() {
        let mut progress = Progress::default();
        assert!(progress.begin(100));
        progress.commit(110);
        assert_eq!(progress.take_moved(), Some(110));
        progress.idle(500);
        assert_eq!(progress.take_moved(), Some(500));
    }

    #[test]
    fn keepalives_do_not_move_the_slot_past_open_or_unsettled_work() {
        let mut progress = Progress::default();
        assert!(progress.begin(100));
        progress.event(event(1), 1);
        progress.idle(105);
        assert_eq!(progress.take_moved(), None, "inside a transaction");
        progress.commit(110);
        progress.idle(200);
        assert_eq!(progress.take_moved(), None, "an event is unsettled");
        progress.settle(1);
        assert_eq!(progress.take_moved(), Some(110));
    }

    #[test]
    fn a_transaction_streamed_again_after_a_reconnect_is_skipped() {
        let mut progress = Progress::default();
        assert!(progress.begin(100));
        progress.event(event(1), 1);
        progress.commit(110);
        // The stream restarts from the confirmed position (nothing yet).
        assert!(!progress.begin(100), "already handed over");
        assert!(progress.begin(110));
        progress.commit(120);
        assert_eq!(progress.take_moved(), None);
        progress.settle(1);
        assert_eq!(progress.take_moved(), Some(120));
    }

    #[test]
    fn an_open_transaction_of_a_lost_stream_is_forgotten() {
        let mut progress = Progress::default();
        assert!(progress.begin(100));
        progress.event(event(1), 1);
        progress.abandon_open();
        assert_eq!(progress.outstanding(), 0);
        assert!(progress.begin(100), "it comes again whole");
        progress.event(event(1), 1);
        progress.commit(110);
        progress.settle(1);
        assert_eq!(progress.take_moved(), Some(110));
    }
}
