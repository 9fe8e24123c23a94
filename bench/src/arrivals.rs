//! What the receivers record: one (event key, arrival instant) per event
//! received, where the key packs the operation and the row id.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;
use serde_json::value::RawValue;

/// A row change: its operation in the top bits, the row id below.
pub type Key = u64;

/// Bits left for the row id; the bench's ids stay far below 2^48.
const ID_BITS: u32 = 48;

/// The key of the event `op` on row `id`, as loads and receivers compute it.
pub fn key(op: Op, id: i64) -> Key {
    ((op as u64) << ID_BITS) | (id as u64 & ((1 << ID_BITS) - 1))
}

/// A row operation, as the payload's `op` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `INSERT`.
    Insert = 1,
    /// `UPDATE`.
    Update = 2,
    /// `DELETE`.
    Delete = 3,
}

impl Op {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "INSERT" => Some(Self::Insert),
            "UPDATE" => Some(Self::Update),
            "DELETE" => Some(Self::Delete),
            _ => None,
        }
    }
}

/// The only fields of a payload the bench reads; serde skips the rest
/// without building them.
#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(borrow)]
    op: &'a str,
    data: Row,
}

#[derive(Deserialize)]
struct Row {
    id: i64,
}

/// A CloudEvent: skor's payload is its `data`.
#[derive(Deserialize)]
struct CloudEvent<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
    /// Required, so that only a CloudEvent reads as one.
    #[serde(rename = "specversion")]
    _specversion: serde::de::IgnoredAny,
}

/// A Debezium change event's value: the row is `after`, or `before` on a
/// delete.
#[derive(Deserialize)]
struct Debezium<'a> {
    #[serde(borrow)]
    op: &'a str,
    before: Option<Row>,
    after: Option<Row>,
}

/// The key of one event in any of skor's formats (skor's own, CloudEvents,
/// Debezium); the format cases run the same loads as the webhook's.
fn parse_one(text: &str) -> Option<Key> {
    if let Ok(payload) = serde_json::from_str::<Payload<'_>>(text) {
        return Some(key(Op::parse(payload.op)?, payload.data.id));
    }
    if let Ok(event) = serde_json::from_str::<CloudEvent<'_>>(text) {
        return parse_one(event.data.get());
    }
    let change: Debezium<'_> = serde_json::from_str(text).ok()?;
    let (op, row) = match change.op {
        "c" => (Op::Insert, change.after?),
        "u" => (Op::Update, change.after?),
        "d" => (Op::Delete, change.before?),
        _ => return None,
    };
    Some(key(op, row.id))
}

/// Every event a receiver got, in arrival order, duplicates included.
pub struct Arrivals {
    log: Mutex<Vec<(Key, Instant)>>,
    /// Kept apart from the log so the case's progress check takes no lock.
    count: AtomicUsize,
    malformed: AtomicUsize,
    /// The start of the first unreadable payload, to say what it was.
    first_malformed: Mutex<Option<String>>,
}

impl Arrivals {
    /// An empty record with room for `capacity` events, so recording
    /// does not reallocate mid-run.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            log: Mutex::new(Vec::with_capacity(capacity)),
            count: AtomicUsize::new(0),
            malformed: AtomicUsize::new(0),
            first_malformed: Mutex::new(None),
        }
    }

    /// Records one payload (a JSON object) that arrived at `at`.
    pub fn record_event(&self, payload: &[u8], at: Instant) {
        match std::str::from_utf8(payload).ok().and_then(parse_one) {
            Some(key) => {
                self.log.lock().unwrap().push((key, at));
                self.count.fetch_add(1, Ordering::Relaxed);
            }
            None => self.reject(payload),
        }
    }

    fn reject(&self, payload: &[u8]) {
        if self.malformed.fetch_add(1, Ordering::Relaxed) == 0 {
            let start = &payload[..payload.len().min(200)];
            *self.first_malformed.lock().unwrap() =
                Some(String::from_utf8_lossy(start).into_owned());
        }
    }

    /// Records an HTTP body: one payload, or a JSON array of payloads (a
    /// batch), all arrived at `at`.
    pub fn record_body(&self, body: &[u8], at: Instant) {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'[') {
            self.record_event(body, at);
            return;
        }
        let Some(items) = std::str::from_utf8(body)
            .ok()
            .and_then(|text| serde_json::from_str::<Vec<&RawValue>>(text).ok())
        else {
            self.reject(body);
            return;
        };
        let keys: Vec<Key> = items
            .iter()
            .filter_map(|item| {
                let key = parse_one(item.get());
                if key.is_none() {
                    self.reject(item.get().as_bytes());
                }
                key
            })
            .collect();
        // One lock per request, not per event.
        self.log
            .lock()
            .unwrap()
            .extend(keys.iter().map(|&key| (key, at)));
        self.count.fetch_add(keys.len(), Ordering::Relaxed);
    }

    /// Events recorded so far, duplicates included.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Payloads that were not a skor event with an `op` and a `data.id`.
    pub fn malformed(&self) -> usize {
        self.malformed.load(Ordering::Relaxed)
    }

    /// The start of the first payload that was not a skor event.
    pub fn first_malformed(&self) -> Option<String> {
        self.first_malformed.lock().unwrap().clone()
    }

    /// A copy of the record so far.
    pub fn snapshot(&self) -> Vec<(Key, Instant)> {
        self.log.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSERT: &str = r#"{"table" : "bench_events", "schema" : "public", "op" : "INSERT", "data" : {"id":7,"account":7,"amount":0.07,"note":"x","created_at":"2026-01-01T00:00:00+00:00"}}"#;

    #[test]
    fn reads_cloudevents_and_debezium_change_events() {
        let arrivals = Arrivals::with_capacity(4);
        let now = Instant::now();
        arrivals.record_body(
            format!(
                r#"{{"specversion":"1.0","id":"evt_1","type":"skor.row.insert","data":{INSERT}}}"#
            )
            .as_bytes(),
            now,
        );
        arrivals.record_body(
            br#"[{"before":null,"after":{"id":8},"op":"c","ts_ms":1},{"before":{"id":9},"after":null,"op":"d","ts_ms":1}]"#,
            now,
        );
        // Neither: no data to unwrap, an op Debezium does not have.
        arrivals.record_body(br#"{"specversion":"1.0"}"#, now);
        arrivals.record_body(br#"{"before":null,"after":{"id":8},"op":"x"}"#, now);
        let keys: Vec<Key> = arrivals.snapshot().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            vec![key(Op::Insert, 7), key(Op::Insert, 8), key(Op::Delete, 9)]
        );
        assert_eq!(arrivals.malformed(), 2);
    }

    #[test]
    fn reads_single_payloads_and_batches() {
        let arrivals = Arrivals::with_capacity(4);
        let now = Instant::now();
        arrivals.record_body(INSERT.as_bytes(), now);
        let batch = format!(
            " [{INSERT}, {}]",
            INSERT
                .replace("INSERT", "DELETE")
                .replace("\"id\":7", "\"id\":8")
        );
        arrivals.record_body(batch.as_bytes(), now);
        arrivals.record_body(b"not json", now);
        let keys: Vec<Key> = arrivals.snapshot().iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [key(Op::Insert, 7), key(Op::Insert, 7), key(Op::Delete, 8)]
        );
        assert_eq!(arrivals.count(), 3);
        assert_eq!(arrivals.malformed(), 1);
        assert_eq!(arrivals.first_malformed().as_deref(), Some("not json"));
    }
}
