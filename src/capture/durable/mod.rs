//! Durable mode: a trigger writes each change to `skor.event_log` in the
//! writing transaction; daemons share the log by partition leases and
//! delete each event once its sinks confirmed it. Wal mode's dead letters
//! live in the same log.

pub mod dead_letters;
pub mod source;

pub mod tail;
