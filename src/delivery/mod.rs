//! From an event to its sinks: the router picks the routes (table,
//! operation, channel, filter), the fan-out stage queues a job per routed
//! sink, and one worker per sink delivers with retries, lanes and batches;
//! the fan-out renders events for sinks that want another format.

pub mod fanout;
pub mod format;
pub mod retry;
pub mod router;
pub mod shedding;
pub mod worker;
