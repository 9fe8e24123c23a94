//! Notify mode: a trigger NOTIFYs each change in the writing transaction;
//! the daemon LISTENs. Nothing is kept: a change committed while no daemon
//! listens is not delivered.

pub mod oversized;
pub mod shed;
pub mod source;
pub mod tail;
