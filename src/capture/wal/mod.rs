//! Wal mode: no trigger. PostgreSQL decodes its write-ahead log for skor's
//! publication into a logical replication slot; the daemon streams it
//! (pgoutput), renders each row as the triggers would, and confirms the
//! slot past what every routed sink confirmed.

pub mod catalog;
pub mod decode;
pub mod pgoutput;
mod progress;
pub mod publication;
pub mod relations;
pub mod render;
pub mod source;
pub mod tail;
