//! How an HTTP request through hyper (reqwest, under the webhook and Pub/Sub
//! sinks) failed: whether the connection broke before any answer.

use std::error::Error;
use std::io;

use crate::error_chain::has_io_error;

/// Whether the connection broke before any answer arrived: hyper's
/// "connection closed before message completed", or a reset.
pub fn closed_before_answer(error: &(dyn Error + 'static)) -> bool {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(hyper) = cause.downcast_ref::<hyper::Error>() {
            if hyper.is_incomplete_message() || hyper.is_canceled() {
                return true;
            }
        }
        source = cause.source();
    }
    has_io_error(
        error,
        &[
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::UnexpectedEof,
        ],
    )
}
